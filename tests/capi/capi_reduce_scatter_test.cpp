// frugal_shard_range, frugal_reduce_scatter and frugal_allgather on loopback communicators:
// the same bits as the C++ halves on the same inputs, composition equal to frugal_allreduce
// with TWO_PHASE, the dense exact sum, and argument errors on every rank.

#include <gtest/gtest.h>

#include <cstring>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "frugal/collectives/reduce_scatter.hpp"
#include "frugal/frugal.h"
#include "loopback_harness.hpp"

namespace {

void run_c_ranks(int size, const std::function<void(int, frugal_comm*)>& body) {
  std::vector<frugal_comm*> comms(static_cast<std::size_t>(size), nullptr);
  ASSERT_EQ(frugal_comm_create_loopback(size, comms.data()), FRUGAL_OK)
      << frugal_last_error_message();
  std::vector<std::thread> threads;
  for (int r = 0; r < size; ++r) {
    threads.emplace_back([&, r] { body(r, comms[static_cast<std::size_t>(r)]); });
  }
  for (auto& t : threads) t.join();
  for (frugal_comm* c : comms) frugal_comm_destroy(c);
}

std::vector<float> ramp(int rank, int step, std::size_t n) {
  std::vector<float> v(n);
  for (std::size_t i = 0; i < n; ++i) {
    v[i] = static_cast<float>((static_cast<int>(i) * 7 + rank * 13 + step * 3) % 41) - 20.0f +
           0.25f * static_cast<float>(rank);
  }
  return v;
}

TEST(CApiShardRange, MatchesTheCppSplitAndRefusesBadRanks) {
  for (int p = 1; p <= 5; ++p) {
    for (int r = 0; r < p; ++r) {
      size_t offset = 99, count = 99;
      ASSERT_EQ(frugal_shard_range(1003, p, r, &offset, &count), FRUGAL_OK);
      const frugal::ShardRange want = frugal::reduce_scatter_shard(1003, p, r);
      EXPECT_EQ(offset, want.offset);
      EXPECT_EQ(count, want.count);
    }
  }
  size_t offset = 0, count = 0;
  EXPECT_EQ(frugal_shard_range(10, 2, 2, &offset, &count), FRUGAL_ERR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(frugal_last_error_message()).find("rank"), std::string::npos);
  EXPECT_EQ(frugal_shard_range(10, 2, 0, nullptr, &count), FRUGAL_ERR_INVALID_ARGUMENT);
}

// Method, ranks: the C halves give the C++ halves' bits, and composed in place give
// frugal_allreduce's (TWO_PHASE) at every step.
class CApiHalves : public ::testing::TestWithParam<std::tuple<int, int>> {};

TEST_P(CApiHalves, EqualTheCppHalvesAndComposeToTheAllreduce) {
  const auto [method, p] = GetParam();
  const std::size_t n = 777;
  std::mutex mutex;
  std::vector<std::vector<float>> cpp_out(3);
  // The C++ API on loopback ranks, for the expected bits.
  frugal::testing::run_ranks(p, [&](frugal::Communicator& comm) {
    frugal::AllreduceState rs_state, ag_state;
    frugal::AllreduceOptions o;
    o.compression.method = static_cast<frugal::compression::Method>(method);
    o.op = frugal::ReduceOp::Average;
    o.seed = 9;
    frugal::AllreduceOptions rs = o, ag = o;
    rs.state = &rs_state;
    ag.state = &ag_state;
    const frugal::ShardRange own = frugal::reduce_scatter_shard(n, p, comm.rank());
    for (int step = 0; step < 3; ++step) {
      std::vector<float> x = ramp(comm.rank(), step, n);
      std::vector<float> shard(own.count);
      frugal::compressed_reduce_scatter(comm, x, shard, rs);
      std::vector<float> out(n);
      frugal::compressed_allgather(comm, shard, out, ag);
      if (comm.rank() == 0) {
        std::lock_guard lock(mutex);
        cpp_out[static_cast<std::size_t>(step)] = out;
      }
    }
  });
  run_c_ranks(p, [&](int rank, frugal_comm* comm) {
    frugal_state *rs_state = nullptr, *ag_state = nullptr, *ar_state = nullptr;
    ASSERT_EQ(frugal_state_create(1.0f, &rs_state), FRUGAL_OK);
    ASSERT_EQ(frugal_state_create(1.0f, &ag_state), FRUGAL_OK);
    ASSERT_EQ(frugal_state_create(1.0f, &ar_state), FRUGAL_OK);
    frugal_options o;
    ASSERT_EQ(frugal_options_init(&o), FRUGAL_OK);
    o.method = method;
    o.op = FRUGAL_OP_AVERAGE;
    o.seed = 9;
    frugal_options rs = o, ag = o, ar = o;
    rs.state = rs_state;
    ag.state = ag_state;
    ar.state = ar_state;
    ar.algorithm =
        method == FRUGAL_METHOD_NONE ? FRUGAL_ALGORITHM_RING : FRUGAL_ALGORITHM_TWO_PHASE;
    size_t offset = 0, count = 0;
    ASSERT_EQ(frugal_shard_range(n, p, rank, &offset, &count), FRUGAL_OK);
    for (int step = 0; step < 3; ++step) {
      std::vector<float> x = ramp(rank, step, n);
      std::vector<float> whole = x;
      ASSERT_EQ(frugal_reduce_scatter(comm, x.data(), n, x.data() + offset, count, &rs), FRUGAL_OK)
          << frugal_last_error_message();
      ASSERT_EQ(frugal_allgather(comm, x.data() + offset, count, x.data(), n, &ag), FRUGAL_OK)
          << frugal_last_error_message();
      ASSERT_EQ(frugal_allreduce(comm, whole.data(), n, &ar), FRUGAL_OK)
          << frugal_last_error_message();
      EXPECT_EQ(std::memcmp(x.data(), whole.data(), n * sizeof(float)), 0) << "step " << step;
      EXPECT_EQ(x, cpp_out[static_cast<std::size_t>(step)]) << "step " << step;
    }
    uint64_t steps = 0;
    ASSERT_EQ(frugal_state_steps(ag_state, &steps), FRUGAL_OK);
    EXPECT_EQ(steps, method == FRUGAL_METHOD_NONE ? 0u : 3u);
    frugal_state_destroy(rs_state);
    frugal_state_destroy(ag_state);
    frugal_state_destroy(ar_state);
  });
}

INSTANTIATE_TEST_SUITE_P(
    Loopback, CApiHalves,
    ::testing::Combine(::testing::Values(FRUGAL_METHOD_NONE, FRUGAL_METHOD_FP16,
                                         FRUGAL_METHOD_ONEBIT, FRUGAL_METHOD_QSGD),
                       ::testing::Values(1, 2, 3, 4)));

// A wrong output size on rank 1: FRUGAL_ERR_INVALID_ARGUMENT naming it there, FRUGAL_ERR_MISMATCH
// elsewhere; top-k is refused on every rank naming the method.
TEST(CApiHalvesErrors, BadArgumentsFailEveryRank) {
  for (const bool topk : {false, true}) {
    std::mutex mutex;
    std::vector<std::pair<frugal_status, std::string>> got(3);
    run_c_ranks(3, [&](int rank, frugal_comm* comm) {
      frugal_state* state = nullptr;
      ASSERT_EQ(frugal_state_create(1.0f, &state), FRUGAL_OK);
      frugal_options o;
      ASSERT_EQ(frugal_options_init(&o), FRUGAL_OK);
      o.method = topk ? FRUGAL_METHOD_TOPK : FRUGAL_METHOD_ONEBIT;
      o.state = state;
      o.timeout_ms = 5000;
      std::vector<float> x(300, 1.0f);
      std::vector<float> shard(100);
      const size_t shard_count = !topk && rank == 1 ? 99 : 100;
      const frugal_status s =
          frugal_reduce_scatter(comm, x.data(), x.size(), shard.data(), shard_count, &o);
      {
        std::lock_guard lock(mutex);
        got[static_cast<std::size_t>(rank)] = {s, frugal_last_error_message()};
      }
      frugal_state_destroy(state);
    });
    for (int r = 0; r < 3; ++r) {
      const auto& [status, message] = got[static_cast<std::size_t>(r)];
      if (topk || r == 1) {
        EXPECT_EQ(status, FRUGAL_ERR_INVALID_ARGUMENT) << message;
        EXPECT_NE(message.find(topk ? "compression.method" : "output"), std::string::npos)
            << message;
        EXPECT_EQ(message.rfind("frugal_reduce_scatter: ", 0), 0u) << message;
      } else {
        EXPECT_EQ(status, FRUGAL_ERR_MISMATCH) << message;
      }
    }
  }
}

}  // namespace
