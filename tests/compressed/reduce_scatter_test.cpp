// compressed_reduce_scatter and compressed_allgather over in-process ranks (P = 1..8): against
// the serial reference step by step, composed against the two-phase allreduce bit for bit, the
// dense forms against exact sums, the shard layout, and bad arguments refused on every rank.
#include "frugal/collectives/reduce_scatter.hpp"

#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <mutex>
#include <string>
#include <tuple>
#include <vector>

#include "compressed_cases.hpp"
#include "frugal/collectives/collectives.hpp"
#include "loopback_harness.hpp"
#include "reduce_scatter_reference.hpp"

namespace frugal {
namespace {

using testing::half_cases;
using testing::HalfCase;
using testing::run_ranks;

constexpr int kSteps = 3;

// Dense sums are exact in any order only for integer-valued inputs.
std::vector<float> input_for(const HalfCase& c, int rank, int step, std::size_t count) {
  return c.config.method == compression::Method::None ? testing::integer_input(rank, step, count)
                                                      : testing::case_input(rank, step, count);
}

TEST(ReduceScatterShard, IsTheEvenSplitInRankOrder) {
  for (int p = 1; p <= 8; ++p) {
    for (std::size_t n : {0UL, 1UL, 7UL, 1000UL, 1003UL}) {
      std::size_t next = 0;
      for (int r = 0; r < p; ++r) {
        const ShardRange s = reduce_scatter_shard(n, p, r);
        EXPECT_EQ(s.offset, next) << "n " << n << " p " << p << " r " << r;
        EXPECT_TRUE(s.count == n / static_cast<std::size_t>(p) + (r < static_cast<int>(n % p)))
            << "n " << n << " p " << p << " r " << r << " count " << s.count;
        next = s.end();
      }
      EXPECT_EQ(next, n);
    }
  }
}

TEST(ReduceScatterShard, RefusesBadRanks) {
  for (const auto& [ranks, rank, parameter] :
       {std::tuple{0, 0, "ranks"}, std::tuple{2, 2, "rank"}, std::tuple{2, -1, "rank"}}) {
    try {
      reduce_scatter_shard(10, ranks, rank);
      ADD_FAILURE() << "no error for ranks " << ranks << " rank " << rank;
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::InvalidArgument);
      EXPECT_NE(std::string(e.what()).find(parameter), std::string::npos) << e.what();
    }
  }
}

// Method, ranks, op.
class Halves : public ::testing::TestWithParam<std::tuple<HalfCase, int, ReduceOp>> {};

// kSteps reduce-scatters then allgathers on every rank, each with its own state: every shard
// and every gathered buffer equals the serial reference's at every step, bit for bit, and the
// gathered buffers are identical on every rank.
TEST_P(Halves, MatchTheSerialReferenceOverSteps) {
  const auto& [c, p, op] = GetParam();
  const std::size_t count = 1000 + static_cast<std::size_t>(p);  // shards of unequal size
  AllreduceOptions options;
  options.compression = c.config;
  options.op = op;
  options.seed = 11;
  testing::ReduceScatterReference reference(p, count, options);
  std::vector<std::vector<std::vector<float>>> want_shards;
  std::vector<std::vector<float>> want_gathered;
  for (int step = 0; step < kSteps; ++step) {
    std::vector<std::vector<float>> inputs;
    for (int r = 0; r < p; ++r) inputs.push_back(input_for(c, r, step, count));
    want_shards.push_back(reference.reduce_scatter(inputs));
    want_gathered.push_back(reference.allgather(want_shards.back()));
  }
  std::mutex mutex;
  std::vector<std::vector<std::vector<float>>> gathered(kSteps);
  run_ranks(p, [&](Communicator& comm) {
    AllreduceState rs_state, ag_state;
    AllreduceOptions rs = options, ag = options;
    rs.state = &rs_state;
    ag.state = &ag_state;
    const auto me = static_cast<std::size_t>(comm.rank());
    for (int step = 0; step < kSteps; ++step) {
      std::vector<float> input = input_for(c, comm.rank(), step, count);
      std::vector<float> shard(reduce_scatter_shard(count, p, comm.rank()).count);
      compressed_reduce_scatter(comm, input, shard, rs);
      EXPECT_EQ(shard, want_shards[static_cast<std::size_t>(step)][me]) << "step " << step;
      std::vector<float> out(count);
      compressed_allgather(comm, shard, out, ag);
      std::lock_guard lock(mutex);
      gathered[static_cast<std::size_t>(step)].push_back(std::move(out));
    }
    const bool compressed = c.config.method != compression::Method::None;
    EXPECT_EQ(rs_state.steps(), compressed ? kSteps : 0u);
    EXPECT_EQ(ag_state.steps(), compressed ? kSteps : 0u);
    EXPECT_EQ(rs_state.worker_residual().size(), compressed ? count : 0u);
    EXPECT_TRUE(rs_state.server_residual().empty());
    EXPECT_TRUE(ag_state.worker_residual().empty());
  });
  for (int step = 0; step < kSteps; ++step) {
    for (const std::vector<float>& out : gathered[static_cast<std::size_t>(step)]) {
      ASSERT_EQ(out, want_gathered[static_cast<std::size_t>(step)]) << "step " << step;
      ASSERT_EQ(std::memcmp(out.data(), gathered[static_cast<std::size_t>(step)][0].data(),
                            count * sizeof(float)),
                0);
    }
  }
}

std::string halves_name(const ::testing::TestParamInfo<Halves::ParamType>& info) {
  const auto& [c, p, op] = info.param;
  return std::string(c.name) + "_np" + std::to_string(p) +
         (op == ReduceOp::Average ? "_average" : "_sum");
}

INSTANTIATE_TEST_SUITE_P(Loopback, Halves,
                         ::testing::Combine(::testing::ValuesIn(half_cases()),
                                            ::testing::Range(1, 9),
                                            ::testing::Values(ReduceOp::Sum, ReduceOp::Average)),
                         halves_name);

// Method, ranks, segmented.
class Composition : public ::testing::TestWithParam<std::tuple<HalfCase, int, bool>> {};

// The reduce-scatter followed by the allgather of its output, in place (each rank's shard is
// its own part of the buffer), equals the two-phase allreduce with one state bit for bit at
// every step; dense, the ring allreduce.
TEST_P(Composition, EqualsTheTwoPhaseAllreduce) {
  const auto& [c, p, segmented] = GetParam();
  const std::size_t count = 997 + static_cast<std::size_t>(p);
  const std::vector<std::size_t> segments =
      segmented ? testing::segment_layout(count) : std::vector<std::size_t>{};
  const bool compressed = c.config.method != compression::Method::None;
  run_ranks(p, [&](Communicator& comm) {
    AllreduceState rs_state, ag_state, ar_state;
    AllreduceOptions options;
    options.compression = c.config;
    options.op = ReduceOp::Average;
    options.seed = 5;
    options.segments = segments;
    AllreduceOptions rs = options, ag = options, ar = options;
    rs.state = &rs_state;
    ag.state = &ag_state;
    ar.state = &ar_state;
    ar.algorithm = compressed ? AllreduceAlgorithm::TwoPhase : AllreduceAlgorithm::Ring;
    const ShardRange own = reduce_scatter_shard(count, p, comm.rank());
    for (int step = 0; step < kSteps; ++step) {
      std::vector<float> halves = testing::case_input(comm.rank(), step, count);
      std::vector<float> whole = halves;
      const std::span<float> shard = std::span(halves).subspan(own.offset, own.count);
      compressed_reduce_scatter(comm, halves, shard, rs);
      compressed_allgather(comm, shard, halves, ag);
      allreduce(comm, std::span<float>(whole), ar);
      ASSERT_EQ(std::memcmp(halves.data(), whole.data(), count * sizeof(float)), 0)
          << "step " << step << " rank " << comm.rank();
    }
    if (compressed) {
      // The halves' residuals are the allreduce's worker and server residuals.
      EXPECT_EQ(std::memcmp(rs_state.worker_residual().data(), ar_state.worker_residual().data(),
                            count * sizeof(float)),
                0);
      ASSERT_EQ(ag_state.server_residual().size(), ar_state.server_residual().size());
      EXPECT_EQ(std::memcmp(ag_state.server_residual().data(), ar_state.server_residual().data(),
                            own.count * sizeof(float)),
                0);
    }
  });
}

std::string composition_name(const ::testing::TestParamInfo<Composition::ParamType>& info) {
  const auto& [c, p, segmented] = info.param;
  return std::string(c.name) + "_np" + std::to_string(p) + (segmented ? "_segmented" : "");
}

INSTANTIATE_TEST_SUITE_P(Loopback, Composition,
                         ::testing::Combine(::testing::ValuesIn(half_cases()),
                                            ::testing::Range(1, 9), ::testing::Bool()),
                         composition_name);

// Runs `call` on every rank without fail-fast; each rank's error code (-1: none) and message.
struct Outcome {
  int code = -1;
  std::string message;
};
std::vector<Outcome> outcomes(int p, const std::function<void(Communicator&)>& call) {
  std::mutex mutex;
  std::vector<Outcome> out(static_cast<std::size_t>(p));
  run_ranks(
      p,
      [&](Communicator& comm) {
        try {
          call(comm);
        } catch (const Error& e) {
          std::lock_guard lock(mutex);
          out[static_cast<std::size_t>(comm.rank())] = {static_cast<int>(e.code()), e.what()};
        }
      },
      std::chrono::seconds(5), false);
  return out;
}

constexpr int kInvalid = static_cast<int>(ErrorCode::InvalidArgument);
constexpr int kMismatch = static_cast<int>(ErrorCode::Mismatch);

AllreduceOptions onebit_options(AllreduceState* state) {
  AllreduceOptions o;
  o.compression.method = compression::Method::OneBit;
  o.state = state;
  return o;
}

// One rank's shard buffer is one element short: it throws InvalidArgument naming it, every
// other rank Mismatch, in both halves, compressed and dense, well before the 5 s timeout.
TEST(HalvesBadArguments, AWrongShardSizeOnOneRankFailsEveryRank) {
  for (const compression::Method method :
       {compression::Method::OneBit, compression::Method::None}) {
    for (const bool gather : {false, true}) {
      const int p = 3;
      const std::size_t count = 300;
      const auto start = std::chrono::steady_clock::now();
      const std::vector<Outcome> got = outcomes(p, [&](Communicator& comm) {
        AllreduceState state;
        AllreduceOptions o = onebit_options(&state);
        o.compression.method = method;
        std::vector<float> buffer(count, 1.0f);
        std::vector<float> shard(100 - (comm.rank() == 1 ? 1 : 0));
        if (gather) {
          compressed_allgather(comm, shard, buffer, o);
        } else {
          compressed_reduce_scatter(comm, buffer, shard, o);
        }
      });
      EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(4));
      for (int r = 0; r < p; ++r) {
        const Outcome& o = got[static_cast<std::size_t>(r)];
        EXPECT_EQ(o.code, r == 1 ? kInvalid : kMismatch) << "rank " << r << ": " << o.message;
        if (r == 1) {
          EXPECT_NE(o.message.find(gather ? "shard" : "output"), std::string::npos) << o.message;
        }
      }
    }
  }
}

// Ranks that disagree on a parameter (rank 2 differs) all get Mismatch.
TEST(HalvesBadArguments, DisagreeingRanksAllGetMismatch) {
  const std::vector<std::pair<std::string, std::function<void(int, AllreduceOptions&)>>> kinds = {
      {"bits",
       [](int r, AllreduceOptions& o) {
         o.compression.method = compression::Method::Qsgd;
         o.compression.bits = r == 2 ? 8 : 4;
       }},
      {"method",
       [](int r, AllreduceOptions& o) {
         if (r == 2) o.compression.method = compression::Method::Fp16;
       }},
      {"dense against compressed",
       [](int r, AllreduceOptions& o) {
         if (r == 2) o.compression.method = compression::Method::None;
       }},
      {"seed", [](int r, AllreduceOptions& o) { o.seed = r == 2 ? 1 : 0; }},
  };
  for (const auto& [what, apply] : kinds) {
    for (const bool gather : {false, true}) {
      const std::vector<Outcome> got = outcomes(3, [&](Communicator& comm) {
        AllreduceState state;
        AllreduceOptions o = onebit_options(&state);
        apply(comm.rank(), o);
        std::vector<float> buffer(300, 1.0f);
        std::vector<float> shard(100);
        if (gather) {
          compressed_allgather(comm, shard, buffer, o);
        } else {
          compressed_reduce_scatter(comm, buffer, shard, o);
        }
      });
      for (int r = 0; r < 3; ++r) {
        EXPECT_EQ(got[static_cast<std::size_t>(r)].code, kMismatch)
            << what << (gather ? " allgather" : " reduce-scatter") << " rank " << r << ": "
            << got[static_cast<std::size_t>(r)].message;
      }
    }
  }
}

// Refused on every rank alike, naming the parameter: top-k, an algorithm of another family, a
// compressed half without a state, Zero for the read-only shard.
TEST(HalvesBadArguments, BadParametersAreInvalidArgumentNamingThem) {
  struct Case {
    const char* parameter;
    bool gather;
    std::function<void(AllreduceOptions&)> apply;
  };
  const std::vector<Case> cases = {
      {"compression.method", false,
       [](AllreduceOptions& o) { o.compression.method = compression::Method::TopK; }},
      {"algorithm", false, [](AllreduceOptions& o) { o.algorithm = AllreduceAlgorithm::Ring; }},
      {"algorithm", true,
       [](AllreduceOptions& o) {
         o.compression.method = compression::Method::None;
         o.algorithm = AllreduceAlgorithm::TwoPhase;
       }},
      {"state", true, [](AllreduceOptions& o) { o.state = nullptr; }},
      {"non_finite", true, [](AllreduceOptions& o) { o.non_finite = NonFiniteAction::Zero; }},
      {"segments", false,
       [](AllreduceOptions& o) {
         static const std::vector<std::size_t> wrong = {100, 100};
         o.segments = wrong;
       }},
  };
  for (const Case& c : cases) {
    for (const int p : {1, 3}) {
      const std::vector<Outcome> got = outcomes(p, [&](Communicator& comm) {
        AllreduceState state;
        AllreduceOptions o = onebit_options(&state);
        c.apply(o);
        std::vector<float> buffer(300, 1.0f);
        std::vector<float> shard(reduce_scatter_shard(300, p, comm.rank()).count);
        if (c.gather) {
          compressed_allgather(comm, shard, buffer, o);
        } else {
          compressed_reduce_scatter(comm, buffer, shard, o);
        }
      });
      for (int r = 0; r < p; ++r) {
        const Outcome& o = got[static_cast<std::size_t>(r)];
        EXPECT_EQ(o.code, kInvalid) << c.parameter << " rank " << r << ": " << o.message;
        EXPECT_NE(o.message.find(c.parameter), std::string::npos) << o.message;
      }
    }
  }
}

// A state keeps the residual of one collective: a reduce-scatter's state in an allgather, or
// an allgather's in a two-phase allreduce, is Mismatch on every rank.
TEST(HalvesBadArguments, AStateOfAnotherCollectiveIsMismatch) {
  for (const bool into_allreduce : {false, true}) {
    const std::vector<Outcome> got = outcomes(2, [&](Communicator& comm) {
      AllreduceState state;
      AllreduceOptions o = onebit_options(&state);
      std::vector<float> buffer(300, 1.0f);
      std::vector<float> shard(150);
      if (into_allreduce) {
        compressed_allgather(comm, shard, buffer, o);
        o.algorithm = AllreduceAlgorithm::TwoPhase;
        allreduce(comm, std::span<float>(buffer), o);
      } else {
        compressed_reduce_scatter(comm, buffer, shard, o);
        compressed_allgather(comm, shard, buffer, o);
      }
    });
    for (const Outcome& o : got) {
      EXPECT_EQ(o.code, kMismatch) << o.message;
      EXPECT_NE(o.message.find("AllreduceState"), std::string::npos) << o.message;
    }
  }
}

// NaN on one rank under Skip: every rank skips (output untouched, no step counted); the next
// clean call goes ahead.
TEST(HalvesNonFinite, SkipSkipsOnEveryRank) {
  run_ranks(3, [&](Communicator& comm) {
    AllreduceState state;
    AllreduceOptions o = onebit_options(&state);
    o.non_finite = NonFiniteAction::Skip;
    AllreduceStats stats;
    o.stats = &stats;
    std::vector<float> input(300, 1.0f);
    if (comm.rank() == 1) input[7] = std::numeric_limits<float>::quiet_NaN();
    std::vector<float> shard(100, -3.0f);
    compressed_reduce_scatter(comm, input, shard, o);
    EXPECT_TRUE(stats.non_finite_skipped);
    EXPECT_EQ(shard, std::vector<float>(100, -3.0f));
    EXPECT_EQ(state.steps(), 0u);
    input.assign(300, 1.0f);
    compressed_reduce_scatter(comm, input, shard, o);
    EXPECT_FALSE(stats.non_finite_skipped);
    EXPECT_EQ(state.steps(), 1u);
    EXPECT_GT(stats.wire_bytes_sent, 0u);
  });
}

}  // namespace
}  // namespace frugal
