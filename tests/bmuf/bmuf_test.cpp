// Bmuf on in-process loopback ranks (P = 1..4): the serial reference for model averaging, block
// momentum and Nesterov block momentum; H = 1, η = 0 as synchronous model averaging; a 1-bit
// delta with error feedback; checkpoints; bad and disagreeing parameters.
#include "frugal/collectives/bmuf.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <limits>
#include <mutex>
#include <string>
#include <vector>

#include "bmuf_cases.hpp"
#include "frugal/error.hpp"
#include "loopback_harness.hpp"

namespace frugal {
namespace {

using testing::run_ranks;

// Float against the double reference over 6 blocks: rounding only.
constexpr double kTolerance = 2e-5;
constexpr int kBlocks = 6;

// Every rank's result of run_bmuf.
std::vector<testing::RunResult> run_all(int ranks, const BmufOptions& o, int blocks) {
  std::vector<testing::RunResult> results(static_cast<std::size_t>(ranks));
  run_ranks(ranks, [&](Communicator& comm) {
    results[static_cast<std::size_t>(comm.rank())] = testing::run_bmuf(comm, o, blocks);
  });
  return results;
}

class BmufRanks : public ::testing::TestWithParam<int> {};

void expect_reference(int ranks, const BmufOptions& o) {
  const auto want = testing::reference_blocks(ranks, o, kBlocks);
  const auto results = run_all(ranks, o, kBlocks);
  for (std::size_t r = 0; r < results.size(); ++r) {
    EXPECT_LT(testing::max_relative_error(results[r].blocks, want), kTolerance) << "rank " << r;
    EXPECT_EQ(results[r].blocks, results[0].blocks) << "rank " << r << " differs from rank 0";
  }
  // The local models must actually drift apart, or the test would not see the averaging.
  if (ranks > 1) {
    const auto one = testing::reference_blocks(1, o, kBlocks);
    EXPECT_GT(testing::max_relative_error(results[0].blocks, one), 1e-3);
  }
}

TEST_P(BmufRanks, ModelAveragingMatchesTheSerialReference) {
  BmufOptions o;
  o.block_steps = 3;
  expect_reference(GetParam(), o);
}

TEST_P(BmufRanks, BlockMomentumMatchesTheSerialReference) {
  BmufOptions o;
  o.block_steps = 3;
  o.block_momentum = 0.5;
  o.block_lr = 1;
  expect_reference(GetParam(), o);
}

TEST_P(BmufRanks, NesterovBlockMomentumMatchesTheSerialReference) {
  BmufOptions o;
  o.block_steps = 2;
  o.block_momentum = 0.5;
  o.block_lr = 0.8;
  o.nesterov = true;
  expect_reference(GetParam(), o);
}

TEST_P(BmufRanks, OneStepBlocksWithoutMomentumAreSynchronousModelAveraging) {
  const int ranks = GetParam();
  BmufOptions o;  // H = 1, η = 0, ζ = 1
  std::vector<float> x = testing::initial_model();
  std::vector<std::vector<double>> want;
  for (int t = 0; t < kBlocks; ++t) {  // every rank steps from x; x becomes their mean
    std::vector<double> mean(testing::kParams, 0.0);
    for (int r = 0; r < ranks; ++r) {
      std::vector<float> local = x;
      testing::local_step(r, local);
      for (std::size_t j = 0; j < testing::kParams; ++j) mean[j] += local[j] / ranks;
    }
    want.push_back(mean);
    x.assign(mean.begin(), mean.end());
  }
  const auto results = run_all(ranks, o, kBlocks);
  for (const auto& result : results) {
    EXPECT_LT(testing::max_relative_error(result.blocks, want), 1e-6);
  }
}

INSTANTIATE_TEST_SUITE_P(P, BmufRanks, ::testing::Values(1, 2, 3, 4));

TEST(Bmuf, OneBitDeltaWithErrorFeedbackSendsLessAndConverges) {
  constexpr int kRanks = 4, kLong = 60;
  BmufOptions dense;
  dense.block_steps = 4;
  dense.block_momentum = 0.5;
  BmufOptions onebit = dense;
  onebit.allreduce.compression.method = compression::Method::OneBit;
  const auto d = run_all(kRanks, dense, kLong);
  const auto c = run_all(kRanks, onebit, kLong);
  EXPECT_LT(c[0].bytes * 3, d[0].bytes) << "1-bit should send far fewer bytes than float32";
  EXPECT_GT(c[0].bytes, 0u);
  const double start = testing::global_loss(kRanks, testing::initial_model());
  const double dense_end = testing::global_loss(kRanks, d[0].blocks.back());
  const double onebit_end = testing::global_loss(kRanks, c[0].blocks.back());
  std::printf("bytes per rank: dense %llu, 1-bit %llu; loss %.6g -> dense %.6g, 1-bit %.6g\n",
              static_cast<unsigned long long>(d[0].bytes),
              static_cast<unsigned long long>(c[0].bytes), start, dense_end, onebit_end);
  EXPECT_LT(dense_end, 0.2 * start);
  // Error feedback brings 1-bit within a few percent of the dense run's loss.
  EXPECT_LT(onebit_end, dense_end * 1.05 + 1e-4) << "start " << start << ", dense " << dense_end;
  // The delta really was compressed: another trajectory than the dense one.
  EXPECT_NE(c[0].blocks.back(), d[0].blocks.back());
}

TEST(Bmuf, SaveAndRestoreContinuesExactly) {
  constexpr int kRanks = 3;
  BmufOptions o;
  o.block_steps = 3;
  o.block_momentum = 0.6;
  o.nesterov = true;
  o.allreduce.compression.method = compression::Method::OneBit;  // residuals in the image too
  std::vector<std::vector<float>> straight(kRanks), resumed(kRanks);
  run_ranks(kRanks, [&](Communicator& comm) {
    const auto r = static_cast<std::size_t>(comm.rank());
    testing::RankModel model;
    Bmuf bmuf(comm, model.tensors(), o);
    for (int s = 0; s < 7; ++s) {  // two blocks and one step into the third
      testing::local_step(comm.rank(), model.x);
      bmuf.step();
    }
    const std::vector<std::byte> image = bmuf.save_state();
    const std::vector<float> saved_x = model.x;
    for (int s = 0; s < 8; ++s) {
      testing::local_step(comm.rank(), model.x);
      bmuf.step();
    }
    straight[r] = model.x;

    testing::RankModel other;  // a fresh process: initial model, then the checkpoint
    Bmuf again(comm, other.tensors(), o);
    again.restore_state(image);
    other.x = saved_x;
    EXPECT_EQ(again.blocks(), 2u);
    EXPECT_EQ(again.steps_in_block(), 1u);
    for (int s = 0; s < 8; ++s) {
      testing::local_step(comm.rank(), other.x);
      again.step();
    }
    resumed[r] = other.x;
    EXPECT_EQ(again.save_state(), bmuf.save_state());
  });
  for (int r = 0; r < kRanks; ++r) EXPECT_EQ(resumed[r], straight[r]) << "rank " << r;
}

TEST(Bmuf, RestoreRefusesBadImages) {
  run_ranks(2, [&](Communicator& comm) {
    testing::RankModel model;
    BmufOptions o;
    o.block_steps = 2;
    Bmuf bmuf(comm, model.tensors(), o);
    testing::local_step(comm.rank(), model.x);
    bmuf.step();
    testing::local_step(comm.rank(), model.x);
    bmuf.step();
    const std::vector<std::byte> image = bmuf.save_state();
    const std::vector<std::byte> before = bmuf.save_state();
    const auto refuses = [&](std::vector<std::byte> bad, const std::string& words) {
      try {
        bmuf.restore_state(bad);
        ADD_FAILURE() << "accepted an image that should mention " << words;
      } catch (const Error& e) {
        EXPECT_EQ(e.code(), ErrorCode::InvalidArgument);
        EXPECT_NE(std::string(e.what()).find(words), std::string::npos) << e.what();
      }
      EXPECT_EQ(bmuf.save_state(), before) << "a refused image changed the state";
    };
    refuses({}, "truncated");
    refuses(std::vector<std::byte>(image.begin(), image.end() - 3), "");
    std::vector<std::byte> magic = image;
    magic[0] = std::byte{0};
    refuses(magic, "magic");
    std::vector<std::byte> longer = image;
    longer.push_back(std::byte{0});
    refuses(longer, "");
    // An image of a run with other options.
    testing::RankModel m2;
    BmufOptions o2 = o;
    o2.block_momentum = 0.25;
    Bmuf other(comm, m2.tensors(), o2);
    refuses(other.save_state(), "block_momentum");
    // A NaN in W.
    std::vector<std::byte> nan = image;
    const float q = std::numeric_limits<float>::quiet_NaN();
    // W is followed by Δ, the error-feedback image's size and the image itself.
    const std::size_t w_at = image.size() - bmuf.allreduce_state().save().size() - 8 -
                             2 * testing::kParams * sizeof(float);
    std::memcpy(nan.data() + w_at, &q, sizeof q);
    refuses(nan, "NaN or Inf");
    bmuf.restore_state(image);  // the good one still loads
  });
}

// Runs `make` on every rank with rank-dependent options and returns each rank's error code.
std::vector<ErrorCode> codes(
    int ranks, const std::function<BmufOptions(int)>& options_of,
    std::vector<std::string>* messages = nullptr,
    const std::function<std::vector<BmufTensor>(int, testing::RankModel&)>& tensors_of = {}) {
  std::vector<ErrorCode> out(static_cast<std::size_t>(ranks), ErrorCode::Internal);
  std::vector<std::string> texts(static_cast<std::size_t>(ranks));
  std::vector<int> threw(static_cast<std::size_t>(ranks), 0);
  run_ranks(ranks, [&](Communicator& comm) {
    const auto r = static_cast<std::size_t>(comm.rank());
    testing::RankModel model;
    try {
      Bmuf bmuf(comm, tensors_of ? tensors_of(comm.rank(), model) : model.tensors(),
                options_of(comm.rank()));
    } catch (const Error& e) {
      out[r] = e.code();
      texts[r] = e.what();
      threw[r] = 1;
    }
  });
  for (std::size_t r = 0; r < threw.size(); ++r) {
    EXPECT_TRUE(threw[r]) << "rank " << r << " did not throw";
  }
  if (messages != nullptr) *messages = texts;
  return out;
}

TEST(Bmuf, BadParametersAreRefusedByNameOnEveryRank) {
  const auto bad = [](const char* name, auto set) {
    for (int culprit : {-1, 1}) {  // every rank, or only rank 1
      std::vector<std::string> messages;
      const auto got = codes(
          3,
          [&](int rank) {
            BmufOptions o;
            if (culprit < 0 || rank == culprit) set(o);
            return o;
          },
          &messages);
      for (std::size_t r = 0; r < got.size(); ++r) {
        EXPECT_EQ(got[r], ErrorCode::InvalidArgument) << name << " rank " << r;
        EXPECT_NE(messages[r].find(name), std::string::npos) << messages[r];
      }
    }
  };
  bad("block_steps", [](BmufOptions& o) { o.block_steps = 0; });
  bad("block_momentum", [](BmufOptions& o) { o.block_momentum = 1.0; });
  bad("block_momentum", [](BmufOptions& o) { o.block_momentum = -0.1; });
  bad("block_momentum", [](BmufOptions& o) { o.block_momentum = std::nan(""); });
  bad("block_lr", [](BmufOptions& o) { o.block_lr = 0; });
  bad("block_lr", [](BmufOptions& o) { o.block_lr = INFINITY; });
  std::vector<std::string> messages;
  const auto dup = codes(
      2, [](int) { return BmufOptions{}; }, &messages,
      [](int, testing::RankModel& m) {
        return std::vector<BmufTensor>{{"w", std::span<float>(m.x).first(3)},
                                       {"w", std::span<float>(m.x).last(3)}};
      });
  for (std::size_t r = 0; r < dup.size(); ++r) {
    EXPECT_EQ(dup[r], ErrorCode::InvalidArgument);
    EXPECT_NE(messages[r].find("tensors"), std::string::npos) << messages[r];
  }
}

TEST(Bmuf, DisagreeingRanksGetMismatchEverywhere) {
  const auto differ = [](const char* what, auto set) {
    for (int ranks : {2, 3, 4}) {
      std::vector<std::string> messages;
      const auto got = codes(
          ranks,
          [&](int rank) {
            BmufOptions o;
            o.block_steps = 4;
            o.block_momentum = 0.5;
            if (rank == ranks - 1) set(o);
            return o;
          },
          &messages);
      for (std::size_t r = 0; r < got.size(); ++r) {
        EXPECT_EQ(got[r], ErrorCode::Mismatch) << what << " rank " << r << " of " << ranks;
        EXPECT_NE(messages[r].find(what), std::string::npos) << messages[r];
      }
    }
  };
  differ("block_steps", [](BmufOptions& o) { o.block_steps = 3; });
  differ("block_momentum", [](BmufOptions& o) { o.block_momentum = 0.25; });
  differ("block_lr", [](BmufOptions& o) { o.block_lr = 1.5; });
  differ("nesterov", [](BmufOptions& o) { o.nesterov = true; });
  const auto got = codes(
      2, [](int) { return BmufOptions{}; }, nullptr,
      [](int rank, testing::RankModel& m) {
        return std::vector<BmufTensor>{{"w", std::span<float>(m.x).first(rank == 0 ? 3 : 4)}};
      });
  EXPECT_EQ(got[0], ErrorCode::Mismatch);
  EXPECT_EQ(got[1], ErrorCode::Mismatch);
}

TEST(Bmuf, StartsFromRankZerosModelAndSyncsOnlyAfterSteps) {
  run_ranks(3, [](Communicator& comm) {
    testing::RankModel model;
    for (float& v : model.x) v += static_cast<float>(comm.rank());
    Bmuf bmuf(comm, model.tensors(), BmufOptions{});
    EXPECT_EQ(model.x, testing::initial_model());  // rank 0's, on every rank
    EXPECT_FALSE(bmuf.sync());                     // no local step: nothing to do
    EXPECT_EQ(bmuf.blocks(), 0u);
    EXPECT_EQ(bmuf.bytes_sent(), 0u);
  });
}

TEST(Bmuf, PartialBlockSyncAndHStepBoundary) {
  run_ranks(2, [](Communicator& comm) {
    testing::RankModel model;
    BmufOptions o;
    o.block_steps = 3;
    Bmuf bmuf(comm, model.tensors(), o);
    testing::local_step(comm.rank(), model.x);
    EXPECT_FALSE(bmuf.step());
    EXPECT_EQ(bmuf.steps_in_block(), 1u);
    EXPECT_TRUE(bmuf.sync());  // an epoch's end: a block of one step
    EXPECT_EQ(bmuf.blocks(), 1u);
    EXPECT_EQ(bmuf.steps_in_block(), 0u);
    for (int s = 0; s < 2; ++s) EXPECT_FALSE(bmuf.step());
    EXPECT_TRUE(bmuf.step());
    EXPECT_EQ(bmuf.blocks(), 2u);
  });
}

TEST(Bmuf, SkipDiscardsABlockWithANonFiniteDeltaOnEveryRank) {
  run_ranks(3, [](Communicator& comm) {
    testing::RankModel model;
    BmufOptions o;
    o.block_steps = 2;
    o.block_momentum = 0.5;
    o.allreduce.non_finite = NonFiniteAction::Skip;
    Bmuf bmuf(comm, model.tensors(), o);
    for (int s = 0; s < 2; ++s) {
      testing::local_step(comm.rank(), model.x);
      bmuf.step();
    }
    const std::vector<std::byte> before = bmuf.save_state();
    const std::vector<float> start = model.x;
    testing::local_step(comm.rank(), model.x);
    bmuf.step();
    if (comm.rank() == 1) model.x[3] = std::numeric_limits<float>::quiet_NaN();
    EXPECT_TRUE(bmuf.step());
    EXPECT_TRUE(bmuf.last_block_skipped());
    EXPECT_EQ(bmuf.skipped_blocks(), 1u);
    EXPECT_EQ(model.x, start);  // back at the block's start, on every rank
    EXPECT_EQ(bmuf.blocks(), 1u);
    EXPECT_EQ(bmuf.global_model().size(), testing::kParams);
    // W and Δ unchanged (the counters in the image differ: skipped blocks).
    Bmuf fresh(comm, model.tensors(), o);
    fresh.restore_state(before);
    EXPECT_TRUE(std::equal(fresh.global_model().begin(), fresh.global_model().end(),
                           bmuf.global_model().begin()));
    EXPECT_TRUE(
        std::equal(fresh.momentum().begin(), fresh.momentum().end(), bmuf.momentum().begin()));
  });
}

}  // namespace
}  // namespace frugal
