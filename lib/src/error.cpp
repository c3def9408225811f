#include "frugal/error.hpp"

namespace frugal {

std::string_view to_string(ErrorCode code) noexcept {
  switch (code) {
    case ErrorCode::InvalidArgument:
      return "invalid argument";
    case ErrorCode::Mismatch:
      return "mismatch";
    case ErrorCode::Timeout:
      return "timeout";
    case ErrorCode::PeerFailure:
      return "peer failure";
    case ErrorCode::Transport:
      return "transport error";
    case ErrorCode::Internal:
      return "internal error";
  }
  return "unknown error";
}

Error::Error(ErrorCode code, const std::string& message)
    : std::runtime_error("frugal: " + std::string(to_string(code)) + ": " + message), code_(code) {}

void require(bool condition, std::string_view parameter, std::string_view why) {
  if (!condition) {
    throw Error(ErrorCode::InvalidArgument, std::string(parameter) + ": " + std::string(why));
  }
}

}  // namespace frugal
