// y = x W^T (+ b) in register tiles, written once over the float32 lanes of lanes.h and
// over how W's rows are stored (GGUF blocks, float32).
//
// A tile holds MR rows of x against NR rows of W: each weight vector is loaded (or
// dequantised) once into a register and used for the MR rows, each x vector once for
// the NR weight rows, and the MR x NR sums stay in registers, one vector of partial sums
// per output, updated by fused multiply-adds.
//
// Row invariance: the sum for out[i, j] is the same sequence of lane-wise fused
// multiply-adds, over the same k positions in the same order, whatever tile it falls in
// (MR and NR are not part of it), then the same horizontal sum of the lanes, then the
// bias. Threads split W's rows; each output is computed whole by one of them. So
// out[i, :] is bit for bit the same whatever m, the other rows of x and the thread count.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>

#include "isa.h"
#include "lanes.h"

namespace vllm_cpu::linear {

using lanes::Lanes;

// out = x W^T (+ bias). `Weights` reads W's rows:
//   Weights::kShape      its tile shape (below)
//   Weights::kStep       weights per step along k, a multiple of Lanes::kLanes
//   Weights::kTail       whether k may leave a partial step (read by tail())
//   w.step(row, s)       steps s of a row, decoded: .weights(v) is its v-th Lanes
//   w.tail(row, c, n)    n <= kLanes weights of a row from column c, zeros after
//   w.row_bytes()        bytes of one row as stored
template <typename Weights>
struct Problem {
  const float* x;      // (m, k)
  Weights w;           // (n, k)
  const float* bias;   // (n,) or nullptr
  float* out;          // (m, n)
  int64_t m, n, k;
};

// A tile shape: `rows` rows of x per tile and, for a tile of mr rows, tile_n(mr) weight
// rows, as many as keep about `sums` partial sums in registers (at most kMaxTileN).
struct Shape {
  int rows;
  int sums;
};
constexpr int kMaxTileN = 8;

// Measured on AVX2 and portable x86-64 (benchmarks/benchmark_gguf_linear.py): with SIMD
// registers float32 weights like square tiles (each loaded vector feeds several sums),
// GGUF blocks tall ones (each dequantised vector feeds many rows of x); the portable
// build's plain arrays stay in registers only one weight row wide. AVX-512 keeps the
// 8 x 2 block tiles measured before this generic code; NEON's are sized to its 32
// registers, not measured.
#if VLLM_CPU_AVX512
constexpr Shape kDenseShape{8, 24};  // of 32 zmm
constexpr Shape kBlockShape{8, 16};
#elif VLLM_CPU_AVX2
constexpr Shape kDenseShape{4, 12};  // of 16 ymm
constexpr Shape kBlockShape{8, 8};
#elif VLLM_CPU_NEON
constexpr Shape kDenseShape{4, 16};  // of 32 q
constexpr Shape kBlockShape{8, 16};
#else
constexpr Shape kDenseShape{6, 1};  // plain arrays: wider or taller tiles measured slower
constexpr Shape kBlockShape{6, 1};
#endif

constexpr int tile_n(Shape shape, int mr) {
  return std::clamp(shape.sums / mr, 1, kMaxTileN);
}

constexpr int64_t gcd(int64_t a, int64_t b) { return b == 0 ? a : gcd(b, a % b); }

// Weight rows per task: a multiple of every tile_n, so only the last task has a rest.
constexpr int64_t task_rows(Shape shape) {
  int64_t rows = 1;
  for (int mr = 1; mr <= shape.rows; ++mr)
    rows = rows / gcd(rows, tile_n(shape, mr)) * tile_n(shape, mr);
  return rows;
}

// Bytes of x rows, and of weight rows, that one block of the product works on (both
// held in L2 together).
constexpr int64_t kXBlockBytes = 192 << 10;
constexpr int64_t kWBlockBytes = 128 << 10;

// acc[i][j] += ws[j] * (x row i at column c), for full or partial (count) vectors.
template <int MR, int NR>
inline void multiply_add(Lanes (&acc)[MR][NR], const Lanes (&ws)[NR], const float* x,
                         int64_t k, int64_t c, int64_t count) {
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) {
    const float* xi = x + i * k + c;
    const Lanes xv =
        count == Lanes::kLanes ? Lanes::load(xi) : Lanes::load_first(xi, count, 0.0f);
#pragma GCC unroll 16
    for (int j = 0; j < NR; ++j) acc[i][j] = fma(ws[j], xv, acc[i][j]);
  }
}

// The columns past the last whole step, a vector at a time (dense weights only).
template <typename Weights, int MR, int NR>
inline void multiply_add_tail(const Problem<Weights>& p, Lanes (&acc)[MR][NR], int64_t i0,
                              int64_t j0) {
  const int64_t start = p.k / Weights::kStep * Weights::kStep;
  for (int64_t c = start; c < p.k; c += Lanes::kLanes) {
    const int64_t count = std::min<int64_t>(Lanes::kLanes, p.k - c);
    Lanes ws[NR];
    for (int j = 0; j < NR; ++j) ws[j] = p.w.tail(j0 + j, c, count);
    multiply_add(acc, ws, p.x + i0 * p.k, p.k, c, count);
  }
}

// out[i0:i0+MR, j0:j0+NR].
template <typename Weights, int MR, int NR>
void tile(const Problem<Weights>& p, int64_t i0, int64_t j0) {
  constexpr int kVecs = Weights::kStep / Lanes::kLanes;
  const int64_t steps = p.k / Weights::kStep;
  const float* x = p.x + i0 * p.k;
  Lanes acc[MR][NR];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) acc[i][j] = Lanes::splat(0.0f);
  for (int64_t s = 0; s < steps; ++s) {
    typename Weights::Step w[NR];
#pragma GCC unroll 16
    for (int j = 0; j < NR; ++j) w[j] = p.w.step(j0 + j, s);
#pragma GCC unroll 16
    for (int v = 0; v < kVecs; ++v) {
      Lanes ws[NR];
#pragma GCC unroll 16
      for (int j = 0; j < NR; ++j) ws[j] = w[j].weights(v);
      multiply_add(acc, ws, x, p.k, s * Weights::kStep + v * Lanes::kLanes, Lanes::kLanes);
    }
  }
  if constexpr (Weights::kTail) multiply_add_tail(p, acc, i0, j0);
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) {
      const float sum = reduce_add(acc[i][j]);
      p.out[(i0 + i) * p.n + j0 + j] = p.bias ? sum + p.bias[j0 + j] : sum;
    }
}

// Rows [i0, i0 + MR) of x against weight rows [j_begin, j_end), NR at a time.
template <typename Weights, int MR>
void tile_row(const Problem<Weights>& p, int64_t i0, int64_t j_begin, int64_t j_end) {
  constexpr int NR = tile_n(Weights::kShape, MR);
  int64_t j0 = j_begin;
  for (; j0 + NR <= j_end; j0 += NR) tile<Weights, MR, NR>(p, i0, j0);
  for (; j0 < j_end; ++j0) tile<Weights, MR, 1>(p, i0, j0);
}

// A last tile row of fewer than kShape.rows rows.
template <typename Weights, int MR = Weights::kShape.rows - 1>
void short_tile_row(const Problem<Weights>& p, int64_t i0, int64_t rows, int64_t j_begin,
                    int64_t j_end) {
  if constexpr (MR >= 1) {
    if (rows == MR) {
      tile_row<Weights, MR>(p, i0, j_begin, j_end);
    } else {
      short_tile_row<Weights, MR - 1>(p, i0, rows, j_begin, j_end);
    }
  }
}

// Rows [i_begin, i_end) of x against weight rows [j_begin, j_end): the x rows of a tile
// stay in L1 while it runs over these weight rows, which stay in L2.
template <typename Weights>
void block(const Problem<Weights>& p, int64_t i_begin, int64_t i_end, int64_t j_begin,
           int64_t j_end) {
  constexpr int MR = Weights::kShape.rows;
  int64_t i0 = i_begin;
  for (; i0 + MR <= i_end; i0 += MR) tile_row<Weights, MR>(p, i0, j_begin, j_end);
  if (i0 < i_end) short_tile_row<Weights>(p, i0, i_end - i0, j_begin, j_end);
}

// `bytes` of rows of `row_bytes` each, in whole multiples of `unit` rows (at least one).
inline int64_t rows_in(int64_t bytes, int64_t row_bytes, int64_t unit) {
  return std::max<int64_t>(1, bytes / std::max<int64_t>(row_bytes, 1) / unit) * unit;
}

// Every row of x against weight rows [j_begin, j_end), in blocks that fit L2: about
// kXBlockBytes of x rows, about kWBlockBytes of weight rows.
template <typename Weights>
void weight_rows(const Problem<Weights>& p, int64_t j_begin, int64_t j_end) {
  const int64_t x_rows = rows_in(kXBlockBytes, 4 * p.k, Weights::kShape.rows);
  const int64_t w_rows = rows_in(kWBlockBytes, p.w.row_bytes(), task_rows(Weights::kShape));
  for (int64_t i0 = 0; i0 < p.m; i0 += x_rows)
    for (int64_t j0 = j_begin; j0 < j_end; j0 += w_rows)
      block(p, i0, std::min(i0 + x_rows, p.m), j0, std::min(j0 + w_rows, j_end));
}

template <typename Weights>
void run(const Problem<Weights>& p) {
  constexpr int64_t kRows = task_rows(Weights::kShape);
  at::parallel_for(0, (p.n + kRows - 1) / kRows, 1, [&](int64_t begin, int64_t end) {
    weight_rows(p, begin * kRows, std::min(end * kRows, p.n));
  });
}

}  // namespace vllm_cpu::linear
