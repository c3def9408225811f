// NonFiniteAction::Skip as a trainer relies on it: when any rank's input holds NaN or Inf (or a
// sum overflows), every rank skips the step, the gradients keep their input, and every piece of
// error-feedback state is exactly as before the step, so the next finite step computes what it
// would have computed had the bad step never happened. For every method and algorithm, on
// in-process loopback ranks.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <ostream>
#include <string>
#include <tuple>
#include <vector>

#include "compressed_cases.hpp"
#include "frugal/collectives/allreduce.hpp"
#include "frugal/collectives/buckets.hpp"
#include "frugal/error.hpp"
#include "loopback_harness.hpp"

namespace frugal {
namespace {

using testing::run_ranks;

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr std::size_t kTensor = 1000;  // floats per tensor; one tensor per bucket
const char* const kNames[] = {"a", "b", "c"};

struct Case {
  std::string name;
  compression::CompressionConfig config;
  AllreduceAlgorithm algorithm;
};

// Dense plus every compressed method with each algorithm it runs; the names are test-name parts
// ("onebit_two_phase").
std::vector<Case> all_cases() {
  std::vector<Case> cases = {{"dense", {}, AllreduceAlgorithm::Auto}};
  for (const testing::MethodAlgorithm& m : testing::method_algorithms()) {
    cases.push_back({testing::param_name(m), m.method.config, m.algorithm});
  }
  return cases;
}

void PrintTo(const Case& c, std::ostream* os) {
  *os << c.name;
}

// Step `step`'s gradient of tensor `t` on `rank`: varied signs and magnitudes so that every
// compressor leaves a residual.
std::vector<float> gradient(int rank, int step, std::size_t t) {
  std::vector<float> g(kTensor);
  for (std::size_t i = 0; i < kTensor; ++i) {
    const double x = static_cast<double>(i * 7 + t * 131 + static_cast<std::size_t>(step) * 17 +
                                         static_cast<std::size_t>(rank) * 1009);
    g[i] = static_cast<float>(std::sin(x) * (1.0 + static_cast<double>(i % 13)));
  }
  return g;
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

BucketOptions bucket_options(const Case& c) {
  BucketOptions bo;
  bo.bucket_bytes = kTensor * sizeof(float);  // one bucket per tensor
  bo.allreduce.compression = c.config;
  bo.allreduce.algorithm = c.algorithm;
  bo.allreduce.error_feedback = c.config.method != compression::Method::None;
  bo.allreduce.non_finite = NonFiniteAction::Skip;
  return bo;
}

GradientBuckets& registered(GradientBuckets& buckets) {
  for (const char* name : kNames) buckets.add(name, kTensor);
  return buckets;
}

// One step: marks every tensor ready (gradients from `grads`) and finishes; returns the
// (reduced or kept) gradients.
std::vector<std::vector<float>> step(GradientBuckets& buckets,
                                     std::vector<std::vector<float>> grads) {
  for (std::size_t t = 0; t < grads.size(); ++t) buckets.mark_ready(t, grads[t]);
  buckets.finish();
  return grads;
}

std::vector<std::vector<float>> finite_step(int rank, int s) {
  return {gradient(rank, s, 0), gradient(rank, s, 1), gradient(rank, s, 2)};
}

// Every case (method with algorithm) on P = 2 and 3, one test each.
class SkipStepBuckets : public ::testing::TestWithParam<std::tuple<Case, int>> {};

TEST_P(SkipStepBuckets, ANaNOnOneRankSkipsTheWholeStepAndLeavesNoTrace) {
  const auto& [c, p] = GetParam();
  run_ranks(p, [&](Communicator& comm) {
    const int rank = comm.rank();
    const std::string what = c.name + " P=" + std::to_string(p) + " rank " + std::to_string(rank);
    GradientBuckets with_bad(comm, bucket_options(c));
    GradientBuckets without(comm, bucket_options(c));
    registered(with_bad);
    registered(without);
    step(with_bad, finite_step(rank, 0));
    ASSERT_EQ(with_bad.bucket_count(), 3u);
    ASSERT_FALSE(with_bad.last_step_skipped()) << what;
    step(without, finite_step(rank, 0));
    const std::vector<std::byte> before = with_bad.save_state();

    // Only the middle bucket sees the NaN, and only on the last rank: the first and last
    // buckets reduce fine on their own, yet must not keep their progress.
    std::vector<std::vector<float>> bad = finite_step(rank, 1);
    if (rank == p - 1) bad[1][kTensor / 3] = kNaN;
    const std::vector<std::vector<float>> out = step(with_bad, bad);
    EXPECT_TRUE(with_bad.last_step_skipped()) << what;
    for (std::size_t t = 0; t < 3; ++t) {
      EXPECT_TRUE(same_bits(out[t], bad[t])) << what << ": tensor " << t << " changed";
    }
    EXPECT_EQ(with_bad.save_state(), before) << what << ": state changed by a skipped step";

    const std::vector<std::vector<float>> after = step(with_bad, finite_step(rank, 2));
    EXPECT_FALSE(with_bad.last_step_skipped()) << what;
    const std::vector<std::vector<float>> expected = step(without, finite_step(rank, 2));
    for (std::size_t t = 0; t < 3; ++t) {
      EXPECT_TRUE(same_bits(after[t], expected[t]))
          << what << ": tensor " << t << " differs from a run without the bad step";
    }
    EXPECT_EQ(with_bad.save_state(), without.save_state()) << what;
  });
}

INSTANTIATE_TEST_SUITE_P(SkipStep, SkipStepBuckets,
                         ::testing::Combine(::testing::ValuesIn(all_cases()),
                                            ::testing::Values(2, 3)),
                         [](const ::testing::TestParamInfo<std::tuple<Case, int>>& info) {
                           return std::get<0>(info.param).name + "_P" +
                                  std::to_string(std::get<1>(info.param));
                         });

// Every case on P = 3, one test each.
class SkipStepAllreduce : public ::testing::TestWithParam<Case> {};

TEST_P(SkipStepAllreduce, TheSingleAllreduceLeavesNoTraceEither) {
  const Case& c = GetParam();
  run_ranks(3, [&](Communicator& comm) {
    const int rank = comm.rank();
    const std::string what = c.name + " rank " + std::to_string(rank);
    const bool compressed = c.config.method != compression::Method::None;
    AllreduceState with_bad_state, without_state;
    AllreduceStats stats;
    AllreduceOptions o;
    o.compression = c.config;
    o.algorithm = c.algorithm;
    o.error_feedback = compressed;
    o.non_finite = NonFiniteAction::Skip;
    o.stats = &stats;
    auto run = [&](AllreduceState& state, std::vector<float> data) {
      AllreduceOptions with = o;
      with.state = compressed ? &state : nullptr;
      allreduce(comm, std::span<float>(data), with);
      return data;
    };
    run(with_bad_state, gradient(rank, 0, 0));
    run(without_state, gradient(rank, 0, 0));
    std::vector<float> bad = gradient(rank, 1, 0);
    if (rank == 0) bad[5] = -std::numeric_limits<float>::infinity();
    EXPECT_TRUE(same_bits(run(with_bad_state, bad), bad)) << what;
    EXPECT_TRUE(stats.non_finite_skipped) << what;
    const std::vector<float> after = run(with_bad_state, gradient(rank, 2, 0));
    EXPECT_FALSE(stats.non_finite_skipped) << what;
    EXPECT_TRUE(same_bits(after, run(without_state, gradient(rank, 2, 0)))) << what;
    EXPECT_EQ(with_bad_state.save(), without_state.save()) << what;
  });
}

INSTANTIATE_TEST_SUITE_P(SkipStep, SkipStepAllreduce, ::testing::ValuesIn(all_cases()),
                         [](const ::testing::TestParamInfo<Case>& info) {
                           return info.param.name;
                         });

// Finite inputs whose sum is Inf: dense and top-k (which has no range short of Inf) reduce it;
// the result is bit-identical on every rank, so each rank sees the Inf and skips alike. fp16's
// owner finds its chunk's sum beyond 65504 (two ranks' 40000) and cannot re-encode it: under
// Skip that chunk becomes Inf on every rank, so the step is skipped too, not an error.
struct Overflow {
  Case c;
  float value;
};

std::vector<Overflow> overflows() {
  compression::CompressionConfig topk;
  topk.method = compression::Method::TopK;
  topk.density = 1.0;
  compression::CompressionConfig fp16;
  fp16.method = compression::Method::Fp16;
  return {Overflow{Case{"dense", {}, AllreduceAlgorithm::Auto}, 3e38f},
          Overflow{Case{"topk", topk, AllreduceAlgorithm::SparseAllgather}, 3e38f},
          Overflow{Case{"fp16", fp16, AllreduceAlgorithm::TwoPhase}, 40000.0f}};
}

void PrintTo(const Overflow& o, std::ostream* os) {
  *os << o.c.name << " " << o.value;
}

class SkipStepOverflow : public ::testing::TestWithParam<Overflow> {};

TEST_P(SkipStepOverflow, ASumThatOverflowsSkipsTheStepOnEveryRank) {
  const auto& [c, value] = GetParam();
  run_ranks(2, [&](Communicator& comm) {
    const int rank = comm.rank();
    GradientBuckets buckets(comm, bucket_options(c));
    registered(buckets);
    step(buckets, finite_step(rank, 0));
    const std::vector<std::byte> before = buckets.save_state();
    std::vector<std::vector<float>> big = finite_step(rank, 1);
    big[2][0] = value;
    const std::vector<std::vector<float>> out = step(buckets, big);
    EXPECT_TRUE(buckets.last_step_skipped()) << c.name << " rank " << rank;
    for (std::size_t t = 0; t < 3; ++t) EXPECT_TRUE(same_bits(out[t], big[t])) << c.name;
    EXPECT_EQ(buckets.save_state(), before) << c.name;
  });
}

// e.g. fp16_P2
INSTANTIATE_TEST_SUITE_P(SkipStep, SkipStepOverflow, ::testing::ValuesIn(overflows()),
                         [](const ::testing::TestParamInfo<Overflow>& info) {
                           return info.param.c.name + "_P2";
                         });

TEST(SkipStep, NoUndoAfterRestoringAState) {
  // The copies taken before the last step predate a loaded image: undoing would bring them back.
  compression::CompressionConfig onebit;
  onebit.method = compression::Method::OneBit;
  const Case c{"onebit", onebit, AllreduceAlgorithm::TwoPhase};
  run_ranks(2, [&](Communicator& comm) {
    GradientBuckets buckets(comm, bucket_options(c));
    registered(buckets);
    step(buckets, finite_step(comm.rank(), 0));
    const std::vector<std::byte> image = buckets.save_state();
    step(buckets, finite_step(comm.rank(), 1));
    buckets.restore_state(image);
    EXPECT_THROW(buckets.undo_last_step(), Error);
    EXPECT_EQ(buckets.save_state(), image);
  });
}

TEST(SkipStep, UndoLastStepPutsEveryBucketBackAsASkipWould) {
  compression::CompressionConfig onebit;
  onebit.method = compression::Method::OneBit;
  const Case c{"onebit", onebit, AllreduceAlgorithm::TwoPhase};
  run_ranks(3, [&](Communicator& comm) {
    const int rank = comm.rank();
    GradientBuckets undone(comm, bucket_options(c));
    GradientBuckets without(comm, bucket_options(c));
    registered(undone);
    registered(without);
    step(undone, finite_step(rank, 0));
    step(without, finite_step(rank, 0));
    const std::vector<std::byte> before = undone.save_state();
    step(undone, finite_step(rank, 1));
    ASSERT_NE(undone.save_state(), before);  // the step did change the residuals
    undone.undo_last_step();
    EXPECT_TRUE(undone.last_step_skipped());
    EXPECT_EQ(undone.save_state(), before);
    EXPECT_THROW(undone.undo_last_step(), Error);  // only once
    const auto after = step(undone, finite_step(rank, 2));
    const auto expected = step(without, finite_step(rank, 2));
    for (std::size_t t = 0; t < 3; ++t) EXPECT_TRUE(same_bits(after[t], expected[t]));
    EXPECT_EQ(undone.save_state(), without.save_state());

    BucketOptions no_skip = bucket_options(c);
    no_skip.allreduce.non_finite = NonFiniteAction::Error;
    GradientBuckets plain(comm, no_skip);
    registered(plain);
    step(plain, finite_step(rank, 0));
    try {
      plain.undo_last_step();
      ADD_FAILURE() << "undo without Skip";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::InvalidArgument);
      EXPECT_NE(std::string(e.what()).find("skip"), std::string::npos) << e.what();
    }
  });
}

}  // namespace
}  // namespace frugal
