// compression = auto for GradientBuckets (BucketOptions::autotune): its schedule; that on a slow
// link it keeps a compressed candidate; that every rank takes the same decision even when the
// ranks measure different costs (max over ranks); ties to the denser; that switching candidates
// loses no gradient mass; checkpoint round trips; bad options and disagreeing ranks refused by
// name. In-process ranks.
#include "frugal/collectives/autotune.hpp"

#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "autotune.hpp"
#include "chunking.hpp"
#include "forwarding_transport.hpp"
#include "frugal/collectives/buckets.hpp"
#include "frugal/error.hpp"
#include "frugal/loopback.hpp"
#include "loopback_harness.hpp"

namespace frugal {
namespace {

using compression::CompressionConfig;
using compression::Method;
using testing::run_ranks;

TEST(AutotuneSchedule, WarmupThenTrialsInLockstepThenRetune) {
  AutotuneOptions o;
  o.enabled = true;
  o.warmup = 2;
  o.trial_steps = 2;
  o.retune = 4;
  std::vector<std::string> seen;
  for (std::uint64_t s = 1; s <= 16; ++s) {
    const detail::AutotunePhase p = detail::autotune_phase(o, 3, s);
    seen.push_back(p.trial ? std::to_string(p.candidate) + (p.last ? "!" : "") : "-");
  }
  EXPECT_EQ(seen, (std::vector<std::string>{"-", "-", "0", "0", "1", "1", "2", "2!", "-", "-", "-",
                                            "-", "0", "0", "1", "1"}));
  o.retune = 0;  // one trial, then never again
  EXPECT_FALSE(detail::autotune_phase(o, 3, 9).trial);
  EXPECT_FALSE(detail::autotune_phase(o, 3, 1000).trial);
  o.warmup = 0;
  EXPECT_TRUE(detail::autotune_phase(o, 3, 1).trial);
}

TEST(AutotuneSchedule, TheLowestMedianWinsAndTiesGoToTheEarlier) {
  std::vector<double> medians;
  // Candidate 0's one outlier does not make it win or lose: its median is 3.
  const std::vector<std::vector<double>> samples{{3, 0.1, 9}, {2, 2, 2}, {2, 5, 1}};
  EXPECT_EQ(detail::autotune_choose(samples, 0.0, medians), 1u);
  EXPECT_EQ(medians, (std::vector<double>{3, 2, 2}));
  const std::vector<std::vector<double>> even{{1, 3}, {2, 2}};  // medians 2 and 2
  EXPECT_EQ(detail::autotune_choose(even, 0.0, medians), 0u);
  // Within the margin of the lowest, the earlier (denser) candidate is kept; past it, not.
  const std::vector<std::vector<double>> close{{1.05}, {1.2}, {1.0}};
  EXPECT_EQ(detail::autotune_choose(close, 0.1, medians), 0u);
  EXPECT_EQ(detail::autotune_choose(close, 0.01, medians), 2u);
  EXPECT_EQ(detail::autotune_choose(close, 0.2, medians), 0u);
}

// Sends cost `ns_per_byte` of sleep each: a link slow enough that bytes dominate.
class SlowTransport final : public testing::ForwardingTransport {
 public:
  SlowTransport(std::unique_ptr<Transport> inner, double ns_per_byte)
      : ForwardingTransport(std::move(inner)), ns_per_byte_(ns_per_byte) {}
  Request isend(int peer, Tag tag, std::span<const std::byte> data) override {
    std::this_thread::sleep_for(
        std::chrono::nanoseconds(static_cast<std::int64_t>(ns_per_byte_ * data.size())));
    return ForwardingTransport::isend(peer, tag, data);
  }

 private:
  double ns_per_byte_;
};

constexpr std::size_t kTensor = 4096;

// Element e of rank r's gradient at step s: varied, so that every method leaves a residual.
std::vector<float> varied(int rank, int step, std::size_t n = kTensor) {
  std::vector<float> g(n);
  for (std::size_t i = 0; i < n; ++i) {
    const double x = static_cast<double>(i * 13 + static_cast<std::size_t>(rank) * 1009 +
                                         static_cast<std::size_t>(step) * 31);
    g[i] = static_cast<float>(std::sin(x) * (1.0 + static_cast<double>(i % 17)) * 10.0);
  }
  return g;
}

BucketOptions auto_options(std::size_t warmup, std::size_t trial_steps, std::size_t retune) {
  BucketOptions bo;
  bo.bucket_bytes = kTensor * sizeof(float);
  bo.allreduce.non_finite = NonFiniteAction::Skip;
  bo.autotune.enabled = true;
  bo.autotune.warmup = warmup;
  bo.autotune.trial_steps = trial_steps;
  bo.autotune.retune = retune;
  return bo;
}

struct Trace {
  std::vector<std::string> events;         // "step bucket from->to [decision costs...]"
  std::vector<std::size_t> candidates;     // bucket 0's after each step
  std::vector<std::vector<double>> costs;  // of each decision
};

std::string text(const AutotuneEvent& e) {
  std::string s = std::to_string(e.step) + " " + std::to_string(e.bucket) + " " + e.from + "->" +
                  e.to + (e.decision ? " decision" : "");
  return s;
}

void record(const GradientBuckets& buckets, Trace& trace) {
  for (const AutotuneEvent& e : buckets.last_step_autotune_events()) {
    trace.events.push_back(text(e));
    if (e.decision) trace.costs.push_back(e.costs);
  }
  trace.candidates.push_back(buckets.bucket_candidate(0));
}

TEST(AutotuneBuckets, OnASlowLinkEveryRankKeepsTheSmallestCandidate) {
  // 64 Ki floats, 100 ns a byte: dense sends 256 KiB a rank (26 ms), fp16 half of it, ternary
  // (2 bits) about 1/16; the encode is well under a millisecond.
  constexpr std::size_t kBig = 64 * 1024;
  constexpr int kP = 2;
  LoopbackGroup group = make_loopback_group(kP);
  std::vector<std::unique_ptr<Communicator>> comms;
  for (auto& t : group.transports) {
    comms.push_back(
        std::make_unique<Communicator>(std::make_unique<SlowTransport>(std::move(t), 100.0),
                                       CommunicatorOptions{.timeout = std::chrono::seconds(30)}));
  }
  std::vector<Trace> traces(kP);
  std::vector<std::thread> threads;
  for (int r = 0; r < kP; ++r) {
    threads.emplace_back([&, r] {
      BucketOptions bo = auto_options(1, 3, 0);
      bo.bucket_bytes = kBig * sizeof(float);
      GradientBuckets buckets(*comms[static_cast<std::size_t>(r)], bo);
      buckets.add("w", kBig);
      for (int s = 0; s < 11; ++s) {
        std::vector<float> g = varied(r, s, kBig);
        buckets.mark_ready(0, g);
        buckets.finish();
        record(buckets, traces[static_cast<std::size_t>(r)]);
      }
    });
  }
  for (auto& t : threads) t.join();
  ASSERT_EQ(traces[0].costs.size(), 1u) << "one trial, one decision";
  EXPECT_EQ(traces[1].events, traces[0].events);
  EXPECT_EQ(traces[1].costs, traces[0].costs) << "the agreed costs are the same bytes";
  EXPECT_EQ(traces[1].candidates, traces[0].candidates);
  const std::vector<double>& costs = traces[0].costs[0];
  ASSERT_EQ(costs.size(), 3u);
  // Dense against fp16 is a factor of 2, within reach of a loaded machine's hiccups; ternary is
  // 16 times smaller than dense.
  EXPECT_GT(costs[0], costs[2]) << "dense should cost more than ternary on this link";
  EXPECT_GT(costs[1], costs[2]) << "fp16 should cost more than ternary on this link";
  EXPECT_EQ(traces[0].candidates.back(), 2u) << "ternary kept";
  // Trial: dense (steps 2-4), fp16 (5-7), ternary (8-10); decided at step 10.
  EXPECT_EQ(traces[0].events, (std::vector<std::string>{"4 0 dense->fp16", "7 0 fp16->ternary",
                                                        "10 0 ternary->ternary decision"}));
}

// The cost each rank reports for a method; no rank alone would pick ternary.
double rank_cost(int rank, Method method) {
  const double table[2][3] = {{1, 5, 3}, {4, 2, 3.5}};  // dense, fp16, ternary
  const int column = method == Method::None ? 0 : method == Method::Fp16 ? 1 : 2;
  return table[rank % 2][column];
}

TEST(AutotuneBuckets, RanksThatMeasureDifferentlyTakeTheSameDecision) {
  for (const int p : {2, 3}) {
    std::vector<Trace> traces(static_cast<std::size_t>(p));
    run_ranks(p, [&](Communicator& comm) {
      BucketOptions bo = auto_options(0, 2, 3);
      const int rank = comm.rank();
      bo.autotune.cost = [rank](std::size_t, const CompressionConfig& c, double) {
        return rank_cost(rank, c.method);
      };
      GradientBuckets buckets(comm, bo);
      buckets.add("w", kTensor);
      buckets.add("b", 16, 1);  // a dense bucket: not tuned
      for (int s = 0; s < 14; ++s) {
        std::vector<float> w = varied(rank, s), b(16, 1.0f);
        buckets.mark_ready(0, w);
        buckets.mark_ready(1, b);
        buckets.finish();
        record(buckets, traces[static_cast<std::size_t>(rank)]);
      }
      EXPECT_THROW(buckets.bucket_candidate(1), Error) << "the dense bucket has no candidate";
    });
    for (std::size_t r = 1; r < traces.size(); ++r) {
      EXPECT_EQ(traces[r].events, traces[0].events) << "rank " << r;
      EXPECT_EQ(traces[r].candidates, traces[0].candidates) << "rank " << r;
    }
    // Max over ranks: dense 4, fp16 5, ternary 3.5, decided at step 6; 3 steady steps, then the
    // next trial from step 10 (dense again).
    ASSERT_GE(traces[0].costs.size(), 1u);
    EXPECT_EQ(traces[0].costs[0], (std::vector<double>{4, 5, 3.5})) << "P=" << p;
    EXPECT_EQ(traces[0].candidates[5], 2u) << "ternary after the first trial";
    EXPECT_EQ(traces[0].candidates[8], 0u) << "the retrial starts with dense";
  }
}

TEST(AutotuneBuckets, EqualCostsGoToTheDenserCandidate) {
  run_ranks(2, [](Communicator& comm) {
    BucketOptions bo = auto_options(0, 1, 0);
    bo.autotune.cost = [](std::size_t, const CompressionConfig&, double) { return 1.0; };
    GradientBuckets buckets(comm, bo);
    buckets.add("w", kTensor);
    Trace trace;
    for (int s = 0; s < 4; ++s) {
      std::vector<float> g = varied(comm.rank(), s);
      buckets.mark_ready(0, g);
      buckets.finish();
      record(buckets, trace);
    }
    EXPECT_EQ(trace.candidates, (std::vector<std::size_t>{1, 2, 0, 0}));
    EXPECT_EQ(trace.events.back(), "3 0 ternary->dense decision");
  });
}

// Sum over ranks and steps of every input equals, element by element, the sum of the results
// plus what error feedback still holds: every rank's worker residual and carry, and the
// two-phase server residual (Sum: in output units, chunk r on rank r).
TEST(AutotuneBuckets, SwitchingCandidatesLosesNoGradientMass) {
  constexpr int kP = 3;
  std::vector<double> inputs(kTensor, 0.0), held(kTensor, 0.0), outputs(kTensor, 0.0);
  std::mutex mutex;
  std::size_t switches = 0;
  run_ranks(kP, [&](Communicator& comm) {
    BucketOptions bo = auto_options(1, 2, 2);
    bo.allreduce.op = ReduceOp::Sum;
    CompressionConfig topk;
    topk.method = Method::TopK;
    CompressionConfig onebit;
    onebit.method = Method::OneBit;
    CompressionConfig ternary;
    ternary.method = Method::Ternary;
    bo.autotune.candidates = {CompressionConfig{}, ternary, topk, onebit};
    // 1-bit (two-phase at P = 3: a server residual too) cheapest, then top-k: the trials and
    // decisions move the bucket through every candidate.
    bo.autotune.cost = [](std::size_t, const CompressionConfig& c, double) {
      return c.method == Method::OneBit ? 1.0 : c.method == Method::TopK ? 2.0 : 3.0;
    };
    GradientBuckets buckets(comm, bo);
    buckets.add("w", kTensor);
    const int rank = comm.rank();
    std::vector<double> in(kTensor, 0.0), out(kTensor, 0.0);
    std::size_t mine = 0;
    for (int s = 0; s < 15; ++s) {
      std::vector<float> g = varied(rank, s);
      for (std::size_t e = 0; e < kTensor; ++e) in[e] += g[e];
      buckets.mark_ready(0, g);
      buckets.finish();
      for (std::size_t e = 0; e < kTensor; ++e) out[e] += g[e];
      for (const AutotuneEvent& ev : buckets.last_step_autotune_events()) {
        mine += ev.from != ev.to;
      }
    }
    // Step 15 switched ternary -> top-k: the carry holds ternary's residuals.
    const AllreduceState& state = buckets.allreduce_state(0);
    const std::lock_guard lock(mutex);
    for (std::size_t e = 0; e < kTensor; ++e) inputs[e] += in[e];
    if (rank == 0) outputs = out;
    const std::span<const float> w = state.worker_residual();
    for (std::size_t e = 0; e < w.size(); ++e) held[e] += w[e];
    const std::span<const float> carry = buckets.guardrail_carry(0);
    for (std::size_t e = 0; e < carry.size(); ++e) held[e] += carry[e];
    const std::span<const float> server = state.server_residual();
    const patterns::Range chunk = patterns::chunk_range(kTensor, kP, rank);
    for (std::size_t e = 0; e < server.size(); ++e) held[chunk.offset + e] += server[e];
    switches = mine;
  });
  // Steps 2-3 dense, 4-5 ternary, 6-7 top-k, 8-9 1-bit (decided: 1-bit), 10-11 steady, 12-13
  // dense, 14-15 ternary: six changes of setting.
  EXPECT_EQ(switches, 6u);
  double largest = 0, residual = 0;
  for (std::size_t e = 0; e < kTensor; ++e) {
    largest = std::max(largest, std::abs(inputs[e]));
    residual = std::max(residual, std::abs(held[e]));
  }
  ASSERT_GT(residual, 1.0) << "nothing held back: the test would not see a loss";
  for (std::size_t e = 0; e < kTensor; ++e) {
    ASSERT_NEAR(outputs[e] + held[e], inputs[e], 1e-4 * largest) << "element " << e;
  }
}

TEST(AutotuneBuckets, StateImagesRoundTripMidTrial) {
  run_ranks(2, [](Communicator& comm) {
    BucketOptions bo = auto_options(1, 2, 3);
    bo.autotune.cost = [](std::size_t, const CompressionConfig& c, double) {
      return c.method == Method::Fp16 ? 1.0 : 2.0;
    };
    GradientBuckets first(comm, bo);
    first.add("w", kTensor);
    for (int s = 0; s < 4; ++s) {  // into the trial's fp16 phase, with a carry from dense
      std::vector<float> g = varied(comm.rank(), s);
      first.mark_ready(0, g);
      first.finish();
    }
    ASSERT_EQ(first.bucket_candidate(0), 1u);
    const std::vector<std::byte> image = first.save_state();
    GradientBuckets second(comm, bo);
    second.add("w", kTensor);
    second.restore_state(image);
    EXPECT_EQ(second.save_state(), image);
    Trace a, b;
    for (int s = 4; s < 12; ++s) {
      std::vector<float> x = varied(comm.rank(), s), y = x;
      first.mark_ready(0, x);
      first.finish();
      record(first, a);
      second.mark_ready(0, y);
      second.finish();
      record(second, b);
      ASSERT_EQ(std::memcmp(x.data(), y.data(), kTensor * sizeof(float)), 0) << "step " << s;
    }
    EXPECT_EQ(a.events, b.events);
    EXPECT_EQ(a.costs, b.costs);
    ASSERT_EQ(a.costs.size(), 1u);
    EXPECT_EQ(a.candidates[2], 1u) << "fp16 chosen at step 7";

    // The other mode refuses the image by name, and the reverse.
    BucketOptions off = bo;
    off.autotune = {};
    off.allreduce.compression.method = Method::Fp16;
    GradientBuckets plain(comm, off);
    plain.add("w", kTensor);
    std::vector<float> g = varied(comm.rank(), 0);
    plain.mark_ready(0, g);
    plain.finish();
    const std::vector<std::byte> plain_image = plain.save_state();
    for (const auto& [target, img] : {std::pair{&plain, image}, std::pair{&second, plain_image}}) {
      try {
        target->restore_state(img);
        ADD_FAILURE() << "an image of the other mode was restored";
      } catch (const Error& e) {
        EXPECT_EQ(e.code(), ErrorCode::Mismatch);
        EXPECT_NE(std::string(e.what()).find("autotune"), std::string::npos) << e.what();
      }
    }
  });
}

void expect_invalid(const std::function<void()>& f, const std::string& field) {
  try {
    f();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::InvalidArgument) << e.what();
    EXPECT_NE(std::string(e.what()).find(field), std::string::npos) << e.what();
    return;
  }
  ADD_FAILURE() << field << " accepted";
}

TEST(AutotuneOptions, BadOptionsAreRefusedByName) {
  run_ranks(1, [](Communicator& comm) {
    const auto make = [&](BucketOptions bo) { GradientBuckets b(comm, bo); };
    BucketOptions bo = auto_options(0, 0, 0);
    expect_invalid([&] { make(bo); }, "autotune.trial_steps");
    bo = auto_options(0, 1, 0);
    CompressionConfig bad;
    bad.method = Method::TopK;
    bad.density = 2.0;
    bo.autotune.candidates = {bad};
    expect_invalid([&] { make(bo); }, "autotune.candidates");
    bo = auto_options(0, 1, 0);
    bo.autotune.candidates.assign(17, CompressionConfig{});
    expect_invalid([&] { make(bo); }, "autotune.candidates");
    bo = auto_options(0, 1, 0);
    bo.autotune.margin = -0.5;
    expect_invalid([&] { make(bo); }, "autotune.margin");
    bo = auto_options(0, 1, 0);
    bo.allreduce.compression.method = Method::OneBit;
    expect_invalid([&] { make(bo); }, "autotune");
    bo = auto_options(0, 1, 0);
    bo.allreduce.error_feedback = false;
    expect_invalid([&] { make(bo); }, "autotune");
    bo = auto_options(0, 1, 0);
    bo.hierarchical = true;
    expect_invalid([&] { make(bo); }, "hierarchical");
    std::vector<std::vector<std::byte>> images(1);
    expect_invalid([&] { GradientBuckets::redistribute_state(images, 2, auto_options(0, 1, 0)); },
                   "autotune");
  });
}

TEST(AutotuneBuckets, ABadCostOnOneRankIsRefusedOnEveryRank) {
  std::vector<std::string> errors(2);
  run_ranks(2, [&](Communicator& comm) {
    BucketOptions bo = auto_options(0, 2, 0);
    const int rank = comm.rank();
    bo.autotune.cost = [rank](std::size_t, const CompressionConfig&, double) {
      return rank == 1 ? std::nan("") : 1.0;
    };
    GradientBuckets buckets(comm, bo);
    buckets.add("w", kTensor);
    std::vector<float> g = varied(rank, 0);
    buckets.mark_ready(0, g);
    try {
      buckets.finish();
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::InvalidArgument);
      errors[static_cast<std::size_t>(rank)] = e.what();
    }
  });
  for (const std::string& e : errors) EXPECT_NE(e.find("autotune.cost"), std::string::npos) << e;
}

TEST(AutotuneBuckets, RanksWithOtherOptionsGetMismatch) {
  run_ranks(2, [](Communicator& comm) {
    BucketOptions bo = auto_options(comm.rank() == 0 ? 2 : 3, 2, 0);
    GradientBuckets buckets(comm, bo);
    buckets.add("w", kTensor);
    std::vector<float> g = varied(comm.rank(), 0);
    buckets.mark_ready(0, g);
    try {
      buckets.finish();
      ADD_FAILURE() << "rank " << comm.rank() << " accepted other autotune options";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::Mismatch) << e.what();
      EXPECT_NE(std::string(e.what()).find("autotune"), std::string::npos) << e.what();
    }
  });
}

TEST(AutotuneBuckets, TheGuardrailStillStepsTheChosenCandidateDenser) {
  run_ranks(2, [](Communicator& comm) {
    BucketOptions bo = auto_options(0, 1, 0);
    CompressionConfig onebit;
    onebit.method = Method::OneBit;
    bo.autotune.candidates = {CompressionConfig{}, onebit};
    bo.autotune.cost = [](std::size_t, const CompressionConfig& c, double) {
      return c.method == Method::OneBit ? 1.0 : 2.0;
    };
    bo.guardrail.enabled = true;
    bo.guardrail.lower = 0;
    bo.guardrail.upper = 1e-12;  // any residual steps up at once
    bo.guardrail.cooldown = 1;
    bo.guardrail.smoothing = 1;
    GradientBuckets buckets(comm, bo);
    buckets.add("w", kTensor);
    std::vector<std::string> guard;
    std::vector<std::string> decided;
    for (int s = 0; s < 2; ++s) {
      std::vector<float> g = varied(comm.rank(), s);
      buckets.mark_ready(0, g);
      buckets.finish();
      for (const GuardrailEvent& e : buckets.last_step_guardrail_events()) {
        guard.push_back(std::to_string(e.step) + " " + e.from + "->" + e.to);
      }
      for (const AutotuneEvent& e : buckets.last_step_autotune_events()) decided.push_back(text(e));
    }
    // Step 1 dense, step 2 1-bit, which leaves a residual: the guardrail steps it to fp16 on
    // 1-bit's ladder, and the trial's decision keeps 1-bit as the candidate (on that rung).
    EXPECT_EQ(decided,
              (std::vector<std::string>{"1 0 dense->onebit", "2 0 onebit->onebit decision"}));
    EXPECT_EQ(buckets.bucket_candidate(0), 1u);
    EXPECT_EQ(guard, (std::vector<std::string>{"2 onebit->fp16"}));
    EXPECT_EQ(buckets.bucket_setting(0).method, Method::Fp16);
  });
}

}  // namespace
}  // namespace frugal
