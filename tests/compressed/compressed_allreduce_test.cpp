// Compressed allreduce over in-process ranks: every method and algorithm against the serial
// reference, error feedback across steps, agreement of the sparse algorithms, the dense switch,
// wire volume, mismatches and bad arguments.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <mutex>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include "compressed_cases.hpp"
#include "compressed_reference.hpp"
#include "frugal/collectives/allreduce.hpp"
#include "loopback_harness.hpp"
#include "reference_check.hpp"

namespace frugal {
namespace {

using testing::CompressedReference;
using testing::run_ranks;

constexpr int kSteps = 3;

// Ranks and count.
using Size = std::tuple<int, std::size_t>;
// Method with algorithm, error feedback, reduce op, size: one test per combination, so that a
// failure names it and --gtest_filter can pick a method, an algorithm or a size.
using CompressedCase = std::tuple<testing::MethodAlgorithm, bool, ReduceOp, Size>;

class CompressedAllreduce : public ::testing::TestWithParam<CompressedCase> {};

TEST_P(CompressedAllreduce, MatchesTheSerialReferenceOverSteps) {
  const auto& [method_algorithm, feedback, op, size] = GetParam();
  const auto [ranks, count] = size;
  const AllreduceAlgorithm algorithm = method_algorithm.algorithm;
  AllreduceOptions options;
  options.compression = method_algorithm.method.config;
  options.algorithm = algorithm;
  options.error_feedback = feedback;
  options.op = op;
  options.seed = 42;
  testing::expect_matches_reference(ranks, count, options, kSteps);
}

std::vector<Size> sizes() {
  std::vector<Size> all;
  for (int p : {1, 2, 3, 4, 5, 8}) {
    const std::set<std::size_t> counts = {0, 1, static_cast<std::size_t>(p - 1),
                                          static_cast<std::size_t>(300 * p + 3), 20'000};
    for (std::size_t c : counts) all.emplace_back(p, c);
  }
  return all;
}

// e.g. onebit_two_phase_ef_average_P4_n1203
std::string case_name(const ::testing::TestParamInfo<CompressedCase>& info) {
  const auto& [method_algorithm, feedback, op, size] = info.param;
  return testing::param_name(method_algorithm) + (feedback ? "_ef_" : "_noef_") +
         std::string(to_string(op)) + "_P" + std::to_string(std::get<0>(size)) + "_n" +
         std::to_string(std::get<1>(size));
}

INSTANTIATE_TEST_SUITE_P(Loopback, CompressedAllreduce,
                         ::testing::Combine(::testing::ValuesIn(testing::method_algorithms()),
                                            ::testing::Bool(),
                                            ::testing::Values(ReduceOp::Sum, ReduceOp::Average),
                                            ::testing::ValuesIn(sizes())),
                         case_name);

AllreduceOptions topk_options(double density, AllreduceAlgorithm algorithm) {
  AllreduceOptions o;
  o.compression.method = compression::Method::TopK;
  o.compression.density = density;
  o.algorithm = algorithm;
  o.error_feedback = false;
  return o;
}

// P and top-k density.
using SparseCase = std::tuple<int, double>;

// e.g. P4_d0_02
std::string sparse_case_name(const ::testing::TestParamInfo<SparseCase>& info) {
  return "P" + std::to_string(std::get<0>(info.param)) + "_" +
         testing::density_name(std::get<1>(info.param));
}

class SparseAgreement : public ::testing::TestWithParam<SparseCase> {};

TEST_P(SparseAgreement, AllgatherAndRecursiveDoublingAgreeExactlyOnIntegerInputs) {
  const auto [p, density] = GetParam();
  std::mutex mutex;
  std::vector<std::vector<float>> a(static_cast<std::size_t>(p)), b(a.size());
  run_ranks(p, [&](Communicator& comm) {
    std::vector<float> x = testing::integer_input(comm.rank(), 0, 10'007);
    std::vector<float> y = x;
    allreduce(comm, std::span<float>(x),
              topk_options(density, AllreduceAlgorithm::SparseAllgather));
    allreduce(comm, std::span<float>(y),
              topk_options(density, AllreduceAlgorithm::SparseRecursiveDoubling));
    std::lock_guard lock(mutex);
    a[static_cast<std::size_t>(comm.rank())] = std::move(x);
    b[static_cast<std::size_t>(comm.rank())] = std::move(y);
  });
  for (int r = 0; r < p; ++r) {
    ASSERT_EQ(a[static_cast<std::size_t>(r)], b[0]) << "P " << p << " density " << density;
    ASSERT_EQ(b[static_cast<std::size_t>(r)], b[0]);
  }
}

INSTANTIATE_TEST_SUITE_P(SparseAllreduce, SparseAgreement,
                         ::testing::Combine(::testing::Values(2, 3, 4, 5, 6, 8),
                                            ::testing::Values(0.001, 0.02, 0.2, 0.9)),
                         sparse_case_name);

class SparseDenseSwitch : public ::testing::TestWithParam<SparseCase> {};

TEST_P(SparseDenseSwitch, RecursiveDoublingSwitchesToDenseOnlyPastBreakEven) {
  const auto [p, density] = GetParam();
  std::mutex mutex;
  std::vector<int> switched;
  std::vector<std::size_t> wire;
  run_ranks(p, [&](Communicator& comm) {
    std::vector<float> x = testing::case_input(comm.rank(), 0, 50'000);
    AllreduceStats stats;
    AllreduceOptions o = topk_options(density, AllreduceAlgorithm::SparseRecursiveDoubling);
    o.stats = &stats;
    allreduce(comm, std::span<float>(x), o);
    EXPECT_EQ(stats.algorithm, AllreduceAlgorithm::SparseRecursiveDoubling);
    std::lock_guard lock(mutex);
    switched.push_back(stats.dense_switch_step);
    wire.push_back(stats.wire_bytes_sent);
  });
  const bool any_switched =
      std::any_of(switched.begin(), switched.end(), [](int s) { return s >= 0; });
  // Two selections of 30% overlap little: their union passes 50% density at the first step.
  EXPECT_EQ(any_switched, density > 0.1) << "P " << p << " density " << density;
  // Never more than a dense vector per step (plus headers).
  const std::size_t steps = 3;
  for (std::size_t w : wire) EXPECT_LE(w, (steps + 1) * (50'000 * 4 + 64) + p * 64);
}

INSTANTIATE_TEST_SUITE_P(SparseAllreduce, SparseDenseSwitch,
                         ::testing::Combine(::testing::Values(4, 5, 8),
                                            ::testing::Values(0.001, 0.3)),
                         sparse_case_name);

// Two-phase sends 2(P-1)/P of the compressed buffer per rank; allgather sends it P-1 times.
// (algorithm, P, QSGD bits)
class WireBytes : public ::testing::TestWithParam<std::tuple<AllreduceAlgorithm, int, int>> {};

TEST_P(WireBytes, TwoPhaseIsTwoPMinusOneOverPOfTheCompressedBufferAllgatherPMinusOne) {
  const auto [algorithm, p, bits] = GetParam();
  const std::size_t n = 1 << 18;
  std::mutex mutex;
  std::vector<std::size_t> wire;
  run_ranks(p, [&](Communicator& comm) {
    std::vector<float> x = testing::case_input(comm.rank(), 0, n);
    AllreduceStats stats;
    AllreduceOptions o;
    o.compression.method = compression::Method::Qsgd;
    o.compression.bits = bits;
    o.error_feedback = false;
    o.algorithm = algorithm;
    o.stats = &stats;
    allreduce(comm, std::span<float>(x), o);
    EXPECT_EQ(stats.algorithm, algorithm);
    EXPECT_GT(stats.encode_seconds, 0.0);
    EXPECT_GT(stats.decode_seconds, 0.0);
    std::lock_guard lock(mutex);
    wire.push_back(stats.wire_bytes_sent);
  });
  // Levels + sign bits per element, one norm per 512-element bucket.
  const double compressed = n * (bits + 1) / 8.0 + n / 512.0 * 4;
  const double ideal = algorithm == AllreduceAlgorithm::TwoPhase
                           ? 2.0 * (p - 1) / p * compressed
                           : static_cast<double>(p - 1) * compressed;
  for (std::size_t w : wire) {
    EXPECT_GE(static_cast<double>(w), ideal) << "P " << p << " bits " << bits;
    EXPECT_LE(static_cast<double>(w), ideal * 1.01 + 1024) << "P " << p << " bits " << bits;
  }
}

// e.g. two_phase_P4_qsgd8
INSTANTIATE_TEST_SUITE_P(
    Qsgd, WireBytes,
    ::testing::Combine(::testing::Values(AllreduceAlgorithm::TwoPhase,
                                         AllreduceAlgorithm::Allgather),
                       ::testing::Values(2, 4), ::testing::Values(2, 4, 8)),
    [](const ::testing::TestParamInfo<std::tuple<AllreduceAlgorithm, int, int>>& info) {
      return std::string(to_string(std::get<0>(info.param))) + "_P" +
             std::to_string(std::get<1>(info.param)) + "_qsgd" +
             std::to_string(std::get<2>(info.param));
    });

// Auto sends a quantizer's payloads by allgather at P <= 2, where it moves the bytes two-phase
// moves and quantizes each value once, and by two-phase beyond, where it moves fewer.
TEST(AutoAlgorithm, QuantizersAllgatherAtTwoRanksAndTwoPhaseBeyond) {
  for (const compression::Method method :
       {compression::Method::Fp16, compression::Method::Bf16, compression::Method::OneBit,
        compression::Method::Ternary, compression::Method::Qsgd}) {
    AllreduceOptions o;
    o.compression.method = method;
    EXPECT_EQ(choose_allreduce_algorithm(o, 1 << 20, 1), AllreduceAlgorithm::Allgather);
    EXPECT_EQ(choose_allreduce_algorithm(o, 1 << 20, 2), AllreduceAlgorithm::Allgather);
    EXPECT_EQ(choose_allreduce_algorithm(o, 1 << 20, 3), AllreduceAlgorithm::TwoPhase);
    EXPECT_EQ(choose_allreduce_algorithm(o, 1 << 20, 8), AllreduceAlgorithm::TwoPhase);
  }
  for (const int p : {2, 3}) {
    std::mutex mutex;
    std::vector<AllreduceAlgorithm> ran;
    run_ranks(p, [&](Communicator& comm) {
      std::vector<float> x = testing::case_input(comm.rank(), 0, 4096);
      AllreduceState state;
      AllreduceStats stats;
      AllreduceOptions o;
      o.compression.method = compression::Method::OneBit;
      o.state = &state;
      o.stats = &stats;
      allreduce(comm, std::span<float>(x), o);
      // Only two-phase's owners keep a server residual.
      EXPECT_EQ(state.server_residual().empty(), p == 2);
      std::lock_guard lock(mutex);
      ran.push_back(stats.algorithm);
    });
    for (const AllreduceAlgorithm a : ran) {
      EXPECT_EQ(a, p == 2 ? AllreduceAlgorithm::Allgather : AllreduceAlgorithm::TwoPhase);
    }
  }
}

// Runs `call` on every rank without fail-fast and returns each rank's error code (-1: none).
std::vector<int> error_codes(int p, const std::function<void(Communicator&)>& call) {
  std::mutex mutex;
  std::vector<int> codes(static_cast<std::size_t>(p), -1);
  run_ranks(
      p,
      [&](Communicator& comm) {
        try {
          call(comm);
        } catch (const Error& e) {
          std::lock_guard lock(mutex);
          codes[static_cast<std::size_t>(comm.rank())] = static_cast<int>(e.code());
        }
      },
      std::chrono::seconds(5), false);
  return codes;
}

// One rank (rank 2) disagrees with the others in one term of a QSGD allreduce.
struct Disagreement {
  std::string what;
  std::function<void(int rank, std::size_t& count, AllreduceOptions& o)> apply;
};

const std::vector<Disagreement>& disagreements() {
  static const std::vector<Disagreement> kinds = {
      {"count", [](int r, std::size_t& n, AllreduceOptions&) { n += r == 2 ? 1 : 0; }},
      {"method",
       [](int r, std::size_t&, AllreduceOptions& o) {
         if (r == 2) o.compression.method = compression::Method::Ternary;
       }},
      {"bits",
       [](int r, std::size_t&, AllreduceOptions& o) { o.compression.bits = r == 2 ? 8 : 4; }},
      {"op", [](int r, std::size_t&,
                AllreduceOptions& o) { o.op = r == 2 ? ReduceOp::Average : ReduceOp::Sum; }},
  };
  return kinds;
}

// Index into disagreements(), P.
using DisagreementCase = std::tuple<std::size_t, int>;

class CompressedDisagreement : public ::testing::TestWithParam<DisagreementCase> {};

TEST_P(CompressedDisagreement, EveryRankGetsMismatchWhenOneRankDisagrees) {
  const int mismatch = static_cast<int>(ErrorCode::Mismatch);
  const auto [index, p] = GetParam();
  const Disagreement& kind = disagreements()[index];
  const std::vector<int> codes = error_codes(p, [&](Communicator& comm) {
    std::size_t n = 4096;
    AllreduceOptions o;
    o.compression.method = compression::Method::Qsgd;
    o.error_feedback = false;
    kind.apply(comm.rank(), n, o);
    std::vector<float> x(n, 1.0f);
    allreduce(comm, std::span<float>(x), o);
  });
  for (int r = 0; r < p; ++r) {
    EXPECT_EQ(codes[static_cast<std::size_t>(r)], mismatch)
        << kind.what << ": rank " << r << " of " << p;
  }
}

// e.g. bits_P4
INSTANTIATE_TEST_SUITE_P(
    CompressedMismatch, CompressedDisagreement,
    ::testing::Combine(::testing::Range(std::size_t{0}, disagreements().size()),
                       ::testing::Values(3, 4)),
    [](const ::testing::TestParamInfo<DisagreementCase>& info) {
      return testing::name_part(disagreements()[std::get<0>(info.param)].what) + "_P" +
             std::to_string(std::get<1>(info.param));
    });

// Top-k through the sparse algorithms too: rank 1's density differs.
class SparseDisagreement : public ::testing::TestWithParam<AllreduceAlgorithm> {};

TEST_P(SparseDisagreement, EveryRankGetsMismatchWhenOneRankDisagrees) {
  const int mismatch = static_cast<int>(ErrorCode::Mismatch);
  const AllreduceAlgorithm algorithm = GetParam();
  const std::vector<int> codes = error_codes(4, [&](Communicator& comm) {
    AllreduceOptions o = topk_options(comm.rank() == 1 ? 0.02 : 0.01, algorithm);
    std::vector<float> x(10'000, 1.0f);
    allreduce(comm, std::span<float>(x), o);
  });
  for (int r = 0; r < 4; ++r) EXPECT_EQ(codes[static_cast<std::size_t>(r)], mismatch) << r;
}

// e.g. topk_sparse_rd_P4
INSTANTIATE_TEST_SUITE_P(CompressedMismatch, SparseDisagreement,
                         ::testing::Values(AllreduceAlgorithm::SparseAllgather,
                                           AllreduceAlgorithm::SparseRecursiveDoubling),
                         [](const ::testing::TestParamInfo<AllreduceAlgorithm>& info) {
                           return "topk_" + std::string(to_string(info.param)) + "_P4";
                         });

TEST(TopKFp16Values, AFiniteValueBeyondFp16IsDecidedOnEveryRank) {
  // 1e5 becomes Inf in fp16: the scan ahead of the encode must see it (flag_free_magnitude
  // 65504), or its rank alone throws in the encode and the other times out.
  for (const NonFiniteAction action : {NonFiniteAction::Error, NonFiniteAction::Skip}) {
    for (const AllreduceAlgorithm algorithm :
         {AllreduceAlgorithm::SparseAllgather, AllreduceAlgorithm::SparseRecursiveDoubling}) {
      run_ranks(2, [&](Communicator& comm) {
        AllreduceOptions o;
        o.compression.method = compression::Method::TopK;
        o.compression.density = 0.5;
        o.compression.values = compression::TopKValues::Fp16;
        o.algorithm = algorithm;
        o.error_feedback = false;
        o.non_finite = action;
        o.timeout = std::chrono::milliseconds(20000);
        AllreduceStats stats;
        o.stats = &stats;
        std::vector<float> data(1000, 1.0f);
        if (comm.rank() == 1) data[5] = 1e5f;
        const std::vector<float> before = data;
        ErrorCode code = ErrorCode::Internal;
        try {
          allreduce(comm, std::span<float>(data), o);
        } catch (const Error& e) {
          code = e.code();
        }
        if (action == NonFiniteAction::Error) {
          EXPECT_EQ(code, ErrorCode::InvalidArgument) << "rank " << comm.rank();
        } else {
          EXPECT_EQ(code, ErrorCode::Internal) << "rank " << comm.rank();
          EXPECT_TRUE(stats.non_finite_skipped) << "rank " << comm.rank();
        }
        EXPECT_EQ(data, before) << "rank " << comm.rank();
      });
    }
  }
}

TEST(CompressedArguments, BadCombinationsAreInvalidArgumentNamingTheParameter) {
  run_ranks(2, [](Communicator& comm) {
    std::vector<float> x(100, 1.0f);
    auto expect_invalid = [&](const AllreduceOptions& o, const std::string& name) {
      try {
        allreduce(comm, std::span<float>(x), o);
        ADD_FAILURE() << "accepted bad " << name;
      } catch (const Error& e) {
        EXPECT_EQ(e.code(), ErrorCode::InvalidArgument) << e.what();
        EXPECT_NE(std::string(e.what()).find(name), std::string::npos) << e.what();
      }
    };
    AllreduceOptions o;
    o.compression.method = compression::Method::OneBit;
    expect_invalid(o, "state");  // error feedback without a state
    o.error_feedback = false;
    o.algorithm = AllreduceAlgorithm::Ring;
    expect_invalid(o, "algorithm");
    o.algorithm = AllreduceAlgorithm::SparseAllgather;
    expect_invalid(o, "algorithm");
    AllreduceOptions topk = topk_options(0.01, AllreduceAlgorithm::TwoPhase);
    expect_invalid(topk, "algorithm");
    AllreduceOptions qsgd;
    qsgd.compression.method = compression::Method::Qsgd;
    qsgd.compression.bits = 3;
    qsgd.error_feedback = false;
    expect_invalid(qsgd, "bits");
    AllreduceOptions dense_algo;
    dense_algo.algorithm = AllreduceAlgorithm::TwoPhase;
    expect_invalid(dense_algo, "algorithm");
    std::vector<double> doubles(10);
    AllreduceOptions fp16;
    fp16.compression.method = compression::Method::Fp16;
    fp16.error_feedback = false;
    try {
      allreduce(comm, std::span<double>(doubles), fp16);
      ADD_FAILURE() << "float64 accepted for compression";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::InvalidArgument);
    }
    EXPECT_FALSE(comm.failed());
  });
}

// algorithm_supports is the rule callers check before they run (the trainer's and
// frugal-bench's command lines); it must be exactly what allreduce() accepts.
constexpr AllreduceAlgorithm kAllAlgorithms[] = {AllreduceAlgorithm::Auto,
                                                 AllreduceAlgorithm::Ring,
                                                 AllreduceAlgorithm::RecursiveDoubling,
                                                 AllreduceAlgorithm::Rabenseifner,
                                                 AllreduceAlgorithm::TwoPhase,
                                                 AllreduceAlgorithm::SparseAllgather,
                                                 AllreduceAlgorithm::SparseRecursiveDoubling,
                                                 AllreduceAlgorithm::Allgather};
constexpr compression::Method kAllMethods[] = {
    compression::Method::None, compression::Method::Fp16,   compression::Method::Bf16,
    compression::Method::TopK, compression::Method::OneBit, compression::Method::Ternary,
    compression::Method::Qsgd};

using AlgorithmMethod = std::tuple<AllreduceAlgorithm, compression::Method>;

class AlgorithmSupports : public ::testing::TestWithParam<AlgorithmMethod> {};

TEST_P(AlgorithmSupports, IsWhatAllreduceAccepts) {
  const auto [a, m] = GetParam();
  const bool expected = algorithm_supports(a, m);
  run_ranks(2, [&](Communicator& comm) {
    std::vector<float> x(64, 1.0f);
    AllreduceOptions o;
    o.algorithm = a;
    o.compression.method = m;
    o.error_feedback = false;
    bool accepted = true;
    try {
      allreduce(comm, std::span<float>(x), o);
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::InvalidArgument) << e.what();
      EXPECT_NE(std::string(e.what()).find("algorithm"), std::string::npos) << e.what();
      accepted = false;
    }
    EXPECT_EQ(accepted, expected) << to_string(a) << " with " << compression::to_string(m);
  });
}

// e.g. two_phase_qsgd
INSTANTIATE_TEST_SUITE_P(CompressedArguments, AlgorithmSupports,
                         ::testing::Combine(::testing::ValuesIn(kAllAlgorithms),
                                            ::testing::ValuesIn(kAllMethods)),
                         [](const ::testing::TestParamInfo<AlgorithmMethod>& info) {
                           return std::string(to_string(std::get<0>(info.param))) + "_" +
                                  std::string(compression::to_string(std::get<1>(info.param)));
                         });

TEST(CompressedArguments, AlgorithmSupportsCountsTheSupportedPairs) {
  int supported = 0;
  for (const AllreduceAlgorithm a : kAllAlgorithms) {
    for (const compression::Method m : kAllMethods) supported += algorithm_supports(a, m) ? 1 : 0;
  }
  // Auto runs all 7 methods; 3 dense algorithms x None; 2 quantizer algorithms x 5; 2 top-k ones.
  EXPECT_EQ(supported, 7 + 3 + 10 + 2);
  EXPECT_FALSE(algorithm_supports(static_cast<AllreduceAlgorithm>(99), compression::Method::None));
  EXPECT_FALSE(algorithm_supports(AllreduceAlgorithm::Auto, static_cast<compression::Method>(99)));
}

// The list error messages give is exactly the supported named algorithms.
TEST(CompressedArguments, SupportedAlgorithmsListsWhatAlgorithmSupportsAccepts) {
  using compression::Method;
  EXPECT_EQ(supported_algorithms(Method::None), "ring, recursive_doubling, rabenseifner");
  EXPECT_EQ(supported_algorithms(Method::TopK), "sparse_allgather, sparse_rd");
  for (const Method m : {Method::Fp16, Method::Bf16, Method::OneBit, Method::Ternary, Method::Qsgd})
    EXPECT_EQ(supported_algorithms(m), "two_phase, allgather") << compression::to_string(m);
  EXPECT_EQ(supported_algorithms(static_cast<Method>(99)), "");
  // A list holds exactly the named enumerators that algorithm_supports accepts (the loop
  // stops at the first value to_string does not know).
  for (const Method m : {Method::None, Method::Fp16, Method::Bf16, Method::TopK, Method::OneBit,
                         Method::Ternary, Method::Qsgd}) {
    const std::string list = ", " + supported_algorithms(m) + ",";
    int named = 0;
    for (int i = 1; to_string(static_cast<AllreduceAlgorithm>(i)) != "unknown"; ++i) {
      const auto a = static_cast<AllreduceAlgorithm>(i);
      const bool listed = list.find(", " + std::string(to_string(a)) + ",") != std::string::npos;
      EXPECT_EQ(listed, algorithm_supports(a, m)) << to_string(a) << " in '" << list << "'";
      ++named;
    }
    EXPECT_EQ(named, 7);
  }
  // The message allreduce gives names them.
  run_ranks(2, [](Communicator& comm) {
    std::vector<float> x(64, 1.0f);
    AllreduceOptions o;
    o.algorithm = AllreduceAlgorithm::Ring;
    o.compression.method = Method::TopK;
    o.error_feedback = false;
    try {
      allreduce(comm, std::span<float>(x), o);
      ADD_FAILURE() << "ring ran topk";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("use sparse_allgather, sparse_rd (or auto)"),
                std::string::npos)
          << e.what();
    }
    o.algorithm = AllreduceAlgorithm::TwoPhase;
    o.compression.method = Method::None;
    try {
      allreduce(comm, std::span<float>(x), o);
      ADD_FAILURE() << "two_phase ran dense";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(
                    "dense allreduce runs ring, recursive_doubling, rabenseifner (or auto)"),
                std::string::npos)
          << e.what();
    }
  });
}

TEST(AllreduceStateTest, BindsToOneLayoutAndSavesAndRestores) {
  // Three steps with error feedback; a state saved after step 2 and restored into a fresh one
  // must reproduce step 3 exactly.
  std::mutex mutex;
  std::vector<std::vector<float>> third(2), replayed(2);
  run_ranks(2, [&](Communicator& comm) {
    AllreduceOptions o;
    o.compression.method = compression::Method::OneBit;
    AllreduceState state;
    o.state = &state;
    std::vector<std::byte> image;
    std::vector<float> x;
    for (int step = 0; step < 3; ++step) {
      if (step == 2) image = state.save();
      x = testing::case_input(comm.rank(), step, 5000);
      allreduce(comm, std::span<float>(x), o);
    }
    AllreduceState restored;
    restored.restore(image);
    EXPECT_EQ(restored.steps(), 2U);
    EXPECT_EQ(restored.worker_residual().size(), 5000U);
    o.state = &restored;
    std::vector<float> y = testing::case_input(comm.rank(), 2, 5000);
    allreduce(comm, std::span<float>(y), o);
    {
      std::lock_guard lock(mutex);
      third[static_cast<std::size_t>(comm.rank())] = x;
      replayed[static_cast<std::size_t>(comm.rank())] = y;
    }
    // The same state for a buffer of another size is a mistake.
    std::vector<float> other(4000, 1.0f);
    try {
      allreduce(comm, std::span<float>(other), o);
      ADD_FAILURE() << "state reused for another layout";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::Mismatch);
    }
    std::vector<std::byte> corrupt = image;
    corrupt.resize(corrupt.size() - 3);
    EXPECT_THROW(restored.restore(corrupt), Error);
  });
  EXPECT_EQ(third, replayed);
}

// The residuals mean something for one op and one k only (two-phase's Average server residual is
// 1/P of a Sum one; a top-k residual holds what k left out): a state reused with another op or k
// is Mismatch naming the change, on every rank.
TEST(AllreduceStateTest, AnotherOpOrKIsMismatchNamingTheChange) {
  struct Change {
    const char* what;
    compression::Method method;
    AllreduceAlgorithm algorithm;
    void (*apply)(AllreduceOptions&);
  };
  const Change changes[] = {
      {"op sum -> average", compression::Method::OneBit, AllreduceAlgorithm::TwoPhase,
       [](AllreduceOptions& o) { o.op = ReduceOp::Average; }},
      {"k 30 -> 60", compression::Method::TopK, AllreduceAlgorithm::Auto,
       [](AllreduceOptions& o) { o.compression.density = 0.02; }},
      {"method onebit -> qsgd", compression::Method::OneBit, AllreduceAlgorithm::TwoPhase,
       [](AllreduceOptions& o) { o.compression.method = compression::Method::Qsgd; }},
  };
  for (const Change& change : changes) {
    SCOPED_TRACE(change.what);
    run_ranks(2, [&](Communicator& comm) {
      AllreduceState state;
      AllreduceOptions o;
      o.compression.method = change.method;
      o.compression.density = 0.01;
      o.algorithm = change.algorithm;
      o.state = &state;
      std::vector<float> x = testing::case_input(comm.rank(), 0, 3000);
      allreduce(comm, std::span<float>(x), o);
      change.apply(o);
      try {
        allreduce(comm, std::span<float>(x), o);
        ADD_FAILURE() << "state reused after " << change.what;
      } catch (const Error& e) {
        EXPECT_EQ(e.code(), ErrorCode::Mismatch);
        EXPECT_NE(std::string(e.what()).find(std::string("changes ") + change.what),
                  std::string::npos)
            << e.what();
      }
      EXPECT_EQ(state.steps(), 1U);
    });
  }
}

// Images of versions 1 (no op, no k in the layout) and 2 (no segments) still restore and continue
// the run exactly; the first allreduce after the restore supplies what they lack, which binds from
// then on. A newer version is refused, naming the versions this library reads.
TEST(AllreduceStateTest, ReadsVersionOneAndTwoImagesAndRefusesNewerOnes) {
  std::mutex mutex;
  std::vector<std::vector<float>> from_v3(2), from_v2(2), from_v1(2);
  run_ranks(2, [&](Communicator& comm) {
    AllreduceOptions o;
    o.compression.method = compression::Method::TopK;
    AllreduceState state;
    o.state = &state;
    std::vector<float> x = testing::case_input(comm.rank(), 0, 5000);
    allreduce(comm, std::span<float>(x), o);
    const std::vector<std::byte> v4 = state.save();
    // Version 4 adds the gtopk flags (2 bytes) after the segments, at byte 54; version 3 adds
    // the segments flag (1 byte) and digest (8 bytes) after k, at byte 45; version 2 adds op
    // (1 byte) and k (8 bytes) after the feedback flag, at byte 36.
    ASSERT_EQ(static_cast<int>(v4[4]), 4);
    std::vector<std::byte> v3 = v4;
    v3[4] = std::byte{3};
    v3.erase(v3.begin() + 54, v3.begin() + 56);
    std::vector<std::byte> v2 = v3;
    v2[4] = std::byte{2};
    v2.erase(v2.begin() + 45, v2.begin() + 54);
    std::vector<std::byte> v1 = v2;
    v1[4] = std::byte{1};
    v1.erase(v1.begin() + 36, v1.begin() + 45);
    AllreduceState a, b, c;
    a.restore(v3);
    b.restore(v2);
    c.restore(v1);
    std::vector<float> y = testing::case_input(comm.rank(), 1, 5000), z = y, w = y;
    o.state = &a;
    allreduce(comm, std::span<float>(y), o);
    o.state = &b;
    allreduce(comm, std::span<float>(z), o);
    o.state = &c;
    allreduce(comm, std::span<float>(w), o);
    {
      std::lock_guard lock(mutex);
      from_v3[static_cast<std::size_t>(comm.rank())] = y;
      from_v2[static_cast<std::size_t>(comm.rank())] = z;
      from_v1[static_cast<std::size_t>(comm.rank())] = w;
    }
    // Now bound to k = 50 and to one tensor: another k, or segments, are refused.
    o.compression.density = 0.02;
    EXPECT_THROW(allreduce(comm, std::span<float>(w), o), Error);
    o.compression.density = 0.01;
    const std::vector<std::size_t> segments = {2500, 2500};
    o.segments = segments;
    o.state = &b;
    try {
      allreduce(comm, std::span<float>(z), o);
      ADD_FAILURE() << "a restored version-2 state took other segments after binding";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::Mismatch);
      EXPECT_NE(std::string(e.what()).find("segments one tensor -> digest"), std::string::npos)
          << e.what();
    }
    std::vector<std::byte> v5 = v4;
    v5[4] = std::byte{5};
    try {
      c.restore(v5);
      ADD_FAILURE() << "a version 5 image was restored";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::InvalidArgument);
      EXPECT_NE(std::string(e.what()).find("version 5, this libfrugal reads versions 1 to 4"),
                std::string::npos)
          << e.what();
    }
  });
  EXPECT_EQ(from_v1, from_v3);
  EXPECT_EQ(from_v2, from_v3);
}

// A state restored from a version-1 image and saved again before its first allreduce (a
// checkpoint right after a resume) writes op 0 and k 0 into a current image: that image restores
// too (once "no op in the layout", found by fuzz_state_images), and the run goes on exactly as
// with the state that never left.
TEST(AllreduceStateTest, AVersionOneImageSavedAgainBeforeItsFirstAllreduceRestores) {
  std::mutex mutex;
  std::vector<std::vector<float>> kept(2), resaved(2);
  run_ranks(2, [&](Communicator& comm) {
    AllreduceOptions o;
    o.compression.method = compression::Method::TopK;
    AllreduceState state;
    o.state = &state;
    std::vector<float> x = testing::case_input(comm.rank(), 0, 5000);
    allreduce(comm, std::span<float>(x), o);
    std::vector<std::byte> v1 = state.save();
    v1[4] = std::byte{1};
    v1.erase(v1.begin() + 36, v1.begin() + 56);  // op, k, segments and gtopk fields
    AllreduceState old;
    old.restore(v1);
    const std::vector<std::byte> again = old.save();
    ASSERT_EQ(static_cast<int>(again[4]), 4);
    AllreduceState reread;
    ASSERT_NO_THROW(reread.restore(again));
    EXPECT_EQ(reread.save(), again);
    std::vector<float> y = testing::case_input(comm.rank(), 1, 5000), z = y;
    allreduce(comm, std::span<float>(y), o);
    o.state = &reread;
    allreduce(comm, std::span<float>(z), o);
    // Bound from then on: another k is refused.
    o.compression.density = 0.02;
    EXPECT_THROW(allreduce(comm, std::span<float>(z), o), Error);
    std::lock_guard lock(mutex);
    kept[static_cast<std::size_t>(comm.rank())] = y;
    resaved[static_cast<std::size_t>(comm.rank())] = z;
  });
  EXPECT_EQ(kept, resaved);
  // k without an op is still malformed.
  run_ranks(2, [&](Communicator& comm) {
    AllreduceOptions o;
    o.compression.method = compression::Method::TopK;
    AllreduceState state;
    o.state = &state;
    std::vector<float> x = testing::case_input(comm.rank(), 0, 5000);
    allreduce(comm, std::span<float>(x), o);
    std::vector<std::byte> image = state.save();
    image[36] = std::byte{0};  // the op; k (50) follows
    AllreduceState bad;
    try {
      bad.restore(image);
      ADD_FAILURE() << "an image with k but no op was restored";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::InvalidArgument);
      EXPECT_NE(std::string(e.what()).find("no op in the layout"), std::string::npos) << e.what();
    }
  });
}

// A version-2 image (no segments recorded) of a segmented bucket restores and takes the
// segments of its first allreduce: the run goes on exactly as with the state that never left.
TEST(AllreduceStateTest, VersionTwoImageOfASegmentedBufferContinuesExactly) {
  std::mutex mutex;
  std::vector<std::vector<float>> kept(2), restored(2);
  const std::vector<std::size_t> segments = {100, 2900, 20, 980};
  run_ranks(2, [&](Communicator& comm) {
    AllreduceOptions o;
    o.compression.method = compression::Method::OneBit;
    o.compression.bucket = 256;
    o.algorithm = AllreduceAlgorithm::TwoPhase;
    o.segments = segments;
    AllreduceState state;
    o.state = &state;
    std::vector<float> x = testing::case_input(comm.rank(), 0, 4000);
    allreduce(comm, std::span<float>(x), o);
    std::vector<std::byte> v2 = state.save();
    v2[4] = std::byte{2};
    v2.erase(v2.begin() + 45, v2.begin() + 56);  // the segments and gtopk fields
    AllreduceState old;
    old.restore(v2);
    std::vector<float> y = testing::case_input(comm.rank(), 1, 4000), z = y;
    allreduce(comm, std::span<float>(y), o);
    o.state = &old;
    allreduce(comm, std::span<float>(z), o);
    std::lock_guard lock(mutex);
    kept[static_cast<std::size_t>(comm.rank())] = y;
    restored[static_cast<std::size_t>(comm.rank())] = z;
  });
  EXPECT_EQ(kept, restored);
}

// Top-k and 1-bit without error feedback lose what they drop for good: allowed (ablations), but
// said on stderr, once per process and method. In a fresh process, so that no earlier test has
// used up the warning.
TEST(AllreduceWarning, BiasedMethodWithoutErrorFeedbackWarnsOncePerMethod) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(
      {
        ::testing::internal::CaptureStderr();
        run_ranks(1, [](Communicator& comm) {
          for (const compression::Method m :
               {compression::Method::TopK, compression::Method::OneBit, compression::Method::TopK,
                compression::Method::Qsgd, compression::Method::OneBit}) {
            std::vector<float> x(1000, 1.0f);
            AllreduceOptions o;
            o.compression.method = m;
            o.error_feedback = false;
            allreduce(comm, std::span<float>(x), o);
          }
        });
        const std::string err = ::testing::internal::GetCapturedStderr();
        const auto count = [&](const std::string& what) {
          std::size_t n = 0;
          for (auto at = err.find(what); at != std::string::npos; at = err.find(what, at + 1)) ++n;
          return n;
        };
        const bool ok = count("warning: topk without error feedback") == 1 &&
                        count("warning: onebit without error feedback") == 1 &&
                        count("warning") == 2;
        std::fprintf(stderr, "%s", ok ? "once each\n" : err.c_str());
        std::exit(ok ? 0 : 1);
      },
      ::testing::ExitedWithCode(0), "once each");
}

// Two-phase keeps a server residual and allgather does not: a state carried from one algorithm to
// the other (also through save/restore) is refused on every rank instead of silently running
// two-phase without its server error feedback.
class StateAcrossAlgorithms : public ::testing::TestWithParam<AllreduceAlgorithm> {};

TEST_P(StateAcrossAlgorithms, StateOfOneAlgorithmIsRefusedByTheOther) {
  const bool two_phase_first = GetParam() == AllreduceAlgorithm::TwoPhase;
  run_ranks(2, [&](Communicator& comm) {
    AllreduceOptions o;
    o.compression.method = compression::Method::OneBit;
    AllreduceState state;
    o.state = &state;
    o.algorithm = two_phase_first ? AllreduceAlgorithm::TwoPhase : AllreduceAlgorithm::Allgather;
    std::vector<float> x = testing::case_input(comm.rank(), 0, 3000);
    allreduce(comm, std::span<float>(x), o);
    AllreduceState restored;
    restored.restore(state.save());
    o.algorithm = two_phase_first ? AllreduceAlgorithm::Allgather : AllreduceAlgorithm::TwoPhase;
    for (AllreduceState* s : {&state, &restored}) {
      o.state = s;
      try {
        allreduce(comm, std::span<float>(x), o);
        ADD_FAILURE() << "state carried across algorithms";
      } catch (const Error& e) {
        EXPECT_EQ(e.code(), ErrorCode::Mismatch);
        EXPECT_NE(std::string(e.what()).find("one state per buffer and algorithm"),
                  std::string::npos)
            << e.what();
      }
    }
  });
}

// The algorithm the state was made by: two_phase_first, allgather_first.
INSTANTIATE_TEST_SUITE_P(AllreduceStateTest, StateAcrossAlgorithms,
                         ::testing::Values(AllreduceAlgorithm::TwoPhase,
                                           AllreduceAlgorithm::Allgather),
                         [](const ::testing::TestParamInfo<AllreduceAlgorithm>& info) {
                           return std::string(to_string(info.param)) + "_first";
                         });

}  // namespace
}  // namespace frugal
