#pragma once

#include <cstddef>
#include <string>
#include <vector>

#include "frugal/collectives/powersgd.hpp"

namespace frugal::detail {

// Whether a rows x cols matrix is worth a rank-r approximation at min_compression_rate: the
// public powersgd_compresses, and what restore() checks an image's sizes against.
bool powersgd_compresses(std::size_t rows, std::size_t cols, int r, double min_compression_rate);

// The collective's access to a PowerSgdState's internals.
class PowerSgdBinding {
 public:
  // "" when `state` is unbound or bound to `layout`, else what changed ("rank 2 -> 4, ...").
  static std::string changes(const PowerSgdState& state, const PowerSgdState::Layout& layout);
  // Binds an unbound state to `layout`: Q's drawn from `seed`, residuals zero.
  static void bind(PowerSgdState& state, const PowerSgdState::Layout& layout, std::uint64_t seed);
  static std::vector<float>& q(PowerSgdState& state, std::size_t i) { return state.q_[i]; }
  static std::vector<float>& residual(PowerSgdState& state, std::size_t i) {
    return state.residual_[i];
  }
  static void advance(PowerSgdState& state) noexcept { ++state.steps_; }
};

}  // namespace frugal::detail
