// The C API under mpirun: communicators from MPI_Comm (MPI and, when built, UCX transports),
// checked against Open MPI's MPI_Allreduce (exact integer sums) and against the C++ API on the
// same inputs (bit-identical compressed results).

#include <gtest/gtest.h>
#include <mpi.h>

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "frugal/collectives/allreduce.hpp"
#include "frugal/frugal_mpi.h"
#include "frugal/mpi.hpp"

namespace {

int world_rank() {
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  return rank;
}

int world_size() {
  int size = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  return size;
}

std::vector<float> wave(int rank, int step, std::size_t n) {
  std::vector<float> v(n);
  for (std::size_t i = 0; i < n; ++i) {
    v[i] = std::cos(0.21f * static_cast<float>(i) + 0.9f * static_cast<float>(rank) +
                    0.3f * static_cast<float>(step));
  }
  return v;
}

std::vector<frugal_transport> transports() {
#ifdef FRUGAL_HAVE_UCX
  return {FRUGAL_TRANSPORT_MPI, FRUGAL_TRANSPORT_UCX};
#else
  return {FRUGAL_TRANSPORT_MPI};
#endif
}

TEST(CApiMpi, RankSizeAndExactSumsAgainstMpiAllreduce) {
  for (frugal_transport transport : transports()) {
    SCOPED_TRACE(transport);
    frugal_comm* comm = nullptr;
    ASSERT_EQ(frugal_comm_create_mpi(MPI_COMM_WORLD, transport, &comm), FRUGAL_OK)
        << frugal_last_error_message();
    int rank = -1, size = -1;
    EXPECT_EQ(frugal_comm_rank(comm, &rank), FRUGAL_OK);
    EXPECT_EQ(frugal_comm_size(comm, &size), FRUGAL_OK);
    EXPECT_EQ(rank, world_rank());
    EXPECT_EQ(size, world_size());
    for (std::size_t n : {std::size_t{1}, std::size_t{1000}, std::size_t{300001}}) {
      std::vector<float> v(n);
      for (std::size_t i = 0; i < n; ++i) v[i] = static_cast<float>((rank + 3) * (i % 101));
      std::vector<float> expected(n);
      MPI_Allreduce(v.data(), expected.data(), static_cast<int>(n), MPI_FLOAT, MPI_SUM,
                    MPI_COMM_WORLD);
      ASSERT_EQ(frugal_allreduce(comm, v.data(), n, nullptr), FRUGAL_OK)
          << frugal_last_error_message();
      ASSERT_EQ(v, expected);
    }
    frugal_comm_destroy(comm);
  }
}

TEST(CApiMpi, UcxTransportIsUnsupportedOnlyWithoutUcx) {
  frugal_comm* comm = nullptr;
  const frugal_status status = frugal_comm_create_mpi(MPI_COMM_WORLD, FRUGAL_TRANSPORT_UCX, &comm);
#ifdef FRUGAL_HAVE_UCX
  EXPECT_EQ(status, FRUGAL_OK) << frugal_last_error_message();
  EXPECT_EQ(FRUGAL_BUILT_WITH_UCX, 1);
#else
  EXPECT_EQ(status, FRUGAL_ERR_UNSUPPORTED);
  EXPECT_NE(std::string(frugal_last_error_message()).find("without UCX"), std::string::npos);
  EXPECT_EQ(comm, nullptr);
  EXPECT_EQ(FRUGAL_BUILT_WITH_UCX, 0);
#endif
  frugal_comm_destroy(comm);
}

TEST(CApiMpi, CompressedEqualsTheCppApi) {
  auto cpp_comm = frugal::make_mpi_communicator(MPI_COMM_WORLD);
  frugal_comm* comm = nullptr;
  ASSERT_EQ(frugal_comm_create_mpi_world(FRUGAL_TRANSPORT_MPI, &comm), FRUGAL_OK);
  const int rank = world_rank();
  for (int method = FRUGAL_METHOD_FP16; method <= FRUGAL_METHOD_QSGD; ++method) {
    SCOPED_TRACE(method);
    frugal_state* state = nullptr;
    ASSERT_EQ(frugal_state_create(1.0f, &state), FRUGAL_OK);
    frugal_options o;
    ASSERT_EQ(frugal_options_init(&o), FRUGAL_OK);
    o.method = method;
    o.op = FRUGAL_OP_AVERAGE;
    o.seed = 5;
    o.state = state;
    frugal::AllreduceState cpp_state;
    frugal::AllreduceOptions co;
    co.compression.method = static_cast<frugal::compression::Method>(method);
    co.op = frugal::ReduceOp::Average;
    co.seed = 5;
    co.state = &cpp_state;
    for (int step = 0; step < 3; ++step) {
      std::vector<float> a = wave(rank, step, 20000), b = a;
      // Alternate which API goes first, so the sequence numbers differ between the two.
      frugal_request* request = nullptr;
      ASSERT_EQ(frugal_allreduce_async(comm, a.data(), a.size(), &o, &request), FRUGAL_OK);
      frugal::allreduce(*cpp_comm, std::span<float>(b), co);
      ASSERT_EQ(frugal_wait(&request), FRUGAL_OK) << frugal_last_error_message();
      ASSERT_EQ(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)), 0) << "step " << step;
    }
    frugal_state_destroy(state);
  }
  frugal_comm_destroy(comm);
}

// frugal_reduce_scatter then frugal_allgather into the buffer's own shard equal
// frugal_allreduce with TWO_PHASE on every transport, step by step, for the quantizers.
TEST(CApiMpi, ReduceScatterAndAllgatherComposeToTheTwoPhaseAllreduce) {
  for (frugal_transport transport : transports()) {
    SCOPED_TRACE(transport);
    frugal_comm* comm = nullptr;
    ASSERT_EQ(frugal_comm_create_mpi(MPI_COMM_WORLD, transport, &comm), FRUGAL_OK)
        << frugal_last_error_message();
    const int rank = world_rank();
    const std::size_t n = 20001;
    size_t offset = 0, count = 0;
    ASSERT_EQ(frugal_shard_range(n, world_size(), rank, &offset, &count), FRUGAL_OK);
    for (const int method : {FRUGAL_METHOD_FP16, FRUGAL_METHOD_ONEBIT, FRUGAL_METHOD_QSGD}) {
      SCOPED_TRACE(method);
      frugal_state *rs = nullptr, *ag = nullptr, *ar = nullptr;
      ASSERT_EQ(frugal_state_create(1.0f, &rs), FRUGAL_OK);
      ASSERT_EQ(frugal_state_create(1.0f, &ag), FRUGAL_OK);
      ASSERT_EQ(frugal_state_create(1.0f, &ar), FRUGAL_OK);
      frugal_options o;
      ASSERT_EQ(frugal_options_init(&o), FRUGAL_OK);
      o.method = method;
      o.op = FRUGAL_OP_AVERAGE;
      o.seed = 3;
      frugal_options ors = o, oag = o, oar = o;
      ors.state = rs;
      oag.state = ag;
      oar.state = ar;
      oar.algorithm = FRUGAL_ALGORITHM_TWO_PHASE;
      for (int step = 0; step < 3; ++step) {
        std::vector<float> a = wave(rank, step, n), b = a;
        ASSERT_EQ(frugal_reduce_scatter(comm, a.data(), n, a.data() + offset, count, &ors),
                  FRUGAL_OK)
            << frugal_last_error_message();
        ASSERT_EQ(frugal_allgather(comm, a.data() + offset, count, a.data(), n, &oag), FRUGAL_OK)
            << frugal_last_error_message();
        ASSERT_EQ(frugal_allreduce(comm, b.data(), n, &oar), FRUGAL_OK)
            << frugal_last_error_message();
        ASSERT_EQ(std::memcmp(a.data(), b.data(), n * sizeof(float)), 0) << "step " << step;
      }
      frugal_state_destroy(rs);
      frugal_state_destroy(ag);
      frugal_state_destroy(ar);
    }
    frugal_comm_destroy(comm);
  }
}

// The accuracy guardrail over real processes: only rank 0's gradient holds a value 1-bit cannot
// send, so only its own residual ratio climbs; the ratio the guardrail decides on is over every
// rank's norms, so every rank moves the bucket to fp16 at the same step (3, the first the
// cooldown allows), reports the same event, and the results stay bit-identical (rank 0's
// broadcast and compared).
TEST(CApiMpi, GuardrailDecidesAlikeOnEveryRank) {
  constexpr std::size_t n = 4096;
  for (frugal_transport transport : transports()) {
    SCOPED_TRACE(transport);
    frugal_comm* comm = nullptr;
    ASSERT_EQ(frugal_comm_create_mpi(MPI_COMM_WORLD, transport, &comm), FRUGAL_OK)
        << frugal_last_error_message();
    const int rank = world_rank();
    frugal_guardrail_options g;
    ASSERT_EQ(frugal_guardrail_options_init(&g), FRUGAL_OK);
    g.lower = 0.5;
    g.upper = 2.5;
    g.patience = 100;
    g.cooldown = 3;
    g.smoothing = 1.0;
    frugal_options o;
    ASSERT_EQ(frugal_options_init(&o), FRUGAL_OK);
    o.method = FRUGAL_METHOD_ONEBIT;
    o.op = FRUGAL_OP_AVERAGE;
    o.guardrail = &g;
    frugal_buckets* buckets = nullptr;
    ASSERT_EQ(frugal_buckets_create(comm, &o, 0, &buckets), FRUGAL_OK)
        << frugal_last_error_message();
    ASSERT_EQ(frugal_buckets_add(buckets, "w", n, nullptr), FRUGAL_OK);
    std::vector<std::string> events;
    for (int step = 0; step < 6; ++step) {
      std::vector<float> grad(n);
      for (std::size_t i = 0; i < n; ++i)
        grad[i] = (i + static_cast<std::size_t>(step)) % 3 ? 1 : -1;
      if (rank == 0) grad[0] = 1000.0f;
      ASSERT_EQ(frugal_buckets_mark_ready(buckets, 0, grad.data(), n), FRUGAL_OK);
      ASSERT_EQ(frugal_buckets_finish(buckets), FRUGAL_OK) << frugal_last_error_message();
      size_t count = 0, rung = 9;
      int method = -1;
      ASSERT_EQ(frugal_buckets_guardrail_event_count(buckets, &count), FRUGAL_OK);
      for (size_t i = 0; i < count; ++i) {
        frugal_guardrail_event e;
        e.struct_size = sizeof e;
        ASSERT_EQ(frugal_buckets_guardrail_event(buckets, i, &e), FRUGAL_OK);
        events.push_back(std::to_string(e.step) + " " + e.from + "->" + e.to);
      }
      ASSERT_EQ(frugal_buckets_guardrail_bucket(buckets, 0, &rung, nullptr, &method), FRUGAL_OK);
      EXPECT_EQ(rung, step + 1 >= 3 ? 1u : 0u) << "after step " << step + 1;
      EXPECT_EQ(method, step + 1 >= 3 ? FRUGAL_METHOD_FP16 : FRUGAL_METHOD_ONEBIT);
      std::vector<float> root = grad;
      MPI_Bcast(root.data(), static_cast<int>(n), MPI_FLOAT, 0, MPI_COMM_WORLD);
      ASSERT_EQ(std::memcmp(root.data(), grad.data(), n * sizeof(float)), 0)
          << "step " << step + 1 << ": rank " << rank << "'s result differs from rank 0's";
    }
    EXPECT_EQ(events, std::vector<std::string>{"3 onebit->fp16"}) << "rank " << rank;
    frugal_buckets_destroy(buckets);
    frugal_comm_destroy(comm);
  }
}

// compression = auto: each rank's cost callback prices the default candidates (dense, fp16,
// ternary) its own way, rank 0 cheapest on dense and rank 1 on fp16; the agreed cost is the
// per-candidate max over the ranks, so every rank keeps ternary, which neither alone would, with
// the same events and bit-identical results.
double rank_cost(void* user, size_t, size_t candidate, double) {
  const double table[2][3] = {{1.0, 9.0, 2.0}, {9.0, 1.0, 2.0}};
  return table[*static_cast<const int*>(user) % 2][candidate];
}

TEST(CApiMpi, AutotuneDecidesAlikeOnEveryRank) {
  constexpr std::size_t n = 4096;
  for (frugal_transport transport : transports()) {
    SCOPED_TRACE(transport);
    frugal_comm* comm = nullptr;
    ASSERT_EQ(frugal_comm_create_mpi(MPI_COMM_WORLD, transport, &comm), FRUGAL_OK)
        << frugal_last_error_message();
    int rank = world_rank();
    int size = 0;
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    frugal_autotune_options a;
    ASSERT_EQ(frugal_autotune_options_init(&a), FRUGAL_OK);
    a.warmup = 2;
    a.trial_steps = 2;
    a.cost = rank_cost;
    a.cost_user = &rank;
    frugal_options o;
    ASSERT_EQ(frugal_options_init(&o), FRUGAL_OK);
    o.op = FRUGAL_OP_AVERAGE;
    o.autotune = &a;
    frugal_buckets* buckets = nullptr;
    ASSERT_EQ(frugal_buckets_create(comm, &o, 0, &buckets), FRUGAL_OK)
        << frugal_last_error_message();
    ASSERT_EQ(frugal_buckets_add(buckets, "w", n, nullptr), FRUGAL_OK);
    std::vector<std::string> events;
    for (int step = 0; step < 9; ++step) {
      std::vector<float> grad(n);
      for (std::size_t i = 0; i < n; ++i) {
        grad[i] = std::sin(0.01f * static_cast<float>(i) + static_cast<float>(step + rank));
      }
      ASSERT_EQ(frugal_buckets_mark_ready(buckets, 0, grad.data(), n), FRUGAL_OK);
      ASSERT_EQ(frugal_buckets_finish(buckets), FRUGAL_OK) << frugal_last_error_message();
      size_t count = 0;
      ASSERT_EQ(frugal_buckets_autotune_event_count(buckets, &count), FRUGAL_OK);
      for (size_t i = 0; i < count; ++i) {
        frugal_autotune_event e;
        e.struct_size = sizeof e;
        ASSERT_EQ(frugal_buckets_autotune_event(buckets, i, &e), FRUGAL_OK);
        std::string text = std::to_string(e.step) + " " + e.from + "->" + e.to;
        for (size_t c = 0; c < e.cost_count; ++c) {
          text += ' ';
          text += std::to_string(static_cast<int>(e.costs[c]));
        }
        events.push_back(text);
      }
      std::vector<float> root = grad;
      MPI_Bcast(root.data(), static_cast<int>(n), MPI_FLOAT, 0, MPI_COMM_WORLD);
      ASSERT_EQ(std::memcmp(root.data(), grad.data(), n * sizeof(float)), 0)
          << "step " << step + 1 << ": rank " << rank << "'s result differs from rank 0's";
    }
    // One rank alone would keep dense: its own costs decide then.
    const std::string decision = size > 1 ? "8 ternary->ternary 9 9 2" : "8 ternary->dense 1 9 2";
    EXPECT_EQ(events, (std::vector<std::string>{"4 dense->fp16", "6 fp16->ternary", decision}))
        << "rank " << rank;
    size_t candidate = 9;
    ASSERT_EQ(frugal_buckets_autotune_bucket(buckets, 0, &candidate), FRUGAL_OK);
    EXPECT_EQ(candidate, size > 1 ? 2u : 0u);
    frugal_buckets_destroy(buckets);
    frugal_comm_destroy(comm);
  }
}

}  // namespace
