// Method::None: the fp32 baseline every table compares against. Still framed and checked like
// the others, so a receiver cannot mistake it for another method or size.

#include <limits>

#include "kernel.hpp"
#include "methods.hpp"

namespace frugal::compression {
namespace {

using namespace kernel;

// Copies and reports whether any element is NaN/Inf.
// `in` or `out` may be a payload pointer with any alignment: all accesses go through memcpy.
template <class Isa>
bool copy_checked(const float* in, std::size_t n, float* out) {
  u32x8 bad{};
  std::size_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    const f32x8 v = load8(in + i);
    bad |= nonfinite_lanes(v);
    store8(out + i, v);
  }
  if (i < n) {
    const f32x8 v = load_partial(in + i, n - i);
    bad |= nonfinite_lanes(v);
    std::memcpy(out + i, &v, (n - i) * sizeof(float));
  }
  return any(bad);
}
FRUGAL_DISPATCH(copy_checked, (const float* in, std::size_t n, float* out), (in, n, out))

template <class Isa>
bool add_checked(const float* in, std::size_t n, float* out) {
  u32x8 bad{};
  std::size_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    const f32x8 v = load8(in + i);
    bad |= nonfinite_lanes(v);
    store8(out + i, load8(out + i) + v);
  }
  if (i < n) {
    const f32x8 v = load_partial(in + i, n - i);
    bad |= nonfinite_lanes(v);
    const f32x8 sum = load_partial(out + i, n - i) + v;
    std::memcpy(out + i, &sum, (n - i) * sizeof(float));
  }
  return any(bad);
}
FRUGAL_DISPATCH(add_checked, (const float* in, std::size_t n, float* out), (in, n, out))

class RawCompressor final : public Compressor {
 public:
  explicit RawCompressor(const CompressionConfig& config) : Compressor(config) {}

  std::size_t max_encoded_bytes(std::size_t n) const noexcept override {
    return PayloadHeader::kSize + 4 * n;
  }
  std::optional<std::size_t> encoded_bytes(std::size_t n) const noexcept override {
    return max_encoded_bytes(n);
  }

 protected:
  void fill_header(PayloadHeader&) const noexcept override {}
  std::size_t body_bytes(const PayloadHeader& h) const noexcept override {
    return 4 * static_cast<std::size_t>(h.count);
  }

  std::size_t encode_body(std::span<const float> input, std::span<std::byte> body, Rng&,
                          PayloadHeader& header) const override {
    // The payload may be unaligned: copy through memcpy-based vectors, not float stores.
    const std::size_t n = input.size();
    float* out = reinterpret_cast<float*>(body.data());
    if (copy_checked_dispatch(input.data(), n, out)) header.flags |= PayloadHeader::kNonFinite;
    return 4 * n;
  }

  std::size_t range_granule() const noexcept override { return 8; }
  float flag_free_magnitude() const noexcept override { return std::numeric_limits<float>::max(); }
  bool encode_range(std::span<const float> x, std::size_t, std::size_t begin,
                    std::span<std::byte> body, const Rng&) const override {
    return copy_checked_dispatch(x.data(), x.size(),
                                 reinterpret_cast<float*>(body.data() + 4 * begin));
  }
  void decode_range(std::span<const std::byte> body, std::size_t, std::size_t begin,
                    std::span<float> out) const override {
    copy_checked_dispatch(reinterpret_cast<const float*>(body.data() + 4 * begin), out.size(),
                          out.data());
  }

  void decode_body(const PayloadHeader& h, std::span<const std::byte> body, std::span<float> out,
                   bool add) const override {
    const float* in = reinterpret_cast<const float*>(body.data());
    const bool bad = add ? add_checked_dispatch(in, out.size(), out.data())
                         : copy_checked_dispatch(in, out.size(), out.data());
    if (bad && !h.non_finite()) corrupt("value (NaN/Inf in an unflagged payload)");
  }
  void decode_range_add(const PayloadHeader& h, std::span<const std::byte> body, std::size_t begin,
                        std::span<float> out) const override {
    const float* in = reinterpret_cast<const float*>(body.data() + 4 * begin);
    if (add_checked_dispatch(in, out.size(), out.data()) && !h.non_finite()) {
      corrupt("value (NaN/Inf in an unflagged payload)");
    }
  }
};

}  // namespace

std::unique_ptr<Compressor> make_raw_compressor(const CompressionConfig& config) {
  return std::make_unique<RawCompressor>(config);
}

}  // namespace frugal::compression
