#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <random>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include "frugal/collectives/allreduce.hpp"
#include "loopback_harness.hpp"

namespace frugal {
namespace {

using testing::run_ranks;

// Integer-valued inputs: sums are exact in every type, so results can be checked with ==.
template <typename T>
T exact_input(int rank, std::size_t i) {
  return static_cast<T>(static_cast<int>((i * 7 + static_cast<std::size_t>(rank) * 13) % 101) - 50);
}

template <typename T>
std::vector<T> exact_sum(int ranks, std::size_t count, ReduceOp op) {
  std::vector<T> expected(count);
  for (std::size_t i = 0; i < count; ++i) {
    long long sum = 0;
    for (int r = 0; r < ranks; ++r) sum += static_cast<long long>(exact_input<T>(r, i));
    expected[i] = static_cast<T>(sum);
    if (op == ReduceOp::Average) expected[i] /= static_cast<T>(ranks);
  }
  return expected;
}

const std::vector<AllreduceAlgorithm> kAlgorithms = {
    AllreduceAlgorithm::Ring, AllreduceAlgorithm::RecursiveDoubling,
    AllreduceAlgorithm::Rabenseifner, AllreduceAlgorithm::Auto};

// (ranks, count, segment bytes: 0 = default; small values force many pipelined segments)
using Case = std::tuple<int, std::size_t, std::size_t>;

class DenseAllreduce : public ::testing::TestWithParam<Case> {
 protected:
  template <typename T>
  void check_exact(ReduceOp op) {
    const auto [ranks, count, segment] = GetParam();
    const std::vector<T> expected = exact_sum<T>(ranks, count, op);
    for (AllreduceAlgorithm algorithm : kAlgorithms) {
      SCOPED_TRACE(std::string(to_string(algorithm)) + " " + std::string(to_string(op)));
      std::mutex mutex;
      std::vector<std::vector<T>> results(static_cast<std::size_t>(ranks));
      run_ranks(ranks, [&](Communicator& comm) {
        std::vector<T> data(count);
        for (std::size_t i = 0; i < count; ++i) data[i] = exact_input<T>(comm.rank(), i);
        AllreduceOptions options;
        options.op = op;
        options.algorithm = algorithm;
        options.segment_bytes = segment;
        allreduce(comm, std::span<T>(data), options);
        std::lock_guard lock(mutex);
        results[static_cast<std::size_t>(comm.rank())] = std::move(data);
      });
      for (int r = 0; r < ranks; ++r) {
        ASSERT_EQ(results[static_cast<std::size_t>(r)], expected) << "rank " << r;
      }
    }
  }
};

TEST_P(DenseAllreduce, Float32SumExact) {
  check_exact<float>(ReduceOp::Sum);
}
TEST_P(DenseAllreduce, Float32AverageExact) {
  check_exact<float>(ReduceOp::Average);
}
TEST_P(DenseAllreduce, Float64SumExact) {
  check_exact<double>(ReduceOp::Sum);
}
TEST_P(DenseAllreduce, Int32SumExact) {
  check_exact<std::int32_t>(ReduceOp::Sum);
}

// Random floats: every rank must hold bit-identical results, close to the double-precision sum.
TEST_P(DenseAllreduce, RandomFloatsIdenticalOnAllRanksAndAccurate) {
  const auto [ranks, count, segment] = GetParam();
  auto input = [](int rank, std::size_t count) {
    std::mt19937 gen(static_cast<unsigned>(1234 + rank));
    std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
    std::vector<float> v(count);
    for (float& x : v) x = dist(gen);
    return v;
  };
  std::vector<double> reference(count, 0.0);
  for (int r = 0; r < ranks; ++r) {
    const std::vector<float> v = input(r, count);
    for (std::size_t i = 0; i < count; ++i) reference[i] += v[i];
  }
  for (AllreduceAlgorithm algorithm : kAlgorithms) {
    SCOPED_TRACE(std::string(to_string(algorithm)));
    std::mutex mutex;
    std::vector<std::vector<float>> results(static_cast<std::size_t>(ranks));
    run_ranks(ranks, [&](Communicator& comm) {
      std::vector<float> data = input(comm.rank(), count);
      AllreduceOptions options;
      options.algorithm = algorithm;
      options.segment_bytes = segment;
      allreduce(comm, std::span<float>(data), options);
      std::lock_guard lock(mutex);
      results[static_cast<std::size_t>(comm.rank())] = std::move(data);
    });
    for (int r = 1; r < ranks; ++r) {
      ASSERT_EQ(count == 0
                    ? 0
                    : std::memcmp(results[0].data(), results[static_cast<std::size_t>(r)].data(),
                                  count * sizeof(float)),
                0)
          << "rank " << r << " differs from rank 0";
    }
    for (std::size_t i = 0; i < count; ++i) {
      ASSERT_NEAR(results[0][i], reference[i], 1e-5 * ranks) << "element " << i;
    }
  }
}

std::vector<Case> cases() {
  std::vector<Case> all;
  for (int p : {1, 2, 3, 4, 5, 8}) {
    // 0, 1, P-1 (fewer elements than ranks), not divisible by P, 10^6.
    const std::set<std::size_t> counts = {0, 1, static_cast<std::size_t>(p - 1),
                                          static_cast<std::size_t>(1000 * p + 3), 1'000'000};
    for (std::size_t count : counts) all.emplace_back(p, count, 0);
    // Tiny odd-sized segments: many segments per block, slots recycled, partial last segments.
    all.emplace_back(p, 1000 * static_cast<std::size_t>(p) + 3, 36);
    all.emplace_back(p, 97, 12);
  }
  return all;
}

std::string case_name(const ::testing::TestParamInfo<Case>& info) {
  const auto [p, count, segment] = info.param;
  return "P" + std::to_string(p) + "_n" + std::to_string(count) +
         (segment ? "_seg" + std::to_string(segment) : "");
}

INSTANTIATE_TEST_SUITE_P(Loopback, DenseAllreduce, ::testing::ValuesIn(cases()), case_name);

TEST(DenseAllreduceErrors, InvalidArgumentsAreRejectedBeforeCommunicating) {
  run_ranks(2, [](Communicator& comm) {
    std::vector<std::int32_t> ints(4);
    AllreduceOptions average;
    average.op = ReduceOp::Average;
    try {
      allreduce(comm, std::span<std::int32_t>(ints), average);
      FAIL() << "average of int32 accepted";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::InvalidArgument);
      EXPECT_NE(std::string(e.what()).find("op"), std::string::npos);
    }
    std::vector<std::byte> ragged(7);
    EXPECT_THROW(allreduce(comm, std::span<std::byte>(ragged), DType::Float32), Error);
    // Invalid arguments leave the communicator usable.
    EXPECT_FALSE(comm.failed());
    std::vector<float> ok{1.0f};
    allreduce(comm, std::span<float>(ok));
    EXPECT_EQ(ok[0], 2.0f);
  });
}

TEST(DenseAllreduceErrors, RanksWithDifferentCountsGetMismatchNotGarbage) {
  for (AllreduceAlgorithm algorithm : kAlgorithms) {
    std::mutex mutex;
    int mismatches = 0;
    EXPECT_THROW(run_ranks(2,
                           [&](Communicator& comm) {
                             std::vector<float> data(comm.rank() == 0 ? 1000 : 1001, 1.0f);
                             AllreduceOptions options;
                             options.algorithm = algorithm;
                             try {
                               allreduce(comm, std::span<float>(data), options);
                             } catch (const Error& e) {
                               if (e.code() == ErrorCode::Mismatch) {
                                 std::lock_guard lock(mutex);
                                 ++mismatches;
                               }
                               EXPECT_TRUE(comm.failed());
                               throw;
                             }
                           }),
                 Error)
        << to_string(algorithm);
    EXPECT_GE(mismatches, 1) << to_string(algorithm);
  }
}

TEST(DenseAllreduceErrors, DeadPeerGivesPeerFailureWithinTimeout) {
  const auto start = Clock::now();
  try {
    run_ranks(
        3,
        [](Communicator& comm) {
          if (comm.rank() == 2) throw std::runtime_error("rank 2 dies before the allreduce");
          std::vector<float> data(1 << 16, 1.0f);
          allreduce(comm, std::span<float>(data));
        },
        std::chrono::seconds(5));
    FAIL() << "no error";
  } catch (const std::runtime_error&) {
  }
  EXPECT_LT(Clock::now() - start, std::chrono::seconds(10));
}

TEST(AllreduceAlgorithmChoice, BySizeAndParsing) {
  EXPECT_EQ(choose_allreduce_algorithm(8, 4), AllreduceAlgorithm::RecursiveDoubling);
  EXPECT_EQ(choose_allreduce_algorithm(kRabenseifnerMaxBytes, 4), AllreduceAlgorithm::Rabenseifner);
  EXPECT_EQ(choose_allreduce_algorithm(100 << 20, 4), AllreduceAlgorithm::Ring);
  EXPECT_EQ(parse_allreduce_algorithm("rd"), AllreduceAlgorithm::RecursiveDoubling);
  EXPECT_EQ(parse_allreduce_algorithm("ring"), AllreduceAlgorithm::Ring);
  EXPECT_EQ(parse_allreduce_algorithm("tree"), std::nullopt);
  for (AllreduceAlgorithm a : kAlgorithms) EXPECT_EQ(parse_allreduce_algorithm(to_string(a)), a);
}

}  // namespace
}  // namespace frugal

namespace frugal {
namespace {

TEST(DenseAllreduceStats, RingSendsTwoPMinusOneOverPOfTheBuffer) {
  testing::run_ranks(4, [](Communicator& comm) {
    std::vector<float> data(1000, 1.0f);  // 4000 bytes, 4 equal blocks
    AllreduceStats stats;
    AllreduceOptions options;
    options.algorithm = AllreduceAlgorithm::Ring;
    options.stats = &stats;
    allreduce(comm, std::span<float>(data), options);
    EXPECT_EQ(stats.algorithm, AllreduceAlgorithm::Ring);
    // Plus the agreement block (32 bytes) in each of the log2(4) agreement rounds.
    constexpr std::size_t kAgreement = 2U * 32U;
    EXPECT_EQ(stats.wire_bytes_sent, 2U * 3U * 1000U + kAgreement);
    EXPECT_GT(stats.comm_seconds, 0.0);
    options.algorithm = AllreduceAlgorithm::RecursiveDoubling;
    allreduce(comm, std::span<float>(data), options);
    EXPECT_EQ(stats.wire_bytes_sent, 2U * 4000U + kAgreement);  // log2(4) full exchanges
  });
}

}  // namespace
}  // namespace frugal
