#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>

#include "frugal/collectives/allreduce_state.hpp"

namespace frugal::detail {

// The collectives' access to an AllreduceState's internals.
class StateBinding {
 public:
  // Binds `state` to `layout` on first use (creating residuals of the given sizes; 0 = none)
  // and checks it afterwards: a state bound to another layout throws Mismatch.
  static void bind(AllreduceState& state, const AllreduceState::Layout& layout,
                   std::size_t worker_size, std::size_t server_size);
  static compression::ErrorFeedback* worker(AllreduceState& state) noexcept {
    return state.worker_ ? &*state.worker_ : nullptr;
  }
  static compression::ErrorFeedback* server(AllreduceState& state) noexcept {
    return state.server_ ? &*state.server_ : nullptr;
  }
  static void advance(AllreduceState& state) noexcept { ++state.steps_; }
  static const std::optional<AllreduceState::Layout>& layout(const AllreduceState& state) noexcept {
    return state.layout_;
  }
  static void set_steps(AllreduceState& state, std::uint64_t steps) noexcept {
    state.steps_ = steps;
  }
};

}  // namespace frugal::detail
