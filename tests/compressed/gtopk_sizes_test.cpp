// gTop-k at the sizes and densities where its sparse messages are as large as dense ones or larger:
// a one-element buffer (k = 1: 16 + 4 + 2 bytes against a dense 16 + 4) and densities up to 1
// (every element an entry, the indices a bitmap). gTop-k never turns a vector dense, so every
// receive buffer must hold the largest sparse form; these once failed with Mismatch (a truncated
// receive; on Open MPI's shared-memory single copy, a heap overwrite). Over in-process ranks
// P = 1..8, bit-identical to the serial reference (results and residuals), at most k non-zeros.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <mutex>
#include <sstream>
#include <tuple>
#include <vector>

#include "frugal/collectives/allreduce.hpp"
#include "gtopk_reference.hpp"
#include "loopback_harness.hpp"

namespace frugal {
namespace {

using testing::run_ranks;

// `tiny` gives k = 1 at every size here (k is at least 1).
constexpr double kTiny = 1e-6;

using Case = std::tuple<int, std::size_t, double, compression::TopKSelection>;
class GtopkSizes : public ::testing::TestWithParam<Case> {};

TEST_P(GtopkSizes, MatchesTheSerialReference) {
  const auto [ranks, count, density, selection] = GetParam();
  constexpr int kSteps = 2;
  AllreduceOptions options;
  options.compression.method = compression::Method::TopK;
  options.compression.density = density;
  options.compression.selection = selection;
  options.compression.gtopk = true;
  options.error_feedback = true;
  // Average on odd P (the folded ranks' path with a division), Sum on even.
  options.op = ranks % 2 == 1 ? ReduceOp::Average : ReduceOp::Sum;
  options.seed = 11;

  const auto [expected, expected_residual] =
      testing::reference_steps(ranks, count, options, kSteps);

  std::mutex mutex;
  std::vector<std::vector<std::vector<float>>> got(
      kSteps, std::vector<std::vector<float>>(static_cast<std::size_t>(ranks)));
  std::vector<std::vector<std::vector<float>>> residual = got;
  run_ranks(ranks, [&](Communicator& comm) {
    AllreduceState state;
    AllreduceOptions mine = options;
    mine.state = &state;
    const auto r = static_cast<std::size_t>(comm.rank());
    for (int step = 0; step < kSteps; ++step) {
      std::vector<float> data = testing::gtopk_input(comm.rank(), step, count);
      allreduce(comm, std::span<float>(data), mine);
      std::lock_guard lock(mutex);
      got[static_cast<std::size_t>(step)][r] = std::move(data);
      const auto res = state.worker_residual();
      residual[static_cast<std::size_t>(step)][r].assign(res.begin(), res.end());
    }
  });

  const auto k =
      static_cast<std::size_t>(std::max(1.0, std::ceil(density * static_cast<double>(count))));
  for (int step = 0; step < kSteps; ++step) {
    const auto s = static_cast<std::size_t>(step);
    for (int r = 0; r < ranks; ++r) {
      const auto ur = static_cast<std::size_t>(r);
      ASSERT_EQ(got[s][ur], expected[s]) << "step " << step << " rank " << r;
      ASSERT_EQ(residual[s][ur], expected_residual[s][ur]) << "step " << step << " rank " << r;
    }
    // The cut leaves at most k entries once two ranks' vectors have merged (one rank's own
    // selection, with sampled top-k, may hold more).
    if (ranks > 1) {
      const auto nonzero = static_cast<std::size_t>(
          std::count_if(expected[s].begin(), expected[s].end(), [](float x) { return x != 0; }));
      EXPECT_LE(nonzero, k) << "step " << step;
    }
  }
}

std::string case_name(const ::testing::TestParamInfo<Case>& info) {
  const auto [ranks, count, density, selection] = info.param;
  std::ostringstream name;
  name << "p" << ranks << "_n" << count << "_d"
       << (density == kTiny ? std::string("tiny") : std::to_string(std::lround(density * 100)))
       << (selection == compression::TopKSelection::Sampled ? "_sampled" : "");
  return name.str();
}

INSTANTIATE_TEST_SUITE_P(Exact, GtopkSizes,
                         ::testing::Combine(::testing::Values(1, 2, 3, 4, 5, 6, 7, 8),
                                            ::testing::Values<std::size_t>(1, 2, 3, 7, 64, 4097),
                                            ::testing::Values(kTiny, 0.5, 0.9, 1.0),
                                            ::testing::Values(compression::TopKSelection::Exact)),
                         case_name);

// Sampled selection sends up to k·(1 + tolerance) entries before the first cut.
INSTANTIATE_TEST_SUITE_P(Sampled, GtopkSizes,
                         ::testing::Combine(::testing::Values(2, 3, 4),
                                            ::testing::Values<std::size_t>(7, 4097),
                                            ::testing::Values(0.5, 0.9),
                                            ::testing::Values(compression::TopKSelection::Sampled)),
                         case_name);

}  // namespace
}  // namespace frugal
