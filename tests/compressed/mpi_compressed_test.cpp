// The compressed allreduce on real processes: every method and algorithm against the serial
// reference (every rank rebuilds all ranks' inputs), and mismatches. Cross-rank checks use
// frugal's own collectives, so the same tests run under mpirun (mpi_main.cpp) and, without MPI,
// under scripts/launch (launch_main.cpp).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <ostream>
#include <string>
#include <tuple>
#include <vector>

#include "compressed_cases.hpp"
#include "compressed_reference.hpp"
#include "fault_transport.hpp"
#include "frugal/collectives/allreduce.hpp"
#include "frugal/collectives/collectives.hpp"
#include "gtopk_reference.hpp"
#include "test_communicator.hpp"

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

// gTop-k on real processes: this rank's result and residual equal the serial reference's at
// every step, for Sum and Average, with and without error feedback.
TEST(MpiGtopk, MatchesTheSerialReferenceOverSteps) {
  const int p = comm().size();
  constexpr std::size_t kCount = 5003;
  for (const bool feedback : {true, false}) {
    for (const ReduceOp op : {ReduceOp::Sum, ReduceOp::Average}) {
      AllreduceOptions options;
      options.compression.method = compression::Method::TopK;
      options.compression.density = 0.02;
      options.compression.gtopk = true;
      options.error_feedback = feedback;
      options.op = op;
      testing::GtopkReference reference(p, kCount, options);
      AllreduceState state;
      options.state = feedback ? &state : nullptr;
      for (int step = 0; step < 3; ++step) {
        std::vector<std::vector<float>> inputs;
        for (int r = 0; r < p; ++r) inputs.push_back(testing::gtopk_input(r, step, kCount));
        const std::vector<float> expected = reference.step(inputs);
        std::vector<float> data = inputs[static_cast<std::size_t>(comm().rank())];
        allreduce(comm(), std::span<float>(data), options);
        EXPECT_FALSE(any_rank(data != expected)) << "step " << step << " feedback " << feedback;
        if (feedback) {
          const auto mine = state.worker_residual();
          const auto want = reference.residual(comm().rank());
          EXPECT_FALSE(any_rank(!std::equal(mine.begin(), mine.end(), want.begin(), want.end())))
              << "residual, step " << step;
        }
      }
    }
  }
}

// gTop-k where its sparse messages reach or pass a dense vector's size (one element; densities up
// to 1): once a truncated receive (Mismatch) and, on Open MPI's shared-memory single copy, a heap
// overwrite. Results and residuals equal the serial reference's on every rank.
TEST(MpiGtopk, EverySizeAndDensity) {
  const int p = comm().size();
  for (const std::size_t count : {1, 2, 3, 7, 64, 4097}) {
    for (const double density : {1e-6, 0.5, 0.9, 1.0}) {
      AllreduceOptions options;
      options.compression.method = compression::Method::TopK;
      options.compression.density = density;
      options.compression.gtopk = true;
      options.op = p % 2 == 1 ? ReduceOp::Average : ReduceOp::Sum;
      testing::GtopkReference reference(p, count, options);
      AllreduceState state;
      options.state = &state;
      for (int step = 0; step < 2; ++step) {
        std::vector<std::vector<float>> inputs;
        for (int r = 0; r < p; ++r) inputs.push_back(testing::gtopk_input(r, step, count));
        const std::vector<float> expected = reference.step(inputs);
        std::vector<float> data = inputs[static_cast<std::size_t>(comm().rank())];
        allreduce(comm(), std::span<float>(data), options);
        const auto mine = state.worker_residual();
        const auto want = reference.residual(comm().rank());
        const bool wrong =
            data != expected || !std::equal(mine.begin(), mine.end(), want.begin(), want.end());
        ASSERT_FALSE(any_rank(wrong))
            << "n " << count << " density " << density << " step " << step;
      }
    }
  }
}

// A buffer size: `count`, plus the number of processes when `plus_ranks`.
struct Count {
  std::string name;
  std::size_t count;
  bool plus_ranks;
};

void PrintTo(const Count& c, std::ostream* os) {
  *os << c.name;
}

// Method with algorithm and size: one test each, so a failure names them.
class MpiCompressedAllreduce
    : public ::testing::TestWithParam<std::tuple<testing::MethodAlgorithm, Count>> {};

TEST_P(MpiCompressedAllreduce, MatchesTheSerialReferenceOverSteps) {
  const auto& [method_algorithm, size] = GetParam();
  const int p = comm().size();
  const std::size_t count = size.count + (size.plus_ranks ? static_cast<std::size_t>(p) : 0);
  const AllreduceAlgorithm algorithm = method_algorithm.algorithm;
  AllreduceOptions options;
  options.compression = method_algorithm.method.config;
  options.algorithm = algorithm;
  options.seed = 7;
  testing::CompressedReference reference(p, count, options, algorithm);
  AllreduceState state;
  options.state = &state;
  for (int step = 0; step < 3; ++step) {
    std::vector<std::vector<float>> inputs;
    for (int r = 0; r < p; ++r) inputs.push_back(testing::case_input(r, step, count));
    const std::vector<float> expected = reference.step(inputs);
    std::vector<float> data = inputs[static_cast<std::size_t>(comm().rank())];
    allreduce(comm(), std::span<float>(data), options);
    if (algorithm == AllreduceAlgorithm::SparseRecursiveDoubling) {
      for (std::size_t i = 0; i < count; ++i) {
        ASSERT_NEAR(data[i], expected[i], 1e-5 * (1 + std::abs(expected[i])));
      }
    } else {
      ASSERT_EQ(data, expected) << "step " << step;
    }
    std::vector<float> rank0 = data;
    broadcast(comm(), std::as_writable_bytes(std::span<float>(rank0)), 0);
    ASSERT_EQ(std::memcmp(rank0.data(), data.data(), count * sizeof(float)), 0) << "ranks differ";
  }
}

// e.g. onebit_two_phase_nPplus2
INSTANTIATE_TEST_SUITE_P(
    Processes, MpiCompressedAllreduce,
    ::testing::Combine(::testing::ValuesIn(testing::method_algorithms()),
                       ::testing::Values(Count{"n1", 1, false}, Count{"nPplus2", 2, true},
                                         Count{"n100003", 100'003, false})),
    [](const ::testing::TestParamInfo<std::tuple<testing::MethodAlgorithm, Count>>& info) {
      return testing::param_name(std::get<0>(info.param)) + "_" + std::get<1>(info.param).name;
    });

// Segmented buffers (tensor boundaries) on real processes: pieces cut by the two-phase chunks and
// per-tensor top-k, against the serial reference.
class MpiSegmentedAllreduce : public ::testing::TestWithParam<testing::MethodAlgorithm> {};

TEST_P(MpiSegmentedAllreduce, MatchesTheSerialReferenceOverSteps) {
  const testing::MethodAlgorithm& method_algorithm = GetParam();
  const int p = comm().size();
  const std::size_t count = 5003;
  const std::vector<std::size_t> segments = testing::segment_layout(count);
  const AllreduceAlgorithm algorithm = method_algorithm.algorithm;
  AllreduceOptions options;
  options.compression = method_algorithm.method.config;
  options.algorithm = algorithm;
  options.seed = 5;
  options.segments = segments;
  testing::CompressedReference reference(p, count, options, algorithm);
  AllreduceState state;
  options.state = &state;
  for (int step = 0; step < 3; ++step) {
    std::vector<std::vector<float>> inputs;
    for (int r = 0; r < p; ++r) inputs.push_back(testing::case_input(r, step, count));
    const std::vector<float> expected = reference.step(inputs);
    std::vector<float> data = inputs[static_cast<std::size_t>(comm().rank())];
    allreduce(comm(), std::span<float>(data), options);
    if (algorithm == AllreduceAlgorithm::SparseRecursiveDoubling) {
      for (std::size_t i = 0; i < count; ++i) {
        ASSERT_NEAR(data[i], expected[i], 1e-5 * (1 + std::abs(expected[i])));
      }
    } else {
      ASSERT_EQ(data, expected) << "step " << step;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Processes, MpiSegmentedAllreduce,
                         ::testing::ValuesIn(testing::segmented_method_algorithms()),
                         [](const ::testing::TestParamInfo<testing::MethodAlgorithm>& info) {
                           return testing::param_name(info.param);
                         });

// The pipelined two-phase allreduce on real processes with every rank holding back its receives
// from rank 0 (rank 1's on rank 0; fault_transport.hpp), so that its gather decodes them after
// every other: the result equals the serial reference's bit for bit, for Sum and for segmented
// Average, and the gather did decode out of rank order somewhere (from three processes on).
TEST(MpiTwoPhaseArrivalOrder, AHeldBackPeerChangesNoBit) {
  const int p = comm().size();
  const std::size_t count = 20'003 + static_cast<std::size_t>(p);
  const std::vector<std::size_t> segments = testing::segment_layout(count);
  bool out_of_rank_order = false;
  for (const testing::MethodCase& m : testing::method_cases()) {
    if (m.name != "fp16" && m.name != "onebit" && m.name != "ternary" && m.name != "qsgd4") {
      continue;
    }
    for (const bool segmented : {false, true}) {
      SCOPED_TRACE(m.name + (segmented ? " segmented average" : " sum"));
      testing::Faults faults;
      faults.held_peer = comm().rank() == 0 ? 1 : 0;
      auto transport = std::make_unique<testing::FaultTransport>(comm().transport(), faults);
      const testing::FaultTransport& held = *transport;
      Communicator wrapped(std::move(transport), CommunicatorOptions{.timeout = comm().timeout()});
      AllreduceOptions options;
      options.compression = m.config;
      options.algorithm = AllreduceAlgorithm::TwoPhase;
      options.op = segmented ? ReduceOp::Average : ReduceOp::Sum;
      options.seed = 13;
      if (segmented) options.segments = segments;
      testing::CompressedReference reference(p, count, options, options.algorithm);
      AllreduceState state;
      options.state = &state;
      for (int step = 0; step < 3; ++step) {
        std::vector<std::vector<float>> inputs;
        for (int r = 0; r < p; ++r) inputs.push_back(testing::case_input(r, step, count));
        const std::vector<float> expected = reference.step(inputs);
        std::vector<float> data = inputs[static_cast<std::size_t>(comm().rank())];
        const std::size_t before = held.arrivals().size();
        allreduce(wrapped, std::span<float>(data), options);
        const std::vector<int> arrivals = held.arrivals();
        // The gather's receives are the step's last P - 1.
        for (std::size_t i = arrivals.size() + 1 - static_cast<std::size_t>(p);
             p > 1 && i + 1 < arrivals.size() && i >= before; ++i) {
          if (arrivals[i] > arrivals[i + 1]) out_of_rank_order = true;
        }
        EXPECT_FALSE(
            any_rank(std::memcmp(data.data(), expected.data(), count * sizeof(float)) != 0))
            << "step " << step;
      }
    }
  }
  if (p >= 3) {
    EXPECT_TRUE(any_rank(out_of_rank_order)) << "every gather decoded in rank order";
  }
}

// The last rank's segments differ: Mismatch on every rank, naming them.
TEST(MpiCompressedAllreduce, DisagreeingSegmentsAreMismatchOnEveryRank) {
  auto c = testing::make_test_communicator({.timeout = std::chrono::milliseconds(5000)});
  AllreduceOptions o;
  o.compression.method = compression::Method::Qsgd;
  o.error_feedback = false;
  const std::vector<std::size_t> mine = {1000, 3096}, other = {1001, 3095};
  o.segments = c->rank() == c->size() - 1 ? other : mine;
  std::vector<float> x(4096, 1.0f);
  int code = -1;
  std::string what;
  try {
    allreduce(*c, std::span<float>(x), o);
  } catch (const Error& e) {
    code = static_cast<int>(e.code());
    what = e.what();
  }
  EXPECT_EQ(code, static_cast<int>(ErrorCode::Mismatch)) << "rank " << c->rank();
  EXPECT_NE(what.find("segments"), std::string::npos) << what;
}

class MpiSparseAllreduce : public ::testing::TestWithParam<double> {};

TEST_P(MpiSparseAllreduce, SparseAlgorithmsAgreeAndDenseSwitchTriggers) {
  const double density = GetParam();
  AllreduceOptions o;
  o.compression.method = compression::Method::TopK;
  o.compression.density = density;
  o.error_feedback = false;
  std::vector<float> a = testing::integer_input(comm().rank(), 1, 30'011);
  std::vector<float> b = a;
  o.algorithm = AllreduceAlgorithm::SparseAllgather;
  allreduce(comm(), std::span<float>(a), o);
  AllreduceStats stats;
  o.stats = &stats;
  o.algorithm = AllreduceAlgorithm::SparseRecursiveDoubling;
  allreduce(comm(), std::span<float>(b), o);
  ASSERT_EQ(a, b) << density;
  const int any = any_rank(stats.dense_switch_step >= 0) ? 1 : 0;
  // With P >= 4 the union of four 40% selections is past break-even before the last step.
  if (comm().size() >= 4) {
    EXPECT_EQ(any, density > 0.1 ? 1 : 0) << density;
  }
  if (density < 0.1) {
    EXPECT_EQ(any, 0);
  }
}

// e.g. topk_d0_4
INSTANTIATE_TEST_SUITE_P(MpiCompressedAllreduce, MpiSparseAllreduce, ::testing::Values(0.01, 0.4),
                         [](const ::testing::TestParamInfo<double>& info) {
                           return "topk_" + testing::density_name(info.param);
                         });

TEST(MpiCompressedAllreduce, DisagreeingRanksAllGetMismatch) {
  auto c = testing::make_test_communicator({.timeout = std::chrono::milliseconds(5000)});
  AllreduceOptions o;
  o.compression.method = compression::Method::OneBit;
  o.error_feedback = false;
  std::vector<float> x(c->rank() == c->size() - 1 ? 4097 : 4096, 1.0f);
  int code = -1;
  try {
    allreduce(*c, std::span<float>(x), o);
  } catch (const Error& e) {
    code = static_cast<int>(e.code());
  }
  EXPECT_EQ(code, static_cast<int>(ErrorCode::Mismatch)) << "rank " << c->rank();
}

}  // namespace
}  // namespace frugal
