// The pipelined sparse recursive doubling and segmented allgather on real processes, with the
// ranges made small (the test-only knob, set alike on every rank) so that a 3001-element buffer
// runs several: every rank's result, residual and dense-switch step equal the serial copy of the
// unpipelined algorithm's (the allgather: the serial reference's) at every step.
#include <gtest/gtest.h>

#include <cstring>
#include <vector>

#include "compressed_cases.hpp"
#include "compressed_reference.hpp"
#include "frugal/collectives/allreduce.hpp"
#include "test_communicator.hpp"
#include "unpipelined_sparse_reference.hpp"

namespace frugal {
namespace {

Communicator& comm() {
  return testing::shared_test_communicator();
}

// Whether any rank passes true.
bool any_rank(bool mine) {
  std::int32_t flag = mine ? 1 : 0;
  allreduce(comm(), std::span<std::int32_t>(&flag, 1));
  return flag > 0;
}

bool same_bits(std::span<const float> a, std::span<const float> b) {
  return a.size() == b.size() &&
         (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0);
}

TEST(MpiSparsePipeline, SparseRdEqualsTheUnpipelinedAlgorithm) {
  const int p = comm().size();
  const auto me = static_cast<std::size_t>(comm().rank());
  constexpr std::size_t kCount = 3001;
  const testing::SmallRanges small(500);  // 6 ranges
  for (const double density : {0.01, 0.4, 0.9}) {
    for (const bool feedback : {true, false}) {
      AllreduceOptions options;
      options.compression.method = compression::Method::TopK;
      options.compression.density = density;
      options.algorithm = AllreduceAlgorithm::SparseRecursiveDoubling;
      options.error_feedback = feedback;
      options.op = feedback ? ReduceOp::Average : ReduceOp::Sum;
      options.seed = 17;
      testing::UnpipelinedReference reference(p, kCount, options);
      AllreduceState state;
      AllreduceStats stats;
      options.state = &state;
      options.stats = &stats;
      for (int step = 0; step < 3; ++step) {
        SCOPED_TRACE("density " + std::to_string(density) + " feedback " +
                     std::to_string(feedback) + " step " + std::to_string(step));
        std::vector<std::vector<float>> inputs;
        for (int r = 0; r < p; ++r) {
          inputs.push_back(testing::case_input(r, static_cast<std::uint64_t>(step), kCount));
        }
        const testing::UnpipelinedReference::Step want = reference.step(inputs);
        std::vector<float> data = inputs[me];
        allreduce(comm(), std::span<float>(data), options);
        EXPECT_FALSE(any_rank(!same_bits(data, want.results[me])));
        EXPECT_FALSE(any_rank(stats.dense_switch_step != want.dense_switch_step[me]));
        if (feedback) {
          EXPECT_FALSE(any_rank(!same_bits(state.worker_residual(), want.residuals[me])));
        }
      }
    }
  }
}

TEST(MpiSparsePipeline, SegmentedAllgatherEqualsTheSerialReference) {
  const int p = comm().size();
  constexpr std::size_t kCount = 3001;
  const std::vector<std::size_t> segments = testing::segment_layout(kCount);
  const testing::SmallRanges small(20);  // three batches of segments
  for (const testing::MethodCase& m : testing::method_cases()) {
    if (m.name != "onebit" && m.name != "ternary" && m.name != "qsgd4") continue;
    SCOPED_TRACE(m.name);
    AllreduceOptions options;
    options.compression = m.config;
    options.algorithm = AllreduceAlgorithm::Allgather;
    options.op = ReduceOp::Average;
    options.segments = segments;
    options.seed = 19;
    testing::CompressedReference reference(p, kCount, options, options.algorithm);
    AllreduceState state;
    options.state = &state;
    for (int step = 0; step < 3; ++step) {
      std::vector<std::vector<float>> inputs;
      for (int r = 0; r < p; ++r) {
        inputs.push_back(testing::case_input(r, static_cast<std::uint64_t>(step), kCount));
      }
      const std::vector<float> want = reference.step(inputs);
      std::vector<float> data = inputs[static_cast<std::size_t>(comm().rank())];
      allreduce(comm(), std::span<float>(data), options);
      EXPECT_FALSE(any_rank(!same_bits(data, want))) << "step " << step;
    }
  }
}

}  // namespace
}  // namespace frugal
