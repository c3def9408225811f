#include "fault_injection.hpp"

#include <signal.h>
#include <unistd.h>

#include <charconv>
#include <cstdlib>
#include <string>

#include "frugal/error.hpp"

namespace frugal::train {

namespace {

struct FaultSpec {
  std::string point;  // empty: no fault injection
  std::optional<std::size_t> bytes;
};

FaultSpec parse(std::string_view value) {
  const auto bad = [&] {
    throw Error(ErrorCode::InvalidArgument,
                "FRUGAL_FAULT_INJECT='" + std::string(value) +
                    "': expected checkpoint-write:<bytes>, checkpoint-commit or "
                    "latest-write:<bytes>");
  };
  FaultSpec spec;
  const std::size_t colon = value.find(':');
  spec.point = std::string(value.substr(0, colon));
  const bool counted = spec.point == "checkpoint-write" || spec.point == "latest-write";
  if (!counted && spec.point != "checkpoint-commit") bad();
  if (counted != (colon != std::string_view::npos)) bad();
  if (counted) {
    const std::string_view digits = value.substr(colon + 1);
    std::size_t n = 0;
    const auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), n);
    if (digits.empty() || ec != std::errc() || end != digits.data() + digits.size()) bad();
    spec.bytes = n;
  }
  return spec;
}

// Read once; each point fires at most once (the process is gone after it anyway).
const FaultSpec& spec() {
  static const FaultSpec s = [] {
    const char* value = std::getenv("FRUGAL_FAULT_INJECT");
    return value == nullptr || *value == '\0' ? FaultSpec{} : parse(value);
  }();
  return s;
}

}  // namespace

void check_fault_injection() {
  spec();
}

std::optional<std::size_t> fault_injection_bytes(std::string_view point) {
  const FaultSpec& s = spec();
  return s.point == point ? s.bytes : std::nullopt;
}

void inject_fault_at(std::string_view point) {
  const FaultSpec& s = spec();
  if (s.point == point && !s.bytes) inject_fault_now();
}

void inject_fault_now() {
  ::kill(::getpid(), SIGKILL);
  std::abort();  // not reached: SIGKILL cannot be caught
}

}  // namespace frugal::train
