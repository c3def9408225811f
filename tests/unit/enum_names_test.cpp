#include "frugal/enum_names.hpp"

#include <gtest/gtest.h>

#include "frugal/dtype.hpp"

namespace frugal {
namespace {

enum class Colour { Red, Green, Blue };

}  // namespace

template <>
struct EnumNames<Colour> {
  static constexpr std::array<EnumName<Colour>, 4> table{{{Colour::Red, "red"},
                                                          {Colour::Green, "green"},
                                                          {Colour::Blue, "blue"},
                                                          {Colour::Green, "verde"}}};
};

namespace {

TEST(EnumNames, NameAndParseRoundTripEveryValue) {
  for (Colour c : enum_values<Colour>()) {
    EXPECT_EQ(parse_enum<Colour>(enum_name(c)), c) << enum_name(c);
  }
  EXPECT_EQ(enum_values<Colour>().size(), 3u);
}

TEST(EnumNames, AliasesParseButAreNotCanonical) {
  EXPECT_EQ(parse_enum<Colour>("verde"), Colour::Green);
  EXPECT_EQ(enum_name(Colour::Green), "green");
  EXPECT_EQ(enum_choices<Colour>(), "red, green, blue");
  EXPECT_EQ(enum_choices<Colour>("|"), "red|green|blue");
}

TEST(EnumNames, UnknownTextAndValues) {
  EXPECT_FALSE(parse_enum<Colour>("Red").has_value());  // names are case-sensitive
  EXPECT_FALSE(parse_enum<Colour>("").has_value());
  EXPECT_EQ(enum_name(static_cast<Colour>(42)), "unknown");
}

TEST(EnumNames, DTypeAndReduceOpTables) {
  static_assert(to_string(DType::Float64) == "float64");
  EXPECT_EQ(parse_enum<DType>("int32"), DType::Int32);
  EXPECT_EQ(enum_choices<DType>(), "float32, float64, int32");
  EXPECT_EQ(to_string(ReduceOp::Average), "average");
  EXPECT_EQ(parse_enum<ReduceOp>("sum"), ReduceOp::Sum);
}

}  // namespace
}  // namespace frugal
