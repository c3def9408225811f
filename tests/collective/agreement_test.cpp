// Ranks that disagree about a dense allreduce, or call dense against compressed, all get
// Mismatch (issue 8), and the NaN/Inf actions give the same decision on every rank. In-process
// ranks (threads over loopback); each rank records what it saw instead of throwing, so the test
// checks every rank, not the first.
#include "agreement.hpp"

#include <gtest/gtest.h>

#include <bit>
#include <chrono>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <memory>
#include <mutex>
#include <numeric>
#include <optional>
#include <ostream>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "collective_calls.hpp"
#include "compressed_segments.hpp"
#include "forwarding_transport.hpp"
#include "frugal/collectives/allreduce.hpp"
#include "frugal/collectives/buckets.hpp"
#include "frugal/collectives/collectives.hpp"
#include "frugal/error.hpp"
#include "frugal/loopback.hpp"
#include "loopback_harness.hpp"
#include "test_printers.hpp"

namespace frugal {
namespace {

using testing::every_collective;
using testing::parameter_cases;
using testing::run_ranks;

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();

// What each rank's body threw (its code and message), or nothing.
struct Outcomes {
  std::vector<std::optional<ErrorCode>> codes;
  std::vector<std::string> messages;
  explicit Outcomes(int p) : codes(static_cast<std::size_t>(p)), messages(codes.size()) {}
};

Outcomes run_recording(int p, const std::function<void(Communicator&)>& body) {
  Outcomes out(p);
  std::mutex mutex;
  run_ranks(
      p,
      [&](Communicator& comm) {
        try {
          body(comm);
        } catch (const Error& e) {
          std::lock_guard lock(mutex);
          out.codes[static_cast<std::size_t>(comm.rank())] = e.code();
          out.messages[static_cast<std::size_t>(comm.rank())] = e.what();
        }
      },
      std::chrono::seconds(5), false);
  return out;
}

void expect_all(const Outcomes& out, ErrorCode code, const std::string& what,
                const std::string& needle = "") {
  for (std::size_t r = 0; r < out.codes.size(); ++r) {
    ASSERT_TRUE(out.codes[r].has_value()) << what << ": rank " << r << " saw no error";
    EXPECT_EQ(*out.codes[r], code) << what << ": rank " << r << ": " << out.messages[r];
    if (!needle.empty()) {
      EXPECT_NE(out.messages[r].find(needle), std::string::npos)
          << what << ": rank " << r << ": " << out.messages[r];
    }
  }
}

constexpr int kSizes[] = {2, 3, 4, 5, 8};
constexpr AllreduceAlgorithm kDense[] = {AllreduceAlgorithm::RecursiveDoubling,
                                         AllreduceAlgorithm::Ring,
                                         AllreduceAlgorithm::Rabenseifner};

// The rank that disagrees: the last (a folded extra rank when P is not a power of two) or rank 0.
bool odd_one(const Communicator& comm, bool last) {
  return comm.rank() == (last ? comm.size() - 1 : 0);
}

// P, dense algorithm, whether the last rank (or rank 0) disagrees, count.
using CountCase = std::tuple<int, AllreduceAlgorithm, bool, std::size_t>;

class DenseCountAgreement : public ::testing::TestWithParam<CountCase> {};

TEST_P(DenseCountAgreement, CountMismatchIsMismatchOnEveryRank) {
  const auto [p, a, last, n] = GetParam();
  const auto out = run_recording(p, [&](Communicator& comm) {
    std::vector<float> data(odd_one(comm, last) ? n + 1 : n, 1.0f);
    AllreduceOptions o;
    o.algorithm = a;
    allreduce(comm, std::span<float>(data), o);
  });
  expect_all(
      out, ErrorCode::Mismatch,
      "P=" + std::to_string(p) + " " + std::string(to_string(a)) + " n=" + std::to_string(n));
}

// e.g. P5_rabenseifner_last_n100000
std::string count_case_name(const ::testing::TestParamInfo<CountCase>& info) {
  const auto [p, a, last, n] = info.param;
  return "P" + std::to_string(p) + "_" + std::string(to_string(a)) + (last ? "_last" : "_first") +
         "_n" + std::to_string(n);
}

INSTANTIATE_TEST_SUITE_P(DenseAgreement, DenseCountAgreement,
                         ::testing::Combine(::testing::ValuesIn(kSizes),
                                            ::testing::ValuesIn(kDense), ::testing::Bool(),
                                            ::testing::Values(std::size_t{2}, std::size_t{100000})),
                         count_case_name);

// One field of a dense allreduce differs on one rank: how to run it on P ranks, what a failure
// says, and the text every rank's message must hold (none: any Mismatch).
struct FieldCase {
  const char* name;
  const char* what;
  const char* needle;
  std::function<Outcomes(int p)> run;
};

Outcomes algorithm_mismatch(int p, AllreduceAlgorithm other) {
  return run_recording(p, [&](Communicator& comm) {
    std::vector<float> data(1 << 15, 1.0f);
    AllreduceOptions o;
    o.algorithm = odd_one(comm, true) ? other : AllreduceAlgorithm::RecursiveDoubling;
    allreduce(comm, std::span<float>(data), o);
  });
}

const std::vector<FieldCase>& field_cases() {
  static const std::vector<FieldCase> cases = {
      // float32 vs int32: same byte size, so only the block can tell.
      {"dtype", "dtype", "dtype",
       [](int p) {
         return run_recording(p, [&](Communicator& comm) {
           if (odd_one(comm, true)) {
             std::vector<std::int32_t> data(16, 1);
             allreduce(comm, std::span<std::int32_t>(data));
           } else {
             std::vector<float> data(16, 1.0f);
             allreduce(comm, std::span<float>(data));
           }
         });
       }},
      // float32 vs float64: different sizes.
      {"float_vs_double", "float vs double", "",
       [](int p) {
         return run_recording(p, [&](Communicator& comm) {
           if (odd_one(comm, false)) {
             std::vector<double> data(16, 1.0);
             allreduce(comm, std::span<double>(data));
           } else {
             std::vector<float> data(16, 1.0f);
             allreduce(comm, std::span<float>(data));
           }
         });
       }},
      {"op", "op", "reduce op",
       [](int p) {
         return run_recording(p, [&](Communicator& comm) {
           std::vector<float> data(16, 1.0f);
           AllreduceOptions o;
           o.op = odd_one(comm, true) ? ReduceOp::Average : ReduceOp::Sum;
           allreduce(comm, std::span<float>(data), o);
         });
       }},
      {"algorithm_ring", "algorithm", "",
       [](int p) { return algorithm_mismatch(p, AllreduceAlgorithm::Ring); }},
      {"algorithm_rabenseifner", "algorithm", "",
       [](int p) { return algorithm_mismatch(p, AllreduceAlgorithm::Rabenseifner); }},
      {"action", "action", "non-finite action",
       [](int p) {
         return run_recording(p, [&](Communicator& comm) {
           std::vector<float> data(16, 1.0f);
           AllreduceOptions o;
           o.non_finite = odd_one(comm, false) ? NonFiniteAction::Skip : NonFiniteAction::Error;
           allreduce(comm, std::span<float>(data), o);
         });
       }},
  };
  return cases;
}

// P, index into field_cases().
using FieldCaseParam = std::tuple<int, std::size_t>;

class DenseFieldMismatch : public ::testing::TestWithParam<FieldCaseParam> {};

TEST_P(DenseFieldMismatch, DtypeOpAndAlgorithmMismatchesNameTheField) {
  const auto [p, index] = GetParam();
  const FieldCase& c = field_cases()[index];
  expect_all(c.run(p), ErrorCode::Mismatch, std::string(c.what) + " P=" + std::to_string(p),
             c.needle);
}

// e.g. P5_float_vs_double
INSTANTIATE_TEST_SUITE_P(DenseAgreement, DenseFieldMismatch,
                         ::testing::Combine(::testing::ValuesIn(kSizes),
                                            ::testing::Range(std::size_t{0}, field_cases().size())),
                         [](const ::testing::TestParamInfo<FieldCaseParam>& info) {
                           return "P" + std::to_string(std::get<0>(info.param)) + "_" +
                                  field_cases()[std::get<1>(info.param)].name;
                         });

class DenseCollectiveOrder : public ::testing::TestWithParam<int> {};

TEST_P(DenseCollectiveOrder, CollectiveOrderMismatchIsMismatchOnEveryRank) {
  const int p = GetParam();
  const auto out = run_recording(p, [&](Communicator& comm) {
    std::vector<float> a(10, 1.0f), b(300000, 1.0f);
    if (odd_one(comm, true)) std::swap(a, b);
    allreduce(comm, std::span<float>(a));
    allreduce(comm, std::span<float>(b));
  });
  expect_all(out, ErrorCode::Mismatch, "order P=" + std::to_string(p));
}

// e.g. P5
INSTANTIATE_TEST_SUITE_P(DenseAgreement, DenseCollectiveOrder, ::testing::ValuesIn(kSizes),
                         [](const ::testing::TestParamInfo<int>& info) {
                           return "P" + std::to_string(info.param);
                         });

// Options for a compressed allreduce of one of four kinds, `kind` cycling through them: fp16 and
// 1-bit (two-phase), top-k through the sparse allgather and through sparse recursive doubling.
AllreduceOptions compressed_options(int kind) {
  AllreduceOptions o;
  o.error_feedback = false;
  switch (kind % 4) {
    case 0:
      o.compression.method = compression::Method::Fp16;
      break;
    case 1:
      o.compression.method = compression::Method::OneBit;
      break;
    case 2:
      o.compression.method = compression::Method::TopK;
      o.compression.density = 0.05;
      o.algorithm = AllreduceAlgorithm::SparseAllgather;
      break;
    default:
      o.compression.method = compression::Method::TopK;
      o.compression.density = 0.05;
      o.algorithm = AllreduceAlgorithm::SparseRecursiveDoubling;
      break;
  }
  return o;
}

// Every P from 2 to 8 (powers of two and folded groups), one dense rank among compressed ones
// and one compressed rank among dense ones, the odd rank first or last (a folded extra rank when
// P is not a power of two), every dense algorithm, and a half/half split. Before the compressed
// path joined the dense agreement, P >= 3 left some ranks waiting for messages the other kind
// never sends (Timeout) instead of Mismatch.
//
// Each P has 24 odd-rank cases and one half/half case; case i of P uses compressed kind
// 25 (P - 2) + i, so the four compressed kinds cycle across P and cases.
constexpr int kAgainstCasesPerP = 25;

int against_kind(int p, int index) {
  return (p - 2) * kAgainstCasesPerP + index;
}

// P, dense algorithm, whether the last rank (or rank 0) is the odd one, whether the odd rank is
// the dense one, count.
using AgainstCase = std::tuple<int, AllreduceAlgorithm, bool, bool, std::size_t>;

int against_index(const AgainstCase& c) {
  const auto [p, dense, last, odd_is_dense, n] = c;
  const int d =
      static_cast<int>(std::find(std::begin(kDense), std::end(kDense), dense) - std::begin(kDense));
  return ((d * 2 + (last ? 1 : 0)) * 2 + (odd_is_dense ? 1 : 0)) * 2 + (n == 16 ? 0 : 1);
}

AllreduceOptions against_options(const AgainstCase& c) {
  return compressed_options(against_kind(std::get<0>(c), against_index(c)));
}

class DenseAgainstCompressed : public ::testing::TestWithParam<AgainstCase> {};

TEST_P(DenseAgainstCompressed, IsMismatchOnEveryRank) {
  const auto [p, dense, last, odd_is_dense, n] = GetParam();
  const AllreduceOptions compressed = against_options(GetParam());
  const auto out = run_recording(p, [&](Communicator& comm) {
    std::vector<float> data(n, 1.0f);
    AllreduceOptions o;
    o.algorithm = dense;
    if (odd_one(comm, last) != odd_is_dense) o = compressed;
    allreduce(comm, std::span<float>(data), o);
  });
  expect_all(out, ErrorCode::Mismatch,
             "P=" + std::to_string(p) + " " + std::string(to_string(dense)) + " vs " +
                 std::string(compression::to_string(compressed.compression.method)) + " " +
                 std::string(to_string(compressed.algorithm)) + (last ? " last" : " first") +
                 (odd_is_dense ? " dense odd" : " compressed odd") + " n=" + std::to_string(n));
}

// e.g. P5_ring_last_dense_odd_n16_vs_topk_sparse_rd
std::string against_case_name(const ::testing::TestParamInfo<AgainstCase>& info) {
  const auto [p, dense, last, odd_is_dense, n] = info.param;
  const AllreduceOptions compressed = against_options(info.param);
  return "P" + std::to_string(p) + "_" + std::string(to_string(dense)) +
         (last ? "_last" : "_first") + (odd_is_dense ? "_dense_odd" : "_compressed_odd") + "_n" +
         std::to_string(n) + "_vs_" +
         std::string(compression::to_string(compressed.compression.method)) + "_" +
         std::string(to_string(compressed.algorithm));
}

INSTANTIATE_TEST_SUITE_P(
    DenseAgreement, DenseAgainstCompressed,
    ::testing::Combine(::testing::Range(2, 9), ::testing::ValuesIn(kDense), ::testing::Bool(),
                       ::testing::Bool(), ::testing::Values(std::size_t{16}, std::size_t{100000})),
    against_case_name);

// Half dense (auto), half compressed, interleaved by rank parity.
class DenseHalfCompressed : public ::testing::TestWithParam<int> {};

TEST_P(DenseHalfCompressed, IsMismatchOnEveryRank) {
  const int p = GetParam();
  const AllreduceOptions compressed = compressed_options(against_kind(p, kAgainstCasesPerP - 1));
  const auto out = run_recording(p, [&](Communicator& comm) {
    std::vector<float> data(4096, 1.0f);
    allreduce(comm, std::span<float>(data), comm.rank() % 2 == 0 ? AllreduceOptions{} : compressed);
  });
  expect_all(out, ErrorCode::Mismatch, "half/half P=" + std::to_string(p));
}

// e.g. P5_vs_fp16_auto
INSTANTIATE_TEST_SUITE_P(DenseAgreement, DenseHalfCompressed, ::testing::Range(2, 9),
                         [](const ::testing::TestParamInfo<int>& info) {
                           const AllreduceOptions compressed =
                               compressed_options(against_kind(info.param, kAgainstCasesPerP - 1));
                           return "P" + std::to_string(info.param) + "_vs_" +
                                  std::string(
                                      compression::to_string(compressed.compression.method)) +
                                  "_" + std::string(to_string(compressed.algorithm));
                         });

TEST(DenseAgreement, DenseAgainstCompressedMismatchNamesTheDisagreement) {
  // Where the block itself arrives whole (dense ring/Rabenseifner against compressed), the
  // message says which disagreement it was.
  const auto out = run_recording(3, [&](Communicator& comm) {
    std::vector<float> data(100000, 1.0f);
    AllreduceOptions o;
    o.algorithm = AllreduceAlgorithm::Ring;
    if (comm.rank() == 1) o = compressed_options(0);
    allreduce(comm, std::span<float>(data), o);
  });
  expect_all(out, ErrorCode::Mismatch, "ring vs fp16 P=3", "others a compressed one");
}

class DenseAgreeing : public ::testing::TestWithParam<std::tuple<int, AllreduceAlgorithm>> {};

TEST_P(DenseAgreeing, AgreeingRanksStillGetExactSums) {
  const auto [p, a] = GetParam();
  run_ranks(p, [&](Communicator& comm) {
    std::vector<float> data(1000, static_cast<float>(comm.rank() + 1));
    AllreduceOptions o;
    o.algorithm = a;
    AllreduceStats stats;
    o.stats = &stats;
    allreduce(comm, std::span<float>(data), o);
    for (float v : data) ASSERT_EQ(v, static_cast<float>(p * (p + 1) / 2));
    EXPECT_FALSE(stats.non_finite_skipped);
  });
}

// e.g. P3_ring
INSTANTIATE_TEST_SUITE_P(DenseAgreement, DenseAgreeing,
                         ::testing::Combine(::testing::ValuesIn(kSizes),
                                            ::testing::ValuesIn(kDense)),
                         [](const auto& info) {
                           return "P" + std::to_string(std::get<0>(info.param)) + "_" +
                                  std::string(to_string(std::get<1>(info.param)));
                         });

// ---- Compressed allreduce: the compression terms travel in the agreement block ----

// One rank's compression differs in one term at a time, with the algorithm the same on every rank
// (so only the block's compression digest can tell). The separate all-to-all header these terms
// used to travel in is gone; without the digest, most cases decode garbage or time out.
struct TermCase {
  const char* what;
  std::function<void(AllreduceOptions&)> base;
  std::function<void(AllreduceOptions&)> odd;
};

void qsgd_two_phase(AllreduceOptions& o) {
  o.compression.method = compression::Method::Qsgd;
  o.algorithm = AllreduceAlgorithm::TwoPhase;
}

const std::vector<TermCase>& term_cases() {
  using compression::Method;
  static const std::vector<TermCase> cases = [] {
    auto qsgd = qsgd_two_phase;
    auto topk = [](AllreduceOptions& o) {
      o.compression.method = Method::TopK;
      o.compression.density = 0.05;
      o.algorithm = AllreduceAlgorithm::SparseAllgather;
    };
    auto sampled = [topk](AllreduceOptions& o) {
      topk(o);
      o.compression.selection = compression::TopKSelection::Sampled;
    };
    return std::vector<TermCase>{
        {"method (onebit vs qsgd, both two_phase)", qsgd,
         [](AllreduceOptions& o) { o.compression.method = Method::OneBit; }},
        {"qsgd bits", qsgd, [](AllreduceOptions& o) { o.compression.bits = 8; }},
        {"qsgd bucket", qsgd, [](AllreduceOptions& o) { o.compression.bucket = 1024; }},
        {"qsgd norm", qsgd,
         [](AllreduceOptions& o) { o.compression.norm = compression::QsgdNorm::L2; }},
        {"onebit scaling", [](AllreduceOptions& o) { o.compression.method = Method::OneBit; },
         [](AllreduceOptions& o) {
           o.compression.scaling = compression::OneBitScaling::SignMeans;
         }},
        {"top-k k", topk, [](AllreduceOptions& o) { o.compression.density = 0.1; }},
        {"top-k selection", topk,
         [](AllreduceOptions& o) {
           o.compression.selection = compression::TopKSelection::Sampled;
         }},
        {"sampled top-k tolerance", sampled,
         [](AllreduceOptions& o) { o.compression.tolerance = 0.3; }},
        {"top-k value format", topk,
         [](AllreduceOptions& o) { o.compression.values = compression::TopKValues::Fp16; }},
        {"bf16 rounding", [](AllreduceOptions& o) { o.compression.method = Method::Bf16; },
         [](AllreduceOptions& o) { o.compression.stochastic_rounding = true; }},
        {"seed", qsgd, [](AllreduceOptions& o) { o.seed = 7; }},
        {"error feedback", qsgd, [](AllreduceOptions& o) { o.error_feedback = true; }},
        {"non-finite policy", qsgd,
         [](AllreduceOptions& o) {
           o.compression.non_finite = compression::NonFinitePolicy::Flag;
         }},
    };
  }();
  return cases;
}

// Index into term_cases(), P, whether the last rank (or rank 0) differs.
using TermCaseParam = std::tuple<std::size_t, int, bool>;

class CompressionTerm : public ::testing::TestWithParam<TermCaseParam> {};

TEST_P(CompressionTerm, IsMismatchOnEveryRankAndNamed) {
  const auto [index, p, last] = GetParam();
  const TermCase& c = term_cases()[index];
  const auto out = run_recording(p, [&](Communicator& comm) {
    AllreduceState state;
    AllreduceOptions o;
    o.error_feedback = false;
    o.state = &state;
    c.base(o);
    if (odd_one(comm, last)) c.odd(o);
    std::vector<float> data(4096, static_cast<float>(comm.rank() + 1));
    allreduce(comm, std::span<float>(data), o);
    ADD_FAILURE() << c.what << " P=" << p << " rank " << comm.rank() << ": completed";
  });
  expect_all(out, ErrorCode::Mismatch,
             std::string(c.what) + " P=" + std::to_string(p) + (last ? " last" : " first"),
             "compression method or one of its parameters");
}

// e.g. qsgd_bits_P3_last
std::string term_case_name(const ::testing::TestParamInfo<TermCaseParam>& info) {
  const auto [index, p, last] = info.param;
  return testing::name_part(term_cases()[index].what) + "_P" + std::to_string(p) +
         (last ? "_last" : "_first");
}

INSTANTIATE_TEST_SUITE_P(CompressedAgreement, CompressionTerm,
                         ::testing::Combine(::testing::Range(std::size_t{0}, term_cases().size()),
                                            ::testing::Range(2, 6), ::testing::Bool()),
                         term_case_name);

TEST(CompressedAgreement, TheMismatchMessageCarriesThisRanksOwnTerms) {
  // The message carries this rank's own terms, so two ranks' logs show which one differs.
  const auto out = run_recording(2, [&](Communicator& comm) {
    AllreduceOptions o;
    o.error_feedback = false;
    qsgd_two_phase(o);
    o.compression.bits = comm.rank() == 0 ? 4 : 8;
    std::vector<float> data(4096, 1.0f);
    allreduce(comm, std::span<float>(data), o);
  });
  expect_all(out, ErrorCode::Mismatch, "bits 4 vs 8", "method qsgd");
  EXPECT_NE(out.messages[0].find("bits 4,"), std::string::npos) << out.messages[0];
  EXPECT_NE(out.messages[1].find("bits 8,"), std::string::npos) << out.messages[1];
}

// fp16 two-phase, n divisible by P: each rank sends P - 1 chunks in the scatter and its own
// reduced chunk to P - 1 ranks in the gather, after log2 P agreement rounds of one block each.
// A second exchange before the payloads (the old all-to-all header) would add bytes here.
class CompressedAgreeing : public ::testing::TestWithParam<int> {};

TEST_P(CompressedAgreeing, AgreeingRanksSendTheAgreementBlockAndThePayloadsOnly) {
  const int p = GetParam();
  const std::size_t n = 4096;
  AllreduceOptions o;
  o.compression.method = compression::Method::Fp16;
  o.algorithm = AllreduceAlgorithm::TwoPhase;
  o.error_feedback = false;
  const std::size_t chunk =
      *compression::make_compressor(o.compression)->encoded_bytes(n / static_cast<std::size_t>(p));
  const auto rounds = static_cast<std::size_t>(std::countr_zero(static_cast<unsigned>(p)));
  run_ranks(p, [&](Communicator& comm) {
    AllreduceStats stats;
    AllreduceOptions mine = o;
    mine.stats = &stats;
    std::vector<float> data(n, 1.0f);
    allreduce(comm, std::span<float>(data), mine);
    EXPECT_EQ(stats.wire_bytes_sent, rounds * detail::CollectiveAgreement::kSize +
                                         2 * static_cast<std::size_t>(p - 1) * chunk)
        << "P=" << p;
    for (float v : data) ASSERT_EQ(v, static_cast<float>(p));
  });
}

// e.g. fp16_two_phase_P4
INSTANTIATE_TEST_SUITE_P(CompressedAgreement, CompressedAgreeing, ::testing::Values(2, 4, 8),
                         [](const ::testing::TestParamInfo<int>& info) {
                           return "fp16_two_phase_P" + std::to_string(info.param);
                         });

// ---- Every collective ----

const std::vector<testing::Call>& calls() {
  static const std::vector<testing::Call> all = every_collective();
  return all;
}

std::string call_name(std::size_t index) {
  return testing::name_part(calls()[index].name);
}

// P, index into calls().
using CallCase = std::tuple<int, std::size_t>;

class CollectiveAgreesWithItself : public ::testing::TestWithParam<CallCase> {};

TEST_P(CollectiveAgreesWithItself, EveryCollectiveAgreesWithItself) {
  // The agreement lets matching calls through (P = 1 has none to run).
  const auto [p, index] = GetParam();
  const testing::Call& call = calls()[index];
  const auto out = run_recording(p, [&](Communicator& comm) {
    call.run(comm);
    call.run(comm);
  });
  for (int r = 0; r < p; ++r) {
    EXPECT_FALSE(out.codes[static_cast<std::size_t>(r)].has_value())
        << call.name << " P=" << p << " rank " << r << ": "
        << out.messages[static_cast<std::size_t>(r)];
  }
}

// e.g. P3_allreduce_16
INSTANTIATE_TEST_SUITE_P(CollectiveAgreement, CollectiveAgreesWithItself,
                         ::testing::Combine(::testing::Range(1, 9),
                                            ::testing::Range(std::size_t{0}, calls().size())),
                         [](const ::testing::TestParamInfo<CallCase>& info) {
                           return "P" + std::to_string(std::get<0>(info.param)) + "_" +
                                  call_name(std::get<1>(info.param));
                         });

// Every ordered pair of different collectives (indices into calls()).
std::vector<std::tuple<std::size_t, std::size_t>> call_pairs() {
  std::vector<std::tuple<std::size_t, std::size_t>> pairs;
  for (std::size_t a = 0; a < calls().size(); ++a) {
    for (std::size_t b = 0; b < calls().size(); ++b) {
      if (a != b) pairs.emplace_back(a, b);
    }
  }
  return pairs;
}

// P, the pair.
using PairCase = std::tuple<int, std::tuple<std::size_t, std::size_t>>;

class DifferentCollectives : public ::testing::TestWithParam<PairCase> {};

TEST_P(DifferentCollectives, AreMismatchOnEveryRank) {
  // Every pair of different collectives, P = 2..8, the odd rank first for one order of the pair
  // and last (a folded extra rank when P is not a power of two) for the other. Without the
  // agreement, most pairs leave some ranks waiting (Timeout) or complete with garbage: a barrier
  // against an allgather, for one, would have matched empty messages against blocks.
  const auto [p, pair] = GetParam();
  const auto [a, b] = pair;
  const bool last = a < b;
  const auto out = run_recording(
      p, [&](Communicator& comm) { (odd_one(comm, last) ? calls()[b] : calls()[a]).run(comm); });
  // Two allreduces differ in count (caught by its field or as a wrong-size message); any other
  // pair differs in the collective, and the message says so (a block poisoned by an inline
  // allreduce's longer message says "not all calling the same collective, or ...").
  const bool both_allreduce = a < 2 && b < 2;
  expect_all(out, ErrorCode::Mismatch,
             std::string(calls()[a].name) + " vs " + calls()[b].name + " P=" + std::to_string(p) +
                 (last ? " last" : " first"),
             both_allreduce ? "" : "not all calling the same collective");
}

// e.g. P5_barrier_vs_allgather (the odd rank calls the second; it is the last rank when the
// first comes earlier in the list, rank 0 otherwise)
std::string pair_case_name(const ::testing::TestParamInfo<PairCase>& info) {
  const auto [p, pair] = info.param;
  return "P" + std::to_string(p) + "_" + call_name(std::get<0>(pair)) + "_vs_" +
         call_name(std::get<1>(pair));
}

INSTANTIATE_TEST_SUITE_P(CollectiveAgreement, DifferentCollectives,
                         ::testing::Combine(::testing::Range(2, 9),
                                            ::testing::ValuesIn(call_pairs())),
                         pair_case_name);

class AnotherCollectiveOrder : public ::testing::TestWithParam<int> {};

TEST_P(AnotherCollectiveOrder, IsMismatchOnEveryRank) {
  const int p = GetParam();
  const auto out = run_recording(p, [&](Communicator& comm) {
    std::vector<std::byte> x(100);
    if (odd_one(comm, true)) {
      barrier(comm);
      broadcast(comm, x, 0);
    } else {
      broadcast(comm, x, 0);
      barrier(comm);
    }
  });
  expect_all(out, ErrorCode::Mismatch, "order P=" + std::to_string(p),
             "broadcast and barrier among them");
}

// e.g. P5
INSTANTIATE_TEST_SUITE_P(CollectiveAgreement, AnotherCollectiveOrder, ::testing::Range(2, 9),
                         [](const ::testing::TestParamInfo<int>& info) {
                           return "P" + std::to_string(info.param);
                         });

const std::vector<testing::ParameterCase>& parameters() {
  static const std::vector<testing::ParameterCase> all = parameter_cases();
  return all;
}

// P, index into parameters(), whether the last rank (or rank 0) differs.
using ParameterCaseParam = std::tuple<int, std::size_t, bool>;

class CollectiveParameterMismatch : public ::testing::TestWithParam<ParameterCaseParam> {};

TEST_P(CollectiveParameterMismatch, IsMismatchOnEveryRankAndNamesTheParameter) {
  const auto [p, index, last] = GetParam();
  const testing::ParameterCase& c = parameters()[index];
  const auto out = run_recording(p, [&](Communicator& comm) {
    c.run(comm, odd_one(comm, last));
    ADD_FAILURE() << c.what << " P=" << comm.size() << " rank " << comm.rank() << ": completed";
  });
  expect_all(out, ErrorCode::Mismatch,
             std::string(c.what) + " P=" + std::to_string(p) + (last ? " last" : " first"),
             c.needle);
}

// e.g. P5_broadcast_root_last
std::string parameter_case_name(const ::testing::TestParamInfo<ParameterCaseParam>& info) {
  const auto [p, index, last] = info.param;
  return "P" + std::to_string(p) + "_" + testing::name_part(parameters()[index].what) +
         (last ? "_last" : "_first");
}

INSTANTIATE_TEST_SUITE_P(CollectiveAgreement, CollectiveParameterMismatch,
                         ::testing::Combine(::testing::Range(2, 9),
                                            ::testing::Range(std::size_t{0}, parameters().size()),
                                            ::testing::Bool()),
                         parameter_case_name);

TEST(CollectiveAgreement, AlltoallvPairDigestCancelsExactlyForConsistentCounts) {
  // Sums over all ranks of detail::pair_digest: 0 for consistent counts (asymmetric ones
  // included), non-zero when one pair differs, even with every rank's totals unchanged.
  const int p = 5;
  auto sends = [&](int r, int q) { return static_cast<std::size_t>(3 * r + 7 * q + 1); };
  auto total = [&](const std::function<std::size_t(int, int)>& recv_of) {
    std::uint64_t sum = 0;
    for (int r = 0; r < p; ++r) {
      std::vector<std::size_t> s, rc;
      for (int q = 0; q < p; ++q) {
        s.push_back(sends(r, q));
        rc.push_back(recv_of(r, q));
      }
      sum += detail::pair_digest(r, s, rc);
    }
    return sum;
  };
  EXPECT_EQ(total([&](int r, int q) { return sends(q, r); }), 0u);
  EXPECT_NE(total([&](int r, int q) {
              if (r == 2 && q == 3) return sends(q, r) + 1;
              if (r == 2 && q == 4) return sends(q, r) - 1;
              return sends(q, r);
            }),
            0u);
  // Counts swapped between two receivers: every rank's total unchanged, pairs wrong.
  EXPECT_NE(total([&](int r, int q) {
              if (q == 0 && (r == 1 || r == 2)) return sends(0, 3 - r);
              return sends(q, r);
            }),
            0u);
}

// ---- NaN / Inf ----

std::vector<float> input_of(const Communicator& comm, std::size_t n, bool poisoned) {
  std::vector<float> data(n);
  for (std::size_t i = 0; i < n; ++i) data[i] = static_cast<float>(comm.rank() + 1 + (i % 7));
  if (poisoned && comm.rank() == comm.size() - 1) {
    data[n / 2] = kNaN;
    data[n - 1] = -kInf;
  }
  return data;
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * 4) == 0;
}

struct MethodCase {
  const char* name;
  compression::Method method;
};
constexpr MethodCase kMethods[] = {{"dense", compression::Method::None},
                                   {"fp16", compression::Method::Fp16},
                                   {"topk", compression::Method::TopK},
                                   {"onebit", compression::Method::OneBit},
                                   {"qsgd", compression::Method::Qsgd}};

void PrintTo(const MethodCase& m, std::ostream* os) {
  *os << m.name;
}

// Method, P and count: one test each, e.g. NonFinite/NonFiniteError.KeepsEverything/onebit_P3_n64.
using MethodSize = std::tuple<MethodCase, int, std::size_t>;

std::string method_size_name(const ::testing::TestParamInfo<MethodSize>& info) {
  const auto [m, p, n] = info.param;
  return std::string(m.name) + "_P" + std::to_string(p) + "_n" + std::to_string(n);
}

class NonFiniteError : public ::testing::TestWithParam<MethodSize> {};

TEST_P(NonFiniteError, ThrowsInvalidArgumentOnEveryRankAndKeepsEverything) {
  const auto [m, p, n] = GetParam();
  run_ranks(p, [&](Communicator& comm) {
    AllreduceState state;
    AllreduceOptions o;
    o.compression.method = m.method;
    o.state = &state;
    o.non_finite = NonFiniteAction::Error;
    std::vector<float> warm = input_of(comm, n, false);
    allreduce(comm, std::span<float>(warm), o);  // residuals exist now
    const std::vector<std::byte> before = state.save();
    std::vector<float> data = input_of(comm, n, true);
    const std::vector<float> input = data;
    try {
      allreduce(comm, std::span<float>(data), o);
      ADD_FAILURE() << m.name << " P=" << p << " rank " << comm.rank() << ": no error";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::InvalidArgument) << e.what();
      EXPECT_NE(std::string(e.what()).find("non_finite"), std::string::npos) << e.what();
    }
    EXPECT_TRUE(same_bits(data, input)) << m.name << " rank " << comm.rank();
    EXPECT_EQ(state.save(), before) << m.name << ": residuals or step changed";
    EXPECT_FALSE(comm.failed());
    std::vector<float> again = input_of(comm, n, false);
    allreduce(comm, std::span<float>(again), o);  // the communicator is still usable
  });
}

INSTANTIATE_TEST_SUITE_P(
    NonFinite, NonFiniteError,
    ::testing::Combine(::testing::ValuesIn(kMethods), ::testing::Values(1, 2, 3, 4),
                       ::testing::Values(std::size_t{64}, std::size_t{100000})),
    method_size_name);

class NonFiniteSkip : public ::testing::TestWithParam<MethodSize> {};

TEST_P(NonFiniteSkip, IsSeenByEveryRankAndLeavesResidualsUnchanged) {
  const auto [m, p, n] = GetParam();
  run_ranks(p, [&](Communicator& comm) {
    AllreduceState state;
    AllreduceStats stats;
    AllreduceOptions o;
    o.compression.method = m.method;
    o.state = &state;
    o.stats = &stats;
    o.non_finite = NonFiniteAction::Skip;
    std::vector<float> warm = input_of(comm, n, false);
    allreduce(comm, std::span<float>(warm), o);
    EXPECT_FALSE(stats.non_finite_skipped);
    const std::vector<std::byte> before = state.save();
    std::vector<float> data = input_of(comm, n, true);
    const std::vector<float> input = data;
    allreduce(comm, std::span<float>(data), o);
    EXPECT_TRUE(stats.non_finite_skipped) << m.name << " P=" << p << " rank " << comm.rank();
    EXPECT_TRUE(same_bits(data, input)) << m.name << " rank " << comm.rank();
    EXPECT_EQ(state.save(), before) << m.name << ": residuals or step changed";
    for (float r : state.worker_residual()) ASSERT_TRUE(std::isfinite(r));
    for (float r : state.server_residual()) ASSERT_TRUE(std::isfinite(r));
  });
}

INSTANTIATE_TEST_SUITE_P(
    NonFinite, NonFiniteSkip,
    ::testing::Combine(::testing::ValuesIn(kMethods), ::testing::Values(1, 2, 3, 5),
                       ::testing::Values(std::size_t{64}, std::size_t{100000})),
    method_size_name);

class NonFiniteZero : public ::testing::TestWithParam<MethodSize> {};

TEST_P(NonFiniteZero, ReplacesNaNAndInfAndKeepsResidualsFinite) {
  const auto [m, p, n] = GetParam();
  run_ranks(p, [&](Communicator& comm) {
    AllreduceState state;
    AllreduceStats stats;
    AllreduceOptions o;
    o.compression.method = m.method;
    o.compression.density = 1.0;  // top-k keeps everything: exact like dense
    o.state = &state;
    o.stats = &stats;
    o.non_finite = NonFiniteAction::Zero;
    for (int step = 0; step < 3; ++step) {
      std::vector<float> data = input_of(comm, n, true);
      allreduce(comm, std::span<float>(data), o);
      EXPECT_EQ(stats.non_finite_zeroed, comm.rank() == p - 1 ? 2u : 0u);
      for (float v : data) ASSERT_TRUE(std::isfinite(v)) << m.name;
      for (float r : state.worker_residual()) ASSERT_TRUE(std::isfinite(r)) << m.name;
      for (float r : state.server_residual()) ASSERT_TRUE(std::isfinite(r)) << m.name;
      if (m.method == compression::Method::None || m.method == compression::Method::TopK) {
        // Exact: the poisoned entries count as 0 on the last rank.
        const std::size_t i = n / 2;
        float expect = 0;
        for (int r = 0; r < p - 1; ++r) expect += static_cast<float>(r + 1 + (i % 7));
        if (step == 0 || m.method == compression::Method::None) {
          EXPECT_EQ(data[i], expect) << m.name;
        }
      }
    }
  });
}

INSTANTIATE_TEST_SUITE_P(NonFinite, NonFiniteZero,
                         ::testing::Combine(::testing::ValuesIn(kMethods),
                                            ::testing::Values(1, 2, 4),
                                            ::testing::Values(std::size_t{4096})),
                         method_size_name);

class NonFiniteBuckets : public ::testing::TestWithParam<compression::Method> {};

TEST_P(NonFiniteBuckets, GradientBucketsReportASkippedStepOnEveryRank) {
  const compression::Method method = GetParam();
  run_ranks(3, [&](Communicator& comm) {
    BucketOptions bo;
    bo.bucket_bytes = 4096;
    bo.allreduce.compression.method = method;
    bo.allreduce.non_finite = NonFiniteAction::Skip;
    GradientBuckets buckets(comm, bo);
    buckets.add("a", 1000);
    buckets.add("b", 1000);
    for (bool poisoned : {false, true, false}) {
      std::vector<float> a(1000, 1.0f), b(1000, 2.0f);
      if (poisoned && comm.rank() == 1) b[3] = kInf;
      const std::vector<float> b_in = b;
      buckets.mark_ready("a", a);
      buckets.mark_ready("b", b);
      buckets.finish();
      EXPECT_EQ(buckets.last_step_skipped(), poisoned) << "rank " << comm.rank();
      if (poisoned) {
        EXPECT_TRUE(same_bits(b, b_in));
      }
    }
  });
}

// e.g. onebit_P3
INSTANTIATE_TEST_SUITE_P(NonFinite, NonFiniteBuckets,
                         ::testing::Values(compression::Method::None, compression::Method::OneBit),
                         [](const ::testing::TestParamInfo<compression::Method>& info) {
                           return std::string(compression::to_string(info.param)) + "_P3";
                         });

class NonFiniteDefault : public ::testing::TestWithParam<MethodCase> {};

TEST_P(NonFiniteDefault, DefaultPassesNaNThroughDenseAndRefusesItCompressed) {
  const MethodCase& m = GetParam();
  const auto out = run_recording(3, [&](Communicator& comm) {
    AllreduceState state;
    AllreduceOptions o;
    o.compression.method = m.method;
    o.state = &state;
    std::vector<float> data = input_of(comm, 1000, true);
    allreduce(comm, std::span<float>(data), o);
    if (m.method == compression::Method::None) {
      EXPECT_TRUE(std::isnan(data[500])) << "NaN does not flow into the dense sum";
    }
  });
  for (std::size_t r = 0; r < 3; ++r) {
    if (m.method == compression::Method::None) {
      EXPECT_FALSE(out.codes[r].has_value()) << m.name << ": " << out.messages[r];
    } else {
      ASSERT_TRUE(out.codes[r].has_value()) << m.name << " rank " << r;
      EXPECT_EQ(*out.codes[r], ErrorCode::InvalidArgument) << m.name << ": " << out.messages[r];
    }
  }
}

// e.g. qsgd_P3
INSTANTIATE_TEST_SUITE_P(NonFinite, NonFiniteDefault, ::testing::ValuesIn(kMethods),
                         [](const ::testing::TestParamInfo<MethodCase>& info) {
                           return std::string(info.param.name) + "_P3";
                         });

// Finite inputs the format cannot carry: each method's value just out of its range, with a
// bucket fixed so that the QSGD and 1-bit bounds are known (fp16 65504; bf16 3.39e38; QSGD L2
// sqrt(FLT_MAX / (2 * 512)) = 5.8e17; 1-bit FLT_MAX / (2 * 512) = 3.3e35).
struct RangeCase {
  const char* name;
  compression::Method method;
  float too_large;
};
constexpr RangeCase kRanges[] = {{"fp16", compression::Method::Fp16, 70000.0f},
                                 {"bf16", compression::Method::Bf16, 3.4e38f},
                                 {"qsgd", compression::Method::Qsgd, 1e19f},
                                 {"onebit", compression::Method::OneBit, 1e37f}};

constexpr NonFiniteAction kRangeActions[] = {NonFiniteAction::Error, NonFiniteAction::Default,
                                             NonFiniteAction::Zero, NonFiniteAction::Skip};

void PrintTo(const RangeCase& m, std::ostream* os) {
  *os << m.name;
}

// Method, action, P.
using RangeParam = std::tuple<RangeCase, NonFiniteAction, int>;

class NonFiniteRange : public ::testing::TestWithParam<RangeParam> {};

TEST_P(NonFiniteRange, OutOfRangeInputIsDecidedOnEveryRank) {
  // One rank's finite input leaves the format. Before the early check covered it, encode threw
  // on that rank alone and the others timed out. Error, Default (policy Error) and Zero (which
  // replaces only NaN and Inf) refuse it on every rank; Skip skips it on every rank. Either way
  // no buffer, residual or step counter changes.
  const auto [m, action, p] = GetParam();
  const auto out = run_recording(p, [&](Communicator& comm) {
    AllreduceState state;
    AllreduceStats stats;
    AllreduceOptions o;
    o.compression.method = m.method;
    o.compression.norm = compression::QsgdNorm::L2;  // the norm whose squares overflow
    o.compression.bucket = 512;
    o.state = &state;
    o.stats = &stats;
    o.non_finite = action;
    std::vector<float> warm = input_of(comm, 4096, false);
    allreduce(comm, std::span<float>(warm), o);  // residuals exist now
    const std::vector<std::byte> before = state.save();
    std::vector<float> data = input_of(comm, 4096, false);
    if (comm.rank() == comm.size() - 1) data[1234] = -m.too_large;
    const std::vector<float> input = data;
    try {
      allreduce(comm, std::span<float>(data), o);
    } catch (const Error&) {
      EXPECT_TRUE(same_bits(data, input)) << m.name << " rank " << comm.rank();
      EXPECT_EQ(state.save(), before) << m.name << ": residuals or step changed";
      EXPECT_FALSE(comm.failed());
      std::vector<float> again = input_of(comm, 4096, false);
      allreduce(comm, std::span<float>(again), o);  // the communicator is still usable
      throw;
    }
    EXPECT_TRUE(stats.non_finite_skipped) << m.name << " rank " << comm.rank();
    EXPECT_TRUE(same_bits(data, input)) << m.name << " rank " << comm.rank();
    EXPECT_EQ(state.save(), before) << m.name << ": residuals or step changed";
  });
  const std::string what =
      std::string(m.name) + " " + std::string(to_string(action)) + " P=" + std::to_string(p);
  if (action == NonFiniteAction::Skip) {
    for (int r = 0; r < p; ++r) {
      EXPECT_FALSE(out.codes[static_cast<std::size_t>(r)].has_value())
          << what << " rank " << r << ": " << out.messages[static_cast<std::size_t>(r)];
    }
  } else {
    expect_all(out, ErrorCode::InvalidArgument, what, "range (|x| <= ");
  }
}

// e.g. qsgd_zero_P3
std::string range_case_name(const ::testing::TestParamInfo<RangeParam>& info) {
  return std::string(std::get<0>(info.param).name) + "_" +
         std::string(to_string(std::get<1>(info.param))) + "_P" +
         std::to_string(std::get<2>(info.param));
}

INSTANTIATE_TEST_SUITE_P(NonFinite, NonFiniteRange,
                         ::testing::Combine(::testing::ValuesIn(kRanges),
                                            ::testing::ValuesIn(kRangeActions),
                                            ::testing::Values(2, 3, 4)),
                         range_case_name);

constexpr NonFiniteAction kSumActions[] = {NonFiniteAction::Default, NonFiniteAction::Error,
                                           NonFiniteAction::Zero};

// P, error feedback, action.
using SumParam = std::tuple<int, bool, NonFiniteAction>;

class NonFiniteSum : public ::testing::TestWithParam<SumParam> {};

TEST_P(NonFiniteSum, ASumBeyondTheFormatIsInvalidArgumentOnEveryRank) {
  // 40000 fits fp16; the sum over P >= 2 ranks (80000 and up) does not, so the owner of that
  // chunk cannot re-encode it. Every rank throws the same InvalidArgument after the whole
  // exchange and the communicator stays usable; residuals stay finite. (Skip is the test
  // below: a skip must not throw.)
  const auto [p, feedback, action] = GetParam();
  const auto out = run_recording(p, [&](Communicator& comm) {
    AllreduceState state;
    AllreduceOptions o;
    o.compression.method = compression::Method::Fp16;
    // The allgather (Auto's choice at P = 2) sums decoded fp16 in fp32 and never re-encodes.
    o.algorithm = AllreduceAlgorithm::TwoPhase;
    o.error_feedback = feedback;
    o.state = feedback ? &state : nullptr;
    o.non_finite = action;
    std::vector<float> data(1000, 1.0f);
    data[777] = 40000.0f;
    try {
      allreduce(comm, std::span<float>(data), o);
    } catch (const Error&) {
      EXPECT_FALSE(comm.failed());
      // Element 777 lies in the last chunk for P <= 4: that chunk keeps this rank's own
      // (exactly encoded) contribution, the first chunk holds the sum.
      EXPECT_EQ(data[777], 40000.0f);
      EXPECT_EQ(data[999], 1.0f);
      EXPECT_EQ(data[0], static_cast<float>(comm.size()));
      EXPECT_EQ(state.steps(), 0u);
      for (float r : state.worker_residual()) EXPECT_TRUE(std::isfinite(r));
      for (float r : state.server_residual()) EXPECT_TRUE(std::isfinite(r));
      std::vector<float> again(1000, 1.0f);
      allreduce(comm, std::span<float>(again), o);
      EXPECT_EQ(again[777], static_cast<float>(comm.size()));
      throw;
    }
  });
  expect_all(out, ErrorCode::InvalidArgument,
             "sum P=" + std::to_string(p) + (feedback ? " feedback " : " ") +
                 std::string(to_string(action)),
             "cannot be re-encoded");
}

// e.g. P3_ef_zero
std::string sum_case_name(const ::testing::TestParamInfo<SumParam>& info) {
  return "P" + std::to_string(std::get<0>(info.param)) +
         (std::get<1>(info.param) ? "_ef_" : "_noef_") +
         std::string(to_string(std::get<2>(info.param)));
}

INSTANTIATE_TEST_SUITE_P(NonFinite, NonFiniteSum,
                         ::testing::Combine(::testing::Values(2, 3, 4), ::testing::Bool(),
                                            ::testing::ValuesIn(kSumActions)),
                         sum_case_name);

class NonFiniteSumSkip : public ::testing::TestWithParam<int> {};

TEST_P(NonFiniteSumSkip, ASumBeyondTheFormatIsInfOnEveryRankUnderSkip) {
  // Under Skip the overflowed chunk is +Inf on every rank and nothing throws: the overflow to Inf
  // that Skip documents for one call, which GradientBuckets turns into a skipped step
  // (tests/compressed/skip_step_test.cpp). The other chunks hold the sum.
  const int p = GetParam();
  run_ranks(p, [](Communicator& comm) {
    AllreduceState state;
    AllreduceOptions o;
    o.compression.method = compression::Method::Fp16;
    o.algorithm = AllreduceAlgorithm::TwoPhase;  // the owner's re-encode is what overflows
    o.state = &state;
    o.non_finite = NonFiniteAction::Skip;
    std::vector<float> data(1000, 1.0f);
    data[777] = 40000.0f;
    allreduce(comm, std::span<float>(data), o);
    EXPECT_EQ(data[777], std::numeric_limits<float>::infinity());
    EXPECT_EQ(data[0], static_cast<float>(comm.size()));
    EXPECT_FALSE(comm.failed());
  });
}

// e.g. P3
INSTANTIATE_TEST_SUITE_P(NonFinite, NonFiniteSumSkip, ::testing::Values(2, 3, 4),
                         [](const ::testing::TestParamInfo<int>& info) {
                           return "P" + std::to_string(info.param);
                         });

TEST(NonFinite, ASumBeyondTheFormatIsInfOnEveryRankUnderPolicyFlag) {
  // With NonFinitePolicy::Flag and action Default nothing is checked: the overflow reaches every
  // rank's result as Inf, as in a dense allreduce.
  run_ranks(3, [](Communicator& comm) {
    AllreduceOptions o;
    o.compression.method = compression::Method::Fp16;
    o.compression.non_finite = compression::NonFinitePolicy::Flag;
    o.error_feedback = false;
    std::vector<float> data(1000, 1.0f);
    data[777] = 40000.0f;
    allreduce(comm, std::span<float>(data), o);
    EXPECT_TRUE(std::isinf(data[777]));
    EXPECT_EQ(data[0], 3.0f);
  });
}

TEST(NonFinite, UnknownActionIsInvalidArgument) {
  run_ranks(1, [&](Communicator& comm) {
    std::vector<float> data(4, 1.0f);
    AllreduceOptions o;
    o.non_finite = static_cast<NonFiniteAction>(9);
    try {
      allreduce(comm, std::span<float>(data), o);
      ADD_FAILURE() << "no error";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::InvalidArgument);
      EXPECT_NE(std::string(e.what()).find("non_finite"), std::string::npos) << e.what();
    }
  });
  EXPECT_EQ(parse_non_finite_action("skip"), NonFiniteAction::Skip);
  EXPECT_EQ(parse_non_finite_action("zero"), NonFiniteAction::Zero);
  EXPECT_EQ(parse_non_finite_action("bogus"), std::nullopt);
  EXPECT_EQ(to_string(NonFiniteAction::Error), "error");
}

}  // namespace
}  // namespace frugal

namespace frugal {
namespace {

// Invalid parameters are InvalidArgument naming the parameter, before anything is sent, and the
// communicator stays usable.
void expect_invalid(const std::function<void()>& call, const std::string& name) {
  try {
    call();
    ADD_FAILURE() << "accepted a bad " << name;
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::InvalidArgument) << e.what();
    EXPECT_NE(std::string(e.what()).find(name), std::string::npos) << e.what();
  }
}

TEST(InvalidParameters, AreInvalidArgumentNamingTheParameter) {
  testing::run_ranks(2, [](Communicator& comm) {
    std::vector<float> x(100, 1.0f);
    auto with = [&](auto&& set) {
      AllreduceOptions o;
      o.error_feedback = false;
      set(o.compression);
      return [&comm, &x, o] { allreduce(comm, std::span<float>(x), o); };
    };
    using compression::Method;
    for (double density : {0.0, -0.5, 1.5, std::nan("")}) {
      expect_invalid(with([&](auto& c) {
                       c.method = Method::TopK;
                       c.density = density;
                     }),
                     "density");
    }
    for (int bits : {0, 1, 3, 16}) {
      expect_invalid(with([&](auto& c) {
                       c.method = Method::Qsgd;
                       c.bits = bits;
                     }),
                     "bits");
    }
    for (Method m : {Method::OneBit, Method::Ternary, Method::Qsgd}) {
      expect_invalid(with([&](auto& c) {
                       c.method = m;
                       c.bucket = 12;  // not a multiple of 8
                     }),
                     "bucket");
    }
    expect_invalid(with([&](auto& c) {
                     c.method = Method::TopK;
                     c.tolerance = 1.0;
                   }),
                   "tolerance");
    // k = 0 is not an error: it means "use density" (documented on CompressionConfig::k).
    AllreduceOptions k0;
    k0.error_feedback = false;
    k0.compression.method = Method::TopK;
    k0.compression.k = 0;
    k0.compression.density = 0.5;
    allreduce(comm, std::span<float>(x), k0);

    BucketOptions zero;
    zero.bucket_bytes = 0;
    expect_invalid([&] { GradientBuckets b(comm, zero); }, "bucket_bytes");
    GradientBuckets buckets(comm);
    expect_invalid([&] { buckets.add("t", 0); }, "count");

    // Byte buffers that are not whole elements (a "negative" or garbage size from a cast).
    std::vector<std::byte> odd(7);
    expect_invalid([&] { allreduce(comm, std::span<std::byte>(odd), DType::Float32); }, "data");

    // Overlapping buffers where the collective cannot work in place.
    std::vector<std::byte> buf(64);
    expect_invalid(
        [&] {
          alltoall(comm, std::span<const std::byte>(buf).first(32), std::span(buf).subspan(16, 32));
        },
        "recv");
    expect_invalid(
        [&] {
          allgather(comm, std::span<const std::byte>(buf).subspan(8, 16), std::span(buf).first(32));
        },
        "mine");
    // The in-place allgather (mine is this rank's own block of out) is allowed.
    std::vector<std::byte> gathered(32, std::byte{static_cast<unsigned char>(comm.rank() + 1)});
    allgather(comm,
              std::span<const std::byte>(gathered).subspan(
                  16 * static_cast<std::size_t>(comm.rank()), 16),
              std::span(gathered));
    EXPECT_EQ(gathered[0], std::byte{1});
    EXPECT_EQ(gathered[31], std::byte{2});
    EXPECT_FALSE(comm.failed());
  });
}

}  // namespace
}  // namespace frugal

namespace frugal {
namespace {

// A block of the previous version (5, whose sparse recursive doubling and segmented allgather
// send one message where this one sends ranges or batches) is refused, not merged: a peer running
// it would truncate or misread the payloads.
TEST(CollectiveAgreement, ABlockOfThePreviousVersionIsMismatch) {
  detail::AgreementTerms terms;
  terms.kind = detail::CollectiveKind::Allreduce;
  terms.count = 4096;
  terms.compression.method = static_cast<std::uint8_t>(compression::Method::OneBit);
  terms.compression.segments = 12345;
  detail::CollectiveAgreement mine(terms), peer(terms);
  std::vector<std::byte> block(detail::CollectiveAgreement::kSize);
  peer.write(block);
  ASSERT_EQ(static_cast<int>(block[4]), 6);
  mine.merge(block, true);
  EXPECT_FALSE(mine.verdict(0).has_value());
  block[4] = std::byte{5};
  detail::CollectiveAgreement fresh(terms);
  fresh.merge(block, true);
  const std::optional<Error> verdict = fresh.verdict(0);
  ASSERT_TRUE(verdict.has_value());
  EXPECT_EQ(verdict->code(), ErrorCode::Mismatch);
}

// The segments travel in the compression digest: other segments, or none, change it; no
// segments and a single one covering the buffer do not.
TEST(CollectiveAgreement, SegmentsChangeTheCompressionDigest) {
  detail::CompressionTerms a;
  a.method = static_cast<std::uint8_t>(compression::Method::Qsgd);
  detail::CompressionTerms b = a;
  b.segments = 7;
  detail::CompressionTerms c = a;
  c.topk_scope = 1;
  EXPECT_NE(detail::compression_digest(a), detail::compression_digest(b));
  EXPECT_NE(detail::compression_digest(a), detail::compression_digest(c));
  const std::vector<std::size_t> one = {4096}, split = {1, 4095}, other = {2, 4094};
  EXPECT_EQ(detail::segments_digest({}), 0u);
  EXPECT_EQ(detail::segments_digest(one), 0u);
  EXPECT_NE(detail::segments_digest(split), 0u);
  EXPECT_NE(detail::segments_digest(split), detail::segments_digest(other));
}

}  // namespace
}  // namespace frugal

namespace frugal {
namespace {

// Raises the NaN/Inf flag in the agreement block (byte 5, bit 2) of the first message rank 0
// receives.
void raise_non_finite_flag(std::span<std::byte> buffer, std::size_t bytes) {
  if (bytes >= 6) buffer[5] |= std::byte{2};
}

// The ranks agree on the non_finite action, so a block that reports NaN/Inf under one that does
// not look for them is corrupt: Mismatch on that rank, for the inline recursive doubling (which
// restored an input it never kept: memcpy from null, found by fuzz_state_images) and for a
// payload above the inline limit (which skipped the step).
TEST(DenseAgreement, ACorruptNaNFlagUnderAnActionThatDoesNotLookIsAMismatch) {
  for (const std::size_t count : {std::size_t{16}, std::size_t{100000}}) {
    SCOPED_TRACE(count);
    LoopbackGroup group = make_loopback_group(2);
    std::vector<std::unique_ptr<Communicator>> comms;
    for (auto& t : group.transports) {
      const bool armed = t->rank() == 0;
      comms.push_back(std::make_unique<Communicator>(
          std::make_unique<testing::CorruptFirstReceive>(std::move(t), armed,
                                                         raise_non_finite_flag),
          // Rank 1 took the sound block and waits for a payload rank 0 never sends.
          CommunicatorOptions{.timeout = std::chrono::seconds(2)}));
    }
    std::optional<Error> zero_error;
    std::vector<std::thread> threads;
    for (auto& comm : comms) {
      threads.emplace_back([&, c = comm.get()] {
        std::vector<float> data(count, 1.0f);
        AllreduceOptions o;
        o.algorithm = AllreduceAlgorithm::RecursiveDoubling;
        try {
          allreduce(*c, std::span<float>(data), o);
        } catch (const Error& e) {
          if (c->rank() == 0) zero_error = e;
        }
      });
    }
    for (auto& t : threads) t.join();
    ASSERT_TRUE(zero_error.has_value()) << "rank 0 took the corrupt flag";
    EXPECT_EQ(zero_error->code(), ErrorCode::Mismatch);
    EXPECT_NE(std::string(zero_error->what()).find("a peer reported NaN/Inf"), std::string::npos)
        << zero_error->what();
  }
}

}  // namespace
}  // namespace frugal
