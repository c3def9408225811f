#pragma once

#include <memory>
#include <optional>
#include <utility>
#include <vector>

#include "frugal/collectives/allreduce.hpp"
#include "frugal/compression/compressor.hpp"
#include "frugal/compression/error_feedback.hpp"

namespace frugal::testing {

// A serial model of the compressed allreduce: given every rank's input, it encodes, sums and
// re-encodes with the compressors directly, following the documented contract (chunking,
// random streams, summation in rank order, error feedback on both sides), and returns what
// every rank must hold. Steps advance like an AllreduceState. With options.segments, 1-bit,
// ternary and QSGD encode every piece of a segment (the part of it inside a two-phase chunk) as a
// payload of its own, and per-tensor top-k selects round(k * n_s / n) (at least 1) per segment.
class CompressedReference {
 public:
  CompressedReference(int ranks, std::size_t count, const AllreduceOptions& options,
                      AllreduceAlgorithm algorithm);

  std::vector<float> step(const std::vector<std::vector<float>>& inputs);

 private:
  std::vector<float> two_phase(const std::vector<std::vector<float>>& inputs);
  std::vector<float> sparse(const std::vector<std::vector<float>>& inputs);
  // [begin, end) cut at the segment boundaries when the method shares scales between elements.
  std::vector<std::pair<std::size_t, std::size_t>> pieces(std::size_t begin, std::size_t end) const;

  int ranks_;
  std::size_t count_;
  AllreduceOptions options_;
  AllreduceAlgorithm algorithm_;
  std::unique_ptr<compression::Compressor> compressor_;
  std::vector<std::optional<compression::ErrorFeedback>> worker_;
  std::vector<std::optional<compression::ErrorFeedback>> server_;
  std::vector<std::size_t> segments_;  // a copy: options_.segments points into it
  // Per-tensor top-k: one compressor per segment.
  std::vector<std::unique_ptr<compression::Compressor>> per_tensor_;
  std::uint64_t step_ = 0;
};

}  // namespace frugal::testing
