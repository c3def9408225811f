// ErrorCode's name table: every code has the name Error's message starts with.

#include <gtest/gtest.h>

#include <string>

#include "frugal/enum_names.hpp"
#include "frugal/error.hpp"

namespace frugal {
namespace {

TEST(ErrorCodeNames, EveryCodeRoundTripsAndPrefixesTheMessage) {
  const std::vector<ErrorCode> codes = enum_values<ErrorCode>();
  EXPECT_EQ(codes.size(), 6u);
  for (const ErrorCode code : codes) {
    EXPECT_EQ(parse_enum<ErrorCode>(to_string(code)), code) << to_string(code);
    const Error e(code, "detail");
    EXPECT_EQ(std::string(e.what()), "frugal: " + std::string(to_string(code)) + ": detail");
  }
  EXPECT_EQ(enum_choices<ErrorCode>(),
            "invalid argument, mismatch, timeout, peer failure, transport error, internal error");
}

}  // namespace
}  // namespace frugal
