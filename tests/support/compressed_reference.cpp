#include "compressed_reference.hpp"

#include <algorithm>
#include <cmath>

#include "chunking.hpp"
#include "frugal/compression/rng.hpp"

namespace frugal::testing {

CompressedReference::CompressedReference(int ranks, std::size_t count,
                                         const AllreduceOptions& options,
                                         AllreduceAlgorithm algorithm)
    : ranks_(ranks),
      count_(count),
      options_(options),
      algorithm_(algorithm),
      compressor_(compression::make_compressor(options.compression)),
      worker_(static_cast<std::size_t>(ranks)),
      server_(static_cast<std::size_t>(ranks)),
      segments_(options.segments.begin(), options.segments.end()) {
  options_.segments = segments_;
  const compression::CompressionConfig& c = options.compression;
  if (c.method == compression::Method::TopK && c.topk_scope == compression::TopKScope::PerTensor &&
      segments_.size() > 1) {
    const double k = static_cast<double>(compressor_->k_for(count));
    for (std::size_t n : segments_) {
      compression::CompressionConfig mine = c;
      const double share = std::round(k * static_cast<double>(n) / static_cast<double>(count));
      mine.k = std::min(n, std::max<std::size_t>(1, static_cast<std::size_t>(share)));
      per_tensor_.push_back(compression::make_compressor(mine));
    }
  }
  for (int r = 0; r < ranks; ++r) {
    if (!options.error_feedback) continue;
    worker_[static_cast<std::size_t>(r)].emplace(count);
    if (algorithm == AllreduceAlgorithm::TwoPhase) {
      server_[static_cast<std::size_t>(r)].emplace(patterns::chunk_range(count, ranks, r).count);
    }
  }
}

std::vector<float> CompressedReference::step(const std::vector<std::vector<float>>& inputs) {
  std::vector<float> result =
      algorithm_ == AllreduceAlgorithm::TwoPhase ? two_phase(inputs) : sparse(inputs);
  ++step_;
  return result;
}

std::vector<std::pair<std::size_t, std::size_t>> CompressedReference::pieces(
    std::size_t begin, std::size_t end) const {
  const compression::Method m = options_.compression.method;
  const bool shares_scales = m == compression::Method::OneBit ||
                             m == compression::Method::Ternary || m == compression::Method::Qsgd;
  if (!shares_scales || segments_.size() < 2 || begin == end) return {{begin, end}};
  std::vector<std::pair<std::size_t, std::size_t>> out;
  std::size_t at = 0;
  for (std::size_t n : segments_) {
    const std::size_t lo = std::max(at, begin), hi = std::min(at + n, end);
    if (lo < hi) out.emplace_back(lo, hi);
    at += n;
  }
  return out;
}

namespace {

// What one rank puts on the wire for `values` (elements [offset, ...) of its buffer), and what
// it keeps as residual: the same calls the library makes.
std::vector<std::byte> encode(const compression::Compressor& compressor,
                              std::optional<compression::ErrorFeedback>& feedback,
                              std::vector<float> values, compression::Rng rng, std::size_t offset) {
  std::vector<std::byte> out(compressor.max_encoded_bytes(values.size()));
  std::size_t bytes = 0;
  if (feedback) {
    bytes =
        compression::encode_with_feedback(compressor, *feedback, values, out, rng, values, offset);
  } else {
    bytes = compressor.encode_apply(values, out, rng, values);
  }
  out.resize(bytes);
  return out;
}

}  // namespace

std::vector<float> CompressedReference::two_phase(const std::vector<std::vector<float>>& inputs) {
  std::vector<float> result(count_);
  for (int c = 0; c < ranks_; ++c) {
    const patterns::Range chunk = patterns::chunk_range(count_, ranks_, c);
    std::vector<float> sum(chunk.count, 0.0f);
    const auto parts = pieces(chunk.offset, chunk.end());
    for (int r = 0; r < ranks_; ++r) {
      const auto& in = inputs[static_cast<std::size_t>(r)];
      for (const auto& [lo, hi] : parts) {
        const std::vector<float> part(in.begin() + static_cast<std::ptrdiff_t>(lo),
                                      in.begin() + static_cast<std::ptrdiff_t>(hi));
        const compression::Rng rng(options_.seed, static_cast<std::uint64_t>(r), step_, lo);
        const auto payload =
            encode(*compressor_, worker_[static_cast<std::size_t>(r)], part, rng, lo);
        compressor_->decode_add(payload, std::span(sum).subspan(lo - chunk.offset, hi - lo));
      }
    }
    if (options_.op == ReduceOp::Average) {
      for (float& x : sum) x /= static_cast<float>(ranks_);
    }
    for (const auto& [lo, hi] : parts) {
      const compression::Rng rng(options_.seed ^ kServerSeedSalt, static_cast<std::uint64_t>(c),
                                 step_, lo);
      const std::vector<float> part(sum.begin() + static_cast<std::ptrdiff_t>(lo - chunk.offset),
                                    sum.begin() + static_cast<std::ptrdiff_t>(hi - chunk.offset));
      // The server residual covers the chunk: this piece sits at lo - chunk.offset in it.
      const auto payload =
          encode(*compressor_, server_[static_cast<std::size_t>(c)], part, rng, lo - chunk.offset);
      compressor_->decode(payload, std::span(result).subspan(lo, hi - lo));
    }
  }
  return result;
}

std::vector<float> CompressedReference::sparse(const std::vector<std::vector<float>>& inputs) {
  std::vector<float> result(count_, 0.0f);
  for (int r = 0; r < ranks_; ++r) {
    const auto& in = inputs[static_cast<std::size_t>(r)];
    if (!per_tensor_.empty()) {
      // Each segment selects alone; the receivers add up what every segment sent.
      std::size_t at = 0;
      for (std::size_t s = 0; s < segments_.size(); ++s) {
        const std::vector<float> part(in.begin() + static_cast<std::ptrdiff_t>(at),
                                      in.begin() + static_cast<std::ptrdiff_t>(at + segments_[s]));
        const compression::Rng rng(options_.seed, static_cast<std::uint64_t>(r), step_, at);
        const auto payload =
            encode(*per_tensor_[s], worker_[static_cast<std::size_t>(r)], part, rng, at);
        per_tensor_[s]->decode_add(payload, std::span(result).subspan(at, segments_[s]));
        at += segments_[s];
      }
      continue;
    }
    for (const auto& [lo, hi] : pieces(0, count_)) {
      const std::vector<float> part(in.begin() + static_cast<std::ptrdiff_t>(lo),
                                    in.begin() + static_cast<std::ptrdiff_t>(hi));
      const compression::Rng rng(options_.seed, static_cast<std::uint64_t>(r), step_, lo);
      const auto payload =
          encode(*compressor_, worker_[static_cast<std::size_t>(r)], part, rng, lo);
      compressor_->decode_add(payload, std::span(result).subspan(lo, hi - lo));
    }
  }
  if (options_.op == ReduceOp::Average) {
    for (float& x : result) x /= static_cast<float>(ranks_);
  }
  return result;
}

}  // namespace frugal::testing
