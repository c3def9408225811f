#pragma once

// What the C API's translation units share: the definitions behind the opaque handles, the
// guard that turns every exception into a status, and argument checks.

#include <algorithm>
#include <cstddef>
#include <cstring>
#include <exception>
#include <memory>
#include <string>
#include <string_view>

#include "frugal/collectives/allreduce.hpp"
#include "frugal/collectives/allreduce_state.hpp"
#include "frugal/collectives/async.hpp"
#include "frugal/collectives/autotune.hpp"
#include "frugal/collectives/buckets.hpp"
#include "frugal/collectives/guardrail.hpp"
#include "frugal/communicator.hpp"
#include "frugal/error.hpp"
#include "frugal/frugal.h"

struct frugal_comm {
  // The loopback transport's fabric must outlive its transports; null for other transports.
  std::shared_ptr<void> keepalive;
  std::unique_ptr<frugal::Communicator> comm;
};

struct frugal_request {
  // Declared before the handle, which may still be running when the request is destroyed.
  frugal::AllreduceStats stats;
  int* skipped = nullptr;  // the caller's options->skipped
  frugal::AllreduceHandle handle;
};

struct frugal_state {
  frugal::AllreduceState state;
};

struct frugal_buckets {
  std::unique_ptr<frugal::GradientBuckets> buckets;
};

namespace frugal::capi {

// Clears the calling thread's last error message (every entry point does, first).
void clear_error() noexcept;
// Records `message` (truncated to fit a fixed thread-local buffer, so it cannot fail) and
// returns `status`.
frugal_status set_error(frugal_status status, std::string_view function,
                        std::string_view message) noexcept;
frugal_status to_status(ErrorCode code) noexcept;
// Converts the exception in flight into a status and message. Call from a catch block.
frugal_status status_of_current_exception(std::string_view function) noexcept;

// Runs `body` and returns FRUGAL_OK, or the status of whatever it threw: no exception leaves.
template <typename Body>
frugal_status guarded(std::string_view function, Body&& body) noexcept {
  clear_error();
  try {
    body();
    return FRUGAL_OK;
  } catch (...) {
    return status_of_current_exception(function);
  }
}

// Throws Error(InvalidArgument) "<name> is NULL" unless `pointer` is set.
inline void require_pointer(const void* pointer, std::string_view name) {
  if (pointer == nullptr) throw Error(ErrorCode::InvalidArgument, std::string(name) + " is NULL");
}

// The C++ options for a C options struct (NULL: the defaults), validated: unknown enum values
// and a struct_size the library cannot honour are InvalidArgument.
AllreduceOptions to_allreduce_options(const frugal_options* options);
// options->dense_vectors (version 3; 1 for older structs and NULL).
bool dense_vectors(const frugal_options* options);
// options->guardrail (version 6; null for older structs and NULL).
const frugal_guardrail_options* guardrail_of(const frugal_options* options);
// options->hierarchical (version 7; false for older structs and NULL).
bool hierarchical(const frugal_options* options);
// options->autotune (version 8; null for older structs and NULL).
const frugal_autotune_options* autotune_of(const frugal_options* options);
// The C++ guardrail options for frugal_options.guardrail (NULL: off), validated: a struct_size
// the library cannot honour and out-of-range values are InvalidArgument naming the field.
GuardrailOptions to_guardrail_options(const frugal_guardrail_options* options);
// The C++ autotune options for frugal_options.autotune (NULL: off), validated: a struct_size the
// library cannot honour, a bad candidate and out-of-range values are InvalidArgument naming the
// field. A cost callback reaches the C++ hook with the bucket's candidate index, read from
// `owner`'s buckets when finish() calls it.
AutotuneOptions to_autotune_options(const frugal_autotune_options* options,
                                    const frugal_buckets* owner);
// options->skipped when the caller's struct has that field (version 2), else null.
int* skipped_out(const frugal_options* options);

// Runs a blocking collective, `call(converted options)`, and reports whether it skipped the step
// (non-finite input under Skip) through options->skipped when the caller's struct has it.
template <typename Call>
void call_reporting_skip(const frugal_options* options, Call&& call) {
  AllreduceOptions converted = to_allreduce_options(options);
  AllreduceStats stats;
  converted.stats = &stats;
  int* const skipped = skipped_out(options);
  call(converted);
  if (skipped != nullptr) *skipped = stats.non_finite_skipped ? 1 : 0;
}

// A state image into a caller's buffer, as frugal_state_save and frugal_buckets_state_save do.
void copy_image(const std::vector<std::byte>& image, void* buf, size_t capacity, size_t* written);

// Fills a caller's options struct of `struct_size` bytes (any version from 1 on) with `defaults`,
// zeroing what this library does not know (a newer caller's fields read as "unset"), as the
// *_options_init_sized functions do. `options` must not be NULL.
template <typename Options>
void init_versioned(Options* options, std::size_t struct_size, const Options& defaults,
                    std::size_t v1_size, const char* name) {
  if (struct_size < v1_size) {
    throw Error(ErrorCode::InvalidArgument, "struct_size " + std::to_string(struct_size) +
                                                " is smaller than version 1 of " + name + " (" +
                                                std::to_string(v1_size) + " bytes)");
  }
  std::memset(options, 0, struct_size);
  std::memcpy(options, &defaults, std::min(struct_size, sizeof defaults));
  options->struct_size = struct_size;
}

// A caller's options struct of any version as this library's: `defaults` with the caller's
// first bytes over it; an older struct (smaller than version 1) or a newer one whose unknown
// bytes are set is refused, naming `name` and `init` (the function that fills it).
template <typename Options>
Options read_versioned(const Options& caller, const Options& defaults, std::size_t v1_size,
                       const char* name, const char* init) {
  const std::size_t size = caller.struct_size;
  if (size < v1_size) {
    throw Error(ErrorCode::InvalidArgument,
                "options->struct_size " + std::to_string(size) + " is smaller than version 1 of " +
                    name + " (" + std::to_string(v1_size) + " bytes): call " + init + " first");
  }
  Options o = defaults;
  std::memcpy(&o, &caller, std::min(size, sizeof o));
  const auto* bytes = reinterpret_cast<const unsigned char*>(&caller);
  for (std::size_t i = sizeof o; i < size; ++i) {
    if (bytes[i] != 0) {
      throw Error(
          ErrorCode::InvalidArgument,
          "options: byte " + std::to_string(i) + " of a " + std::to_string(size) + "-byte " + name +
              " is set, but this libfrugal (" FRUGAL_VERSION_STRING ") only knows the first " +
              std::to_string(sizeof o) + " bytes: a newer field is in use");
    }
  }
  o.struct_size = sizeof o;
  return o;
}

}  // namespace frugal::capi
