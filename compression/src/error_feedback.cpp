#include "frugal/compression/error_feedback.hpp"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <string>

#include "frugal/error.hpp"
#include "kernel.hpp"

#if defined(__SSE2__)
#include <immintrin.h>
#endif

namespace frugal::compression {

namespace {
constexpr std::uint32_t kImageMagic = 0x46455246;  // "FREF"
constexpr std::uint32_t kImageVersion = 1;
constexpr std::size_t kImageHeader = 4 + 4 + 8 + 4;  // magic, version, size, decay
}  // namespace

ErrorFeedback::ErrorFeedback(std::size_t size, float decay) : residual_(size, 0.0f), decay_(decay) {
  require(decay >= 0.0f && decay <= 1.0f, "decay", "must be in [0, 1]");
}

void ErrorFeedback::check_range(std::size_t count, std::size_t offset) const {
  require(offset <= residual_.size() && count <= residual_.size() - offset, "offset",
          "range [offset, offset + size) exceeds the feedback buffer of " +
              std::to_string(residual_.size()) + " elements");
}

void ErrorFeedback::compensate(std::span<float> grad, std::size_t offset) const {
  check_range(grad.size(), offset);
  const float* r = residual_.data() + offset;
  if (decay_ == 1.0f) {
    for (std::size_t i = 0; i < grad.size(); ++i) grad[i] += r[i];
  } else {
    for (std::size_t i = 0; i < grad.size(); ++i) grad[i] += decay_ * r[i];
  }
}

void ErrorFeedback::compensate(std::span<const float> grad, std::span<float> compensated,
                               std::size_t offset) const {
  check_range(grad.size(), offset);
  require(compensated.size() == grad.size(), "compensated", "must have as many elements as grad");
  const float* r = residual_.data() + offset;
  if (decay_ == 1.0f) {
    for (std::size_t i = 0; i < grad.size(); ++i) compensated[i] = grad[i] + r[i];
  } else {
    for (std::size_t i = 0; i < grad.size(); ++i) compensated[i] = grad[i] + decay_ * r[i];
  }
}

void ErrorFeedback::absorb(std::span<const float> compensated, std::span<const float> applied,
                           std::size_t offset) {
  check_range(compensated.size(), offset);
  require(applied.size() == compensated.size(), "applied",
          "must have as many elements as compensated");
  float* r = residual_.data() + offset;
  for (std::size_t i = 0; i < compensated.size(); ++i) r[i] = compensated[i] - applied[i];
}

void ErrorFeedback::reset() noexcept {
  std::fill(residual_.begin(), residual_.end(), 0.0f);
}

void ErrorFeedback::scale(float factor) {
  if (!(std::isfinite(factor) && factor >= 0.0f)) {
    throw Error(ErrorCode::InvalidArgument,
                "factor: must be finite and >= 0, got " + std::to_string(factor));
  }
  for (float& r : residual_) r *= factor;
}

std::vector<std::byte> ErrorFeedback::save() const {
  std::vector<std::byte> image(kImageHeader + 4 * residual_.size());
  const std::uint64_t size = residual_.size();
  std::memcpy(image.data(), &kImageMagic, 4);
  std::memcpy(image.data() + 4, &kImageVersion, 4);
  std::memcpy(image.data() + 8, &size, 8);
  std::memcpy(image.data() + 16, &decay_, 4);
  if (!residual_.empty()) {
    std::memcpy(image.data() + kImageHeader, residual_.data(), 4 * residual_.size());
  }
  return image;
}

void ErrorFeedback::restore(std::span<const std::byte> image) {
  if (image.size() < kImageHeader) {
    throw Error(ErrorCode::InvalidArgument, "error feedback image: truncated header");
  }
  std::uint32_t magic, version;
  std::uint64_t size;
  float decay;
  std::memcpy(&magic, image.data(), 4);
  std::memcpy(&version, image.data() + 4, 4);
  std::memcpy(&size, image.data() + 8, 8);
  std::memcpy(&decay, image.data() + 16, 4);
  if (magic != kImageMagic || version != kImageVersion) {
    throw Error(ErrorCode::InvalidArgument, "error feedback image: bad magic or version");
  }
  if (size != residual_.size()) {
    throw Error(ErrorCode::Mismatch, "error feedback image holds " + std::to_string(size) +
                                         " elements, this buffer has " +
                                         std::to_string(residual_.size()));
  }
  if (image.size() - kImageHeader != 4 * residual_.size()) {
    throw Error(ErrorCode::InvalidArgument, "error feedback image: truncated or over-long");
  }
  if (!(decay >= 0.0f && decay <= 1.0f)) {
    throw Error(ErrorCode::InvalidArgument, "error feedback image: decay out of [0, 1]");
  }
  if (!residual_.empty()) {
    std::memcpy(residual_.data(), image.data() + kImageHeader, 4 * residual_.size());
  }
  decay_ = decay;
}

namespace {

// Elements per block of the fused path: the block's compensated values (16 KiB) stay in L1 and
// its slice of the payload and of `applied` in L2 between the encode and the reconstruction.
constexpr std::size_t kFeedbackBlock = 4096;

// From this many elements on, the residual and `applied` are written with non-temporal stores:
// the buffers (8 MiB each and up) will not be read again before they leave the cache, and
// streaming stores skip reading every destination line first, a third of the traffic.
constexpr std::size_t kStreamFrom = std::size_t{1} << 21;

thread_local std::vector<float> t_block, t_decoded;
thread_local std::vector<float> t_topk_values;

// dst[i] = a[i] - b[i], or a[i] when b is null, for i < len; non-temporal stores if `stream`.
void store_block(float* dst, const float* a, const float* b, std::size_t len, bool stream) {
  std::size_t i = 0;
#if defined(__SSE2__)
  if (stream) {
    for (; i < len && reinterpret_cast<std::uintptr_t>(dst + i) % 16 != 0; ++i) {
      dst[i] = b != nullptr ? a[i] - b[i] : a[i];
    }
    for (; i + 4 <= len; i += 4) {
      __m128 v = _mm_loadu_ps(a + i);
      if (b != nullptr) v = _mm_sub_ps(v, _mm_loadu_ps(b + i));
      _mm_stream_ps(dst + i, v);
    }
  }
#endif
  if (b != nullptr) {
    for (; i < len; ++i) dst[i] = a[i] - b[i];
  } else {
    for (; i < len; ++i) dst[i] = a[i];
  }
}

using namespace kernel;

// The largest |grad + decay * residual| as a bit pattern (NaN and Inf above every finite value),
// computed exactly as the fused pass computes each element. A pure streaming read.
template <class Isa>
std::uint32_t max_compensated_key(const float* g, const float* r, float decay, std::size_t n) {
  u32x8 m{};
  std::uint32_t tail = 0;
  std::size_t i = 0;
  const auto key = [](float c) { return std::bit_cast<std::uint32_t>(c) & 0x7fffffffu; };
  if (decay == 1.0f) {
    for (; i + kLanes <= n; i += kLanes) {
      const u32x8 k = bits_of(load8(g + i) + load8(r + i)) & 0x7fffffffu;
      m = m > k ? m : k;
    }
    for (; i < n; ++i) tail = std::max(tail, key(g[i] + r[i]));
  } else {
    const f32x8 d = splat(decay);
    for (; i + kLanes <= n; i += kLanes) {
      const u32x8 k = bits_of(load8(g + i) + d * load8(r + i)) & 0x7fffffffu;
      m = m > k ? m : k;
    }
    for (; i < n; ++i) tail = std::max(tail, key(g[i] + decay * r[i]));
  }
  for (std::size_t l = 0; l < kLanes; ++l) tail = std::max(tail, m[l]);
  return tail;
}
FRUGAL_DISPATCH(max_compensated_key, (const float* g, const float* r, float decay, std::size_t n),
                (g, r, decay, n))

[[noreturn]] void throw_non_finite(const Compressor& compressor, std::size_t n) {
  throw Error(ErrorCode::InvalidArgument, std::string("input: NaN or Inf (or a value out of ") +
                                              std::string(to_string(compressor.method())) +
                                              " range) in " + std::to_string(n) + " elements");
}

}  // namespace

// Bit-identical to the unfused sequence (compensate into `applied`, encode it, copy it to the
// residual, decode over it, subtract): every element goes through the same operations, only the
// order in which blocks of elements are visited changes. See the header for the contract.
std::size_t encode_with_feedback(const Compressor& compressor, ErrorFeedback& feedback,
                                 std::span<const float> grad, std::span<std::byte> out, Rng& rng,
                                 std::span<float> applied, std::size_t offset) {
  require(applied.size() == grad.size(), "applied", "must have as many elements as grad");
  feedback.check_range(grad.size(), offset);
  const std::size_t n = grad.size();
  float* r = feedback.residual_.data() + offset;
  const float decay = feedback.decay_;
  const std::size_t granule = compressor.range_granule();

  if (granule == 0 && compressor.method() != Method::TopK) {
    // No ranges: the plain sequence. `applied` holds the compensated gradient until the residual
    // has taken a copy, then the reconstruction.
    feedback.compensate(grad, applied, offset);
    const std::size_t bytes = compressor.encode(applied, out, rng);
    std::copy(applied.begin(), applied.end(), r);
    compressor.decode(out.first(bytes), applied);
    for (std::size_t i = 0; i < n; ++i) r[i] -= applied[i];
    return bytes;
  }
  if (granule == 0) {
    // Top-k: the selection needs the whole compensated buffer first. The reconstruction is then
    // zero except at the k selected indices, so one blocked pass writes residual = compensated
    // and applied = 0, and patches the selected entries of the block while it is in cache.
    feedback.compensate(grad, applied, offset);
    const std::size_t bytes = compressor.encode(applied, out, rng);  // throws: residual intact
    const PayloadHeader h = read_header(out.first(bytes));
    const auto k = static_cast<std::size_t>(h.k);
    const std::byte* idx = out.data() + PayloadHeader::kSize;
    const std::byte* values = idx + 4 * k;
    std::vector<float>& v = t_topk_values;
    v.resize(k);
    if (compressor.config().values == TopKValues::Fp16) {
      kernel::decode_half(values, k, v.data());
    } else if (k != 0) {
      std::memcpy(v.data(), values, 4 * k);
    }
    std::size_t next = 0;
    for (std::size_t b0 = 0; b0 < n; b0 += kFeedbackBlock) {
      const std::size_t end = std::min(n, b0 + kFeedbackBlock);
      std::copy(applied.begin() + static_cast<std::ptrdiff_t>(b0),
                applied.begin() + static_cast<std::ptrdiff_t>(end), r + b0);
      std::fill(applied.begin() + static_cast<std::ptrdiff_t>(b0),
                applied.begin() + static_cast<std::ptrdiff_t>(end), 0.0f);
      for (; next < k; ++next) {
        std::uint32_t j;
        std::memcpy(&j, idx + 4 * next, 4);
        if (j >= end) break;
        applied[j] = 0.0f + v[next];  // what decode computes: fill with 0, then add
        r[j] -= applied[j];
      }
    }
    return bytes;
  }

  require(out.size() >= compressor.max_encoded_bytes(n), "out",
          "smaller than max_encoded_bytes(" + std::to_string(n) +
              ") = " + std::to_string(compressor.max_encoded_bytes(n)) + " bytes");
  PayloadHeader header;
  header.method = compressor.method();
  header.count = n;
  compressor.fill_header(header);
  const std::span<std::byte> body = out.subspan(PayloadHeader::kSize);

  const std::size_t block = std::max(granule, kFeedbackBlock / granule * granule);
  std::vector<float>& s = t_block;
  s.resize(std::min(block, n));
  const auto compensate = [&](std::size_t b0, std::size_t len) {
    const float* g = grad.data() + b0;
    const float* rb = r + b0;
    if (decay == 1.0f) {
      for (std::size_t i = 0; i < len; ++i) s[i] = g[i] + rb[i];
    } else {
      for (std::size_t i = 0; i < len; ++i) s[i] = g[i] + decay * rb[i];
    }
  };
  const auto encode_block = [&](std::size_t b0, std::size_t len) {
    return compressor.encode_range(std::span<const float>(s.data(), len), n, b0, body, rng);
  };

  // Under NonFinitePolicy::Error a flagged payload must throw with the residual untouched. One
  // streaming pass shows whether every compensated element is within the method's flag-free
  // magnitude; then nothing can flag and one fused pass does everything (as under Flag).
  // Otherwise (NaN/Inf or huge values: rare) the payload is completed, reading grad and residual,
  // before the pass that writes them.
  bool check_first = false;
  if (compressor.config().non_finite == NonFinitePolicy::Error && n != 0) {
    const float bound = compressor.flag_free_magnitude();
    check_first = max_compensated_key_dispatch(grad.data(), r, decay, n) >
                  std::bit_cast<std::uint32_t>(bound);
  }
  bool flagged = false;
  if (check_first) {
    for (std::size_t b0 = 0; b0 < n; b0 += block) {
      const std::size_t len = std::min(block, n - b0);
      compensate(b0, len);
      flagged |= encode_block(b0, len);
    }
    if (flagged) {
      rng.advance(n);
      throw_non_finite(compressor, n);
    }
  }
  const bool stream = n >= kStreamFrom;
  std::vector<float>& d = t_decoded;
  d.resize(s.size());
  for (std::size_t b0 = 0; b0 < n; b0 += block) {
    const std::size_t len = std::min(block, n - b0);
    compensate(b0, len);
    if (!check_first) flagged |= encode_block(b0, len);
    compressor.decode_range(body, n, b0, std::span<float>(d.data(), len));
    store_block(r + b0, s.data(), d.data(), len, stream);
    store_block(applied.data() + b0, d.data(), nullptr, len, stream);
  }
#if defined(__SSE2__)
  if (stream) _mm_sfence();  // order the streaming stores before whatever the caller does next
#endif
  rng.advance(n);
  if (flagged && compressor.config().non_finite == NonFinitePolicy::Error) {
    // Only if a method's flag_free_magnitude promised too much (the residual is written).
    throw Error(ErrorCode::Internal, "encode_with_feedback: flag-free magnitude violated");
  }
  if (flagged) header.flags |= PayloadHeader::kNonFinite;
  write_header(header, out);
  return PayloadHeader::kSize + compressor.body_bytes(header);
}

float max_compensated_magnitude(std::span<const float> grad, const ErrorFeedback* feedback,
                                std::size_t offset) {
  const std::size_t n = grad.size();
  std::uint32_t key = 0;
  if (feedback != nullptr) {
    feedback->check_range(n, offset);
    if (n != 0) {
      key = max_compensated_key_dispatch(grad.data(), feedback->residual_.data() + offset,
                                         feedback->decay_, n);
    }
  } else {
    // Branch-free, so it vectorises; NaN's bit patterns sort above Inf's, as above.
    for (float g : grad) key = std::max(key, std::bit_cast<std::uint32_t>(g) & 0x7fffffffu);
  }
  return std::bit_cast<float>(key);
}

}  // namespace frugal::compression
