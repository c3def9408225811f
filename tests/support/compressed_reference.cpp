#include "compressed_reference.hpp"

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
      server_(static_cast<std::size_t>(ranks)) {
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
    for (int r = 0; r < ranks_; ++r) {
      const auto& in = inputs[static_cast<std::size_t>(r)];
      const std::vector<float> part(in.begin() + static_cast<std::ptrdiff_t>(chunk.offset),
                                    in.begin() + static_cast<std::ptrdiff_t>(chunk.end()));
      const compression::Rng rng(options_.seed, static_cast<std::uint64_t>(r), step_, chunk.offset);
      const auto payload =
          encode(*compressor_, worker_[static_cast<std::size_t>(r)], part, rng, chunk.offset);
      compressor_->decode_add(payload, sum);
    }
    if (options_.op == ReduceOp::Average) {
      for (float& x : sum) x /= static_cast<float>(ranks_);
    }
    const compression::Rng rng(options_.seed ^ kServerSeedSalt, static_cast<std::uint64_t>(c),
                               step_, chunk.offset);
    const auto payload = encode(*compressor_, server_[static_cast<std::size_t>(c)], sum, rng, 0);
    compressor_->decode(payload, std::span(result).subspan(chunk.offset, chunk.count));
  }
  return result;
}

std::vector<float> CompressedReference::sparse(const std::vector<std::vector<float>>& inputs) {
  std::vector<float> result(count_, 0.0f);
  for (int r = 0; r < ranks_; ++r) {
    const compression::Rng rng(options_.seed, static_cast<std::uint64_t>(r), step_, 0);
    const auto payload = encode(*compressor_, worker_[static_cast<std::size_t>(r)],
                                inputs[static_cast<std::size_t>(r)], rng, 0);
    compressor_->decode_add(payload, result);
  }
  if (options_.op == ReduceOp::Average) {
    for (float& x : result) x /= static_cast<float>(ranks_);
  }
  return result;
}

}  // namespace frugal::testing
