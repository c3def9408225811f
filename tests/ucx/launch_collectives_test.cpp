// Every dense collective over UCX, started by scripts/launch without MPI: the communicator comes
// from make_test_communicator() with FRUGAL_TEST_TRANSPORT=ucx-env (TCP-store bootstrap). There
// is no MPI oracle here, so the inputs are integers whose reductions every rank can compute.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstdlib>
#include <memory>
#include <numeric>
#include <string>
#include <thread>
#include <vector>

#include "chunking.hpp"
#include "dtype_ops.hpp"
#include "frugal/collectives/collectives.hpp"
#include "test_communicator.hpp"

namespace frugal {
namespace {

Communicator& comm() {
  return testing::shared_test_communicator();
}

// Rank r's element i; small integers, so that every sum is exact in every dtype.
int value(std::size_t i, int r) {
  return static_cast<int>((i * 7 + static_cast<std::size_t>(r) * 13) % 101) - 50;
}

template <typename T>
std::vector<T> input(std::size_t count, int r) {
  std::vector<T> v(count);
  for (std::size_t i = 0; i < count; ++i) v[i] = static_cast<T>(value(i, r));
  return v;
}

template <typename T>
std::vector<T> expected_sum(std::size_t count, int ranks) {
  std::vector<T> v(count, T{0});
  for (int r = 0; r < ranks; ++r) {
    for (std::size_t i = 0; i < count; ++i) v[i] += static_cast<T>(value(i, r));
  }
  return v;
}

std::vector<std::size_t> counts() {
  const auto p = static_cast<std::size_t>(comm().size());
  return {0, 1, p - 1 == 0 ? 2 : p - 1, 1000 * p + 3, 300'000};
}

const AllreduceAlgorithm kAlgorithms[] = {
    AllreduceAlgorithm::Ring, AllreduceAlgorithm::RecursiveDoubling,
    AllreduceAlgorithm::Rabenseifner, AllreduceAlgorithm::Auto};

TEST(LaunchUcx, TransportIsUcx) {
  EXPECT_EQ(comm().transport().name(), "ucx");
  EXPECT_GE(comm().size(), 1);
}

// Every element type and op, every algorithm, whole and in small segments; one test per
// dtype/op, e.g. LaunchUcxAllreduce/float64_average.EqualsTheIntegerSum.
template <typename D>
class LaunchUcxAllreduce : public ::testing::Test {};
TYPED_TEST_SUITE(LaunchUcxAllreduce, testing::DtypeOps, testing::DtypeOpNames);

TYPED_TEST(LaunchUcxAllreduce, EqualsTheIntegerSum) {
  using T = typename TypeParam::Type;
  constexpr ReduceOp op = TypeParam::op;
  const int p = comm().size();
  for (std::size_t count : counts()) {
    std::vector<T> expected = expected_sum<T>(count, p);
    if (op == ReduceOp::Average) {
      for (T& x : expected) x /= static_cast<T>(p);
    }
    for (AllreduceAlgorithm algorithm : kAlgorithms) {
      for (std::size_t segment : {std::size_t{0}, std::size_t{4096}}) {
        std::vector<T> data = input<T>(count, comm().rank());
        AllreduceOptions options;
        options.op = op;
        options.algorithm = algorithm;
        options.segment_bytes = segment;
        allreduce(comm(), std::span<T>(data), options);
        ASSERT_EQ(data, expected) << to_string(algorithm) << " count " << count << " segment "
                                  << segment;
      }
    }
  }
}

TEST(LaunchUcx, ReduceScatter) {
  const int p = comm().size();
  const int r = comm().rank();
  for (std::size_t count : counts()) {
    std::vector<float> data = input<float>(count, r);
    const std::vector<float> sum = expected_sum<float>(count, p);
    const patterns::Range mine = patterns::chunk_range(count, p, r);
    const std::span<float> got = reduce_scatter(comm(), std::span<float>(data));
    ASSERT_EQ(
        std::vector<float>(got.begin(), got.end()),
        std::vector<float>(sum.begin() + static_cast<std::ptrdiff_t>(mine.offset),
                           sum.begin() + static_cast<std::ptrdiff_t>(mine.offset + mine.count)))
        << "count " << count;
  }
}

std::byte pattern(std::size_t i, int r) {
  return std::byte((i * 31 + static_cast<std::size_t>(r) * 7) & 0xff);
}

TEST(LaunchUcx, AllgatherAndAllgatherv) {
  const int p = comm().size();
  const int r = comm().rank();
  for (std::size_t per_rank :
       {std::size_t{0}, std::size_t{1}, std::size_t{4099}, std::size_t{1} << 20}) {
    std::vector<std::byte> mine(per_rank);
    for (std::size_t i = 0; i < per_rank; ++i) mine[i] = pattern(i, r);
    std::vector<std::byte> expected;
    for (int q = 0; q < p; ++q) {
      for (std::size_t i = 0; i < per_rank; ++i) expected.push_back(pattern(i, q));
    }
    std::vector<std::byte> out(expected.size());
    allgather(comm(), mine, out);
    ASSERT_EQ(out, expected) << per_rank;
  }
  std::vector<std::size_t> sizes(static_cast<std::size_t>(p));
  for (int q = 0; q < p; ++q) sizes[static_cast<std::size_t>(q)] = q == 1 ? 0 : 1000 * q + 17;
  std::vector<std::byte> mine(sizes[static_cast<std::size_t>(r)]);
  for (std::size_t i = 0; i < mine.size(); ++i) mine[i] = pattern(i, r);
  std::vector<std::byte> expected;
  for (int q = 0; q < p; ++q) {
    for (std::size_t i = 0; i < sizes[static_cast<std::size_t>(q)]; ++i) {
      expected.push_back(pattern(i, q));
    }
  }
  std::vector<std::byte> out(expected.size());
  allgatherv(comm(), mine, out, sizes);
  ASSERT_EQ(out, expected);
}

TEST(LaunchUcx, BroadcastFromEveryRoot) {
  for (int root = 0; root < comm().size(); ++root) {
    for (std::size_t bytes :
         {std::size_t{0}, std::size_t{1}, std::size_t{70'001}, std::size_t{3} << 20}) {
      std::vector<std::byte> expected(bytes);
      for (std::size_t i = 0; i < bytes; ++i) expected[i] = pattern(i, root);
      std::vector<std::byte> data(bytes);
      if (comm().rank() == root) data = expected;
      CollectiveOptions options;
      options.segment_bytes = 64 * 1024;
      broadcast(comm(), data, root, options);
      ASSERT_EQ(data, expected) << "root " << root << " bytes " << bytes;
    }
  }
}

TEST(LaunchUcx, AlltoallAndAlltoallv) {
  const int p = comm().size();
  const int r = comm().rank();
  const std::size_t block = 4001;
  // Block for rank j from rank i holds pattern(k, i * 16 + j).
  std::vector<std::byte> send(block * static_cast<std::size_t>(p));
  std::vector<std::byte> expected(send.size());
  for (int j = 0; j < p; ++j) {
    for (std::size_t k = 0; k < block; ++k) {
      send[static_cast<std::size_t>(j) * block + k] = pattern(k, r * 16 + j);
      expected[static_cast<std::size_t>(j) * block + k] = pattern(k, j * 16 + r);
    }
  }
  std::vector<std::byte> recv(send.size());
  alltoall(comm(), send, recv);
  ASSERT_EQ(recv, expected);

  // Rank i sends (i + j) * 10 + 1 bytes to rank j.
  std::vector<std::size_t> send_counts(static_cast<std::size_t>(p));
  std::vector<std::size_t> recv_counts(static_cast<std::size_t>(p));
  std::vector<std::byte> vsend;
  std::vector<std::byte> vexpected;
  for (int j = 0; j < p; ++j) {
    send_counts[static_cast<std::size_t>(j)] = static_cast<std::size_t>((r + j) * 10 + 1);
    recv_counts[static_cast<std::size_t>(j)] = static_cast<std::size_t>((j + r) * 10 + 1);
    for (std::size_t k = 0; k < send_counts[static_cast<std::size_t>(j)]; ++k) {
      vsend.push_back(pattern(k, r * 16 + j));
    }
    for (std::size_t k = 0; k < recv_counts[static_cast<std::size_t>(j)]; ++k) {
      vexpected.push_back(pattern(k, j * 16 + r));
    }
  }
  std::vector<std::byte> vrecv(vexpected.size());
  alltoallv(comm(), vsend, send_counts, vrecv, recv_counts);
  ASSERT_EQ(vrecv, vexpected);
}

TEST(LaunchUcx, BarrierWaitsForTheLastRank) {
  // The last rank arrives 200 ms late; nobody may leave before it has entered. steady_clock is
  // CLOCK_MONOTONIC, one clock for all processes of the host.
  const int last = comm().size() - 1;
  std::int64_t entered = 0;
  if (comm().rank() == last) {
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    entered = Clock::now().time_since_epoch().count();
  }
  barrier(comm());
  const std::int64_t left = Clock::now().time_since_epoch().count();
  broadcast(comm(), std::as_writable_bytes(std::span(&entered, 1)), last);
  EXPECT_GE(left, entered);
}

}  // namespace
}  // namespace frugal

// main() is tests/support/launch_main.cpp.
