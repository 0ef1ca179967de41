// The int8 GEMM of int8_linear.cpp, written once over a "dot" policy: how one ISA multiplies
// int8 activations by int8 weights into exact int32 sums (the policies are below and, for
// AVX-512 VNNI, in int8_vnni.cpp).
//
// Weights stay as the checkpoint stores them, (n, k) row-major int8: a tile holds MR rows of
// x against NR weight rows, loads each weight vector once for its MR rows and each x vector
// once for its NR weight rows, and keeps MR x NR vectors of int32 partial sums in registers.
// x is first copied into the policy's own element type (int16, or uint8 offset by 128),
// zero-padded to a whole number of steps. Integer sums are exact in any order, so the result
// is the reference's bit for bit whatever the ISA, tile or thread count; the float32 epilogue
// is one fixed sequence of roundings per output (int8_epilogue below).
//
// Everything here has internal linkage: int8_vnni.cpp includes it under another target, and
// its copies must never be linked in place of this file's.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "isa.h"

namespace vllm_cpu::int8 {

// One product out = epilogue(x_q W_q^T), see ops.h (int8_linear).
struct Problem {
  const int8_t* x;          // (m, k)
  const int8_t* w;          // (n, k)
  const int32_t* w_sums;    // (n,) sum of each weight row
  const int32_t* acc_bias;  // (n,) or nullptr
  const float* x_scale;     // (m,) or nullptr
  const float* w_scale;     // (n,)
  const float* bias;        // (n,) or nullptr
  float* out;               // (m, n)
  int64_t m, n, k;
};

namespace {

// `v` as a float32 in a register: keeps the compiler from fusing the product that made it
// with the addition that follows (GCC contracts a * b + c into an FMA even under -std=c++17),
// since the reference rounds the product and the sum separately.
inline float rounded(float v) {
#if defined(__x86_64__) || defined(__i386__)
  __asm__("" : "+x"(v));
#elif defined(__aarch64__)
  __asm__("" : "+w"(v));
#endif
  return v;
}

// int32 addition that wraps as torch's int32 tensors do.
inline int32_t wrapping_add(int32_t a, int32_t b) {
  return static_cast<int32_t>(static_cast<uint32_t>(a) + static_cast<uint32_t>(b));
}

// out[i, j] from its exact int32 sum, in the reference's order (int8_kernels.py):
//   dynamic: (float(acc) * x_scale[i]) * w_scale[j] (+ bias[j])
//   static:  float(acc + acc_bias[j]) * w_scale[j]
inline void int8_epilogue(const Problem& p, int64_t i, int64_t j, int32_t acc) {
  if (p.acc_bias) acc = wrapping_add(acc, p.acc_bias[j]);
  float v = static_cast<float>(acc);
  if (p.x_scale) v = rounded(v * p.x_scale[i]);
  v = rounded(v * p.w_scale[j]);
  if (p.bias) v = v + p.bias[j];
  p.out[i * p.n + j] = v;
}

// x rows converted to the policy's element type, zero-padded to kp = k rounded up to a step.
template <typename Dot>
std::vector<typename Dot::X> converted_x(const Problem& p, int64_t kp) {
  std::vector<typename Dot::X> xs(static_cast<size_t>(p.m * kp));
  at::parallel_for(0, p.m, 16, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      typename Dot::X* row = xs.data() + i * kp;
      for (int64_t c = 0; c < p.k; ++c) row[c] = Dot::convert(p.x[i * p.k + c]);
      std::fill(row + p.k, row + kp, typename Dot::X(0));
    }
  });
  return xs;
}

template <typename Dot, int MR, int NR>
inline void multiply_add(typename Dot::Acc (&acc)[MR][NR], const typename Dot::W (&w)[NR],
                         const typename Dot::X* x, int64_t kp, int64_t c) {
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i) {
    const auto xv = Dot::load_x(x + i * kp + c);
#pragma GCC unroll 8
    for (int j = 0; j < NR; ++j) acc[i][j] = Dot::multiply_add(acc[i][j], xv, w[j]);
  }
}

// out[i0:i0+MR, j0:j0+NR]; x: the converted rows from i0, kp apart.
template <typename Dot, int MR, int NR>
void tile(const Problem& p, const typename Dot::X* x, int64_t kp, int64_t i0, int64_t j0) {
  typename Dot::Acc acc[MR][NR];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) acc[i][j] = Dot::zero();
  const int8_t* w0 = p.w + j0 * p.k;
  const int64_t whole = p.k / Dot::kStep * Dot::kStep;
  for (int64_t c = 0; c < whole; c += Dot::kStep) {
    typename Dot::W w[NR];
#pragma GCC unroll 8
    for (int j = 0; j < NR; ++j) w[j] = Dot::load_w(w0 + j * p.k + c);
    multiply_add<Dot>(acc, w, x, kp, c);
  }
  if (whole < p.k) {  // the last partial step, its weights zero-padded on the stack
    alignas(64) int8_t rest[NR][Dot::kStep] = {};
    typename Dot::W w[NR];
    for (int j = 0; j < NR; ++j) {
      std::memcpy(rest[j], w0 + j * p.k + whole, p.k - whole);
      w[j] = Dot::load_w(rest[j]);
    }
    multiply_add<Dot>(acc, w, x, kp, whole);
  }
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) {
      const int32_t offset = static_cast<int32_t>(
          static_cast<uint32_t>(Dot::kXOffset) * static_cast<uint32_t>(p.w_sums[j0 + j]));
      int8_epilogue(p, i0 + i, j0 + j, wrapping_add(Dot::total(acc[i][j]), -offset));
    }
}

constexpr int tile_n(int sums, int mr) { return std::clamp(sums / mr, 1, 8); }

// Rows [i0, i0 + MR) against weight rows [j_begin, j_end), NR at a time.
template <typename Dot, int MR>
void tile_row(const Problem& p, const typename Dot::X* xs, int64_t kp, int64_t i0,
              int64_t j_begin, int64_t j_end) {
  constexpr int NR = tile_n(Dot::kSums, MR);
  const typename Dot::X* x = xs + i0 * kp;
  int64_t j0 = j_begin;
  for (; j0 + NR <= j_end; j0 += NR) tile<Dot, MR, NR>(p, x, kp, i0, j0);
  for (; j0 < j_end; ++j0) tile<Dot, MR, 1>(p, x, kp, i0, j0);
}

// A last tile row of `rows` < Dot::kRows rows.
template <typename Dot, int MR = Dot::kRows - 1>
void short_tile_row(const Problem& p, const typename Dot::X* xs, int64_t kp, int64_t i0,
                    int64_t rows, int64_t j_begin, int64_t j_end) {
  if constexpr (MR >= 1) {
    if (rows == MR) return tile_row<Dot, MR>(p, xs, kp, i0, j_begin, j_end);
    short_tile_row<Dot, MR - 1>(p, xs, kp, i0, rows, j_begin, j_end);
  }
}

// Bytes of converted x rows, and of weight rows, one block of the product works on (both
// stay in L2 while the block runs).
constexpr int64_t kXBlockBytes = 192 << 10;
constexpr int64_t kWBlockBytes = 128 << 10;
// Weight rows per parallel task: a multiple of every tile_n, so only the last has a rest.
constexpr int64_t kTaskRows = 24;

inline int64_t rows_in(int64_t bytes, int64_t row_bytes, int64_t unit) {
  return std::max<int64_t>(1, bytes / std::max<int64_t>(row_bytes, 1) / unit) * unit;
}

// Every row of x against weight rows [j_begin, j_end), block by block.
template <typename Dot>
void weight_rows(const Problem& p, const typename Dot::X* xs, int64_t kp, int64_t j_begin,
                 int64_t j_end) {
  constexpr int MR = Dot::kRows;
  const int64_t x_rows = rows_in(kXBlockBytes, kp * sizeof(typename Dot::X), MR);
  const int64_t w_rows = rows_in(kWBlockBytes, p.k, kTaskRows);
  for (int64_t i_block = 0; i_block < p.m; i_block += x_rows) {
    const int64_t i_end = std::min(i_block + x_rows, p.m);
    for (int64_t j_block = j_begin; j_block < j_end; j_block += w_rows) {
      const int64_t j_stop = std::min(j_block + w_rows, j_end);
      int64_t i0 = i_block;
      for (; i0 + MR <= i_end; i0 += MR) tile_row<Dot, MR>(p, xs, kp, i0, j_block, j_stop);
      if (i0 < i_end) short_tile_row<Dot>(p, xs, kp, i0, i_end - i0, j_block, j_stop);
    }
  }
}

template <typename Dot>
void run(const Problem& p) {
  static_assert(kTaskRows % tile_n(Dot::kSums, 1) == 0, "kTaskRows must hold whole tiles");
  const int64_t kp = (p.k + Dot::kStep - 1) / Dot::kStep * Dot::kStep;
  const std::vector<typename Dot::X> xs = converted_x<Dot>(p, kp);
  at::parallel_for(0, (p.n + kTaskRows - 1) / kTaskRows, 1, [&](int64_t begin, int64_t end) {
    weight_rows<Dot>(p, xs.data(), kp, begin * kTaskRows, std::min(end * kTaskRows, p.n));
  });
}

}  // namespace
}  // namespace vllm_cpu::int8
