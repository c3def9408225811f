// frugal_state: per-buffer error-feedback state and its checkpoint image.

#include <span>

#include "capi_internal.hpp"

using frugal::capi::guarded;
using frugal::capi::require_pointer;

extern "C" {

frugal_status frugal_state_create(float decay, frugal_state** out) {
  return guarded("frugal_state_create", [&] {
    require_pointer(out, "out");
    *out = new frugal_state{frugal::AllreduceState(decay)};
  });
}

void frugal_state_destroy(frugal_state* state) {
  (void)guarded("frugal_state_destroy", [&] { delete state; });
}

frugal_status frugal_state_reset(frugal_state* state) {
  return guarded("frugal_state_reset", [&] {
    require_pointer(state, "state");
    state->state.reset();
  });
}

frugal_status frugal_state_steps(const frugal_state* state, uint64_t* steps) {
  return guarded("frugal_state_steps", [&] {
    require_pointer(state, "state");
    require_pointer(steps, "steps");
    *steps = state->state.steps();
  });
}

frugal_status frugal_state_save_size(const frugal_state* state, size_t* size) {
  return guarded("frugal_state_save_size", [&] {
    require_pointer(state, "state");
    require_pointer(size, "size");
    *size = state->state.save().size();
  });
}

frugal_status frugal_state_save(const frugal_state* state, void* buf, size_t capacity,
                                size_t* written) {
  return guarded("frugal_state_save", [&] {
    require_pointer(state, "state");
    require_pointer(written, "written");
    frugal::capi::copy_image(state->state.save(), buf, capacity, written);
  });
}

frugal_status frugal_state_load(frugal_state* state, const void* buf, size_t size) {
  return guarded("frugal_state_load", [&] {
    require_pointer(state, "state");
    if (size > 0) require_pointer(buf, "buf");
    state->state.restore({static_cast<const std::byte*>(buf), size});
  });
}

}  // extern "C"
