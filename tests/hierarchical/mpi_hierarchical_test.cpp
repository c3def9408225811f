// hierarchical_allreduce on real processes: the hosts come from FRUGAL_HOST_ID, set per rank by
// the launcher (tests/hierarchical/meson.build), or from hostname and network namespace. Every
// rank rebuilds all ranks' inputs and checks the serial reference bit for bit; disagreement is
// Mismatch on every rank.
#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "frugal/collectives/allreduce.hpp"
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

}  // namespace
}  // namespace frugal
