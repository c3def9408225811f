// The C API in-process: loopback communicators (ranks are threads), checked against the C++ API
// on the same inputs, plus argument handling, options ABI, versions and error messages.

#include <gtest/gtest.h>

#include <cmath>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "c_group.hpp"
#include "frugal/collectives/allreduce.hpp"
#include "frugal/collectives/buckets.hpp"
#include "frugal/frugal.h"
#include "loopback_harness.hpp"

namespace {

using frugal::capi_test::CGroup;

std::vector<float> wave(int rank, int step, std::size_t n) {
  std::vector<float> v(n);
  for (std::size_t i = 0; i < n; ++i) {
    v[i] = std::sin(0.37f * static_cast<float>(i) + 1.3f * static_cast<float>(rank) +
                    0.1f * static_cast<float>(step));
  }
  return v;
}

frugal_options defaults() {
  frugal_options o;
  EXPECT_EQ(frugal_options_init(&o), FRUGAL_OK);
  return o;
}

TEST(CApiVersion, MatchesTheProjectVersion) {
  EXPECT_STREQ(frugal_version_string(), FRUGAL_EXPECTED_VERSION);
  EXPECT_STREQ(FRUGAL_VERSION_STRING, FRUGAL_EXPECTED_VERSION);
  EXPECT_EQ(frugal_version(), FRUGAL_VERSION);
  const std::string expected = std::to_string(FRUGAL_VERSION_MAJOR) + "." +
                               std::to_string(FRUGAL_VERSION_MINOR) + "." +
                               std::to_string(FRUGAL_VERSION_PATCH);
  EXPECT_EQ(expected, FRUGAL_EXPECTED_VERSION);
  EXPECT_EQ(frugal_version() >> 16, static_cast<uint32_t>(FRUGAL_VERSION_MAJOR));
}

TEST(CApiErrors, StatusStringsAndThreadLocalMessages) {
  EXPECT_STREQ(frugal_status_string(FRUGAL_ERR_TIMEOUT), "FRUGAL_ERR_TIMEOUT");
  EXPECT_STREQ(frugal_status_string(static_cast<frugal_status>(42)), "unknown status");

  EXPECT_EQ(frugal_comm_rank(nullptr, nullptr), FRUGAL_ERR_INVALID_ARGUMENT);
  const std::string message = frugal_last_error_message();
  EXPECT_EQ(message.rfind("frugal_comm_rank: ", 0), 0u) << message;  // names the function
  EXPECT_NE(message.find("comm is NULL"), std::string::npos) << message;
  std::string other_thread = "unset";
  std::thread([&] { other_thread = frugal_last_error_message(); }).join();
  EXPECT_EQ(other_thread, "");  // thread-local: another thread has no error
  EXPECT_EQ(frugal_last_error_message(), message);
  uint64_t steps = 0;
  frugal_state* state = nullptr;
  ASSERT_EQ(frugal_state_create(1.0f, &state), FRUGAL_OK);
  EXPECT_STREQ(frugal_last_error_message(), "");  // a successful call clears it
  EXPECT_EQ(frugal_state_steps(state, &steps), FRUGAL_OK);
  EXPECT_EQ(frugal_state_create(2.0f, nullptr), FRUGAL_ERR_INVALID_ARGUMENT);
  frugal_state* bad = nullptr;
  EXPECT_EQ(frugal_state_create(2.0f, &bad), FRUGAL_ERR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(frugal_last_error_message()).find("decay"), std::string::npos);
  EXPECT_EQ(bad, nullptr);
  frugal_state_destroy(state);
}

TEST(CApiErrors, EveryNullPointerIsInvalidArgumentNamingIt) {
  CGroup group(1);
  frugal_comm* comm = group[0];
  float x = 1;
  size_t sz = 0;
  int i = 0;
  frugal_options o = defaults();
  frugal_state* state = nullptr;
  ASSERT_EQ(frugal_state_create(1.0f, &state), FRUGAL_OK);
  frugal_buckets* buckets = nullptr;
  ASSERT_EQ(frugal_buckets_create(comm, nullptr, 0, &buckets), FRUGAL_OK);
  frugal_request* null_request = nullptr;

  const std::vector<std::pair<std::function<frugal_status()>, std::string>> cases = {
      {[&] { return frugal_comm_create_mpi_world(FRUGAL_TRANSPORT_MPI, nullptr); }, "out is NULL"},
      {[&] { return frugal_comm_create_env(nullptr); }, "out is NULL"},
      {[&] { return frugal_comm_create_loopback(2, nullptr); }, "comms is NULL"},
      {[&] { return frugal_comm_rank(comm, nullptr); }, "rank is NULL"},
      {[&] { return frugal_comm_size(nullptr, &i); }, "comm is NULL"},
      {[&] { return frugal_comm_set_timeout_ms(nullptr, 10); }, "comm is NULL"},
      {[&] { return frugal_options_init_sized(nullptr, sizeof o); }, "options is NULL"},
      {[&] { return frugal_allreduce(nullptr, &x, 1, &o); }, "comm is NULL"},
      {[&] { return frugal_allreduce(comm, nullptr, 1, &o); }, "buf is NULL"},
      {[&] { return frugal_allreduce_async(comm, &x, 1, &o, nullptr); }, "request is NULL"},
      {[&] { return frugal_test(nullptr, &i); }, "request is NULL"},
      {[&] { return frugal_wait(nullptr); }, "request is NULL"},
      {[&] { return frugal_wait(&null_request); }, "*request is NULL"},
      {[&] { return frugal_state_reset(nullptr); }, "state is NULL"},
      {[&] { return frugal_state_steps(state, nullptr); }, "steps is NULL"},
      {[&] { return frugal_state_save_size(nullptr, &sz); }, "state is NULL"},
      {[&] { return frugal_state_save(state, nullptr, 0, nullptr); }, "written is NULL"},
      {[&] { return frugal_state_load(state, nullptr, 8); }, "buf is NULL"},
      {[&] { return frugal_buckets_create(nullptr, nullptr, 0, &buckets); }, "comm is NULL"},
      {[&] { return frugal_buckets_add(buckets, nullptr, 4, nullptr); }, "name is NULL"},
      {[&] { return frugal_buckets_mark_ready(buckets, 0, nullptr, 4); }, "grad is NULL"},
      {[&] { return frugal_buckets_finish(nullptr); }, "buckets is NULL"},
      {[&] { return frugal_buckets_count(buckets, nullptr); }, "count is NULL"},
      {[&] { return frugal_buckets_state_size(nullptr, &sz); }, "buckets is NULL"},
      {[&] { return frugal_buckets_state_save(buckets, nullptr, 0, nullptr); }, "written is NULL"},
      {[&] { return frugal_buckets_state_load(buckets, nullptr, 3); }, "buf is NULL"},
  };
  for (const auto& [call, expected] : cases) {
    EXPECT_EQ(call(), FRUGAL_ERR_INVALID_ARGUMENT) << expected;
    EXPECT_NE(std::string(frugal_last_error_message()).find(expected), std::string::npos)
        << frugal_last_error_message() << " lacks " << expected;
  }
  // NULL buffers are fine for empty ones; destroy functions ignore NULL.
  EXPECT_EQ(frugal_allreduce(comm, nullptr, 0, nullptr), FRUGAL_OK) << frugal_last_error_message();
  frugal_comm_destroy(nullptr);
  frugal_state_destroy(nullptr);
  frugal_buckets_destroy(nullptr);
  frugal_request_free(nullptr);
  frugal_buckets_destroy(buckets);
  frugal_state_destroy(state);
}

TEST(CApiOptions, DefaultsMatchTheCppApi) {
  const frugal_options o = defaults();
  const frugal::AllreduceOptions cpp;
  EXPECT_EQ(o.struct_size, sizeof(frugal_options));
  EXPECT_EQ(o.method, static_cast<int>(cpp.compression.method));
  EXPECT_EQ(o.op, static_cast<int>(cpp.op));
  EXPECT_EQ(o.algorithm, static_cast<int>(cpp.algorithm));
  EXPECT_EQ(o.density, cpp.compression.density);
  EXPECT_EQ(o.k, cpp.compression.k);
  EXPECT_EQ(o.bits, cpp.compression.bits);
  EXPECT_EQ(o.bucket, cpp.compression.bucket);
  EXPECT_EQ(o.topk_tolerance, cpp.compression.tolerance);
  EXPECT_EQ(o.error_feedback != 0, cpp.error_feedback);
  EXPECT_EQ(o.seed, cpp.seed);
  EXPECT_EQ(o.state, nullptr);
  EXPECT_EQ(o.non_finite, static_cast<int>(cpp.non_finite));
  EXPECT_EQ(o.skipped, nullptr);
  EXPECT_EQ(o.dense_vectors != 0, frugal::BucketOptions{}.dense_vectors);
  EXPECT_EQ(o.qsgd_norm, static_cast<int>(cpp.compression.norm));
  EXPECT_EQ(o.ternary_clip, cpp.compression.clip_sigma);
  // The C enums carry the C++ values.
  EXPECT_EQ(FRUGAL_NON_FINITE_SKIP, static_cast<int>(frugal::NonFiniteAction::Skip));
  EXPECT_EQ(FRUGAL_NON_FINITE_ZERO, static_cast<int>(frugal::NonFiniteAction::Zero));
  EXPECT_EQ(FRUGAL_METHOD_QSGD, static_cast<int>(frugal::compression::Method::Qsgd));
  EXPECT_EQ(FRUGAL_METHOD_TOPK, static_cast<int>(frugal::compression::Method::TopK));
  EXPECT_EQ(FRUGAL_OP_AVERAGE, static_cast<int>(frugal::ReduceOp::Average));
  EXPECT_EQ(FRUGAL_ALGORITHM_SPARSE_RECURSIVE_DOUBLING,
            static_cast<int>(frugal::AllreduceAlgorithm::SparseRecursiveDoubling));
  EXPECT_EQ(FRUGAL_ALGORITHM_ALLGATHER, static_cast<int>(frugal::AllreduceAlgorithm::Allgather));
}

TEST(CApiOptions, StructSizeVersioning) {
  CGroup group(1);
  float x[4] = {1, 2, 3, 4};
  // A newer caller's larger struct: accepted while the fields this library lacks are zero.
  struct Newer {
    frugal_options v1;
    uint64_t future_field;
  } newer;
  ASSERT_EQ(frugal_options_init_sized(&newer.v1, sizeof newer), FRUGAL_OK);
  EXPECT_EQ(newer.v1.struct_size, sizeof newer);
  EXPECT_EQ(newer.future_field, 0u);
  EXPECT_EQ(newer.v1.bits, 4);
  EXPECT_EQ(frugal_allreduce(group[0], x, 4, &newer.v1), FRUGAL_OK) << frugal_last_error_message();
  newer.future_field = 7;
  EXPECT_EQ(frugal_allreduce(group[0], x, 4, &newer.v1), FRUGAL_ERR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(frugal_last_error_message()).find("newer field"), std::string::npos);
  // Uninitialised or truncated structs are refused.
  frugal_options o = defaults();
  o.struct_size = 8;
  EXPECT_EQ(frugal_allreduce(group[0], x, 4, &o), FRUGAL_ERR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(frugal_last_error_message()).find("frugal_options_init"),
            std::string::npos);
  EXPECT_EQ(frugal_options_init_sized(&o, 8), FRUGAL_ERR_INVALID_ARGUMENT);
  // A version-1 caller (compiled before non_finite and skipped existed): what lies past its
  // struct is neither read nor written.
  struct V1Caller {
    frugal_options o;
  } old;
  ASSERT_EQ(frugal_options_init(&old.o), FRUGAL_OK);
  old.o.struct_size = offsetof(frugal_options, non_finite);
  old.o.non_finite = 99;  // out of range, but not this caller's field
  int untouched = 42;
  old.o.skipped = &untouched;
  EXPECT_EQ(frugal_allreduce(group[0], x, 4, &old.o), FRUGAL_OK) << frugal_last_error_message();
  EXPECT_EQ(untouched, 42);
}

TEST(CApiOptions, BadValuesAreNamed) {
  CGroup group(1);
  float x[8] = {};
  const std::vector<std::pair<std::function<void(frugal_options&)>, std::string>> cases = {
      {[](frugal_options& o) { o.method = 99; }, "method"},
      {[](frugal_options& o) { o.op = 0; }, "op"},
      {[](frugal_options& o) { o.algorithm = -1; }, "algorithm"},
      {[](frugal_options& o) { o.onebit_scaling = 5; }, "onebit_scaling"},
      {[](frugal_options& o) { o.qsgd_norm = 2; }, "qsgd_norm"},
      {[](frugal_options& o) { o.topk_selection = 9; }, "topk_selection"},
      {[](frugal_options& o) { o.non_finite = 4; }, "non_finite"},
      {[](frugal_options& o) {
         o.method = FRUGAL_METHOD_QSGD;
         o.bits = 3;
       },
       "bits"},
      {[](frugal_options& o) {
         o.method = FRUGAL_METHOD_TOPK;
         o.density = 1.5;
       },
       "density"},
      {[](frugal_options& o) {
         o.method = FRUGAL_METHOD_ONEBIT;  // error feedback without a state
       },
       "state"},
  };
  for (const auto& [mutate, field] : cases) {
    frugal_options o = defaults();
    mutate(o);
    EXPECT_EQ(frugal_allreduce(group[0], x, 8, &o), FRUGAL_ERR_INVALID_ARGUMENT) << field;
    EXPECT_NE(std::string(frugal_last_error_message()).find(field), std::string::npos)
        << frugal_last_error_message() << " lacks " << field;
  }
  // InvalidArgument leaves the communicator usable.
  EXPECT_EQ(frugal_allreduce(group[0], x, 8, nullptr), FRUGAL_OK);
}

TEST(CApiComm, LoopbackRankSizeAndExactSums) {
  constexpr int kSize = 3;
  CGroup group(kSize);
  frugal_comm* no_comms[1] = {nullptr};
  EXPECT_EQ(frugal_comm_create_loopback(0, no_comms), FRUGAL_ERR_INVALID_ARGUMENT);
  group.run([&](int r, frugal_comm* comm) {
    int rank = -1, size = -1;
    EXPECT_EQ(frugal_comm_rank(comm, &rank), FRUGAL_OK);
    EXPECT_EQ(frugal_comm_size(comm, &size), FRUGAL_OK);
    EXPECT_EQ(rank, r);
    EXPECT_EQ(size, kSize);
    std::vector<float> v(1001);
    for (std::size_t i = 0; i < v.size(); ++i) v[i] = static_cast<float>((r + 1) * (i % 13));
    EXPECT_EQ(frugal_allreduce(comm, v.data(), v.size(), nullptr), FRUGAL_OK);
    for (std::size_t i = 0; i < v.size(); ++i) ASSERT_EQ(v[i], 6.0f * static_cast<float>(i % 13));
    frugal_options o = defaults();
    o.op = FRUGAL_OP_AVERAGE;
    o.algorithm = FRUGAL_ALGORITHM_RING;
    std::vector<float> w(17, static_cast<float>(3 * r));
    EXPECT_EQ(frugal_allreduce(comm, w.data(), w.size(), &o), FRUGAL_OK);
    for (float x : w) ASSERT_EQ(x, 3.0f);
  });
}

TEST(CApiComm, EnvironmentBootstrapWithoutVariables) {
  unsetenv("FRUGAL_RANK");
  unsetenv("FRUGAL_WORLD_SIZE");
  frugal_comm* comm = nullptr;
  const frugal_status status = frugal_comm_create_env(&comm);
  EXPECT_EQ(comm, nullptr);
#ifdef FRUGAL_HAVE_UCX
  EXPECT_EQ(status, FRUGAL_ERR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(frugal_last_error_message()).find("FRUGAL_RANK"), std::string::npos)
      << frugal_last_error_message();
#else
  EXPECT_EQ(status, FRUGAL_ERR_UNSUPPORTED);
#endif
  // An unknown transport is refused before MPI is touched (this process has no mpirun).
  EXPECT_EQ(frugal_comm_create_mpi_world(static_cast<frugal_transport>(7), &comm),
            FRUGAL_ERR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(frugal_last_error_message()).find("transport 7"), std::string::npos);
}

// Per step: C API and C++ API on two separate groups, same inputs, same options: bit-identical
// results, and identical state images at the end.
void expect_c_equals_cpp(int method, int size) {
  constexpr std::size_t kCount = 4099;
  constexpr int kSteps = 3;
  std::vector<std::vector<std::vector<float>>> c_out(static_cast<std::size_t>(size)),
      cpp_out(static_cast<std::size_t>(size));
  std::vector<std::vector<std::byte>> c_image(static_cast<std::size_t>(size)),
      cpp_image(static_cast<std::size_t>(size));

  CGroup group(size);
  group.run([&](int r, frugal_comm* comm) {
    frugal_state* state = nullptr;
    ASSERT_EQ(frugal_state_create(1.0f, &state), FRUGAL_OK);
    frugal_options o = defaults();
    o.method = method;
    o.state = state;
    o.seed = 99;
    o.density = 0.05;
    for (int step = 0; step < kSteps; ++step) {
      std::vector<float> v = wave(r, step, kCount);
      EXPECT_EQ(frugal_allreduce(comm, v.data(), v.size(), &o), FRUGAL_OK)
          << frugal_last_error_message();
      c_out[static_cast<std::size_t>(r)].push_back(v);
    }
    uint64_t steps = 0;
    EXPECT_EQ(frugal_state_steps(state, &steps), FRUGAL_OK);
    // Dense allreduces do not use the state.
    EXPECT_EQ(steps, method == FRUGAL_METHOD_NONE ? 0u : static_cast<uint64_t>(kSteps));
    size_t bytes = 0, written = 0;
    EXPECT_EQ(frugal_state_save_size(state, &bytes), FRUGAL_OK);
    auto& image = c_image[static_cast<std::size_t>(r)];
    image.resize(bytes);
    EXPECT_EQ(frugal_state_save(state, image.data(), image.size(), &written), FRUGAL_OK);
    EXPECT_EQ(written, bytes);
    frugal_state_destroy(state);
  });

  frugal::testing::run_ranks(size, [&](frugal::Communicator& comm) {
    frugal::AllreduceState state;
    frugal::AllreduceOptions o;
    o.compression.method = static_cast<frugal::compression::Method>(method);
    o.compression.density = 0.05;
    o.seed = 99;
    o.state = &state;
    for (int step = 0; step < kSteps; ++step) {
      std::vector<float> v = wave(comm.rank(), step, kCount);
      frugal::allreduce(comm, std::span<float>(v), o);
      cpp_out[static_cast<std::size_t>(comm.rank())].push_back(v);
    }
    cpp_image[static_cast<std::size_t>(comm.rank())] = state.save();
  });

  for (int r = 0; r < size; ++r) {
    const auto ur = static_cast<std::size_t>(r);
    for (int step = 0; step < kSteps; ++step) {
      const auto us = static_cast<std::size_t>(step);
      ASSERT_EQ(std::memcmp(c_out[ur][us].data(), cpp_out[ur][us].data(), kCount * sizeof(float)),
                0)
          << "method " << method << " rank " << r << " step " << step;
      ASSERT_EQ(std::memcmp(c_out[ur][us].data(), c_out[0][us].data(), kCount * sizeof(float)), 0)
          << "ranks differ";
    }
    EXPECT_EQ(c_image[ur], cpp_image[ur]) << "method " << method << " rank " << r;
  }
}

TEST(CApiAllreduce, EveryMethodEqualsTheCppApi) {
  for (int method = FRUGAL_METHOD_NONE; method <= FRUGAL_METHOD_QSGD; ++method) {
    SCOPED_TRACE(method);
    expect_c_equals_cpp(method, 3);
  }
}

TEST(CApiAllreduce, AsyncTestWaitAndBlockingWhilePending) {
  constexpr int kSize = 2;
  CGroup group(kSize);
  group.run([&](int r, frugal_comm* comm) {
    std::vector<std::vector<float>> bufs(4, std::vector<float>(100000));
    std::vector<frugal_request*> requests;
    for (std::size_t b = 0; b < bufs.size(); ++b) {
      for (std::size_t i = 0; i < bufs[b].size(); ++i)
        bufs[b][i] = static_cast<float>(r + b + i % 5);
      frugal_request* request = nullptr;
      ASSERT_EQ(frugal_allreduce_async(comm, bufs[b].data(), bufs[b].size(), nullptr, &request),
                FRUGAL_OK);
      requests.push_back(request);
    }
    int done = 0;
    ASSERT_EQ(frugal_test(requests.back(), &done), FRUGAL_OK);
    if (done == 0) {  // still pending: a blocking collective must be refused
      float x = 0;
      EXPECT_EQ(frugal_allreduce(comm, &x, 1, nullptr), FRUGAL_ERR_INVALID_ARGUMENT);
    }
    for (frugal_request*& request : requests) {
      EXPECT_EQ(frugal_wait(&request), FRUGAL_OK) << frugal_last_error_message();
      EXPECT_EQ(request, nullptr);
    }
    for (std::size_t b = 0; b < bufs.size(); ++b) {
      for (std::size_t i = 0; i < bufs[b].size(); ++i) {
        ASSERT_EQ(bufs[b][i], static_cast<float>(1 + 2 * (b + i % 5)));
      }
    }
  });
}

TEST(CApiAllreduce, MismatchAndTimeoutBecomeStatuses) {
  {
    CGroup group(2);
    group.run([&](int r, frugal_comm* comm) {
      std::vector<float> v(r == 0 ? 100 : 101, 1.0f);
      EXPECT_EQ(frugal_allreduce(comm, v.data(), v.size(), nullptr), FRUGAL_ERR_MISMATCH)
          << frugal_last_error_message();
      // The communicator is failed: the same error again, at once.
      EXPECT_EQ(frugal_allreduce(comm, v.data(), v.size(), nullptr), FRUGAL_ERR_MISMATCH);
    });
  }
  {
    CGroup group(2);
    frugal_options o = defaults();
    o.timeout_ms = 200;
    float x = 1;
    // Rank 1 never joins.
    EXPECT_EQ(frugal_allreduce(group[0], &x, 1, &o), FRUGAL_ERR_TIMEOUT);
    EXPECT_NE(std::string(frugal_last_error_message()).find("frugal_allreduce"), std::string::npos);
    EXPECT_EQ(frugal_comm_set_timeout_ms(group[1], 0), FRUGAL_ERR_INVALID_ARGUMENT);
  }
  {
    CGroup group(2);
    ASSERT_EQ(frugal_comm_set_timeout_ms(group[0], 150), FRUGAL_OK);
    float x = 1;
    frugal_request* request = nullptr;
    ASSERT_EQ(frugal_allreduce_async(group[0], &x, 1, nullptr, &request), FRUGAL_OK);
    EXPECT_EQ(frugal_wait(&request), FRUGAL_ERR_TIMEOUT);  // the async error, on the waiter
    EXPECT_EQ(request, nullptr);
  }
}

// NaN on one rank: every action decided alike on both ranks, dense and compressed, blocking,
// asynchronous and through buckets.
TEST(CApiAllreduce, NonFiniteActionsAgreeOnEveryRank) {
  constexpr int kSize = 2;
  constexpr std::size_t kCount = 64;
  for (int method : {FRUGAL_METHOD_NONE, FRUGAL_METHOD_ONEBIT}) {
    SCOPED_TRACE(method);
    CGroup group(kSize);
    group.run([&](int r, frugal_comm* comm) {
      frugal_state* state = nullptr;
      ASSERT_EQ(frugal_state_create(1.0f, &state), FRUGAL_OK);
      frugal_options o = defaults();
      o.method = method;
      o.state = state;
      int skipped = -1;
      o.skipped = &skipped;
      auto input = [&] {
        std::vector<float> v(kCount, static_cast<float>(r + 1));
        if (r == 1) v[5] = std::nanf("");
        return v;
      };

      o.non_finite = FRUGAL_NON_FINITE_ERROR;
      std::vector<float> v = input();
      EXPECT_EQ(frugal_allreduce(comm, v.data(), v.size(), &o), FRUGAL_ERR_INVALID_ARGUMENT);
      EXPECT_NE(std::string(frugal_last_error_message()).find("non_finite"), std::string::npos)
          << frugal_last_error_message();
      EXPECT_EQ(v[0], static_cast<float>(r + 1));  // input kept

      o.non_finite = FRUGAL_NON_FINITE_SKIP;
      v = input();
      ASSERT_EQ(frugal_allreduce(comm, v.data(), v.size(), &o), FRUGAL_OK)
          << frugal_last_error_message();
      EXPECT_EQ(skipped, 1);
      EXPECT_EQ(v[0], static_cast<float>(r + 1));
      uint64_t steps = 99;
      EXPECT_EQ(frugal_state_steps(state, &steps), FRUGAL_OK);
      EXPECT_EQ(steps, 0u);  // a skipped step leaves the state alone

      // Asynchronous: written by frugal_wait.
      skipped = -1;
      v = input();
      frugal_request* request = nullptr;
      ASSERT_EQ(frugal_allreduce_async(comm, v.data(), v.size(), &o, &request), FRUGAL_OK);
      ASSERT_EQ(frugal_wait(&request), FRUGAL_OK) << frugal_last_error_message();
      EXPECT_EQ(skipped, 1);

      // A clean step under Skip goes ahead and says so.
      std::vector<float> clean(kCount, 1.0f);
      ASSERT_EQ(frugal_allreduce(comm, clean.data(), clean.size(), &o), FRUGAL_OK);
      EXPECT_EQ(skipped, 0);
      if (method == FRUGAL_METHOD_NONE) {
        EXPECT_EQ(clean[3], 2.0f);
      }

      o.non_finite = FRUGAL_NON_FINITE_ZERO;
      v = input();
      ASSERT_EQ(frugal_allreduce(comm, v.data(), v.size(), &o), FRUGAL_OK)
          << frugal_last_error_message();
      for (float x : v) EXPECT_TRUE(std::isfinite(x));
      if (method == FRUGAL_METHOD_NONE) {
        EXPECT_EQ(v[5], 1.0f);  // rank 1's NaN counted as 0
        EXPECT_EQ(v[6], 3.0f);
      }
      frugal_state_destroy(state);
    });
  }
  // Buckets report a skipped step.
  CGroup group(kSize);
  group.run([&](int r, frugal_comm* comm) {
    frugal_options o = defaults();
    o.non_finite = FRUGAL_NON_FINITE_SKIP;
    frugal_buckets* buckets = nullptr;
    ASSERT_EQ(frugal_buckets_create(comm, &o, 0, &buckets), FRUGAL_OK);
    ASSERT_EQ(frugal_buckets_add(buckets, "w", kCount, nullptr), FRUGAL_OK);
    int skipped = -1;
    EXPECT_EQ(frugal_buckets_last_step_skipped(buckets, nullptr), FRUGAL_ERR_INVALID_ARGUMENT);
    for (bool poison : {true, false}) {
      std::vector<float> g(kCount, 1.0f);
      if (poison && r == 0) g[0] = INFINITY;
      ASSERT_EQ(frugal_buckets_mark_ready(buckets, 0, g.data(), g.size()), FRUGAL_OK);
      ASSERT_EQ(frugal_buckets_finish(buckets), FRUGAL_OK) << frugal_last_error_message();
      ASSERT_EQ(frugal_buckets_last_step_skipped(buckets, &skipped), FRUGAL_OK);
      EXPECT_EQ(skipped, poison ? 1 : 0);
      EXPECT_EQ(g[1], poison ? 1.0f : 2.0f);
    }
    frugal_buckets_destroy(buckets);
  });
}

TEST(CApiState, SaveSizeQueryShortBufferAndLoad) {
  CGroup group(2);
  std::vector<std::vector<float>> continued(2), from_checkpoint(2);
  group.run([&](int r, frugal_comm* comm) {
    frugal_state* state = nullptr;
    frugal_state* copy = nullptr;
    ASSERT_EQ(frugal_state_create(0.5f, &state), FRUGAL_OK);
    ASSERT_EQ(frugal_state_create(0.5f, &copy), FRUGAL_OK);
    frugal_options o = defaults();
    o.method = FRUGAL_METHOD_TOPK;
    o.k = 10;
    o.state = state;
    std::vector<float> v = wave(r, 0, 500);
    ASSERT_EQ(frugal_allreduce(comm, v.data(), v.size(), &o), FRUGAL_OK);

    size_t bytes = 0, written = 0;
    ASSERT_EQ(frugal_state_save_size(state, &bytes), FRUGAL_OK);
    EXPECT_GT(bytes, 500 * sizeof(float));
    std::vector<unsigned char> image(bytes);
    EXPECT_EQ(frugal_state_save(state, image.data(), bytes - 1, &written),
              FRUGAL_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(written, bytes);  // the size needed
    EXPECT_NE(std::string(frugal_last_error_message()).find("capacity"), std::string::npos);
    ASSERT_EQ(frugal_state_save(state, image.data(), image.size(), &written), FRUGAL_OK);

    // Corrupt images are refused and leave the state alone.
    std::vector<unsigned char> corrupt = image;
    corrupt[0] ^= 0xff;
    EXPECT_EQ(frugal_state_load(copy, corrupt.data(), corrupt.size()), FRUGAL_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(frugal_state_load(copy, image.data(), image.size() - 3), FRUGAL_ERR_INVALID_ARGUMENT);
    ASSERT_EQ(frugal_state_load(copy, image.data(), image.size()), FRUGAL_OK);

    std::vector<float> a = wave(r, 1, 500), b = a;
    ASSERT_EQ(frugal_allreduce(comm, a.data(), a.size(), &o), FRUGAL_OK);
    o.state = copy;
    ASSERT_EQ(frugal_allreduce(comm, b.data(), b.size(), &o), FRUGAL_OK);
    continued[static_cast<std::size_t>(r)] = a;
    from_checkpoint[static_cast<std::size_t>(r)] = b;

    EXPECT_EQ(frugal_state_reset(state), FRUGAL_OK);
    uint64_t steps = 0;
    EXPECT_EQ(frugal_state_steps(state, &steps), FRUGAL_OK);
    EXPECT_EQ(steps, 2u);  // reset keeps the step
    frugal_state_destroy(state);
    frugal_state_destroy(copy);
  });
  EXPECT_EQ(continued, from_checkpoint);
  EXPECT_NE(continued[0], wave(0, 1, 500));
}

TEST(CApiBuckets, EqualPerTensorAllreducesAndSaveState) {
  constexpr int kSize = 2;
  const std::vector<std::size_t> sizes = {300, 50, 1000, 7};
  CGroup group(kSize);
  std::vector<std::vector<std::vector<float>>> via_buckets(kSize);
  std::vector<size_t> bucket_counts(kSize);
  group.run([&](int r, frugal_comm* comm) {
    frugal_options o = defaults();
    o.op = FRUGAL_OP_AVERAGE;
    frugal_buckets* buckets = nullptr;
    ASSERT_EQ(frugal_buckets_create(comm, &o, 1000 * sizeof(float), &buckets), FRUGAL_OK);
    const char* names[] = {"t0", "t1", "t2", "t3"};
    for (std::size_t t = 0; t < sizes.size(); ++t) {
      size_t id = 99;
      ASSERT_EQ(frugal_buckets_add(buckets, names[t], sizes[t], &id), FRUGAL_OK);
      EXPECT_EQ(id, t);
    }
    EXPECT_EQ(frugal_buckets_add(buckets, "t0", 5, nullptr), FRUGAL_ERR_INVALID_ARGUMENT);
    std::vector<std::vector<float>> grads;
    for (std::size_t t = 0; t < sizes.size(); ++t) {
      grads.push_back(std::vector<float>(sizes[t], static_cast<float>(2 * r + t)));
    }
    EXPECT_EQ(frugal_buckets_mark_ready(buckets, 0, grads[0].data(), 3),
              FRUGAL_ERR_INVALID_ARGUMENT);  // wrong size
    for (std::size_t t = sizes.size(); t-- > 0;) {
      ASSERT_EQ(frugal_buckets_mark_ready(buckets, t, grads[t].data(), grads[t].size()), FRUGAL_OK)
          << frugal_last_error_message();
    }
    ASSERT_EQ(frugal_buckets_finish(buckets), FRUGAL_OK) << frugal_last_error_message();
    EXPECT_EQ(frugal_buckets_count(buckets, &bucket_counts[static_cast<std::size_t>(r)]),
              FRUGAL_OK);
    via_buckets[static_cast<std::size_t>(r)] = grads;
    // A step that leaves a tensor out is refused, naming it.
    ASSERT_EQ(frugal_buckets_mark_ready(buckets, 0, grads[0].data(), grads[0].size()), FRUGAL_OK);
    EXPECT_EQ(frugal_buckets_finish(buckets), FRUGAL_ERR_INVALID_ARGUMENT);
    EXPECT_NE(std::string(frugal_last_error_message()).find("t1"), std::string::npos)
        << frugal_last_error_message();
    size_t bytes = 0, written = 0;
    ASSERT_EQ(frugal_buckets_state_size(buckets, &bytes), FRUGAL_OK);
    std::vector<unsigned char> image(bytes);
    ASSERT_EQ(frugal_buckets_state_save(buckets, image.data(), bytes, &written), FRUGAL_OK);
    EXPECT_EQ(written, bytes);
    EXPECT_EQ(frugal_buckets_state_load(buckets, image.data(), written), FRUGAL_OK)
        << frugal_last_error_message();
    frugal_buckets_destroy(buckets);
  });
  for (int r = 0; r < kSize; ++r) {
    EXPECT_EQ(bucket_counts[static_cast<std::size_t>(r)], 3u);  // {t0, t1} {t2} {t3}
    for (std::size_t t = 0; t < sizes.size(); ++t) {
      for (float x : via_buckets[static_cast<std::size_t>(r)][t]) {
        ASSERT_EQ(x, static_cast<float>(1 + t));  // mean of 2r + t over r = 0, 1
      }
    }
  }
}

// frugal_buckets_add_tensor with ndim 1 under a compression method: a dense bucket, the exact
// sum; options->dense_vectors = 0 compresses it like the rest; frugal_buckets_add and callers
// whose struct predates the field (version 2) keep the default.
TEST(CApiBuckets, DenseVectorsSwitch) {
  constexpr int kSize = 2;
  constexpr std::size_t kMatrix = 4096, kVector = 64;
  for (const int dense_vectors : {1, 0, -1}) {  // -1: a version-2 caller
    SCOPED_TRACE(dense_vectors);
    CGroup group(kSize);
    std::vector<std::vector<float>> vectors(kSize);
    group.run([&](int r, frugal_comm* comm) {
      frugal_options o = defaults();
      o.method = FRUGAL_METHOD_ONEBIT;
      if (dense_vectors >= 0) {
        o.dense_vectors = dense_vectors;
      } else {
        o.struct_size = offsetof(frugal_options, dense_vectors);
        o.dense_vectors = 0;  // past the caller's struct: not read
      }
      frugal_buckets* buckets = nullptr;
      ASSERT_EQ(frugal_buckets_create(comm, &o, 0, &buckets), FRUGAL_OK)
          << frugal_last_error_message();
      ASSERT_EQ(frugal_buckets_add(buckets, "w", kMatrix, nullptr), FRUGAL_OK);
      ASSERT_EQ(frugal_buckets_add_tensor(buckets, "b", kVector, 1, nullptr), FRUGAL_OK);
      EXPECT_EQ(frugal_buckets_add_tensor(buckets, nullptr, 4, 1, nullptr),
                FRUGAL_ERR_INVALID_ARGUMENT);
      std::vector<float> w = wave(r, 0, kMatrix), b = wave(r, 1, kVector);
      ASSERT_EQ(frugal_buckets_mark_ready(buckets, 1, b.data(), b.size()), FRUGAL_OK);
      ASSERT_EQ(frugal_buckets_mark_ready(buckets, 0, w.data(), w.size()), FRUGAL_OK);
      ASSERT_EQ(frugal_buckets_finish(buckets), FRUGAL_OK) << frugal_last_error_message();
      size_t count = 0;
      ASSERT_EQ(frugal_buckets_count(buckets, &count), FRUGAL_OK);
      EXPECT_EQ(count, dense_vectors != 0 ? 2u : 1u);
      vectors[static_cast<std::size_t>(r)] = b;
      frugal_buckets_destroy(buckets);
    });
    std::vector<float> exact = wave(0, 1, kVector);
    const std::vector<float> other = wave(1, 1, kVector);
    for (std::size_t i = 0; i < kVector; ++i) exact[i] += other[i];
    EXPECT_EQ(vectors[0] == exact, dense_vectors != 0);
    EXPECT_EQ(vectors[0], vectors[1]);
  }
}

}  // namespace

namespace {

// Two tensors end to end, of magnitudes 10^3 apart: 1-bit's result depends on whether one scale
// covers both.
std::vector<float> two_tensors(int rank, int step) {
  std::vector<float> v = wave(rank, step, 3000);
  for (std::size_t i = 0; i < 1000; ++i) v[i] *= 1e-3f;
  return v;
}

}  // namespace

// options->segments reaches the C++ allreduce (blocking and asynchronous, with per-tensor top-k
// through topk_scope): bit-identical to the C++ API with the same segments, and different from
// a call without them.
TEST(CApiSegments, AllreduceAndAsyncEqualTheCppApi) {
  const std::vector<std::size_t> segments = {1000, 2000};
  for (const int method : {FRUGAL_METHOD_ONEBIT, FRUGAL_METHOD_TOPK}) {
    SCOPED_TRACE(method);
    std::vector<std::vector<float>> c_sync(2), c_async(2), c_flat(2), cpp(2);
    CGroup group(2);
    group.run([&](int r, frugal_comm* comm) {
      frugal_options o = defaults();
      o.method = method;
      o.algorithm = FRUGAL_ALGORITHM_AUTO;
      o.error_feedback = 0;
      o.topk_scope = FRUGAL_TOPK_PER_TENSOR;
      const auto ur = static_cast<std::size_t>(r);
      c_flat[ur] = two_tensors(r, 0);
      EXPECT_EQ(frugal_allreduce(comm, c_flat[ur].data(), 3000, &o), FRUGAL_OK);
      o.segments = segments.data();
      o.segment_count = segments.size();
      c_sync[ur] = two_tensors(r, 0);
      EXPECT_EQ(frugal_allreduce(comm, c_sync[ur].data(), 3000, &o), FRUGAL_OK)
          << frugal_last_error_message();
      c_async[ur] = two_tensors(r, 0);
      std::vector<std::size_t> temporary = segments;  // freed before the wait: copied
      o.segments = temporary.data();
      frugal_request* request = nullptr;
      ASSERT_EQ(frugal_allreduce_async(comm, c_async[ur].data(), 3000, &o, &request), FRUGAL_OK);
      temporary.assign(temporary.size(), 0);
      EXPECT_EQ(frugal_wait(&request), FRUGAL_OK) << frugal_last_error_message();
    });
    frugal::testing::run_ranks(2, [&](frugal::Communicator& comm) {
      frugal::AllreduceOptions o;
      o.compression.method = static_cast<frugal::compression::Method>(method);
      o.compression.topk_scope = frugal::compression::TopKScope::PerTensor;
      o.error_feedback = false;
      o.segments = segments;
      std::vector<float> v = two_tensors(comm.rank(), 0);
      frugal::allreduce(comm, std::span<float>(v), o);
      cpp[static_cast<std::size_t>(comm.rank())] = v;
    });
    EXPECT_EQ(c_sync, cpp);
    EXPECT_EQ(c_async, cpp);
    EXPECT_NE(c_flat, cpp);
  }
}

TEST(CApiSegments, BadSegmentsAndScopeAreNamed) {
  CGroup group(1);
  float x[8] = {};
  const std::size_t short_sum[] = {3, 4};
  const std::size_t with_zero[] = {8, 0};
  const std::vector<std::pair<std::function<void(frugal_options&)>, std::string>> cases = {
      {[](frugal_options& o) { o.segment_count = 2; }, "segments: NULL"},
      {[&](frugal_options& o) {
         o.segments = short_sum;
         o.segment_count = 2;
       },
       "segments: they add up to 7"},
      {[&](frugal_options& o) {
         o.segments = with_zero;
         o.segment_count = 2;
       },
       "segments: segment 1 is empty"},
      {[](frugal_options& o) { o.topk_scope = 2; }, "topk_scope"},
  };
  for (const auto& [mutate, message] : cases) {
    frugal_options o = defaults();
    o.method = FRUGAL_METHOD_QSGD;
    o.error_feedback = 0;
    mutate(o);
    EXPECT_EQ(frugal_allreduce(group[0], x, 8, &o), FRUGAL_ERR_INVALID_ARGUMENT) << message;
    EXPECT_NE(std::string(frugal_last_error_message()).find(message), std::string::npos)
        << frugal_last_error_message() << " lacks " << message;
  }
  // A version-3 caller's struct ends before segments: nothing past it is read.
  frugal_options old = defaults();
  old.struct_size = offsetof(frugal_options, segments);
  old.segment_count = 99;  // not this caller's field
  EXPECT_EQ(frugal_allreduce(group[0], x, 8, &old), FRUGAL_OK) << frugal_last_error_message();
}

// options->topk_gtopk (version 5) reaches the C++ allreduce: bit-identical to it with gtopk, and
// different from a call without; a version-4 caller's struct (no topk_gtopk) runs plain top-k.
TEST(CApiGtopk, EqualsTheCppApiAndOldStructsRunWithout) {
  constexpr std::size_t kCount = 4000;
  const auto input = [](int r) {
    std::vector<float> v(kCount);
    for (std::size_t i = 0; i < kCount; ++i) {
      v[i] = static_cast<float>(
          static_cast<int>((i * 7919 + static_cast<std::size_t>(r) * 104729) % 2001) - 1000);
    }
    return v;
  };
  std::vector<std::vector<float>> c_gtopk(4), c_old(4), cpp(4), cpp_plain(4);
  CGroup group(4);
  group.run([&](int r, frugal_comm* comm) {
    frugal_options o = defaults();
    o.method = FRUGAL_METHOD_TOPK;
    o.algorithm = FRUGAL_ALGORITHM_AUTO;
    o.density = 0.05;
    o.error_feedback = 0;
    o.topk_gtopk = 1;
    const auto ur = static_cast<std::size_t>(r);
    c_gtopk[ur] = input(r);
    EXPECT_EQ(frugal_allreduce(comm, c_gtopk[ur].data(), kCount, &o), FRUGAL_OK)
        << frugal_last_error_message();
    o.struct_size = offsetof(frugal_options, topk_gtopk);  // a version-4 caller
    o.algorithm = FRUGAL_ALGORITHM_SPARSE_RECURSIVE_DOUBLING;
    c_old[ur] = input(r);
    EXPECT_EQ(frugal_allreduce(comm, c_old[ur].data(), kCount, &o), FRUGAL_OK)
        << frugal_last_error_message();
  });
  frugal::testing::run_ranks(4, [&](frugal::Communicator& comm) {
    frugal::AllreduceOptions o;
    o.compression.method = frugal::compression::Method::TopK;
    o.compression.density = 0.05;
    o.error_feedback = false;
    o.algorithm = frugal::AllreduceAlgorithm::SparseRecursiveDoubling;
    const auto ur = static_cast<std::size_t>(comm.rank());
    cpp_plain[ur] = input(comm.rank());
    frugal::allreduce(comm, std::span<float>(cpp_plain[ur]), o);
    o.compression.gtopk = true;
    cpp[ur] = input(comm.rank());
    frugal::allreduce(comm, std::span<float>(cpp[ur]), o);
  });
  EXPECT_EQ(c_gtopk, cpp);
  EXPECT_EQ(c_old, cpp_plain);
  EXPECT_NE(cpp, cpp_plain);
}

// Buckets pass their tensors' boundaries on their own: a bucket of two tensors reduces as
// frugal_allreduce of the fused buffer with those segments, over steps with error feedback.
TEST(CApiSegments, BucketsPassTheirTensorBoundaries) {
  std::vector<std::vector<float>> via_buckets(2), via_allreduce(2);
  CGroup group(2);
  group.run([&](int r, frugal_comm* comm) {
    frugal_options o = defaults();
    o.method = FRUGAL_METHOD_ONEBIT;  // no random numbers: the buckets' seeds do not matter
    o.op = FRUGAL_OP_AVERAGE;
    frugal_buckets* buckets = nullptr;
    ASSERT_EQ(frugal_buckets_create(comm, &o, 1 << 20, &buckets), FRUGAL_OK);
    ASSERT_EQ(frugal_buckets_add(buckets, "small", 1000, nullptr), FRUGAL_OK);
    ASSERT_EQ(frugal_buckets_add(buckets, "large", 2000, nullptr), FRUGAL_OK);
    frugal_state* state = nullptr;
    ASSERT_EQ(frugal_state_create(1.0f, &state), FRUGAL_OK);
    const std::size_t segments[] = {1000, 2000};
    o.state = state;
    o.algorithm = FRUGAL_ALGORITHM_AUTO;  // as the buckets run it
    o.segments = segments;
    o.segment_count = 2;
    const auto ur = static_cast<std::size_t>(r);
    for (int step = 0; step < 3; ++step) {
      std::vector<float> fused = two_tensors(r, step);
      std::vector<float> small(fused.begin(), fused.begin() + 1000);
      std::vector<float> large(fused.begin() + 1000, fused.end());
      ASSERT_EQ(frugal_buckets_mark_ready(buckets, 1, large.data(), large.size()), FRUGAL_OK);
      ASSERT_EQ(frugal_buckets_mark_ready(buckets, 0, small.data(), small.size()), FRUGAL_OK);
      ASSERT_EQ(frugal_buckets_finish(buckets), FRUGAL_OK) << frugal_last_error_message();
      ASSERT_EQ(frugal_allreduce(comm, fused.data(), fused.size(), &o), FRUGAL_OK)
          << frugal_last_error_message();
      via_buckets[ur].insert(via_buckets[ur].end(), small.begin(), small.end());
      via_buckets[ur].insert(via_buckets[ur].end(), large.begin(), large.end());
      via_allreduce[ur].insert(via_allreduce[ur].end(), fused.begin(), fused.end());
    }
    frugal_state_destroy(state);
    frugal_buckets_destroy(buckets);
  });
  EXPECT_EQ(via_buckets, via_allreduce);
}
