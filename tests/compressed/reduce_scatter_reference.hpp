// A serial model of compressed_reduce_scatter and compressed_allgather, written from their
// contract (reduce_scatter.hpp) with the compressors called directly: shards by the even split,
// payloads cut at segment boundaries for methods with shared scales, rank-order sums, the
// worker residual on the reduce-scatter's input, the shard residual on the allgather's, the
// random streams keyed by (seed, rank, step, element) and (seed ^ kServerSeedSalt, owner, step,
// element). Dense (method None): exact sums of integer-valued inputs.
#pragma once

#include <algorithm>
#include <cstdint>
#include <memory>
#include <optional>
#include <ostream>
#include <utility>
#include <vector>

#include "frugal/collectives/reduce_scatter.hpp"
#include "frugal/compression/compressor.hpp"
#include "frugal/compression/error_feedback.hpp"
#include "frugal/compression/rng.hpp"

namespace frugal::testing {

class ReduceScatterReference {
 public:
  ReduceScatterReference(int ranks, std::size_t count, const AllreduceOptions& options)
      : ranks_(ranks),
        count_(count),
        options_(options),
        segments_(options.segments.begin(), options.segments.end()) {
    options_.segments = segments_;
    if (options.compression.method != compression::Method::None) {
      compressor_ = compression::make_compressor(options.compression);
    }
    for (int r = 0; r < ranks; ++r) {
      worker_.emplace_back();
      server_.emplace_back();
      if (!options.error_feedback || !compressor_) continue;
      worker_.back().emplace(count);
      server_.back().emplace(reduce_scatter_shard(count, ranks, r).count);
    }
  }

  // Every rank's output of one compressed_reduce_scatter of `inputs`.
  std::vector<std::vector<float>> reduce_scatter(const std::vector<std::vector<float>>& inputs) {
    std::vector<std::vector<float>> shards;
    for (int c = 0; c < ranks_; ++c) {
      const ShardRange shard = reduce_scatter_shard(count_, ranks_, c);
      std::vector<float> sum(shard.count, 0.0f);
      for (int r = 0; r < ranks_; ++r) {
        const std::vector<float>& in = inputs[static_cast<std::size_t>(r)];
        for (const auto& [lo, hi] : pieces(shard)) {
          const std::span<float> out = std::span(sum).subspan(lo - shard.offset, hi - lo);
          const std::vector<float> part(in.begin() + static_cast<std::ptrdiff_t>(lo),
                                        in.begin() + static_cast<std::ptrdiff_t>(hi));
          if (!compressor_) {
            for (std::size_t i = 0; i < part.size(); ++i) out[i] += part[i];
            continue;
          }
          const compression::Rng rng(options_.seed, static_cast<std::uint64_t>(r), rs_step_, lo);
          const std::vector<std::byte> payload =
              encode(worker_[static_cast<std::size_t>(r)], part, rng, lo);
          compressor_->decode_add(payload, out);
        }
      }
      if (options_.op == ReduceOp::Average) {
        for (float& x : sum) x /= static_cast<float>(ranks_);
      }
      shards.push_back(std::move(sum));
    }
    ++rs_step_;
    return shards;
  }

  // The output of one compressed_allgather of every rank's shard (identical on every rank).
  std::vector<float> allgather(const std::vector<std::vector<float>>& shards) {
    std::vector<float> result(count_);
    for (int c = 0; c < ranks_; ++c) {
      const ShardRange shard = reduce_scatter_shard(count_, ranks_, c);
      const std::vector<float>& mine = shards[static_cast<std::size_t>(c)];
      for (const auto& [lo, hi] : pieces(shard)) {
        const std::vector<float> part(
            mine.begin() + static_cast<std::ptrdiff_t>(lo - shard.offset),
            mine.begin() + static_cast<std::ptrdiff_t>(hi - shard.offset));
        const std::span<float> out = std::span(result).subspan(lo, hi - lo);
        if (!compressor_) {
          std::ranges::copy(part, out.begin());
          continue;
        }
        const compression::Rng rng(options_.seed ^ kServerSeedSalt, static_cast<std::uint64_t>(c),
                                   ag_step_, lo);
        const std::vector<std::byte> payload =
            encode(server_[static_cast<std::size_t>(c)], part, rng, lo - shard.offset);
        compressor_->decode(payload, out);
      }
    }
    ++ag_step_;
    return result;
  }

 private:
  // [lo, hi) pieces of `shard`: cut at segment boundaries for 1-bit, ternary and QSGD.
  std::vector<std::pair<std::size_t, std::size_t>> pieces(ShardRange shard) const {
    const compression::Method m = options_.compression.method;
    const bool shares_scales = m == compression::Method::OneBit ||
                               m == compression::Method::Ternary || m == compression::Method::Qsgd;
    if (!shares_scales || segments_.size() < 2 || shard.count == 0) {
      return {{shard.offset, shard.end()}};
    }
    std::vector<std::pair<std::size_t, std::size_t>> out;
    std::size_t at = 0;
    for (const std::size_t n : segments_) {
      const std::size_t lo = std::max(at, shard.offset), hi = std::min(at + n, shard.end());
      if (lo < hi) out.emplace_back(lo, hi);
      at += n;
    }
    return out;
  }

  std::vector<std::byte> encode(std::optional<compression::ErrorFeedback>& feedback,
                                std::vector<float> values, compression::Rng rng,
                                std::size_t residual_offset) const {
    std::vector<std::byte> out(compressor_->max_encoded_bytes(values.size()));
    std::size_t bytes = 0;
    if (feedback) {
      bytes = compression::encode_with_feedback(*compressor_, *feedback, values, out, rng, values,
                                                residual_offset);
    } else {
      bytes = compressor_->encode_apply(values, out, rng, values);
    }
    out.resize(bytes);
    return out;
  }

  int ranks_;
  std::size_t count_;
  AllreduceOptions options_;
  std::vector<std::size_t> segments_;                    // a copy: options_.segments points into it
  std::unique_ptr<compression::Compressor> compressor_;  // null: dense
  std::vector<std::optional<compression::ErrorFeedback>> worker_;
  std::vector<std::optional<compression::ErrorFeedback>> server_;
  std::uint64_t rs_step_ = 0;
  std::uint64_t ag_step_ = 0;
};

// The methods the halves run: the quantizers, and dense.
struct HalfCase {
  const char* name;
  compression::CompressionConfig config;
};

// How gtest prints a failed test's method.
inline void PrintTo(const HalfCase& c, std::ostream* os) {
  *os << c.name;
}

inline std::vector<HalfCase> half_cases() {
  using compression::Method;
  auto config = [](Method m) {
    compression::CompressionConfig c;
    c.method = m;
    return c;
  };
  auto onebit = config(Method::OneBit);
  onebit.bucket = 64;
  auto qsgd = config(Method::Qsgd);
  qsgd.bits = 4;
  qsgd.bucket = 128;
  auto ternary = config(Method::Ternary);
  ternary.bucket = 64;
  return {{"dense", config(Method::None)},
          {"fp16", config(Method::Fp16)},
          {"onebit", onebit},
          {"qsgd4", qsgd},
          {"ternary", ternary}};
}

}  // namespace frugal::testing
