// The accuracy guardrail through the C API in-process (loopback ranks): frugal_guardrail_options
// and its versioning, refusals naming the field, the decisions read back through the event and
// bucket queries (up past the upper bound, down after `patience` calm steps), on every rank alike
// even when only one rank's ratio is high, and Mismatch when ranks' options differ. The decisions
// themselves are GradientBuckets' (tests/compressed/guardrail_test.cpp); these runs drive them
// the same way, so the C API must report the same steps.
#include <gtest/gtest.h>

#include <cmath>
#include <cstddef>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "c_group.hpp"
#include "frugal/collectives/guardrail.hpp"
#include "frugal/frugal.h"

namespace {

using frugal::capi_test::CGroup;

constexpr std::size_t kTensor = 4096;

frugal_guardrail_options guard(double lower, double upper, uint64_t patience, uint64_t cooldown) {
  frugal_guardrail_options g;
  EXPECT_EQ(frugal_guardrail_options_init(&g), FRUGAL_OK);
  g.lower = lower;
  g.upper = upper;
  g.patience = patience;
  g.cooldown = cooldown;
  g.smoothing = 1.0;  // each step's ratio as it is: the tests choose the ratios
  return g;
}

// 1-bit with error feedback over one bucket of kTensor floats, guarded by `g` (NULL: off).
frugal_options onebit(const frugal_guardrail_options* g) {
  frugal_options o;
  EXPECT_EQ(frugal_options_init(&o), FRUGAL_OK);
  o.method = FRUGAL_METHOD_ONEBIT;
  o.non_finite = FRUGAL_NON_FINITE_SKIP;
  o.guardrail = g;
  return o;
}

// ±1 everywhere, which 1-bit with mean-abs scaling sends exactly; `spike` puts 1000 in element 0,
// which it cannot send: the residual then grows by about 1000 a step against an input norm of
// about 1000, a ratio of about 1, 2, 3 after steps 1, 2, 3.
std::vector<float> gradient(int step, bool spike) {
  std::vector<float> g(kTensor);
  for (std::size_t i = 0; i < kTensor; ++i) {
    g[i] = ((i * 7 + static_cast<std::size_t>(step)) % 3 == 0) ? -1.0f : 1.0f;
  }
  if (spike) g[0] = 1000.0f;
  return g;
}

struct Trace {
  std::vector<std::size_t> rungs;  // bucket 0's, after each step
  std::vector<int> methods;
  std::vector<std::string> events;  // "step bucket from->to rung->rung"
  std::vector<double> event_ratios;
  std::vector<std::vector<float>> results;
};

std::string describe(const frugal_guardrail_event& e) {
  return std::to_string(e.step) + " " + std::to_string(e.bucket) + " " + e.from + "->" + e.to +
         " " + std::to_string(e.from_rung) + "->" + std::to_string(e.to_rung);
}

// `steps` steps on `ranks` loopback ranks; spiky(rank, step) says who sends the spike when.
template <typename Spiky>
std::vector<Trace> run(int ranks, int steps, const frugal_guardrail_options* g, Spiky spiky) {
  std::vector<Trace> traces(static_cast<std::size_t>(ranks));
  CGroup group(ranks);
  group.run([&](int r, frugal_comm* comm) {
    const frugal_options o = onebit(g);
    frugal_buckets* buckets = nullptr;
    ASSERT_EQ(frugal_buckets_create(comm, &o, kTensor * sizeof(float), &buckets), FRUGAL_OK)
        << frugal_last_error_message();
    ASSERT_EQ(frugal_buckets_add(buckets, "w", kTensor, nullptr), FRUGAL_OK);
    Trace& trace = traces[static_cast<std::size_t>(r)];
    size_t count = 99;
    EXPECT_EQ(frugal_buckets_guardrail_event_count(buckets, &count), FRUGAL_OK);
    EXPECT_EQ(count, 0u) << "events before the first finish";
    for (int s = 0; s < steps; ++s) {
      std::vector<float> grad = gradient(s, spiky(r, s));
      ASSERT_EQ(frugal_buckets_mark_ready(buckets, 0, grad.data(), grad.size()), FRUGAL_OK);
      ASSERT_EQ(frugal_buckets_finish(buckets), FRUGAL_OK) << frugal_last_error_message();
      size_t rung = 99;
      double ratio = -1;
      int method = -1;
      ASSERT_EQ(frugal_buckets_guardrail_bucket(buckets, 0, &rung, &ratio, &method), FRUGAL_OK)
          << frugal_last_error_message();
      EXPECT_GE(ratio, 0.0);
      trace.rungs.push_back(rung);
      trace.methods.push_back(method);
      ASSERT_EQ(frugal_buckets_guardrail_event_count(buckets, &count), FRUGAL_OK);
      for (size_t i = 0; i < count; ++i) {
        frugal_guardrail_event e;
        std::memset(&e, 0, sizeof e);
        e.struct_size = sizeof e;
        ASSERT_EQ(frugal_buckets_guardrail_event(buckets, i, &e), FRUGAL_OK)
            << frugal_last_error_message();
        EXPECT_EQ(e.struct_size, sizeof e);
        EXPECT_EQ(e.step, static_cast<uint64_t>(s + 1));
        EXPECT_EQ(e.to_rung, rung) << "the event's rung is the bucket's from now on";
        trace.events.push_back(describe(e));
        trace.event_ratios.push_back(e.ratio);
      }
      trace.results.push_back(grad);
    }
    frugal_buckets_destroy(buckets);
  });
  return traces;
}

void expect_identical(const std::vector<Trace>& traces) {
  for (std::size_t r = 1; r < traces.size(); ++r) {
    EXPECT_EQ(traces[r].rungs, traces[0].rungs) << "rank " << r;
    EXPECT_EQ(traces[r].methods, traces[0].methods) << "rank " << r;
    EXPECT_EQ(traces[r].events, traces[0].events) << "rank " << r;
    EXPECT_EQ(traces[r].event_ratios, traces[0].event_ratios) << "rank " << r;
    ASSERT_EQ(traces[r].results.size(), traces[0].results.size());
    for (std::size_t s = 0; s < traces[0].results.size(); ++s) {
      EXPECT_EQ(std::memcmp(traces[r].results[s].data(), traces[0].results[s].data(),
                            kTensor * sizeof(float)),
                0)
          << "rank " << r << " step " << s + 1;
    }
  }
}

TEST(CApiGuardrail, DefaultsAreTheCppApisAndStructsAreVersioned) {
  frugal_guardrail_options g;
  ASSERT_EQ(frugal_guardrail_options_init(&g), FRUGAL_OK);
  const frugal::GuardrailOptions cpp;
  EXPECT_EQ(g.struct_size, sizeof g);
  EXPECT_EQ(g.lower, cpp.lower);
  EXPECT_EQ(g.upper, cpp.upper);
  EXPECT_EQ(g.patience, cpp.patience);
  EXPECT_EQ(g.smoothing, cpp.smoothing);
  EXPECT_EQ(g.cooldown, cpp.cooldown);
  frugal_options o;
  ASSERT_EQ(frugal_options_init(&o), FRUGAL_OK);
  EXPECT_EQ(o.guardrail, nullptr) << "off by default";
  EXPECT_EQ(frugal_guardrail_options_init_sized(&g, 8), FRUGAL_ERR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(frugal_last_error_message()).find("frugal_guardrail_options"),
            std::string::npos);
  EXPECT_EQ(frugal_guardrail_options_init_sized(nullptr, sizeof g), FRUGAL_ERR_INVALID_ARGUMENT);

  CGroup group(1);
  std::string message;  // create's, which frugal_buckets_destroy would clear
  const auto create = [&](const frugal_options& options) {
    frugal_buckets* b = nullptr;
    const frugal_status s = frugal_buckets_create(group[0], &options, 0, &b);
    message = frugal_last_error_message();
    frugal_buckets_destroy(b);
    return s;
  };
  // A newer caller's larger struct: accepted while the fields this library lacks are zero.
  struct Newer {
    frugal_guardrail_options v1;
    uint64_t future_field;
  } newer;
  ASSERT_EQ(frugal_guardrail_options_init_sized(&newer.v1, sizeof newer), FRUGAL_OK);
  EXPECT_EQ(newer.future_field, 0u);
  o = onebit(&newer.v1);
  EXPECT_EQ(create(o), FRUGAL_OK) << message;
  newer.future_field = 1;
  EXPECT_EQ(create(o), FRUGAL_ERR_INVALID_ARGUMENT);
  EXPECT_NE(message.find("newer field"), std::string::npos) << message;
  // A frugal_options of version 5 (before the guardrail) never reads the field: off.
  frugal_guardrail_options bad = guard(5, 1, 1, 1);
  o = onebit(&bad);
  EXPECT_EQ(create(o), FRUGAL_ERR_INVALID_ARGUMENT);
  o.struct_size = offsetof(frugal_options, guardrail);
  EXPECT_EQ(create(o), FRUGAL_OK) << message;
}

TEST(CApiGuardrail, BadValuesAreRefusedByName) {
  CGroup group(1);
  const auto refused = [&](const frugal_options& o, const std::string& name) {
    frugal_buckets* b = nullptr;
    EXPECT_EQ(frugal_buckets_create(group[0], &o, 0, &b), FRUGAL_ERR_INVALID_ARGUMENT) << name;
    EXPECT_EQ(b, nullptr);
    const std::string message = frugal_last_error_message();
    EXPECT_NE(message.find(name), std::string::npos) << message;
  };
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const struct {
    frugal_guardrail_options g;
    const char* name;
  } cases[] = {
      {guard(-1, 8, 1, 1), "guardrail.lower"},   {guard(nan, 8, 1, 1), "guardrail.lower"},
      {guard(2, 2, 1, 1), "guardrail.upper"},    {guard(2, nan, 1, 1), "guardrail.upper"},
      {guard(2, 8, 0, 1), "guardrail.patience"}, {guard(2, 8, 1, 0), "guardrail.cooldown"},
  };
  for (const auto& c : cases) refused(onebit(&c.g), c.name);
  for (const double smoothing : {0.0, 1.5, nan}) {
    frugal_guardrail_options g = guard(2, 8, 1, 1);
    g.smoothing = smoothing;
    refused(onebit(&g), "guardrail.smoothing");
  }
  frugal_guardrail_options g = guard(2, 8, 1, 1);
  frugal_options o = onebit(&g);
  o.error_feedback = 0;  // the residual is the guardrail's signal
  refused(o, "guardrail");
  g.struct_size = 4;
  refused(onebit(&g), "frugal_guardrail_options_init");

  // The queries' own arguments.
  g = guard(2, 8, 1, 1);
  o = onebit(&g);
  frugal_buckets* buckets = nullptr;
  ASSERT_EQ(frugal_buckets_create(group[0], &o, 0, &buckets), FRUGAL_OK);
  ASSERT_EQ(frugal_buckets_add(buckets, "w", kTensor, nullptr), FRUGAL_OK);
  size_t rung = 0;
  EXPECT_EQ(frugal_buckets_guardrail_bucket(buckets, 0, &rung, nullptr, nullptr),
            FRUGAL_ERR_INVALID_ARGUMENT)
      << "no bucket before the first step fixes the layout";
  std::vector<float> grad = gradient(0, false);
  ASSERT_EQ(frugal_buckets_mark_ready(buckets, 0, grad.data(), grad.size()), FRUGAL_OK);
  ASSERT_EQ(frugal_buckets_finish(buckets), FRUGAL_OK) << frugal_last_error_message();
  EXPECT_EQ(frugal_buckets_guardrail_bucket(buckets, 0, nullptr, nullptr, nullptr), FRUGAL_OK);
  rung = 7;
  EXPECT_EQ(frugal_buckets_guardrail_bucket(buckets, 1, &rung, nullptr, nullptr),
            FRUGAL_ERR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(frugal_last_error_message()).find("bucket"), std::string::npos);
  EXPECT_EQ(rung, 7u) << "written on failure";
  size_t count = 0;
  EXPECT_EQ(frugal_buckets_guardrail_event_count(nullptr, &count), FRUGAL_ERR_INVALID_ARGUMENT);
  EXPECT_EQ(frugal_buckets_guardrail_event_count(buckets, nullptr), FRUGAL_ERR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(frugal_last_error_message()).find("count is NULL"), std::string::npos);
  frugal_guardrail_event e;
  std::memset(&e, 0, sizeof e);
  e.struct_size = sizeof e;
  EXPECT_EQ(frugal_buckets_guardrail_event(buckets, 0, &e), FRUGAL_ERR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(frugal_last_error_message()).find("index 0"), std::string::npos);
  EXPECT_EQ(frugal_buckets_guardrail_event(buckets, 0, nullptr), FRUGAL_ERR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(frugal_last_error_message()).find("event is NULL"), std::string::npos);
  e.struct_size = 0;
  EXPECT_EQ(frugal_buckets_guardrail_event(buckets, 0, &e), FRUGAL_ERR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(frugal_last_error_message()).find("struct_size"), std::string::npos);
  frugal_buckets_destroy(buckets);
}

TEST(CApiGuardrail, ABlowUpStepsUpOnEveryRankAndRecoveryStepsBackDown) {
  // 10 spiky steps, then 30 benign ones; bounds 0.5 and 2.5, patience 10, cooldown 3.
  const frugal_guardrail_options g = guard(0.5, 2.5, 10, 3);
  const std::vector<Trace> traces = run(3, 40, &g, [](int, int s) { return s < 10; });
  expect_identical(traces);
  const Trace& t = traces[0];
  // Step 3 is the first the cooldown allows (ratio about 3 > 2.5): 1-bit -> fp16. fp16 sends the
  // spike with a ratio of ~1e-3, and after 10 calm steps (4..13) the bucket comes back down.
  ASSERT_EQ(t.events.size(), 2u);
  EXPECT_EQ(t.events[0], "3 0 onebit->fp16 0->1");
  EXPECT_GT(t.event_ratios[0], 2.5);
  EXPECT_EQ(t.events[1], "13 0 fp16->onebit 1->0");
  EXPECT_LT(t.event_ratios[1], 0.5);
  for (std::size_t s = 0; s < t.rungs.size(); ++s) {
    const bool up = s + 1 >= 3 && s + 1 < 13;
    EXPECT_EQ(t.rungs[s], up ? 1u : 0u) << "after step " << s + 1;
    EXPECT_EQ(t.methods[s], up ? FRUGAL_METHOD_FP16 : FRUGAL_METHOD_ONEBIT) << s + 1;
  }
  // The same run without the guardrail keeps 1-bit throughout.
  const std::vector<Trace> off = run(3, 12, nullptr, [](int, int s) { return s < 10; });
  expect_identical(off);
  EXPECT_TRUE(off[0].events.empty());
  for (const std::size_t rung : off[0].rungs) EXPECT_EQ(rung, 0u);
  for (const int method : off[0].methods) EXPECT_EQ(method, FRUGAL_METHOD_ONEBIT);
}

TEST(CApiGuardrail, RanksWithDifferentRatiosTakeTheSameDecision) {
  // Only rank 0 sends the spike; the ratio is over every rank's norms together, so all ranks
  // step up at step 3, and the results stay bit-identical.
  const frugal_guardrail_options g = guard(0.5, 2.5, 100, 3);
  const std::vector<Trace> traces = run(3, 8, &g, [](int rank, int) { return rank == 0; });
  expect_identical(traces);
  ASSERT_EQ(traces[0].events.size(), 1u);
  EXPECT_EQ(traces[0].events[0], "3 0 onebit->fp16 0->1");
}

TEST(CApiGuardrail, RanksWithOtherOptionsGetMismatch) {
  CGroup group(2);
  group.run([&](int r, frugal_comm* comm) {
    const frugal_guardrail_options g = guard(0.5, r == 0 ? 3.0 : 3.5, 5, 3);
    const frugal_options o = onebit(&g);
    frugal_buckets* buckets = nullptr;
    ASSERT_EQ(frugal_buckets_create(comm, &o, 0, &buckets), FRUGAL_OK);
    ASSERT_EQ(frugal_buckets_add(buckets, "w", kTensor, nullptr), FRUGAL_OK);
    std::vector<float> grad = gradient(0, false);
    ASSERT_EQ(frugal_buckets_mark_ready(buckets, 0, grad.data(), grad.size()), FRUGAL_OK);
    EXPECT_EQ(frugal_buckets_finish(buckets), FRUGAL_ERR_MISMATCH) << "rank " << r;
    EXPECT_NE(std::string(frugal_last_error_message()).find("guardrail"), std::string::npos)
        << frugal_last_error_message();
    frugal_buckets_destroy(buckets);
  });
}

}  // namespace
