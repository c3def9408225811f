// The name tables of the compression enums: every value has a name that parses back to it, and
// the names are the ones command lines, logs and messages have always used.

#include <gtest/gtest.h>

#include <cstdint>

#include "frugal/compression/compressor.hpp"
#include "frugal/compression/payload.hpp"
#include "frugal/compression/simd.hpp"
#include "frugal/enum_names.hpp"

namespace frugal::compression {
namespace {

template <NamedEnum E>
void expect_round_trip(std::size_t count, std::string_view choices) {
  const std::vector<E> values = enum_values<E>();
  EXPECT_EQ(values.size(), count) << choices;
  for (const E value : values) {
    EXPECT_NE(enum_name(value), "unknown");
    EXPECT_EQ(parse_enum<E>(enum_name(value)), value) << enum_name(value);
  }
  EXPECT_EQ(enum_choices<E>(), choices);
}

TEST(Names, EveryTableRoundTrips) {
  expect_round_trip<Method>(7, "none, fp16, bf16, topk, onebit, ternary, qsgd");
  expect_round_trip<NonFinitePolicy>(2, "error, flag");
  expect_round_trip<TopKSelection>(2, "exact, sampled");
  expect_round_trip<TopKValues>(2, "fp32, fp16");
  expect_round_trip<OneBitScaling>(2, "mean-abs, sign-means");
  expect_round_trip<QsgdNorm>(2, "l2, max");
  expect_round_trip<SimdLevel>(3, "scalar, avx2, avx512");
}

// The method's numbers are on the wire (PayloadHeader::method, appended only): every number a
// header may carry has a name, in wire order, and to_string agrees with the table.
TEST(Names, EveryWireMethodIsNamed) {
  const std::vector<Method> values = enum_values<Method>();
  for (std::size_t i = 0; i < values.size(); ++i) {
    EXPECT_EQ(static_cast<std::uint8_t>(values[i]), i);
    EXPECT_EQ(to_string(values[i]), enum_name(values[i]));
  }
  EXPECT_EQ(to_string(static_cast<Method>(values.size())), "unknown");
  EXPECT_FALSE(parse_enum<Method>("dense").has_value());
  EXPECT_FALSE(parse_enum<Method>("TopK").has_value());
}

}  // namespace
}  // namespace frugal::compression
