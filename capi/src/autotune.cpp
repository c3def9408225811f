// frugal_autotune_options: compression = auto for buckets (frugal::AutotuneOptions).

#include <cstddef>
#include <cstring>
#include <string>

#include "capi_internal.hpp"

namespace frugal::capi {
namespace {

// Version 1: every field up to `cost_user`.
constexpr std::size_t kAutotuneV1Size =
    offsetof(frugal_autotune_options, cost_user) + sizeof(void*);

// AutotuneOptions' own limit (validate() refuses more too), checked here before the candidate
// pointers are read, so that a garbage count is refused rather than followed.
constexpr std::size_t kMaxCandidates = 16;

frugal_autotune_options default_autotune() noexcept {
  const AutotuneOptions d;
  frugal_autotune_options o;
  std::memset(&o, 0, sizeof o);
  o.struct_size = sizeof o;
  o.candidates = nullptr;
  o.candidate_count = 0;
  o.warmup = d.warmup;
  o.trial_steps = d.trial_steps;
  o.retune = d.retune;
  o.margin = d.margin;
  o.cost = nullptr;
  o.cost_user = nullptr;
  return o;
}

Error candidate_error(std::size_t i, const std::string& why, ErrorCode code) {
  return Error(code, "autotune.candidates: candidate " + std::to_string(i) + ": " + why);
}

}  // namespace

AutotuneOptions to_autotune_options(const frugal_autotune_options* options,
                                    const frugal_buckets* owner) {
  AutotuneOptions out;  // off
  if (options == nullptr) return out;
  const frugal_autotune_options o =
      read_versioned(*options, default_autotune(), kAutotuneV1Size, "frugal_autotune_options",
                     "frugal_autotune_options_init");
  out.enabled = true;
  if (o.candidate_count > kMaxCandidates) {
    throw Error(ErrorCode::InvalidArgument, "autotune.candidates: at most " +
                                                std::to_string(kMaxCandidates) + ", got " +
                                                std::to_string(o.candidate_count));
  }
  if (o.candidate_count > 0 && o.candidates == nullptr) {
    throw Error(ErrorCode::InvalidArgument, "autotune.candidates: NULL with candidate_count " +
                                                std::to_string(o.candidate_count));
  }
  for (std::size_t i = 0; i < o.candidate_count; ++i) {
    if (o.candidates[i] == nullptr) {
      throw candidate_error(i, "NULL", ErrorCode::InvalidArgument);
    }
    try {
      out.candidates.push_back(to_allreduce_options(o.candidates[i]).compression);
    } catch (const Error& e) {
      throw candidate_error(i, e.what(), e.code());
    }
  }
  out.warmup = static_cast<std::size_t>(o.warmup);
  out.trial_steps = static_cast<std::size_t>(o.trial_steps);
  out.retune = static_cast<std::size_t>(o.retune);
  out.margin = o.margin;
  if (o.cost != nullptr) {
    // The hook is called by finish(), when `owner` holds the buckets; the bucket's candidate has
    // not moved on yet then, so bucket_candidate() names the one whose step is being costed.
    out.cost = [cost = o.cost, user = o.cost_user, owner](
                   std::size_t bucket, const compression::CompressionConfig&, double seconds) {
      return cost(user, bucket, owner->buckets->bucket_candidate(bucket), seconds);
    };
  }
  validate(out);  // names autotune.trial_steps, autotune.margin, autotune.candidates
  return out;
}

}  // namespace frugal::capi

extern "C" {

frugal_status frugal_autotune_options_init_sized(frugal_autotune_options* options,
                                                 size_t struct_size) {
  return frugal::capi::guarded("frugal_autotune_options_init_sized", [&] {
    frugal::capi::require_pointer(options, "options");
    frugal::capi::init_versioned(options, struct_size, frugal::capi::default_autotune(),
                                 frugal::capi::kAutotuneV1Size, "frugal_autotune_options");
  });
}

}  // extern "C"
