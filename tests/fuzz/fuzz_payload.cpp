// libFuzzer target: every compression payload decoder. The compressor's configuration is taken
// from the payload's own header (so the fuzzer gets past the header checks and into the bodies),
// with the top-k selection and the non-finite policy from one extra leading byte. A decoder may
// reject the bytes with frugal::Error, never read or write out of bounds (ASan) or hit undefined
// behaviour (UBSan).
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "frugal/compression/compressor.hpp"
#include "frugal/compression/payload.hpp"
#include "frugal/error.hpp"

using namespace frugal::compression;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 1) return 0;
  const std::uint8_t knobs = data[0];
  const std::span<const std::byte> payload(reinterpret_cast<const std::byte*>(data + 1), size - 1);
  PayloadHeader h;
  try {
    h = read_header(payload);
  } catch (const frugal::Error&) {
    return 0;
  }
  // The output buffer is the receiver's, sized by its own count; cap it so a forged count
  // cannot make the harness itself allocate gigabytes.
  if (h.count > (std::size_t{1} << 22)) return 0;
  CompressionConfig c;
  c.method = h.method;
  c.non_finite = (knobs & 1) != 0 ? NonFinitePolicy::Flag : NonFinitePolicy::Error;
  c.selection = (knobs & 2) != 0 ? TopKSelection::Sampled : TopKSelection::Exact;
  c.k = static_cast<std::size_t>(h.k);
  c.bucket = h.bucket;
  c.bits = static_cast<int>(h.bits);
  c.values = static_cast<TopKValues>(h.variant);
  c.scaling = static_cast<OneBitScaling>(h.variant);
  c.norm = static_cast<QsgdNorm>(h.variant);
  c.stochastic_rounding = h.variant != 0;
  std::unique_ptr<Compressor> compressor;
  try {
    compressor = make_compressor(c);
  } catch (const frugal::Error&) {
    return 0;
  }
  // A receiver whose count differs from the sender's must be refused too (knobs bit 2).
  const std::size_t n = static_cast<std::size_t>(h.count) + ((knobs & 4) != 0 ? 1 : 0);
  std::vector<float> out(n, 1.0f);
  try {
    compressor->decode(payload, out);
  } catch (const frugal::Error&) {
  }
  try {
    compressor->decode_add(payload, out);
  } catch (const frugal::Error&) {
  }
  return 0;
}
