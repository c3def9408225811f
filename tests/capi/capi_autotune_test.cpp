// compression = auto through the C API in-process (loopback ranks): frugal_autotune_options and
// its versioning (a version-7 frugal_options never reads the pointer), refusals naming the field,
// a cost callback that makes every rank keep a chosen candidate per bucket, with the moves and
// the decision read back through the event and bucket queries on both ranks alike and on the
// schedule (warm-up, then trial_steps per candidate), a refused cost surfacing as a status, and
// a state save/load round trip. The decisions are GradientBuckets' (tests/compressed); these
// runs check that the C API carries the options in and the decisions out unchanged.
#include <gtest/gtest.h>

#include <cmath>
#include <cstddef>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "c_group.hpp"
#include "frugal/collectives/autotune.hpp"
#include "frugal/frugal.h"

namespace {

using frugal::capi_test::CGroup;

constexpr std::size_t kTensor = 4096;

frugal_autotune_options tune(uint64_t warmup, uint64_t trial_steps) {
  frugal_autotune_options a;
  EXPECT_EQ(frugal_autotune_options_init(&a), FRUGAL_OK);
  a.warmup = warmup;
  a.trial_steps = trial_steps;
  return a;
}

// Dense options carrying `a` (NULL: auto off).
frugal_options base(const frugal_autotune_options* a) {
  frugal_options o;
  EXPECT_EQ(frugal_options_init(&o), FRUGAL_OK);
  o.autotune = a;
  return o;
}

std::vector<float> gradient(int rank, int step, std::size_t tensor) {
  std::vector<float> g(kTensor);
  for (std::size_t i = 0; i < kTensor; ++i) {
    g[i] = std::sin(0.01f * static_cast<float>(i * (tensor + 1)) + static_cast<float>(step)) +
           0.25f * static_cast<float>(rank);
  }
  return g;
}

// The cost callback's table: costs[bucket][candidate]; every call recorded.
struct Costs {
  std::vector<std::vector<double>> table;
  double refused = 0;  // returned instead on `refuse_rank` (when >= 0)
  int rank = 0;
  int refuse_rank = -1;
  int step = 0;                    // the caller's step, 1-based, set before each finish
  std::vector<std::string> calls;  // "step bucket candidate"
};

double cost(void* user, size_t bucket, size_t candidate, double seconds) {
  Costs& c = *static_cast<Costs*>(user);
  EXPECT_TRUE(std::isfinite(seconds) && seconds >= 0) << seconds;
  c.calls.push_back(std::to_string(c.step) + " " + std::to_string(bucket) + " " +
                    std::to_string(candidate));
  if (c.rank == c.refuse_rank) return c.refused;
  return c.table.at(bucket).at(candidate);
}

struct Trace {
  std::vector<std::string> events;                   // "step bucket from->to decision costs..."
  std::vector<std::vector<std::size_t>> candidates;  // each bucket's, after each step
  std::vector<std::vector<int>> methods;
  std::vector<std::string> calls;
  std::vector<std::vector<float>> results;
};

std::string describe(const frugal_autotune_event& e) {
  std::string s = std::to_string(e.step) + " " + std::to_string(e.bucket) + " " + e.from + "->" +
                  e.to + (e.decision != 0 ? " decision" : " move");
  EXPECT_EQ(e.costs == nullptr, e.cost_count == 0);
  for (size_t i = 0; i < e.cost_count; ++i) {
    s += ' ';
    s += std::to_string(e.costs[i]);
  }
  return s;
}

// Reads the last finish's events and each bucket's candidate and method into `trace`.
void observe(frugal_buckets* buckets, std::size_t bucket_count, int step, Trace& trace) {
  size_t count = 99;
  ASSERT_EQ(frugal_buckets_autotune_event_count(buckets, &count), FRUGAL_OK);
  for (size_t i = 0; i < count; ++i) {
    frugal_autotune_event e;
    std::memset(&e, 0, sizeof e);
    e.struct_size = sizeof e;
    ASSERT_EQ(frugal_buckets_autotune_event(buckets, i, &e), FRUGAL_OK)
        << frugal_last_error_message();
    EXPECT_EQ(e.struct_size, sizeof e);
    EXPECT_EQ(e.step, static_cast<uint64_t>(step));
    trace.events.push_back(describe(e));
  }
  std::vector<std::size_t> candidates;
  std::vector<int> methods;
  for (std::size_t b = 0; b < bucket_count; ++b) {
    size_t candidate = 99;
    ASSERT_EQ(frugal_buckets_autotune_bucket(buckets, b, &candidate), FRUGAL_OK)
        << frugal_last_error_message();
    int method = -1;
    ASSERT_EQ(frugal_buckets_guardrail_bucket(buckets, b, nullptr, nullptr, &method), FRUGAL_OK);
    candidates.push_back(candidate);
    methods.push_back(method);
  }
  trace.candidates.push_back(candidates);
  trace.methods.push_back(methods);
}

// `steps` steps of two tensors, one bucket each, on `ranks` loopback ranks with auto options `a`,
// each rank's cost callback (if any) given its own costs[rank].
std::vector<Trace> run(int ranks, int steps, const frugal_autotune_options& a,
                       std::vector<Costs>& costs) {
  std::vector<Trace> traces(static_cast<std::size_t>(ranks));
  CGroup group(ranks);
  group.run([&](int r, frugal_comm* comm) {
    frugal_autotune_options mine = a;
    mine.cost_user = &costs[static_cast<std::size_t>(r)];
    const frugal_options o = base(&mine);
    frugal_buckets* buckets = nullptr;
    ASSERT_EQ(frugal_buckets_create(comm, &o, kTensor * sizeof(float), &buckets), FRUGAL_OK)
        << frugal_last_error_message();
    ASSERT_EQ(frugal_buckets_add(buckets, "w0", kTensor, nullptr), FRUGAL_OK);
    ASSERT_EQ(frugal_buckets_add(buckets, "w1", kTensor, nullptr), FRUGAL_OK);
    Trace& trace = traces[static_cast<std::size_t>(r)];
    Costs& c = costs[static_cast<std::size_t>(r)];
    for (int s = 1; s <= steps; ++s) {
      std::vector<float> g0 = gradient(r, s, 0);
      std::vector<float> g1 = gradient(r, s, 1);
      c.step = s;
      ASSERT_EQ(frugal_buckets_mark_ready(buckets, 0, g0.data(), g0.size()), FRUGAL_OK);
      ASSERT_EQ(frugal_buckets_mark_ready(buckets, 1, g1.data(), g1.size()), FRUGAL_OK);
      ASSERT_EQ(frugal_buckets_finish(buckets), FRUGAL_OK) << frugal_last_error_message();
      size_t count = 0;
      ASSERT_EQ(frugal_buckets_count(buckets, &count), FRUGAL_OK);
      ASSERT_EQ(count, 2u);
      observe(buckets, count, s, trace);
      trace.results.push_back(g0);
      trace.results.push_back(g1);
    }
    trace.calls = c.calls;
    frugal_buckets_destroy(buckets);
  });
  return traces;
}

void expect_identical(const std::vector<Trace>& traces) {
  for (std::size_t r = 1; r < traces.size(); ++r) {
    EXPECT_EQ(traces[r].events, traces[0].events) << "rank " << r;
    EXPECT_EQ(traces[r].candidates, traces[0].candidates) << "rank " << r;
    EXPECT_EQ(traces[r].methods, traces[0].methods) << "rank " << r;
    EXPECT_EQ(traces[r].calls, traces[0].calls) << "rank " << r;
    ASSERT_EQ(traces[r].results.size(), traces[0].results.size());
    for (std::size_t i = 0; i < traces[0].results.size(); ++i) {
      EXPECT_EQ(traces[r].results[i], traces[0].results[i]) << "rank " << r << " result " << i;
    }
  }
}

std::vector<Costs> cost_tables(int ranks, const std::vector<std::vector<double>>& table) {
  std::vector<Costs> costs(static_cast<std::size_t>(ranks));
  for (int r = 0; r < ranks; ++r) {
    costs[static_cast<std::size_t>(r)].table = table;
    costs[static_cast<std::size_t>(r)].rank = r;
  }
  return costs;
}

TEST(CApiAutotune, DefaultsAreTheCppApisAndStructsAreVersioned) {
  frugal_autotune_options a;
  ASSERT_EQ(frugal_autotune_options_init(&a), FRUGAL_OK);
  const frugal::AutotuneOptions cpp;
  EXPECT_EQ(a.struct_size, sizeof a);
  EXPECT_EQ(a.candidates, nullptr);
  EXPECT_EQ(a.candidate_count, 0u);
  EXPECT_EQ(a.warmup, cpp.warmup);
  EXPECT_EQ(a.trial_steps, cpp.trial_steps);
  EXPECT_EQ(a.retune, cpp.retune);
  EXPECT_EQ(a.margin, cpp.margin);
  EXPECT_EQ(a.cost, nullptr);
  EXPECT_EQ(a.cost_user, nullptr);
  frugal_options o;
  ASSERT_EQ(frugal_options_init(&o), FRUGAL_OK);
  EXPECT_EQ(o.autotune, nullptr) << "off by default";
  EXPECT_EQ(frugal_autotune_options_init_sized(&a, 8), FRUGAL_ERR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(frugal_last_error_message()).find("frugal_autotune_options"),
            std::string::npos);
  EXPECT_EQ(frugal_autotune_options_init_sized(nullptr, sizeof a), FRUGAL_ERR_INVALID_ARGUMENT);

  CGroup group(1);
  std::string message;  // create's, which frugal_buckets_destroy would clear
  size_t candidate = 0;
  const auto create = [&](const frugal_options& options) {
    frugal_buckets* b = nullptr;
    frugal_status s = frugal_buckets_create(group[0], &options, 0, &b);
    message = frugal_last_error_message();
    if (s == FRUGAL_OK) {
      // One step fixes the layout; then the bucket's candidate says whether auto is on.
      std::vector<float> g = gradient(0, 1, 0);
      EXPECT_EQ(frugal_buckets_add(b, "w", kTensor, nullptr), FRUGAL_OK);
      EXPECT_EQ(frugal_buckets_mark_ready(b, 0, g.data(), g.size()), FRUGAL_OK);
      EXPECT_EQ(frugal_buckets_finish(b), FRUGAL_OK) << frugal_last_error_message();
      s = frugal_buckets_autotune_bucket(b, 0, &candidate);
      message = frugal_last_error_message();
    }
    frugal_buckets_destroy(b);
    return s;
  };
  // A newer caller's larger struct: accepted while the fields this library lacks are zero.
  struct Newer {
    frugal_autotune_options v1;
    uint64_t future_field;
  } newer;
  newer.future_field = 5;
  ASSERT_EQ(frugal_autotune_options_init_sized(&newer.v1, sizeof newer), FRUGAL_OK);
  EXPECT_EQ(newer.future_field, 0u) << "the init call zeroes what it does not know";
  EXPECT_EQ(newer.v1.struct_size, sizeof newer);
  o = base(&newer.v1);
  EXPECT_EQ(create(o), FRUGAL_OK) << message;
  EXPECT_EQ(candidate, 0u) << "candidates[0] during the warm-up";
  newer.future_field = 1;
  EXPECT_EQ(create(o), FRUGAL_ERR_INVALID_ARGUMENT);
  EXPECT_NE(message.find("newer field"), std::string::npos) << message;
  EXPECT_NE(message.find("frugal_autotune_options"), std::string::npos) << message;
  // A version-7 frugal_options (before auto) never reads the pointer, whatever it holds: a
  // 1-bit bucket with auto off works.
  ASSERT_EQ(frugal_options_init_sized(&o, offsetof(frugal_options, autotune)), FRUGAL_OK);
  o.autotune = &newer.v1;  // past the struct: must not be read (its tail is refused above)
  o.method = FRUGAL_METHOD_ONEBIT;
  o.struct_size = offsetof(frugal_options, autotune);
  EXPECT_EQ(create(o), FRUGAL_ERR_INVALID_ARGUMENT) << "created, but auto is off";
  EXPECT_NE(message.find("autotune is off"), std::string::npos) << message;
  // The same struct as version 8 reads it and refuses the newer field.
  o.struct_size = sizeof o;
  EXPECT_EQ(create(o), FRUGAL_ERR_INVALID_ARGUMENT);
  EXPECT_NE(message.find("newer field"), std::string::npos) << message;
  // frugal_options_init_sized for version 7 leaves the field alone.
  frugal_options seven;
  seven.autotune = &a;
  ASSERT_EQ(frugal_options_init_sized(&seven, offsetof(frugal_options, autotune)), FRUGAL_OK);
  EXPECT_EQ(seven.autotune, &a) << "beyond a version-7 struct: not written";
}

TEST(CApiAutotune, BadValuesAreRefusedByName) {
  CGroup group(1);
  const auto refused = [&](const frugal_options& o, const std::string& name) {
    frugal_buckets* b = nullptr;
    EXPECT_EQ(frugal_buckets_create(group[0], &o, 0, &b), FRUGAL_ERR_INVALID_ARGUMENT) << name;
    EXPECT_EQ(b, nullptr);
    const std::string message = frugal_last_error_message();
    EXPECT_NE(message.find(name), std::string::npos) << name << ": " << message;
    return message;
  };
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const double inf = std::numeric_limits<double>::infinity();
  frugal_autotune_options a = tune(2, 2);
  frugal_options o = base(&a);
  // The library's own refusal of a method beside auto, its message kept.
  o.method = FRUGAL_METHOD_TOPK;
  const std::string method = refused(o, "autotune");
  EXPECT_NE(method.find("allreduce.compression.method must be none, got topk"), std::string::npos)
      << method;
  o = base(&a);
  o.error_feedback = 0;
  refused(o, "autotune");
  o = base(&a);
  o.hierarchical = 1;
  refused(o, "hierarchical");
  for (const double margin : {-0.1, nan, inf}) {
    a = tune(2, 2);
    a.margin = margin;
    refused(base(&a), "autotune.margin");
  }
  a = tune(2, 0);
  refused(base(&a), "autotune.trial_steps");
  a = tune(2, 2);
  a.struct_size = 4;
  refused(base(&a), "frugal_autotune_options_init");

  // Candidates: a compressor's own refusal, an unknown enum, an old struct, NULL entries, too
  // many, and a NULL array.
  frugal_options qsgd3;
  ASSERT_EQ(frugal_options_init(&qsgd3), FRUGAL_OK);
  qsgd3.method = FRUGAL_METHOD_QSGD;
  qsgd3.bits = 3;
  frugal_options unknown;
  ASSERT_EQ(frugal_options_init(&unknown), FRUGAL_OK);
  unknown.method = 42;
  frugal_options tiny;
  ASSERT_EQ(frugal_options_init(&tiny), FRUGAL_OK);
  tiny.struct_size = 8;
  frugal_options dense;
  ASSERT_EQ(frugal_options_init(&dense), FRUGAL_OK);
  const frugal_options* bad_bits[] = {&dense, &qsgd3};
  const frugal_options* bad_method[] = {&unknown};
  const frugal_options* bad_size[] = {&dense, &tiny};
  const frugal_options* with_null[] = {&dense, nullptr};
  const struct {
    const frugal_options* const* list;
    size_t count;
    const char* also;  // in the message besides autotune.candidates
  } cases[] = {
      {bad_bits, 2, "candidate 1"},
      {bad_method, 1, "method 42"},
      {bad_size, 2, "struct_size"},
      {with_null, 2, "candidate 1: NULL"},
      {nullptr, 1, "NULL with candidate_count 1"},
  };
  for (const auto& c : cases) {
    a = tune(2, 2);
    a.candidates = c.list;
    a.candidate_count = c.count;
    const std::string message = refused(base(&a), "autotune.candidates");
    EXPECT_NE(message.find(c.also), std::string::npos) << message;
  }
  std::vector<const frugal_options*> many(17, &dense);
  a = tune(2, 2);
  a.candidates = many.data();
  a.candidate_count = many.size();
  EXPECT_NE(refused(base(&a), "autotune.candidates").find("at most 16"), std::string::npos);
  a.candidate_count = 16;  // the limit itself is fine
  frugal_options ok = base(&a);
  frugal_buckets* b = nullptr;
  EXPECT_EQ(frugal_buckets_create(group[0], &ok, 0, &b), FRUGAL_OK) << frugal_last_error_message();

  // The queries' own arguments.
  size_t candidate = 0;
  EXPECT_EQ(frugal_buckets_autotune_bucket(b, 0, &candidate), FRUGAL_ERR_INVALID_ARGUMENT)
      << "no bucket before the first step fixes the layout";
  ASSERT_EQ(frugal_buckets_add(b, "w", kTensor, nullptr), FRUGAL_OK);
  ASSERT_EQ(frugal_buckets_add_tensor(b, "bias", 16, 1, nullptr), FRUGAL_OK);
  std::vector<float> g = gradient(0, 1, 0);
  std::vector<float> bias(16, 1.0f);
  ASSERT_EQ(frugal_buckets_mark_ready(b, 0, g.data(), g.size()), FRUGAL_OK);
  ASSERT_EQ(frugal_buckets_mark_ready(b, 1, bias.data(), bias.size()), FRUGAL_OK);
  ASSERT_EQ(frugal_buckets_finish(b), FRUGAL_OK) << frugal_last_error_message();
  size_t count = 0;
  ASSERT_EQ(frugal_buckets_count(b, &count), FRUGAL_OK);
  ASSERT_EQ(count, 2u) << "the bias goes in a dense bucket of its own";
  EXPECT_EQ(frugal_buckets_autotune_bucket(b, 0, &candidate), FRUGAL_OK);
  candidate = 7;
  EXPECT_EQ(frugal_buckets_autotune_bucket(b, 1, &candidate), FRUGAL_ERR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(frugal_last_error_message()).find("dense"), std::string::npos)
      << frugal_last_error_message();
  EXPECT_EQ(frugal_buckets_autotune_bucket(b, 2, &candidate), FRUGAL_ERR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(frugal_last_error_message()).find("bucket"), std::string::npos);
  EXPECT_EQ(candidate, 7u) << "written on failure";
  EXPECT_EQ(frugal_buckets_autotune_bucket(b, 0, nullptr), FRUGAL_ERR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(frugal_last_error_message()).find("candidate is NULL"), std::string::npos);
  EXPECT_EQ(frugal_buckets_autotune_event_count(nullptr, &count), FRUGAL_ERR_INVALID_ARGUMENT);
  EXPECT_EQ(frugal_buckets_autotune_event_count(b, nullptr), FRUGAL_ERR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(frugal_last_error_message()).find("count is NULL"), std::string::npos);
  frugal_autotune_event e;
  std::memset(&e, 0, sizeof e);
  e.struct_size = sizeof e;
  EXPECT_EQ(frugal_buckets_autotune_event(b, 0, &e), FRUGAL_ERR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(frugal_last_error_message()).find("index 0"), std::string::npos);
  EXPECT_EQ(frugal_buckets_autotune_event(b, 0, nullptr), FRUGAL_ERR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(frugal_last_error_message()).find("event is NULL"), std::string::npos);
  e.struct_size = offsetof(frugal_autotune_event, cost_count);  // one field short of version 1
  EXPECT_EQ(frugal_buckets_autotune_event(b, 0, &e), FRUGAL_ERR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(frugal_last_error_message()).find("struct_size"), std::string::npos);
  frugal_buckets_destroy(b);
}

// Warm-up 2, trials of 2 steps per default candidate (dense, fp16, ternary): moves after steps 4
// and 6, the decision after step 8. The callback makes bucket 0 cheapest on fp16 and bucket 1 on
// ternary; every rank keeps those, and says so through the events and the bucket queries.
TEST(CApiAutotune, ACostCallbackChoosesTheCandidateOnEveryRank) {
  frugal_autotune_options a = tune(2, 2);
  a.cost = cost;
  const std::vector<std::vector<double>> table = {{5.0, 1.0, 4.0}, {5.0, 4.0, 1.0}};
  std::vector<Costs> costs = cost_tables(2, table);
  const std::vector<Trace> traces = run(2, 10, a, costs);
  expect_identical(traces);
  const Trace& t = traces[0];
  const std::vector<std::string> events = {
      "4 0 dense->fp16 move",
      "4 1 dense->fp16 move",
      "6 0 fp16->ternary move",
      "6 1 fp16->ternary move",
      "8 0 ternary->fp16 decision 5.000000 1.000000 4.000000",
      "8 1 ternary->ternary decision 5.000000 4.000000 1.000000",
  };
  EXPECT_EQ(t.events, events);
  // Each bucket's candidate after each step: candidates[0] through the warm-up and the first
  // trial slot, then the trial's order, then the choice, kept (retune 0).
  const std::vector<std::size_t> during = {0, 0, 0, 1, 1, 2, 2};
  for (std::size_t s = 0; s < 10; ++s) {
    const std::size_t expected0 = s < during.size() ? during[s] : 1;
    const std::size_t expected1 = s < during.size() ? during[s] : 2;
    EXPECT_EQ(t.candidates[s], (std::vector<std::size_t>{expected0, expected1})) << s + 1;
    const int methods[] = {FRUGAL_METHOD_NONE, FRUGAL_METHOD_FP16, FRUGAL_METHOD_TERNARY};
    EXPECT_EQ(t.methods[s], (std::vector<int>{methods[expected0], methods[expected1]})) << s + 1;
  }
  // The callback: at the first step (the ranks' first agreement) and at every trial step, for
  // each bucket, with the candidate that ran; never after the decision.
  std::vector<std::string> calls;
  const int call_steps[] = {1, 3, 4, 5, 6, 7, 8};
  for (const int s : call_steps) {
    const std::size_t ran = s <= 4 ? 0 : (s <= 6 ? 1 : 2);
    for (int b = 0; b < 2; ++b) {
      calls.push_back(std::to_string(s) + " " + std::to_string(b) + " " + std::to_string(ran));
    }
  }
  EXPECT_EQ(t.calls, calls);
  // Dense steps are exact: the mean of the ranks' gradients (op SUM: the sum).
  for (std::size_t i = 0; i < 2; ++i) {
    const std::vector<float> g0 = gradient(0, 1, i);
    const std::vector<float> g1 = gradient(1, 1, i);
    for (std::size_t k = 0; k < kTensor; k += 97) EXPECT_EQ(t.results[i][k], g0[k] + g1[k]) << k;
  }
}

// The cost callback: a negative, NaN or infinite return on one rank fails that finish on every
// rank with a status naming autotune.cost (not a crash, not a hang).
TEST(CApiAutotune, ARefusedCostIsAStatusOnEveryRank) {
  for (const double refused :
       {-1.0, std::numeric_limits<double>::quiet_NaN(), std::numeric_limits<double>::infinity()}) {
    std::vector<Costs> costs = cost_tables(2, {{1.0, 1.0, 1.0}});
    costs[0].refuse_rank = costs[1].refuse_rank = 1;
    costs[0].refused = costs[1].refused = refused;
    CGroup group(2);
    group.run([&](int r, frugal_comm* comm) {
      frugal_autotune_options a = tune(0, 2);
      a.cost = cost;
      a.cost_user = &costs[static_cast<std::size_t>(r)];
      const frugal_options o = base(&a);
      frugal_buckets* buckets = nullptr;
      ASSERT_EQ(frugal_buckets_create(comm, &o, 0, &buckets), FRUGAL_OK);
      ASSERT_EQ(frugal_buckets_add(buckets, "w", kTensor, nullptr), FRUGAL_OK);
      std::vector<float> g = gradient(r, 1, 0);
      ASSERT_EQ(frugal_buckets_mark_ready(buckets, 0, g.data(), g.size()), FRUGAL_OK);
      EXPECT_EQ(frugal_buckets_finish(buckets), FRUGAL_ERR_INVALID_ARGUMENT)
          << "rank " << r << " cost " << refused;
      const std::string message = frugal_last_error_message();
      EXPECT_NE(message.find("autotune.cost"), std::string::npos) << message;
      EXPECT_NE(message.find("rank 1"), std::string::npos) << message;
      frugal_buckets_destroy(buckets);
    });
  }
}

// Explicit candidates as frugal_options: the callback picks the last, QSGD 8 bits, named as the
// library describes it.
TEST(CApiAutotune, ExplicitCandidatesAreTheCallersSettings) {
  frugal_options dense, topk, qsgd;
  ASSERT_EQ(frugal_options_init(&dense), FRUGAL_OK);
  ASSERT_EQ(frugal_options_init(&topk), FRUGAL_OK);
  topk.method = FRUGAL_METHOD_TOPK;
  topk.density = 0.1;
  ASSERT_EQ(frugal_options_init(&qsgd), FRUGAL_OK);
  qsgd.method = FRUGAL_METHOD_QSGD;
  qsgd.bits = 8;
  const frugal_options* list[] = {&dense, &topk, &qsgd};
  frugal_autotune_options a = tune(1, 1);
  a.candidates = list;
  a.candidate_count = 3;
  a.cost = cost;
  std::vector<Costs> costs = cost_tables(1, {{3.0, 2.0, 1.0}, {3.0, 2.0, 1.0}});
  const std::vector<Trace> traces = run(1, 4, a, costs);
  const Trace& t = traces[0];
  // Step 1 warm-up; trial slots at steps 2, 3, 4; the decision at step 4.
  ASSERT_EQ(t.events.size(), 6u) << ::testing::PrintToString(t.events);
  EXPECT_EQ(t.events[0], "2 0 dense->topk(density=0.1) move");
  EXPECT_EQ(t.events[2], "3 0 topk(density=0.1)->qsgd(bits=8) move");
  EXPECT_EQ(t.events[4], "4 0 qsgd(bits=8)->qsgd(bits=8) decision 3.000000 2.000000 1.000000");
  EXPECT_EQ(t.candidates.back(), (std::vector<std::size_t>{2, 2}));
  EXPECT_EQ(t.methods.back(), (std::vector<int>{FRUGAL_METHOD_QSGD, FRUGAL_METHOD_QSGD}));
}

// A state saved after the decision restores into new auto buckets with each bucket's candidate,
// no new trial, and the same next step as the buckets it came from; buckets without auto refuse
// it naming autotune.
TEST(CApiAutotune, StateRoundTripKeepsTheChoice) {
  frugal_autotune_options a = tune(2, 2);
  a.cost = cost;
  const std::vector<std::vector<double>> table = {{5.0, 1.0, 4.0}, {5.0, 4.0, 1.0}};
  std::vector<Costs> costs = cost_tables(2, table);
  CGroup group(2);
  group.run([&](int r, frugal_comm* comm) {
    frugal_autotune_options mine = a;
    mine.cost_user = &costs[static_cast<std::size_t>(r)];
    const frugal_options o = base(&mine);
    const auto make = [&](const frugal_options& options) {
      frugal_buckets* b = nullptr;
      EXPECT_EQ(frugal_buckets_create(comm, &options, kTensor * sizeof(float), &b), FRUGAL_OK)
          << frugal_last_error_message();
      EXPECT_EQ(frugal_buckets_add(b, "w0", kTensor, nullptr), FRUGAL_OK);
      EXPECT_EQ(frugal_buckets_add(b, "w1", kTensor, nullptr), FRUGAL_OK);
      return b;
    };
    const auto step = [&](frugal_buckets* b, int s) {
      std::vector<float> g0 = gradient(r, s, 0);
      std::vector<float> g1 = gradient(r, s, 1);
      EXPECT_EQ(frugal_buckets_mark_ready(b, 0, g0.data(), g0.size()), FRUGAL_OK);
      EXPECT_EQ(frugal_buckets_mark_ready(b, 1, g1.data(), g1.size()), FRUGAL_OK);
      EXPECT_EQ(frugal_buckets_finish(b), FRUGAL_OK) << frugal_last_error_message();
      g0.insert(g0.end(), g1.begin(), g1.end());
      return g0;
    };
    frugal_buckets* original = make(o);
    for (int s = 1; s <= 9; ++s) step(original, s);
    size_t size = 0;
    ASSERT_EQ(frugal_buckets_state_size(original, &size), FRUGAL_OK);
    std::vector<unsigned char> image(size);
    size_t written = 0;
    ASSERT_EQ(frugal_buckets_state_save(original, image.data(), size, &written), FRUGAL_OK);

    frugal_buckets* restored = make(o);
    ASSERT_EQ(frugal_buckets_state_load(restored, image.data(), image.size()), FRUGAL_OK)
        << frugal_last_error_message();
    for (size_t b = 0; b < 2; ++b) {
      size_t candidate = 99;
      ASSERT_EQ(frugal_buckets_autotune_bucket(restored, b, &candidate), FRUGAL_OK)
          << frugal_last_error_message();
      EXPECT_EQ(candidate, b == 0 ? 1u : 2u) << "bucket " << b;
    }
    // The next step, from the original and from its restored copy: fp16 and ternary with the
    // same residuals and random streams give the same bits; neither moves.
    const std::vector<float> from_original = step(original, 10);
    const std::vector<float> from_restored = step(restored, 10);
    EXPECT_EQ(from_original, from_restored) << "rank " << r;
    size_t count = 99;
    ASSERT_EQ(frugal_buckets_autotune_event_count(restored, &count), FRUGAL_OK);
    EXPECT_EQ(count, 0u);

    frugal_options onebit = base(nullptr);
    onebit.method = FRUGAL_METHOD_ONEBIT;
    frugal_buckets* plain = make(onebit);
    EXPECT_EQ(frugal_buckets_state_load(plain, image.data(), image.size()), FRUGAL_ERR_MISMATCH);
    EXPECT_NE(std::string(frugal_last_error_message()).find("autotune"), std::string::npos)
        << frugal_last_error_message();
    frugal_buckets_destroy(plain);
    frugal_buckets_destroy(restored);
    frugal_buckets_destroy(original);
  });
}

}  // namespace
