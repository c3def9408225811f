// Bad arguments on one rank only, over in-process ranks: that rank throws its own error naming
// the parameter, every other rank a Mismatch naming it and its reason, all at once (the
// communicator's timeout is long, so a peer left waiting would show up as a Timeout instead),
// and the communicator stays usable. And gTop-k in the state's layout: toggling it on a bound
// state is Mismatch, images of version 3 (no gtopk recorded) still restore.
#include <gtest/gtest.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <mutex>
#include <string>
#include <vector>

#include "compressed_cases.hpp"
#include "frugal/collectives/allreduce.hpp"
#include "frugal/collectives/buckets.hpp"
#include "frugal/collectives/hierarchical.hpp"
#include "frugal/collectives/powersgd.hpp"
#include "frugal/collectives/reduce_scatter.hpp"
#include "frugal/loopback.hpp"
#include "loopback_harness.hpp"

namespace frugal {
namespace {

using testing::run_ranks;

// Far beyond how long any of these calls may take: a rank left waiting for a peer that threw
// reports Timeout, which the code checks below catch.
constexpr std::chrono::milliseconds kLongTimeout{30'000};

struct Outcome {
  int code = -1;  // -1: no error
  std::string message;
  bool usable_after = false;  // a good allreduce on the same communicator then succeeded
};

constexpr int kInvalid = static_cast<int>(ErrorCode::InvalidArgument);
constexpr int kMismatch = static_cast<int>(ErrorCode::Mismatch);

// Runs `call(comm, bad)` on `p` ranks, `bad` true on rank `bad_rank`, without fail-fast; then a
// dense allreduce on the same communicator, to see whether it is still usable.
std::vector<Outcome> outcomes(int p, int bad_rank,
                              const std::function<void(Communicator&, bool)>& call) {
  std::mutex mutex;
  std::vector<Outcome> out(static_cast<std::size_t>(p));
  run_ranks(
      p,
      [&](Communicator& comm) {
        Outcome o;
        try {
          call(comm, comm.rank() == bad_rank);
        } catch (const Error& e) {
          o.code = static_cast<int>(e.code());
          o.message = e.what();
        }
        try {
          std::vector<float> x(10, 1.0f);
          allreduce(comm, std::span<float>(x));
          o.usable_after = x[0] == static_cast<float>(comm.size());
        } catch (const Error&) {
        }
        std::lock_guard lock(mutex);
        out[static_cast<std::size_t>(comm.rank())] = o;
      },
      kLongTimeout, false);
  return out;
}

bool contains(const std::string& text, const std::string& what) {
  return text.find(what) != std::string::npos;
}

// Every rank: the bad one its own InvalidArgument starting with `parameter`, the others
// Mismatch naming the bad rank and its message; the communicator usable afterwards everywhere.
void expect_refused_everywhere(const std::vector<Outcome>& got, int bad_rank,
                               const std::string& parameter, const std::string& reason) {
  for (std::size_t r = 0; r < got.size(); ++r) {
    const Outcome& o = got[r];
    SCOPED_TRACE("rank " + std::to_string(r) + ": " + o.message);
    if (static_cast<int>(r) == bad_rank) {
      EXPECT_EQ(o.code, kInvalid);
      EXPECT_TRUE(contains(o.message, "invalid argument: " + parameter + ": " + reason));
    } else {
      EXPECT_EQ(o.code, kMismatch);
      EXPECT_TRUE(contains(o.message,
                           "rank " + std::to_string(bad_rank) + ": " + parameter + ": " + reason));
    }
    EXPECT_TRUE(o.usable_after);
  }
}

AllreduceOptions topk_options(AllreduceState* state) {
  AllreduceOptions o;
  o.compression.method = compression::Method::TopK;
  o.compression.density = 0.01;
  o.state = state;
  return o;
}

// One rank's top-k density is out of (0, 1]: every algorithm, at power-of-two and folded sizes.
TEST(OneRankRefuses, ABadDensityFailsEveryRankNamingIt) {
  for (const int p : {2, 3, 4}) {
    for (const AllreduceAlgorithm a :
         {AllreduceAlgorithm::Auto, AllreduceAlgorithm::SparseAllgather,
          AllreduceAlgorithm::SparseRecursiveDoubling}) {
      SCOPED_TRACE(std::to_string(p) + " ranks, " + std::string(to_string(a)));
      const int bad = p - 1;
      const auto got = outcomes(p, bad, [&](Communicator& comm, bool is_bad) {
        AllreduceState state;
        AllreduceOptions o = topk_options(&state);
        o.algorithm = a;
        if (is_bad) o.compression.density = 1.5;
        std::vector<float> x = testing::case_input(comm.rank(), 0, 2000);
        allreduce(comm, std::span<float>(x), o);
      });
      expect_refused_everywhere(got, bad, "density", "must be in (0, 1]");
    }
  }
}

// One rank's segments do not add up to the buffer (QSGD cuts its payloads at them).
TEST(OneRankRefuses, BadSegmentsFailEveryRankNamingThem) {
  const int p = 3;
  const auto got = outcomes(p, 1, [&](Communicator& comm, bool is_bad) {
    AllreduceOptions o;
    o.compression.method = compression::Method::Qsgd;
    o.error_feedback = false;
    const std::vector<std::size_t> good = {1000, 1000}, bad = {1000, 999};
    o.segments = is_bad ? bad : good;
    std::vector<float> x = testing::case_input(comm.rank(), 0, 2000);
    allreduce(comm, std::span<float>(x), o);
  });
  expect_refused_everywhere(got, 1, "segments", "");
}

// A small dense allreduce carries its block inline with the data: the refusing rank sends the
// block alone, a shorter message its peers still read the refusal from. Their buffers are left
// as they were.
TEST(OneRankRefuses, ADenseInlineAllreduceFailsEveryRankAndLeavesTheBuffers) {
  for (const int p : {2, 3, 4}) {
    SCOPED_TRACE(std::to_string(p) + " ranks");
    std::mutex mutex;
    bool untouched = true;
    const auto got = outcomes(p, 0, [&](Communicator& comm, bool is_bad) {
      std::vector<std::int32_t> x(8, comm.rank() + 1);
      const std::vector<std::int32_t> before = x;
      try {
        AllreduceOptions o;
        o.op = is_bad ? ReduceOp::Average : ReduceOp::Sum;
        allreduce(comm, std::span<std::int32_t>(x), o);
      } catch (const Error&) {
        std::lock_guard lock(mutex);
        untouched = untouched && x == before;
        throw;
      }
    });
    expect_refused_everywhere(got, 0, "op", "average is defined for floating types only");
    EXPECT_TRUE(untouched);
  }
}

// The compressed reduce-scatter: one rank's bucket is not a multiple of 8.
TEST(OneRankRefuses, ABadBucketInTheReduceScatterFailsEveryRankNamingIt) {
  const int p = 3;
  const auto got = outcomes(p, 2, [&](Communicator& comm, bool is_bad) {
    AllreduceState state;
    AllreduceOptions o;
    o.compression.method = compression::Method::OneBit;
    o.state = &state;
    if (is_bad) o.compression.bucket = 12;
    std::vector<float> input = testing::case_input(comm.rank(), 0, 300);
    std::vector<float> shard(100);
    compressed_reduce_scatter(comm, input, shard, o);
  });
  expect_refused_everywhere(got, 2, "bucket", "must be a positive multiple of 8");
}

// A state bound to another buffer on one rank only: that rank's Mismatch, named on every rank.
TEST(OneRankRefuses, AStateBoundElsewhereOnOneRankFailsEveryRank) {
  const int p = 3;
  const auto got = outcomes(p, 1, [&](Communicator& comm, bool is_bad) {
    AllreduceState state;
    AllreduceOptions o = topk_options(&state);
    if (is_bad) {
      // Bound alone (one rank needs no peer) to a buffer of another size.
      auto solo = make_loopback_group(1);
      Communicator one(std::move(solo.transports[0]));
      std::vector<float> other(500, 1.0f);
      allreduce(one, std::span<float>(other), o);
    }
    std::vector<float> x = testing::case_input(comm.rank(), 0, 2000);
    allreduce(comm, std::span<float>(x), o);
  });
  for (std::size_t r = 0; r < got.size(); ++r) {
    SCOPED_TRACE("rank " + std::to_string(r) + ": " + got[r].message);
    EXPECT_EQ(got[r].code, kMismatch);
    EXPECT_TRUE(contains(got[r].message, "AllreduceState was bound"));
    if (r != 1) {
      EXPECT_TRUE(contains(got[r].message, "rank 1: AllreduceState was bound"));
    }
    EXPECT_TRUE(got[r].usable_after);
  }
}

// The hierarchical allreduce plans like allreduce: one rank's bad bucket fails every rank.
TEST(OneRankRefuses, ABadBucketInAHierarchicalAllreduceFailsEveryRankNamingIt) {
  const int p = 4;
  const auto got = outcomes(p, 3, [&](Communicator& comm, bool is_bad) {
    Hierarchy hierarchy(comm);
    AllreduceOptions o;
    o.compression.method = compression::Method::OneBit;
    o.compression.bucket = is_bad ? 3 : 64;
    HierarchicalState state;
    std::vector<float> x = testing::case_input(comm.rank(), 0, 256);
    hierarchical_allreduce(hierarchy, std::span<float>(x), o, &state);
  });
  expect_refused_everywhere(got, 3, "bucket", "must be a positive multiple of 8");
}

// Gradient buckets: one rank's finish() with a tensor it never marked ready. Its peers have
// launched every bucket; theirs end at once naming that rank, and the next step works.
TEST(OneRankRefuses, AnUnmarkedTensorInBucketsFailsEveryRankAndTheNextStepWorks) {
  const int p = 3;
  std::mutex mutex;
  std::vector<int> next_step_ok(p, 0);
  const auto got = outcomes(p, 1, [&](Communicator& comm, bool is_bad) {
    BucketOptions options;
    options.bucket_bytes = 400;  // one 100-element tensor per bucket
    options.allreduce.compression.method = compression::Method::OneBit;
    GradientBuckets buckets(comm, options);
    const std::vector<std::string> names = {"a", "b", "c", "d"};
    for (const std::string& name : names) buckets.add(name, 100);
    std::vector<std::vector<float>> grads(names.size(), std::vector<float>(100, 1.0f));
    const auto step = [&](bool skip_b) {
      for (std::size_t i = 0; i < names.size(); ++i) {
        grads[i].assign(100, 1.0f);
        if (!(skip_b && names[i] == "b")) buckets.mark_ready(names[i], grads[i]);
      }
      buckets.finish();
    };
    try {
      step(is_bad);
    } catch (const Error&) {
      step(false);
      std::lock_guard lock(mutex);
      next_step_ok[static_cast<std::size_t>(comm.rank())] =
          grads[0][0] == static_cast<float>(p) ? 1 : 0;
      throw;
    }
  });
  expect_refused_everywhere(got, 1, "finish", "tensor 'b' was not marked ready");
  EXPECT_EQ(next_step_ok, std::vector<int>(p, 1));
}

// PowerSGD votes on its terms with an allreduce: one rank's bad approximation rank, or a timeout
// of 0 (the refusal then runs on the communicator's own), fails every rank naming it.
TEST(OneRankRefuses, ABadPowerSgdOptionFailsEveryRankNamingIt) {
  struct Case {
    std::string parameter_and_reason;
    void (*spoil)(PowerSgdOptions&);
  };
  const Case cases[] = {
      {"rank: must be at least 1", [](PowerSgdOptions& o) { o.rank = 0; }},
      {"timeout: must be positive",
       [](PowerSgdOptions& o) { o.timeout = std::chrono::milliseconds(0); }},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.parameter_and_reason);
    const int p = 3;
    const auto got = outcomes(p, 1, [&](Communicator& comm, bool is_bad) {
      PowerSgdOptions o;
      if (is_bad) c.spoil(o);
      PowerSgdState state;
      std::vector<float> data = testing::case_input(comm.rank(), 0, 16 * 8);
      const PowerSgdTensor tensors[] = {{data, 16, 8}};
      powersgd_allreduce(comm, tensors, state, o);
    });
    const std::string parameter =
        c.parameter_and_reason.substr(0, c.parameter_and_reason.find(':'));
    const std::string reason = c.parameter_and_reason.substr(parameter.size() + 2);
    expect_refused_everywhere(got, 1, parameter, reason);
  }
}

AllreduceOptions gtopk_options(AllreduceState* state, bool gtopk) {
  AllreduceOptions o = topk_options(state);
  o.compression.density = 0.02;
  o.compression.gtopk = gtopk;
  o.algorithm = AllreduceAlgorithm::SparseRecursiveDoubling;
  return o;
}

// A gTop-k residual also holds what the cuts of the sum gave back: a state bound with gtopk on
// is refused with it off and the reverse, naming it, until reset().
TEST(GtopkLayout, TogglingGtopkOnABoundStateIsMismatchUntilReset) {
  for (const bool first : {true, false}) {
    run_ranks(
        3,
        [&](Communicator& comm) {
          AllreduceState state;
          std::vector<float> x = testing::case_input(comm.rank(), 0, 3000);
          AllreduceOptions o = gtopk_options(&state, first);
          allreduce(comm, std::span<float>(x), o);
          o.compression.gtopk = !first;
          const std::string change = std::string("gtopk ") + (first ? "on -> off" : "off -> on");
          try {
            allreduce(comm, std::span<float>(x), o);
            ADD_FAILURE() << "state reused with " << change;
          } catch (const Error& e) {
            EXPECT_EQ(e.code(), ErrorCode::Mismatch) << e.what();
            EXPECT_TRUE(contains(e.what(), "changes " + change)) << e.what();
          }
          EXPECT_EQ(state.steps(), 1U);
          state.reset();
          allreduce(comm, std::span<float>(x), o);
          EXPECT_EQ(state.steps(), 2U);
        },
        kLongTimeout);
  }
}

// An image of version 3 (no gtopk in its layout) of a gTop-k state restores and continues
// exactly as the state that never left; the first allreduce supplies gtopk, which then binds.
TEST(GtopkLayout, AVersionThreeImageRestoresAndTakesGtopkFromItsFirstCall) {
  std::mutex mutex;
  std::vector<std::vector<float>> kept(3), restored(3);
  run_ranks(
      3,
      [&](Communicator& comm) {
        AllreduceState state;
        AllreduceOptions o = gtopk_options(&state, true);
        std::vector<float> x = testing::case_input(comm.rank(), 0, 3000);
        allreduce(comm, std::span<float>(x), o);
        std::vector<std::byte> image = state.save();
        ASSERT_EQ(static_cast<int>(image[4]), 4);
        // Version 4's gtopk flag bytes follow the segments digest, at byte 54.
        std::vector<std::byte> v3 = image;
        v3[4] = std::byte{3};
        v3.erase(v3.begin() + 54, v3.begin() + 56);
        AllreduceState old;
        old.restore(v3);
        std::vector<float> y = testing::case_input(comm.rank(), 1, 3000), z = y;
        allreduce(comm, std::span<float>(y), o);
        o.state = &old;
        allreduce(comm, std::span<float>(z), o);
        {
          std::lock_guard lock(mutex);
          kept[static_cast<std::size_t>(comm.rank())] = y;
          restored[static_cast<std::size_t>(comm.rank())] = z;
        }
        EXPECT_EQ(old.worker_residual().size(), state.worker_residual().size());
        // Bound now: gtopk off is refused.
        o.compression.gtopk = false;
        try {
          allreduce(comm, std::span<float>(z), o);
          ADD_FAILURE() << "a restored version-3 state took gtopk off after binding";
        } catch (const Error& e) {
          EXPECT_EQ(e.code(), ErrorCode::Mismatch);
          EXPECT_TRUE(contains(e.what(), "gtopk on -> off")) << e.what();
        }
        // A saved and restored version-4 image keeps gtopk.
        AllreduceState again;
        again.restore(state.save());
        o.state = &again;
        EXPECT_THROW(allreduce(comm, std::span<float>(z), o), Error);
      },
      kLongTimeout);
  EXPECT_EQ(kept, restored);
}

}  // namespace
}  // namespace frugal
