// The pipelined two-phase allreduce (compressed_phases.cpp): the scatter sends each chunk as soon
// as it is encoded and the gather decodes the peers' chunks in the order they arrive. Neither may
// change a bit: with one peer's messages held back, so that they arrive after every other, every
// rank's result equals the unhindered run's and the serial reference's, at P = 2..8, for the
// quantizers, Sum and Average, with and without segments, and the halves (compressed
// reduce-scatter and allgather) equal their unhindered run's; an overflowed chunk is reported (or
// turned into +Inf) alike whatever the order; and a rank failing any wait, or any arrival found
// by a test, leaves every rank with an error or the right result and no request behind.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "chunking.hpp"
#include "compressed_cases.hpp"
#include "compressed_reference.hpp"
#include "fault_ranks.hpp"
#include "fault_transport.hpp"
#include "frugal/collectives/allreduce.hpp"
#include "frugal/collectives/reduce_scatter.hpp"
#include "frugal/error.hpp"
#include "frugal/loopback.hpp"

namespace frugal {
namespace {

using testing::Faults;
using testing::FaultTransport;

struct RankRun : testing::FaultRankRecord {
  std::vector<std::vector<float>> results;  // one per step that completed
  // The peers of the receives completed in each step, in the order they completed.
  std::vector<std::vector<int>> arrivals;
};

using Input = std::function<std::vector<float>(int rank, int step)>;
// One rank's collective over its buffer, holding that rank's states across steps.
using Call = std::function<void(Communicator&, std::vector<float>&)>;
// Makes each rank's Call (from the rank's thread).
using MakeCall = std::function<Call()>;

// allreduce with `options` and a state of its own.
MakeCall allreduce_with(const AllreduceOptions& options) {
  return [options] {
    auto state = std::make_shared<AllreduceState>();
    return [options, state](Communicator& comm, std::vector<float>& data) {
      AllreduceOptions mine = options;
      mine.state = options.error_feedback ? state.get() : nullptr;
      allreduce(comm, std::span<float>(data), mine);
    };
  };
}

// `steps` calls on `ranks` in-process ranks, rank r's transport injecting faults(r).
std::vector<RankRun> run_steps(int ranks, const std::function<Faults(int)>& faults,
                               const MakeCall& make_call, int steps, const Input& input) {
  std::vector<RankRun> out(static_cast<std::size_t>(ranks));
  const std::vector<testing::FaultRankRecord> records = testing::run_fault_ranks(
      ranks, faults, [&](int r, Communicator& comm, FaultTransport& transport) {
        RankRun& o = out[static_cast<std::size_t>(r)];
        const Call call = make_call();
        for (int step = 0; step < steps; ++step) {
          const std::size_t before = transport.arrivals().size();
          std::vector<float> data = input(r, step);
          call(comm, data);
          o.results.push_back(std::move(data));
          const std::vector<int> all = transport.arrivals();
          o.arrivals.emplace_back(all.begin() + static_cast<std::ptrdiff_t>(before), all.end());
        }
      });
  for (std::size_t r = 0; r < out.size(); ++r) {
    static_cast<testing::FaultRankRecord&>(out[r]) = records[r];
  }
  return out;
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() &&
         (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0);
}

// Every rank holds back the receives from one peer (rank 0's, or rank 1's on rank 0), so that
// they complete after every other receive it polls for.
Faults hold_lowest_peer(int rank) {
  Faults f;
  f.held_peer = rank == 0 ? 1 : 0;
  return f;
}

Faults none(int) {
  return {};
}

// The quantizers that run two-phase, by name from method_cases().
std::vector<testing::MethodCase> two_phase_methods() {
  std::vector<testing::MethodCase> picked;
  for (const testing::MethodCase& m : testing::method_cases()) {
    for (const char* name : {"fp16", "bf16_sr", "onebit", "ternary", "qsgd4"}) {
      if (m.name == name) picked.push_back(m);
    }
  }
  return picked;
}

// Method, ranks, segmented (with Average; unsegmented with Sum).
using OrderCase = std::tuple<testing::MethodCase, int, bool>;
class TwoPhaseArrivalOrder : public ::testing::TestWithParam<OrderCase> {};

TEST_P(TwoPhaseArrivalOrder, ChangesNoBitOfTheResult) {
  const auto& [method, ranks, segmented] = GetParam();
  constexpr std::size_t kCount = 3001;
  constexpr int kSteps = 3;
  const std::vector<std::size_t> segments = testing::segment_layout(kCount);
  AllreduceOptions options;
  options.compression = method.config;
  options.algorithm = AllreduceAlgorithm::TwoPhase;
  options.op = segmented ? ReduceOp::Average : ReduceOp::Sum;
  options.seed = 5;
  if (segmented) options.segments = segments;
  const Input input = [](int r, int step) {
    return testing::case_input(r, static_cast<std::uint64_t>(step), kCount);
  };

  testing::CompressedReference reference(ranks, kCount, options, options.algorithm);
  std::vector<std::vector<float>> expected;
  for (int step = 0; step < kSteps; ++step) {
    std::vector<std::vector<float>> inputs;
    for (int r = 0; r < ranks; ++r) inputs.push_back(input(r, step));
    expected.push_back(reference.step(inputs));
  }
  const std::vector<RankRun> plain = run_steps(ranks, none, allreduce_with(options), kSteps, input);
  const std::vector<RankRun> held =
      run_steps(ranks, hold_lowest_peer, allreduce_with(options), kSteps, input);

  bool out_of_rank_order = false;
  for (int r = 0; r < ranks; ++r) {
    const auto ur = static_cast<std::size_t>(r);
    ASSERT_FALSE(plain[ur].code.has_value()) << plain[ur].message;
    ASSERT_FALSE(held[ur].code.has_value()) << held[ur].message;
    ASSERT_EQ(held[ur].results.size(), static_cast<std::size_t>(kSteps));
    for (int step = 0; step < kSteps; ++step) {
      const auto us = static_cast<std::size_t>(step);
      EXPECT_TRUE(same_bits(plain[ur].results[us], expected[us]))
          << "rank " << r << " step " << step;
      EXPECT_TRUE(same_bits(held[ur].results[us], plain[ur].results[us]))
          << "rank " << r << " step " << step << ": the held-back peer changed the result";
      // The gather's receives are the step's last P - 1.
      const std::vector<int>& a = held[ur].arrivals[us];
      ASSERT_GE(a.size(), static_cast<std::size_t>(ranks - 1));
      for (std::size_t i = a.size() - static_cast<std::size_t>(ranks - 1); i + 1 < a.size(); ++i) {
        if (a[i] > a[i + 1]) out_of_rank_order = true;
      }
    }
  }
  // The held peer is the lowest (but on rank 0): from three ranks on the gather has a peer to
  // decode before it, else the test would not have tested the order.
  if (ranks >= 3) {
    EXPECT_TRUE(out_of_rank_order) << "every gather decoded in rank order";
  }
}

// e.g. onebit_P5_segmented_average
std::string order_case_name(const ::testing::TestParamInfo<OrderCase>& info) {
  const auto& [m, p, segmented] = info.param;
  return m.name + "_P" + std::to_string(p) + (segmented ? "_segmented_average" : "_sum");
}

INSTANTIATE_TEST_SUITE_P(Loopback, TwoPhaseArrivalOrder,
                         ::testing::Combine(::testing::ValuesIn(two_phase_methods()),
                                            ::testing::Range(2, 9), ::testing::Bool()),
                         order_case_name);

// The halves on their own (compressed_reduce_scatter, then compressed_allgather of the shard in
// place, each with its own state), which run the same two phases: with the lowest peer held
// back, every rank's result equals the unhindered run's bit for bit, and so does the sharded
// path's reduce-scatter output.
class TwoPhaseHalvesArrivalOrder
    : public ::testing::TestWithParam<std::tuple<testing::MethodCase, int>> {};

TEST_P(TwoPhaseHalvesArrivalOrder, ChangesNoBitOfTheResult) {
  const auto& [method, ranks] = GetParam();
  constexpr std::size_t kCount = 3001;
  AllreduceOptions options;
  options.compression = method.config;
  options.op = ReduceOp::Average;
  options.seed = 21;
  const MakeCall halves = [options] {
    auto scatter_state = std::make_shared<AllreduceState>();
    auto gather_state = std::make_shared<AllreduceState>();
    return [options, scatter_state, gather_state](Communicator& comm, std::vector<float>& data) {
      const ShardRange own = reduce_scatter_shard(data.size(), comm.size(), comm.rank());
      const std::span<float> shard = std::span<float>(data).subspan(own.offset, own.count);
      AllreduceOptions o = options;
      o.state = scatter_state.get();
      compressed_reduce_scatter(comm, std::span<float>(data), shard, o);
      o.state = gather_state.get();
      compressed_allgather(comm, shard, std::span<float>(data), o);
    };
  };
  const Input input = [](int r, int step) {
    return testing::case_input(r, static_cast<std::uint64_t>(step), kCount);
  };
  const std::vector<RankRun> plain = run_steps(ranks, none, halves, 3, input);
  const std::vector<RankRun> held = run_steps(ranks, hold_lowest_peer, halves, 3, input);
  for (int r = 0; r < ranks; ++r) {
    const auto ur = static_cast<std::size_t>(r);
    ASSERT_FALSE(plain[ur].code.has_value()) << plain[ur].message;
    ASSERT_FALSE(held[ur].code.has_value()) << held[ur].message;
    for (std::size_t step = 0; step < 3; ++step) {
      EXPECT_TRUE(same_bits(held[ur].results[step], plain[ur].results[step]))
          << "rank " << r << " step " << step;
      // Every rank holds the same result.
      EXPECT_TRUE(same_bits(plain[ur].results[step], plain[0].results[step]))
          << "rank " << r << " step " << step;
    }
  }
}

// e.g. qsgd4_P5
std::string halves_case_name(
    const ::testing::TestParamInfo<std::tuple<testing::MethodCase, int>>& info) {
  return std::get<0>(info.param).name + "_P" + std::to_string(std::get<1>(info.param));
}

INSTANTIATE_TEST_SUITE_P(Loopback, TwoPhaseHalvesArrivalOrder,
                         ::testing::Combine(::testing::ValuesIn(two_phase_methods()),
                                            ::testing::Values(3, 5)),
                         halves_case_name);

// fp16 at four ranks, every rank's input 40000 at one element of chunk 1 and of chunk 2: finite
// inputs whose sums (160000) leave fp16, so owners 1 and 2 each send an overflow marker.
class TwoPhaseOverflow : public ::testing::TestWithParam<NonFiniteAction> {};

TEST_P(TwoPhaseOverflow, IsReportedAlikeWhateverTheArrivalOrder) {
  const NonFiniteAction action = GetParam();
  constexpr int kRanks = 4;
  constexpr std::size_t kCount = 4000;
  AllreduceOptions options;
  options.compression.method = compression::Method::Fp16;
  options.algorithm = AllreduceAlgorithm::TwoPhase;
  options.non_finite = action;
  const patterns::Range c1 = patterns::chunk_range(kCount, kRanks, 1);
  const patterns::Range c2 = patterns::chunk_range(kCount, kRanks, 2);
  const Input input = [&](int r, int) {
    std::vector<float> v = testing::case_input(r, 0, kCount);
    v[c1.offset + 3] = 40000.0f;
    v[c2.offset + 5] = 40000.0f;
    return v;
  };
  // Owner 1's marker held back on every rank but itself: owner 2's comes first.
  const auto hold_owner_1 = [](int rank) {
    Faults f;
    f.held_peer = rank == 1 ? 2 : 1;
    return f;
  };
  const std::vector<RankRun> plain = run_steps(kRanks, none, allreduce_with(options), 1, input);
  const std::vector<RankRun> held =
      run_steps(kRanks, hold_owner_1, allreduce_with(options), 1, input);
  for (int r = 0; r < kRanks; ++r) {
    SCOPED_TRACE("rank " + std::to_string(r));
    const auto ur = static_cast<std::size_t>(r);
    for (const RankRun* run : {&plain[ur], &held[ur]}) EXPECT_EQ(run->live_after, 0);
    if (action == NonFiniteAction::Error) {
      for (const RankRun* run : {&plain[ur], &held[ur]}) {
        ASSERT_EQ(run->code, ErrorCode::InvalidArgument) << run->message;
        // The lowest owner, on every rank and in either order.
        EXPECT_NE(run->message.find("reduced by rank 1,"), std::string::npos) << run->message;
      }
      EXPECT_EQ(held[ur].message, plain[ur].message);
      continue;
    }
    ASSERT_FALSE(plain[ur].code.has_value()) << plain[ur].message;
    ASSERT_FALSE(held[ur].code.has_value()) << held[ur].message;
    const std::vector<float>& got = held[ur].results[0];
    EXPECT_TRUE(same_bits(got, plain[ur].results[0]));
    for (std::size_t i = 0; i < kCount; ++i) {
      const bool overflowed = (i >= c1.offset && i < c1.end()) || (i >= c2.offset && i < c2.end());
      ASSERT_EQ(got[i] == std::numeric_limits<float>::infinity(), overflowed) << "element " << i;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Loopback, TwoPhaseOverflow,
                         ::testing::Values(NonFiniteAction::Error, NonFiniteAction::Skip),
                         [](const ::testing::TestParamInfo<NonFiniteAction>& info) {
                           return std::string(to_string(info.param));
                         });

// Method, ranks, the fault swept (true: the i-th arrival in a poll, false: the i-th wait).
using FaultCase = std::tuple<testing::MethodCase, int, bool>;
class TwoPhaseFault : public ::testing::TestWithParam<FaultCase> {};

TEST_P(TwoPhaseFault, EveryWaitOrArrivalOfOneRankFailsCleanly) {
  const auto& [method, ranks, arrival] = GetParam();
  // fp16 chunks of 8 KiB and more go rendezvous on the loopback transport (past 4096 bytes: the
  // receiver copies from the sender's buffer), so a cancel meets transfers in flight.
  constexpr std::size_t kCount = 16384;
  AllreduceOptions options;
  options.compression = method.config;
  options.algorithm = AllreduceAlgorithm::TwoPhase;
  options.seed = 9;
  const Input input = [](int r, int) { return testing::case_input(r, 0, kCount); };
  const std::vector<RankRun> clean = run_steps(ranks, none, allreduce_with(options), 1, input);
  for (const RankRun& o : clean) ASSERT_FALSE(o.code.has_value()) << o.message;

  int cancels = 0;
  int injected = 0;
  for (const int faulty : {0, ranks - 1}) {
    bool ran_out = false;
    for (int at = 0; at < 200 && !ran_out; ++at) {
      const auto faults = [&](int r) {
        Faults f;
        if (r == faulty) (arrival ? f.fail_arrival : f.fail_wait) = at;
        return f;
      };
      const std::vector<RankRun> got = run_steps(ranks, faults, allreduce_with(options), 1, input);
      const RankRun& f = got[static_cast<std::size_t>(faulty)];
      ran_out = !f.injected;
      if (f.injected) ++injected;
      for (int r = 0; r < ranks; ++r) {
        const RankRun& o = got[static_cast<std::size_t>(r)];
        SCOPED_TRACE("rank " + std::to_string(r) + ", rank " + std::to_string(faulty) +
                     " failing its " + (arrival ? "arrival " : "wait ") + std::to_string(at));
        EXPECT_EQ(o.live_after, 0) << "a request outlived the collective";
        cancels += o.cancelled;
        if (!o.code) {
          ASSERT_EQ(o.results.size(), 1u);
          EXPECT_TRUE(same_bits(o.results[0], clean[static_cast<std::size_t>(r)].results[0]));
          continue;
        }
        testing::expect_failed_cleanly(o, r == faulty && f.injected);
      }
      if (f.injected) {
        EXPECT_TRUE(f.code.has_value()) << "the faulty rank finished";
      } else {
        for (const RankRun& o : got) EXPECT_FALSE(o.code.has_value()) << o.message;
      }
    }
    EXPECT_TRUE(ran_out) << "more than 200 faults";
  }
  EXPECT_GT(injected, 0);
  // fp16's rendezvous messages: the sweep reached requests in flight.
  if (method.config.method == compression::Method::Fp16) {
    EXPECT_GT(cancels, 0);
  }
}

std::vector<testing::MethodCase> fault_methods() {
  std::vector<testing::MethodCase> picked;
  for (const testing::MethodCase& m : testing::method_cases()) {
    if (m.name == "fp16" || m.name == "onebit") picked.push_back(m);
  }
  return picked;
}

// e.g. fp16_P3_arrival
std::string fault_case_name(const ::testing::TestParamInfo<FaultCase>& info) {
  const auto& [m, p, arrival] = info.param;
  return m.name + "_P" + std::to_string(p) + (arrival ? "_arrival" : "_wait");
}

INSTANTIATE_TEST_SUITE_P(Loopback, TwoPhaseFault,
                         ::testing::Combine(::testing::ValuesIn(fault_methods()),
                                            ::testing::Values(2, 3, 4), ::testing::Bool()),
                         fault_case_name);

}  // namespace
}  // namespace frugal
