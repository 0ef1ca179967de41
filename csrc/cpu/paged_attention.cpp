// Paged attention for decode steps on CPU (float32 or bfloat16 tensors, float32 arithmetic).
//
// Work is split over sequences (or, for small batches, (sequence, kv head)
// pairs). The query heads of a work item are handled together, in two
// streaming passes over the sequence's blocks, so every cached key and value
// is read exactly once, in place through the block table:
//   1. scores[h][t] = scale * q_h . k_t          (keys, block by block)
//   2. p = exp(scores - max) per head; out_h = sum_t p[h][t] v_t / sum_t p[h][t]
//                                               (values, block by block)
// Two passes instead of an online softmax: the scores of one item are small
// (heads x seq_len floats) and this avoids rescaling the accumulators.
//
// The caches' element type (float32 or bfloat16) is a template parameter of
// the inner loops; the query and out rows are converted once per head, so
// their dtype (float32 or bfloat16, independently of the cache's) is a
// run-time choice.
#include "ops.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "vec_ops.h"

namespace vllm_cpu {
namespace {

// Raw pointers and strides of one paged_attention_decode call; T is the
// caches' element type (float or vec::bf16).
template <typename T>
struct DecodeProblem {
  void* out;                // float or vec::bf16, as query
  int64_t out_seq_stride;
  int64_t out_head_stride;
  const void* query;        // float or vec::bf16
  bool query_is_bf16;
  int64_t query_seq_stride;
  int64_t query_head_stride;
  const T* key_cache;
  const T* value_cache;
  const int32_t* block_table;
  int64_t block_table_stride;
  const int32_t* seq_lens;
  int64_t num_heads;
  int64_t num_kv_heads;
  int64_t head_size;
  int64_t block_size;
  float scale;

  int64_t group_size() const { return num_heads / num_kv_heads; }
  // Distance between consecutive tokens of one kv head in the cache.
  int64_t token_stride() const { return num_kv_heads * head_size; }
  int64_t block_stride() const { return block_size * token_stride(); }
};

// Per-thread scratch memory, sized once for the longest sequence and the
// number of query heads a work item handles.
struct Workspace {
  std::vector<float> scores;        // (item_heads, max_seq_len)
  std::vector<float> scaled_query;  // (item_heads, head_size)
  std::vector<float> accumulators;  // (item_heads, head_size)
  std::vector<float> denominators;  // (item_heads,)
};

// scaled[d] = scale * query row[d] for d < head_size, widened to float32.
template <typename T>
void load_scaled_query(const DecodeProblem<T>& p, int64_t seq, int64_t head,
                       int64_t head_size, float* scaled) {
  const int64_t offset = seq * p.query_seq_stride + head * p.query_head_stride;
  if (p.query_is_bf16) {
    const vec::bf16* q = static_cast<const vec::bf16*>(p.query) + offset;
    for (int64_t d = 0; d < head_size; ++d) scaled[d] = vec::to_float(q[d]) * p.scale;
  } else {
    const float* q = static_cast<const float*>(p.query) + offset;
    for (int64_t d = 0; d < head_size; ++d) scaled[d] = q[d] * p.scale;
  }
}

// out row (seq, head) = values[d] * factor, rounded to bfloat16 for a bf16 out.
template <typename T>
void store_out_row(const DecodeProblem<T>& p, int64_t seq, int64_t head, int64_t head_size,
                   const float* values, float factor) {
  const int64_t offset = seq * p.out_seq_stride + head * p.out_head_stride;
  if (p.query_is_bf16) {
    vec::bf16* out = static_cast<vec::bf16*>(p.out) + offset;
    for (int64_t d = 0; d < head_size; ++d) out[d] = vec::to_bf16(values[d] * factor);
  } else {
    float* out = static_cast<float*>(p.out) + offset;
    for (int64_t d = 0; d < head_size; ++d) out[d] = values[d] * factor;
  }
}

// Heads [first, first + count) in tiles of up to vec::kMaxHeadTile, each tile's
// size a compile-time constant (so its sums stay in registers):
// visit(std::integral_constant<int, size>{}, first_head_of_tile).
template <typename Visit>
void for_head_tiles(int64_t first, int64_t count, Visit&& visit) {
  static_assert(vec::kMaxHeadTile == 4, "the switch below lists tiles of 1..4 heads");
  for (int64_t h = first; h < first + count;) {
    const int64_t tile = std::min<int64_t>(vec::kMaxHeadTile, first + count - h);
    switch (tile) {
      case 4: visit(std::integral_constant<int, 4>{}, h); break;
      case 3: visit(std::integral_constant<int, 3>{}, h); break;
      case 2: visit(std::integral_constant<int, 2>{}, h); break;
      default: visit(std::integral_constant<int, 1>{}, h); break;
    }
    h += tile;
  }
}

// Asks for rows that are about to be read: a sequence's blocks are scattered
// through the cache, so the hardware prefetcher cannot know where the next
// one starts. rows: num_rows rows of row_elements, row t at t * row_stride.
template <typename T>
void prefetch_rows(const T* rows, int64_t num_rows, int64_t row_stride, int64_t row_elements) {
  constexpr int64_t kLineBytes = 64;
  const char* base = reinterpret_cast<const char*>(rows);
  const int64_t row_bytes = row_elements * static_cast<int64_t>(sizeof(T));
  for (int64_t t = 0; t < num_rows; ++t) {
    const char* row = base + t * row_stride * static_cast<int64_t>(sizeof(T));
    for (int64_t offset = 0; offset < row_bytes; offset += kLineBytes)
      __builtin_prefetch(row + offset);
  }
}

// Attention of one sequence for the query heads of kv heads
// [kv_head_begin, kv_head_end); each cached row segment is read once.
template <int kHeadSize, typename T>
void attend_kv_heads(const DecodeProblem<T>& p, int64_t seq, int64_t kv_head_begin,
                     int64_t kv_head_end, Workspace& ws) {
  const int64_t head_size = kHeadSize > 0 ? kHeadSize : p.head_size;
  const int64_t group_size = p.group_size();
  const int64_t first_head = kv_head_begin * group_size;
  const int64_t num_local_heads = (kv_head_end - kv_head_begin) * group_size;
  const int64_t seq_len = p.seq_lens[seq];
  const int32_t* block_ids = p.block_table + seq * p.block_table_stride;
  const int64_t num_seq_blocks = (seq_len + p.block_size - 1) / p.block_size;
  const int64_t token_stride = p.token_stride();
  const int64_t block_stride = p.block_stride();

  float* accumulators = ws.accumulators.data();  // (num_local_heads, head_size)
  std::fill_n(accumulators, num_local_heads * head_size, 0.0f);
  if (seq_len == 0) {  // nothing to attend to: define the output as zeros
    for (int64_t h = 0; h < num_local_heads; ++h)
      store_out_row(p, seq, first_head + h, head_size, accumulators, 0.0f);
    return;
  }

  float* scaled_query = ws.scaled_query.data();  // (num_local_heads, head_size)
  for (int64_t h = 0; h < num_local_heads; ++h)
    load_scaled_query(p, seq, first_head + h, head_size, scaled_query + h * head_size);

  auto tokens_in_block = [&](int64_t block_index) {
    return std::min(p.block_size, seq_len - block_index * p.block_size);
  };
  // First row of kv head `kv_head` in the sequence's block `block_index`.
  auto block_rows = [&](const T* cache, int64_t block_index, int64_t kv_head) {
    return cache + block_ids[block_index] * block_stride + kv_head * head_size;
  };
  // This item's rows of the block after `block_index` (its kv heads are adjacent).
  const int64_t item_row_elements = (kv_head_end - kv_head_begin) * head_size;
  auto prefetch_next_block = [&](const T* cache, int64_t block_index) {
    if (block_index + 1 < num_seq_blocks) {
      prefetch_rows(block_rows(cache, block_index + 1, kv_head_begin),
                    tokens_in_block(block_index + 1), token_stride, item_row_elements);
    }
  };

  // Pass 1: scores, laid out (num_local_heads, seq_len). The query heads of a
  // kv head go through its keys together, each key chunk loaded once per tile.
  float* scores = ws.scores.data();
  for (int64_t b = 0; b < num_seq_blocks; ++b) {
    const int64_t num_tokens = tokens_in_block(b);
    prefetch_next_block(p.key_cache, b);
    for (int64_t kv = kv_head_begin; kv < kv_head_end; ++kv) {
      const T* keys = block_rows(p.key_cache, b, kv);
      for_head_tiles((kv - kv_head_begin) * group_size, group_size, [&](auto tile, int64_t h) {
        vec::dot_rows_heads<kHeadSize, decltype(tile)::value>(
            scaled_query + h * head_size, keys, token_stride, num_tokens, head_size,
            scores + h * seq_len + b * p.block_size, seq_len);
      });
    }
  }

  // Softmax numerators in place; keep each head's denominator.
  float* denominator = ws.denominators.data();
  for (int64_t h = 0; h < num_local_heads; ++h) {
    float* head_scores = scores + h * seq_len;
    const float max_score = vec::max_of(head_scores, seq_len);
    denominator[h] = vec::exp_minus_max_inplace(head_scores, seq_len, max_score);
  }

  // Pass 2: weighted sum of values, again a tile of heads per value chunk.
  if (num_seq_blocks > 0) prefetch_next_block(p.value_cache, -1);  // the first block
  for (int64_t b = 0; b < num_seq_blocks; ++b) {
    const int64_t num_tokens = tokens_in_block(b);
    prefetch_next_block(p.value_cache, b);
    for (int64_t kv = kv_head_begin; kv < kv_head_end; ++kv) {
      const T* values = block_rows(p.value_cache, b, kv);
      for_head_tiles((kv - kv_head_begin) * group_size, group_size, [&](auto tile, int64_t h) {
        vec::accumulate_weighted_rows_heads<kHeadSize, decltype(tile)::value>(
            values, token_stride, scores + h * seq_len + b * p.block_size, seq_len,
            num_tokens, head_size, accumulators + h * head_size);
      });
    }
  }

  for (int64_t h = 0; h < num_local_heads; ++h) {
    store_out_row(p, seq, first_head + h, head_size, accumulators + h * head_size,
                  1.0f / denominator[h]);
  }
}

// Work items are (sequence, run of kv heads). Whole sequences read each block
// as one contiguous range; splitting a sequence's kv heads into separate items
// only pays off when there are too few sequences to keep every thread busy.
int64_t kv_heads_per_item(int64_t num_kv_heads, int64_t num_seqs) {
  const int64_t min_items = 4 * at::get_num_threads();
  return num_seqs >= min_items ? num_kv_heads : 1;
}

template <int kHeadSize, typename T>
void run_decode(const DecodeProblem<T>& p, int64_t num_seqs, int64_t max_seq_len) {
  const int64_t heads_per_item = kv_heads_per_item(p.num_kv_heads, num_seqs);
  const int64_t items_per_seq = (p.num_kv_heads + heads_per_item - 1) / heads_per_item;
  const int64_t max_local_heads = heads_per_item * p.group_size();
  at::parallel_for(0, num_seqs * items_per_seq, /*grain_size=*/1, [&](int64_t begin, int64_t end) {
    Workspace ws;
    ws.scores.resize(std::max<int64_t>(1, max_local_heads * max_seq_len));
    ws.scaled_query.resize(max_local_heads * p.head_size);
    ws.accumulators.resize(max_local_heads * p.head_size);
    ws.denominators.resize(max_local_heads);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t seq = item / items_per_seq;
      const int64_t kv_head_begin = (item % items_per_seq) * heads_per_item;
      const int64_t kv_head_end = std::min(p.num_kv_heads, kv_head_begin + heads_per_item);
      attend_kv_heads<kHeadSize, T>(p, seq, kv_head_begin, kv_head_end, ws);
    }
  });
}

// Checks every sequence's length and block ids before any pointer is followed;
// returns the longest sequence length.
int64_t check_seq_lens_and_blocks(const torch::Tensor& block_table,
                                  const torch::Tensor& seq_lens,
                                  int64_t num_cache_blocks, int64_t block_size) {
  const int64_t num_seqs = seq_lens.size(0);
  const int64_t max_blocks_per_seq = block_table.size(1);
  const int32_t* lens = seq_lens.data_ptr<int32_t>();
  const int32_t* table = block_table.data_ptr<int32_t>();
  const int64_t table_stride = block_table.stride(0);
  int64_t max_seq_len = 0;
  for (int64_t s = 0; s < num_seqs; ++s) {
    const int64_t seq_len = lens[s];
    TORCH_CHECK(seq_len >= 0 && seq_len <= max_blocks_per_seq * block_size,
                "paged_attention_decode: seq_lens[", s, "] = ", seq_len,
                " is outside [0, max_blocks_per_seq * block_size = ",
                max_blocks_per_seq * block_size, "]");
    const int64_t used_blocks = (seq_len + block_size - 1) / block_size;
    for (int64_t b = 0; b < used_blocks; ++b) {
      const int64_t block_id = table[s * table_stride + b];
      TORCH_CHECK(block_id >= 0 && block_id < num_cache_blocks,
                  "paged_attention_decode: block_table[", s, "][", b, "] = ", block_id,
                  " is outside the cache (", num_cache_blocks, " blocks)");
    }
    max_seq_len = std::max(max_seq_len, seq_len);
  }
  return max_seq_len;
}

void check_float_cpu(const torch::Tensor& t, const char* name, int64_t dims) {
  TORCH_CHECK(t.device().is_cpu(), "paged_attention_decode: ", name, " must be on CPU");
  TORCH_CHECK(t.scalar_type() == torch::kFloat || t.scalar_type() == torch::kBFloat16,
              "paged_attention_decode: ", name, " must be float32 or bfloat16, got ",
              t.scalar_type());
  TORCH_CHECK(t.dim() == dims, "paged_attention_decode: ", name, " must have ", dims,
              " dims, got shape ", t.sizes());
}

void check_int32_cpu(const torch::Tensor& t, const char* name, int64_t dims) {
  TORCH_CHECK(t.device().is_cpu(), "paged_attention_decode: ", name, " must be on CPU");
  TORCH_CHECK(t.scalar_type() == torch::kInt, "paged_attention_decode: ", name,
              " must be int32, got ", t.scalar_type());
  TORCH_CHECK(t.dim() == dims, "paged_attention_decode: ", name, " must have ", dims,
              " dims, got shape ", t.sizes());
}

// The checked tensors as raw pointers for caches of element type T, then the
// kernel instance for the head size (fixed sizes unroll into registers).
template <typename T>
void decode_for_cache(torch::Tensor& out, const torch::Tensor& query,
                      const torch::Tensor& key_cache, const torch::Tensor& value_cache,
                      const torch::Tensor& block_table, const torch::Tensor& seq_lens,
                      double scale, int64_t max_seq_len) {
  const DecodeProblem<T> p{
      out.data_ptr(),
      out.stride(0),
      out.stride(1),
      query.data_ptr(),
      query.scalar_type() == torch::kBFloat16,
      query.stride(0),
      query.stride(1),
      static_cast<const T*>(key_cache.data_ptr()),
      static_cast<const T*>(value_cache.data_ptr()),
      block_table.data_ptr<int32_t>(),
      block_table.stride(0),
      seq_lens.data_ptr<int32_t>(),
      query.size(1),      // num_heads
      key_cache.size(2),  // num_kv_heads
      query.size(2),      // head_size
      key_cache.size(1),  // block_size
      static_cast<float>(scale)};
  const int64_t num_seqs = query.size(0);
  switch (p.head_size) {
    case 32: run_decode<32>(p, num_seqs, max_seq_len); break;
    case 64: run_decode<64>(p, num_seqs, max_seq_len); break;
    case 80: run_decode<80>(p, num_seqs, max_seq_len); break;
    case 96: run_decode<96>(p, num_seqs, max_seq_len); break;
    case 128: run_decode<128>(p, num_seqs, max_seq_len); break;
    case 256: run_decode<256>(p, num_seqs, max_seq_len); break;
    default: run_decode<0>(p, num_seqs, max_seq_len); break;  // any size, generic loops
  }
}

}  // namespace
}  // namespace vllm_cpu

void paged_attention_decode(torch::Tensor& out, const torch::Tensor& query,
                            const torch::Tensor& key_cache,
                            const torch::Tensor& value_cache,
                            const torch::Tensor& block_table,
                            const torch::Tensor& seq_lens, double scale) {
  using namespace vllm_cpu;
  check_float_cpu(out, "out", 3);
  check_float_cpu(query, "query", 3);
  check_float_cpu(key_cache, "key_cache", 4);
  check_float_cpu(value_cache, "value_cache", 4);
  check_int32_cpu(block_table, "block_table", 2);
  check_int32_cpu(seq_lens, "seq_lens", 1);
  TORCH_CHECK(out.scalar_type() == query.scalar_type(), "paged_attention_decode: out (",
              out.scalar_type(), ") and query (", query.scalar_type(),
              ") must have the same dtype");
  TORCH_CHECK(key_cache.scalar_type() == value_cache.scalar_type(),
              "paged_attention_decode: key_cache (", key_cache.scalar_type(),
              ") and value_cache (", value_cache.scalar_type(), ") must have the same dtype");

  const int64_t num_seqs = query.size(0);
  const int64_t num_heads = query.size(1);
  const int64_t head_size = query.size(2);
  const int64_t num_cache_blocks = key_cache.size(0);
  const int64_t block_size = key_cache.size(1);
  const int64_t num_kv_heads = key_cache.size(2);

  TORCH_CHECK(out.sizes() == query.sizes(), "paged_attention_decode: out shape ",
              out.sizes(), " differs from query shape ", query.sizes());
  TORCH_CHECK(query.stride(2) == 1 && out.stride(2) == 1,
              "paged_attention_decode: query and out need a contiguous last dim");
  TORCH_CHECK(key_cache.is_contiguous() && value_cache.is_contiguous(),
              "paged_attention_decode: key_cache and value_cache must be contiguous");
  TORCH_CHECK(key_cache.sizes() == value_cache.sizes(),
              "paged_attention_decode: key_cache shape ", key_cache.sizes(),
              " differs from value_cache shape ", value_cache.sizes());
  TORCH_CHECK(key_cache.size(3) == head_size, "paged_attention_decode: cache head_size ",
              key_cache.size(3), " differs from query head_size ", head_size);
  TORCH_CHECK(num_kv_heads > 0 && num_heads % num_kv_heads == 0,
              "paged_attention_decode: num_heads (", num_heads,
              ") must be a multiple of num_kv_heads (", num_kv_heads, ")");
  TORCH_CHECK(block_size > 0, "paged_attention_decode: block_size must be positive");
  TORCH_CHECK(block_table.size(0) == num_seqs && seq_lens.size(0) == num_seqs,
              "paged_attention_decode: block_table ", block_table.sizes(), " and seq_lens ",
              seq_lens.sizes(), " must have one row per sequence (", num_seqs, ")");
  TORCH_CHECK(block_table.stride(1) == 1 || block_table.size(1) <= 1,
              "paged_attention_decode: block_table needs a contiguous last dim");
  TORCH_CHECK(seq_lens.is_contiguous(), "paged_attention_decode: seq_lens must be contiguous");
  if (num_seqs == 0 || num_heads == 0) return;

  const int64_t max_seq_len =
      check_seq_lens_and_blocks(block_table, seq_lens, num_cache_blocks, block_size);

  if (key_cache.scalar_type() == torch::kBFloat16) {
    decode_for_cache<vec::bf16>(out, query, key_cache, value_cache, block_table, seq_lens,
                                scale, max_seq_len);
  } else {
    decode_for_cache<float>(out, query, key_cache, value_cache, block_table, seq_lens, scale,
                            max_seq_len);
  }
}
