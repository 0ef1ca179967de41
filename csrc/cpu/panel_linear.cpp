// y = x W^T (+ b) with float32 W packed once into panels (see ops.h): the GEMM of the
// batches too large for the GGUF-block kernel, prefill above all.
//
// A panel holds kPanelWidth consecutive rows of W, stored column by column: for each k,
// the panel's kPanelWidth weights side by side, two vectors. A tile keeps kTileRows rows
// of x against one panel in registers (kTileRows x 2 vectors of sums): per k it loads
// the two weight vectors once, broadcasts each of its x values once, and does
// 2 * kTileRows fused multiply-adds. x is copied tile by tile into a small buffer in
// that order (k-major), and k is cut into kDepth-long slices so that a panel's slice and
// the x tile stay in L1 while a block of kPanelsPerBlock panels stays in L2.
//
// Row invariance: out[i, j] is one lane's chain of fused multiply-adds over k = 0, 1, ...
// in order, starting from zero (the sums go to `out` between k slices and come back
// unchanged), then the bias: nothing depends on m, on the tile the row falls in, or on
// the thread count (threads split the panels; each output is computed by one thread).
#include <ATen/Parallel.h>

#include <algorithm>

#include "lanes.h"
#include "ops.h"

namespace {

using vllm_cpu::lanes::Lanes;

constexpr int kPanelVecs = 2;
constexpr int kPanelWidth = kPanelVecs * Lanes::kLanes;
#if VLLM_CPU_AVX512 || VLLM_CPU_NEON
constexpr int kTileRows = 12;  // 24 sums, 2 weights and a broadcast of 32 registers
#elif VLLM_CPU_AVX2
constexpr int kTileRows = 6;  // 12 sums, 2 weights and a broadcast of 16 ymm
#else
constexpr int kTileRows = 4;
#endif
constexpr int64_t kDepth = 256;
constexpr int64_t kPanelsPerBlock = 16;

struct Problem {
  const float* x;       // (m, k)
  const float* panels;  // (num_panels, k, kPanelWidth)
  const float* bias;    // (n,) or nullptr
  float* out;           // (m, n)
  int64_t m, n, k;
};

// x rows [i0, i0 + rows), columns [c0, c0 + depth), k-major: tile[c * kTileRows + i].
void copy_tile(const Problem& p, int64_t i0, int64_t rows, int64_t c0, int64_t depth,
               float* tile) {
  for (int64_t c = 0; c < depth; ++c)
    for (int i = 0; i < kTileRows; ++i)
      tile[c * kTileRows + i] = i < rows ? p.x[(i0 + i) * p.k + c0 + c] : 0.0f;
}

// Rows [i0, i0 + R) of out at panel `panel`, k slice [c0, c0 + depth).
template <int R>
void tile(const Problem& p, const float* x_tile, int64_t i0, int64_t panel, int64_t c0,
          int64_t depth) {
  const int64_t j0 = panel * kPanelWidth;
  const int64_t cols = std::min<int64_t>(kPanelWidth, p.n - j0);
  float* out = p.out + i0 * p.n + j0;
  alignas(64) float spill[R][kPanelWidth];  // a partial panel's rows go through here
  Lanes acc[R][kPanelVecs];
  for (int i = 0; i < R; ++i)
    for (int v = 0; v < kPanelVecs; ++v) {
      if (c0 == 0) {
        acc[i][v] = Lanes::splat(0.0f);
      } else if (cols == kPanelWidth) {
        acc[i][v] = Lanes::load(out + i * p.n + v * Lanes::kLanes);
      } else {
        std::copy(out + i * p.n, out + i * p.n + cols, spill[i]);
        acc[i][v] = Lanes::load(spill[i] + v * Lanes::kLanes);
      }
    }
  const float* w = p.panels + (panel * p.k + c0) * kPanelWidth;
  for (int64_t c = 0; c < depth; ++c) {
    Lanes ws[kPanelVecs];
#pragma GCC unroll 4
    for (int v = 0; v < kPanelVecs; ++v) ws[v] = Lanes::load(w + c * kPanelWidth + v * Lanes::kLanes);
#pragma GCC unroll 16
    for (int i = 0; i < R; ++i) {
      const Lanes xv = Lanes::splat(x_tile[c * kTileRows + i]);
#pragma GCC unroll 4
      for (int v = 0; v < kPanelVecs; ++v) acc[i][v] = fma(ws[v], xv, acc[i][v]);
    }
  }
  const bool add_bias = c0 + depth == p.k && p.bias != nullptr;
  if (cols == kPanelWidth && !add_bias) {
    for (int i = 0; i < R; ++i)
      for (int v = 0; v < kPanelVecs; ++v) acc[i][v].store(out + i * p.n + v * Lanes::kLanes);
    return;
  }
  for (int i = 0; i < R; ++i) {
    for (int v = 0; v < kPanelVecs; ++v) acc[i][v].store(spill[i] + v * Lanes::kLanes);
    for (int64_t j = 0; j < cols; ++j)
      out[i * p.n + j] = add_bias ? spill[i][j] + p.bias[j0 + j] : spill[i][j];
  }
}

// Panels [panel_begin, panel_end) for R rows of x from i0.
template <int R = kTileRows>
void tiles(const Problem& p, const float* x_tile, int64_t i0, int64_t rows,
           int64_t panel_begin, int64_t panel_end, int64_t c0, int64_t depth) {
  if constexpr (R > 1) {
    if (rows < R) return tiles<R - 1>(p, x_tile, i0, rows, panel_begin, panel_end, c0, depth);
  }
  for (int64_t panel = panel_begin; panel < panel_end; ++panel)
    tile<R>(p, x_tile, i0, panel, c0, depth);
}

// Every row of x against panels [begin, end), a k slice at a time.
void panel_block(const Problem& p, int64_t begin, int64_t end) {
  alignas(64) float x_tile[kDepth * kTileRows];
  for (int64_t c0 = 0; c0 < p.k; c0 += kDepth) {
    const int64_t depth = std::min(kDepth, p.k - c0);
    for (int64_t i0 = 0; i0 < p.m; i0 += kTileRows) {
      const int64_t rows = std::min<int64_t>(kTileRows, p.m - i0);
      copy_tile(p, i0, rows, c0, depth, x_tile);
      tiles(p, x_tile, i0, rows, begin, end, c0, depth);
    }
  }
}

// A thread's panels in blocks of about kPanelsPerBlock, evened out.
void panel_range(const Problem& p, int64_t begin, int64_t end) {
  const int64_t count = end - begin;
  const int64_t blocks = (count + kPanelsPerBlock - 1) / kPanelsPerBlock;
  const int64_t per_block = (count + blocks - 1) / blocks;
  for (int64_t b = begin; b < end; b += per_block) panel_block(p, b, std::min(b + per_block, end));
}

void check_float(const torch::Tensor& t, int64_t dims, const char* name, const char* shape) {
  TORCH_CHECK(t.dim() == dims && t.scalar_type() == at::kFloat && t.is_contiguous(),
              "panel_linear: ", name, " must be a contiguous ", shape, " float32 tensor, got ",
              t.scalar_type(), " of shape ", t.sizes(), t.is_contiguous() ? "" : " (strided)");
}

}  // namespace

int64_t panel_width() { return kPanelWidth; }

void panel_linear(torch::Tensor& out, const torch::Tensor& x, const torch::Tensor& panels,
                  const std::optional<torch::Tensor>& bias) {
  check_float(x, 2, "x", "(m, k)");
  check_float(panels, 3, "panels", "(num_panels, k, panel_width)");
  check_float(out, 2, "out", "(m, n)");
  const int64_t m = x.size(0), k = x.size(1), n = out.size(1);
  TORCH_CHECK(panels.size(2) == kPanelWidth, "panel_linear: panels are ", kPanelWidth,
              " rows wide in this build, got ", panels.size(2));
  TORCH_CHECK(panels.size(1) == k, "panel_linear: x has ", k, " columns but the panels have ",
              panels.size(1));
  TORCH_CHECK(out.size(0) == m && panels.size(0) == (n + kPanelWidth - 1) / kPanelWidth,
              "panel_linear: out (", out.size(0), ", ", n, ") does not match ", m, " rows of x and ",
              panels.size(0), " panels");
  const float* bias_ptr = nullptr;
  if (bias.has_value()) {
    check_float(*bias, 1, "bias", "(n,)");
    TORCH_CHECK(bias->numel() == n, "panel_linear: bias has ", bias->numel(), " values for ", n,
                " outputs");
    bias_ptr = bias->data_ptr<float>();
  }
  if (m == 0 || n == 0) return;
  const Problem p{x.data_ptr<float>(), panels.data_ptr<float>(), bias_ptr,
                  out.data_ptr<float>(), m, n, k};
  if (k == 0) {
    out.zero_();
    if (bias_ptr) out.add_(*bias);
    return;
  }
  at::parallel_for(0, panels.size(0), 1,
                   [&](int64_t begin, int64_t end) { panel_range(p, begin, end); });
}
