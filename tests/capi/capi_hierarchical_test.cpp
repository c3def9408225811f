// frugal_options.hierarchical in-process (loopback ranks, one host): its default and versioning
// (a version-6 struct never reads it), the guardrail refused by name, and buckets on a single
// host, where nothing crosses hosts: no inter-host bytes, where the flat run sends some. Two
// hosts under mpirun: capi_mpi_hierarchical_test.cpp.
#include <gtest/gtest.h>

#include <cstddef>
#include <string>
#include <vector>

#include "c_group.hpp"
#include "frugal/frugal.h"

namespace {

using frugal::capi_test::CGroup;

frugal_options onebit(int hierarchical) {
  frugal_options o;
  EXPECT_EQ(frugal_options_init(&o), FRUGAL_OK);
  o.method = FRUGAL_METHOD_ONEBIT;
  o.hierarchical = hierarchical;
  return o;
}

TEST(CApiHierarchical, OffByDefaultAndLeftAloneByAVersion6Init) {
  frugal_options o;
  ASSERT_EQ(frugal_options_init(&o), FRUGAL_OK);
  EXPECT_EQ(o.hierarchical, 0);
  o.hierarchical = 7;
  ASSERT_EQ(frugal_options_init_sized(&o, offsetof(frugal_options, hierarchical)), FRUGAL_OK);
  EXPECT_EQ(o.hierarchical, 7);  // beyond a version-6 struct: not written
}

TEST(CApiHierarchical, GuardrailIsRefusedByName) {
  CGroup group(1);
  frugal_guardrail_options g;
  ASSERT_EQ(frugal_guardrail_options_init(&g), FRUGAL_OK);
  frugal_options o = onebit(1);
  o.guardrail = &g;
  frugal_buckets* b = nullptr;
  EXPECT_EQ(frugal_buckets_create(group[0], &o, 0, &b), FRUGAL_ERR_INVALID_ARGUMENT);
  EXPECT_EQ(b, nullptr);
  const std::string message = frugal_last_error_message();
  EXPECT_NE(message.find("hierarchical"), std::string::npos) << message;
  EXPECT_NE(message.find("guardrail"), std::string::npos) << message;
  // A version-6 caller never sets the field, whatever its bytes hold: the guardrail alone, which
  // is accepted.
  o.struct_size = offsetof(frugal_options, hierarchical);
  ASSERT_EQ(frugal_buckets_create(group[0], &o, 0, &b), FRUGAL_OK) << frugal_last_error_message();
  frugal_buckets_destroy(b);
}

// Two ranks of one host: hierarchical reduces within the host only.
std::size_t two_ranks_one_host(int method, int hierarchical, std::vector<std::vector<float>>* out) {
  CGroup group(2);
  std::vector<std::size_t> wire(2, 0);
  out->assign(2, {});
  group.run([&](int rank, frugal_comm* comm) {
    frugal_options o = onebit(hierarchical);
    o.method = method;
    frugal_buckets* b = nullptr;
    ASSERT_EQ(frugal_buckets_create(comm, &o, 0, &b), FRUGAL_OK) << frugal_last_error_message();
    size_t id = 0;
    ASSERT_EQ(frugal_buckets_add(b, "w", 1000, &id), FRUGAL_OK);
    std::vector<float> g(1000);
    for (std::size_t i = 0; i < g.size(); ++i) g[i] = static_cast<float>((i % 9) + rank);
    EXPECT_EQ(frugal_buckets_mark_ready(b, id, g.data(), g.size()), FRUGAL_OK);
    EXPECT_EQ(frugal_buckets_finish(b), FRUGAL_OK) << frugal_last_error_message();
    EXPECT_EQ(frugal_buckets_last_step_wire_bytes(b, &wire[static_cast<std::size_t>(rank)]),
              FRUGAL_OK);
    (*out)[static_cast<std::size_t>(rank)] = g;
    frugal_buckets_destroy(b);
  });
  return wire[0] + wire[1];
}

TEST(CApiHierarchical, OneHostSendsNothingBetweenHosts) {
  std::vector<std::vector<float>> flat, hier;
  EXPECT_GT(two_ranks_one_host(FRUGAL_METHOD_ONEBIT, 0, &flat), 0u);
  // The host's sum is made densely within the host; the 1-bit step across one host sends nothing.
  EXPECT_EQ(two_ranks_one_host(FRUGAL_METHOD_ONEBIT, 1, &hier), 0u);
  ASSERT_EQ(hier[0].size(), 1000u);
  EXPECT_EQ(hier[0], hier[1]);
}

TEST(CApiHierarchical, WireBytesNeedsAnOutput) {
  CGroup group(1);
  frugal_buckets* b = nullptr;
  ASSERT_EQ(frugal_buckets_create(group[0], nullptr, 0, &b), FRUGAL_OK);
  size_t bytes = 99;
  EXPECT_EQ(frugal_buckets_last_step_wire_bytes(b, &bytes), FRUGAL_OK);
  EXPECT_EQ(bytes, 0u);  // before the first finish
  EXPECT_EQ(frugal_buckets_last_step_wire_bytes(b, nullptr), FRUGAL_ERR_INVALID_ARGUMENT);
  EXPECT_EQ(frugal_buckets_last_step_wire_bytes(nullptr, &bytes), FRUGAL_ERR_INVALID_ARGUMENT);
  frugal_buckets_destroy(b);
}

}  // namespace
