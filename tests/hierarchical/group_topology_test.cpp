// The pieces under hierarchical_allreduce: host topology from identities (and FRUGAL_HOST_ID),
// and frugal's collectives on a GroupTransport sub-communicator: results, tag separation from
// the parent, member checks, timeouts and peer failure.
#include <gtest/gtest.h>

#include <cstdlib>
#include <mutex>
#include <numeric>
#include <stdexcept>
#include <string>
#include <vector>

#include "compressed_reference.hpp"
#include "frugal/collectives/allreduce.hpp"
#include "frugal/collectives/collectives.hpp"
#include "frugal/collectives/hierarchical.hpp"
#include "frugal/group_transport.hpp"
#include "frugal/loopback.hpp"
#include "hierarchical_reference.hpp"
#include "loopback_harness.hpp"

namespace frugal {
namespace {

TEST(HostTopology, GroupsByIdentityWithHostsOrderedByLowestRank) {
  const std::vector<std::string> ids = {"b", "a", "b", "c", "a"};
  const HostTopology t = topology_from_identities(ids, 4);
  const std::vector<std::vector<int>> hosts = {{0, 2}, {1, 4}, {3}};
  EXPECT_EQ(t.hosts, hosts);
  EXPECT_EQ(t.host, 1);
  EXPECT_EQ(t.local_rank, 1);
  for (int r = 0; r < 5; ++r) EXPECT_EQ(topology_from_identities(ids, r).hosts, hosts);
  EXPECT_THROW(topology_from_identities(ids, 5), Error);
}

TEST(HostTopology, IdentityIsTheOverrideElseHostnameAndNetworkNamespace) {
  ::setenv("FRUGAL_HOST_ID", "rack7-node3", 1);
  EXPECT_EQ(local_host_identity(), "id:rack7-node3");
  ::unsetenv("FRUGAL_HOST_ID");
  const std::string id = local_host_identity();
  EXPECT_EQ(id.rfind("host:", 0), 0u) << id;
  EXPECT_NE(id.find("net:["), std::string::npos) << id;
}

TEST(HostTopology, DiscoveryOverTheCommunicatorAgreesOnEveryRank) {
  // Threads of one process share hostname and namespace: one host.
  testing::run_ranks(3, [](Communicator& comm) {
    const HostTopology t = discover_host_topology(comm);
    ASSERT_EQ(t.host_count(), 1);
    EXPECT_EQ(t.hosts[0], (std::vector<int>{0, 1, 2}));
    EXPECT_EQ(t.local_rank, comm.rank());
    Hierarchy h(comm);
    EXPECT_EQ(h.host().size(), 3);
    EXPECT_EQ(h.cross().size(), 1);
  });
}

TEST(HostTopology, UnequalHostsAreRefusedOnEveryRank) {
  const std::vector<std::string> ids = {"a", "a", "b"};
  std::mutex mutex;
  int refused = 0;
  testing::run_ranks(3, [&](Communicator& comm) {
    try {
      Hierarchy h(comm, topology_from_identities(ids, comm.rank()));
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::InvalidArgument);
      EXPECT_NE(std::string(e.what()).find("topology"), std::string::npos) << e.what();
      std::lock_guard lock(mutex);
      ++refused;
    }
  });
  EXPECT_EQ(refused, 3);
}

TEST(GroupTransport, RefusesBadMembers) {
  LoopbackGroup group = make_loopback_group(3);
  Transport& t = *group.transports[1];
  auto refuses = [&](std::vector<int> members) {
    try {
      GroupTransport g(t, std::move(members));
    } catch (const Error& e) {
      return e.code() == ErrorCode::InvalidArgument &&
             std::string(e.what()).find("members") != std::string::npos;
    }
    return false;
  };
  EXPECT_TRUE(refuses({}));
  EXPECT_TRUE(refuses({1, 1}));
  EXPECT_TRUE(refuses({1, 3}));
  EXPECT_TRUE(refuses({0, 2}));  // not this rank
  GroupTransport g(t, {2, 1});
  EXPECT_EQ(g.rank(), 1);
  EXPECT_EQ(g.size(), 2);
  EXPECT_EQ(g.parent_rank(0), 2);
  EXPECT_LT(g.max_tag(), t.max_tag());
}

// Dense and compressed collectives on a group of 3 of 5 ranks, interleaved with collectives on
// the parent (the group's tags must not be taken for the parent's).
TEST(GroupTransport, EveryCollectiveRunsOnTheGroupBetweenParentCollectives) {
  const std::vector<int> members = {4, 1, 3};
  AllreduceOptions compressed;
  compressed.compression.method = compression::Method::OneBit;
  compressed.compression.bucket = 64;
  compressed.algorithm = AllreduceAlgorithm::TwoPhase;
  constexpr std::size_t kCount = 300;
  std::vector<std::vector<float>> inputs;
  for (int g = 0; g < 3; ++g) inputs.push_back(testing::integer_input(g, 0, kCount));
  testing::CompressedReference reference(3, kCount, compressed, AllreduceAlgorithm::TwoPhase);
  const std::vector<float> expected = reference.step(inputs);
  testing::run_ranks(5, [&](Communicator& comm) {
    std::vector<float> before(16, 1.0f);
    allreduce(comm, std::span<float>(before));
    ASSERT_EQ(before[0], 5.0f);
    const auto it = std::find(members.begin(), members.end(), comm.rank());
    if (it != members.end()) {
      auto group = make_group_communicator(comm, members);
      const int g = group->rank();
      EXPECT_EQ(g, static_cast<int>(it - members.begin()));
      std::vector<float> sum(33, static_cast<float>(comm.rank()));
      allreduce(*group, std::span<float>(sum));
      EXPECT_EQ(sum[32], 8.0f);  // 4 + 1 + 3
      std::vector<int> gathered(3);
      const int mine = comm.rank();
      allgather(*group, std::as_bytes(std::span<const int>(&mine, 1)),
                std::as_writable_bytes(std::span<int>(gathered)));
      EXPECT_EQ(gathered, members);
      std::vector<int> root(4, g == 2 ? 42 : 0);
      broadcast(*group, std::as_writable_bytes(std::span<int>(root)), 2);
      EXPECT_EQ(root[3], 42);
      AllreduceState state;
      AllreduceOptions o = compressed;
      o.state = &state;
      std::vector<float> data = inputs[static_cast<std::size_t>(g)];
      allreduce(*group, std::span<float>(data), o);
      EXPECT_EQ(data, expected);
      barrier(*group);
    }
    std::vector<float> after(16, 2.0f);
    allreduce(comm, std::span<float>(after));
    EXPECT_EQ(after[15], 10.0f);
  });
}

TEST(GroupTransport, ASilentMemberIsATimeoutAndTheGroupIsFailed) {
  std::mutex mutex;
  std::vector<ErrorCode> codes;
  testing::run_ranks(3, [&](Communicator& comm) {
    if (comm.rank() == 2) return;
    auto group = make_group_communicator(comm, {0, 1});
    group->set_timeout(std::chrono::milliseconds(200));
    if (comm.rank() == 1) return;  // never joins
    std::vector<float> data(4);
    try {
      allreduce(*group, std::span<float>(data));
    } catch (const Error& e) {
      std::lock_guard lock(mutex);
      codes.push_back(e.code());
    }
    EXPECT_TRUE(group->failed());
  });
  EXPECT_EQ(codes, std::vector<ErrorCode>{ErrorCode::Timeout});
}

TEST(GroupTransport, ADeadMemberIsAPeerFailure) {
  std::mutex mutex;
  std::vector<ErrorCode> codes;
  EXPECT_THROW(testing::run_ranks(4,
                                  [&](Communicator& comm) {
                                    if (comm.rank() == 0) return;
                                    auto group = make_group_communicator(comm, {1, 2, 3});
                                    if (comm.rank() == 2) throw std::runtime_error("leaving");
                                    std::vector<float> data(4);
                                    try {
                                      allreduce(*group, std::span<float>(data));
                                    } catch (const Error& e) {
                                      std::lock_guard lock(mutex);
                                      codes.push_back(e.code());
                                    }
                                  }),
               std::runtime_error);
  EXPECT_EQ(codes, (std::vector<ErrorCode>{ErrorCode::PeerFailure, ErrorCode::PeerFailure}));
}

}  // namespace
}  // namespace frugal
