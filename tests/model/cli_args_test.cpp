// frugal-model's command-line parsing: the units a wrong conversion would silently skew every
// prediction with, and bad values refused by flag.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "cli.hpp"
#include "options.hpp"

namespace frugal::model {
namespace {

using bench::UsageError;

TEST(CliArgs, RatesAreDecimalBitsAsTcWritesThem) {
  EXPECT_DOUBLE_EQ(parse_rate("1gbit"), 125e6);
  EXPECT_DOUBLE_EQ(parse_rate("100mbit"), 12.5e6);
  EXPECT_DOUBLE_EQ(parse_rate("25gbit"), 3.125e9);
  EXPECT_DOUBLE_EQ(parse_rate("8kbit"), 1000);
  EXPECT_DOUBLE_EQ(parse_rate("2.5gbit"), 312.5e6);
  for (const std::string bad : {"1gbps", "gbit", "-1gbit", "0gbit", "1 gbit", "1e3mbit", ""}) {
    try {
      parse_rate(bad);
      ADD_FAILURE() << "'" << bad << "' accepted";
    } catch (const UsageError& e) {
      EXPECT_NE(std::string(e.what()).find("--rate"), std::string::npos) << e.what();
    }
  }
}

TEST(CliArgs, TimesInSeconds) {
  EXPECT_DOUBLE_EQ(parse_time("0"), 0);
  EXPECT_DOUBLE_EQ(parse_time("50us"), 50e-6);
  EXPECT_DOUBLE_EQ(parse_time("1.5ms"), 1.5e-3);
  EXPECT_DOUBLE_EQ(parse_time("2s"), 2);
  EXPECT_THROW(parse_time("1min"), UsageError);
  EXPECT_THROW(parse_time("ms"), UsageError);
  EXPECT_THROW(parse_time("-1ms"), UsageError);
}

TEST(CliArgs, CountsAndLists) {
  EXPECT_EQ(parse_count("1024", "--ranks", 1), 1024);
  EXPECT_THROW(parse_count("0", "--ranks", 1), UsageError);
  EXPECT_THROW(parse_count("2.5", "--ranks", 1), UsageError);
  EXPECT_THROW(parse_count("many", "--ranks", 1), UsageError);
  EXPECT_EQ(split("16,32", "--ranks"), (std::vector<std::string>{"16", "32"}));
  EXPECT_THROW(split("16,,32", "--ranks"), UsageError);
}

TEST(CliArgs, FlagsOfOneCommand) {
  const char* argv[] = {"frugal-model", "compare", "--rate", "1gbit", "rows.jsonl", "--markdown"};
  const Args args = parse_args(6, argv, "compare", {"--rate"}, {"--markdown"});
  EXPECT_EQ(args.get("--rate"), "1gbit");
  EXPECT_TRUE(args.has("--markdown"));
  EXPECT_EQ(args.positional, std::vector<std::string>{"rows.jsonl"});
  EXPECT_THROW(args.need("--calibration", "compare"), UsageError);
  const char* unknown[] = {"frugal-model", "compare", "--speed", "1"};
  EXPECT_THROW(parse_args(4, unknown, "compare", {"--rate"}, {}), UsageError);
  const char* missing[] = {"frugal-model", "compare", "--rate"};
  EXPECT_THROW(parse_args(3, missing, "compare", {"--rate"}, {}), UsageError);
}

}  // namespace
}  // namespace frugal::model
