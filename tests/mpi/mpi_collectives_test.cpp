// Each frugal collective against Open MPI's own on the same inputs, on real processes.
#include <gtest/gtest.h>
#include <mpi.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "chunking.hpp"
#include "dtype_ops.hpp"
#include "frugal/collectives/collectives.hpp"
#include "frugal/mpi.hpp"
#include "test_communicator.hpp"

namespace frugal {
namespace {

int world_rank() {
  int r = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &r);
  return r;
}
int world_size() {
  int s = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &s);
  return s;
}

Communicator& comm() {
  static std::unique_ptr<Communicator> c = testing::make_test_communicator();
  return *c;
}

template <typename T>
MPI_Datatype mpi_type();
template <>
MPI_Datatype mpi_type<float>() {
  return MPI_FLOAT;
}
template <>
MPI_Datatype mpi_type<double>() {
  return MPI_DOUBLE;
}
template <>
MPI_Datatype mpi_type<std::int32_t>() {
  return MPI_INT32_T;
}

template <typename T>
std::vector<T> exact_input(std::size_t count) {
  std::vector<T> v(count);
  const int r = world_rank();
  for (std::size_t i = 0; i < count; ++i) {
    v[i] = static_cast<T>(static_cast<int>((i * 7 + static_cast<std::size_t>(r) * 13) % 101) - 50);
  }
  return v;
}

std::vector<float> random_input(std::size_t count) {
  std::mt19937 gen(static_cast<unsigned>(99 + world_rank()));
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  std::vector<float> v(count);
  for (float& x : v) x = dist(gen);
  return v;
}

std::vector<std::size_t> counts() {
  const auto p = static_cast<std::size_t>(world_size());
  const std::set<std::size_t> c = {0, 1, p - 1, 1000 * p + 3, 1'000'000};
  return {c.begin(), c.end()};
}

const AllreduceAlgorithm kAlgorithms[] = {
    AllreduceAlgorithm::Ring, AllreduceAlgorithm::RecursiveDoubling,
    AllreduceAlgorithm::Rabenseifner, AllreduceAlgorithm::Auto};

// Integer inputs for every element type and op against MPI_Allreduce (average: its sum over P),
// every algorithm, whole and in small segments; one test per dtype/op, e.g.
// MpiAllreduceExact/float64_average.EqualsMpiAllreduce.
template <typename D>
class MpiAllreduceExact : public ::testing::Test {};
TYPED_TEST_SUITE(MpiAllreduceExact, testing::DtypeOps, testing::DtypeOpNames);

TYPED_TEST(MpiAllreduceExact, EqualsMpiAllreduce) {
  using T = typename TypeParam::Type;
  constexpr ReduceOp op = TypeParam::op;
  for (std::size_t count : counts()) {
    const std::vector<T> input = exact_input<T>(count);
    std::vector<T> expected(count);
    MPI_Allreduce(input.data(), expected.data(), static_cast<int>(count), mpi_type<T>(), MPI_SUM,
                  MPI_COMM_WORLD);
    if (op == ReduceOp::Average) {
      for (T& x : expected) x /= static_cast<T>(world_size());
    }
    for (AllreduceAlgorithm algorithm : kAlgorithms) {
      std::vector<T> data = input;
      AllreduceOptions options;
      options.op = op;
      options.algorithm = algorithm;
      allreduce(comm(), std::span<T>(data), options);
      ASSERT_EQ(data, expected) << to_string(algorithm) << " count " << count;
      // Small segments: the pipelined path with many in-flight messages.
      data = input;
      options.segment_bytes = 4096;
      allreduce(comm(), std::span<T>(data), options);
      ASSERT_EQ(data, expected) << to_string(algorithm) << " segmented, count " << count;
    }
  }
}

TEST(MpiAllreduce, RandomFloatsCloseToMpiAndIdenticalAcrossRanks) {
  for (std::size_t count : counts()) {
    const std::vector<float> input = random_input(count);
    std::vector<float> expected(count);
    MPI_Allreduce(input.data(), expected.data(), static_cast<int>(count), MPI_FLOAT, MPI_SUM,
                  MPI_COMM_WORLD);
    for (AllreduceAlgorithm algorithm : kAlgorithms) {
      std::vector<float> data = input;
      AllreduceOptions options;
      options.algorithm = algorithm;
      allreduce(comm(), std::span<float>(data), options);
      for (std::size_t i = 0; i < count; ++i) {
        ASSERT_NEAR(data[i], expected[i], 1e-5f * static_cast<float>(world_size()))
            << to_string(algorithm) << " element " << i;
      }
      // Bit-identical on every rank: rank 0's result broadcast by MPI must match ours.
      std::vector<float> rank0 = data;
      MPI_Bcast(rank0.data(), static_cast<int>(count), MPI_FLOAT, 0, MPI_COMM_WORLD);
      ASSERT_EQ(count == 0 ? 0 : std::memcmp(rank0.data(), data.data(), count * sizeof(float)), 0)
          << to_string(algorithm);
    }
  }
}

TEST(MpiCollectives, ReduceScatterEqualsMpiReduceScatter) {
  const int p = world_size();
  for (std::size_t count : counts()) {
    const std::vector<float> input = exact_input<float>(count);
    std::vector<int> recvcounts(static_cast<std::size_t>(p));
    for (int i = 0; i < p; ++i) {
      recvcounts[static_cast<std::size_t>(i)] =
          static_cast<int>(patterns::chunk_range(count, p, i).count);
    }
    std::vector<float> expected(static_cast<std::size_t>(recvcounts[world_rank()]) + 1);
    MPI_Reduce_scatter(input.data(), expected.data(), recvcounts.data(), MPI_FLOAT, MPI_SUM,
                       MPI_COMM_WORLD);
    expected.resize(static_cast<std::size_t>(recvcounts[world_rank()]));
    std::vector<float> data = input;
    const std::span<float> mine = reduce_scatter(comm(), std::span<float>(data));
    ASSERT_EQ(std::vector<float>(mine.begin(), mine.end()), expected) << "count " << count;
  }
}

TEST(MpiCollectives, AllgatherAndAllgathervEqualMpi) {
  const int p = world_size();
  const int r = world_rank();
  for (std::size_t per_rank :
       {std::size_t{0}, std::size_t{1}, std::size_t{4099}, std::size_t{3 << 20}}) {
    std::vector<std::byte> mine(per_rank);
    for (std::size_t i = 0; i < per_rank; ++i) mine[i] = std::byte((i * 31 + r * 7) & 0xff);
    std::vector<std::byte> expected(per_rank * static_cast<std::size_t>(p) + 1);
    MPI_Allgather(mine.data(), static_cast<int>(per_rank), MPI_BYTE, expected.data(),
                  static_cast<int>(per_rank), MPI_BYTE, MPI_COMM_WORLD);
    expected.pop_back();
    std::vector<std::byte> out(expected.size());
    allgather(comm(), mine, out);
    ASSERT_EQ(out, expected) << per_rank;
  }
  // Different sizes per rank, including an empty one.
  std::vector<std::size_t> sizes(static_cast<std::size_t>(p));
  for (int i = 0; i < p; ++i) sizes[static_cast<std::size_t>(i)] = i == 1 ? 0 : 1000 * i + 17;
  std::vector<int> int_sizes(sizes.begin(), sizes.end());
  std::vector<int> displs(static_cast<std::size_t>(p), 0);
  std::partial_sum(int_sizes.begin(), int_sizes.end() - 1, displs.begin() + 1);
  std::vector<std::byte> mine(sizes[static_cast<std::size_t>(r)], std::byte(r + 1));
  const std::size_t total = std::accumulate(sizes.begin(), sizes.end(), std::size_t{0});
  std::vector<std::byte> expected(total + 1);
  MPI_Allgatherv(mine.data(), static_cast<int>(mine.size()), MPI_BYTE, expected.data(),
                 int_sizes.data(), displs.data(), MPI_BYTE, MPI_COMM_WORLD);
  expected.pop_back();
  std::vector<std::byte> out(total);
  allgatherv(comm(), mine, out, sizes);
  ASSERT_EQ(out, expected);
}

TEST(MpiCollectives, BroadcastFromEveryRootEqualsMpiBcast) {
  for (int root = 0; root < world_size(); ++root) {
    for (std::size_t bytes :
         {std::size_t{0}, std::size_t{1}, std::size_t{70'001}, std::size_t{5 << 20}}) {
      std::vector<std::byte> expected(bytes + 1);
      std::vector<std::byte> data(bytes);
      if (world_rank() == root) {
        for (std::size_t i = 0; i < bytes; ++i) expected[i] = std::byte((i * 13 + 5) & 0xff);
        std::copy(expected.begin(), expected.end() - 1, data.begin());
      }
      MPI_Bcast(expected.data(), static_cast<int>(bytes), MPI_BYTE, root, MPI_COMM_WORLD);
      expected.pop_back();
      CollectiveOptions options;
      options.segment_bytes = 64 * 1024;
      broadcast(comm(), data, root, options);
      ASSERT_EQ(data, expected) << "root " << root << " bytes " << bytes;
    }
  }
}

TEST(MpiCollectives, AlltoallAndAlltoallvEqualMpi) {
  const int p = world_size();
  const int r = world_rank();
  const std::size_t block = 4001;
  std::vector<std::byte> send(block * static_cast<std::size_t>(p));
  for (std::size_t i = 0; i < send.size(); ++i) send[i] = std::byte((i * 3 + r * 101) & 0xff);
  std::vector<std::byte> expected(send.size());
  MPI_Alltoall(send.data(), static_cast<int>(block), MPI_BYTE, expected.data(),
               static_cast<int>(block), MPI_BYTE, MPI_COMM_WORLD);
  std::vector<std::byte> recv(send.size());
  alltoall(comm(), send, recv);
  ASSERT_EQ(recv, expected);

  // Rank i sends (i + j) * 10 + 1 bytes to rank j.
  std::vector<std::size_t> send_counts(static_cast<std::size_t>(p));
  std::vector<std::size_t> recv_counts(static_cast<std::size_t>(p));
  for (int j = 0; j < p; ++j) {
    send_counts[static_cast<std::size_t>(j)] = static_cast<std::size_t>((r + j) * 10 + 1);
    recv_counts[static_cast<std::size_t>(j)] = static_cast<std::size_t>((j + r) * 10 + 1);
  }
  auto to_int = [](const std::vector<std::size_t>& v) {
    return std::vector<int>(v.begin(), v.end());
  };
  auto displs = [](const std::vector<int>& c) {
    std::vector<int> d(c.size(), 0);
    std::partial_sum(c.begin(), c.end() - 1, d.begin() + 1);
    return d;
  };
  const std::vector<int> sc = to_int(send_counts);
  const std::vector<int> rc = to_int(recv_counts);
  std::vector<std::byte> vsend(
      std::accumulate(send_counts.begin(), send_counts.end(), std::size_t{0}));
  for (std::size_t i = 0; i < vsend.size(); ++i) vsend[i] = std::byte((i * 7 + r) & 0xff);
  std::vector<std::byte> vexpected(
      std::accumulate(recv_counts.begin(), recv_counts.end(), std::size_t{0}));
  MPI_Alltoallv(vsend.data(), sc.data(), displs(sc).data(), MPI_BYTE, vexpected.data(), rc.data(),
                displs(rc).data(), MPI_BYTE, MPI_COMM_WORLD);
  std::vector<std::byte> vrecv(vexpected.size());
  alltoallv(comm(), vsend, send_counts, vrecv, recv_counts);
  ASSERT_EQ(vrecv, vexpected);
}

TEST(MpiCollectives, BarrierWaitsForTheLastRank) {
  // The last rank arrives late; nobody may leave before it has entered.
  if (world_rank() == world_size() - 1) std::this_thread::sleep_for(std::chrono::milliseconds(200));
  const std::int64_t entered = Clock::now().time_since_epoch().count();
  barrier(comm());
  const std::int64_t left = Clock::now().time_since_epoch().count();
  std::int64_t last_entry = 0;
  MPI_Allreduce(&entered, &last_entry, 1, MPI_INT64_T, MPI_MAX, MPI_COMM_WORLD);
  EXPECT_GE(left, last_entry);
}

TEST(MpiErrors, TruncatedMessageIsMismatch) {
  auto c = testing::make_test_communicator();
  Transport& t = c->transport();
  std::vector<std::byte> big(64), small(16);
  if (t.rank() == 0) {
    Request s = t.isend(1, 5, big);
    t.wait(s, Clock::now() + std::chrono::seconds(10));
  } else if (t.rank() == 1) {
    Request r = t.irecv(0, 5, small);
    try {
      t.wait(r, Clock::now() + std::chrono::seconds(10));
      FAIL() << "truncation not reported";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::Mismatch) << e.what();
      EXPECT_NE(std::string(e.what()).find("peer 0"), std::string::npos) << e.what();
    }
  }
  MPI_Barrier(MPI_COMM_WORLD);
}

TEST(MpiErrors, SilentPeerIsTimeoutNamingPeerAndCommunicatorFails) {
  auto c = testing::make_test_communicator({.timeout = std::chrono::milliseconds(300)});
  if (c->rank() == 1) {
    std::vector<float> data(1000, 1.0f);
    const auto start = Clock::now();
    try {
      allreduce(*c, std::span<float>(data));  // rank 0 never joins
      FAIL() << "no timeout";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::Timeout) << e.what();
      EXPECT_NE(std::string(e.what()).find("rank 1"), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("peer"), std::string::npos) << e.what();
    }
    EXPECT_LT(Clock::now() - start, std::chrono::milliseconds(600));
    EXPECT_TRUE(c->failed());
    EXPECT_THROW(barrier(*c), Error);
  }
  MPI_Barrier(MPI_COMM_WORLD);
}

TEST(MpiErrors, DifferentCountsAreMismatchOrTimeoutNeverWrongNumbers) {
  auto c = testing::make_test_communicator({.timeout = std::chrono::milliseconds(1000)});
  std::vector<float> data(c->rank() == 0 ? 5000 : 5001, 1.0f);
  AllreduceOptions options;
  options.algorithm = AllreduceAlgorithm::Ring;
  int code = -1;
  try {
    allreduce(*c, std::span<float>(data), options);
  } catch (const Error& e) {
    code = static_cast<int>(e.code());
  }
  // Every rank fails; at least one sees the size disagreement itself.
  EXPECT_NE(code, -1) << "rank " << c->rank() << " returned normally from a mismatched allreduce";
  int mismatch = code == static_cast<int>(ErrorCode::Mismatch) ? 1 : 0;
  int any_mismatch = 0;
  MPI_Allreduce(&mismatch, &any_mismatch, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  EXPECT_EQ(any_mismatch, 1);
}

}  // namespace
}  // namespace frugal
