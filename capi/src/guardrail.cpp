// frugal_guardrail_options: the accuracy guardrail of buckets (frugal::GuardrailOptions).

#include <cstddef>
#include <cstring>

#include "capi_internal.hpp"

namespace frugal::capi {
namespace {

// Version 1: every field up to `cooldown`.
constexpr std::size_t kGuardrailV1Size =
    offsetof(frugal_guardrail_options, cooldown) + sizeof(uint64_t);

frugal_guardrail_options default_guardrail() noexcept {
  const GuardrailOptions d;
  frugal_guardrail_options o;
  std::memset(&o, 0, sizeof o);
  o.struct_size = sizeof o;
  o.lower = d.lower;
  o.upper = d.upper;
  o.patience = d.patience;
  o.smoothing = d.smoothing;
  o.cooldown = d.cooldown;
  return o;
}

}  // namespace

GuardrailOptions to_guardrail_options(const frugal_guardrail_options* options) {
  GuardrailOptions out;  // off
  if (options == nullptr) return out;
  const frugal_guardrail_options o =
      read_versioned(*options, default_guardrail(), kGuardrailV1Size, "frugal_guardrail_options",
                     "frugal_guardrail_options_init");
  out.enabled = true;
  out.lower = o.lower;
  out.upper = o.upper;
  out.patience = static_cast<std::size_t>(o.patience);
  out.smoothing = o.smoothing;
  out.cooldown = static_cast<std::size_t>(o.cooldown);
  validate(out);
  return out;
}

}  // namespace frugal::capi

extern "C" {

frugal_status frugal_guardrail_options_init_sized(frugal_guardrail_options* options,
                                                  size_t struct_size) {
  return frugal::capi::guarded("frugal_guardrail_options_init_sized", [&] {
    frugal::capi::require_pointer(options, "options");
    frugal::capi::init_versioned(options, struct_size, frugal::capi::default_guardrail(),
                                 frugal::capi::kGuardrailV1Size, "frugal_guardrail_options");
  });
}

}  // extern "C"
