// powersgd_allreduce in-process (loopback, one thread per rank): the serial reference for
// P = 1..8, bad parameters, disagreements, layouts, checkpoints and NaN/Inf.
#include "frugal/collectives/powersgd.hpp"

#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <limits>
#include <memory>
#include <mutex>
#include <optional>
#include <ostream>
#include <string>
#include <thread>
#include <vector>

#include "forwarding_transport.hpp"
#include "frugal/loopback.hpp"
#include "loopback_harness.hpp"
#include "powersgd_agreement.hpp"
#include "powersgd_reference.hpp"

namespace frugal {
namespace {

using testing::case_inputs;
using testing::PowerSgdReference;
using testing::relative_error;
using testing::Shape;

// Compressible and not, 1-D (rows x 1 and 1 x cols), lane and block tails.
const std::vector<Shape> kShapes = {{16, 8}, {7, 1}, {33, 17}, {3, 3}, {1, 40}, {24, 24}, {64, 9}};

std::vector<PowerSgdTensor> views(std::vector<std::vector<float>>& data,
                                  const std::vector<Shape>& shapes) {
  std::vector<PowerSgdTensor> out;
  for (std::size_t t = 0; t < shapes.size(); ++t) {
    out.push_back({std::span<float>(data[t]), shapes[t].rows, shapes[t].cols});
  }
  return out;
}

struct Case {
  int ranks;
  int r;
  std::uint64_t start_iter;
  ReduceOp op = ReduceOp::Average;
  bool feedback = true;
};

void PrintTo(const Case& c, std::ostream* os) {
  *os << "P" << c.ranks << "_r" << c.r << "_start" << c.start_iter << "_"
      << (c.op == ReduceOp::Sum ? "sum" : "avg") << (c.feedback ? "" : "_noEF");
}

class PowerSgdLoopback : public ::testing::TestWithParam<Case> {};

TEST_P(PowerSgdLoopback, MatchesTheSerialReferenceOnEveryRank) {
  const Case c = GetParam();
  constexpr int kSteps = 6;
  PowerSgdOptions options;
  options.rank = c.r;
  options.start_iter = c.start_iter;
  options.op = c.op;
  options.error_feedback = c.feedback;
  options.seed = 11;
  // results[rank][step][tensor]
  std::vector<std::vector<std::vector<std::vector<float>>>> results(
      static_cast<std::size_t>(c.ranks));
  std::vector<std::vector<PowerSgdStats>> stats(static_cast<std::size_t>(c.ranks));
  testing::run_ranks(c.ranks, [&](Communicator& comm) {
    PowerSgdState state;
    auto& mine = results[static_cast<std::size_t>(comm.rank())];
    for (int step = 0; step < kSteps; ++step) {
      // Tensor 0 is zero on the first compressed step: its Q columns die and are drawn again.
      auto data = case_inputs(comm.rank(), step, kShapes, 0, int(c.start_iter) + 1);
      auto tensors = views(data, kShapes);
      PowerSgdStats s;
      PowerSgdOptions o = options;
      o.stats = &s;
      powersgd_allreduce(comm, tensors, state, o);
      mine.push_back(data);
      stats[static_cast<std::size_t>(comm.rank())].push_back(s);
    }
    EXPECT_EQ(state.steps(), std::uint64_t{kSteps});
  });

  PowerSgdReference reference(c.ranks, kShapes, options);
  std::size_t compressed = 0;
  for (std::size_t t = 0; t < kShapes.size(); ++t) compressed += reference.compressed(t) ? 1 : 0;
  ASSERT_GT(compressed, 0u) << "the case compresses nothing";
  for (int step = 0; step < kSteps; ++step) {
    std::vector<std::vector<std::vector<float>>> inputs;
    for (int w = 0; w < c.ranks; ++w) {
      inputs.push_back(case_inputs(w, step, kShapes, 0, int(c.start_iter) + 1));
    }
    const auto want = reference.step(inputs);
    const bool dense = std::uint64_t(step) < c.start_iter;
    for (std::size_t t = 0; t < kShapes.size(); ++t) {
      const auto& got = results[0][std::size_t(step)][t];
      EXPECT_LT(relative_error(got, want[t]), 2e-4) << "step " << step << " tensor " << t;
      for (int q = 1; q < c.ranks; ++q) {
        const auto& other = results[std::size_t(q)][std::size_t(step)][t];
        ASSERT_EQ(std::memcmp(other.data(), got.data(), got.size() * sizeof(float)), 0)
            << "rank " << q << " differs from rank 0 at step " << step << " tensor " << t;
      }
    }
    for (int q = 0; q < c.ranks; ++q) {
      const PowerSgdStats& s = stats[std::size_t(q)][std::size_t(step)];
      EXPECT_EQ(s.dense_step, dense);
      EXPECT_EQ(s.compressed_tensors, dense ? 0 : compressed);
      if (c.ranks > 1) {
        EXPECT_GT(s.wire_bytes_sent, 0u);
      }
    }
  }
}

std::vector<Case> loopback_cases() {
  std::vector<Case> out;
  for (int p = 1; p <= 8; ++p) {
    for (int r : {1, 2, 4}) out.push_back({p, r, p % 2 == 0 ? 2u : 0u});
  }
  out.push_back({3, 2, 1, ReduceOp::Sum});
  out.push_back({4, 1, 0, ReduceOp::Sum});
  out.push_back({4, 2, 0, ReduceOp::Average, false});
  out.push_back({5, 4, 3, ReduceOp::Sum, false});
  return out;
}

INSTANTIATE_TEST_SUITE_P(Cases, PowerSgdLoopback, ::testing::ValuesIn(loopback_cases()));

// The reference itself must tell the variants apart, or the equality above proves little.
TEST(PowerSgdReferenceSanity, ErrorFeedbackWarmStartAndRankChangeTheResult) {
  const std::vector<Shape> shapes = {{24, 24}};
  auto run = [&](PowerSgdOptions o) {
    PowerSgdReference ref(3, shapes, o);
    std::vector<std::vector<double>> last;
    for (int step = 0; step < 4; ++step) {
      std::vector<std::vector<std::vector<float>>> inputs;
      for (int w = 0; w < 3; ++w) inputs.push_back(case_inputs(w, step, shapes));
      last = ref.step(inputs);
    }
    return last[0];
  };
  PowerSgdOptions base;
  base.rank = 2;
  base.start_iter = 0;
  PowerSgdOptions no_ef = base;
  no_ef.error_feedback = false;
  PowerSgdOptions rank1 = base;
  rank1.rank = 1;
  const auto a = run(base);
  std::vector<float> af(a.begin(), a.end());
  EXPECT_GT(relative_error(af, run(no_ef)), 1e-2);
  EXPECT_GT(relative_error(af, run(rank1)), 1e-2);
}

// What a compressed step sends: a 256 x 72 tensor at r = 1 travels as 256 + 72 floats instead
// of 18 432, so the step (agreement included) must send far fewer bytes than a dense one.
TEST(PowerSgdWire, ACompressedStepSendsTheFactorsNotTheTensor) {
  const std::vector<Shape> shapes = {{256, 72}, {72, 1}};
  std::vector<std::size_t> dense_bytes(4), compressed_bytes(4);
  testing::run_ranks(4, [&](Communicator& comm) {
    PowerSgdState state;
    PowerSgdOptions o;
    o.start_iter = 1;
    PowerSgdStats s;
    o.stats = &s;
    for (int step = 0; step < 2; ++step) {
      auto data = case_inputs(comm.rank(), step, shapes);
      auto tensors = views(data, shapes);
      powersgd_allreduce(comm, tensors, state, o);
      EXPECT_EQ(s.dense_step, step == 0);
      EXPECT_EQ(s.compressed_tensors, step == 0 ? 0u : 1u);
      (step == 0 ? dense_bytes : compressed_bytes)[std::size_t(comm.rank())] = s.wire_bytes_sent;
    }
  });
  std::printf("rank 0 sent %zu bytes on the dense step, %zu on the compressed one\n",
              dense_bytes[0], compressed_bytes[0]);
  for (std::size_t q = 0; q < 4; ++q) {
    // A ring allreduce sends about 2 (P - 1) / P of its buffer per rank.
    EXPECT_GT(dense_bytes[q], (256 * 72 + 72) * sizeof(float)) << "rank " << q;
    EXPECT_LT(compressed_bytes[q] * 20, dense_bytes[q]) << "rank " << q;
  }
}

// ---- parameters ---------------------------------------------------------------------------

void expect_invalid(const PowerSgdOptions& options, const std::string& field,
                    std::vector<Shape> shapes = {{16, 8}}, std::size_t short_by = 0) {
  testing::run_ranks(1, [&](Communicator& comm) {
    PowerSgdState state;
    auto data = case_inputs(0, 0, shapes);
    data[0].resize(data[0].size() - short_by);
    auto tensors = views(data, shapes);
    const auto before = data;
    try {
      powersgd_allreduce(comm, tensors, state, options);
      ADD_FAILURE() << "accepted a bad " << field;
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::InvalidArgument) << e.what();
      EXPECT_NE(std::string(e.what()).find(field), std::string::npos) << e.what();
    }
    EXPECT_EQ(data, before);
    EXPECT_FALSE(state.bound());
    EXPECT_EQ(state.steps(), 0u);
    // Nothing was sent: the communicator still works.
    auto good = case_inputs(0, 0, {{16, 8}});
    auto good_tensors = views(good, {{16, 8}});
    PowerSgdState fresh;
    EXPECT_NO_THROW(powersgd_allreduce(comm, good_tensors, fresh, PowerSgdOptions{}));
  });
}

TEST(PowerSgdParameters, BadOnesAreRefusedByName) {
  PowerSgdOptions o;
  o.rank = 0;
  expect_invalid(o, "rank");
  o.rank = -3;
  expect_invalid(o, "rank");
  o = {};
  o.min_compression_rate = 0.5;
  expect_invalid(o, "min_compression_rate");
  o.min_compression_rate = std::nan("");
  expect_invalid(o, "min_compression_rate");
  o.min_compression_rate = HUGE_VAL;
  expect_invalid(o, "min_compression_rate");
  o = {};
  o.op = static_cast<ReduceOp>(9);
  expect_invalid(o, "op");
  o = {};
  o.non_finite = static_cast<NonFiniteAction>(17);
  expect_invalid(o, "non_finite");
  o = {};
  o.timeout = std::chrono::milliseconds(0);
  expect_invalid(o, "timeout");
  expect_invalid(PowerSgdOptions{}, "tensors", {{16, 8}}, 3);
}

TEST(PowerSgdParameters, CompressionRuleFollowsThePaper) {
  PowerSgdOptions o;
  o.rank = 1;
  EXPECT_TRUE(powersgd_compresses(16, 8, o));     // 24 * 2 < 128
  EXPECT_FALSE(powersgd_compresses(3, 3, o));     // 6 * 2 >= 9
  EXPECT_FALSE(powersgd_compresses(1000, 1, o));  // a vector
  EXPECT_FALSE(powersgd_compresses(1, 1000, o));
  o.rank = 4;
  EXPECT_FALSE(powersgd_compresses(16, 8, o));  // 24 * 8 >= 128
  EXPECT_TRUE(powersgd_compresses(33, 17, o));  // 50 * 8 < 561
  o.min_compression_rate = 3;
  EXPECT_FALSE(powersgd_compresses(33, 17, o));  // 50 * 12 >= 561
}

// ---- disagreements and layouts ---------------------------------------------------------

// Runs `ranks` ranks, each calling once with what `configure` sets for its rank, and returns
// each rank's error code and message.
struct Outcome {
  std::optional<ErrorCode> code;
  std::string message;
};

std::vector<Outcome> run_disagreeing(
    int ranks, const std::function<void(int, PowerSgdOptions&, std::vector<Shape>&)>& configure,
    const std::function<void(int, PowerSgdState&, Communicator&)>& prepare = {}) {
  std::vector<Outcome> out(static_cast<std::size_t>(ranks));
  testing::run_ranks(
      ranks,
      [&](Communicator& comm) {
        PowerSgdState state;
        if (prepare) prepare(comm.rank(), state, comm);
        PowerSgdOptions o;
        o.start_iter = 0;
        std::vector<Shape> shapes = kShapes;
        configure(comm.rank(), o, shapes);
        auto data = case_inputs(comm.rank(), 0, shapes);
        auto tensors = views(data, shapes);
        const auto before = data;
        const auto steps = state.steps();
        try {
          powersgd_allreduce(comm, tensors, state, o);
        } catch (const Error& e) {
          out[std::size_t(comm.rank())] = {e.code(), e.what()};
          EXPECT_EQ(data, before) << "a refused call changed the tensors";
          EXPECT_EQ(state.steps(), steps) << "a refused call advanced the state";
        }
      },
      std::chrono::seconds(20), /*fail_fast=*/false);
  return out;
}

void expect_mismatch_everywhere(const std::vector<Outcome>& outcomes, const std::string& words) {
  for (std::size_t q = 0; q < outcomes.size(); ++q) {
    ASSERT_TRUE(outcomes[q].code.has_value()) << "rank " << q << " went on";
    EXPECT_EQ(*outcomes[q].code, ErrorCode::Mismatch) << outcomes[q].message;
    EXPECT_NE(outcomes[q].message.find(words), std::string::npos) << outcomes[q].message;
  }
}

TEST(PowerSgdAgreement, RanksDisagreeingOnTheRankAllGetMismatch) {
  for (int ranks : {2, 3, 5}) {
    expect_mismatch_everywhere(run_disagreeing(ranks, [](int rank, PowerSgdOptions& o,
                                                         auto&) { o.rank = rank == 1 ? 2 : 1; }),
                               "rank r");
  }
}

TEST(PowerSgdAgreement, EveryOtherTermIsAgreedOn) {
  const int n = 3;
  expect_mismatch_everywhere(run_disagreeing(n,
                                             [](int rank, PowerSgdOptions& o, auto&) {
                                               if (rank == 2) o.op = ReduceOp::Sum;
                                             }),
                             "op");
  expect_mismatch_everywhere(
      run_disagreeing(n, [](int rank, PowerSgdOptions& o, auto&) { o.seed = rank == 0 ? 1 : 0; }),
      "seed");
  expect_mismatch_everywhere(run_disagreeing(n, [](int rank, PowerSgdOptions& o,
                                                   auto&) { o.start_iter = rank == 1 ? 5 : 0; }),
                             "start_iter");
  expect_mismatch_everywhere(
      run_disagreeing(n, [](int rank, PowerSgdOptions& o, auto&) { o.error_feedback = rank != 1; }),
      "error_feedback");
  expect_mismatch_everywhere(
      run_disagreeing(n, [](int rank, PowerSgdOptions& o,
                            auto&) { o.min_compression_rate = rank == 1 ? 2.5 : 2.0; }),
      "min_compression_rate");
  // Same number of tensors and elements, another shape.
  expect_mismatch_everywhere(run_disagreeing(n,
                                             [](int rank, PowerSgdOptions&, std::vector<Shape>& s) {
                                               if (rank == 1) s[0] = {8, 16};
                                             }),
                             "tensor shapes");
  expect_mismatch_everywhere(run_disagreeing(n,
                                             [](int rank, PowerSgdOptions&, std::vector<Shape>& s) {
                                               if (rank == 0) s.pop_back();
                                             }),
                             "number of tensors");
  // A state one step ahead on one rank (e.g. restored from another checkpoint).
  expect_mismatch_everywhere(run_disagreeing(
                                 n, [](int, PowerSgdOptions&, auto&) {},
                                 [](int rank, PowerSgdState& state, Communicator&) {
                                   if (rank == 1) {
                                     PowerSgdState other;
                                     std::vector<float> one(16 * 8, 1.0f);
                                     // Advance on a single-rank group of its own, then carry the
                                     // image over.
                                     testing::run_ranks(1, [&](Communicator& solo) {
                                       PowerSgdTensor t{std::span<float>(one), 16, 8};
                                       powersgd_allreduce(
                                           solo, std::span<const PowerSgdTensor>(&t, 1), other, {});
                                     });
                                     auto image = other.save();
                                     state.restore(image);
                                     state.reset();  // keeps the step, drops the layout
                                   }
                                 }),
                             "step");
}

TEST(PowerSgdState, ReuseWithAnotherLayoutIsMismatchOnEveryRank) {
  // Every rank's state is bound to kShapes with r = 1; the next call keeps the shapes and
  // changes r on every rank (so the ranks agree) -> the states refuse.
  std::vector<Outcome> out(3);
  testing::run_ranks(
      3,
      [&](Communicator& comm) {
        PowerSgdState state;
        PowerSgdOptions o;
        o.start_iter = 0;
        auto data = case_inputs(comm.rank(), 0, kShapes);
        auto tensors = views(data, kShapes);
        powersgd_allreduce(comm, tensors, state, o);
        o.rank = 2;
        try {
          powersgd_allreduce(comm, tensors, state, o);
        } catch (const Error& e) {
          out[std::size_t(comm.rank())] = {e.code(), e.what()};
        }
        EXPECT_EQ(state.steps(), 1u);
        ASSERT_TRUE(state.layout().has_value());
        EXPECT_EQ(state.layout()->approximation_rank, 1);
      },
      std::chrono::seconds(20), false);
  expect_mismatch_everywhere(out, "rank r 1 -> 2");
}

TEST(PowerSgdState, OneRanksStaleStateIsMismatchOnEveryRank) {
  // Rank 0 brings a state bound (at step 1) to other shapes; the others bring fresh states that
  // they advanced once with the right shapes.
  std::vector<Outcome> out(3);
  testing::run_ranks(
      3,
      [&](Communicator& comm) {
        PowerSgdOptions o;
        o.start_iter = 0;
        std::vector<Shape> other = {{20, 10}};
        PowerSgdState state;
        auto data = case_inputs(comm.rank(), 0, kShapes);
        auto tensors = views(data, kShapes);
        auto odd = case_inputs(comm.rank(), 0, other);
        auto odd_tensors = views(odd, other);
        // Both calls on every rank, in the same order; only which state goes where differs.
        PowerSgdState spare;
        powersgd_allreduce(comm, odd_tensors, comm.rank() == 0 ? state : spare, o);
        PowerSgdState spare2;
        powersgd_allreduce(comm, tensors, comm.rank() == 0 ? spare2 : state, o);
        try {
          powersgd_allreduce(comm, tensors, state, o);
        } catch (const Error& e) {
          out[std::size_t(comm.rank())] = {e.code(), e.what()};
        }
      },
      std::chrono::seconds(20), false);
  expect_mismatch_everywhere(out, "layout");
  EXPECT_NE(out[0].message.find("this rank's PowerSgdState"), std::string::npos) << out[0].message;
  EXPECT_NE(out[1].message.find("other rank"), std::string::npos) << out[1].message;
}

// ---- checkpoints -----------------------------------------------------------------------

TEST(PowerSgdState, SaveAndRestoreResumeTheSameRun) {
  constexpr int kRanks = 3;
  PowerSgdOptions o;
  o.rank = 2;
  o.start_iter = 1;
  std::vector<std::vector<std::byte>> images(kRanks);
  std::vector<std::vector<std::vector<float>>> straight(kRanks), resumed(kRanks);
  testing::run_ranks(kRanks, [&](Communicator& comm) {
    const auto me = std::size_t(comm.rank());
    PowerSgdState state;
    for (int step = 0; step < 5; ++step) {
      if (step == 3) images[me] = state.save();
      auto data = case_inputs(comm.rank(), step, kShapes);
      auto tensors = views(data, kShapes);
      powersgd_allreduce(comm, tensors, state, o);
      if (step >= 3) straight[me].insert(straight[me].end(), data.begin(), data.end());
    }
    PowerSgdState restored;
    restored.restore(images[me]);
    EXPECT_EQ(restored.steps(), 3u);
    EXPECT_EQ(restored.save(), images[me]);
    for (int step = 3; step < 5; ++step) {
      auto data = case_inputs(comm.rank(), step, kShapes);
      auto tensors = views(data, kShapes);
      powersgd_allreduce(comm, tensors, restored, o);
      resumed[me].insert(resumed[me].end(), data.begin(), data.end());
    }
    EXPECT_EQ(restored.save(), state.save());
  });
  for (int q = 0; q < kRanks; ++q) EXPECT_EQ(resumed[std::size_t(q)], straight[std::size_t(q)]);
  // Each rank's image is its own (its residuals).
  EXPECT_NE(images[0], images[1]);
}

TEST(PowerSgdState, MalformedImagesAreRefusedAndLeaveTheStateAlone) {
  PowerSgdState state;
  testing::run_ranks(1, [&](Communicator& comm) {
    PowerSgdOptions o;
    o.start_iter = 0;
    auto data = case_inputs(0, 0, kShapes);
    auto tensors = views(data, kShapes);
    powersgd_allreduce(comm, tensors, state, o);
  });
  // Rank 1 alone: no error feedback is left over (the approximation of the mean of one rank is
  // still lossy, so residuals are non-zero).
  const auto image = state.save();
  ASSERT_FALSE(state.residual(0).empty());
  auto refuse = [&](std::vector<std::byte> bad, const std::string& why) {
    PowerSgdState target;
    target.restore(image);
    try {
      target.restore(bad);
      ADD_FAILURE() << "accepted: " << why;
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::InvalidArgument) << why;
      EXPECT_NE(std::string(e.what()).find("PowerSgdState image"), std::string::npos) << e.what();
    }
    EXPECT_EQ(target.save(), image) << why << ": the state changed";
  };
  for (std::size_t at : {std::size_t{0}, std::size_t{5}, std::size_t{20}, image.size() / 2,
                         image.size() - 12, image.size() - 1}) {
    auto bad = image;
    bad[at] ^= std::byte{0x10};
    refuse(bad, "bit flipped at byte " + std::to_string(at));
  }
  refuse({image.begin(), image.begin() + std::ptrdiff_t(image.size() / 3)}, "truncated");
  refuse({}, "empty");
  auto longer = image;
  longer.push_back(std::byte{0});
  refuse(longer, "trailing byte");
}

// ---- NaN and Inf -----------------------------------------------------------------------

TEST(PowerSgdNonFinite, DefaultIsInvalidArgumentOnEveryRankAndTouchesNothing) {
  std::vector<Outcome> out(3);
  testing::run_ranks(
      3,
      [&](Communicator& comm) {
        PowerSgdState state;
        PowerSgdOptions o;
        o.start_iter = 0;
        auto data = case_inputs(comm.rank(), 0, kShapes);
        if (comm.rank() == 2) data[2][5] = std::nanf("");
        auto tensors = views(data, kShapes);
        const auto before = data;
        try {
          powersgd_allreduce(comm, tensors, state, o);
        } catch (const Error& e) {
          out[std::size_t(comm.rank())] = {e.code(), e.what()};
        }
        EXPECT_EQ(std::memcmp(data[0].data(), before[0].data(), before[0].size() * 4), 0);
        EXPECT_EQ(state.steps(), 0u);
        // The communicator stays usable.
        auto clean = case_inputs(comm.rank(), 1, kShapes);
        auto clean_tensors = views(clean, kShapes);
        EXPECT_NO_THROW(powersgd_allreduce(comm, clean_tensors, state, o));
      },
      std::chrono::seconds(20), false);
  for (const Outcome& o : out) {
    ASSERT_TRUE(o.code.has_value());
    EXPECT_EQ(*o.code, ErrorCode::InvalidArgument);
    EXPECT_NE(o.message.find("non_finite"), std::string::npos) << o.message;
  }
}

TEST(PowerSgdNonFinite, SkipKeepsEverythingAndZeroZeroes) {
  testing::run_ranks(3, [&](Communicator& comm) {
    PowerSgdState state;
    PowerSgdOptions o;
    o.start_iter = 0;
    o.non_finite = NonFiniteAction::Skip;
    PowerSgdStats s;
    o.stats = &s;
    auto data = case_inputs(comm.rank(), 0, kShapes);
    if (comm.rank() == 0) data[0][0] = INFINITY;
    auto tensors = views(data, kShapes);
    const auto before = data;
    powersgd_allreduce(comm, tensors, state, o);
    EXPECT_TRUE(s.non_finite_skipped);
    EXPECT_EQ(state.steps(), 0u);
    EXPECT_EQ(std::memcmp(data[1].data(), before[1].data(), before[1].size() * 4), 0);

    o.non_finite = NonFiniteAction::Zero;
    PowerSgdState zeroed_state;
    auto zeroed = case_inputs(comm.rank(), 0, kShapes);
    if (comm.rank() == 0) zeroed[0][0] = INFINITY;
    auto zeroed_tensors = views(zeroed, kShapes);
    powersgd_allreduce(comm, zeroed_tensors, zeroed_state, o);
    EXPECT_EQ(s.non_finite_zeroed, comm.rank() == 0 ? 1u : 0u);
    EXPECT_FALSE(s.non_finite_skipped);
    EXPECT_EQ(zeroed_state.steps(), 1u);
    for (const auto& t : zeroed) {
      for (float v : t) ASSERT_TRUE(std::isfinite(v));
    }
  });
}

}  // namespace
}  // namespace frugal

namespace frugal {
namespace {

// Sets the second-to-last float64 of the first message rank 0 receives to NaN: the sum of the
// agreement's first flag (NaN/Inf in some rank's input).
void nan_first_flag_sum(std::span<std::byte> buffer, std::size_t bytes) {
  if (bytes < 16) return;
  const double nan = std::numeric_limits<double>::quiet_NaN();
  std::memcpy(buffer.data() + bytes - 16, &nan, sizeof nan);
}

// The agreement's flag counts are sums of 0s and 1s; a NaN one (or a fraction, or one beyond
// the ranks) comes from a corrupt peer and is a disagreement, Mismatch on that rank. It was cast
// to an integer (undefined behaviour, found by fuzz_state_images; on x86 a huge count, so the
// step went on as a NaN skip).
TEST(PowerSgdAgreement, ACorruptFlagSumFromAPeerIsAMismatch) {
  LoopbackGroup group = make_loopback_group(2);
  std::vector<std::unique_ptr<Communicator>> comms;
  for (auto& t : group.transports) {
    const bool armed = t->rank() == 0;
    comms.push_back(std::make_unique<Communicator>(
        std::make_unique<testing::CorruptFirstReceive>(std::move(t), armed, nan_first_flag_sum),
        CommunicatorOptions{.timeout = std::chrono::seconds(20)}));
  }
  std::optional<Error> zero_error;
  std::optional<detail::PowerSgdVerdict> zero_verdict;
  std::vector<std::thread> threads;
  for (auto& comm : comms) {
    threads.emplace_back([&, c = comm.get()] {
      detail::PowerSgdTerms terms;
      terms.tensors = 2;
      terms.rank = 1;
      terms.step = 5;
      std::size_t sent = 0;
      try {
        const detail::PowerSgdVerdict v =
            detail::powersgd_agree(*c, terms, false, "", CollectiveOptions{}, sent);
        if (c->rank() == 0) zero_verdict = v;
      } catch (const Error& e) {
        if (c->rank() == 0) zero_error = e;
      }
    });
  }
  for (auto& t : threads) t.join();
  ASSERT_TRUE(zero_error.has_value())
      << "rank 0 agreed (NaN step: " << (zero_verdict && zero_verdict->non_finite) << ")";
  EXPECT_EQ(zero_error->code(), ErrorCode::Mismatch);
  EXPECT_NE(std::string(zero_error->what()).find("ranks disagree on one of"), std::string::npos)
      << zero_error->what();
}

}  // namespace
}  // namespace frugal
