#include "cli.hpp"

#include <cmath>
#include <exception>

#include "options.hpp"

namespace frugal::model {

using bench::UsageError;

double parse_number(const std::string& text, const std::string& flag) {
  std::size_t used = 0;
  double v = 0;
  try {
    v = std::stod(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used == 0 || !std::isfinite(v)) throw UsageError(flag + ": '" + text + "' is not a number");
  return v;
}

double parse_rate(const std::string& text) {
  static const std::map<std::string, double> units{
      {"gbit", 1e9}, {"mbit", 1e6}, {"kbit", 1e3}, {"bit", 1}};
  for (const auto& [unit, scale] : units) {
    if (text.size() > unit.size() && text.ends_with(unit)) {
      const std::string number = text.substr(0, text.size() - unit.size());
      const double v = parse_number(number, "--rate");
      if (v > 0 && number.find_first_not_of("0123456789.") == std::string::npos) {
        return v * scale / 8;
      }
    }
  }
  throw UsageError("--rate: '" + text + "' is not a rate such as 100mbit or 1gbit");
}

double parse_time(const std::string& text) {
  if (text == "0") return 0;
  static const std::vector<std::pair<std::string, double>> units{
      {"us", 1e-6}, {"ms", 1e-3}, {"s", 1}};
  for (const auto& [unit, scale] : units) {
    if (text.size() > unit.size() && text.ends_with(unit)) {
      const std::string number = text.substr(0, text.size() - unit.size());
      if (number.find_first_not_of("0123456789.") != std::string::npos) continue;
      return parse_number(number, "--latency") * scale;
    }
  }
  throw UsageError("--latency: '" + text + "' is not a time such as 0, 50us or 1ms");
}

long parse_count(const std::string& text, const std::string& flag, long min) {
  const double v = parse_number(text, flag);
  if (v != std::floor(v) || v < static_cast<double>(min) || v > 1e12) {
    throw UsageError(flag + ": '" + text + "' is not a whole number >= " + std::to_string(min));
  }
  return static_cast<long>(v);
}

std::vector<std::string> split(const std::string& text, const std::string& flag) {
  std::vector<std::string> parts;
  std::size_t start = 0;
  while (true) {
    const std::size_t comma = text.find(',', start);
    const std::string part = text.substr(start, comma - start);
    if (part.empty()) throw UsageError(flag + ": empty entry in '" + text + "'");
    parts.push_back(part);
    if (comma == std::string::npos) return parts;
    start = comma + 1;
  }
}

std::string Args::get(const std::string& flag, const std::string& fallback) const {
  const auto it = values.find(flag);
  return it == values.end() ? fallback : it->second;
}

std::string Args::need(const std::string& flag, const std::string& command) const {
  if (!has(flag)) throw UsageError(command + " needs " + flag);
  return get(flag);
}

Args parse_args(int argc, const char* const* argv, const std::string& command,
                const std::vector<std::string>& with_value,
                const std::vector<std::string>& switches) {
  Args args;
  for (int i = 2; i < argc; ++i) {
    const std::string a = argv[i];
    if (a.rfind("--", 0) != 0) {
      args.positional.push_back(a);
      continue;
    }
    auto known = [&](const std::vector<std::string>& list) {
      for (const std::string& f : list) {
        if (f == a) return true;
      }
      return false;
    };
    if (known(switches)) {
      args.values[a].assign(1, '1');  // not = "1": GCC 12 -Wrestrict false positive
    } else if (known(with_value)) {
      if (i + 1 >= argc) throw UsageError(a + " needs a value");
      args.values[a] = argv[++i];
    } else {
      throw UsageError("unknown option '" + a + "' for " + command);
    }
  }
  return args;
}

}  // namespace frugal::model
