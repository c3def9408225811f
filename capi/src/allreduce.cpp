// frugal_options and the blocking and asynchronous allreduces.

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstring>
#include <span>

#include "capi_internal.hpp"
#include "frugal/collectives/async.hpp"

namespace frugal::capi {
namespace {

// The smallest struct a caller may pass: version 1 (every field up to `state`).
constexpr std::size_t kOptionsV1Size = offsetof(frugal_options, state) + sizeof(frugal_state*);

frugal_options default_options() noexcept {
  frugal_options o;
  std::memset(&o, 0, sizeof o);
  o.struct_size = sizeof o;
  o.method = FRUGAL_METHOD_NONE;
  o.op = FRUGAL_OP_SUM;
  o.algorithm = FRUGAL_ALGORITHM_AUTO;
  o.density = 0.01;
  o.k = 0;
  o.bits = 4;
  o.bucket = 0;
  o.onebit_scaling = FRUGAL_ONEBIT_MEAN_ABS;
  o.qsgd_norm = static_cast<int>(compression::CompressionConfig{}.norm);
  o.topk_selection = FRUGAL_TOPK_EXACT;
  o.topk_tolerance = 0.2;
  o.error_feedback = 1;
  o.timeout_ms = 0;
  o.state = nullptr;
  o.non_finite = FRUGAL_NON_FINITE_DEFAULT;
  o.skipped = nullptr;
  o.dense_vectors = 1;
  o.ternary_clip = compression::CompressionConfig{}.clip_sigma;
  o.segments = nullptr;
  o.segment_count = 0;
  o.topk_scope = FRUGAL_TOPK_GLOBAL;
  o.topk_gtopk = 0;
  o.guardrail = nullptr;
  o.hierarchical = 0;
  o.autotune = nullptr;
  return o;
}

// A caller's struct of any size as this library's version: known fields copied, fields the
// caller's (older) version lacks left at their defaults, fields the library does not know
// (newer caller) accepted only when zero.
frugal_options read_options(const frugal_options* options) {
  if (options == nullptr) return default_options();
  return frugal::capi::read_versioned(*options, default_options(), kOptionsV1Size, "frugal_options",
                                      "frugal_options_init");
}

template <typename Enum>
Enum checked_enum(int value, int first, int last, std::string_view field) {
  if (value < first || value > last) {
    throw Error(ErrorCode::InvalidArgument,
                "options->" + std::string(field) + " " + std::to_string(value) + " is not in [" +
                    std::to_string(first) + ", " + std::to_string(last) + "]");
  }
  return static_cast<Enum>(value);
}

}  // namespace

bool dense_vectors(const frugal_options* options) {
  return read_options(options).dense_vectors != 0;
}

const frugal_guardrail_options* guardrail_of(const frugal_options* options) {
  return read_options(options).guardrail;
}

bool hierarchical(const frugal_options* options) {
  return read_options(options).hierarchical != 0;
}

const frugal_autotune_options* autotune_of(const frugal_options* options) {
  return read_options(options).autotune;
}

int* skipped_out(const frugal_options* options) {
  return options != nullptr && options->struct_size > offsetof(frugal_options, skipped)
             ? options->skipped
             : nullptr;
}

AllreduceOptions to_allreduce_options(const frugal_options* options) {
  const frugal_options o = read_options(options);
  AllreduceOptions out;
  out.op = checked_enum<ReduceOp>(o.op, FRUGAL_OP_SUM, FRUGAL_OP_AVERAGE, "op");
  out.algorithm = checked_enum<AllreduceAlgorithm>(o.algorithm, FRUGAL_ALGORITHM_AUTO,
                                                   FRUGAL_ALGORITHM_ALLGATHER, "algorithm");
  auto& c = out.compression;
  c.method =
      checked_enum<compression::Method>(o.method, FRUGAL_METHOD_NONE, FRUGAL_METHOD_QSGD, "method");
  c.non_finite = o.non_finite_flag != 0 ? compression::NonFinitePolicy::Flag
                                        : compression::NonFinitePolicy::Error;
  c.k = static_cast<std::size_t>(o.k);
  c.density = o.density;
  c.selection = checked_enum<compression::TopKSelection>(o.topk_selection, FRUGAL_TOPK_EXACT,
                                                         FRUGAL_TOPK_SAMPLED, "topk_selection");
  c.tolerance = o.topk_tolerance;
  c.values =
      o.topk_fp16_values != 0 ? compression::TopKValues::Fp16 : compression::TopKValues::Fp32;
  c.scaling = checked_enum<compression::OneBitScaling>(o.onebit_scaling, FRUGAL_ONEBIT_MEAN_ABS,
                                                       FRUGAL_ONEBIT_SIGN_MEANS, "onebit_scaling");
  c.bucket = static_cast<std::size_t>(o.bucket);
  c.bits = o.bits;
  c.norm = checked_enum<compression::QsgdNorm>(o.qsgd_norm, FRUGAL_QSGD_NORM_L2,
                                               FRUGAL_QSGD_NORM_MAX, "qsgd_norm");
  c.stochastic_rounding = o.stochastic_rounding != 0;
  c.clip_sigma = o.ternary_clip;
  c.topk_scope = checked_enum<compression::TopKScope>(o.topk_scope, FRUGAL_TOPK_GLOBAL,
                                                      FRUGAL_TOPK_PER_TENSOR, "topk_scope");
  c.gtopk = o.topk_gtopk != 0;
  if (o.segment_count > 0 && o.segments == nullptr) {
    throw Error(ErrorCode::InvalidArgument,
                "segments: NULL with segment_count " + std::to_string(o.segment_count));
  }
  // Read during the call (an asynchronous one copies them first).
  out.segments = std::span<const std::size_t>(o.segments, o.segment_count);
  // The compressor's own checks (bits, bucket, density, tolerance) run in make_compressor at
  // the allreduce, before anything is sent, with messages naming the field.
  out.error_feedback = o.error_feedback != 0;
  out.seed = o.seed;
  if (o.timeout_ms > 0) out.timeout = std::chrono::milliseconds(o.timeout_ms);
  out.state = o.state != nullptr ? &o.state->state : nullptr;
  out.non_finite = checked_enum<NonFiniteAction>(o.non_finite, FRUGAL_NON_FINITE_DEFAULT,
                                                 FRUGAL_NON_FINITE_ZERO, "non_finite");
  return out;
}

}  // namespace frugal::capi

using frugal::capi::guarded;
using frugal::capi::require_pointer;

namespace {

std::span<float> buffer(float* buf, size_t count) {
  if (count > 0) require_pointer(buf, "buf");
  return {buf, count};
}

}  // namespace

extern "C" {

frugal_status frugal_options_init_sized(frugal_options* options, size_t struct_size) {
  return guarded("frugal_options_init_sized", [&] {
    require_pointer(options, "options");
    frugal::capi::init_versioned(options, struct_size, frugal::capi::default_options(),
                                 frugal::capi::kOptionsV1Size, "frugal_options");
  });
}

frugal_status frugal_allreduce(frugal_comm* comm, float* buf, size_t count,
                               const frugal_options* options) {
  return guarded("frugal_allreduce", [&] {
    require_pointer(comm, "comm");
    frugal::capi::call_reporting_skip(options, [&](const frugal::AllreduceOptions& converted) {
      frugal::allreduce(*comm->comm, buffer(buf, count), converted);
    });
  });
}

frugal_status frugal_allreduce_async(frugal_comm* comm, float* buf, size_t count,
                                     const frugal_options* options, frugal_request** request) {
  return guarded("frugal_allreduce_async", [&] {
    require_pointer(comm, "comm");
    require_pointer(request, "request");
    frugal::AllreduceOptions converted = frugal::capi::to_allreduce_options(options);
    auto made = std::make_unique<frugal_request>();
    // The request owns the statistics the background thread fills in.
    converted.stats = &made->stats;
    made->skipped = frugal::capi::skipped_out(options);
    made->handle = frugal::allreduce_async(*comm->comm, buffer(buf, count), converted);
    *request = made.release();
  });
}

frugal_status frugal_test(const frugal_request* request, int* done) {
  return guarded("frugal_test", [&] {
    require_pointer(request, "request");
    require_pointer(done, "done");
    *done = request->handle.test() ? 1 : 0;
    if (*done != 0 && request->skipped != nullptr) {
      *request->skipped = request->stats.non_finite_skipped ? 1 : 0;
    }
  });
}

frugal_status frugal_wait(frugal_request** request) {
  return guarded("frugal_wait", [&] {
    require_pointer(request, "request");
    require_pointer(*request, "*request");
    std::unique_ptr<frugal_request> owned(*request);
    *request = nullptr;
    owned->handle.wait();
    if (owned->skipped != nullptr) *owned->skipped = owned->stats.non_finite_skipped ? 1 : 0;
  });
}

void frugal_request_free(frugal_request* request) {
  (void)guarded("frugal_request_free", [&] { delete request; });
}

}  // extern "C"
