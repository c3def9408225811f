#include "frugal/error.hpp"

namespace frugal {

Error::Error(ErrorCode code, const std::string& message)
    : std::runtime_error("frugal: " + std::string(to_string(code)) + ": " + message), code_(code) {}

void require(bool condition, std::string_view parameter, std::string_view why) {
  if (!condition) {
    throw Error(ErrorCode::InvalidArgument, std::string(parameter) + ": " + std::string(why));
  }
}

}  // namespace frugal
