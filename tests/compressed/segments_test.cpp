// Segmented buffers (AllreduceOptions::segments) over in-process ranks: every method and
// algorithm against the serial reference, no scale straddling two tensors, per-tensor top-k,
// the checks of the segments and their agreement, and the state's binding to them.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <mutex>
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

// Method with algorithm, ranks, count.
using SegmentCase = std::tuple<testing::MethodAlgorithm, int, std::size_t>;

class SegmentedAllreduce : public ::testing::TestWithParam<SegmentCase> {};

TEST_P(SegmentedAllreduce, MatchesTheSerialReferenceOverSteps) {
  const auto& [method_algorithm, ranks, count] = GetParam();
  const AllreduceAlgorithm algorithm = method_algorithm.algorithm;
  const std::vector<std::size_t> segments = testing::segment_layout(count);
  AllreduceOptions options;
  options.compression = method_algorithm.method.config;
  options.algorithm = algorithm;
  options.op = ReduceOp::Average;
  options.seed = 11;
  options.segments = segments;
  testing::expect_matches_reference(ranks, count, options, 3);
}

INSTANTIATE_TEST_SUITE_P(
    Loopback, SegmentedAllreduce,
    ::testing::Combine(::testing::ValuesIn(testing::segmented_method_algorithms()),
                       ::testing::Values(1, 2, 3, 4), ::testing::Values(std::size_t{3001})),
    [](const ::testing::TestParamInfo<SegmentCase>& info) {
      return testing::param_name(std::get<0>(info.param)) + "_P" +
             std::to_string(std::get<1>(info.param)) + "_n" +
             std::to_string(std::get<2>(info.param));
    });

// A small tensor next to a large one, as a batch-norm vector next to a conv: its share of the
// result must come from its own scale. Without segments one scale covers both and the small
// tensor's reconstruction is off by orders of magnitude.
double small_tensor_error(compression::Method method, AllreduceAlgorithm algorithm,
                          bool segmented) {
  // One ternary or QSGD bucket (512), one 1-bit chunk (4096).
  constexpr std::size_t kSmall = 100, kLarge = 412, kCount = kSmall + kLarge;
  const std::vector<std::size_t> segments = {kSmall, kLarge};
  auto input = [](int rank) {
    std::vector<float> x(kCount);
    for (std::size_t i = 0; i < kCount; ++i) {
      const double wave = std::sin(static_cast<double>(i + 13 * static_cast<std::size_t>(rank)));
      x[i] = static_cast<float>((i < kSmall ? 1e-3 : 10.0) * (1.0 + 0.5 * wave));
    }
    return x;
  };
  std::mutex mutex;
  double error = 0;
  run_ranks(2, [&](Communicator& comm) {
    AllreduceOptions o;
    o.compression.method = method;
    o.algorithm = algorithm;
    o.error_feedback = false;
    if (segmented) o.segments = segments;
    std::vector<float> x = input(comm.rank());
    allreduce(comm, std::span<float>(x), o);
    if (comm.rank() != 0) return;
    const std::vector<float> a = input(0), b = input(1);
    double diff = 0, norm = 0;
    for (std::size_t i = 0; i < kSmall; ++i) {
      const double want = static_cast<double>(a[i]) + b[i];
      diff += (x[i] - want) * (x[i] - want);
      norm += want * want;
    }
    std::lock_guard lock(mutex);
    error = std::sqrt(diff / norm);
  });
  return error;
}

class NoScaleStraddles
    : public ::testing::TestWithParam<std::tuple<compression::Method, AllreduceAlgorithm>> {};

TEST_P(NoScaleStraddles, SmallTensorKeepsItsOwnScale) {
  const auto [method, algorithm] = GetParam();
  const double segmented = small_tensor_error(method, algorithm, true);
  const double flat = small_tensor_error(method, algorithm, false);
  // 1-bit: a positive tensor comes back as its mean (0.33 here); ternary (0.4 to 0.6) and QSGD
  // (0.03) are unbiased with a variance set by their own scale.
  EXPECT_LT(segmented, 0.7);
  // One scale for both: 1-bit gives the small tensor the large one's magnitude (errors in the
  // thousands); ternary and QSGD round all of it to 0 (error 1) or send a few elements at the
  // large tensor's scale (errors in the hundreds).
  EXPECT_GT(flat, 0.99);
}

INSTANTIATE_TEST_SUITE_P(Loopback, NoScaleStraddles,
                         ::testing::Combine(::testing::Values(compression::Method::OneBit,
                                                              compression::Method::Ternary,
                                                              compression::Method::Qsgd),
                                            ::testing::Values(AllreduceAlgorithm::TwoPhase,
                                                              AllreduceAlgorithm::Allgather)),
                         [](const auto& info) {
                           return std::string(compression::to_string(std::get<0>(info.param))) +
                                  "_" + std::string(to_string(std::get<1>(info.param)));
                         });

// Per-tensor top-k sends every tensor's share, whatever the magnitudes of the others; the
// global selection sends only the largest tensor's elements.
TEST(PerTensorTopK, SelectsFromEverySegment) {
  const std::vector<std::size_t> segments = {400, 100, 500};
  const std::vector<float> scale = {1e-4f, 1.0f, 1e-2f};
  for (const auto scope : {compression::TopKScope::Global, compression::TopKScope::PerTensor}) {
    SCOPED_TRACE(std::string(enum_name(scope)));
    run_ranks(1, [&](Communicator& comm) {
      std::vector<float> x = testing::case_input(comm.rank(), 0, 1000);
      std::size_t at = 0;
      for (std::size_t s = 0; s < segments.size(); ++s) {
        for (std::size_t i = 0; i < segments[s]; ++i) x[at + i] *= scale[s];
        at += segments[s];
      }
      AllreduceOptions o;
      o.compression.method = compression::Method::TopK;
      o.compression.k = 50;
      o.compression.topk_scope = scope;
      o.error_feedback = false;
      o.segments = segments;
      allreduce(comm, std::span<float>(x), o);
      // k_s = round(50 * n_s / 1000): 20, 5, 25.
      const std::vector<std::size_t> want_per_tensor = {20, 5, 25};
      at = 0;
      for (std::size_t s = 0; s < segments.size(); ++s) {
        const auto nonzero = static_cast<std::size_t>(
            std::count_if(x.begin() + static_cast<std::ptrdiff_t>(at),
                          x.begin() + static_cast<std::ptrdiff_t>(at + segments[s]),
                          [](float v) { return v != 0.0f; }));
        if (scope == compression::TopKScope::PerTensor) {
          EXPECT_EQ(nonzero, want_per_tensor[s]) << "segment " << s;
        } else {
          EXPECT_EQ(nonzero, s == 1 ? 50U : 0U) << "segment " << s;
        }
        at += segments[s];
      }
    });
  }
}

// Every segment keeps at least one element, however small its share of k.
TEST(PerTensorTopK, TinySegmentsKeepOneElement) {
  run_ranks(2, [&](Communicator& comm) {
    const std::vector<std::size_t> segments = {1, 2, 997};
    std::vector<float> x(1000, 0.0f);
    for (std::size_t i = 0; i < x.size(); ++i) x[i] = static_cast<float>(i + 1);
    AllreduceOptions o;
    o.compression.method = compression::Method::TopK;
    o.compression.density = 0.01;
    o.compression.topk_scope = compression::TopKScope::PerTensor;
    o.error_feedback = false;
    o.segments = segments;
    allreduce(comm, std::span<float>(x), o);
    EXPECT_EQ(x[0], 2.0f);  // the single element, from both ranks
    EXPECT_EQ(x[1], 0.0f);
    EXPECT_EQ(x[2], 6.0f);  // the larger of the two
    EXPECT_EQ(std::count_if(x.begin() + 3, x.end(), [](float v) { return v != 0.0f; }), 10);
  });
}

// Empty segments and {count} are one tensor: results and wire bytes are those of a call
// without segments, bit for bit.
TEST(Segments, OneSegmentIsTodaysBehaviour) {
  for (const auto method : {compression::Method::OneBit, compression::Method::TopK}) {
    // [rank][without, with]
    std::vector<std::vector<std::vector<float>>> results(3, std::vector<std::vector<float>>(2));
    std::vector<std::vector<std::size_t>> bytes(3, std::vector<std::size_t>(2));
    run_ranks(3, [&](Communicator& comm) {
      const std::vector<std::size_t> whole = {5000};
      const auto r = static_cast<std::size_t>(comm.rank());
      for (const bool with : {false, true}) {
        AllreduceOptions o;
        o.compression.method = method;
        o.error_feedback = false;
        if (with) o.segments = whole;
        AllreduceStats stats;
        o.stats = &stats;
        std::vector<float> x = testing::case_input(comm.rank(), 0, 5000);
        allreduce(comm, std::span<float>(x), o);
        results[r][with ? 1 : 0] = x;
        bytes[r][with ? 1 : 0] = stats.wire_bytes_sent;
      }
    });
    for (std::size_t r = 0; r < 3; ++r) {
      EXPECT_EQ(results[r][0], results[r][1]);
      EXPECT_EQ(bytes[r][0], bytes[r][1]);
    }
  }
}

// Segments that do not describe the buffer are InvalidArgument naming them, on every rank, before
// anything is sent (the communicator stays usable).
TEST(Segments, BadSegmentsAreInvalidArgumentOnEveryRank) {
  const std::vector<std::vector<std::size_t>> bad = {{100, 0, 900}, {100, 800}, {600, 600}};
  for (const auto& segments : bad) {
    run_ranks(3, [&](Communicator& comm) {
      for (const auto method : {compression::Method::None, compression::Method::Qsgd}) {
        AllreduceOptions o;
        o.compression.method = method;
        o.error_feedback = false;
        o.segments = segments;
        std::vector<float> x(1000, 1.0f);
        try {
          allreduce(comm, std::span<float>(x), o);
          ADD_FAILURE() << "rank " << comm.rank() << " accepted bad segments";
        } catch (const Error& e) {
          EXPECT_EQ(e.code(), ErrorCode::InvalidArgument);
          EXPECT_NE(std::string(e.what()).find("invalid argument: segments: "), std::string::npos)
              << e.what();
        }
      }
      std::vector<float> y(10, 1.0f);
      allreduce(comm, std::span<float>(y));
      EXPECT_EQ(y[0], 3.0f);
    });
  }
}

// Ranks that pass different segments (or one passes none) disagree: Mismatch on every rank,
// naming the segments, before any payload is decoded.
TEST(Segments, DisagreeingSegmentsAreMismatchOnEveryRank) {
  for (const auto method :
       {compression::Method::OneBit, compression::Method::TopK, compression::Method::Fp16}) {
    for (const bool none_on_last : {false, true}) {
      run_ranks(3, [&](Communicator& comm) {
        const std::vector<std::size_t> a = {500, 500}, b = {400, 600};
        AllreduceOptions o;
        o.compression.method = method;
        o.error_feedback = false;
        const bool last = comm.rank() == comm.size() - 1;
        if (!last) {
          o.segments = a;
        } else if (!none_on_last) {
          o.segments = b;
        }
        std::vector<float> x(1000, 1.0f);
        try {
          allreduce(comm, std::span<float>(x), o);
          ADD_FAILURE() << "rank " << comm.rank() << " reduced with disagreeing segments";
        } catch (const Error& e) {
          EXPECT_EQ(e.code(), ErrorCode::Mismatch) << e.what();
          EXPECT_NE(std::string(e.what()).find("segments"), std::string::npos) << e.what();
        }
      });
    }
  }
}

// A state is bound to its buffer's segments: other segments are Mismatch naming them.
TEST(Segments, StateReusedWithOtherSegmentsIsMismatch) {
  run_ranks(2, [&](Communicator& comm) {
    const std::vector<std::size_t> a = {500, 500}, b = {400, 600};
    AllreduceState state;
    AllreduceOptions o;
    o.compression.method = compression::Method::Ternary;
    o.state = &state;
    o.segments = a;
    std::vector<float> x = testing::case_input(comm.rank(), 0, 1000);
    allreduce(comm, std::span<float>(x), o);
    for (const auto other : {std::span<const std::size_t>(b), std::span<const std::size_t>()}) {
      o.segments = other;
      try {
        allreduce(comm, std::span<float>(x), o);
        ADD_FAILURE() << "state reused with other segments";
      } catch (const Error& e) {
        EXPECT_EQ(e.code(), ErrorCode::Mismatch);
        EXPECT_NE(std::string(e.what()).find("changes segments digest"), std::string::npos)
            << e.what();
      }
    }
    EXPECT_EQ(state.steps(), 1U);
  });
}

}  // namespace
}  // namespace frugal
