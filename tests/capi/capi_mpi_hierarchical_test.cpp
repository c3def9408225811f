// frugal_options.hierarchical under mpirun as two "hosts" of two ranks each (FRUGAL_HOST_ID set
// per rank through mpirun's application contexts; see tests/capi/meson.build): the buckets'
// results against the exact sum (dense) and bit-identical on every rank (1-bit), the wire bytes
// against the flat run's (hierarchical counts only what crosses hosts), a version-6 struct that
// leaves the field out reducing flat, and the guardrail refused by name on every rank; as two
// hosts of unequal size (2 + 1 ranks), refused naming `topology` on every rank.

#include <gtest/gtest.h>
#include <mpi.h>

#include <cmath>
#include <cstddef>
#include <cstring>
#include <string>
#include <vector>

#include "frugal/frugal_mpi.h"

namespace {

constexpr std::size_t kMatrix = 6000;  // a compressed bucket under 1-bit
constexpr std::size_t kVector = 200;   // a dense bucket of its own (dense_vectors)
constexpr int kSteps = 3;

int world(int (*query)(MPI_Comm, int*)) {
  int value = 0;
  query(MPI_COMM_WORLD, &value);
  return value;
}

// Small integers: their sum over the ranks is exact in float whatever the order.
float integer_input(int rank, int step, std::size_t i) {
  return static_cast<float>(
      static_cast<int>((i * 7 + static_cast<std::size_t>(rank * 13 + step)) % 19) - 9);
}

float wave_input(int rank, int step, std::size_t i) {
  return std::sin(0.37f * static_cast<float>(i) + 1.1f * static_cast<float>(rank) +
                  0.5f * static_cast<float>(step));
}

struct Reduced {
  std::vector<std::vector<float>> matrix, vector;  // per step, after finish
  std::size_t wire_bytes = 0;                      // summed over steps and ranks
};

// kSteps steps of buckets with `options` over a matrix and a vector tensor.
Reduced run(frugal_comm* comm, const frugal_options& options,
            float (*input)(int, int, std::size_t)) {
  Reduced out;
  frugal_buckets* buckets = nullptr;
  EXPECT_EQ(frugal_buckets_create(comm, &options, 0, &buckets), FRUGAL_OK)
      << frugal_last_error_message();
  if (buckets == nullptr) return out;
  size_t matrix_id = 0, vector_id = 0;
  EXPECT_EQ(frugal_buckets_add_tensor(buckets, "w", kMatrix, 2, &matrix_id), FRUGAL_OK);
  EXPECT_EQ(frugal_buckets_add_tensor(buckets, "b", kVector, 1, &vector_id), FRUGAL_OK);
  const int rank = world(MPI_Comm_rank);
  std::size_t mine = 0;
  for (int step = 0; step < kSteps; ++step) {
    std::vector<float> w(kMatrix), b(kVector);
    for (std::size_t i = 0; i < kMatrix; ++i) w[i] = input(rank, step, i);
    for (std::size_t i = 0; i < kVector; ++i) b[i] = input(rank, step, i + kMatrix);
    EXPECT_EQ(frugal_buckets_mark_ready(buckets, vector_id, b.data(), b.size()), FRUGAL_OK);
    EXPECT_EQ(frugal_buckets_mark_ready(buckets, matrix_id, w.data(), w.size()), FRUGAL_OK);
    EXPECT_EQ(frugal_buckets_finish(buckets), FRUGAL_OK) << frugal_last_error_message();
    size_t bytes = 0;
    EXPECT_EQ(frugal_buckets_last_step_wire_bytes(buckets, &bytes), FRUGAL_OK);
    mine += bytes;
    out.matrix.push_back(std::move(w));
    out.vector.push_back(std::move(b));
  }
  frugal_buckets_destroy(buckets);
  unsigned long long total = 0, local = mine;
  MPI_Allreduce(&local, &total, 1, MPI_UNSIGNED_LONG_LONG, MPI_SUM, MPI_COMM_WORLD);
  out.wire_bytes = static_cast<std::size_t>(total);
  return out;
}

frugal_options options_for(int method, int hierarchical) {
  frugal_options o;
  EXPECT_EQ(frugal_options_init(&o), FRUGAL_OK);
  o.method = method;
  o.hierarchical = hierarchical;
  return o;
}

// Rank 0's copy of `v` equals this rank's, bit for bit.
bool same_as_rank0(const std::vector<float>& v) {
  std::vector<float> root(v);
  MPI_Bcast(root.data(), static_cast<int>(root.size()), MPI_FLOAT, 0, MPI_COMM_WORLD);
  return std::memcmp(root.data(), v.data(), v.size() * sizeof(float)) == 0;
}

class CApiMpiHierarchical : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_EQ(world(MPI_Comm_size), 4) << "run as two hosts of two ranks (tests/capi/meson.build)";
    ASSERT_EQ(frugal_comm_create_mpi(MPI_COMM_WORLD, FRUGAL_TRANSPORT_MPI, &comm_), FRUGAL_OK)
        << frugal_last_error_message();
  }
  void TearDown() override { frugal_comm_destroy(comm_); }
  frugal_comm* comm_ = nullptr;
};

TEST_F(CApiMpiHierarchical, DenseBucketsAreTheExactSumAndSendLessBetweenHosts) {
  const Reduced flat = run(comm_, options_for(FRUGAL_METHOD_NONE, 0), integer_input);
  const Reduced hier = run(comm_, options_for(FRUGAL_METHOD_NONE, 1), integer_input);
  ASSERT_EQ(hier.matrix.size(), static_cast<std::size_t>(kSteps));
  for (int step = 0; step < kSteps; ++step) {
    for (std::size_t i = 0; i < kMatrix + kVector; ++i) {
      float sum = 0;
      for (int r = 0; r < 4; ++r) sum += integer_input(r, step, i);
      const float got = i < kMatrix ? hier.matrix[static_cast<std::size_t>(step)][i]
                                    : hier.vector[static_cast<std::size_t>(step)][i - kMatrix];
      ASSERT_EQ(got, sum) << "step " << step << " element " << i;
    }
  }
  // Flat ring over 4 ranks: each sends 2 * 3/4 of the buffer; hierarchical: only each rank's
  // half share crosses hosts, 2 * 1/2 of it: a third of the flat bytes.
  EXPECT_GT(hier.wire_bytes, 0u);
  EXPECT_LT(hier.wire_bytes * 2, flat.wire_bytes)
      << "hierarchical " << hier.wire_bytes << " flat " << flat.wire_bytes;
}

TEST_F(CApiMpiHierarchical, OnebitIsBitIdenticalOnEveryRankAndSendsLessBetweenHosts) {
  const Reduced flat = run(comm_, options_for(FRUGAL_METHOD_ONEBIT, 0), wave_input);
  const Reduced hier = run(comm_, options_for(FRUGAL_METHOD_ONEBIT, 1), wave_input);
  ASSERT_EQ(hier.matrix.size(), static_cast<std::size_t>(kSteps));
  for (int step = 0; step < kSteps; ++step) {
    const auto s = static_cast<std::size_t>(step);
    EXPECT_TRUE(same_as_rank0(hier.matrix[s])) << "step " << step;
    EXPECT_TRUE(same_as_rank0(hier.vector[s])) << "step " << step;
    // The dense bucket is exact up to the order of a float sum of four terms.
    for (std::size_t i = 0; i < kVector; ++i) {
      float sum = 0;
      for (int r = 0; r < 4; ++r) sum += wave_input(r, step, i + kMatrix);
      ASSERT_NEAR(hier.vector[s][i], sum, 1e-5f) << "step " << step << " element " << i;
    }
  }
  EXPECT_GT(hier.wire_bytes, 0u);
  EXPECT_LT(hier.wire_bytes * 3, flat.wire_bytes * 2)
      << "hierarchical " << hier.wire_bytes << " flat " << flat.wire_bytes;
}

TEST_F(CApiMpiHierarchical, AVersion6StructReducesFlat) {
  const Reduced flat = run(comm_, options_for(FRUGAL_METHOD_ONEBIT, 0), wave_input);
  frugal_options old = options_for(FRUGAL_METHOD_ONEBIT, 1);
  old.struct_size = offsetof(frugal_options, hierarchical);  // a version-6 caller
  const Reduced v6 = run(comm_, old, wave_input);
  EXPECT_EQ(v6.wire_bytes, flat.wire_bytes);
  ASSERT_EQ(v6.matrix.size(), flat.matrix.size());
  for (std::size_t s = 0; s < flat.matrix.size(); ++s) {
    EXPECT_EQ(std::memcmp(v6.matrix[s].data(), flat.matrix[s].data(), kMatrix * sizeof(float)), 0)
        << "step " << s;
  }
}

TEST_F(CApiMpiHierarchical, GuardrailIsRefusedByNameOnEveryRank) {
  frugal_guardrail_options g;
  ASSERT_EQ(frugal_guardrail_options_init(&g), FRUGAL_OK);
  frugal_options o = options_for(FRUGAL_METHOD_ONEBIT, 1);
  o.guardrail = &g;
  frugal_buckets* buckets = nullptr;
  EXPECT_EQ(frugal_buckets_create(comm_, &o, 0, &buckets), FRUGAL_ERR_INVALID_ARGUMENT);
  EXPECT_EQ(buckets, nullptr);
  const std::string message = frugal_last_error_message();
  EXPECT_NE(message.find("hierarchical"), std::string::npos) << message;
  EXPECT_NE(message.find("guardrail"), std::string::npos) << message;
  // Nothing was sent: the communicator still works.
  float one = 1;
  EXPECT_EQ(frugal_allreduce(comm_, &one, 1, nullptr), FRUGAL_OK) << frugal_last_error_message();
  EXPECT_EQ(one, 4.0f);
}

}  // namespace

namespace {

// Run as three processes, two on host a and one on host b (tests/capi/meson.build).
TEST(CApiMpiHierarchicalUnequal, HostsOfUnequalSizeAreRefusedOnEveryRank) {
  ASSERT_EQ(world(MPI_Comm_size), 3);
  frugal_comm* comm = nullptr;
  ASSERT_EQ(frugal_comm_create_mpi(MPI_COMM_WORLD, FRUGAL_TRANSPORT_MPI, &comm), FRUGAL_OK)
      << frugal_last_error_message();
  frugal_options o = options_for(FRUGAL_METHOD_ONEBIT, 1);
  frugal_buckets* buckets = nullptr;
  EXPECT_EQ(frugal_buckets_create(comm, &o, 0, &buckets), FRUGAL_ERR_INVALID_ARGUMENT);
  EXPECT_EQ(buckets, nullptr);
  const std::string message = frugal_last_error_message();
  EXPECT_NE(message.find("topology"), std::string::npos) << message;
  // The same options without hierarchical are fine on these ranks.
  o.hierarchical = 0;
  EXPECT_EQ(frugal_buckets_create(comm, &o, 0, &buckets), FRUGAL_OK) << frugal_last_error_message();
  frugal_buckets_destroy(buckets);
  frugal_comm_destroy(comm);
}

}  // namespace
