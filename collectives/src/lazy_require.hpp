#pragma once

// The collectives' parameter checks that need a composed message take it as a callable, called
// only when the check fails: checks that run on every call (each allreduce's preamble,
// GradientBuckets::mark_ready per tensor per step) must cost a comparison, not a string.
//
//   require(grad.size() == t.count, "grad", [&] { return "tensor '" + t.name + "' ..."; });
//
// A fixed message stays a string literal (frugal::require in frugal/error.hpp); every other
// message in collectives/ goes through this overload.

#include <concepts>
#include <string>
#include <string_view>
#include <type_traits>

#include "frugal/error.hpp"

namespace frugal {

template <typename Why>
requires std::invocable<Why&> && std::convertible_to<std::invoke_result_t<Why&>, std::string_view>
void require(bool condition, std::string_view parameter, Why&& why) {
  if (!condition) [[unlikely]] {
    const std::string message(why());
    require(false, parameter, std::string_view(message));
  }
}

}  // namespace frugal
