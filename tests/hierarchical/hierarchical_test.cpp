// hierarchical_allreduce on the loopback fabric with simulated hosts: equality with the serial
// reference on every rank, fewer bytes between hosts than the flat allreduce, bad input,
// disagreement and NaN/Inf decided alike on every rank.
#include "frugal/collectives/hierarchical.hpp"

#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <mutex>
#include <optional>
#include <ostream>
#include <stdexcept>
#include <string>
#include <vector>

#include "frugal/collectives/allreduce.hpp"
#include "hierarchical_reference.hpp"
#include "hierarchy_harness.hpp"
#include "loopback_harness.hpp"

namespace frugal {
namespace {

using testing::host_identities;
using testing::integer_input;

struct Shape {
  std::string name;
  int hosts;
  int per_host;
  bool interleaved;
};

struct MethodCase {
  std::string name;
  compression::CompressionConfig config;
  AllreduceAlgorithm algorithm = AllreduceAlgorithm::Auto;
};

void PrintTo(const Shape& s, std::ostream* os) {
  *os << s.name;
}

void PrintTo(const MethodCase& m, std::ostream* os) {
  *os << m.name;
}

// Every rank count P = 1..8 (issue 21), with one host, one rank per host and several of each;
// hosts of unequal size are refused (HierarchicalAllreduceTopology below).
std::vector<Shape> shapes() {
  return {{"1x1", 1, 1, false},
          {"1x2", 1, 2, false},
          {"2x1", 2, 1, false},
          {"3x1", 3, 1, false},
          {"2x2", 2, 2, false},
          {"2x2_interleaved", 2, 2, true},
          {"1x4", 1, 4, false},
          {"5x1", 5, 1, false},
          {"1x5", 1, 5, false},
          {"2x3", 2, 3, false},
          {"3x2_interleaved", 3, 2, true},
          {"7x1", 7, 1, false},
          {"2x4", 2, 4, false},
          {"4x2_interleaved", 4, 2, true},
          {"8x1", 8, 1, false}};
}

std::vector<MethodCase> methods() {
  using compression::Method;
  std::vector<MethodCase> cases;
  cases.push_back({"dense", {}, AllreduceAlgorithm::Auto});
  MethodCase onebit{"onebit", {}, AllreduceAlgorithm::Auto};
  onebit.config.method = Method::OneBit;
  onebit.config.bucket = 64;
  cases.push_back(onebit);
  MethodCase onebit_tp = onebit;
  onebit_tp.name = "onebit_two_phase";
  onebit_tp.algorithm = AllreduceAlgorithm::TwoPhase;
  cases.push_back(onebit_tp);
  MethodCase qsgd{"qsgd4", {}, AllreduceAlgorithm::Auto};
  qsgd.config.method = Method::Qsgd;
  qsgd.config.bits = 4;
  qsgd.config.bucket = 128;
  cases.push_back(qsgd);
  MethodCase topk{"topk", {}, AllreduceAlgorithm::SparseAllgather};
  topk.config.method = Method::TopK;
  topk.config.density = 0.05;
  cases.push_back(topk);
  return cases;
}

class HierarchicalAllreduce : public ::testing::TestWithParam<std::tuple<Shape, MethodCase>> {};

TEST_P(HierarchicalAllreduce, MatchesTheSerialReferenceBitIdenticallyOnEveryRank) {
  const auto& [shape, method] = GetParam();
  const std::vector<std::string> ids =
      host_identities(shape.hosts, shape.per_host, shape.interleaved);
  const int p = static_cast<int>(ids.size());
  constexpr std::size_t kCount = 1037;
  constexpr int kSteps = 3;
  AllreduceOptions options;
  options.compression = method.config;
  options.algorithm = method.algorithm;
  options.seed = 11;

  testing::HierarchicalReference reference(topology_from_identities(ids, 0), kCount, options);
  std::vector<std::vector<float>> expected;
  for (int step = 0; step < kSteps; ++step) {
    std::vector<std::vector<float>> inputs;
    for (int r = 0; r < p; ++r) inputs.push_back(integer_input(r, step, kCount));
    expected.push_back(reference.step(inputs));
  }

  std::mutex mutex;
  std::vector<std::vector<std::vector<float>>> results(static_cast<std::size_t>(p));
  testing::run_hosts(ids, [&](Communicator& comm, Hierarchy& hierarchy) {
    ASSERT_EQ(hierarchy.topology().host_count(), shape.hosts);
    ASSERT_EQ(hierarchy.topology().ranks_on_host(), shape.per_host);
    HierarchicalState state;
    std::vector<std::vector<float>> mine;
    for (int step = 0; step < kSteps; ++step) {
      std::vector<float> data = integer_input(comm.rank(), step, kCount);
      hierarchical_allreduce(hierarchy, std::span<float>(data), options, &state);
      mine.push_back(std::move(data));
    }
    if (method.config.method != compression::Method::None) {
      // One host: no inter-host step, so error feedback never runs.
      EXPECT_EQ(state.steps(), shape.hosts > 1 ? static_cast<std::uint64_t>(kSteps) : 0u);
    }
    std::lock_guard lock(mutex);
    results[static_cast<std::size_t>(comm.rank())] = std::move(mine);
  });
  for (int r = 0; r < p; ++r) {
    for (int step = 0; step < kSteps; ++step) {
      const std::vector<float>& got =
          results[static_cast<std::size_t>(r)][static_cast<std::size_t>(step)];
      const std::vector<float>& want = expected[static_cast<std::size_t>(step)];
      ASSERT_EQ(got.size(), want.size());
      ASSERT_EQ(std::memcmp(got.data(), want.data(), want.size() * sizeof(float)), 0)
          << "rank " << r << " step " << step;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    ShapesAndMethods, HierarchicalAllreduce,
    ::testing::Combine(::testing::ValuesIn(shapes()), ::testing::ValuesIn(methods())),
    [](const ::testing::TestParamInfo<HierarchicalAllreduce::ParamType>& info) {
      return std::get<0>(info.param).name + "_" + std::get<1>(info.param).name;
    });

// Hosts of unequal size (docs/hierarchical.md: every host must hold the same number of ranks)
// at the rank counts where they exist, P = 3..8: InvalidArgument naming the topology on every
// rank, before any collective, so no rank is left waiting for another.
TEST(HierarchicalAllreduceTopology, UnequalHostsAreRefusedOnEveryRankForEveryRankCount) {
  const std::vector<std::vector<std::string>> layouts = {
      {"a", "a", "b"},                          // P = 3: 2 + 1
      {"a", "b", "b", "b"},                     // P = 4: 1 + 3
      {"a", "a", "a", "b", "b"},                // P = 5: 3 + 2
      {"a", "b", "c", "a", "b"},                // P = 5: 2 + 2 + 1, interleaved
      {"a", "a", "a", "a", "b", "b"},           // P = 6: 4 + 2
      {"a", "b", "b", "c", "c", "c"},           // P = 6: 1 + 2 + 3
      {"a", "a", "a", "a", "b", "b", "b"},      // P = 7: 4 + 3
      {"a", "a", "a", "a", "a", "b", "b", "b"}  // P = 8: 5 + 3
  };
  for (const std::vector<std::string>& ids : layouts) {
    const int p = static_cast<int>(ids.size());
    SCOPED_TRACE("P = " + std::to_string(p));
    std::mutex mutex;
    int refused = 0;
    testing::run_ranks(p, [&](Communicator& comm) {
      try {
        Hierarchy h(comm, topology_from_identities(ids, comm.rank()));
        // Reached only if the layout were accepted: a collective on it must not pass silently.
        std::vector<float> data(16, 1.0f);
        hierarchical_allreduce(h, std::span<float>(data));
      } catch (const Error& e) {
        EXPECT_EQ(e.code(), ErrorCode::InvalidArgument) << e.what();
        EXPECT_NE(std::string(e.what()).find("topology"), std::string::npos) << e.what();
        std::lock_guard lock(mutex);
        ++refused;
      }
    });
    EXPECT_EQ(refused, p);
  }
}

TEST(HierarchicalAllreduceDense, Int32SumAndFloatAverage) {
  const std::vector<std::string> ids = host_identities(2, 2, false);
  testing::run_hosts(ids, [&](Communicator& comm, Hierarchy& hierarchy) {
    std::vector<std::int32_t> ints(101);
    for (std::size_t i = 0; i < ints.size(); ++i) {
      ints[i] = static_cast<std::int32_t>(i) * (comm.rank() + 1);
    }
    hierarchical_allreduce(hierarchy, std::span<std::int32_t>(ints));
    for (std::size_t i = 0; i < ints.size(); ++i) {
      ASSERT_EQ(ints[i], static_cast<std::int32_t>(i) * 10);
    }
    std::vector<float> avg(77, static_cast<float>(comm.rank()));
    AllreduceOptions options;
    options.op = ReduceOp::Average;
    hierarchical_allreduce(hierarchy, std::span<float>(avg), options);
    for (float v : avg) ASSERT_EQ(v, 1.5f);  // (0 + 1 + 2 + 3) / 4
  });
}

// The point of the hierarchy: only one share per local rank crosses hosts, once compressed.
TEST(HierarchicalAllreduceWire, SendsFewerBytesBetweenHostsThanFlat) {
  using compression::Method;
  constexpr std::size_t kCount = 1 << 16;
  for (const Shape& shape : {Shape{"2x2", 2, 2, false}, Shape{"2x3", 2, 3, true}}) {
    for (Method m : {Method::OneBit, Method::TopK}) {
      AllreduceOptions options;
      options.compression.method = m;
      options.compression.density = 0.01;
      const std::vector<std::string> ids =
          host_identities(shape.hosts, shape.per_host, shape.interleaved);
      testing::WireCounter flat;
      testing::run_hosts(
          ids,
          [&](Communicator& comm, Hierarchy&) {
            AllreduceState state;
            AllreduceOptions o = options;
            o.state = &state;
            std::vector<float> data = integer_input(comm.rank(), 0, kCount);
            allreduce(comm, std::span<float>(data), o);
          },
          &flat);
      testing::WireCounter hier;
      testing::run_hosts(
          ids,
          [&](Communicator& comm, Hierarchy& hierarchy) {
            HierarchicalState state;
            std::vector<float> data = integer_input(comm.rank(), 0, kCount);
            hierarchical_allreduce(hierarchy, std::span<float>(data), options, &state);
          },
          &hier);
      const std::string what = shape.name + " " + std::string(compression::to_string(m));
      std::printf("%s: bytes between hosts, flat %zu, hierarchical %zu (%.2fx)\n", what.c_str(),
                  flat.cross_host.load(), hier.cross_host.load(),
                  static_cast<double>(flat.cross_host) / static_cast<double>(hier.cross_host));
      EXPECT_GT(hier.cross_host.load(), 0u) << what;
      EXPECT_LT(hier.cross_host.load(), flat.cross_host.load()) << what;
      // Within a host the data travels dense: the price of the saving between hosts.
      EXPECT_GT(hier.within_host.load(), 0u) << what;
    }
  }
}

// What each rank threw (nullopt: nothing).
struct Outcome {
  std::optional<ErrorCode> code;
  std::string message;
};

std::vector<Outcome> outcomes_of(const std::vector<std::string>& ids,
                                 const std::function<void(Communicator&, Hierarchy&)>& body) {
  std::mutex mutex;
  std::vector<Outcome> out(ids.size());
  testing::run_hosts(
      ids,
      [&](Communicator& comm, Hierarchy& hierarchy) {
        Outcome o;
        try {
          body(comm, hierarchy);
        } catch (const Error& e) {
          o.code = e.code();
          o.message = e.what();
        }
        std::lock_guard lock(mutex);
        out[static_cast<std::size_t>(comm.rank())] = o;
      },
      nullptr, std::chrono::seconds(20), /*fail_fast=*/false);
  return out;
}

void expect_everywhere(const std::vector<Outcome>& outcomes, ErrorCode code,
                       const std::string& needle) {
  for (std::size_t r = 0; r < outcomes.size(); ++r) {
    ASSERT_TRUE(outcomes[r].code.has_value()) << "rank " << r << " threw nothing";
    EXPECT_EQ(*outcomes[r].code, code) << "rank " << r << ": " << outcomes[r].message;
    if (!needle.empty()) {
      EXPECT_NE(outcomes[r].message.find(needle), std::string::npos)
          << "rank " << r << ": " << outcomes[r].message;
    }
  }
}

AllreduceOptions onebit_options() {
  AllreduceOptions options;
  options.compression.method = compression::Method::OneBit;
  options.compression.bucket = 64;
  return options;
}

TEST(HierarchicalAllreduceBadInput, InvalidArgumentNamesTheParameterOnEveryRankAndKeepsItUsable) {
  const std::vector<std::string> ids = host_identities(2, 2, false);
  struct Case {
    std::string parameter;
    std::function<void(Hierarchy&)> call;
  };
  const std::vector<Case> cases = {
      {"state",
       [](Hierarchy& h) {
         AllreduceState plain;
         AllreduceOptions o = onebit_options();
         o.state = &plain;
         HierarchicalState state;
         std::vector<float> data(64);
         hierarchical_allreduce(h, std::span<float>(data), o, &state);
       }},
      {"state",
       [](Hierarchy& h) {
         std::vector<float> data(64);
         hierarchical_allreduce(h, std::span<float>(data), onebit_options());
       }},
      {"dtype",
       [](Hierarchy& h) {
         HierarchicalState state;
         std::vector<std::int32_t> data(64);
         hierarchical_allreduce(h, std::span<std::int32_t>(data), onebit_options(), &state);
       }},
      {"data",
       [](Hierarchy& h) {
         std::vector<std::byte> data(10);
         hierarchical_allreduce(h, std::span<std::byte>(data), DType::Float32);
       }},
      {"bucket",
       [](Hierarchy& h) {
         AllreduceOptions o = onebit_options();
         o.compression.bucket = 3;
         HierarchicalState state;
         std::vector<float> data(64);
         hierarchical_allreduce(h, std::span<float>(data), o, &state);
       }},
  };
  for (const Case& c : cases) {
    const std::vector<Outcome> outcomes = outcomes_of(ids, [&](Communicator&, Hierarchy& h) {
      try {
        c.call(h);
      } catch (const Error& e) {
        // Still usable: the next valid call works on every rank.
        std::vector<float> data(8, 1.0f);
        hierarchical_allreduce(h, std::span<float>(data));
        if (data[0] != 4.0f) throw Error(ErrorCode::Internal, "wrong sum after a refusal");
        throw;
      }
    });
    expect_everywhere(outcomes, ErrorCode::InvalidArgument, c.parameter);
  }
}

TEST(HierarchicalAllreduceMismatch, DisagreeingRanksGetMismatchOnEveryRank) {
  const std::vector<std::string> ids = host_identities(2, 2, false);
  // One rank of the second host passes another count.
  expect_everywhere(outcomes_of(ids,
                                [](Communicator& comm, Hierarchy& h) {
                                  HierarchicalState state;
                                  std::vector<float> data(comm.rank() == 3 ? 65 : 64);
                                  hierarchical_allreduce(h, std::span<float>(data),
                                                         onebit_options(), &state);
                                }),
                    ErrorCode::Mismatch, "");
  // One rank of the first host passes another method.
  expect_everywhere(outcomes_of(ids,
                                [](Communicator& comm, Hierarchy& h) {
                                  HierarchicalState state;
                                  AllreduceOptions o = onebit_options();
                                  if (comm.rank() == 1)
                                    o.compression.method = compression::Method::Fp16;
                                  std::vector<float> data(64);
                                  hierarchical_allreduce(h, std::span<float>(data), o, &state);
                                }),
                    ErrorCode::Mismatch, "");
  // One rank's state is still bound to the previous count; the others reset theirs.
  expect_everywhere(
      outcomes_of(ids,
                  [](Communicator& comm, Hierarchy& h) {
                    HierarchicalState state;
                    std::vector<float> data(64, 1.0f);
                    hierarchical_allreduce(h, std::span<float>(data), onebit_options(), &state);
                    if (comm.rank() != 2) state.reset();
                    std::vector<float> other(96, 1.0f);
                    hierarchical_allreduce(h, std::span<float>(other), onebit_options(), &state);
                  }),
      ErrorCode::Mismatch, "");
  // A dense call against a compressed one.
  expect_everywhere(outcomes_of(ids,
                                [](Communicator& comm, Hierarchy& h) {
                                  HierarchicalState state;
                                  std::vector<float> data(64);
                                  hierarchical_allreduce(
                                      h, std::span<float>(data),
                                      comm.rank() == 0 ? AllreduceOptions{} : onebit_options(),
                                      &state);
                                }),
                    ErrorCode::Mismatch, "");
}

// A state bound to another count is this rank's own refusal, taken into the agreement every
// rank is in: the peers get Mismatch naming it at once (outcomes_of's timeout is 20 s; a rank
// left waiting would get Timeout), the hierarchy stays usable, and a refusal by another rank in
// the same call (whose reasons travel in an extra exchange) does not leave anyone waiting.
TEST(HierarchicalAllreduceMismatch, AStateBoundElsewhereIsRefusedPromptlyOnEveryRank) {
  const std::vector<std::string> ids = host_identities(2, 2, false);
  for (const bool also_bad_argument : {false, true}) {
    SCOPED_TRACE(also_bad_argument ? "with rank 0 refusing a bad bucket too" : "alone");
    const auto start = std::chrono::steady_clock::now();
    const std::vector<Outcome> outcomes = outcomes_of(ids, [&](Communicator& comm, Hierarchy& h) {
      HierarchicalState state;
      std::vector<float> data(64, 1.0f);
      hierarchical_allreduce(h, std::span<float>(data), onebit_options(), &state);
      if (comm.rank() != 2) state.reset();
      AllreduceOptions o = onebit_options();
      if (also_bad_argument && comm.rank() == 0) o.compression.bucket = 3;
      std::vector<float> other(96, 1.0f);
      try {
        hierarchical_allreduce(h, std::span<float>(other), o, &state);
      } catch (const Error&) {
        // Still usable on every rank: a valid call right after sums correctly.
        std::vector<float> again(8, 1.0f);
        hierarchical_allreduce(h, std::span<float>(again));
        if (again[0] != 4.0f) throw Error(ErrorCode::Internal, "wrong sum after the refusal");
        throw;
      }
    });
    const auto elapsed = std::chrono::steady_clock::now() - start;
    EXPECT_LT(elapsed, std::chrono::seconds(10));
    for (std::size_t r = 0; r < outcomes.size(); ++r) {
      ASSERT_TRUE(outcomes[r].code.has_value()) << "rank " << r << " threw nothing";
      const ErrorCode want =
          also_bad_argument && r == 0 ? ErrorCode::InvalidArgument : ErrorCode::Mismatch;
      EXPECT_EQ(*outcomes[r].code, want) << "rank " << r << ": " << outcomes[r].message;
    }
    // The bound rank says what its state is bound to; the others name it.
    EXPECT_NE(outcomes[2].message.find("bound to"), std::string::npos) << outcomes[2].message;
    EXPECT_NE(outcomes[1].message.find("rank 2"), std::string::npos) << outcomes[1].message;
  }
}

TEST(HierarchicalAllreduceMismatch, TheHierarchyIsFailedAfterwardsOnEveryRank) {
  const std::vector<std::string> ids = host_identities(2, 2, true);
  expect_everywhere(outcomes_of(ids,
                                [](Communicator& comm, Hierarchy& h) {
                                  std::vector<float> data(comm.rank() == 0 ? 9 : 8);
                                  try {
                                    hierarchical_allreduce(h, std::span<float>(data));
                                  } catch (const Error& e) {
                                    if (e.code() != ErrorCode::Mismatch) throw;
                                  }
                                  std::vector<float> again(8);
                                  hierarchical_allreduce(h, std::span<float>(again));
                                }),
                    ErrorCode::Mismatch, "failed earlier");
}

TEST(HierarchicalAllreduceNonFinite, SkipIsDecidedOnEveryRankAndLeavesBuffersAndState) {
  const std::vector<std::string> ids = host_identities(2, 2, false);
  testing::run_hosts(ids, [](Communicator& comm, Hierarchy& h) {
    HierarchicalState state;
    AllreduceOptions o = onebit_options();
    o.non_finite = NonFiniteAction::Skip;
    AllreduceStats stats;
    o.stats = &stats;
    std::vector<float> data = integer_input(comm.rank(), 0, 128);
    if (comm.rank() == 1) data[100] = std::numeric_limits<float>::quiet_NaN();
    const std::vector<float> before = data;
    hierarchical_allreduce(h, std::span<float>(data), o, &state);
    EXPECT_TRUE(stats.non_finite_skipped);
    EXPECT_EQ(std::memcmp(before.data(), data.data(), data.size() * sizeof(float)), 0);
    EXPECT_EQ(state.steps(), 0u);
    EXPECT_FALSE(state.share().bound());
  });
}

TEST(HierarchicalAllreduceNonFinite, ErrorIsInvalidArgumentOnEveryRank) {
  const std::vector<std::string> ids = host_identities(2, 2, false);
  expect_everywhere(outcomes_of(ids,
                                [](Communicator& comm, Hierarchy& h) {
                                  HierarchicalState state;
                                  std::vector<float> data(64, 1.0f);
                                  if (comm.rank() == 2) {
                                    data[5] = std::numeric_limits<float>::infinity();
                                  }
                                  hierarchical_allreduce(h, std::span<float>(data),
                                                         onebit_options(), &state);
                                }),
                    ErrorCode::InvalidArgument, "non_finite");
}

TEST(HierarchicalAllreduceNonFinite, ZeroReplacesNaNBeforeReducing) {
  const std::vector<std::string> ids = host_identities(2, 2, false);
  testing::run_hosts(ids, [](Communicator& comm, Hierarchy& h) {
    AllreduceOptions o;
    o.non_finite = NonFiniteAction::Zero;
    AllreduceStats stats;
    o.stats = &stats;
    std::vector<float> data(32, 1.0f);
    if (comm.rank() == 3) data[7] = std::numeric_limits<float>::quiet_NaN();
    hierarchical_allreduce(h, std::span<float>(data), o);
    EXPECT_EQ(stats.non_finite_zeroed, comm.rank() == 3 ? 1u : 0u);
    for (std::size_t i = 0; i < data.size(); ++i) ASSERT_EQ(data[i], i == 7 ? 3.0f : 4.0f);
  });
}

}  // namespace
}  // namespace frugal

namespace frugal {
namespace {

// A host's sum leaves fp16's range although no input does: only the cross group of the share
// holding it sees it, and its host mates learn through the verdict exchange, so every rank
// throws instead of waiting for that share.
TEST(HierarchicalAllreduceNonFinite, AnInterHostFailureOfOneShareReachesEveryRank) {
  const std::vector<std::string> ids = host_identities(2, 2, false);
  const std::vector<Outcome> outcomes = outcomes_of(ids, [](Communicator&, Hierarchy& h) {
    AllreduceOptions o;
    o.compression.method = compression::Method::Fp16;
    HierarchicalState state;
    std::vector<float> data(64, 1.0f);
    data[63] = 40000.0f;  // in share 1: 80000 on each host
    hierarchical_allreduce(h, std::span<float>(data), o, &state);
  });
  expect_everywhere(outcomes, ErrorCode::InvalidArgument, "");
  // Ranks 0 and 2 carry share 0, which went through: they hear of share 1 from their host.
  for (std::size_t r : {0u, 2u}) {
    EXPECT_NE(outcomes[r].message.find("another rank of this host"), std::string::npos)
        << outcomes[r].message;
  }
}

}  // namespace
}  // namespace frugal

namespace frugal {
namespace {

// A rank that never calls: every other rank throws Timeout or PeerFailure (a peer that timed out
// first tells the others), none hangs, and the hierarchy is failed.
TEST(HierarchicalAllreduceFailure, ASilentRankIsATimeoutOrPeerFailureEverywhere) {
  const std::vector<std::string> ids = host_identities(2, 2, false);
  std::mutex mutex;
  std::vector<std::optional<ErrorCode>> codes(ids.size());
  testing::run_hosts(
      ids,
      [&](Communicator& comm, Hierarchy& h) {
        if (comm.rank() == 3) return;
        std::optional<ErrorCode> code;
        try {
          HierarchicalState state;
          std::vector<float> data(256, 1.0f);
          hierarchical_allreduce(h, std::span<float>(data), onebit_options(), &state);
        } catch (const Error& e) {
          code = e.code();
        }
        EXPECT_TRUE(comm.failed());
        std::lock_guard lock(mutex);
        codes[static_cast<std::size_t>(comm.rank())] = code;
      },
      nullptr, std::chrono::milliseconds(300), /*fail_fast=*/false);
  for (int r = 0; r < 3; ++r) {
    ASSERT_TRUE(codes[static_cast<std::size_t>(r)].has_value()) << "rank " << r;
    const ErrorCode c = *codes[static_cast<std::size_t>(r)];
    EXPECT_TRUE(c == ErrorCode::Timeout || c == ErrorCode::PeerFailure) << "rank " << r;
  }
}

// A rank that dies instead of calling: every other rank sees PeerFailure. (The loopback fabric
// learns of a rank's failure when its thread ends with an exception, so every rank rethrows;
// MPI and UCX tell the peers through notify_failure or see the process exit.)
TEST(HierarchicalAllreduceFailure, ADeadRankIsAPeerFailureEverywhere) {
  const std::vector<std::string> ids = host_identities(2, 2, false);
  std::mutex mutex;
  std::vector<std::optional<ErrorCode>> codes(ids.size());
  EXPECT_THROW(testing::run_hosts(ids,
                                  [&](Communicator& comm, Hierarchy& h) {
                                    if (comm.rank() == 2) throw std::runtime_error("leaving");
                                    try {
                                      HierarchicalState state;
                                      std::vector<float> data(256, 1.0f);
                                      hierarchical_allreduce(h, std::span<float>(data),
                                                             onebit_options(), &state);
                                    } catch (const Error& e) {
                                      std::lock_guard lock(mutex);
                                      codes[static_cast<std::size_t>(comm.rank())] = e.code();
                                      throw;
                                    }
                                  }),
               std::exception);
  for (int r : {0, 1, 3}) {
    ASSERT_TRUE(codes[static_cast<std::size_t>(r)].has_value()) << "rank " << r;
    EXPECT_EQ(*codes[static_cast<std::size_t>(r)], ErrorCode::PeerFailure) << "rank " << r;
  }
}

}  // namespace
}  // namespace frugal

namespace frugal {
namespace {

// Fewer elements than ranks per host: some shares are empty, and their cross groups reduce
// nothing, yet every rank still gets the sum.
TEST(HierarchicalAllreduceEdges, FewerElementsThanRanksPerHost) {
  for (const MethodCase& method : methods()) {
    const std::vector<std::string> ids = host_identities(2, 3, false);
    AllreduceOptions options;
    options.compression = method.config;
    options.algorithm = method.algorithm;
    testing::HierarchicalReference reference(topology_from_identities(ids, 0), 2, options);
    std::vector<std::vector<float>> inputs;
    for (int r = 0; r < 6; ++r) inputs.push_back(integer_input(r, 0, 2));
    const std::vector<float> expected = reference.step(inputs);
    testing::run_hosts(ids, [&](Communicator& comm, Hierarchy& h) {
      HierarchicalState state;
      std::vector<float> data = inputs[static_cast<std::size_t>(comm.rank())];
      hierarchical_allreduce(h, std::span<float>(data), options, &state);
      EXPECT_EQ(data, expected) << method.name;
    });
  }
}

// Segments describe the whole buffer: with one rank per host the cross-host allreduce is the
// whole buffer and uses them; with several, each host's share is cut at the segment boundaries
// inside it. Either way the result differs from an unsegmented run (no scale straddles) and
// every rank holds the same.
TEST(HierarchicalAllreduceSegments, RunsWithTheBuffersSegments) {
  const std::vector<std::size_t> segments = {100, 37, 863};
  for (const int per_host : {1, 2}) {
    SCOPED_TRACE(per_host);
    std::mutex mutex;
    std::vector<std::vector<float>> with, without;
    const std::vector<std::string> ids = host_identities(4 / per_host, per_host, false);
    testing::run_hosts(ids, [&](Communicator& comm, Hierarchy& hierarchy) {
      for (const bool segmented : {true, false}) {
        AllreduceOptions options = onebit_options();
        if (segmented) options.segments = segments;
        HierarchicalState state;
        std::vector<float> data(1000);
        for (std::size_t i = 0; i < data.size(); ++i) {
          data[i] =
              std::sin(0.1f * static_cast<float>(i + 7 * comm.rank())) * (i < 100 ? 1e-3f : 1.0f);
        }
        hierarchical_allreduce(hierarchy, std::span<float>(data), options, &state);
        std::lock_guard lock(mutex);
        (segmented ? with : without).push_back(data);
      }
    });
    for (const auto& result : with) EXPECT_EQ(result, with[0]);
    EXPECT_NE(with[0], without[0]);
  }
}

}  // namespace
}  // namespace frugal
