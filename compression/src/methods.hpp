#pragma once

// Internal: one factory per method file. `config` has been validated by make_compressor.

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <vector>

#include "frugal/compression/compressor.hpp"

namespace frugal::compression {

std::unique_ptr<Compressor> make_raw_compressor(const CompressionConfig& config);
std::unique_ptr<Compressor> make_fp16_compressor(const CompressionConfig& config);
std::unique_ptr<Compressor> make_bf16_compressor(const CompressionConfig& config);
std::unique_ptr<Compressor> make_topk_compressor(const CompressionConfig& config);
std::unique_ptr<Compressor> make_onebit_compressor(const CompressionConfig& config);
std::unique_ptr<Compressor> make_ternary_compressor(const CompressionConfig& config);
std::unique_ptr<Compressor> make_qsgd_compressor(const CompressionConfig& config);

// Methods whose encoder can write the reconstruction too (fp16, QSGD): encode_range plus, as
// decode_range would, the reconstruction into d, without reading the payload back; fp16 with
// `stream` writes the payload past the cache (error feedback's fused pass).
bool encodes_with_reconstruction(const Compressor& compressor);
// Two ranges of `len` floats the fused pass reads right after this encode (the next block's
// gradient and residual): an encoder that is compute-bound (QSGD) prefetches them into L2 as it
// goes, so that the memory works while it computes; the others ignore it.
struct PrefetchHint {
  const float* a = nullptr;
  const float* b = nullptr;
  std::size_t len = 0;
};
bool encode_range_reconstruct(const Compressor& compressor, std::span<const float> x, std::size_t n,
                              std::size_t begin, std::span<std::byte> body, const Rng& rng,
                              float* d, bool stream, const PrefetchHint& next);
// QSGD's part of the two above (qsgd.cpp).
bool qsgd_encodes_with_reconstruction(const Compressor& compressor);
bool qsgd_encode_range_reconstruct(const Compressor& compressor, std::span<const float> x,
                                   std::size_t n, std::size_t begin, std::span<std::byte> body,
                                   const Rng& rng, float* d, const PrefetchHint& next);

// Sampled top-k in pieces, for encode_with_feedback's one-pass path (topk.cpp): what
// select_sampled does on a whole compensated buffer, split so that the caller can compensate,
// collect and write block by block. Every piece selects exactly as TopKCompressor::encode does.
struct TopKSampledPlan {
  static constexpr std::size_t kRun = 16;  // the sample: runs of kRun consecutive elements
  std::size_t n = 0;
  std::size_t lo = 0, hi = 0;  // the count of candidates that is the answer as it is
  std::size_t k = 0;           // taken from the candidates when there are more than hi
  std::size_t cap = 0;         // more candidates than this: exact selection instead
  std::size_t runs = 0, stride = 0, first = 0;  // run j starts at first + j * stride
  std::size_t rank = 0;                         // threshold: the (rank + 1)-th largest sampled key
  bool fp16_values = false;
};

// The plan when `compressor` is top-k with sampled selection and n is large enough to sample;
// nullopt otherwise (TopKCompressor::encode would select exactly, or reject n).
std::optional<TopKSampledPlan> topk_sampled_plan(const Compressor& compressor, std::size_t n);

// The candidate threshold from the sampled raw bit patterns (reordered).
std::uint32_t topk_sample_threshold(std::span<std::uint32_t> sample, std::size_t rank);

// Appends (base + i, raw bits of x[i]) for every i < len whose magnitude key is >= threshold, in
// index order; returns how many. idx and raw need room for len + 32 entries.
std::size_t topk_collect_block(const float* x, std::size_t len, std::uint32_t base,
                               std::uint32_t threshold, std::uint32_t* idx, std::uint32_t* raw);

// Writes the body for lo <= candidates (idx increasing): all of them up to hi, else the k largest
// (ties to the lowest indices). Appends the positions in the candidate list of those left out to
// `dropped`. Returns the pair count, whether a chosen value is non-finite (kNonFinite) and the
// coded indices' bytes (the header's `bits`).
struct TopKBody {
  std::size_t count = 0;
  bool non_finite = false;
  std::size_t index_bytes = 0;
};
TopKBody topk_sampled_body(const TopKSampledPlan& plan, std::span<const std::uint32_t> idx,
                           std::span<const std::uint32_t> raw, std::byte* body,
                           std::vector<std::uint32_t>& dropped);

}  // namespace frugal::compression
