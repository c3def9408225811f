#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <ostream>
#include <random>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include "frugal/collectives/allreduce.hpp"
#include "loopback_harness.hpp"
#include "test_printers.hpp"

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
using Size = std::tuple<int, std::size_t, std::size_t>;

// The exact check for one element type and op: rank inputs are small integers, so the result
// must equal the serial sum (or average) with ==.
template <typename T, ReduceOp op>
void check_exact(const Size& size, AllreduceAlgorithm algorithm) {
  const auto [ranks, count, segment] = size;
  const std::vector<T> expected = exact_sum<T>(ranks, count, op);
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

// One element type with one op: the body above instantiated for it. gtest has no tests both
// typed and value-parameterised, so the type travels in the parameter as that instantiation.
struct DtypeOp {
  std::string name;
  void (*check)(const Size&, AllreduceAlgorithm);
};

void PrintTo(const DtypeOp& d, std::ostream* os) {
  *os << d.name;
}

const DtypeOp kDtypeOps[] = {
    {"float32_sum", &check_exact<float, ReduceOp::Sum>},
    {"float32_average", &check_exact<float, ReduceOp::Average>},
    {"float64_sum", &check_exact<double, ReduceOp::Sum>},
    {"float64_average", &check_exact<double, ReduceOp::Average>},
    {"int32_sum", &check_exact<std::int32_t, ReduceOp::Sum>},
};

std::vector<Size> sizes() {
  std::vector<Size> all;
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

// e.g. P4_n4003_seg36
std::string size_name(const Size& size) {
  const auto [p, count, segment] = size;
  return "P" + std::to_string(p) + "_n" + std::to_string(count) +
         (segment ? "_seg" + std::to_string(segment) : "");
}

// Element type and op, algorithm, size: one test each, e.g.
// Loopback/DenseAllreduceExact.EqualsTheSerialSum/float64_sum_rabenseifner_P8_n1000000.
using ExactCase = std::tuple<DtypeOp, AllreduceAlgorithm, Size>;

class DenseAllreduceExact : public ::testing::TestWithParam<ExactCase> {};

TEST_P(DenseAllreduceExact, EqualsTheSerialSum) {
  const auto& [dtype_op, algorithm, size] = GetParam();
  dtype_op.check(size, algorithm);
}

INSTANTIATE_TEST_SUITE_P(Loopback, DenseAllreduceExact,
                         ::testing::Combine(::testing::ValuesIn(kDtypeOps),
                                            ::testing::ValuesIn(kAlgorithms),
                                            ::testing::ValuesIn(sizes())),
                         [](const ::testing::TestParamInfo<ExactCase>& info) {
                           return std::get<0>(info.param).name + "_" +
                                  std::string(to_string(std::get<1>(info.param))) + "_" +
                                  size_name(std::get<2>(info.param));
                         });

// Random floats: every rank must hold bit-identical results, close to the double-precision sum.
class DenseAllreduceRandom : public ::testing::TestWithParam<std::tuple<AllreduceAlgorithm, Size>> {
};

TEST_P(DenseAllreduceRandom, IdenticalOnAllRanksAndAccurate) {
  const auto& [algorithm, size] = GetParam();
  const auto [ranks, count, segment] = size;
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

// e.g. Loopback/DenseAllreduceRandom.IdenticalOnAllRanksAndAccurate/ring_P3_n1
INSTANTIATE_TEST_SUITE_P(
    Loopback, DenseAllreduceRandom,
    ::testing::Combine(::testing::ValuesIn(kAlgorithms), ::testing::ValuesIn(sizes())),
    [](const ::testing::TestParamInfo<std::tuple<AllreduceAlgorithm, Size>>& info) {
      return std::string(to_string(std::get<0>(info.param))) + "_" +
             size_name(std::get<1>(info.param));
    });

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

class DenseAllreduceCounts : public ::testing::TestWithParam<AllreduceAlgorithm> {};

TEST_P(DenseAllreduceCounts, RanksWithDifferentCountsGetMismatchNotGarbage) {
  const AllreduceAlgorithm algorithm = GetParam();
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
               Error);
  EXPECT_GE(mismatches, 1);
}

INSTANTIATE_TEST_SUITE_P(DenseAllreduceErrors, DenseAllreduceCounts,
                         ::testing::ValuesIn(kAlgorithms),
                         [](const ::testing::TestParamInfo<AllreduceAlgorithm>& info) {
                           return std::string(to_string(info.param));
                         });

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
