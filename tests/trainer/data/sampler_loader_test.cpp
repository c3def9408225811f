// DistributedSampler and Loader.

#include <algorithm>
#include <atomic>
#include <chrono>
#include <numeric>
#include <set>
#include <thread>

#include "data/dataset.hpp"
#include "data_test_support.hpp"

namespace frugal::train {
namespace {

using namespace std::chrono_literals;

TEST(DistributedSampler, ShardsAreDisjointAndCoverTheTailDroppedDataset) {
  for (const std::size_t limit : {std::size_t{0}, std::size_t{50}, std::size_t{500}}) {
    const std::size_t size = 103;
    const int world = 4;
    const std::size_t used = limit == 0 ? size : std::min(limit, size);
    std::set<std::size_t> all;
    for (int rank = 0; rank < world; ++rank) {
      const DistributedSampler sampler(size, rank, world, 7, true, limit);
      EXPECT_EQ(sampler.per_rank(), used / world);
      const auto shard = sampler.indices(3);
      ASSERT_EQ(shard.size(), used / world);
      for (const std::size_t index : shard) {
        EXPECT_LT(index, used) << "limit keeps only the first examples";
        EXPECT_TRUE(all.insert(index).second) << "index " << index << " on two ranks";
      }
    }
    EXPECT_EQ(all.size(), used / world * world);
  }
}

TEST(DistributedSampler, ReshufflesPerEpochAndRepeatsPerSeed) {
  const DistributedSampler a(1000, 1, 2, 42, true);
  const DistributedSampler same(1000, 1, 2, 42, true);
  const DistributedSampler other(1000, 1, 2, 43, true);
  EXPECT_EQ(a.indices(0), same.indices(0));
  EXPECT_EQ(a.indices(5), same.indices(5));
  EXPECT_NE(a.indices(0), a.indices(1));
  EXPECT_NE(a.indices(0), other.indices(0));
  // Every epoch is a permutation of the same shard-union, so sorted shards of one rank differ
  // between epochs (the shuffle moves examples across ranks), but the union does not.
  std::set<std::size_t> epoch0, epoch1;
  for (int rank = 0; rank < 2; ++rank) {
    const DistributedSampler s(1000, rank, 2, 42, true);
    for (auto i : s.indices(0)) epoch0.insert(i);
    for (auto i : s.indices(1)) epoch1.insert(i);
  }
  EXPECT_EQ(epoch0, epoch1);
  EXPECT_EQ(epoch0.size(), 1000u);
  // Not shuffled: rank r gets r, r + P, r + 2P, ...
  const DistributedSampler ordered(10, 1, 3, 42, false);
  EXPECT_EQ(ordered.indices(0), (std::vector<std::size_t>{1, 4, 7}));
  EXPECT_EQ(ordered.indices(9), ordered.indices(0));
}

TEST(DistributedSampler, LocalBatchesOfAllRanksFormConsecutiveGlobalBatches) {
  const std::size_t size = 120;
  const int world = 3;
  const std::size_t b = 4;
  // The single-rank sampler with the same seed exposes the global permutation.
  const auto global = DistributedSampler(size, 0, 1, 99, true).indices(2);
  std::vector<std::vector<std::size_t>> shards;
  for (int rank = 0; rank < world; ++rank) {
    shards.push_back(DistributedSampler(size, rank, world, 99, true).indices(2));
  }
  for (std::size_t s = 0; s < shards[0].size() / b; ++s) {
    std::multiset<std::size_t> local, expected;
    for (int rank = 0; rank < world; ++rank) {
      for (std::size_t j = 0; j < b; ++j) {
        local.insert(shards[rank][s * b + j]);
        // Exactly global position (s*b + j)*P + r.
        EXPECT_EQ(shards[rank][s * b + j], global[(s * b + j) * world + rank]);
      }
    }
    for (std::size_t p = s * b * world; p < (s + 1) * b * world; ++p) expected.insert(global[p]);
    EXPECT_EQ(local, expected) << "global batch " << s;
  }
}

TEST(DistributedSampler, RejectsBadRanks) {
  testing::expect_invalid_argument([] { DistributedSampler(10, 2, 2, 0, true); }, {"rank"});
  testing::expect_invalid_argument([] { DistributedSampler(10, 0, 0, 0, true); }, {"world_size"});
}

// A dataset whose example i is filled with a value derived from (i, seed), takes a
// index-dependent time to produce (so threads finish out of order) and can fail at one index.
class FakeDataset final : public Dataset {
 public:
  explicit FakeDataset(std::size_t size, std::size_t fail_at = SIZE_MAX,
                       std::chrono::microseconds delay = 200us)
      : size_(size), fail_at_(fail_at), delay_(delay) {}
  std::size_t size() const override { return size_; }
  std::int64_t num_classes() const override { return 1000; }
  std::int64_t channels() const override { return 2; }
  std::int64_t image_size() const override { return 3; }
  Example get(std::size_t index, std::uint64_t seed) const override {
    ++calls;
    if (index == fail_at_)
      throw Error(ErrorCode::InvalidArgument, "fake example 'bad.jpg' is corrupt");
    std::this_thread::sleep_for(delay_ * static_cast<int>((index * 7919) % 5));
    return {torch::full({2, 3, 3}, static_cast<float>(seed % 1000003)),
            static_cast<std::int64_t>(index)};
  }
  std::string describe() const override { return "fake"; }
  mutable std::atomic<int> calls{0};

 private:
  std::size_t size_, fail_at_;
  std::chrono::microseconds delay_;
};

std::vector<Batch> drain(Loader& loader) {
  std::vector<Batch> batches;
  while (auto batch = loader.next()) batches.push_back(std::move(*batch));
  return batches;
}

TEST(Loader, BatchShapesAndContents) {
  const FakeDataset dataset(100);
  std::vector<std::size_t> indices = {5, 9, 2, 77, 31, 0, 64, 12, 8, 40};
  for (const bool drop_last : {true, false}) {
    Loader loader(dataset, indices, 1234,
                  {.batch_size = 4, .threads = 2, .prefetch = 2, .drop_last = drop_last});
    EXPECT_EQ(loader.batches(), drop_last ? 2u : 3u);
    const auto batches = drain(loader);
    ASSERT_EQ(batches.size(), loader.batches());
    for (std::size_t k = 0; k < batches.size(); ++k) {
      const std::int64_t b = k < 2 ? 4 : 2;
      EXPECT_EQ(batches[k].images.sizes(), (c10::IntArrayRef{b, 2, 3, 3}));
      EXPECT_EQ(batches[k].labels.sizes(), (c10::IntArrayRef{b}));
      EXPECT_EQ(batches[k].labels.scalar_type(), torch::kInt64);
      for (std::int64_t i = 0; i < b; ++i) {
        const std::size_t index = indices[k * 4 + i];
        EXPECT_EQ(batches[k].labels[i].item<std::int64_t>(), static_cast<std::int64_t>(index));
        EXPECT_EQ(batches[k].images[i][1][2][2].item<float>(),
                  static_cast<float>(example_seed(1234, index) % 1000003));
      }
    }
    EXPECT_FALSE(loader.next().has_value());  // stays at the end
  }
  Loader empty(dataset, {}, 1, {});
  EXPECT_EQ(empty.batches(), 0u);
  EXPECT_FALSE(empty.next().has_value());
}

TEST(Loader, OrderDoesNotDependOnThreadCount) {
  const FakeDataset dataset(300);
  const auto indices = DistributedSampler(300, 0, 1, 5, true).indices(0);
  const LoaderOptions base{.batch_size = 7, .threads = 1, .prefetch = 3, .drop_last = false};
  Loader one(dataset, indices, 77, base);
  LoaderOptions three_options = base;
  three_options.threads = 3;
  Loader three(dataset, indices, 77, three_options);
  const auto a = drain(one), b = drain(three);
  ASSERT_EQ(a.size(), b.size());
  ASSERT_EQ(a.size(), 43u);
  for (std::size_t k = 0; k < a.size(); ++k) {
    EXPECT_TRUE(torch::equal(a[k].images, b[k].images)) << "batch " << k;
    EXPECT_TRUE(torch::equal(a[k].labels, b[k].labels)) << "batch " << k;
  }
  // A different epoch seed changes the images (the augmentation seeds), not the labels.
  Loader other(dataset, indices, 78, base);
  const auto c = drain(other);
  EXPECT_TRUE(torch::equal(a[0].labels, c[0].labels));
  EXPECT_FALSE(torch::equal(a[0].images, c[0].images));
}

TEST(Loader, WorkerExceptionsReachTheConsumerInOrder) {
  const FakeDataset dataset(40, 13);
  std::vector<std::size_t> indices(40);
  std::iota(indices.begin(), indices.end(), 0);
  Loader loader(dataset, indices, 1, {.batch_size = 5, .threads = 3, .prefetch = 4});
  // Batches 0 and 1 (indices 0..9) are fine; batch 2 holds index 13.
  ASSERT_TRUE(loader.next().has_value());
  ASSERT_TRUE(loader.next().has_value());
  testing::expect_invalid_argument([&] { loader.next(); }, {"bad.jpg"});
  testing::expect_invalid_argument([&] { loader.next(); }, {"bad.jpg"});  // sticky
}

TEST(Loader, PrefetchIsBounded) {
  const FakeDataset dataset(100, SIZE_MAX, 0us);
  std::vector<std::size_t> indices(100);
  std::iota(indices.begin(), indices.end(), 0);
  Loader loader(dataset, indices, 1, {.batch_size = 2, .threads = 3, .prefetch = 3});
  ASSERT_TRUE(loader.next().has_value());
  std::this_thread::sleep_for(200ms);
  // Consumed 1 batch: workers may have decoded batches 1..3 at most, 2 examples each.
  EXPECT_LE(dataset.calls.load(), (1 + 3) * 2);
  EXPECT_GE(dataset.calls.load(), 2);
}

TEST(Loader, EarlyDestructionDoesNotHang) {
  const FakeDataset dataset(2000, SIZE_MAX, 1000us);
  std::vector<std::size_t> indices(2000);
  std::iota(indices.begin(), indices.end(), 0);
  const auto start = std::chrono::steady_clock::now();
  { Loader untouched(dataset, indices, 1, {.batch_size = 50, .threads = 3, .prefetch = 2}); }
  {
    Loader partly(dataset, indices, 1, {.batch_size = 50, .threads = 3, .prefetch = 2});
    ASSERT_TRUE(partly.next().has_value());
  }
  {
    const FakeDataset failing(100, 0);
    Loader failed(failing, indices, 1, {.batch_size = 10, .threads = 2, .prefetch = 2});
    EXPECT_THROW(failed.next(), Error);
  }
  // Each destructor waits for at most one example per worker (the stop flag is checked
  // between examples); a full epoch would take ~4 s.
  EXPECT_LT(std::chrono::steady_clock::now() - start, 3s);
}

TEST(Loader, RejectsBadOptions) {
  const FakeDataset dataset(10);
  testing::expect_invalid_argument([&] { Loader(dataset, {1}, 0, {.batch_size = 0}); },
                                   {"batch_size"});
  testing::expect_invalid_argument([&] { Loader(dataset, {1}, 0, {.threads = 0}); }, {"threads"});
  testing::expect_invalid_argument([&] { Loader(dataset, {1}, 0, {.prefetch = 0}); }, {"prefetch"});
}

}  // namespace
}  // namespace frugal::train
