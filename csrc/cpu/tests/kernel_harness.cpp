// Checks one build variant of the CPU kernels (ops.h) against double-precision references
// on random inputs; scripts/cross_build_aarch64.py links it per variant and runs it under
// qemu-aarch64. Usage: kernel_harness <expected isa: neon | portable | avx512 | avx2> [seed]
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include <torch/all.h>  // the harness makes tensors (ops.h declares the kernels only)

#include "ops.h"

// isa_report.cpp, compiled with the variant's own flags.
int harness_isa_avx512();
int harness_isa_avx2();
int harness_isa_neon();
const char* harness_isa_macros();

namespace {

constexpr double kUnit = 1.0 / (1 << 24);  // float32 unit roundoff, 2^-24
// The exp the attention kernels use (std::exp or a vector polynomial) is held to this
// relative error; the AVX-512 polynomial is below 1e-7.
constexpr double kExpRelError = 1e-6;

// Counts checks; prints the first failures of each kind and the worst error margin.
struct Report {
  const char* name;
  int cases = 0;
  int failures = 0;
  double worst = 0.0;  // largest error / bound seen

  void close(double error, double bound, const std::string& where) {
    const double ratio = bound > 0 ? error / bound : (error == 0 ? 0.0 : INFINITY);
    worst = std::max(worst, ratio);
    if (!(error <= bound)) fail(where + ": error " + std::to_string(error) + " > bound " +
                                std::to_string(bound));
  }
  void fail(const std::string& what) {
    if (++failures <= 5) std::printf("  FAIL %s: %s\n", name, what.c_str());
  }
  void summary() const {
    std::printf("%s %s: %d cases, worst error %.3g of its bound\n",
                failures ? "FAIL" : "ok  ", name, cases, worst);
  }
};

std::mt19937_64 rng;

double uniform(double low, double high) {
  return std::uniform_real_distribution<double>(low, high)(rng);
}
int64_t uniform_int(int64_t low, int64_t high) {  // inclusive
  return std::uniform_int_distribution<int64_t>(low, high)(rng);
}
float normal() { return static_cast<float>(std::normal_distribution<double>(0, 1)(rng)); }

torch::Tensor random_floats(at::IntArrayRef shape) {
  torch::Tensor t = torch::empty(shape, torch::kFloat32);
  float* data = t.data_ptr<float>();
  for (int64_t i = 0; i < t.numel(); ++i) data[i] = normal();
  return t;
}

// bfloat16 by hand (not c10::BFloat16), so the references share no code with the kernels:
// the top half of a float32, rounded to nearest even (inputs are finite).
uint16_t to_bf16_bits(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof(bits));
  bits += 0x7FFF + ((bits >> 16) & 1);
  return static_cast<uint16_t>(bits >> 16);
}
float from_bf16_bits(uint16_t half) {
  const uint32_t bits = static_cast<uint32_t>(half) << 16;
  float value;
  std::memcpy(&value, &bits, sizeof(value));
  return value;
}

// Random normal values in `dtype` (float32 or bfloat16).
torch::Tensor random_tensor(at::IntArrayRef shape, at::ScalarType dtype) {
  const torch::Tensor values = random_floats(shape);
  if (dtype == torch::kFloat32) return values;
  torch::Tensor t = torch::empty(shape, torch::kBFloat16);
  auto* bits = reinterpret_cast<uint16_t*>(t.data_ptr());
  for (int64_t i = 0; i < t.numel(); ++i) bits[i] = to_bf16_bits(values.data_ptr<float>()[i]);
  return t;
}

// A contiguous float32 copy holding exactly the tensor's values.
torch::Tensor exact_floats(const torch::Tensor& t) {
  const torch::Tensor dense = t.contiguous();
  if (dense.scalar_type() == torch::kFloat32) return dense.clone();
  torch::Tensor values = torch::empty(dense.sizes(), torch::kFloat32);
  const auto* bits = reinterpret_cast<const uint16_t*>(dense.data_ptr());
  for (int64_t i = 0; i < dense.numel(); ++i) values.data_ptr<float>()[i] = from_bf16_bits(bits[i]);
  return values;
}

const char* dtype_name(at::ScalarType dtype) {
  return dtype == torch::kBFloat16 ? "bf16" : "f32";
}

// ---- GGUF blocks --------------------------------------------------------------------------

// IEEE binary16 bits to double, written out here rather than through c10::Half so that
// the reference shares no code with the kernels.
double half_to_double(uint16_t bits) {
  const int exponent = (bits >> 10) & 0x1F;
  const int mantissa = bits & 0x3FF;
  double magnitude;
  if (exponent == 0) {
    magnitude = std::ldexp(mantissa, -24);  // subnormal: m * 2^-24
  } else if (exponent == 31) {
    magnitude = mantissa ? NAN : INFINITY;
  } else {
    magnitude = std::ldexp(1024 + mantissa, exponent - 25);  // (1 + m/1024) * 2^(e-15)
  }
  return (bits & 0x8000) ? -magnitude : magnitude;
}

// A random finite binary16 scale: mostly around 2^-6..2^1, sometimes zero or subnormal.
uint16_t random_half_bits() {
  const int64_t pick = uniform_int(0, 19);
  const int exponent = pick == 0 ? 0 : static_cast<int>(uniform_int(9, 16));
  const uint16_t mantissa = pick == 1 ? 0 : static_cast<uint16_t>(uniform_int(0, 1023));
  const uint16_t sign = static_cast<uint16_t>(uniform_int(0, 1) << 15);
  return static_cast<uint16_t>(sign | (exponent << 10) | mantissa);
}

void put_half(uint8_t* bytes, uint16_t bits) {  // GGUF is little-endian
  bytes[0] = static_cast<uint8_t>(bits & 0xFF);
  bytes[1] = static_cast<uint8_t>(bits >> 8);
}
uint16_t get_half(const uint8_t* bytes) {
  return static_cast<uint16_t>(bytes[0] | (bytes[1] << 8));
}

int64_t block_bytes(int64_t qtype) { return qtype == 3 ? 20 : 34; }

// (n, k / 32, bytes) random blocks: random scales (and Q4_1 minimums), random quants.
torch::Tensor random_blocks(int64_t n, int64_t k, int64_t qtype) {
  const int64_t bytes = block_bytes(qtype);
  torch::Tensor blocks = torch::empty({n, k / 32, bytes}, torch::kUInt8);
  uint8_t* data = blocks.data_ptr<uint8_t>();
  for (int64_t b = 0; b < n * (k / 32); ++b) {
    uint8_t* block = data + b * bytes;
    put_half(block, random_half_bits());
    int64_t first_quant = 2;
    if (qtype == 3) {
      put_half(block + 2, random_half_bits());
      first_quant = 4;
    }
    for (int64_t j = first_quant; j < bytes; ++j)
      block[j] = static_cast<uint8_t>(uniform_int(0, 255));
  }
  return blocks;
}

// The 32 weights of one block, per the format comment of gguf_blocks.h:
//   Q4_1: d * q_j + m, q_j the low nibble of byte j (j < 16), else the high one of j - 16;
//   Q8_0: d * q_j, q_j signed bytes.
void dequantize_block(const uint8_t* block, int64_t qtype, double* out) {
  const double d = half_to_double(get_half(block));
  if (qtype == 3) {
    const double m = half_to_double(get_half(block + 2));
    for (int j = 0; j < 32; ++j) {
      const int q = j < 16 ? (block[4 + j] & 0x0F) : (block[4 + j - 16] >> 4);
      out[j] = d * q + m;
    }
  } else {
    for (int j = 0; j < 32; ++j) out[j] = d * static_cast<int8_t>(block[2 + j]);
  }
}

// y = x W^T + b against the reference. The bound is float32 summation's own: every weight
// rounds once (d * q is exact, + m rounds), each of the k products and sums once, the bias
// once: |error| <= (k + 4) u (sum_c |x_c w_c| + |b|), doubled for headroom.
void check_gguf_case(Report& report, int64_t qtype, int64_t m, int64_t n, int64_t k,
                     bool with_bias) {
  ++report.cases;
  const torch::Tensor x = random_floats({m, k});
  const torch::Tensor blocks = random_blocks(n, k, qtype);
  const std::optional<torch::Tensor> bias =
      with_bias ? std::optional<torch::Tensor>(random_floats({n})) : std::nullopt;
  torch::Tensor out = torch::full({m, n}, NAN, torch::kFloat32);
  gguf_linear(out, x, blocks, qtype, bias);

  const int64_t bytes = block_bytes(qtype);
  std::vector<double> weights(k);
  const float* xs = x.data_ptr<float>();
  const float* ys = out.data_ptr<float>();
  for (int64_t r = 0; r < n; ++r) {
    for (int64_t b = 0; b < k / 32; ++b)
      dequantize_block(blocks.data_ptr<uint8_t>() + (r * (k / 32) + b) * bytes, qtype,
                       weights.data() + b * 32);
    const double b_r = with_bias ? bias->data_ptr<float>()[r] : 0.0;
    for (int64_t i = 0; i < m; ++i) {
      double sum = b_r, magnitude = std::abs(b_r);
      for (int64_t c = 0; c < k; ++c) {
        sum += xs[i * k + c] * weights[c];
        magnitude += std::abs(xs[i * k + c] * weights[c]);
      }
      const double bound = 2.0 * (k + 4) * kUnit * magnitude;
      report.close(std::abs(ys[i * n + r] - sum), bound,
                   "qtype " + std::to_string(qtype) + " m=" + std::to_string(m) + " n=" +
                       std::to_string(n) + " k=" + std::to_string(k) + " out[" +
                       std::to_string(i) + "][" + std::to_string(r) + "]");
    }
  }
}

int check_gguf_linear() {
  Report report{"gguf_linear"};
  const std::vector<std::pair<int64_t, int64_t>> shapes = {{1, 32}, {7, 96}, {33, 256}, {40, 64}};
  int index = 0;
  for (int64_t qtype : {3, 8})
    for (int64_t m : {1, 3, 8, 13})  // 8-row tiles and their remainders
      for (auto [n, k] : shapes) check_gguf_case(report, qtype, m, n, k, ++index % 2 == 0);
  try {  // an unsupported type is refused, and the error crosses the library boundary
    torch::Tensor out = torch::empty({1, 1});
    gguf_linear(out, torch::zeros({1, 32}), torch::zeros({1, 1, 20}, torch::kUInt8), 2,
                std::nullopt);
    report.fail("qtype 2 was accepted");
  } catch (const c10::Error&) {
  }
  report.summary();
  return report.failures;
}

// ---- dense_linear --------------------------------------------------------------------------

// y = x W^T + b against the double reference, with gguf_linear's bound (the weights are
// exact here, which only loosens it).
void check_dense_case(Report& report, int64_t m, int64_t n, int64_t k, bool with_bias) {
  ++report.cases;
  const torch::Tensor x = random_floats({m, k});
  const torch::Tensor weight = random_floats({n, k});
  const std::optional<torch::Tensor> bias =
      with_bias ? std::optional<torch::Tensor>(random_floats({n})) : std::nullopt;
  torch::Tensor out = torch::full({m, n}, NAN, torch::kFloat32);
  dense_linear(out, x, weight, bias);
  const float* xs = x.data_ptr<float>();
  const float* ws = weight.data_ptr<float>();
  const float* ys = out.data_ptr<float>();
  for (int64_t r = 0; r < n; ++r) {
    const double b_r = with_bias ? bias->data_ptr<float>()[r] : 0.0;
    for (int64_t i = 0; i < m; ++i) {
      double sum = b_r, magnitude = std::abs(b_r);
      for (int64_t c = 0; c < k; ++c) {
        const double product = static_cast<double>(xs[i * k + c]) * ws[r * k + c];
        sum += product;
        magnitude += std::abs(product);
      }
      report.close(std::abs(ys[i * n + r] - sum), 2.0 * (k + 4) * kUnit * magnitude,
                   "m=" + std::to_string(m) + " n=" + std::to_string(n) + " k=" +
                       std::to_string(k) + " out[" + std::to_string(i) + "][" +
                       std::to_string(r) + "]");
    }
  }
}

int check_dense_linear() {
  Report report{"dense_linear"};
  // k below, at and past whole vectors and 4-vector steps (NEON 4 lanes, portable 8).
  const std::vector<std::pair<int64_t, int64_t>> shapes = {
      {1, 1}, {5, 3}, {7, 16}, {33, 35}, {40, 64}, {9, 301}};
  int index = 0;
  for (int64_t m : {1, 3, 6, 7, 13})  // tiles of 4 and 6 rows and their remainders
    for (auto [n, k] : shapes) check_dense_case(report, m, n, k, ++index % 2 == 0);
  try {  // a weight of another width is refused
    torch::Tensor out = torch::empty({1, 2});
    dense_linear(out, torch::zeros({1, 8}), torch::zeros({2, 9}), std::nullopt);
    report.fail("a (2, 9) weight for 8 columns was accepted");
  } catch (const c10::Error&) {
  }
  report.summary();
  return report.failures;
}

// ---- row invariance -------------------------------------------------------------------------

// Every row of a batch is bit for bit the row computed alone on one thread, whatever the
// batch size, the other rows and the thread count (ops.h). `linear(x)` returns x W^T + b.
template <typename Linear>
void check_rows_invariant(Report& report, const std::string& name, int64_t k, Linear linear) {
  const int threads = at::get_num_threads();
  const int64_t total = 40;
  const torch::Tensor rows = random_floats({total, k});
  at::set_num_threads(1);
  std::vector<torch::Tensor> alone;
  for (int64_t i = 0; i < total; ++i) alone.push_back(linear(rows.narrow(0, i, 1).clone()));
  for (int run_threads : {1, threads}) {
    at::set_num_threads(run_threads);
    for (int64_t m : {2, 3, 5, 6, 7, 8, 13, 40}) {
      ++report.cases;
      std::vector<int64_t> picked(total);
      std::iota(picked.begin(), picked.end(), 0);
      std::shuffle(picked.begin(), picked.end(), rng);
      picked.resize(m);
      const torch::Tensor batch = linear(
          rows.index_select(0, torch::tensor(picked, torch::kInt64)).contiguous());
      for (int64_t i = 0; i < m; ++i)
        if (!torch::equal(batch.narrow(0, i, 1), alone[picked[i]]))
          report.fail(name + ": row " + std::to_string(picked[i]) + " differs in a batch of " +
                      std::to_string(m) + " on " + std::to_string(run_threads) + " threads");
    }
  }
  at::set_num_threads(threads);
}

int check_row_invariance() {
  Report report{"row invariance"};
  const int64_t n = 37;
  const torch::Tensor bias = random_floats({n});
  for (int64_t qtype : {3, 8}) {
    const torch::Tensor blocks = random_blocks(n, 96, qtype);
    check_rows_invariant(report, "gguf_linear qtype " + std::to_string(qtype), 96,
                         [&](const torch::Tensor& x) {
                           torch::Tensor out = torch::empty({x.size(0), n});
                           gguf_linear(out, x, blocks, qtype, bias);
                           return out;
                         });
  }
  for (int64_t k : {45, 64}) {
    const torch::Tensor weight = random_floats({n, k});
    check_rows_invariant(report, "dense_linear k=" + std::to_string(k), k,
                         [&](const torch::Tensor& x) {
                           torch::Tensor out = torch::empty({x.size(0), n});
                           dense_linear(out, x, weight, bias);
                           return out;
                         });
  }
  report.summary();
  return report.failures;
}

// ---- paged attention ----------------------------------------------------------------------

struct AttentionCase {
  int64_t num_seqs, num_heads, num_kv_heads, head_size, block_size, max_blocks;
  bool strided_query;  // query rows are a slice of wider rows
  bool in_place;       // out is the query tensor
  at::ScalarType cache_dtype, query_dtype;  // query_dtype is out's too
};

// Each sequence gets distinct blocks of the cache in shuffled order; lengths cover empty,
// one token, exactly one block, a full table and random ones.
void random_tables(const AttentionCase& c, int64_t num_blocks, torch::Tensor& block_table,
                   torch::Tensor& seq_lens) {
  std::vector<int32_t> ids(num_blocks);
  std::iota(ids.begin(), ids.end(), 0);
  std::shuffle(ids.begin(), ids.end(), rng);
  block_table = torch::empty({c.num_seqs, c.max_blocks}, torch::kInt32);
  seq_lens = torch::empty({c.num_seqs}, torch::kInt32);
  const int64_t capacity = c.max_blocks * c.block_size;
  const int64_t special[] = {0, 1, c.block_size, capacity};
  for (int64_t s = 0; s < c.num_seqs; ++s) {
    for (int64_t b = 0; b < c.max_blocks; ++b)
      block_table.data_ptr<int32_t>()[s * c.max_blocks + b] = ids[s * c.max_blocks + b];
    seq_lens.data_ptr<int32_t>()[s] =
        static_cast<int32_t>(s < 4 ? special[s] : uniform_int(1, capacity));
  }
}

// One (sequence, head) row against softmax(scale q K^T) V in double. Bound, first order:
// each score errs by at most delta = (d + 2) u scale sum|q k|, so each softmax weight by a
// relative e = 2 delta_max + u |s - s_max| + exp error, the output by 2 e_max plus the
// (T + 2) u of each of its two sums, times the weighted mean |v|; four times that for headroom.
// A bfloat16 out adds its rounding, half a unit of its 8 bits (2^-8 relative, allowing 2^-7).
void check_attention_row(Report& report, const AttentionCase& c, const float* q,
                         const float* key_cache, const float* value_cache, const int32_t* blocks,
                         int64_t seq_len, int64_t kv_head, double scale, const float* out,
                         const std::string& where) {
  const int64_t d = c.head_size;
  const int64_t token_stride = c.num_kv_heads * d;
  auto row = [&](const float* cache, int64_t t) {
    return cache + (blocks[t / c.block_size] * c.block_size + t % c.block_size) * token_stride +
           kv_head * d;
  };
  if (seq_len == 0) {  // defined as zeros
    for (int64_t i = 0; i < d; ++i) report.close(std::abs(out[i]), 0.0, where + " (empty)");
    return;
  }
  std::vector<double> scores(seq_len);
  double delta = 0.0;
  for (int64_t t = 0; t < seq_len; ++t) {
    const float* k = row(key_cache, t);
    double dot = 0.0, magnitude = 0.0;
    for (int64_t i = 0; i < d; ++i) {
      dot += static_cast<double>(q[i]) * k[i];
      magnitude += std::abs(static_cast<double>(q[i]) * k[i]);
    }
    scores[t] = scale * dot;
    delta = std::max(delta, (d + 2) * kUnit * scale * magnitude);
  }
  const double top = *std::max_element(scores.begin(), scores.end());
  double total = 0.0, spread = 0.0;
  for (int64_t t = 0; t < seq_len; ++t) {
    spread = std::max(spread, top - scores[t]);
    scores[t] = std::exp(scores[t] - top);
    total += scores[t];
  }
  const double weight_error = 2 * delta + kUnit * spread + kExpRelError;
  const double relative = 4.0 * (2 * weight_error + 2 * (seq_len + 2) * kUnit);
  for (int64_t i = 0; i < d; ++i) {
    double sum = 0.0, magnitude = 0.0;
    for (int64_t t = 0; t < seq_len; ++t) {
      sum += scores[t] * row(value_cache, t)[i];
      magnitude += scores[t] * std::abs(row(value_cache, t)[i]);
    }
    const double rounding = c.query_dtype == torch::kBFloat16 ? std::ldexp(1.0, -7) : 0.0;
    report.close(std::abs(out[i] - sum / total),
                 relative * magnitude / total + rounding * std::abs(sum / total),
                 where + " dim " + std::to_string(i));
  }
}

void check_attention_case(Report& report, const AttentionCase& c) {
  ++report.cases;
  const int64_t num_blocks = c.num_seqs * c.max_blocks + 3;  // a few blocks nobody uses
  const std::vector<int64_t> cache_shape = {num_blocks, c.block_size, c.num_kv_heads,
                                            c.head_size};
  const torch::Tensor key_cache = random_tensor(cache_shape, c.cache_dtype);
  const torch::Tensor value_cache = random_tensor(cache_shape, c.cache_dtype);
  const torch::Tensor key_values = exact_floats(key_cache);
  const torch::Tensor value_values = exact_floats(value_cache);
  torch::Tensor block_table, seq_lens;
  random_tables(c, num_blocks, block_table, seq_lens);
  const int64_t row_width = c.strided_query ? 2 * c.head_size : c.head_size;
  torch::Tensor query = random_tensor({c.num_seqs, c.num_heads, row_width}, c.query_dtype)
                            .narrow(2, 0, c.head_size);
  const torch::Tensor query_copy = exact_floats(query);  // in place overwrites query
  torch::Tensor out = c.in_place
                          ? query
                          : torch::full({c.num_seqs, c.num_heads, c.head_size}, NAN,
                                        torch::TensorOptions().dtype(c.query_dtype));
  const double scale = 1.0 / std::sqrt(static_cast<double>(c.head_size));
  paged_attention_decode(out, query, key_cache, value_cache, block_table, seq_lens, scale);

  const torch::Tensor result = exact_floats(out);
  const int64_t group = c.num_heads / c.num_kv_heads;
  for (int64_t s = 0; s < c.num_seqs; ++s)
    for (int64_t h = 0; h < c.num_heads; ++h) {
      const int64_t offset = (s * c.num_heads + h) * c.head_size;
      const std::string where = std::string(dtype_name(c.cache_dtype)) + " cache, " +
                                dtype_name(c.query_dtype) + " query, head_size " +
                                std::to_string(c.head_size) + " seqs " +
                                std::to_string(c.num_seqs) + " heads " +
                                std::to_string(c.num_heads) + "/" + std::to_string(c.num_kv_heads) +
                                " seq " + std::to_string(s) + " head " + std::to_string(h);
      check_attention_row(report, c, query_copy.data_ptr<float>() + offset,
                          key_values.data_ptr<float>(), value_values.data_ptr<float>(),
                          block_table.data_ptr<int32_t>() + s * c.max_blocks,
                          seq_lens.data_ptr<int32_t>()[s], h / group, scale,
                          result.data_ptr<float>() + offset, where);
    }
}

int check_paged_attention() {
  Report report{"paged_attention_decode"};
  // Every specialised head size and a generic one; 3 sequences split work by kv head,
  // 9 by sequence (at 2 threads); GQA, MQA and MHA groupings; two block sizes; float32
  // and bfloat16 caches and queries in each combination.
  const auto f32 = torch::kFloat32, bf16 = torch::kBFloat16;
  for (int64_t head_size : {32, 64, 80, 96, 128, 256, 40}) {
    check_attention_case(report, {3, 4, 2, head_size, 16, 3, true, false, f32, f32});
    check_attention_case(report, {9, 4, 1, head_size, 5, 4, false, false, f32, f32});
    check_attention_case(report, {5, 2, 2, head_size, 16, 2, false, true, f32, f32});
    check_attention_case(report, {3, 4, 2, head_size, 16, 3, true, false, bf16, f32});
    check_attention_case(report, {9, 4, 1, head_size, 5, 4, false, true, bf16, bf16});
    check_attention_case(report, {5, 2, 2, head_size, 16, 2, false, false, f32, bf16});
  }
  try {  // a block id outside the cache is refused before it is followed
    torch::Tensor cache = torch::zeros({2, 4, 1, 32});
    torch::Tensor query = torch::zeros({1, 1, 32});
    torch::Tensor out = torch::empty_like(query);
    paged_attention_decode(out, query, cache, cache, torch::full({1, 1}, 7, torch::kInt32),
                           torch::full({1}, 3, torch::kInt32), 1.0);
    report.fail("block id 7 of a 2-block cache was accepted");
  } catch (const c10::Error&) {
  }
  report.summary();
  return report.failures;
}

// ---- reshape_and_cache --------------------------------------------------------------------

// Keys and values land bit for bit at their slots; -1 slots and every other slot are left
// as they were. Token rows are slices of a wider (qkv-like) buffer, as the model passes them.
void check_cache_case(Report& report, int64_t num_tokens, int64_t num_kv_heads,
                      int64_t head_size, int64_t block_size, at::ScalarType dtype) {
  ++report.cases;
  const int64_t num_blocks = (num_tokens + block_size - 1) / block_size + 2;
  const int64_t num_slots = num_blocks * block_size;
  torch::Tensor key_cache = random_tensor({num_blocks, block_size, num_kv_heads, head_size}, dtype);
  torch::Tensor value_cache =
      random_tensor({num_blocks, block_size, num_kv_heads, head_size}, dtype);
  const torch::Tensor key_before = key_cache.clone(), value_before = value_cache.clone();
  const torch::Tensor rows = random_tensor({num_tokens, 3, num_kv_heads, head_size}, dtype);
  const torch::Tensor key = rows.select(1, 1), value = rows.select(1, 2);

  std::vector<int64_t> slots(num_slots);
  std::iota(slots.begin(), slots.end(), 0);
  std::shuffle(slots.begin(), slots.end(), rng);
  torch::Tensor slot_mapping = torch::empty({num_tokens}, torch::kInt64);
  for (int64_t t = 0; t < num_tokens; ++t)
    slot_mapping.data_ptr<int64_t>()[t] = uniform_int(0, 9) == 0 ? -1 : slots[t];
  reshape_and_cache(key, value, key_cache, value_cache, slot_mapping);

  const size_t slot_bytes = num_kv_heads * head_size * key_cache.element_size();
  std::vector<int64_t> token_at(num_slots, -1);
  for (int64_t t = 0; t < num_tokens; ++t)
    if (slot_mapping.data_ptr<int64_t>()[t] >= 0) token_at[slot_mapping.data_ptr<int64_t>()[t]] = t;
  const torch::Tensor key_rows = key.contiguous(), value_rows = value.contiguous();
  auto slot = [&](const torch::Tensor& cache, int64_t s) {
    return static_cast<const char*>(cache.data_ptr()) + s * slot_bytes;
  };
  auto token = [&](const torch::Tensor& rows_of, int64_t t) {
    return static_cast<const char*>(rows_of.data_ptr()) + t * slot_bytes;
  };
  int64_t wrong = 0;
  for (int64_t s = 0; s < num_slots; ++s) {
    const int64_t t = token_at[s];
    const char* want_key = t >= 0 ? token(key_rows, t) : slot(key_before, s);
    const char* want_value = t >= 0 ? token(value_rows, t) : slot(value_before, s);
    wrong += std::memcmp(slot(key_cache, s), want_key, slot_bytes) != 0;
    wrong += std::memcmp(slot(value_cache, s), want_value, slot_bytes) != 0;
  }
  report.close(static_cast<double>(wrong), 0.0,
               std::string(dtype_name(dtype)) + ", " + std::to_string(num_tokens) +
                   " tokens, " + std::to_string(num_kv_heads) +
                   " kv heads of " + std::to_string(head_size) + ": wrong slots");
}

int check_reshape_and_cache() {
  Report report{"reshape_and_cache"};
  for (auto dtype : {torch::kFloat32, torch::kBFloat16}) {
    check_cache_case(report, 1, 1, 64, 16, dtype);
    check_cache_case(report, 37, 2, 80, 16, dtype);
    check_cache_case(report, 600, 2, 32, 16, dtype);  // over the 256-token grain: threads
    check_cache_case(report, 50, 4, 128, 5, dtype);
  }
  try {  // a slot past the cache is refused
    torch::Tensor cache = torch::zeros({1, 4, 1, 8});
    torch::Tensor rows = torch::zeros({1, 1, 8});
    reshape_and_cache(rows, rows, cache, cache, torch::full({1}, 4, torch::kInt64));
    report.fail("slot 4 of a 4-slot cache was accepted");
  } catch (const c10::Error&) {
  }
  report.summary();
  return report.failures;
}

// ---- exponential_race_sample --------------------------------------------------------------

// The race in double precision, its uniforms written out again here from the documented
// scheme (splitmix64 words addressed by (seed, position, token); ops.h, counter_rng.h).
uint64_t splitmix64_output(uint64_t state, uint64_t k) {
  uint64_t z = state + k * 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

std::vector<double> reference_race_keys(const float* logits, int64_t vocab, int64_t seed,
                                        int64_t position) {
  const uint64_t stream = splitmix64_output(static_cast<uint64_t>(seed),
                                            static_cast<uint64_t>(position) + 1);
  std::vector<double> keys(vocab);
  for (int64_t i = 0; i < vocab; ++i) {
    const uint64_t word = splitmix64_output(stream, static_cast<uint64_t>(i / 2) + 1);
    const uint32_t half = static_cast<uint32_t>(i % 2 ? word : word >> 32);
    const double u = (2.0 * (half >> 9) + 1.0) / 16777216.0;
    keys[i] = std::isnan(logits[i]) ? -INFINITY : logits[i] - std::log(-std::log(u));
  }
  return keys;
}

struct RaceCase {
  int64_t rows, vocab;
  double scale;     // of the normal logits
  double filtered;  // share of tokens set to -inf (a tenth of those NaN instead)
};

// The kernel's token is the reference's where the two best keys are clearly apart, a
// near-best one elsewhere, and never a filtered one.
void check_race_case(Report& report, const RaceCase& c) {
  torch::Tensor logits = torch::empty({c.rows, c.vocab}, torch::kFloat32);
  float* z = logits.data_ptr<float>();
  for (int64_t i = 0; i < logits.numel(); ++i) {
    z[i] = static_cast<float>(normal() * c.scale);
    if (uniform(0, 1) < c.filtered) z[i] = uniform(0, 1) < 0.1 ? NAN : -INFINITY;
  }
  torch::Tensor seeds = torch::empty({c.rows}, torch::kInt64);
  torch::Tensor positions = torch::empty({c.rows}, torch::kInt64);
  for (int64_t r = 0; r < c.rows; ++r) {
    seeds.data_ptr<int64_t>()[r] = static_cast<int64_t>(rng());
    positions.data_ptr<int64_t>()[r] = uniform_int(0, 1 << 20);
  }
  torch::Tensor out = torch::empty({c.rows}, torch::kInt64);
  exponential_race_sample(out, logits, seeds, positions);
  const std::string where = std::to_string(c.rows) + " x " + std::to_string(c.vocab) +
                            ", scale " + std::to_string(c.scale);
  for (int64_t r = 0; r < c.rows; ++r) {
    ++report.cases;
    const int64_t token = out.data_ptr<int64_t>()[r];
    if (token < 0 || token >= c.vocab) {
      report.fail(where + ": token " + std::to_string(token) + " outside the vocabulary");
      continue;
    }
    const std::vector<double> keys = reference_race_keys(
        z + r * c.vocab, c.vocab, seeds.data_ptr<int64_t>()[r], positions.data_ptr<int64_t>()[r]);
    const int64_t best = std::max_element(keys.begin(), keys.end()) - keys.begin();
    double second = -INFINITY;
    for (int64_t i = 0; i < c.vocab; ++i)
      if (i != best) second = std::max(second, keys[i]);
    const double tolerance = 1e-5 * std::max(1.0, std::fabs(keys[best]));
    if (keys[best] == -INFINITY) {
      if (token != 0) report.fail(where + ": a row without candidates did not get token 0");
      continue;
    }
    if (keys[token] == -INFINITY) report.fail(where + ": a filtered or NaN token won");
    if (keys[best] - second > 10 * tolerance && token != best)
      report.fail(where + ": token " + std::to_string(token) + ", the reference " +
                  std::to_string(best));
    report.close(keys[best] - keys[token], tolerance, where + ": the chosen key's shortfall");
  }
}

int check_exponential_race() {
  Report report{"exponential_race_sample"};
  const RaceCase cases[] = {
      {1, 49152, 2.0, 0.0},   // one row: the vocabulary split over threads
      {4, 49151, 0.5, 0.0},   // nearly flat, an odd width
      {3, 49152, 10.0, 0.9},  // peaked and mostly filtered: most tokens pruned
      {64, 777, 30.0, 0.5},   // rows >= threads
      {16, 1, 1.0, 0.0},      // one token
      {8, 100, 1.0, 1.0},     // nothing left: token 0
  };
  for (const RaceCase& c : cases) check_race_case(report, c);
  report.summary();
  return report.failures;
}

// ---- the build itself ---------------------------------------------------------------------

// The variant's ISA macros say what its name does (the harness-side built_isa check).
void check_isa(const std::string& expected) {
  std::printf("isa macros: %s\n", harness_isa_macros());
  const int avx512 = harness_isa_avx512(), avx2 = harness_isa_avx2(), neon = harness_isa_neon();
  const bool ok = (expected == "neon" && neon && !avx512 && !avx2) ||
                  (expected == "avx512" && avx512 && !avx2 && !neon) ||
                  (expected == "avx2" && avx2 && !avx512 && !neon) ||
                  (expected == "portable" && !neon && !avx512 && !avx2);
  std::printf("%s built isa: %s\n", ok ? "ok  " : "FAIL", expected.c_str());
  if (!ok) std::exit(1);
}

void run_fma_probe() {
  const double gflops = fma_peak_gflops(20000);
  const bool ok = std::isfinite(gflops) && gflops > 0;
  std::printf("%s fma_peak_gflops(20000): %.3g GFLOP/s on %d threads (emulated: only "
              "shows it runs)\n", ok ? "ok  " : "FAIL", gflops, at::get_num_threads());
  if (!ok) std::exit(1);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s <expected isa> [seed]\n", argv[0]);
    return 2;
  }
  const std::string isa = argv[1];
  rng.seed(argc > 2 ? std::strtoull(argv[2], nullptr, 10) : 20240607);
  std::printf("kernel harness %s, %d threads\n", isa.c_str(), at::get_num_threads());
  check_isa(isa);
  // Every op is checked even after one fails, so one run shows all that is wrong.
  const int failures = check_gguf_linear() + check_dense_linear() + check_row_invariance() +
                       check_paged_attention() + check_reshape_and_cache() +
                       check_exponential_race();
  run_fma_probe();
  std::printf("%s %s\n", failures ? "FAIL" : "PASS", isa.c_str());
  return failures ? 1 : 0;
}
