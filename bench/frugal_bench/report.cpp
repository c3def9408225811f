#include "report.hpp"

#include <charconv>
#include <cmath>
#include <cstdio>
#include <iterator>
#include <vector>

namespace frugal::bench {

namespace {

// printf into a std::string.
template <typename... Args>
std::string format(const char* pattern, Args... args) {
  const int n = std::snprintf(nullptr, 0, pattern, args...);
  std::string text(static_cast<std::size_t>(n), '\0');
  std::snprintf(text.data(), text.size() + 1, pattern, args...);
  return text;
}

constexpr const char* kRowFormat =
    "%12s  %-27s %5s %11s %11s %11s %11s %10s %10s %10s %7s %10s %7s %8s %6s %7s";

std::string fixed(double value, int decimals) {
  return format("%.*f", decimals, value);
}

// One output field: its name, and its value as JSON text ("null" when absent) plus whether it
// is a string (quoted in JSON, not in CSV).
struct Field {
  std::string_view key;
  std::string value;
  bool text = false;
};

Field field(std::string_view key, const std::string& value) {
  return {key, value, true};
}
Field field(std::string_view key, double value) {
  return {key, json_number(value)};
}
Field field(std::string_view key, std::uint64_t value) {
  return {key, std::to_string(value)};
}
Field field(std::string_view key, int value) {
  return {key, std::to_string(value)};
}
Field field(std::string_view key, const std::optional<double>& value) {
  return {key, value ? json_number(*value) : "null"};
}
Field field(std::string_view key, const std::optional<std::int64_t>& value) {
  return {key, value ? std::to_string(*value) : "null"};
}

// Every field of a row, in output order (JSON and CSV alike).
std::vector<Field> fields(const Row& row) {
  return {
      field("method", row.method),
      field("algorithm", row.algorithm),
      field("selected", row.selected),
      field("transport", row.transport),
      field("ranks", row.ranks),
      field("bytes", static_cast<std::uint64_t>(row.bytes)),
      field("dtype", row.dtype),
      field("op", row.op),
      field("iters", row.iters),
      field("warmup", row.warmup),
      field("median_us", row.median_us),
      field("p95_us", row.p95_us),
      field("min_us", row.min_us),
      field("max_us", row.max_us),
      field("algbw_gbps", row.algbw_gbps),
      field("busbw_gbps", row.busbw_gbps),
      field("vs_mpi", row.vs_mpi),
      field("check", row.check),
      field("wrong", row.wrong),
      field("wire_bytes_per_rank", row.wire_bytes_per_rank),
      field("compression_ratio", row.compression_ratio),
      field("effective_gbps", row.effective_gbps),
      field("rel_error", row.rel_error),
      field("encode_us", row.encode_us),
      field("comm_us", row.comm_us),
      field("decode_us", row.decode_us),
  };
}

std::string csv_cell(std::string_view text) {
  if (text.find_first_of(",\"\r\n") == std::string_view::npos) return std::string(text);
  std::string out = "\"";
  for (const char c : text) {
    out += c;
    if (c == '"') out += '"';
  }
  return out + "\"";
}

}  // namespace

std::string display_algorithm(const Row& row) {
  // auto shows what it chose, so "onebit/auto(two_phase)" and a named "onebit/two_phase" differ.
  const std::string algorithm =
      row.algorithm == "auto" ? "auto(" + row.selected + ")" : row.algorithm;
  if (row.method != "dense" && row.method != "mpi" && row.method != "memcpy")
    return row.method + "/" + algorithm;
  return algorithm;
}

std::string table_header() {
  return format(kRowFormat, "bytes", "algorithm", "iters", "median_us", "p95_us", "min_us",
                "max_us", "algbw_GB/s", "busbw_GB/s", "eff_GB/s", "vs_mpi", "wire/rank", "ratio",
                "rel_err", "check", "wrong");
}

std::string table_row(const Row& row) {
  const std::string check = row.check == "off" ? "-" : row.check == "wrong" ? "WRONG" : row.check;
  return format(kRowFormat, std::to_string(row.bytes).c_str(), display_algorithm(row).c_str(),
                std::to_string(row.iters).c_str(), fixed(row.median_us, 2).c_str(),
                fixed(row.p95_us, 2).c_str(), fixed(row.min_us, 2).c_str(),
                fixed(row.max_us, 2).c_str(), fixed(row.algbw_gbps, 3).c_str(),
                fixed(row.busbw_gbps, 3).c_str(), fixed(row.effective_gbps, 3).c_str(),
                row.vs_mpi ? fixed(*row.vs_mpi, 2).c_str() : "-",
                row.wire_bytes_per_rank
                    ? human_bytes(static_cast<std::size_t>(*row.wire_bytes_per_rank)).c_str()
                    : "-",
                row.compression_ratio ? fixed(*row.compression_ratio, 1).c_str() : "-",
                row.rel_error ? format("%.1e", *row.rel_error).c_str() : "-", check.c_str(),
                row.wrong ? std::to_string(*row.wrong).c_str() : "-");
}

std::string human_bytes(std::size_t bytes) {
  static constexpr const char* kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  std::size_t unit = 0;
  double value = static_cast<double>(bytes);
  while (value >= 1024 && unit + 1 < std::size(kUnits)) {
    value /= 1024;
    ++unit;
  }
  if (value == std::floor(value)) return format("%.0f %s", value, kUnits[unit]);
  return format("%.1f %s", value, kUnits[unit]);
}

std::string json_line(const Row& row) {
  std::string out = "{";
  for (const Field& f : fields(row)) {
    if (out.size() > 1) out += ", ";
    out += json_string(f.key) + ": " + (f.text ? json_string(f.value) : f.value);
  }
  return out + "}";
}

std::string csv_header() {
  std::string out;
  for (const Field& f : fields(Row{})) {
    if (!out.empty()) out += ',';
    out += f.key;
  }
  return out;
}

std::string csv_line(const Row& row) {
  std::string out;
  bool first = true;
  for (const Field& f : fields(row)) {
    if (!first) out += ',';
    first = false;
    if (f.text) {
      out += csv_cell(f.value);
    } else if (f.value != "null") {
      out += f.value;
    }
  }
  return out;
}

std::string json_string(std::string_view text) {
  std::string out = "\"";
  for (const char c : text) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          out += format("\\u%04x", static_cast<unsigned>(static_cast<unsigned char>(c)));
        } else {
          out += c;
        }
    }
  }
  return out + "\"";
}

std::string json_number(double value) {
  if (!std::isfinite(value)) return "null";
  char buffer[64];
  const auto result = std::to_chars(buffer, buffer + sizeof buffer, value);
  return std::string(buffer, result.ptr);
}

}  // namespace frugal::bench
