#include <algorithm>
#include <frugal/error.hpp>
#include <numeric>

#include "dataset.hpp"
#include "random.hpp"

namespace frugal::train {

DistributedSampler::DistributedSampler(std::size_t dataset_size, int rank, int world_size,
                                       std::uint64_t seed, bool shuffle, std::size_t limit)
    : used_(limit == 0 ? dataset_size : std::min(limit, dataset_size)),
      rank_(rank),
      world_size_(world_size),
      seed_(seed),
      shuffle_(shuffle) {
  require(world_size >= 1, "world_size", "must be >= 1");
  require(rank >= 0 && rank < world_size, "rank", "must be in [0, world_size)");
}

std::size_t DistributedSampler::per_rank() const {
  return used_ / static_cast<std::size_t>(world_size_);
}

std::vector<std::size_t> DistributedSampler::indices(std::int64_t epoch) const {
  std::vector<std::size_t> order(used_);
  std::iota(order.begin(), order.end(), std::size_t{0});
  if (shuffle_) {
    // Fisher–Yates from a counter-based stream: the same (seed, epoch) gives the same
    // permutation on every rank.
    CounterRng rng(mix_seed(seed_, static_cast<std::uint64_t>(epoch)));
    for (std::size_t i = used_; i > 1; --i) std::swap(order[i - 1], order[rng.below(i)]);
  }
  const std::size_t count = per_rank();
  const auto world = static_cast<std::size_t>(world_size_);
  std::vector<std::size_t> shard(count);
  for (std::size_t k = 0; k < count; ++k)
    shard[k] = order[static_cast<std::size_t>(rank_) + k * world];
  return shard;
}

}  // namespace frugal::train
