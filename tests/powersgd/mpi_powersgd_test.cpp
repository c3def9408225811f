// powersgd_allreduce on real processes (mpirun; FRUGAL_TEST_TRANSPORT picks MPI or UCX): every
// rank rebuilds all ranks' inputs and runs the serial reference; results must match it and be
// bit-identical across ranks. Disagreements must be Mismatch on every process.
#include <gtest/gtest.h>

#include <cstring>
#include <ostream>
#include <string>
#include <tuple>
#include <vector>

#include "frugal/collectives/collectives.hpp"
#include "frugal/collectives/powersgd.hpp"
#include "powersgd_reference.hpp"
#include "test_communicator.hpp"

namespace frugal {
namespace {

using testing::case_inputs;
using testing::Shape;

Communicator& comm() {
  return testing::shared_test_communicator();
}

const std::vector<Shape> kShapes = {{16, 8}, {7, 1},   {33, 17}, {3, 3},
                                    {1, 40}, {24, 24}, {256, 72}};

class MpiPowerSgd : public ::testing::TestWithParam<std::tuple<int, std::uint64_t, ReduceOp>> {};

TEST_P(MpiPowerSgd, MatchesTheSerialReferenceAndIsIdenticalOnEveryRank) {
  const auto [r, start_iter, op] = GetParam();
  const int p = comm().size();
  PowerSgdOptions options;
  options.rank = r;
  options.start_iter = start_iter;
  options.op = op;
  options.seed = 3;
  testing::PowerSgdReference reference(p, kShapes, options);
  PowerSgdState state;
  for (int step = 0; step < 5; ++step) {
    std::vector<std::vector<std::vector<float>>> inputs;
    for (int w = 0; w < p; ++w)
      inputs.push_back(case_inputs(w, step, kShapes, 2, int(start_iter) + 1));
    const auto want = reference.step(inputs);
    auto data = inputs[std::size_t(comm().rank())];
    std::vector<PowerSgdTensor> tensors;
    for (std::size_t t = 0; t < kShapes.size(); ++t) {
      tensors.push_back({std::span<float>(data[t]), kShapes[t].rows, kShapes[t].cols});
    }
    powersgd_allreduce(comm(), tensors, state, options);
    for (std::size_t t = 0; t < kShapes.size(); ++t) {
      EXPECT_LT(testing::relative_error(data[t], want[t]), 2e-4)
          << "step " << step << " tensor " << t;
      std::vector<float> rank0 = data[t];
      broadcast(comm(), std::as_writable_bytes(std::span<float>(rank0)), 0);
      ASSERT_EQ(std::memcmp(rank0.data(), data[t].data(), rank0.size() * sizeof(float)), 0)
          << "rank " << comm().rank() << " differs from rank 0 at step " << step << ", tensor "
          << t;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Cases, MpiPowerSgd,
                         ::testing::Values(std::make_tuple(1, std::uint64_t{0}, ReduceOp::Average),
                                           std::make_tuple(2, std::uint64_t{2}, ReduceOp::Average),
                                           std::make_tuple(4, std::uint64_t{1}, ReduceOp::Average),
                                           std::make_tuple(2, std::uint64_t{0}, ReduceOp::Sum)),
                         [](const auto& info) {
                           return "r" + std::to_string(std::get<0>(info.param)) + "_start" +
                                  std::to_string(std::get<1>(info.param)) +
                                  (std::get<2>(info.param) == ReduceOp::Sum ? "_sum" : "_avg");
                         });

TEST(MpiPowerSgdAgreement, RanksDisagreeingOnTheRankAllGetMismatch) {
  auto c = testing::make_test_communicator({.timeout = std::chrono::milliseconds(10000)});
  PowerSgdOptions o;
  o.rank = c->rank() == c->size() - 1 ? 2 : 1;
  o.start_iter = 0;
  PowerSgdState state;
  auto data = case_inputs(c->rank(), 0, kShapes);
  const auto before = data;
  std::vector<PowerSgdTensor> tensors;
  for (std::size_t t = 0; t < kShapes.size(); ++t) {
    tensors.push_back({std::span<float>(data[t]), kShapes[t].rows, kShapes[t].cols});
  }
  int code = -1;
  std::string message;
  try {
    powersgd_allreduce(*c, tensors, state, o);
  } catch (const Error& e) {
    code = static_cast<int>(e.code());
    message = e.what();
  }
  EXPECT_EQ(code, static_cast<int>(ErrorCode::Mismatch)) << "rank " << c->rank() << ": " << message;
  EXPECT_NE(message.find("rank r"), std::string::npos) << message;
  EXPECT_EQ(data, before);
  EXPECT_EQ(state.steps(), 0u);
}

}  // namespace
}  // namespace frugal
