// The C API's PowerSGD in-process: options and their versioning, argument checks, the result
// against the C++ API, disagreement, and the state's checkpoint image.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "c_group.hpp"
#include "frugal/collectives/powersgd.hpp"
#include "frugal/frugal.h"
#include "loopback_harness.hpp"

namespace {

using frugal::capi_test::CGroup;

struct Shape {
  std::size_t rows, cols;
};
const std::vector<Shape> kShapes = {{32, 16}, {16, 1}, {3, 3}, {40, 24}};

std::vector<std::vector<float>> inputs(int rank, int step) {
  std::vector<std::vector<float>> out;
  for (std::size_t t = 0; t < kShapes.size(); ++t) {
    // Full-rank values (a sine of the index would be a rank-2 matrix, which rank 2 reproduces).
    std::mt19937 gen(unsigned(1000 * rank + 10 * step) + unsigned(t));
    std::normal_distribution<float> normal(0.0f, 1.0f);
    std::vector<float> v(kShapes[t].rows * kShapes[t].cols);
    for (float& x : v) x = normal(gen);
    out.push_back(v);
  }
  return out;
}

std::vector<frugal_powersgd_tensor> c_tensors(std::vector<std::vector<float>>& data) {
  std::vector<frugal_powersgd_tensor> out;
  for (std::size_t t = 0; t < kShapes.size(); ++t) {
    out.push_back({data[t].data(), kShapes[t].rows, kShapes[t].cols});
  }
  return out;
}

frugal_powersgd_options defaults() {
  frugal_powersgd_options o;
  EXPECT_EQ(frugal_powersgd_options_init(&o), FRUGAL_OK);
  return o;
}

TEST(CapiPowerSgd, OptionsStartFromTheCppDefaults) {
  const frugal_powersgd_options o = defaults();
  const frugal::PowerSgdOptions cpp;
  EXPECT_EQ(o.struct_size, sizeof o);
  EXPECT_EQ(o.rank, cpp.rank);
  EXPECT_EQ(o.min_compression_rate, cpp.min_compression_rate);
  EXPECT_EQ(o.start_iter, cpp.start_iter);
  EXPECT_EQ(o.error_feedback, 1);
  EXPECT_EQ(o.op, FRUGAL_OP_AVERAGE);
  EXPECT_EQ(o.non_finite, FRUGAL_NON_FINITE_DEFAULT);
  EXPECT_EQ(o.skipped, nullptr);
}

TEST(CapiPowerSgd, StructSizesAreChecked) {
  frugal_powersgd_options o;
  EXPECT_EQ(frugal_powersgd_options_init_sized(&o, 8), FRUGAL_ERR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(frugal_last_error_message()).find("struct_size"), std::string::npos);
  // A newer caller's larger struct: unknown trailing bytes must be zero.
  struct Newer {
    frugal_powersgd_options o;
    std::uint64_t future;
  } newer;
  ASSERT_EQ(frugal_powersgd_options_init_sized(&newer.o, sizeof newer), FRUGAL_OK);
  EXPECT_EQ(newer.future, 0u);
  int compresses = -1;
  EXPECT_EQ(frugal_powersgd_compresses(32, 16, &newer.o, &compresses), FRUGAL_OK);
  EXPECT_EQ(compresses, 1);
  newer.future = 1;
  EXPECT_EQ(frugal_powersgd_compresses(32, 16, &newer.o, &compresses), FRUGAL_ERR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(frugal_last_error_message()).find("newer field"), std::string::npos);
  o = defaults();
  o.struct_size = 4;
  EXPECT_EQ(frugal_powersgd_compresses(32, 16, &o, &compresses), FRUGAL_ERR_INVALID_ARGUMENT);
}

TEST(CapiPowerSgd, CompressesFollowsTheRule) {
  frugal_powersgd_options o = defaults();
  int c = -1;
  ASSERT_EQ(frugal_powersgd_compresses(32, 16, nullptr, &c), FRUGAL_OK);
  EXPECT_EQ(c, 1);
  ASSERT_EQ(frugal_powersgd_compresses(3, 3, &o, &c), FRUGAL_OK);
  EXPECT_EQ(c, 0);
  o.rank = 8;  // (32 + 16) * 8 * 2 >= 512
  ASSERT_EQ(frugal_powersgd_compresses(32, 16, &o, &c), FRUGAL_OK);
  EXPECT_EQ(c, 0);
  EXPECT_EQ(frugal_powersgd_compresses(32, 16, &o, nullptr), FRUGAL_ERR_INVALID_ARGUMENT);
}

TEST(CapiPowerSgd, BadArgumentsAreNamed) {
  CGroup g(1);
  g.run([](int, frugal_comm* comm) {
    frugal_powersgd_state* state = nullptr;
    ASSERT_EQ(frugal_powersgd_state_create(&state), FRUGAL_OK);
    auto data = inputs(0, 0);
    auto tensors = c_tensors(data);
    auto expect = [&](frugal_status got, const char* words) {
      EXPECT_EQ(got, FRUGAL_ERR_INVALID_ARGUMENT) << words;
      EXPECT_NE(std::string(frugal_last_error_message()).find(words), std::string::npos)
          << frugal_last_error_message();
    };
    frugal_powersgd_options o = defaults();
    expect(frugal_powersgd_allreduce(nullptr, tensors.data(), tensors.size(), state, &o), "comm");
    expect(frugal_powersgd_allreduce(comm, tensors.data(), tensors.size(), nullptr, &o), "state");
    expect(frugal_powersgd_allreduce(comm, nullptr, 2, state, &o), "tensors");
    o.rank = 0;
    expect(frugal_powersgd_allreduce(comm, tensors.data(), tensors.size(), state, &o), "rank");
    o = defaults();
    o.min_compression_rate = 0.25;
    expect(frugal_powersgd_allreduce(comm, tensors.data(), tensors.size(), state, &o),
           "min_compression_rate");
    o = defaults();
    o.op = 7;
    expect(frugal_powersgd_allreduce(comm, tensors.data(), tensors.size(), state, &o),
           "options->op");
    o = defaults();
    o.non_finite = -1;
    expect(frugal_powersgd_allreduce(comm, tensors.data(), tensors.size(), state, &o),
           "options->non_finite");
    o = defaults();
    auto bad = tensors;
    bad[1].data = nullptr;
    expect(frugal_powersgd_allreduce(comm, bad.data(), bad.size(), state, &o), "tensors[1].data");
    bad = tensors;
    bad[0].rows = SIZE_MAX;
    bad[0].cols = 2;
    expect(frugal_powersgd_allreduce(comm, bad.data(), bad.size(), state, &o), "overflows");
    uint64_t steps = 9;
    ASSERT_EQ(frugal_powersgd_state_steps(state, &steps), FRUGAL_OK);
    EXPECT_EQ(steps, 0u);
    // Nothing was sent: a good call still works.
    EXPECT_EQ(frugal_powersgd_allreduce(comm, tensors.data(), tensors.size(), state, &o), FRUGAL_OK)
        << frugal_last_error_message();
    frugal_powersgd_state_destroy(state);
  });
}

TEST(CapiPowerSgd, MatchesTheCppApiBitForBit) {
  constexpr int kRanks = 3, kSteps = 4;
  frugal_powersgd_options o = defaults();
  o.rank = 2;
  o.start_iter = 1;
  o.seed = 5;
  std::vector<std::vector<std::vector<float>>> from_c(kRanks), from_cpp(kRanks);
  CGroup g(kRanks);
  g.run([&](int rank, frugal_comm* comm) {
    frugal_powersgd_state* state = nullptr;
    ASSERT_EQ(frugal_powersgd_state_create(&state), FRUGAL_OK);
    for (int step = 0; step < kSteps; ++step) {
      auto data = inputs(rank, step);
      auto tensors = c_tensors(data);
      ASSERT_EQ(frugal_powersgd_allreduce(comm, tensors.data(), tensors.size(), state, &o),
                FRUGAL_OK)
          << frugal_last_error_message();
      from_c[std::size_t(rank)].insert(from_c[std::size_t(rank)].end(), data.begin(), data.end());
    }
    frugal_powersgd_state_destroy(state);
  });
  frugal::PowerSgdOptions cpp;
  cpp.rank = 2;
  cpp.start_iter = 1;
  cpp.seed = 5;
  frugal::testing::run_ranks(kRanks, [&](frugal::Communicator& comm) {
    frugal::PowerSgdState state;
    for (int step = 0; step < kSteps; ++step) {
      auto data = inputs(comm.rank(), step);
      std::vector<frugal::PowerSgdTensor> tensors;
      for (std::size_t t = 0; t < kShapes.size(); ++t) {
        tensors.push_back({std::span<float>(data[t]), kShapes[t].rows, kShapes[t].cols});
      }
      frugal::powersgd_allreduce(comm, tensors, state, cpp);
      auto& mine = from_cpp[std::size_t(comm.rank())];
      mine.insert(mine.end(), data.begin(), data.end());
    }
  });
  for (int r = 0; r < kRanks; ++r) {
    EXPECT_EQ(from_c[std::size_t(r)], from_cpp[std::size_t(r)]) << "rank " << r;
    EXPECT_EQ(from_c[std::size_t(r)], from_c[0]) << "rank " << r << " differs from rank 0";
  }
  // The last step compressed tensor 0: its result is not the plain mean.
  std::vector<float> mean(kShapes[0].rows * kShapes[0].cols, 0.0f);
  for (int r = 0; r < kRanks; ++r) {
    const auto in = inputs(r, kSteps - 1);
    for (std::size_t i = 0; i < mean.size(); ++i) mean[i] += in[0][i] / float(kRanks);
  }
  const auto& last = from_c[0][std::size_t(kSteps - 1) * kShapes.size()];
  double worst = 0;
  for (std::size_t i = 0; i < mean.size(); ++i)
    worst = std::max(worst, double(std::abs(last[i] - mean[i])));
  EXPECT_GT(worst, 0.05);
  // ... while tensor 1 (a vector) is the exact mean.
  const auto& vec = from_c[0][std::size_t(kSteps - 1) * kShapes.size() + 1];
  for (std::size_t i = 0; i < vec.size(); ++i) {
    float want = 0;
    for (int r = 0; r < kRanks; ++r) want += inputs(r, kSteps - 1)[1][i];
    EXPECT_NEAR(vec[i], want / float(kRanks), 1e-6f);
  }
}

TEST(CapiPowerSgd, DisagreeingOnTheRankIsMismatchOnEveryRank) {
  constexpr int kRanks = 3;
  std::vector<frugal_status> got(kRanks, FRUGAL_OK);
  std::vector<std::string> messages(kRanks);
  CGroup g(kRanks);
  g.run([&](int rank, frugal_comm* comm) {
    frugal_powersgd_state* state = nullptr;
    ASSERT_EQ(frugal_powersgd_state_create(&state), FRUGAL_OK);
    frugal_powersgd_options o = defaults();
    o.rank = rank == 2 ? 2 : 1;
    auto data = inputs(rank, 0);
    auto tensors = c_tensors(data);
    got[std::size_t(rank)] =
        frugal_powersgd_allreduce(comm, tensors.data(), tensors.size(), state, &o);
    messages[std::size_t(rank)] = frugal_last_error_message();
    frugal_powersgd_state_destroy(state);
  });
  for (int r = 0; r < kRanks; ++r) {
    EXPECT_EQ(got[std::size_t(r)], FRUGAL_ERR_MISMATCH) << messages[std::size_t(r)];
    EXPECT_NE(messages[std::size_t(r)].find("rank r"), std::string::npos);
  }
}

TEST(CapiPowerSgd, StateImagesRoundTripAndCorruptionIsRefused) {
  constexpr int kRanks = 2;
  std::vector<std::vector<unsigned char>> images(kRanks);
  std::vector<std::vector<float>> after_save(kRanks), after_load(kRanks);
  frugal_powersgd_options o = defaults();
  o.start_iter = 0;
  CGroup g(kRanks);
  g.run([&](int rank, frugal_comm* comm) {
    frugal_powersgd_state* state = nullptr;
    ASSERT_EQ(frugal_powersgd_state_create(&state), FRUGAL_OK);
    for (int step = 0; step < 2; ++step) {
      auto data = inputs(rank, step);
      auto tensors = c_tensors(data);
      ASSERT_EQ(frugal_powersgd_allreduce(comm, tensors.data(), tensors.size(), state, &o),
                FRUGAL_OK);
    }
    size_t size = 0;
    ASSERT_EQ(frugal_powersgd_state_save_size(state, &size), FRUGAL_OK);
    auto& image = images[std::size_t(rank)];
    image.resize(size);
    size_t written = 0;
    EXPECT_EQ(frugal_powersgd_state_save(state, image.data(), size - 1, &written),
              FRUGAL_ERR_INVALID_ARGUMENT);
    ASSERT_EQ(frugal_powersgd_state_save(state, image.data(), size, &written), FRUGAL_OK);
    EXPECT_EQ(written, size);
    auto data = inputs(rank, 2);
    auto tensors = c_tensors(data);
    ASSERT_EQ(frugal_powersgd_allreduce(comm, tensors.data(), tensors.size(), state, &o),
              FRUGAL_OK);
    after_save[std::size_t(rank)] = data[0];
    // A fresh state from the image redoes step 2 with the same bits.
    frugal_powersgd_state* restored = nullptr;
    ASSERT_EQ(frugal_powersgd_state_create(&restored), FRUGAL_OK);
    ASSERT_EQ(frugal_powersgd_state_load(restored, image.data(), image.size()), FRUGAL_OK);
    uint64_t steps = 0;
    ASSERT_EQ(frugal_powersgd_state_steps(restored, &steps), FRUGAL_OK);
    EXPECT_EQ(steps, 2u);
    auto again = inputs(rank, 2);
    auto again_tensors = c_tensors(again);
    ASSERT_EQ(
        frugal_powersgd_allreduce(comm, again_tensors.data(), again_tensors.size(), restored, &o),
        FRUGAL_OK)
        << frugal_last_error_message();
    after_load[std::size_t(rank)] = again[0];
    // A corrupted image is refused and leaves the state as it was.
    auto corrupt = image;
    corrupt[corrupt.size() / 2] ^= 0x40;
    EXPECT_EQ(frugal_powersgd_state_load(restored, corrupt.data(), corrupt.size()),
              FRUGAL_ERR_INVALID_ARGUMENT);
    EXPECT_NE(std::string(frugal_last_error_message()).find("PowerSgdState image"),
              std::string::npos);
    ASSERT_EQ(frugal_powersgd_state_steps(restored, &steps), FRUGAL_OK);
    EXPECT_EQ(steps, 3u);
    EXPECT_EQ(frugal_powersgd_state_load(restored, nullptr, 4), FRUGAL_ERR_INVALID_ARGUMENT);
    ASSERT_EQ(frugal_powersgd_state_reset(restored), FRUGAL_OK);
    ASSERT_EQ(frugal_powersgd_state_steps(restored, &steps), FRUGAL_OK);
    EXPECT_EQ(steps, 3u);
    frugal_powersgd_state_destroy(restored);
    frugal_powersgd_state_destroy(state);
  });
  for (int r = 0; r < kRanks; ++r)
    EXPECT_EQ(after_load[std::size_t(r)], after_save[std::size_t(r)]);
  frugal_powersgd_state_destroy(nullptr);
}

}  // namespace
