// frugal_buckets: gradient fusion with overlap (frugal::GradientBuckets).

#include <span>
#include <string>

#include "capi_internal.hpp"

using frugal::capi::guarded;
using frugal::capi::require_pointer;

namespace {

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
    if (bucket_bytes > 0) bucket_options.bucket_bytes = bucket_bytes;
    auto made = std::make_unique<frugal_buckets>();
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

frugal_status frugal_buckets_count(const frugal_buckets* buckets, size_t* count) {
  return guarded("frugal_buckets_count", [&] {
    const frugal::GradientBuckets& b = checked(buckets);
    require_pointer(count, "count");
    *count = b.bucket_count();
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
