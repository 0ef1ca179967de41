// The exponential_race_sample op: one token per row of float32 logits by an exponential
// race over counter-based noise (exponential_race.h). Work is split over rows and, when
// there are fewer rows than threads, over slices of the vocabulary, whose winners are
// compared in order afterwards: the tokens do not depend on the thread count.
#include "ops.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "counter_rng.h"
#include "exponential_race.h"

namespace {

using vllm_cpu::race::Winner;

constexpr int64_t kMinSliceTokens = 4096;  // the smallest vocabulary slice worth a thread

// Vocabulary slices per row: enough work items for every thread, none tiny.
int64_t slices_per_row(int64_t rows, int64_t vocab) {
  const int64_t threads = at::get_num_threads();
  if (rows >= threads) return 1;
  const int64_t wanted = (threads + rows - 1) / rows;
  return std::max<int64_t>(1, std::min(wanted, vocab / kMinSliceTokens));
}

// Where slice `slice` of `slices` starts: even, so that its blocks begin on a word.
int64_t slice_start(int64_t vocab, int64_t slice, int64_t slices) {
  return slice == slices ? vocab : vocab * slice / slices / 2 * 2;
}

void check_row_values(const torch::Tensor& t, const char* name, int64_t rows) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == torch::kLong && t.dim() == 1 &&
                  t.size(0) == rows && t.is_contiguous(),
              "exponential_race_sample: ", name, " must be a contiguous int64 CPU tensor (",
              rows, ",), got ", t.scalar_type(), " ", t.sizes());
}

}  // namespace

void exponential_race_sample(torch::Tensor& out, const torch::Tensor& logits,
                             const torch::Tensor& seeds, const torch::Tensor& positions) {
  TORCH_CHECK(logits.device().is_cpu() && logits.scalar_type() == torch::kFloat &&
                  logits.dim() == 2 && logits.size(1) > 0 && logits.stride(1) == 1,
              "exponential_race_sample: logits must be a float32 CPU tensor (rows, vocab) "
              "with vocab > 0 and a contiguous last dim, got ", logits.scalar_type(), " ",
              logits.sizes());
  const int64_t rows = logits.size(0);
  const int64_t vocab = logits.size(1);
  check_row_values(out, "out", rows);
  check_row_values(seeds, "seeds", rows);
  check_row_values(positions, "positions", rows);

  const float* base = logits.data_ptr<float>();
  const int64_t row_stride = logits.stride(0);
  const int64_t* seed = seeds.data_ptr<int64_t>();
  const int64_t* position = positions.data_ptr<int64_t>();
  const int64_t slices = slices_per_row(rows, vocab);
  std::vector<Winner> winners(rows * slices);
  at::parallel_for(0, rows * slices, /*grain_size=*/1, [&](int64_t first, int64_t last) {
    for (int64_t item = first; item < last; ++item) {
      const int64_t row = item / slices;
      const int64_t slice = item % slices;
      winners[item] = vllm_cpu::race::race_slice(
          base + row * row_stride, slice_start(vocab, slice, slices),
          slice_start(vocab, slice + 1, slices),
          vllm_cpu::rng::token_stream(seed[row], position[row]));
    }
  });

  int64_t* tokens = out.data_ptr<int64_t>();
  for (int64_t row = 0; row < rows; ++row) {
    Winner best;
    for (int64_t slice = 0; slice < slices; ++slice) {  // in order: ties keep the lowest index
      const Winner& candidate = winners[row * slices + slice];
      if (candidate.key > best.key) best = candidate;
    }
    tokens[row] = best.token < 0 ? 0 : best.token;
  }
}
