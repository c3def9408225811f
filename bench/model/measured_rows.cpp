#include "measured_rows.hpp"

#include <cctype>
#include <cmath>
#include <fstream>
#include <istream>
#include <map>
#include <sstream>

#include "frugal/error.hpp"

namespace frugal::model {

namespace {

// A flat JSON object's members as text: strings unquoted (frugal-bench writes no escapes in
// the fields read here), numbers and null as written.
class FlatObject {
 public:
  FlatObject(const std::string& line, const std::string& where) : where_(where) {
    std::size_t i = skip(line, 0);
    expect(line, i, '{');
    i = skip(line, i + 1);
    while (i < line.size() && line[i] != '}') {
      const std::string key = string_at(line, i);
      i = skip(line, i);
      expect(line, i, ':');
      i = skip(line, i + 1);
      std::string value;
      if (i < line.size() && line[i] == '"') {
        value = string_at(line, i);
      } else {
        const std::size_t end = line.find_first_of(",}", i);
        if (end == std::string::npos) fail("unterminated value of '" + key + "'");
        value = line.substr(i, end - i);
        while (!value.empty() && std::isspace(static_cast<unsigned char>(value.back()))) {
          value.pop_back();
        }
        i = end;
      }
      members_[key] = value;
      i = skip(line, i);
      if (i < line.size() && line[i] == ',') i = skip(line, i + 1);
    }
    expect(line, i, '}');
  }

  const std::string& text(const std::string& key) const {
    const auto it = members_.find(key);
    if (it == members_.end()) fail("no field '" + key + "'");
    return it->second;
  }
  double number(const std::string& key) const {
    const std::string& t = text(key);
    std::istringstream in(t);
    double v = 0;
    in >> v;
    if (in.fail() || !in.eof() || !std::isfinite(v)) {
      fail("field '" + key + "': '" + t + "' is not a number");
    }
    return v;
  }
  std::optional<double> optional_number(const std::string& key) const {
    const auto it = members_.find(key);
    if (it == members_.end() || it->second == "null") return std::nullopt;
    return number(key);
  }
  [[noreturn]] void fail(const std::string& why) const {
    throw Error(ErrorCode::InvalidArgument, where_ + ": " + why);
  }

 private:
  static std::size_t skip(const std::string& s, std::size_t i) {
    while (i < s.size() && std::isspace(static_cast<unsigned char>(s[i]))) ++i;
    return i;
  }
  void expect(const std::string& s, std::size_t i, char c) const {
    if (i >= s.size() || s[i] != c) fail(std::string("expected '") + c + "' (not a JSON object)");
  }
  std::string string_at(const std::string& s, std::size_t& i) const {
    expect(s, i, '"');
    const std::size_t end = s.find('"', i + 1);
    if (end == std::string::npos) fail("unterminated string");
    std::string out = s.substr(i + 1, end - i - 1);
    i = end + 1;
    return out;
  }

  std::string where_;
  std::map<std::string, std::string> members_;
};

bench::Method method_of(const FlatObject& o) {
  const std::string& name = o.text("method");
  if (name == "mpi") return bench::Method::mpi();
  const std::string& selected = o.text("selected");
  const auto algorithm = parse_allreduce_algorithm(selected);
  if (!algorithm) o.fail("unknown algorithm '" + selected + "'");
  if (name == "dense") return bench::Method::dense(*algorithm);
  const auto method = parse_enum<compression::Method>(name);
  if (!method || *method == compression::Method::None) o.fail("unknown method '" + name + "'");
  return bench::Method::compressed(*method, *algorithm);
}

}  // namespace

std::vector<MeasuredRow> read_rows(std::istream& in, const std::string& source) {
  std::vector<MeasuredRow> rows;
  std::string line;
  for (int number = 1; std::getline(in, line); ++number) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const FlatObject o(line, source + ":" + std::to_string(number));
    MeasuredRow row;
    row.method = method_of(o);
    row.ranks = static_cast<int>(o.number("ranks"));
    row.bytes = static_cast<std::size_t>(o.number("bytes"));
    row.median_seconds = o.number("median_us") * 1e-6;
    if (const auto v = o.optional_number("min_us")) row.min_seconds = *v * 1e-6;
    if (const auto v = o.optional_number("max_us")) row.max_seconds = *v * 1e-6;
    row.wire_bytes_per_rank = o.optional_number("wire_bytes_per_rank");
    if (row.ranks < 1 || row.bytes == 0 || row.bytes % 4 != 0) {
      o.fail("ranks or bytes out of range for a float32 allreduce");
    }
    rows.push_back(row);
  }
  return rows;
}

std::vector<MeasuredRow> load_rows(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw Error(ErrorCode::InvalidArgument, "rows file '" + path + "': cannot read it");
  return read_rows(in, path);
}

}  // namespace frugal::model
