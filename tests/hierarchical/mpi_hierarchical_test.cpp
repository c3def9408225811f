// hierarchical_allreduce on real processes: the hosts come from FRUGAL_HOST_ID, set per rank by
// the launcher (tests/hierarchical/meson.build), or from hostname and network namespace. Every
// rank rebuilds all ranks' inputs and checks the serial reference bit for bit; disagreement is
// Mismatch on every rank.
#include <gtest/gtest.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "frugal/collectives/allreduce.hpp"
#include "frugal/collectives/buckets.hpp"
#include "frugal/collectives/collectives.hpp"
#include "frugal/collectives/hierarchical.hpp"
#include "hierarchical_reference.hpp"
#include "test_communicator.hpp"

namespace frugal {
namespace {

Communicator& comm() {
  return testing::shared_test_communicator();
}

TEST(MpiHierarchical, TopologyComesFromTheEnvironmentAlikeOnEveryRank) {
  const HostTopology t = discover_host_topology(comm());
  if (const char* want = std::getenv("FRUGAL_TEST_HOSTS"); want != nullptr) {
    ASSERT_EQ(t.host_count(), std::atoi(want));
  }
  // The same topology everywhere: rank 0's host list, broadcast, equals this rank's.
  std::vector<std::int32_t> mine;
  for (const auto& host : t.hosts) {
    mine.push_back(static_cast<std::int32_t>(host.size()));
    mine.insert(mine.end(), host.begin(), host.end());
  }
  mine.resize(static_cast<std::size_t>(2 * comm().size()), -1);
  std::vector<std::int32_t> root = mine;
  broadcast(comm(), std::as_writable_bytes(std::span<std::int32_t>(root)), 0);
  EXPECT_EQ(root, mine);
}

struct Method {
  std::string name;
  AllreduceOptions options;
};

std::vector<Method> methods() {
  std::vector<Method> out;
  out.push_back({"dense", {}});
  Method onebit{"onebit", {}};
  onebit.options.compression.method = compression::Method::OneBit;
  onebit.options.compression.bucket = 64;
  out.push_back(onebit);
  Method topk{"topk", {}};
  topk.options.compression.method = compression::Method::TopK;
  topk.options.compression.density = 0.05;
  topk.options.algorithm = AllreduceAlgorithm::SparseAllgather;
  out.push_back(topk);
  Method qsgd{"qsgd4", {}};
  qsgd.options.compression.method = compression::Method::Qsgd;
  qsgd.options.compression.bits = 4;
  qsgd.options.compression.bucket = 128;
  out.push_back(qsgd);
  return out;
}

TEST(MpiHierarchical, MatchesTheSerialReferenceOnEveryRank) {
  Hierarchy hierarchy(comm());
  const int p = comm().size();
  constexpr std::size_t kCount = 2051;
  for (const Method& m : methods()) {
    AllreduceOptions options = m.options;
    options.seed = 5;
    testing::HierarchicalReference reference(hierarchy.topology(), kCount, options);
    HierarchicalState state;
    for (int step = 0; step < 3; ++step) {
      std::vector<std::vector<float>> inputs;
      for (int r = 0; r < p; ++r) inputs.push_back(testing::integer_input(r, step, kCount));
      const std::vector<float> expected = reference.step(inputs);
      std::vector<float> data = inputs[static_cast<std::size_t>(comm().rank())];
      hierarchical_allreduce(hierarchy, std::span<float>(data), options, &state);
      ASSERT_EQ(std::memcmp(data.data(), expected.data(), kCount * sizeof(float)), 0)
          << m.name << " step " << step;
    }
  }
}

TEST(MpiHierarchical, DisagreementIsMismatchOnEveryRank) {
  // A communicator of its own: the mismatch fails it.
  auto own = testing::make_test_communicator();
  Hierarchy hierarchy(*own);
  AllreduceOptions options;
  options.compression.method = compression::Method::OneBit;
  HierarchicalState state;
  std::vector<float> data(own->rank() == own->size() - 1 ? 130 : 128, 1.0f);
  try {
    hierarchical_allreduce(hierarchy, std::span<float>(data), options, &state);
    if (own->size() > 1) ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::Mismatch) << e.what();
  }
}

// A state bound to another count on one rank: every rank gets Mismatch at once (not after the
// 20 s timeout), and the hierarchy stays usable.
TEST(MpiHierarchical, AStateBoundElsewhereIsRefusedPromptlyOnEveryRank) {
  auto own = testing::make_test_communicator({.timeout = std::chrono::seconds(20)});
  Hierarchy hierarchy(*own);
  AllreduceOptions options;
  options.compression.method = compression::Method::OneBit;
  HierarchicalState state;
  std::vector<float> data(128, 1.0f);
  hierarchical_allreduce(hierarchy, std::span<float>(data), options, &state);
  if (own->rank() != own->size() - 1) state.reset();
  std::vector<float> other(96, 1.0f);
  const auto start = std::chrono::steady_clock::now();
  try {
    hierarchical_allreduce(hierarchy, std::span<float>(other), options, &state);
    if (own->size() > 1) ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::Mismatch) << e.what();
  }
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(10));
  std::vector<float> again(8, 1.0f);
  hierarchical_allreduce(hierarchy, std::span<float>(again));
  EXPECT_EQ(again[0], static_cast<float>(own->size()));
}

// GradientBuckets with BucketOptions::hierarchical, hosts discovered from FRUGAL_HOST_ID: each
// bucket (one tensor each here) holds the serial reference of hierarchical_allreduce for every
// rank's inputs, compressed buckets with their error feedback carried over the steps.
TEST(MpiHierarchical, GradientBucketsReduceEachBucketAsTheSerialReference) {
  struct Spec {
    const char* name;
    std::size_t count;
    std::size_t dims;
  };
  const Spec tensors[] = {{"w1", 1000, 2}, {"b1", 30, 1}, {"w2", 1500, 2}};
  BucketOptions options;
  options.bucket_bytes = 1200 * sizeof(float);
  options.allreduce.compression.method = compression::Method::OneBit;
  options.allreduce.compression.bucket = 64;
  options.hierarchical = true;
  GradientBuckets buckets(comm(), options);
  for (const Spec& t : tensors) buckets.add(t.name, t.count, t.dims);
  ASSERT_NE(buckets.topology(), nullptr);
  if (const char* want = std::getenv("FRUGAL_TEST_HOSTS"); want != nullptr) {
    ASSERT_EQ(buckets.topology()->host_count(), std::atoi(want));
  }
  const int p = comm().size();
  const auto input = [](int rank, int step, std::size_t t, std::size_t count) {
    return testing::integer_input(rank * 3 + static_cast<int>(t), step, count);
  };
  std::map<std::size_t, std::unique_ptr<testing::HierarchicalReference>> references;
  for (int step = 0; step < 3; ++step) {
    std::vector<std::vector<float>> grads;
    for (std::size_t t = 0; t < std::size(tensors); ++t) {
      grads.push_back(input(comm().rank(), step, t, tensors[t].count));
      buckets.mark_ready(t, grads.back());
    }
    buckets.finish();
    ASSERT_EQ(buckets.bucket_count(), 3u);
    for (std::size_t t = 0; t < std::size(tensors); ++t) {
      const std::size_t b = buckets.bucket_of(t);
      auto& reference = references[b];
      if (!reference) {
        AllreduceOptions o = options.allreduce;
        if (buckets.bucket_is_dense(b)) o.compression = {};
        reference = std::make_unique<testing::HierarchicalReference>(*buckets.topology(),
                                                                     tensors[t].count, o);
      }
      std::vector<std::vector<float>> inputs;
      for (int r = 0; r < p; ++r) inputs.push_back(input(r, step, t, tensors[t].count));
      const std::vector<float> expected = reference->step(inputs);
      ASSERT_EQ(std::memcmp(grads[t].data(), expected.data(), expected.size() * sizeof(float)), 0)
          << tensors[t].name << " step " << step;
    }
  }
}

// A rank that did not mark a tensor: its refusal reaches the others, who are in the first
// bucket's hierarchical_allreduce, at once (not after the 20 s timeout), on every rank.
TEST(MpiHierarchical, GradientBucketsRefuseAMissingTensorPromptlyOnEveryRank) {
  auto own = testing::make_test_communicator({.timeout = std::chrono::seconds(20)});
  BucketOptions options;
  options.allreduce.compression.method = compression::Method::OneBit;
  options.hierarchical = true;
  GradientBuckets buckets(*own, options);
  buckets.add("w", 600, 2);
  buckets.add("b", 20, 1);
  std::vector<float> w(600, 1.0f), b(20, 1.0f);
  const bool skips = own->rank() == own->size() - 1;
  buckets.mark_ready(0, w);
  if (!skips) buckets.mark_ready(1, b);
  const auto start = std::chrono::steady_clock::now();
  try {
    buckets.finish();
    if (own->size() > 1) ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), skips ? ErrorCode::InvalidArgument : ErrorCode::Mismatch) << e.what();
    EXPECT_NE(std::string(e.what()).find("'b'"), std::string::npos) << e.what();
  }
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(10));
}

}  // namespace
}  // namespace frugal
