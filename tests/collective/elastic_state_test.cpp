// redistribute_states: error-feedback states kept by P ranks, re-cut for P' ranks. The update
// the residuals stand for is kept, the new states work with the new job's allreduce, and bad
// input is refused by name.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "chunking.hpp"
#include "frugal/collectives/allreduce.hpp"
#include "frugal/collectives/buckets.hpp"
#include "frugal/collectives/elastic.hpp"
#include "loopback_harness.hpp"

namespace frugal {
namespace {

using testing::run_ranks;

constexpr std::size_t kCount = 1003;  // not a multiple of any rank count used

std::vector<float> gradient(int rank, int step) {
  std::mt19937 gen(static_cast<unsigned>(rank * 1000 + step));
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> g(kCount);
  for (float& x : g) x = normal(gen);
  return g;
}

AllreduceOptions options_for(compression::Method method, ReduceOp op) {
  AllreduceOptions o;
  o.compression.method = method;
  o.op = op;
  return o;
}

// `steps` compressed allreduces on `ranks` ranks; each rank's state afterwards.
std::vector<AllreduceState> train(int ranks, const AllreduceOptions& options, int steps,
                                  std::vector<AllreduceState> states = {}) {
  if (states.empty()) states.resize(static_cast<std::size_t>(ranks));
  run_ranks(ranks, [&](Communicator& comm) {
    AllreduceOptions o = options;
    o.state = &states[static_cast<std::size_t>(comm.rank())];
    for (int s = 0; s < steps; ++s) {
      std::vector<float> g = gradient(comm.rank(), s);
      allreduce(comm, std::span<float>(g), o);
      for (float x : g) ASSERT_TRUE(std::isfinite(x));
    }
  });
  return states;
}

// What the residuals add to the next allreduce's result, per element: sum_i(worker_i) / d + S.
std::vector<double> carried(const std::vector<AllreduceState>& states, ReduceOp op) {
  const auto ranks = static_cast<int>(states.size());
  const double d = op == ReduceOp::Average ? ranks : 1;
  std::vector<double> out(kCount, 0.0);
  for (int i = 0; i < ranks; ++i) {
    const AllreduceState& s = states[static_cast<std::size_t>(i)];
    const std::span<const float> w = s.worker_residual();
    for (std::size_t e = 0; e < w.size(); ++e) out[e] += w[e] / d;
    const patterns::Range chunk = patterns::chunk_range(kCount, ranks, i);
    const std::span<const float> sv = s.server_residual();
    for (std::size_t e = 0; e < sv.size(); ++e) out[chunk.offset + e] += sv[e];
  }
  return out;
}

double norm(const std::vector<double>& v) {
  return std::sqrt(std::inner_product(v.begin(), v.end(), v.begin(), 0.0));
}

struct Case {
  compression::Method method;
  ReduceOp op;
  int from, to;
};

class Redistribute : public ::testing::TestWithParam<Case> {};

TEST_P(Redistribute, KeepsWhatTheResidualsCarryAndTheNewJobRuns) {
  const Case c = GetParam();
  const AllreduceOptions options = options_for(c.method, c.op);
  const std::vector<AllreduceState> before = train(c.from, options, 3);
  const std::vector<double> was = carried(before, c.op);
  ASSERT_GT(norm(was), 1.0) << "nothing to carry: the test would prove nothing";

  std::vector<AllreduceState> after = redistribute_states(before, c.to, options);
  ASSERT_EQ(after.size(), static_cast<std::size_t>(c.to));
  const std::vector<double> now = carried(after, c.op);
  double diff = 0;
  for (std::size_t e = 0; e < kCount; ++e) diff = std::max(diff, std::abs(now[e] - was[e]));
  EXPECT_LE(diff, 1e-5 * std::max(1.0, norm(was))) << "largest change " << diff;
  for (const AllreduceState& s : after) EXPECT_EQ(s.steps(), 3U);

  // The P'-rank job takes the states as they are (no Mismatch) and goes on.
  after = train(c.to, options, 2, std::move(after));
  for (const AllreduceState& s : after) EXPECT_EQ(s.steps(), 5U);
}

INSTANTIATE_TEST_SUITE_P(
    ShrinkAndGrow, Redistribute,
    ::testing::Values(
        // two-phase at 4, allgather at 2 (auto): server mass moves to the workers
        Case{compression::Method::OneBit, ReduceOp::Average, 4, 2},
        Case{compression::Method::OneBit, ReduceOp::Sum, 4, 2},
        // allgather at 2, two-phase at 3: the new owners' server residuals start at zero
        Case{compression::Method::Qsgd, ReduceOp::Average, 2, 3},
        Case{compression::Method::Ternary, ReduceOp::Sum, 2, 3},
        // two-phase on both sides, chunks re-cut
        Case{compression::Method::OneBit, ReduceOp::Average, 3, 4},
        Case{compression::Method::TopK, ReduceOp::Average, 4, 2},
        Case{compression::Method::TopK, ReduceOp::Sum, 2, 3}),
    [](const ::testing::TestParamInfo<Case>& info) {
      return std::string(compression::to_string(info.param.method)) +
             (info.param.op == ReduceOp::Sum ? "_sum_" : "_average_") +
             std::to_string(info.param.from) + "_to_" + std::to_string(info.param.to);
    });

TEST(Redistribute, ShrinkingSumsTheRanksANewRankTakesOver) {
  const AllreduceOptions options = options_for(compression::Method::TopK, ReduceOp::Sum);
  const std::vector<AllreduceState> before = train(4, options, 2);
  const std::vector<AllreduceState> after = redistribute_states(before, 2, options);
  // Top-k's sparse algorithms have no server side: new rank j = old ranks 2j and 2j + 1.
  for (std::size_t j = 0; j < 2; ++j) {
    const std::span<const float> w = after[j].worker_residual();
    for (std::size_t e = 0; e < kCount; ++e) {
      EXPECT_EQ(w[e], before[2 * j].worker_residual()[e] + before[2 * j + 1].worker_residual()[e])
          << "rank " << j << " element " << e;
    }
  }
}

TEST(Redistribute, UnusedStatesAndStatesWithoutFeedbackComeBackUnbound) {
  AllreduceOptions options = options_for(compression::Method::OneBit, ReduceOp::Average);
  std::vector<AllreduceState> fresh(3);
  for (const AllreduceState& s : redistribute_states(fresh, 2, options)) EXPECT_FALSE(s.bound());
  options.error_feedback = false;
  const std::vector<AllreduceState> before = train(2, options, 1);
  const std::vector<AllreduceState> after = redistribute_states(before, 3, options);
  ASSERT_EQ(after.size(), 3U);
  for (const AllreduceState& s : after) {
    EXPECT_FALSE(s.bound());
    EXPECT_EQ(s.steps(), 1U);
  }
}

void expect_invalid(const std::function<void()>& call, const std::string& words) {
  try {
    call();
    ADD_FAILURE() << "no error; expected one naming " << words;
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::InvalidArgument) << e.what();
    EXPECT_NE(std::string(e.what()).find(words), std::string::npos) << e.what();
  }
}

TEST(Redistribute, RefusesBadInputByName) {
  const AllreduceOptions options = options_for(compression::Method::OneBit, ReduceOp::Average);
  const std::vector<AllreduceState> two = train(2, options, 1);
  expect_invalid([&] { redistribute_states({}, 2, options); }, "states");
  expect_invalid([&] { redistribute_states(two, 0, options); }, "new_ranks");
  // Out of rank order.
  std::vector<AllreduceState> swapped = {two[1], two[0]};
  expect_invalid([&] { redistribute_states(swapped, 2, options); }, "expected rank 0 of 2");
  // One rank's state missing: states[0] says 2 ranks, the list has 1.
  expect_invalid([&] { redistribute_states(std::span(two).first(1), 2, options); }, "rank");
  // A state of another buffer.
  const std::vector<AllreduceState> other =
      train(2, options_for(compression::Method::Ternary, ReduceOp::Average), 1);
  std::vector<AllreduceState> mixed = {two[0], other[1]};
  expect_invalid([&] { redistribute_states(mixed, 2, options); }, "another buffer");
  // Options that do not match the states.
  expect_invalid(
      [&] { redistribute_states(two, 3, options_for(compression::Method::OneBit, ReduceOp::Sum)); },
      "options.op");
  expect_invalid(
      [&] {
        redistribute_states(two, 3, options_for(compression::Method::Qsgd, ReduceOp::Average));
      },
      "options.compression.method");
}

// Buckets of a matrix and a vector (dense by default), 1-bit, `steps` steps on `ranks` ranks;
// each rank's save_state() image.
std::vector<std::vector<std::byte>> bucket_images(
    int ranks, const BucketOptions& options, int steps,
    std::vector<std::vector<std::byte>> restore = {}) {
  std::vector<std::vector<std::byte>> images(static_cast<std::size_t>(ranks));
  run_ranks(ranks, [&](Communicator& comm) {
    GradientBuckets buckets(comm, options);
    buckets.add("weight", kCount, 2);
    buckets.add("bias", 17, 1);
    const auto me = static_cast<std::size_t>(comm.rank());
    for (int s = 0; s < steps; ++s) {
      if (s == 0 && !restore.empty()) buckets.restore_state(restore[me]);
      std::vector<float> w = gradient(comm.rank(), s);
      std::vector<float> b(17, 1.0f);
      buckets.mark_ready("bias", b);
      buckets.mark_ready("weight", w);
      buckets.finish();
    }
    images[me] = buckets.save_state();
  });
  return images;
}

TEST(Redistribute, BucketImagesAreReCutBucketByBucket) {
  BucketOptions options;
  options.allreduce = options_for(compression::Method::OneBit, ReduceOp::Average);
  const std::vector<std::vector<std::byte>> four = bucket_images(4, options, 2);
  const std::vector<std::vector<std::byte>> two =
      GradientBuckets::redistribute_state(four, 2, options);
  ASSERT_EQ(two.size(), 2U);
  // The weight bucket's states: what redistribute_states makes of the four ranks' states.
  auto weight_state = [](const std::vector<std::byte>& image) {
    AllreduceState state;
    // Layout of an image: magic, version, count, then (key, size, state image) per bucket; the
    // weight's bucket comes first (added first).
    std::uint64_t size = 0;
    std::memcpy(&size, image.data() + 4 + 4 + 8 + 8, sizeof size);
    state.restore(std::span(image).subspan(4 + 4 + 8 + 8 + 8, size));
    return state;
  };
  std::vector<AllreduceState> before;
  for (const auto& image : four) before.push_back(weight_state(image));
  const std::vector<AllreduceState> expected = redistribute_states(before, 2, options.allreduce);
  for (std::size_t j = 0; j < 2; ++j) {
    const AllreduceState got = weight_state(two[j]);
    ASSERT_EQ(got.worker_residual().size(), kCount);
    EXPECT_TRUE(std::equal(got.worker_residual().begin(), got.worker_residual().end(),
                           expected[j].worker_residual().begin()));
  }
  // A 2-rank job restores them and goes on.
  const std::vector<std::vector<std::byte>> after = bucket_images(2, options, 1, two);
  EXPECT_EQ(after.size(), 2U);
  // Images of different models are refused.
  BucketOptions other = options;
  other.dense_vectors = false;
  std::vector<std::vector<std::byte>> mixed = {four[0], bucket_images(2, other, 1)[1]};
  expect_invalid([&] { GradientBuckets::redistribute_state(mixed, 2, options); }, "images[1]");
}

}  // namespace
}  // namespace frugal
