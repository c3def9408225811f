#pragma once

// frugal-model's command-line pieces: numbers, rates and times as the user writes them, and the
// flags of one subcommand. Bad input is a frugal::bench::UsageError naming the flag.

#include <map>
#include <string>
#include <vector>

namespace frugal::model {

// A finite number; UsageError naming `flag` otherwise.
double parse_number(const std::string& text, const std::string& flag);
// "<number>(bit|kbit|mbit|gbit)", decimal as tc writes it -> bytes per second (1gbit = 125e6).
double parse_rate(const std::string& text);
// "0" or "<number>(us|ms|s)" -> seconds.
double parse_time(const std::string& text);
// A whole number in [min, 1e12].
long parse_count(const std::string& text, const std::string& flag, long min);
// "a,b,c" -> {a, b, c}; an empty entry is an error naming `flag`.
std::vector<std::string> split(const std::string& text, const std::string& flag);

// Flags and positional arguments of one subcommand.
struct Args {
  std::map<std::string, std::string> values;
  std::vector<std::string> positional;
  bool has(const std::string& flag) const { return values.count(flag) > 0; }
  std::string get(const std::string& flag, const std::string& fallback = "") const;
  // The flag's value; UsageError "<command> needs <flag>" without it.
  std::string need(const std::string& flag, const std::string& command) const;
};

// argv[2..]: every "--flag" must be one of `with_value` (takes the next argument) or `switches`;
// anything else is an unknown option of `command`.
Args parse_args(int argc, const char* const* argv, const std::string& command,
                const std::vector<std::string>& with_value,
                const std::vector<std::string>& switches);

}  // namespace frugal::model
