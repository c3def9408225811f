// gTop-k (CompressionConfig::gtopk) over in-process ranks: bit-identical to the serial reference
// at P = 1..8 over steps (so the residuals it gives back are right too), no mass lost, O(k) bytes
// per message, and the bad combinations refused.
#include <gtest/gtest.h>

#include <cmath>
#include <mutex>
#include <numeric>
#include <sstream>
#include <vector>

#include "frugal/collectives/allreduce.hpp"
#include "gtopk_reference.hpp"
#include "loopback_harness.hpp"

namespace frugal {
namespace {

using testing::run_ranks;

AllreduceOptions gtopk_options(double density, bool feedback, ReduceOp op) {
  AllreduceOptions o;
  o.compression.method = compression::Method::TopK;
  o.compression.density = density;
  o.compression.gtopk = true;
  o.error_feedback = feedback;
  o.op = op;
  o.seed = 7;
  return o;
}

using Case = std::tuple<int, double, bool, ReduceOp>;
class Gtopk : public ::testing::TestWithParam<Case> {};

TEST_P(Gtopk, MatchesTheSerialReferenceOverSteps) {
  const auto [ranks, density, feedback, op] = GetParam();
  constexpr std::size_t kCount = 3001;
  constexpr int kSteps = 3;
  const AllreduceOptions options = gtopk_options(density, feedback, op);
  const auto [expected, expected_residual] =
      testing::reference_steps(ranks, kCount, options, kSteps);
  std::mutex mutex;
  std::vector<std::vector<std::vector<float>>> got(
      kSteps, std::vector<std::vector<float>>(static_cast<std::size_t>(ranks)));
  std::vector<std::vector<std::vector<float>>> residual = got;
  std::vector<std::size_t> max_message(static_cast<std::size_t>(ranks), 0);
  run_ranks(ranks, [&](Communicator& comm) {
    AllreduceState state;
    AllreduceOptions mine = options;
    mine.state = feedback ? &state : nullptr;
    AllreduceStats stats;
    mine.stats = &stats;
    const auto r = static_cast<std::size_t>(comm.rank());
    for (int step = 0; step < kSteps; ++step) {
      std::vector<float> data = testing::gtopk_input(comm.rank(), step, kCount);
      allreduce(comm, std::span<float>(data), mine);
      EXPECT_EQ(stats.algorithm, AllreduceAlgorithm::SparseRecursiveDoubling);
      std::lock_guard lock(mutex);
      got[static_cast<std::size_t>(step)][r] = std::move(data);
      const auto res = state.worker_residual();
      residual[static_cast<std::size_t>(step)][r].assign(res.begin(), res.end());
    }
  });
  const std::size_t k = static_cast<std::size_t>(std::ceil(density * kCount));
  for (int step = 0; step < kSteps; ++step) {
    const auto s = static_cast<std::size_t>(step);
    for (int r = 0; r < ranks; ++r) {
      const auto ur = static_cast<std::size_t>(r);
      ASSERT_EQ(got[s][ur], expected[s]) << "step " << step << " rank " << r;
      if (feedback) {
        ASSERT_EQ(residual[s][ur], expected_residual[s][ur]) << "step " << step << " rank " << r;
      }
    }
    // The result holds at most k entries: the sum cut back to k.
    const auto nonzero = static_cast<std::size_t>(
        std::count_if(expected[s].begin(), expected[s].end(), [](float x) { return x != 0; }));
    EXPECT_LE(nonzero, k);
  }
}

std::string case_name(const ::testing::TestParamInfo<Case>& info) {
  const auto [ranks, density, feedback, op] = info.param;
  std::ostringstream name;  // (string + string chains trip GCC 12's -Wrestrict)
  name << "p" << ranks << "_d" << static_cast<int>(density * 1000) << (feedback ? "_ef" : "_noef")
       << (op == ReduceOp::Sum ? "_sum" : "_avg");
  return name.str();
}

INSTANTIATE_TEST_SUITE_P(SparseAllreduce, Gtopk,
                         ::testing::Combine(::testing::Values(1, 2, 3, 4, 5, 6, 7, 8),
                                            ::testing::Values(0.01, 0.2),
                                            ::testing::Values(true, false),
                                            ::testing::Values(ReduceOp::Sum, ReduceOp::Average)),
                         case_name);

// With error feedback nothing is lost: over the ranks, what went in (inputs of every step) equals
// what came out (the results) plus what the residuals still hold. Without the give-back the
// entries a cut drops would vanish and this fails.
TEST(GtopkMass, InputsEqualResultsPlusResiduals) {
  constexpr int kRanks = 5;
  constexpr std::size_t kCount = 2000;
  constexpr int kSteps = 4;
  std::mutex mutex;
  std::vector<double> in(kCount, 0.0), out(kCount, 0.0), left(kCount, 0.0);
  run_ranks(kRanks, [&](Communicator& comm) {
    AllreduceState state;
    AllreduceOptions o = gtopk_options(0.02, true, ReduceOp::Sum);
    o.state = &state;
    std::vector<double> mine_in(kCount, 0.0), mine_out(kCount, 0.0);
    for (int step = 0; step < kSteps; ++step) {
      std::vector<float> data = testing::gtopk_input(comm.rank(), step, kCount);
      for (std::size_t i = 0; i < kCount; ++i) mine_in[i] += data[i];
      allreduce(comm, std::span<float>(data), o);
      // Every rank holds the sum; count it once.
      if (comm.rank() == 0) {
        for (std::size_t i = 0; i < kCount; ++i) mine_out[i] += data[i];
      }
    }
    std::lock_guard lock(mutex);
    const auto res = state.worker_residual();
    for (std::size_t i = 0; i < kCount; ++i) {
      in[i] += mine_in[i];
      out[i] += mine_out[i];
      left[i] += res[i];
    }
  });
  for (std::size_t i = 0; i < kCount; ++i) {
    ASSERT_EQ(in[i], out[i] + left[i]) << "element " << i;
  }
}

TEST(GtopkWire, EveryMessageHoldsAtMostKEntries) {
  // P = 8, k = 1% of 100000: three swaps of at most k entries, 4 bytes per value plus the coded
  // indices (at most 3 bytes each here), where the plain sparse recursive doubling doubles.
  constexpr std::size_t kCount = 100'000;
  std::mutex mutex;
  std::vector<std::size_t> gtopk_bytes, plain_bytes;
  run_ranks(8, [&](Communicator& comm) {
    for (bool g : {true, false}) {
      AllreduceOptions o = gtopk_options(0.01, false, ReduceOp::Sum);
      o.compression.gtopk = g;
      o.algorithm = AllreduceAlgorithm::SparseRecursiveDoubling;
      AllreduceStats stats;
      o.stats = &stats;
      std::vector<float> data = testing::gtopk_input(comm.rank(), 0, kCount);
      allreduce(comm, std::span<float>(data), o);
      std::lock_guard lock(mutex);
      (g ? gtopk_bytes : plain_bytes).push_back(stats.wire_bytes_sent);
    }
  });
  const std::size_t k = 1000;
  for (std::size_t r = 0; r < gtopk_bytes.size(); ++r) {
    EXPECT_LE(gtopk_bytes[r], 3 * (16 + 7 * k + 2 + 64)) << r;
    EXPECT_LT(gtopk_bytes[r], plain_bytes[r] * 2 / 3) << r;
  }
}

TEST(GtopkOptions, RefusedWhereItCannotRun) {
  run_ranks(2, [&](Communicator& comm) {
    std::vector<float> data(100, 1.0f);
    AllreduceOptions o = gtopk_options(0.1, false, ReduceOp::Sum);
    o.algorithm = AllreduceAlgorithm::SparseAllgather;
    try {
      allreduce(comm, std::span<float>(data), o);
      ADD_FAILURE() << "sparse_allgather with gtopk ran";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::InvalidArgument);
      EXPECT_NE(std::string(e.what()).find("gtopk"), std::string::npos) << e.what();
    }
    o = gtopk_options(0.1, false, ReduceOp::Sum);
    o.compression.method = compression::Method::OneBit;
    try {
      allreduce(comm, std::span<float>(data), o);
      ADD_FAILURE() << "onebit with gtopk ran";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::InvalidArgument);
      EXPECT_NE(std::string(e.what()).find("gtopk"), std::string::npos) << e.what();
    }
  });
}

TEST(GtopkOptions, RanksThatDisagreeAllThrowMismatch) {
  std::mutex mutex;
  std::vector<ErrorCode> codes;
  run_ranks(3, [&](Communicator& comm) {
    std::vector<float> data(100, 1.0f);
    AllreduceOptions o = gtopk_options(0.1, false, ReduceOp::Sum);
    o.algorithm = AllreduceAlgorithm::SparseRecursiveDoubling;
    o.compression.gtopk = comm.rank() != 1;
    try {
      allreduce(comm, std::span<float>(data), o);
    } catch (const Error& e) {
      std::lock_guard lock(mutex);
      codes.push_back(e.code());
    }
  });
  ASSERT_EQ(codes.size(), 3u);
  for (const ErrorCode c : codes) EXPECT_EQ(c, ErrorCode::Mismatch);
}

}  // namespace
}  // namespace frugal
