#pragma once

// The drivers' side of peer_failure_worker.hpp: what the VICTIM, SURVIVOR and FINISHED lines of a
// run's combined output say. Parsed by hand rather than with std::regex, whose GCC 12 headers
// warn (-Wmaybe-uninitialized) when built with sanitizers.

#include <charconv>
#include <limits>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace frugal::test {

struct PeerFailureReport {
  long long killed_at = -1;  // the VICTIM line's time; -1 without one
  struct Survivor {
    std::string code;  // "peer failure", "timeout", ...
    long long detected_at = 0;
    std::string what;
  };
  std::map<int, Survivor> survivors;  // by rank
  std::vector<int> finished;          // ranks that ended their loop without an error
};

namespace detail {

// The text after "key=" in `line`, up to `end` (the rest of the line when `end` is empty).
inline std::optional<std::string_view> field(std::string_view line, std::string_view key,
                                             std::string_view end = " ") {
  const std::string needle = std::string(key) + "=";
  const std::size_t at = line.find(needle);
  if (at == std::string_view::npos) return std::nullopt;
  std::string_view rest = line.substr(at + needle.size());
  if (!end.empty()) rest = rest.substr(0, rest.find(end));
  return rest;
}

inline std::optional<long long> number(std::optional<std::string_view> text) {
  if (!text || text->empty()) return std::nullopt;
  long long value = 0;
  const char* end = text->data() + text->size();
  const auto [ptr, ec] = std::from_chars(text->data(), end, value);
  if (ec != std::errc() || ptr != end || value < 0) return std::nullopt;
  return value;
}

inline std::optional<int> rank_of(std::string_view line) {
  const auto rank = number(field(line, "rank"));
  if (!rank || *rank > std::numeric_limits<int>::max()) return std::nullopt;
  return static_cast<int>(*rank);
}

}  // namespace detail

// A line whose fields this needs (VICTIM: killed_at; SURVIVOR: rank, code, detected_at, what;
// FINISHED: rank) are missing or not numbers is ignored, so it shows up as a missing report.
inline PeerFailureReport parse_peer_failure_output(std::string_view output) {
  PeerFailureReport out;
  while (!output.empty()) {
    const std::size_t eol = output.find('\n');
    std::string_view line = output.substr(0, eol);
    output = eol == std::string_view::npos ? std::string_view{} : output.substr(eol + 1);
    if (const std::size_t at = line.find("VICTIM "); at != std::string_view::npos) {
      line = line.substr(at);
      if (const auto t = detail::number(detail::field(line, "killed_at"))) out.killed_at = *t;
    } else if (const std::size_t at = line.find("SURVIVOR "); at != std::string_view::npos) {
      line = line.substr(at);
      const auto rank = detail::rank_of(line);
      const auto code = detail::field(line, "code", " detected_at=");
      const auto detected = detail::number(detail::field(line, "detected_at"));
      const auto what = detail::field(line, "what", "");
      if (rank && code && detected && what) {
        out.survivors[*rank] = {std::string(*code), *detected, std::string(*what)};
      }
    } else if (const std::size_t at = line.find("FINISHED "); at != std::string_view::npos) {
      if (const auto rank = detail::rank_of(line.substr(at))) {
        out.finished.push_back(*rank);
      }
    }
  }
  return out;
}

}  // namespace frugal::test
