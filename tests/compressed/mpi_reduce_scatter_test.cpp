// compressed_reduce_scatter and compressed_allgather on real processes (MPI, UCX, or UCX
// started by scripts/launch): against the serial reference (every rank rebuilds all ranks'
// inputs), composed against the two-phase allreduce, and a bad shard size refused on every rank.
#include <gtest/gtest.h>

#include <chrono>
#include <cstring>
#include <string>
#include <vector>

#include "compressed_cases.hpp"
#include "frugal/collectives/collectives.hpp"
#include "frugal/collectives/reduce_scatter.hpp"
#include "reduce_scatter_reference.hpp"
#include "test_communicator.hpp"

namespace frugal {
namespace {

Communicator& comm() {
  return testing::shared_test_communicator();
}

class MpiHalves : public ::testing::TestWithParam<testing::HalfCase> {};

TEST_P(MpiHalves, MatchTheSerialReferenceAndComposeToTheAllreduce) {
  const testing::HalfCase& c = GetParam();
  const int p = comm().size();
  const bool dense = c.config.method == compression::Method::None;
  const std::size_t count = 1000 + static_cast<std::size_t>(p);
  AllreduceOptions options;
  options.compression = c.config;
  options.op = ReduceOp::Average;
  options.seed = 3;
  testing::ReduceScatterReference reference(p, count, options);
  AllreduceState rs_state, ag_state, ar_state;
  AllreduceOptions rs = options, ag = options, ar = options;
  rs.state = &rs_state;
  ag.state = &ag_state;
  ar.state = &ar_state;
  ar.algorithm = dense ? AllreduceAlgorithm::Ring : AllreduceAlgorithm::TwoPhase;
  const ShardRange own = reduce_scatter_shard(count, p, comm().rank());
  for (int step = 0; step < 3; ++step) {
    std::vector<std::vector<float>> inputs;
    for (int r = 0; r < p; ++r) {
      inputs.push_back(dense ? testing::integer_input(r, step, count)
                             : testing::case_input(r, step, count));
    }
    const std::vector<std::vector<float>> shards = reference.reduce_scatter(inputs);
    const std::vector<float> gathered = reference.allgather(shards);
    std::vector<float> input = inputs[static_cast<std::size_t>(comm().rank())];
    std::vector<float> whole = input;
    std::vector<float> shard(own.count);
    compressed_reduce_scatter(comm(), input, shard, rs);
    ASSERT_EQ(shard, shards[static_cast<std::size_t>(comm().rank())]) << "step " << step;
    std::vector<float> out(count);
    compressed_allgather(comm(), shard, out, ag);
    ASSERT_EQ(out, gathered) << "step " << step;
    allreduce(comm(), std::span<float>(whole), ar);
    ASSERT_EQ(std::memcmp(out.data(), whole.data(), count * sizeof(float)), 0) << "step " << step;
  }
}

INSTANTIATE_TEST_SUITE_P(Processes, MpiHalves, ::testing::ValuesIn(testing::half_cases()),
                         [](const auto& info) { return std::string(info.param.name); });

// The last rank's shard buffer is one element short: InvalidArgument naming `output` there,
// Mismatch on every other rank, long before the timeout.
TEST(MpiHalvesBadArguments, AWrongShardSizeFailsEveryRank) {
  auto c = testing::make_test_communicator({.timeout = std::chrono::milliseconds(5000)});
  const int p = c->size();
  const bool bad = c->rank() == p - 1;
  AllreduceState state;
  AllreduceOptions o;
  o.compression.method = compression::Method::Qsgd;
  o.state = &state;
  std::vector<float> input(600, 1.0f);
  std::vector<float> shard(reduce_scatter_shard(600, p, c->rank()).count - (bad ? 1 : 0));
  int code = -1;
  std::string message;
  const auto start = std::chrono::steady_clock::now();
  try {
    compressed_reduce_scatter(*c, input, shard, o);
  } catch (const Error& e) {
    code = static_cast<int>(e.code());
    message = e.what();
  }
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(4));
  if (p == 1) {
    EXPECT_EQ(code, static_cast<int>(ErrorCode::InvalidArgument)) << message;
    return;
  }
  EXPECT_EQ(code, static_cast<int>(bad ? ErrorCode::InvalidArgument : ErrorCode::Mismatch))
      << "rank " << c->rank() << ": " << message;
  if (bad) {
    EXPECT_NE(message.find("output"), std::string::npos) << message;
  }
}

}  // namespace
}  // namespace frugal
