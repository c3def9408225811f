// The tensor boundaries (segments) of a compressed allreduce's buffer: their checks, their
// digest for the agreement and the state, the pieces the payloads are cut into, and top-k's
// per-tensor selection.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "../patterns/chunking.hpp"
#include "frugal/compression/compressor.hpp"
#include "frugal/compression/error_feedback.hpp"

namespace frugal::detail {

// InvalidArgument naming `segments` unless they are empty or positive counts summing to count.
void check_segments(std::span<const std::size_t> segments, std::size_t count);

// Whether the segments cut the buffer at all: more than one segment (empty and {count} are the
// same single tensor, and behave exactly as before segments existed).
inline bool splits(std::span<const std::size_t> segments) noexcept {
  return segments.size() > 1;
}

// A 64-bit digest of the boundaries; 0 when they do not split the buffer, so that a call
// without segments agrees with one passing {count}.
std::uint64_t segments_digest(std::span<const std::size_t> segments) noexcept;

// Whether `method`'s payloads share a scale or norm between elements (1-bit chunks, ternary and
// QSGD buckets), so that they are encoded per segment. fp16, bf16 and raw encode each element
// alone; top-k is handled by its scope.
bool splits_payloads(compression::Method method) noexcept;

// `range` cut at the segment boundaries inside it, in order (just `range` without segments,
// or when it is empty).
std::vector<patterns::Range> segment_pieces(std::span<const std::size_t> segments,
                                            patterns::Range range);

// Top-k per tensor: segment s keeps max(1, round(k * n_s / n)) elements (at most n_s), k being
// `total_k` for the n elements. Their sum is the k of the whole buffer's payload.
std::vector<std::size_t> per_tensor_k(std::span<const std::size_t> segments, std::size_t total_k);

// Per-tensor top-k's encoder: one compressor per segment (k_s each), whose payloads are merged
// into one payload of the whole buffer (indices shifted to the buffer, k = the sum of the
// counts): every receiver decodes it with a top-k compressor whose k is that sum, exactly as a
// global selection's payload, so the sparse algorithms are unchanged.
class PerTensorTopK {
 public:
  PerTensorTopK(const compression::CompressionConfig& config, std::span<const std::size_t> segments,
                std::size_t total_k);

  // The sum of the segments' k: the merged payload's nominal k.
  std::size_t k() const noexcept { return k_; }

  // Encodes every segment of `values` (the whole buffer) with `feedback` (null: none), leaving
  // the reconstruction in `values`; writes the merged payload into `out` (at least
  // max_encoded_bytes of the buffer's compressor). Returns its bytes. (Top-k draws no random
  // numbers: `rng` is passed along as it is.)
  std::size_t encode(std::span<float> values, std::span<std::byte> out, compression::Rng rng,
                     compression::ErrorFeedback* feedback, compression::FeedbackInput input) const;

 private:
  std::vector<std::size_t> counts_;
  std::vector<std::unique_ptr<compression::Compressor>> compressors_;
  std::size_t k_ = 0;
  std::size_t value_bytes_ = 4;
};

}  // namespace frugal::detail
