// One check that in-process ranks compute what the serial reference computes, shared by the
// compressed allreduce tests with and without segments.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <vector>

#include "compressed_cases.hpp"
#include "compressed_reference.hpp"
#include "frugal/collectives/allreduce.hpp"
#include "loopback_harness.hpp"

namespace frugal::testing {

// `steps` allreduces of case_input on `ranks` in-process ranks, each rank with its own state:
// every rank's result equals CompressedReference's at every step (sparse recursive doubling to
// rounding: the same terms summed in tree order instead of rank order), is bit-identical on
// every rank, and each state counted every step.
inline void expect_matches_reference(int ranks, std::size_t count, const AllreduceOptions& options,
                                     int steps) {
  CompressedReference reference(ranks, count, options, options.algorithm);
  std::vector<std::vector<float>> expected;
  for (int step = 0; step < steps; ++step) {
    std::vector<std::vector<float>> inputs;
    for (int r = 0; r < ranks; ++r) inputs.push_back(case_input(r, step, count));
    expected.push_back(reference.step(inputs));
  }
  std::mutex mutex;
  std::vector<std::vector<std::vector<float>>> got(static_cast<std::size_t>(steps));
  run_ranks(ranks, [&](Communicator& comm) {
    AllreduceState state;
    AllreduceOptions mine = options;
    mine.state = &state;
    for (int step = 0; step < steps; ++step) {
      std::vector<float> data = case_input(comm.rank(), step, count);
      allreduce(comm, std::span<float>(data), mine);
      std::lock_guard lock(mutex);
      got[static_cast<std::size_t>(step)].push_back(std::move(data));
    }
    EXPECT_EQ(state.steps(), static_cast<std::uint64_t>(steps));
  });
  for (int step = 0; step < steps; ++step) {
    const std::vector<float>& want = expected[static_cast<std::size_t>(step)];
    const auto& results = got[static_cast<std::size_t>(step)];
    for (const auto& result : results) {
      ASSERT_EQ(result.size(), count);
      if (options.algorithm == AllreduceAlgorithm::SparseRecursiveDoubling) {
        for (std::size_t i = 0; i < count; ++i) {
          ASSERT_NEAR(result[i], want[i], 1e-5 * (1 + std::abs(want[i])))
              << "step " << step << " element " << i;
        }
      } else {
        ASSERT_EQ(result, want) << "step " << step;
      }
      ASSERT_EQ(
          count == 0 ? 0 : std::memcmp(result.data(), results[0].data(), count * sizeof(float)), 0)
          << "ranks differ at step " << step;
    }
  }
}

}  // namespace frugal::testing
