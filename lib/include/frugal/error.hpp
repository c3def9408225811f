#pragma once

#include <stdexcept>
#include <string>
#include <string_view>

#include "frugal/enum_names.hpp"

namespace frugal {

// Every failure frugal reports is a frugal::Error with one of these codes, so a trainer can
// tell "my arguments are wrong" from "a peer is gone" without parsing messages.
enum class ErrorCode {
  InvalidArgument,  // a parameter is out of range; the message names it
  Mismatch,         // ranks disagree (sizes, order, method); nothing was silently corrupted
  Timeout,          // a wait passed its deadline; the peer may be slow, stopped or dead
  PeerFailure,      // the transport saw a peer die or disconnect
  Transport,        // the underlying MPI/UCX call failed for another reason
  Internal,         // a frugal bug: an invariant did not hold
};

template <>
struct EnumNames<ErrorCode> {
  static constexpr std::array<EnumName<ErrorCode>, 6> table{
      {{ErrorCode::InvalidArgument, "invalid argument"},
       {ErrorCode::Mismatch, "mismatch"},
       {ErrorCode::Timeout, "timeout"},
       {ErrorCode::PeerFailure, "peer failure"},
       {ErrorCode::Transport, "transport error"},
       {ErrorCode::Internal, "internal error"}}};
};

constexpr std::string_view to_string(ErrorCode code) noexcept {
  return enum_name(code);
}

class Error : public std::runtime_error {
 public:
  Error(ErrorCode code, const std::string& message);

  ErrorCode code() const noexcept { return code_; }

 private:
  ErrorCode code_;
};

// Throws Error(InvalidArgument) naming the parameter unless `condition` holds.
void require(bool condition, std::string_view parameter, std::string_view why);

}  // namespace frugal
