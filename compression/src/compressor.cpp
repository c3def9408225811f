#include "frugal/compression/compressor.hpp"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <string>
#include <vector>

#include "frugal/error.hpp"
#include "kernel.hpp"
#include "methods.hpp"

namespace frugal::compression {

// ----- instruction-set selection ----------------------------------------------------------

namespace {

SimdLevel detect() noexcept {
#if FRUGAL_HAVE_AVX2_KERNELS
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c") &&
      __builtin_cpu_supports("bmi2") && __builtin_cpu_supports("popcnt")) {
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl")) {
      return SimdLevel::Avx512;
    }
    return SimdLevel::Avx2;
  }
#endif
  return SimdLevel::Scalar;
}

std::atomic<SimdLevel>& current_level() noexcept {
  static std::atomic<SimdLevel> level{detect()};
  return level;
}

}  // namespace

SimdLevel best_simd_level() noexcept {
  static const SimdLevel best = detect();
  return best;
}

SimdLevel simd_level() noexcept {
  return current_level().load(std::memory_order_relaxed);
}

SimdLevel set_simd_level(SimdLevel level) noexcept {
  if (static_cast<int>(level) > static_cast<int>(best_simd_level())) level = best_simd_level();
  current_level().store(level, std::memory_order_relaxed);
  return level;
}

namespace kernel {

bool use_avx2() noexcept {
  return simd_level() >= SimdLevel::Avx2;
}
bool use_avx512() noexcept {
  return simd_level() == SimdLevel::Avx512;
}

void corrupt(const char* what) {
  throw Error(ErrorCode::InvalidArgument, std::string("payload: corrupt ") + what);
}

void check_scales(std::span<const std::byte> scales, bool flagged, bool non_negative,
                  const char* what) {
  if (flagged) return;
  for (std::size_t i = 0; i + 4 <= scales.size(); i += 4) {
    const float s = load_f32(scales.data() + i);
    if (!std::isfinite(s) || (non_negative && s < 0.0f)) corrupt(what);
  }
}

}  // namespace kernel

// ----- payload header -------------------------------------------------------------------

void write_header(const PayloadHeader& h, std::span<std::byte> out) noexcept {
  std::byte* p = out.data();
  const std::uint32_t magic = PayloadHeader::kMagic;
  const std::uint8_t bytes[4] = {h.version, static_cast<std::uint8_t>(h.method), h.variant,
                                 h.flags};
  std::memcpy(p, &magic, 4);
  std::memcpy(p + 4, bytes, 4);
  std::memcpy(p + 8, &h.bucket, 4);
  std::memcpy(p + 12, &h.bits, 4);
  std::memcpy(p + 16, &h.count, 8);
  std::memcpy(p + 24, &h.k, 8);
}

PayloadHeader read_header(std::span<const std::byte> payload) {
  if (payload.size() < PayloadHeader::kSize) {
    throw Error(ErrorCode::InvalidArgument,
                "payload: " + std::to_string(payload.size()) + " bytes, shorter than the " +
                    std::to_string(PayloadHeader::kSize) + "-byte header");
  }
  const std::byte* p = payload.data();
  std::uint32_t magic;
  std::uint8_t bytes[4];
  std::memcpy(&magic, p, 4);
  std::memcpy(bytes, p + 4, 4);
  if (magic != PayloadHeader::kMagic) {
    throw Error(ErrorCode::InvalidArgument, "payload: bad magic, not a frugal payload");
  }
  if (bytes[0] != PayloadHeader::kVersion) {
    throw Error(ErrorCode::InvalidArgument,
                "payload: unsupported version " + std::to_string(bytes[0]));
  }
  if (bytes[1] > static_cast<std::uint8_t>(Method::Qsgd)) {
    throw Error(ErrorCode::InvalidArgument, "payload: unknown method " + std::to_string(bytes[1]));
  }
  if ((bytes[3] & ~PayloadHeader::kNonFinite) != 0) {
    throw Error(ErrorCode::InvalidArgument, "payload: unknown flags");
  }
  PayloadHeader h;
  h.version = bytes[0];
  h.method = static_cast<Method>(bytes[1]);
  h.variant = bytes[2];
  h.flags = bytes[3];
  std::memcpy(&h.bucket, p + 8, 4);
  std::memcpy(&h.bits, p + 12, 4);
  std::memcpy(&h.count, p + 16, 8);
  std::memcpy(&h.k, p + 24, 8);
  return h;
}

// ----- Compressor -----------------------------------------------------------------------

bool Compressor::unbiased() const noexcept {
  switch (config_.method) {
    case Method::None:
    case Method::Qsgd:
      return true;
    case Method::Ternary:
      return config_.clip_sigma == 0.0f;  // clipped elements are sent as ±scale
    case Method::Bf16:
      return config_.stochastic_rounding;
    default:
      return false;
  }
}

std::size_t Compressor::k_for(std::size_t n) const noexcept {
  if (config_.method != Method::TopK || n == 0) return 0;
  if (config_.k != 0) return config_.k < n ? config_.k : n;
  const double k = std::ceil(config_.density * static_cast<double>(n));
  if (k < 1.0) return 1;
  return k >= static_cast<double>(n) ? n : static_cast<std::size_t>(k);
}

PayloadHeader Compressor::start_payload(std::size_t n, std::span<const std::byte> out) const {
  require(out.size() >= max_encoded_bytes(n), "out",
          "smaller than max_encoded_bytes(" + std::to_string(n) +
              ") = " + std::to_string(max_encoded_bytes(n)) + " bytes");
  PayloadHeader header;
  header.method = config_.method;
  header.count = n;
  fill_header(header);
  return header;
}

std::size_t Compressor::encode(std::span<const float> input, std::span<std::byte> out,
                               Rng& rng) const {
  const std::size_t n = input.size();
  PayloadHeader header = start_payload(n, out);
  const std::size_t body = encode_body(input, out.subspan(PayloadHeader::kSize), rng, header);
  rng.advance(n);
  if (header.non_finite() && config_.non_finite == NonFinitePolicy::Error) {
    throw Error(ErrorCode::InvalidArgument, std::string("input: NaN or Inf (or a value out of ") +
                                                std::string(to_string(config_.method)) +
                                                " range) in " + std::to_string(n) + " elements");
  }
  write_header(header, out);
  return PayloadHeader::kSize + body;
}

std::size_t Compressor::encode_apply(std::span<const float> input, std::span<std::byte> out,
                                     Rng& rng, std::span<float> applied) const {
  require(applied.size() == input.size(), "applied", "must have as many elements as input");
  const std::size_t bytes = encode(input, out, rng);
  decode(out.first(bytes), applied);
  return bytes;
}

void Compressor::decode(std::span<const std::byte> payload, std::span<float> out) const {
  decode_impl(payload, out, false);
}

void Compressor::decode_add(std::span<const std::byte> payload, std::span<float> out) const {
  decode_impl(payload, out, true);
}

bool Compressor::encode_range(std::span<const float>, std::size_t, std::size_t,
                              std::span<std::byte>, const Rng&) const {
  throw Error(ErrorCode::Internal, "encode_range: method has no independent ranges");
}

void Compressor::decode_range(std::span<const std::byte>, std::size_t, std::size_t,
                              std::span<float>) const {
  throw Error(ErrorCode::Internal, "decode_range: method has no independent ranges");
}

void Compressor::check_header_extra(const PayloadHeader& header) const {
  if (header.k != 0) throw Error(ErrorCode::InvalidArgument, "payload: k set for a dense method");
}

void Compressor::check_body(const PayloadHeader&, std::span<const std::byte>) const {}

void Compressor::decode_range_add(const PayloadHeader&, std::span<const std::byte>, std::size_t,
                                  std::span<float>) const {
  throw Error(ErrorCode::Internal, "decode_range_add: method has no independent ranges");
}

namespace {
// Elements per block of decode_sum (unless the granule is larger): the block of the sum (8 KiB)
// stays in L1 while every payload's part of it is added.
constexpr std::size_t kSumBlock = 2048;
}  // namespace

void Compressor::decode_sum(std::span<const std::span<const std::byte>> payloads,
                            std::span<float> out, float divisor) const {
  const std::size_t n = out.size();
  const std::size_t granule = range_granule();
  const auto divide = [divisor](std::span<float> part) {
    if (divisor == 1.0f) return;
    for (float& x : part) x /= divisor;
  };
  if (granule == 0 || payloads.size() < 2) {
    std::fill(out.begin(), out.end(), 0.0f);
    for (const std::span<const std::byte> payload : payloads) decode_impl(payload, out, true);
    divide(out);
    return;
  }
  std::vector<PayloadHeader> headers;
  headers.reserve(payloads.size());
  for (const std::span<const std::byte> payload : payloads) {
    headers.push_back(check_header(payload, n));
    check_body(headers.back(), payload.subspan(PayloadHeader::kSize));
  }
  const std::size_t block = std::max(granule, kSumBlock / granule * granule);
  for (std::size_t b0 = 0; b0 < n; b0 += block) {
    const std::span<float> part = out.subspan(b0, std::min(block, n - b0));
    std::fill(part.begin(), part.end(), 0.0f);
    for (std::size_t q = 0; q < payloads.size(); ++q) {
      decode_range_add(headers[q], payloads[q].subspan(PayloadHeader::kSize), b0, part);
    }
    divide(part);
  }
}

PayloadHeader Compressor::check_header(std::span<const std::byte> payload, std::size_t n) const {
  const PayloadHeader h = read_header(payload);
  if (h.method != config_.method) {
    throw Error(ErrorCode::Mismatch, "payload method " + std::string(to_string(h.method)) +
                                         ", receiver expects " +
                                         std::string(to_string(config_.method)));
  }
  PayloadHeader expected;
  expected.method = config_.method;
  fill_header(expected);
  // Top-k's `bits` is the length of its index stream, not a parameter: body_bytes uses it.
  const bool bits_differ = h.method != Method::TopK && h.bits != expected.bits;
  if (h.variant != expected.variant || h.bucket != expected.bucket || bits_differ) {
    throw Error(ErrorCode::Mismatch,
                "payload " + std::string(to_string(h.method)) + " parameters (variant " +
                    std::to_string(h.variant) + ", bucket " + std::to_string(h.bucket) + ", bits " +
                    std::to_string(h.bits) + ") differ from the receiver's (variant " +
                    std::to_string(expected.variant) + ", bucket " +
                    std::to_string(expected.bucket) + ", bits " + std::to_string(expected.bits) +
                    ")");
  }
  if (h.count != n) {
    throw Error(ErrorCode::Mismatch, "payload holds " + std::to_string(h.count) +
                                         " elements, receiver expects " + std::to_string(n));
  }
  check_header_extra(h);
  const std::size_t body = body_bytes(h);
  if (payload.size() - PayloadHeader::kSize != body) {
    throw Error(ErrorCode::InvalidArgument,
                "payload: " + std::to_string(payload.size()) + " bytes, its header implies " +
                    std::to_string(PayloadHeader::kSize + body) + " (truncated or over-long)");
  }
  return h;
}

void Compressor::decode_impl(std::span<const std::byte> payload, std::span<float> out,
                             bool add) const {
  const PayloadHeader h = check_header(payload, out.size());
  decode_body(h, payload.subspan(PayloadHeader::kSize), out, add);
}

// ----- factory ----------------------------------------------------------------------------

std::unique_ptr<Compressor> make_compressor(const CompressionConfig& config) {
  CompressionConfig c = config;
  const auto check_bucket = [&](std::size_t fallback) {
    if (c.bucket == 0) c.bucket = fallback;
    require(c.bucket % 8 == 0 && c.bucket < (std::size_t{1} << 31), "bucket",
            "must be a positive multiple of 8 below 2^31");
  };
  switch (c.method) {
    case Method::None:
      return make_raw_compressor(c);
    case Method::Fp16:
      return make_fp16_compressor(c);
    case Method::Bf16:
      return make_bf16_compressor(c);
    case Method::TopK:
      require(c.k != 0 || (c.density > 0.0 && c.density <= 1.0), "density",
              "must be in (0, 1] when k is 0");
      require(c.tolerance >= 0.0 && c.tolerance < 1.0, "tolerance", "must be in [0, 1)");
      require(c.values == TopKValues::Fp32 || c.values == TopKValues::Fp16, "values",
              "unknown TopKValues");
      require(c.selection == TopKSelection::Exact || c.selection == TopKSelection::Sampled,
              "selection", "unknown TopKSelection");
      require(c.topk_scope == TopKScope::Global || c.topk_scope == TopKScope::PerTensor,
              "topk_scope", "unknown TopKScope");
      return make_topk_compressor(c);
    case Method::OneBit:
      check_bucket(kDefaultOneBitChunk);
      require(c.scaling == OneBitScaling::MeanAbs || c.scaling == OneBitScaling::SignMeans,
              "scaling", "unknown OneBitScaling");
      return make_onebit_compressor(c);
    case Method::Ternary:
      check_bucket(kDefaultTernaryBucket);
      require(std::isfinite(c.clip_sigma) && c.clip_sigma >= 0.0f, "clip_sigma",
              "must be finite and >= 0 (0: no clipping)");
      return make_ternary_compressor(c);
    case Method::Qsgd:
      check_bucket(kDefaultQsgdBucket);
      require(c.bits == 2 || c.bits == 4 || c.bits == 8, "bits", "must be 2, 4 or 8");
      require(c.norm == QsgdNorm::L2 || c.norm == QsgdNorm::Max, "norm", "unknown QsgdNorm");
      return make_qsgd_compressor(c);
  }
  throw Error(ErrorCode::InvalidArgument, "method: unknown compression method");
}

bool momentum_correction_by_default(Method method) noexcept {
  return method == Method::TopK || method == Method::OneBit;
}

}  // namespace frugal::compression
