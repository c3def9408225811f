// The accuracy guardrail of GradientBuckets (BucketOptions::guardrail): its ladders, its
// decisions (up past the upper bound, down after `patience` steps below the lower one), that
// every rank takes the same decision at the same step even when their own ratios differ, and
// that a change of setting neither drops nor duplicates error-feedback mass. In-process ranks.
#include "frugal/collectives/guardrail.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <mutex>
#include <string>
#include <vector>

#include "frugal/collectives/buckets.hpp"
#include "frugal/error.hpp"
#include "guardrail.hpp"
#include "loopback_harness.hpp"

namespace frugal {
namespace {

using compression::CompressionConfig;
using compression::Method;
using testing::run_ranks;

constexpr std::size_t kTensor = 4096;

CompressionConfig config(Method method) {
  CompressionConfig c;
  c.method = method;
  return c;
}

std::vector<std::string> names(const std::vector<CompressionConfig>& ladder) {
  std::vector<std::string> out;
  for (const CompressionConfig& c : ladder) out.push_back(describe(c));
  return out;
}

TEST(GuardrailLadder, EachMethodClimbsToDense) {
  CompressionConfig topk = config(Method::TopK);
  topk.density = 0.01;
  EXPECT_EQ(names(guardrail_ladder(topk, 1000)),
            (std::vector<std::string>{"topk(density=0.01)", "topk(density=0.04)",
                                      "topk(density=0.16)", "dense"}));
  topk.k = 10;  // absolute k: 10, 40, 160 of 1000 stay <= 0.25; 640 would not
  EXPECT_EQ(names(guardrail_ladder(topk, 1000)),
            (std::vector<std::string>{"topk(k=10)", "topk(k=40)", "topk(k=160)", "dense"}));
  CompressionConfig qsgd = config(Method::Qsgd);
  qsgd.bits = 2;
  EXPECT_EQ(
      names(guardrail_ladder(qsgd, 1000)),
      (std::vector<std::string>{"qsgd(bits=2)", "qsgd(bits=4)", "qsgd(bits=8)", "fp16", "dense"}));
  EXPECT_EQ(names(guardrail_ladder(config(Method::OneBit), 1000)),
            (std::vector<std::string>{"onebit", "fp16", "dense"}));
  EXPECT_EQ(names(guardrail_ladder(config(Method::Ternary), 1000)),
            (std::vector<std::string>{"ternary", "fp16", "dense"}));
  EXPECT_EQ(names(guardrail_ladder(config(Method::Bf16), 1000)),
            (std::vector<std::string>{"bf16", "dense"}));
  EXPECT_EQ(names(guardrail_ladder(config(Method::None), 1000)),
            (std::vector<std::string>{"dense"}));
  // Fields the ladder does not name stay while the method does.
  CompressionConfig flagged = config(Method::TopK);
  flagged.non_finite = compression::NonFinitePolicy::Flag;
  flagged.topk_scope = compression::TopKScope::PerTensor;
  const auto ladder = guardrail_ladder(flagged, 1000);
  EXPECT_EQ(ladder[1].topk_scope, compression::TopKScope::PerTensor);
  EXPECT_EQ(ladder.back().non_finite, compression::NonFinitePolicy::Flag);
}

GuardrailOptions guard(double lower, double upper, std::size_t patience, std::size_t cooldown) {
  GuardrailOptions o;
  o.enabled = true;
  o.lower = lower;
  o.upper = upper;
  o.smoothing = 1.0;  // each step's ratio as it is: the tests choose the ratios
  o.patience = patience;
  o.cooldown = cooldown;
  return o;
}

// sums giving a ratio of exactly `ratio`.
detail::GuardrailSums ratio_of(double ratio) {
  return {ratio * ratio, 1.0, 1.0};
}

TEST(GuardrailDecide, UpPastTheUpperBoundAfterTheCooldownDownAfterPatience) {
  const GuardrailOptions o = guard(1.0, 4.0, 3, 2);
  detail::GuardrailBucket b;
  // Step 1 is above the bound but within the cooldown; step 2 steps up.
  EXPECT_FALSE(detail::guardrail_decide(b, o, ratio_of(5), 3));
  EXPECT_EQ(detail::guardrail_decide(b, o, ratio_of(5), 3), std::optional<std::size_t>(1));
  EXPECT_FALSE(b.seeded);
  // Between the bounds nothing happens, and a calm streak restarts.
  EXPECT_FALSE(detail::guardrail_decide(b, o, ratio_of(0.5), 3));
  EXPECT_FALSE(detail::guardrail_decide(b, o, ratio_of(0.5), 3));
  EXPECT_FALSE(detail::guardrail_decide(b, o, ratio_of(2), 3));
  EXPECT_FALSE(detail::guardrail_decide(b, o, ratio_of(0.5), 3));
  EXPECT_FALSE(detail::guardrail_decide(b, o, ratio_of(0.5), 3));
  EXPECT_EQ(detail::guardrail_decide(b, o, ratio_of(0.5), 3), std::optional<std::size_t>(0));
  // At rung 0 a calm bucket stays; at the top a hot one does.
  for (int i = 0; i < 5; ++i) EXPECT_FALSE(detail::guardrail_decide(b, o, ratio_of(0), 3));
  b.rung = 2;
  b.since_change = 10;
  EXPECT_FALSE(detail::guardrail_decide(b, o, ratio_of(9), 3));
  // An all-zero input is no observation.
  detail::GuardrailBucket quiet;
  EXPECT_FALSE(detail::guardrail_decide(quiet, o, {0, 0, 0}, 3));
  EXPECT_FALSE(quiet.seeded);
}

TEST(GuardrailDecide, TheEmaSmoothsASingleSpike) {
  GuardrailOptions o = guard(1.0, 4.0, 3, 1);
  o.smoothing = 0.1;
  detail::GuardrailBucket b;
  EXPECT_FALSE(detail::guardrail_decide(b, o, ratio_of(2), 3));
  EXPECT_FALSE(detail::guardrail_decide(b, o, ratio_of(20), 3));  // 2 + 0.1 * 18 = 3.8
  EXPECT_NEAR(b.ratio, 3.8, 1e-12);
  EXPECT_TRUE(detail::guardrail_decide(b, o, ratio_of(20), 3));  // 3.8 + 1.62 > 4
}

TEST(GuardrailOptions, OutOfRangeIsRefusedByName) {
  auto refused = [](GuardrailOptions o, const std::string& field) {
    try {
      validate(o);
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::InvalidArgument);
      EXPECT_NE(std::string(e.what()).find(field), std::string::npos) << e.what();
      return;
    }
    ADD_FAILURE() << field << " accepted";
  };
  refused(guard(2, 1, 1, 1), "guardrail.upper");
  refused(guard(-1, 1, 1, 1), "guardrail.lower");
  refused(guard(0, 1, 0, 1), "guardrail.patience");
  refused(guard(0, 1, 1, 0), "guardrail.cooldown");
  GuardrailOptions smoothing = guard(0, 1, 1, 1);
  smoothing.smoothing = 0;
  refused(smoothing, "guardrail.smoothing");
  run_ranks(1, [](Communicator& comm) {
    BucketOptions bo;
    bo.allreduce.compression = config(Method::OneBit);
    bo.allreduce.error_feedback = false;
    bo.guardrail = guard(1, 4, 1, 1);
    EXPECT_THROW(GradientBuckets(comm, bo), Error);
  });
}

// ±1 everywhere: 1-bit with mean-abs scaling sends it exactly. `spike` puts 1000 in element 0,
// which 1-bit cannot send (its chunk's scale stays near 1): the residual grows every step.
std::vector<float> gradient(int step, bool spike) {
  std::vector<float> g(kTensor);
  for (std::size_t i = 0; i < kTensor; ++i) {
    g[i] = ((i * 7 + static_cast<std::size_t>(step)) % 3 == 0) ? -1.0f : 1.0f;
  }
  if (spike) g[0] = 1000.0f;
  return g;
}

BucketOptions onebit_options(GuardrailOptions guardrail) {
  BucketOptions bo;
  bo.bucket_bytes = kTensor * sizeof(float);
  bo.allreduce.compression = config(Method::OneBit);
  bo.allreduce.non_finite = NonFiniteAction::Skip;
  bo.guardrail = guardrail;
  return bo;
}

struct Trace {
  std::vector<std::size_t> rungs;  // after each step
  std::vector<std::uint64_t> event_steps;
  std::vector<std::string> events;  // "from->to"
  std::vector<std::vector<float>> results;
};

// `spiky(rank, step)` decides which ranks send the spike at which step.
template <typename Spiky>
std::vector<Trace> run_onebit(int p, int steps, const GuardrailOptions& guardrail, Spiky spiky) {
  std::vector<Trace> traces(static_cast<std::size_t>(p));
  run_ranks(p, [&](Communicator& comm) {
    GradientBuckets buckets(comm, onebit_options(guardrail));
    buckets.add("w", kTensor);
    Trace& trace = traces[static_cast<std::size_t>(comm.rank())];
    for (int s = 0; s < steps; ++s) {
      std::vector<float> g = gradient(s, spiky(comm.rank(), s));
      buckets.mark_ready(0, g);
      buckets.finish();
      trace.rungs.push_back(buckets.bucket_rung(0));
      for (const GuardrailEvent& e : buckets.last_step_guardrail_events()) {
        EXPECT_EQ(e.bucket, 0u);
        EXPECT_EQ(e.step, static_cast<std::uint64_t>(s + 1));
        trace.event_steps.push_back(e.step);
        trace.events.push_back(e.from + "->" + e.to);
      }
      trace.results.push_back(g);
    }
  });
  return traces;
}

void expect_identical(const std::vector<Trace>& traces) {
  for (std::size_t r = 1; r < traces.size(); ++r) {
    EXPECT_EQ(traces[r].rungs, traces[0].rungs) << "rank " << r;
    EXPECT_EQ(traces[r].event_steps, traces[0].event_steps) << "rank " << r;
    EXPECT_EQ(traces[r].events, traces[0].events) << "rank " << r;
    ASSERT_EQ(traces[r].results.size(), traces[0].results.size());
    for (std::size_t s = 0; s < traces[0].results.size(); ++s) {
      EXPECT_EQ(std::memcmp(traces[r].results[s].data(), traces[0].results[s].data(),
                            kTensor * sizeof(float)),
                0)
          << "rank " << r << " step " << s;
    }
  }
}

TEST(GuardrailBuckets, ABlowUpStepsUpOnEveryRankAndRecoveryStepsBackDown) {
  for (const int p : {2, 3}) {
    // 10 spiky steps, then 30 benign ones. Bounds 0.5 and 2.5, cooldown 3, patience 10.
    const std::vector<Trace> traces =
        run_onebit(p, 40, guard(0.5, 2.5, 10, 3), [](int, int s) { return s < 10; });
    expect_identical(traces);
    const Trace& t = traces[0];
    // Element 0's residual grows by about 1000 a step against an input norm of about 1000: the
    // ratio is about 1, 2, 3 after steps 1, 2, 3, and step 3 is the first the cooldown allows.
    ASSERT_EQ(t.events.size(), 2u) << "P=" << p;
    EXPECT_EQ(t.events[0], "onebit->fp16");
    EXPECT_EQ(t.event_steps[0], 3u);
    EXPECT_EQ(t.rungs[1], 0u);
    // fp16 sends the spike (and the carried residual) with a ratio of ~1e-3: no second step up,
    // and after `patience` = 10 calm steps (4..13) it steps back down; 1-bit then sends the
    // benign ±1 gradients exactly and stays.
    for (std::size_t s = 2; s < 12; ++s) EXPECT_EQ(t.rungs[s], 1u) << "step " << s + 1;
    EXPECT_EQ(t.events[1], "fp16->onebit");
    EXPECT_EQ(t.event_steps[1], 13u);
    for (std::size_t s = 12; s < t.rungs.size(); ++s) EXPECT_EQ(t.rungs[s], 0u) << s + 1;
  }
}

TEST(GuardrailBuckets, RanksWithDifferentRatiosTakeTheSameDecision) {
  // Only rank 0 sends the spike: its own ratio blows up, the others' stay near 0. The agreed
  // ratio (norms over every rank) still passes the bound, so every rank steps up at the same
  // step, and the results stay bit-identical.
  const std::vector<Trace> traces =
      run_onebit(3, 12, guard(0.5, 2.5, 100, 3), [](int rank, int) { return rank == 0; });
  expect_identical(traces);
  ASSERT_EQ(traces[0].events.size(), 1u);
  EXPECT_EQ(traces[0].events[0], "onebit->fp16");
  EXPECT_EQ(traces[0].event_steps[0], 3u);
  // A rank without the spike, alone, never would have.
  const std::vector<Trace> alone =
      run_onebit(1, 12, guard(0.5, 2.5, 100, 3), [](int, int) { return false; });
  EXPECT_TRUE(alone[0].events.empty());
  EXPECT_EQ(alone[0].rungs.back(), 0u);
}

TEST(GuardrailBuckets, RanksWithOtherOptionsGetMismatch) {
  run_ranks(2, [](Communicator& comm) {
    GuardrailOptions o = guard(0.5, 3.0, 5, 3);
    if (comm.rank() == 1) o.upper = 3.5;
    GradientBuckets buckets(comm, onebit_options(o));
    buckets.add("w", kTensor);
    std::vector<float> g = gradient(0, false);
    buckets.mark_ready(0, g);
    try {
      buckets.finish();
      ADD_FAILURE() << "rank " << comm.rank() << " accepted other guardrail options";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::Mismatch) << e.what();
    }
  });
}

// Element e of rank r's gradient at step s: varied, so both residuals are non-zero.
std::vector<float> varied(int rank, int step) {
  std::vector<float> g(kTensor);
  for (std::size_t i = 0; i < kTensor; ++i) {
    const double x = static_cast<double>(i * 13 + static_cast<std::size_t>(rank) * 1009 +
                                         static_cast<std::size_t>(step) * 31);
    g[i] = static_cast<float>(std::sin(x) * (1.0 + static_cast<double>(i % 17)) * 1000.0);
  }
  return g;
}

// A change of setting flushes the residuals, worker and two-phase server, into the next input:
// a twin without the guardrail runs the same first step bit for bit, and its residuals are
// exactly the carries; the next step, dense, then reduces every rank's carry, so that
// sum_ranks(worker) / d + server comes out of it (d = P under Average, 1 under Sum).
TEST(GuardrailBuckets, ASwitchKeepsEveryResidualAsMassOfTheNextStep) {
  constexpr int kP = 3;
  for (const ReduceOp op : {ReduceOp::Sum, ReduceOp::Average}) {
    std::mutex mutex;
    std::vector<double> expected(kTensor, 0.0);  // sum_ranks(w) / d + S, from the twins
    std::vector<std::vector<float>> next(kP);
    std::vector<double> carried(kP, 0.0);
    run_ranks(kP, [&](Communicator& comm) {
      BucketOptions bo;
      bo.bucket_bytes = kTensor * sizeof(float);
      bo.allreduce.op = op;
      bo.allreduce.compression = config(Method::Fp16);  // ladder: fp16, dense
      bo.allreduce.algorithm = AllreduceAlgorithm::TwoPhase;
      BucketOptions twin_options = bo;
      bo.guardrail = guard(0.0, 1e-12, 1000, 1);  // any residual steps up, at once
      GradientBuckets guarded(comm, bo);
      GradientBuckets twin(comm, twin_options);
      guarded.add("w", kTensor);
      twin.add("w", kTensor);
      const int rank = comm.rank();
      std::vector<float> a = varied(rank, 0), b = varied(rank, 0);
      guarded.mark_ready(0, a);
      guarded.finish();
      twin.mark_ready(0, b);
      twin.finish();
      EXPECT_EQ(std::memcmp(a.data(), b.data(), kTensor * sizeof(float)), 0);
      ASSERT_EQ(guarded.last_step_guardrail_events().size(), 1u);
      EXPECT_EQ(guarded.bucket_rung(0), 1u);
      EXPECT_EQ(guarded.bucket_setting(0).method, Method::None);
      EXPECT_FALSE(guarded.allreduce_state(0).bound()) << "the old setting's state was kept";

      const AllreduceState& state = twin.allreduce_state(0);
      const std::span<const float> w = state.worker_residual();
      const std::span<const float> s = state.server_residual();
      ASSERT_EQ(w.size(), kTensor);
      ASSERT_FALSE(s.empty()) << "two-phase keeps a server residual";
      const std::span<const float> carry = guarded.guardrail_carry(0);
      ASSERT_EQ(carry.size(), kTensor);
      // This rank's chunk of the two-phase split: the residual's own length, at rank * base.
      const std::size_t base = kTensor / kP, extra = kTensor % kP;
      const auto r = static_cast<std::size_t>(rank);
      const std::size_t offset = r * base + std::min(r, extra);
      const float scale = op == ReduceOp::Average ? static_cast<float>(kP) : 1.0f;
      double mass = 0;
      for (std::size_t e = 0; e < kTensor; ++e) {
        float want = w[e];
        if (e >= offset && e < offset + s.size()) want += scale * s[e - offset];
        ASSERT_EQ(carry[e], want) << "element " << e << " rank " << rank;
        mass += carry[e];
      }
      {
        const std::lock_guard lock(mutex);
        const double d = op == ReduceOp::Average ? kP : 1.0;
        for (std::size_t e = 0; e < kTensor; ++e) expected[e] += w[e] / d;
        for (std::size_t e = 0; e < s.size(); ++e) expected[offset + e] += s[e];
        carried[r] = mass;
      }
      // A step of zero gradients at the dense rung: its result is the carried mass.
      std::vector<float> zero(kTensor, 0.0f);
      guarded.mark_ready(0, zero);
      guarded.finish();
      EXPECT_TRUE(guarded.guardrail_carry(0).empty()) << "a reduced carry must not stay";
      const std::lock_guard lock(mutex);
      next[r] = zero;
    });
    double largest = 0;
    for (const double x : expected) largest = std::max(largest, std::abs(x));
    ASSERT_GT(largest, 0.0);
    for (std::size_t e = 0; e < kTensor; ++e) {
      ASSERT_NEAR(next[0][e], expected[e], 1e-5 * largest)
          << "element " << e << (op == ReduceOp::Sum ? " (sum)" : " (average)");
    }
    double total = 0, result = 0;
    for (const double m : carried) total += m;
    for (const float x : next[0]) result += x;
    const double d = op == ReduceOp::Average ? kP : 1.0;
    EXPECT_NEAR(result * d, total, 1e-4 * largest * kTensor);
  }
}

TEST(GuardrailBuckets, StateImagesKeepTheRungAndTheCarry) {
  run_ranks(2, [](Communicator& comm) {
    BucketOptions bo = onebit_options(guard(0.0, 1e-12, 1000, 1));
    GradientBuckets first(comm, bo);
    first.add("w", kTensor);
    std::vector<float> g = varied(comm.rank(), 0);
    first.mark_ready(0, g);
    first.finish();
    ASSERT_EQ(first.bucket_rung(0), 1u);
    ASSERT_FALSE(first.guardrail_carry(0).empty());
    const std::vector<std::byte> image = first.save_state();

    GradientBuckets second(comm, bo);
    second.add("w", kTensor);
    second.restore_state(image);
    EXPECT_EQ(second.bucket_rung(0), 1u);
    EXPECT_EQ(second.save_state(), image);
    std::vector<float> a = varied(comm.rank(), 1), b = a;
    first.mark_ready(0, a);
    first.finish();
    second.mark_ready(0, b);
    second.finish();
    EXPECT_EQ(std::memcmp(a.data(), b.data(), kTensor * sizeof(float)), 0);
    EXPECT_EQ(first.save_state(), second.save_state());

    // Without the guardrail the image's fp16 residual and carry have no place: refused.
    BucketOptions off = bo;
    off.guardrail = {};
    GradientBuckets plain(comm, off);
    plain.add("w", kTensor);
    try {
      plain.restore_state(image);
      ADD_FAILURE() << "a guarded image restored without the guardrail";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::Mismatch) << e.what();
    }
  });
}

TEST(GuardrailBuckets, ElasticRedistributionKeepsTheCarriedMass) {
  std::vector<std::vector<std::byte>> images(2);
  std::vector<double> mass(2, 0.0);
  const BucketOptions bo = onebit_options(guard(0.0, 1e-12, 1000, 1));
  run_ranks(2, [&](Communicator& comm) {
    GradientBuckets buckets(comm, bo);
    buckets.add("w", kTensor);
    std::vector<float> g = varied(comm.rank(), 0);
    buckets.mark_ready(0, g);
    buckets.finish();
    ASSERT_EQ(buckets.bucket_rung(0), 1u);
    double m = 0;
    for (const float x : buckets.guardrail_carry(0)) m += x;
    images[static_cast<std::size_t>(comm.rank())] = buckets.save_state();
    mass[static_cast<std::size_t>(comm.rank())] = m;
  });
  const auto cut = GradientBuckets::redistribute_state(images, 3, bo);
  ASSERT_EQ(cut.size(), 3u);
  std::vector<double> after(3, 0.0);
  std::vector<std::size_t> rungs(3, 0);
  run_ranks(3, [&](Communicator& comm) {
    GradientBuckets buckets(comm, bo);
    buckets.add("w", kTensor);
    buckets.restore_state(cut[static_cast<std::size_t>(comm.rank())]);
    double m = 0;
    for (const float x : buckets.guardrail_carry(0)) m += x;
    after[static_cast<std::size_t>(comm.rank())] = m;
    rungs[static_cast<std::size_t>(comm.rank())] = buckets.bucket_rung(0);
    // The restored setting (fp16) runs on three ranks.
    std::vector<float> g = varied(comm.rank(), 1);
    buckets.mark_ready(0, g);
    buckets.finish();
  });
  EXPECT_EQ(rungs, (std::vector<std::size_t>{1, 1, 1}));
  EXPECT_NEAR(after[0] + after[1] + after[2], mass[0] + mass[1],
              1e-6 * (std::abs(mass[0]) + std::abs(mass[1]) + 1));
  EXPECT_NE(mass[0] + mass[1], 0.0);
}

}  // namespace
}  // namespace frugal
