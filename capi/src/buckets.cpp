// frugal_buckets: gradient fusion with overlap (frugal::GradientBuckets).

#include <algorithm>
#include <cstddef>
#include <cstring>
#include <span>
#include <string>

#include "capi_internal.hpp"

using frugal::capi::guarded;
using frugal::capi::require_pointer;

namespace {

// Version 1 of frugal_guardrail_event: every field up to `relative_error`.
constexpr std::size_t kEventV1Size =
    offsetof(frugal_guardrail_event, relative_error) + sizeof(double);
// Version 1 of frugal_autotune_event: every field up to `cost_count`.
constexpr std::size_t kAutotuneEventV1Size =
    offsetof(frugal_autotune_event, cost_count) + sizeof(size_t);

const frugal::GradientBuckets& checked(const frugal_buckets* buckets) {
  require_pointer(buckets, "buckets");
  return *buckets->buckets;
}

frugal::GradientBuckets& checked(frugal_buckets* buckets) {
  require_pointer(buckets, "buckets");
  return *buckets->buckets;
}

}  // namespace

extern "C" {

frugal_status frugal_buckets_create(frugal_comm* comm, const frugal_options* options,
                                    size_t bucket_bytes, frugal_buckets** out) {
  return guarded("frugal_buckets_create", [&] {
    require_pointer(comm, "comm");
    require_pointer(out, "out");
    frugal::BucketOptions bucket_options;
    bucket_options.allreduce = frugal::capi::to_allreduce_options(options);
    bucket_options.allreduce.state = nullptr;  // every bucket keeps its own
    bucket_options.dense_vectors = frugal::capi::dense_vectors(options);
    bucket_options.guardrail =
        frugal::capi::to_guardrail_options(frugal::capi::guardrail_of(options));
    // No topology: the constructor discovers the hosts (FRUGAL_HOST_ID or the hostname).
    bucket_options.hierarchical = frugal::capi::hierarchical(options);
    if (bucket_bytes > 0) bucket_options.bucket_bytes = bucket_bytes;
    auto made = std::make_unique<frugal_buckets>();
    // A cost callback reads the bucket's candidate from `made` (valid for the buckets' life).
    bucket_options.autotune =
        frugal::capi::to_autotune_options(frugal::capi::autotune_of(options), made.get());
    made->buckets = std::make_unique<frugal::GradientBuckets>(*comm->comm, bucket_options);
    *out = made.release();
  });
}

void frugal_buckets_destroy(frugal_buckets* buckets) {
  (void)guarded("frugal_buckets_destroy", [&] { delete buckets; });
}

frugal_status frugal_buckets_add(frugal_buckets* buckets, const char* name, size_t count,
                                 size_t* id) {
  return guarded("frugal_buckets_add", [&] {
    frugal::GradientBuckets& b = checked(buckets);
    require_pointer(name, "name");
    const std::size_t added = b.add(name, count);
    if (id != nullptr) *id = added;
  });
}

frugal_status frugal_buckets_add_tensor(frugal_buckets* buckets, const char* name, size_t count,
                                        size_t ndim, size_t* id) {
  return guarded("frugal_buckets_add_tensor", [&] {
    frugal::GradientBuckets& b = checked(buckets);
    require_pointer(name, "name");
    const std::size_t added = b.add(name, count, ndim);
    if (id != nullptr) *id = added;
  });
}

frugal_status frugal_buckets_mark_ready(frugal_buckets* buckets, size_t id, float* grad,
                                        size_t count) {
  return guarded("frugal_buckets_mark_ready", [&] {
    frugal::GradientBuckets& b = checked(buckets);
    require_pointer(grad, "grad");
    b.mark_ready(id, std::span<float>(grad, count));
  });
}

frugal_status frugal_buckets_finish(frugal_buckets* buckets) {
  return guarded("frugal_buckets_finish", [&] { checked(buckets).finish(); });
}

frugal_status frugal_buckets_last_step_skipped(const frugal_buckets* buckets, int* skipped) {
  return guarded("frugal_buckets_last_step_skipped", [&] {
    const frugal::GradientBuckets& b = checked(buckets);
    require_pointer(skipped, "skipped");
    *skipped = b.last_step_skipped() ? 1 : 0;
  });
}

frugal_status frugal_buckets_last_step_wire_bytes(const frugal_buckets* buckets, size_t* bytes) {
  return guarded("frugal_buckets_last_step_wire_bytes", [&] {
    const frugal::GradientBuckets& b = checked(buckets);
    require_pointer(bytes, "bytes");
    *bytes = b.last_step_wire_bytes();
  });
}

frugal_status frugal_buckets_count(const frugal_buckets* buckets, size_t* count) {
  return guarded("frugal_buckets_count", [&] {
    const frugal::GradientBuckets& b = checked(buckets);
    require_pointer(count, "count");
    *count = b.bucket_count();
  });
}

frugal_status frugal_buckets_guardrail_event_count(const frugal_buckets* buckets, size_t* count) {
  return guarded("frugal_buckets_guardrail_event_count", [&] {
    const frugal::GradientBuckets& b = checked(buckets);
    require_pointer(count, "count");
    *count = b.last_step_guardrail_events().size();
  });
}

frugal_status frugal_buckets_guardrail_event(const frugal_buckets* buckets, size_t index,
                                             frugal_guardrail_event* event) {
  return guarded("frugal_buckets_guardrail_event", [&] {
    const frugal::GradientBuckets& b = checked(buckets);
    require_pointer(event, "event");
    const std::size_t size = event->struct_size;
    if (size < kEventV1Size) {
      throw frugal::Error(frugal::ErrorCode::InvalidArgument,
                          "event->struct_size " + std::to_string(size) +
                              " is smaller than version 1 of frugal_guardrail_event (" +
                              std::to_string(kEventV1Size) +
                              " bytes): set it to sizeof(frugal_guardrail_event)");
    }
    const auto& events = b.last_step_guardrail_events();
    if (index >= events.size()) {
      throw frugal::Error(frugal::ErrorCode::InvalidArgument,
                          "index " + std::to_string(index) + ": the last finish decided " +
                              std::to_string(events.size()) + " guardrail changes");
    }
    const frugal::GuardrailEvent& e = events[index];
    frugal_guardrail_event out;
    std::memset(&out, 0, sizeof out);
    out.struct_size = size;
    out.step = e.step;
    out.bucket = e.bucket;
    out.from_rung = e.from_rung;
    out.to_rung = e.to_rung;
    out.from = e.from.c_str();  // the buckets' own strings, kept until the next finish
    out.to = e.to.c_str();
    out.ratio = e.ratio;
    out.relative_error = e.relative_error;
    // A newer caller's fields past ours are left as they are.
    std::memcpy(event, &out, std::min(size, sizeof out));
  });
}

frugal_status frugal_buckets_guardrail_bucket(const frugal_buckets* buckets, size_t bucket,
                                              size_t* rung, double* ratio, int* method) {
  return guarded("frugal_buckets_guardrail_bucket", [&] {
    const frugal::GradientBuckets& b = checked(buckets);
    // Each query checks `bucket` (InvalidArgument naming it); nothing is written on failure.
    const std::size_t at = b.bucket_rung(bucket);
    const double smoothed = b.bucket_residual_ratio(bucket);
    const int setting = static_cast<int>(b.bucket_setting(bucket).method);
    if (rung != nullptr) *rung = at;
    if (ratio != nullptr) *ratio = smoothed;
    if (method != nullptr) *method = setting;
  });
}

frugal_status frugal_buckets_autotune_event_count(const frugal_buckets* buckets, size_t* count) {
  return guarded("frugal_buckets_autotune_event_count", [&] {
    const frugal::GradientBuckets& b = checked(buckets);
    require_pointer(count, "count");
    *count = b.last_step_autotune_events().size();
  });
}

frugal_status frugal_buckets_autotune_event(const frugal_buckets* buckets, size_t index,
                                            frugal_autotune_event* event) {
  return guarded("frugal_buckets_autotune_event", [&] {
    const frugal::GradientBuckets& b = checked(buckets);
    require_pointer(event, "event");
    const std::size_t size = event->struct_size;
    if (size < kAutotuneEventV1Size) {
      throw frugal::Error(frugal::ErrorCode::InvalidArgument,
                          "event->struct_size " + std::to_string(size) +
                              " is smaller than version 1 of frugal_autotune_event (" +
                              std::to_string(kAutotuneEventV1Size) +
                              " bytes): set it to sizeof(frugal_autotune_event)");
    }
    const auto& events = b.last_step_autotune_events();
    if (index >= events.size()) {
      throw frugal::Error(frugal::ErrorCode::InvalidArgument,
                          "index " + std::to_string(index) + ": the last finish decided " +
                              std::to_string(events.size()) + " autotune events");
    }
    const frugal::AutotuneEvent& e = events[index];
    frugal_autotune_event out;
    std::memset(&out, 0, sizeof out);
    out.struct_size = size;
    out.step = e.step;
    out.bucket = e.bucket;
    out.from = e.from.c_str();  // the buckets' own strings and costs, kept until the next finish
    out.to = e.to.c_str();
    out.decision = e.decision ? 1 : 0;
    out.costs = e.costs.empty() ? nullptr : e.costs.data();
    out.cost_count = e.costs.size();
    // A newer caller's fields past ours are left as they are.
    std::memcpy(event, &out, std::min(size, sizeof out));
  });
}

frugal_status frugal_buckets_autotune_bucket(const frugal_buckets* buckets, size_t bucket,
                                             size_t* candidate) {
  return guarded("frugal_buckets_autotune_bucket", [&] {
    const frugal::GradientBuckets& b = checked(buckets);
    require_pointer(candidate, "candidate");
    *candidate = b.bucket_candidate(bucket);  // InvalidArgument naming `bucket` when it has none
  });
}

frugal_status frugal_buckets_state_size(const frugal_buckets* buckets, size_t* size) {
  return guarded("frugal_buckets_state_size", [&] {
    const frugal::GradientBuckets& b = checked(buckets);
    require_pointer(size, "size");
    *size = b.save_state().size();
  });
}

frugal_status frugal_buckets_state_save(const frugal_buckets* buckets, void* buf, size_t capacity,
                                        size_t* written) {
  return guarded("frugal_buckets_state_save", [&] {
    const frugal::GradientBuckets& b = checked(buckets);
    require_pointer(written, "written");
    frugal::capi::copy_image(b.save_state(), buf, capacity, written);
  });
}

frugal_status frugal_buckets_state_load(frugal_buckets* buckets, const void* buf, size_t size) {
  return guarded("frugal_buckets_state_load", [&] {
    frugal::GradientBuckets& b = checked(buckets);
    if (size > 0) require_pointer(buf, "buf");
    b.restore_state({static_cast<const std::byte*>(buf), size});
  });
}

}  // extern "C"
