// frugal_powersgd_*: PowerSGD's options, state and allreduce.

#include "frugal/collectives/powersgd.hpp"

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstring>
#include <span>
#include <string>
#include <vector>

#include "capi_internal.hpp"

struct frugal_powersgd_state {
  frugal::PowerSgdState state;
};

namespace {

using frugal::Error;
using frugal::ErrorCode;
using frugal::capi::require_pointer;

// The smallest struct a caller may pass: version 1 (every field up to `skipped`), fixed now so
// that appending fields later keeps version-1 callers working.
constexpr std::size_t kOptionsV1Size = offsetof(frugal_powersgd_options, skipped) + sizeof(int*);

frugal_powersgd_options default_options() noexcept {
  const frugal::PowerSgdOptions cpp;
  frugal_powersgd_options o;
  std::memset(&o, 0, sizeof o);
  o.struct_size = sizeof o;
  o.rank = cpp.rank;
  o.min_compression_rate = cpp.min_compression_rate;
  o.start_iter = cpp.start_iter;
  o.seed = cpp.seed;
  o.error_feedback = cpp.error_feedback ? 1 : 0;
  o.op = static_cast<int>(cpp.op);
  o.non_finite = static_cast<int>(cpp.non_finite);
  o.timeout_ms = 0;
  o.skipped = nullptr;
  return o;
}

// A caller's struct of any version as this library's (see read_options in allreduce.cpp).
frugal_powersgd_options read_options(const frugal_powersgd_options* options) {
  if (options == nullptr) return default_options();
  return frugal::capi::read_versioned(*options, default_options(), kOptionsV1Size,
                                      "frugal_powersgd_options", "frugal_powersgd_options_init");
}

int checked(int value, int first, int last, const char* field) {
  if (value < first || value > last) {
    throw Error(ErrorCode::InvalidArgument,
                "options->" + std::string(field) + " " + std::to_string(value) + " is not in [" +
                    std::to_string(first) + ", " + std::to_string(last) + "]");
  }
  return value;
}

// The C++ options, validated.
frugal::PowerSgdOptions to_options(const frugal_powersgd_options* options) {
  const frugal_powersgd_options o = read_options(options);
  frugal::PowerSgdOptions out;
  out.rank = o.rank;
  out.min_compression_rate = o.min_compression_rate;
  out.start_iter = o.start_iter;
  out.seed = o.seed;
  out.error_feedback = o.error_feedback != 0;
  out.op = static_cast<frugal::ReduceOp>(checked(o.op, FRUGAL_OP_SUM, FRUGAL_OP_AVERAGE, "op"));
  out.non_finite = static_cast<frugal::NonFiniteAction>(
      checked(o.non_finite, FRUGAL_NON_FINITE_DEFAULT, FRUGAL_NON_FINITE_ZERO, "non_finite"));
  if (o.timeout_ms > 0) out.timeout = std::chrono::milliseconds(o.timeout_ms);
  frugal::validate(out);  // names rank, min_compression_rate
  return out;
}

frugal::PowerSgdState& checked_state(frugal_powersgd_state* state) {
  require_pointer(state, "state");
  return state->state;
}

}  // namespace

using frugal::capi::guarded;

extern "C" {

frugal_status frugal_powersgd_options_init_sized(frugal_powersgd_options* options,
                                                 size_t struct_size) {
  return guarded("frugal_powersgd_options_init_sized", [&] {
    require_pointer(options, "options");
    frugal::capi::init_versioned(options, struct_size, default_options(), kOptionsV1Size,
                                 "frugal_powersgd_options");
  });
}

frugal_status frugal_powersgd_compresses(size_t rows, size_t cols,
                                         const frugal_powersgd_options* options, int* compresses) {
  return guarded("frugal_powersgd_compresses", [&] {
    require_pointer(compresses, "compresses");
    *compresses = frugal::powersgd_compresses(rows, cols, to_options(options)) ? 1 : 0;
  });
}

frugal_status frugal_powersgd_state_create(frugal_powersgd_state** out) {
  return guarded("frugal_powersgd_state_create", [&] {
    require_pointer(out, "out");
    *out = new frugal_powersgd_state{};
  });
}

void frugal_powersgd_state_destroy(frugal_powersgd_state* state) {
  (void)guarded("frugal_powersgd_state_destroy", [&] { delete state; });
}

frugal_status frugal_powersgd_state_reset(frugal_powersgd_state* state) {
  return guarded("frugal_powersgd_state_reset", [&] { checked_state(state).reset(); });
}

frugal_status frugal_powersgd_state_steps(const frugal_powersgd_state* state, uint64_t* steps) {
  return guarded("frugal_powersgd_state_steps", [&] {
    require_pointer(state, "state");
    require_pointer(steps, "steps");
    *steps = state->state.steps();
  });
}

frugal_status frugal_powersgd_state_save_size(const frugal_powersgd_state* state, size_t* size) {
  return guarded("frugal_powersgd_state_save_size", [&] {
    require_pointer(state, "state");
    require_pointer(size, "size");
    *size = state->state.save().size();
  });
}

frugal_status frugal_powersgd_state_save(const frugal_powersgd_state* state, void* buf,
                                         size_t capacity, size_t* written) {
  return guarded("frugal_powersgd_state_save", [&] {
    require_pointer(state, "state");
    require_pointer(written, "written");
    frugal::capi::copy_image(state->state.save(), buf, capacity, written);
  });
}

frugal_status frugal_powersgd_state_load(frugal_powersgd_state* state, const void* buf,
                                         size_t size) {
  return guarded("frugal_powersgd_state_load", [&] {
    frugal::PowerSgdState& s = checked_state(state);
    if (size > 0) require_pointer(buf, "buf");
    s.restore({static_cast<const std::byte*>(buf), size});
  });
}

frugal_status frugal_powersgd_allreduce(frugal_comm* comm, const frugal_powersgd_tensor* tensors,
                                        size_t count, frugal_powersgd_state* state,
                                        const frugal_powersgd_options* options) {
  return guarded("frugal_powersgd_allreduce", [&] {
    require_pointer(comm, "comm");
    frugal::PowerSgdState& s = checked_state(state);
    if (count > 0) require_pointer(tensors, "tensors");
    frugal::PowerSgdOptions converted = to_options(options);
    int* const skipped = read_options(options).skipped;
    std::vector<frugal::PowerSgdTensor> views;
    views.reserve(count);
    for (size_t t = 0; t < count; ++t) {
      const frugal_powersgd_tensor& in = tensors[t];
      // The element count the shape claims; the C++ call checks nothing more can go wrong.
      const bool overflows = in.cols != 0 && in.rows > SIZE_MAX / in.cols;
      if (overflows) {
        throw Error(ErrorCode::InvalidArgument,
                    "tensors[" + std::to_string(t) + "]: rows * cols overflows");
      }
      const size_t elements = in.rows * in.cols;
      if (elements > 0) require_pointer(in.data, "tensors[" + std::to_string(t) + "].data");
      views.push_back({std::span<float>(in.data, elements), in.rows, in.cols});
    }
    frugal::PowerSgdStats stats;
    converted.stats = &stats;
    frugal::powersgd_allreduce(*comm->comm, views, s, converted);
    if (skipped != nullptr) *skipped = stats.non_finite_skipped ? 1 : 0;
  });
}

}  // extern "C"
