// The pipelined sparse recursive doubling and allgather (sparse_recursive_doubling.cpp,
// compressed_allgather.cpp): the buffer moves in ranges, a message each, and neither may change a
// bit. With the ranges made small (the test-only knob) so that a 3001-element buffer runs several,
// and with one peer's messages held back, every rank's result, residual and dense-switch step
// equal a serial copy of the unpipelined algorithm's at P = 2..8, at densities that stay sparse,
// turn dense mid-way and start dense; a buffer whose ranges would turn dense alone (where a
// dense add turns -0 into +0) still follows the whole vector's decision; the allgather of
// segmented quantizers equals the serial reference; each range is a message of its own; and a
// rank failing any wait leaves every rank with an error or the right result and no request.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <functional>
#include <memory>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

#include "compressed_cases.hpp"
#include "compressed_reference.hpp"
#include "fault_ranks.hpp"
#include "fault_transport.hpp"
#include "frugal/collectives/allreduce.hpp"
#include "frugal/error.hpp"
#include "unpipelined_sparse_reference.hpp"

namespace frugal {
namespace {

using testing::Faults;
using testing::FaultTransport;
using testing::SmallRanges;
using testing::UnpipelinedReference;

constexpr std::size_t kCount = 3001;

bool same_bits(std::span<const float> a, std::span<const float> b) {
  return a.size() == b.size() &&
         (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0);
}

struct RankRun : testing::FaultRankRecord {
  std::vector<std::vector<float>> results;  // per step
  std::vector<std::vector<float>> residuals;
  std::vector<int> dense_switch_step;
  std::vector<std::size_t> receives;  // receives completed per step
};

using Input = std::function<std::vector<float>(int rank, int step)>;

// `steps` allreduces on `ranks` in-process ranks, rank r's transport injecting faults(r).
std::vector<RankRun> run_steps(int ranks, const std::function<Faults(int)>& faults,
                               const AllreduceOptions& options, int steps, const Input& input) {
  std::vector<RankRun> out(static_cast<std::size_t>(ranks));
  const std::vector<testing::FaultRankRecord> records = testing::run_fault_ranks(
      ranks, faults, [&](int r, Communicator& comm, FaultTransport& transport) {
        RankRun& o = out[static_cast<std::size_t>(r)];
        AllreduceState state;
        AllreduceStats stats;
        AllreduceOptions mine = options;
        mine.state = &state;
        mine.stats = &stats;
        for (int step = 0; step < steps; ++step) {
          const std::size_t before = transport.arrivals().size();
          std::vector<float> data = input(r, step);
          allreduce(comm, std::span<float>(data), mine);
          o.results.push_back(std::move(data));
          const auto res = state.worker_residual();
          o.residuals.emplace_back(res.begin(), res.end());
          o.dense_switch_step.push_back(stats.dense_switch_step);
          o.receives.push_back(transport.arrivals().size() - before);
        }
      });
  for (std::size_t r = 0; r < out.size(); ++r) {
    static_cast<testing::FaultRankRecord&>(out[r]) = records[r];
  }
  return out;
}

Faults none(int) {
  return {};
}

// Every rank holds back the receives from one peer (rank 0's, or rank 1's on rank 0).
Faults hold_lowest_peer(int rank) {
  Faults f;
  f.held_peer = rank == 0 ? 1 : 0;
  return f;
}

Input case_inputs() {
  return [](int r, int step) {
    return testing::case_input(r, static_cast<std::uint64_t>(step), kCount);
  };
}

AllreduceOptions sparse_rd(double density, bool feedback) {
  AllreduceOptions o;
  o.compression.method = compression::Method::TopK;
  o.compression.density = density;
  o.algorithm = AllreduceAlgorithm::SparseRecursiveDoubling;
  o.error_feedback = feedback;
  o.op = feedback ? ReduceOp::Average : ReduceOp::Sum;
  o.seed = 11;
  return o;
}

// Ranks, density, error feedback (with Average; without, Sum).
using RdCase = std::tuple<int, double, bool>;
class SparseRdPipeline : public ::testing::TestWithParam<RdCase> {};

TEST_P(SparseRdPipeline, EqualsTheUnpipelinedAlgorithmBitForBit) {
  const auto [ranks, density, feedback] = GetParam();
  constexpr int kSteps = 3;
  const SmallRanges small(500);  // 6 ranges of 500 or 501
  const AllreduceOptions options = sparse_rd(density, feedback);
  UnpipelinedReference reference(ranks, kCount, options);
  std::vector<UnpipelinedReference::Step> expected;
  for (int step = 0; step < kSteps; ++step) {
    std::vector<std::vector<float>> inputs;
    for (int r = 0; r < ranks; ++r) inputs.push_back(case_inputs()(r, step));
    expected.push_back(reference.step(inputs));
  }
  const std::vector<RankRun> plain = run_steps(ranks, none, options, kSteps, case_inputs());
  const std::vector<RankRun> held =
      run_steps(ranks, hold_lowest_peer, options, kSteps, case_inputs());
  bool switched = false;
  for (int r = 0; r < ranks; ++r) {
    const auto ur = static_cast<std::size_t>(r);
    for (const RankRun* run : {&plain[ur], &held[ur]}) {
      ASSERT_FALSE(run->code.has_value()) << run->message;
      ASSERT_EQ(run->results.size(), static_cast<std::size_t>(kSteps));
      for (int step = 0; step < kSteps; ++step) {
        const auto us = static_cast<std::size_t>(step);
        SCOPED_TRACE("rank " + std::to_string(r) + " step " + std::to_string(step) +
                     (run == &held[ur] ? " (peer held back)" : ""));
        EXPECT_TRUE(same_bits(run->results[us], expected[us].results[ur]));
        if (feedback) {
          EXPECT_TRUE(same_bits(run->residuals[us], expected[us].residuals[ur]));
        }
        EXPECT_EQ(run->dense_switch_step[us], expected[us].dense_switch_step[ur]);
        switched = switched || run->dense_switch_step[us] >= 0;
      }
    }
  }
  // 0.4 turns dense after a step (or the fold), 0.9 at once; 0.01 never.
  EXPECT_EQ(switched, density > 0.1);
}

std::string rd_case_name(const ::testing::TestParamInfo<RdCase>& info) {
  const auto [ranks, density, feedback] = info.param;
  std::ostringstream name;
  name << "p" << ranks << "_d" << static_cast<int>(density * 100)
       << (feedback ? "_ef_avg" : "_sum");
  return name.str();
}

INSTANTIATE_TEST_SUITE_P(Loopback, SparseRdPipeline,
                         ::testing::Combine(::testing::Range(2, 9),
                                            ::testing::Values(0.01, 0.4, 0.9), ::testing::Bool()),
                         rd_case_name);

// Two ranks, 4096 elements in 8 ranges of 512, top-k of 820 without error feedback. Rank 0 holds
// -0 at [0, 512) and 300 nonzeros beyond, so it sends all of range 0 (as -0); rank 1 holds large
// values at [0, 300) and 470 beyond, so it sends range 0 up to 350. Range 0 alone is then past
// break-even on both ranks, the whole vector (at most 1640 of 4096) never is. Turned dense by
// range, rank 1's range 0 would add its +0 at [350, 512) to rank 0's -0 and give +0; the whole
// vector, sparse, copies the -0. The library follows the whole vector.
TEST(SparseRdPipelineDensify, FollowsTheWholeVectorNotEachRange) {
  constexpr std::size_t kN = 4096;
  const SmallRanges small(512);
  AllreduceOptions options = sparse_rd(0.2, false);
  const Input input = [](int r, int) {
    std::vector<float> v(kN, 0.0f);
    if (r == 0) {
      for (std::size_t i = 0; i < 512; ++i) v[i] = -0.0f;
      for (std::size_t j = 0; j < 300; ++j) v[512 + 10 * j] = 1.0f + 0.5f * static_cast<float>(j);
    } else {
      for (std::size_t i = 0; i < 300; ++i) v[i] = 100.0f + static_cast<float>(i);
      for (std::size_t j = 0; j < 470; ++j) v[600 + 7 * j] = -2.0f - static_cast<float>(j);
    }
    return v;
  };
  const std::vector<std::vector<float>> inputs = {input(0, 0), input(1, 0)};
  UnpipelinedReference whole(2, kN, options);
  UnpipelinedReference by_range(2, kN, options, true);
  const UnpipelinedReference::Step want = whole.step(inputs);
  const UnpipelinedReference::Step per_range = by_range.step(inputs);
  // The case tells the rules apart: -0 where the whole vector stays sparse, +0 by range.
  ASSERT_TRUE(std::signbit(want.results[0][400]));
  ASSERT_FALSE(std::signbit(per_range.results[0][400]));
  ASSERT_EQ(want.dense_switch_step[0], -1);
  ASSERT_EQ(per_range.dense_switch_step[0], 0);
  const std::vector<RankRun> got = run_steps(2, none, options, 1, input);
  for (int r = 0; r < 2; ++r) {
    const auto ur = static_cast<std::size_t>(r);
    ASSERT_FALSE(got[ur].code.has_value()) << got[ur].message;
    EXPECT_TRUE(same_bits(got[ur].results[0], want.results[ur])) << "rank " << r;
    EXPECT_EQ(got[ur].dense_switch_step[0], -1) << "rank " << r;
  }
}

// Each range is a message of its own: at P = 5 (rank 0 an extra rank, rank 1 its proxy, two
// steps), 6 ranges bring each rank 5 receives more per message of the unpipelined algorithm than
// one range does (the agreement's receives are the same in both).
TEST(SparseRdPipelineMessages, EachRangeIsAMessage) {
  constexpr int kRanks = 5;
  const AllreduceOptions options = sparse_rd(0.05, true);
  const std::vector<RankRun> one = run_steps(kRanks, none, options, 1, case_inputs());
  const SmallRanges small(500);
  const std::vector<RankRun> six = run_steps(kRanks, none, options, 1, case_inputs());
  // Sparse messages received without pipelining: the extra rank the result, its proxy the extra
  // rank's vector and one per step, the others one per step.
  const std::vector<std::size_t> messages = {1, 3, 2, 2, 2};
  for (int r = 0; r < kRanks; ++r) {
    const auto ur = static_cast<std::size_t>(r);
    ASSERT_FALSE(one[ur].code.has_value()) << one[ur].message;
    ASSERT_FALSE(six[ur].code.has_value()) << six[ur].message;
    EXPECT_EQ(six[ur].receives[0], one[ur].receives[0] + 5 * messages[ur]) << "rank " << r;
    EXPECT_TRUE(same_bits(six[ur].results[0], one[ur].results[0])) << "rank " << r;
  }
}

// The allgather of segmented 1-bit, ternary and QSGD payloads, in batches of pieces: equal to
// the serial reference (all P payloads added in rank order) bit for bit over steps, with and
// without a held-back peer, and sent as several messages per peer.
using AllgatherCase = std::tuple<testing::MethodCase, int>;
class AllgatherPipeline : public ::testing::TestWithParam<AllgatherCase> {};

TEST_P(AllgatherPipeline, EqualsTheSerialReferenceBitForBit) {
  const auto& [method, ranks] = GetParam();
  constexpr int kSteps = 3;
  const std::vector<std::size_t> segments = testing::segment_layout(kCount);
  AllreduceOptions options;
  options.compression = method.config;
  options.algorithm = AllreduceAlgorithm::Allgather;
  options.op = ReduceOp::Average;
  options.segments = segments;
  options.seed = 13;
  testing::CompressedReference reference(ranks, kCount, options, options.algorithm);
  std::vector<std::vector<float>> expected;
  for (int step = 0; step < kSteps; ++step) {
    std::vector<std::vector<float>> inputs;
    for (int r = 0; r < ranks; ++r) inputs.push_back(case_inputs()(r, step));
    expected.push_back(reference.step(inputs));
  }
  const std::vector<RankRun> whole = run_steps(ranks, none, options, 1, case_inputs());
  // Segments of 1, 7, 981, 16, 16, 981, 18 and 981 elements, in batches of at least 47 (a 64th of
  // the buffer): 1 + 7 + 981, 16 + 16 + 981, 18 + 981.
  const SmallRanges small(20);
  const std::vector<RankRun> plain = run_steps(ranks, none, options, kSteps, case_inputs());
  const std::vector<RankRun> held =
      run_steps(ranks, hold_lowest_peer, options, kSteps, case_inputs());
  for (int r = 0; r < ranks; ++r) {
    const auto ur = static_cast<std::size_t>(r);
    ASSERT_FALSE(whole[ur].code.has_value()) << whole[ur].message;
    // Two more messages from each peer than with one.
    EXPECT_EQ(plain[ur].receives[0],
              whole[ur].receives[0] + 2 * static_cast<std::size_t>(ranks - 1))
        << "rank " << r;
    for (const RankRun* run : {&plain[ur], &held[ur]}) {
      ASSERT_FALSE(run->code.has_value()) << run->message;
      for (int step = 0; step < kSteps; ++step) {
        EXPECT_TRUE(same_bits(run->results[static_cast<std::size_t>(step)],
                              expected[static_cast<std::size_t>(step)]))
            << "rank " << r << " step " << step << (run == &held[ur] ? " (peer held back)" : "");
      }
    }
  }
}

std::vector<testing::MethodCase> segmented_quantizers() {
  std::vector<testing::MethodCase> picked;
  for (const testing::MethodCase& m : testing::method_cases()) {
    for (const char* name : {"onebit", "ternary", "qsgd4"}) {
      if (m.name == name) picked.push_back(m);
    }
  }
  return picked;
}

INSTANTIATE_TEST_SUITE_P(Loopback, AllgatherPipeline,
                         ::testing::Combine(::testing::ValuesIn(segmented_quantizers()),
                                            ::testing::Range(2, 9)),
                         [](const ::testing::TestParamInfo<AllgatherCase>& info) {
                           return std::get<0>(info.param).name + "_P" +
                                  std::to_string(std::get<1>(info.param));
                         });

// A rank failing each of its waits in turn, with several ranges: every rank ends with the
// injected error, another frugal::Error or the right result, and no request outlives the
// collective. 4097 elements: dense ranges and 1-bit batches past 4096 bytes go rendezvous on the
// loopback transport, so cancels meet transfers in flight.
using FaultCase = std::tuple<std::string, int>;
class SparsePipelineFault : public ::testing::TestWithParam<FaultCase> {};

TEST_P(SparsePipelineFault, EveryWaitOfOneRankFailsCleanly) {
  const auto& [what, ranks] = GetParam();
  constexpr std::size_t kN = 4097;
  const std::vector<std::size_t> segments = testing::segment_layout(kN);
  AllreduceOptions options;
  std::unique_ptr<SmallRanges> small;
  if (what == "onebit_allgather") {
    options.compression.method = compression::Method::OneBit;
    options.algorithm = AllreduceAlgorithm::Allgather;
    options.segments = segments;
    small = std::make_unique<SmallRanges>(20);
  } else {
    options = sparse_rd(what == "sparse_rd_d90" ? 0.9 : 0.01, true);
    small = std::make_unique<SmallRanges>(1000);  // 4 ranges
  }
  options.seed = 3;
  const Input input = [](int r, int) { return testing::case_input(r, 0, kN); };
  const std::vector<RankRun> clean = run_steps(ranks, none, options, 1, input);
  for (const RankRun& o : clean) ASSERT_FALSE(o.code.has_value()) << o.message;
  int cancels = 0;
  for (const int faulty : {0, ranks - 1}) {
    bool ran_out = false;
    for (int at = 0; at < 200 && !ran_out; ++at) {
      const auto faults = [&](int r) {
        Faults f;
        if (r == faulty) f.fail_wait = at;
        return f;
      };
      const std::vector<RankRun> got = run_steps(ranks, faults, options, 1, input);
      const RankRun& f = got[static_cast<std::size_t>(faulty)];
      ran_out = !f.injected;
      for (int r = 0; r < ranks; ++r) {
        const RankRun& o = got[static_cast<std::size_t>(r)];
        SCOPED_TRACE("rank " + std::to_string(r) + ", rank " + std::to_string(faulty) +
                     " failing its wait " + std::to_string(at));
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
    EXPECT_TRUE(ran_out) << "more than 200 waits";
  }
  EXPECT_GT(cancels, 0);
}

INSTANTIATE_TEST_SUITE_P(Loopback, SparsePipelineFault,
                         ::testing::Combine(::testing::Values("sparse_rd_d1", "sparse_rd_d90",
                                                              "onebit_allgather"),
                                            ::testing::Values(3, 4)),
                         [](const ::testing::TestParamInfo<FaultCase>& info) {
                           return std::get<0>(info.param) + "_P" +
                                  std::to_string(std::get<1>(info.param));
                         });

}  // namespace
}  // namespace frugal
