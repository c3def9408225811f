// Method::TopK: the k largest magnitudes as (index, value) pairs, indices increasing.
//
// Selection works on the magnitude's bit pattern (|x| as uint32 orders like |x| for non-NaN, and
// NaN/Inf sort above every finite value, so they are always selected and then reported).
//
// Exact: a strided sample brackets the k-th largest magnitude from below (a few standard
// deviations of sampling noise of margin), one pass over the input collects every element at or
// above that bound (about 1.2 k of them), and a radix select on the collected keys finds the
// exact threshold; ties at the threshold go to the lowest indices. If the sample misled (too
// few or far too many collected), a full 2048-bin histogram of the top key bits gives a bound
// that cannot fail. So the input is read about once, versus nth_element's several passes with
// data movement.
//
// Sampled (DGC, Lin et al. 2018): the threshold is the sample's k-th largest scaled to the
// sample size (the sample is taken as runs of 16 consecutive elements, which is cheaper to
// read than single strided elements); one pass collects everything above it; if the count is within
// the tolerance it is the answer, above it the exact top-k of the collected set is taken, below it
// falls back to exact selection. The sample size makes the count's standard deviation about
// tolerance / 4.

#include <algorithm>
#include <cmath>
#include <vector>

#include "frugal/compression/topk_indices.hpp"
#include "kernel.hpp"
#include "methods.hpp"

namespace frugal::compression {
namespace {

using namespace kernel;

constexpr std::uint32_t kAbsMask = 0x7fffffffu;

FRUGAL_INLINE i32x8 abs_keys(const float* p) {
  return reinterpret_cast<i32x8>(bits_of(load8(p)) & kAbsMask);
}

// Appends the lanes of (idx, raw) selected by `mask` (bit i for lane i) at out_idx / out_raw, in
// lane order; returns how many. May write all 8 lanes of both outputs (the caller's buffers have
// room), so that the AVX2 version needs no branches.
FRUGAL_INLINE std::size_t compress(Scalar, std::uint32_t mask, u32x8 idx, u32x8 raw,
                                   std::uint32_t* out_idx, std::uint32_t* out_raw) {
  std::size_t c = 0;
  while (mask != 0) {
    const auto b = static_cast<std::size_t>(__builtin_ctz(mask));
    mask &= mask - 1;
    out_idx[c] = idx[b];
    out_raw[c] = raw[b];
    ++c;
  }
  return c;
}

#if FRUGAL_HAVE_AVX2_KERNELS
// For each 8-bit mask, the lanes to gather so that the selected ones come first, in order.
struct CompressTable {
  std::uint32_t lanes[256][8];
};
constexpr CompressTable make_compress_table() {
  CompressTable t{};
  for (std::uint32_t m = 0; m < 256; ++m) {
    std::uint32_t c = 0;
    for (std::uint32_t l = 0; l < 8; ++l) {
      if ((m >> l) & 1u) t.lanes[m][c++] = l;
    }
    for (; c < 8; ++c) t.lanes[m][c] = 0;
  }
  return t;
}
alignas(32) constexpr CompressTable kCompressTable = make_compress_table();

FRUGAL_AVX2 inline std::size_t compress(Avx2, std::uint32_t mask, u32x8 idx, u32x8 raw,
                                        std::uint32_t* out_idx, std::uint32_t* out_raw) {
  const __m256i perm =
      _mm256_load_si256(reinterpret_cast<const __m256i*>(kCompressTable.lanes[mask]));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(out_idx),
                      _mm256_permutevar8x32_epi32(reinterpret_cast<__m256i>(idx), perm));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(out_raw),
                      _mm256_permutevar8x32_epi32(reinterpret_cast<__m256i>(raw), perm));
  return static_cast<std::size_t>(__builtin_popcount(mask));
}
#endif

// 32 elements at `base` (x points at them): appends the candidates, returns how many. The
// AVX-512 version compresses 16 lanes at a time into registers (VPCOMPRESSD) and stores them
// whole; it may write 32 entries.
template <class Isa>
FRUGAL_INLINE std::size_t collect32(Isa, const float* x, std::uint32_t base,
                                    std::int32_t lo_minus_1, std::uint32_t* idx,
                                    std::uint32_t* raw) {
  const u32x8 lane = {0, 1, 2, 3, 4, 5, 6, 7};
  const u32x8 r0 = bits_of(load8(x)), r1 = bits_of(load8(x + 8));
  const u32x8 r2 = bits_of(load8(x + 16)), r3 = bits_of(load8(x + 24));
  const auto select = [&](u32x8 r) {
    return reinterpret_cast<u32x8>(reinterpret_cast<i32x8>(r & kAbsMask) > lo_minus_1);
  };
  const u32x8 m0 = select(r0), m1 = select(r1), m2 = select(r2), m3 = select(r3);
  // About a quarter of the blocks hold a candidate at 1% density: skipping the others on a
  // branch mispredicted more than it saved, so only the portable version branches.
  if (!Isa::kBranchFreeCompress && Isa::movemask(m0 | m1 | m2 | m3) == 0) return 0;
  std::size_t c = compress(Isa{}, Isa::movemask(m0), base + lane, r0, idx, raw);
  c += compress(Isa{}, Isa::movemask(m1), (base + 8u) + lane, r1, idx + c, raw + c);
  c += compress(Isa{}, Isa::movemask(m2), (base + 16u) + lane, r2, idx + c, raw + c);
  c += compress(Isa{}, Isa::movemask(m3), (base + 24u) + lane, r3, idx + c, raw + c);
  return c;
}

#if FRUGAL_HAVE_AVX2_KERNELS
FRUGAL_AVX512 inline std::size_t collect32(Avx512, const float* x, std::uint32_t base,
                                           std::int32_t lo_minus_1, std::uint32_t* idx,
                                           std::uint32_t* raw) {
  const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512i abs_mask = _mm512_set1_epi32(static_cast<std::int32_t>(kAbsMask));
  const __m512i bound = _mm512_set1_epi32(lo_minus_1);
  std::size_t c = 0;
  for (std::uint32_t h = 0; h < 32; h += 16) {
    const __m512i r = _mm512_loadu_si512(x + h);
    const __mmask16 m = _mm512_cmpgt_epi32_mask(_mm512_and_si512(r, abs_mask), bound);
    const __m512i i =
        _mm512_add_epi32(_mm512_set1_epi32(static_cast<std::int32_t>(base + h)), lane);
    _mm512_storeu_si512(idx + c, _mm512_maskz_compress_epi32(m, i));
    _mm512_storeu_si512(raw + c, _mm512_maskz_compress_epi32(m, r));
    c += static_cast<std::size_t>(__builtin_popcount(m));
  }
  return c;
}
#endif

// Streams collect() reads at once: the input after the head is cut into this many parts, read
// side by side, each into its own output (then appended in order). Independent chains of loads
// and of output positions keep more memory requests in flight than one stream: about 10% faster
// with two, close to a plain read of the input (three or four were slower again here).
constexpr std::size_t kStreams = 2;

// Appends (index, raw bits) of every element whose magnitude key is >= lo, in index order.
// Gives up (returns false) once more than `cap` are found. out[s] / out_raw[s] hold cap + 32
// entries each and receive stream s's counts[s] candidates, the streams in index order (appending
// them is left to the caller, who can often copy them straight to the payload). One streaming
// pass; with AVX2 every group of 8 is compressed branch-free (a table lookup, two permutes and
// two stores), with AVX-512 every 16.
template <class Isa>
bool collect(const float* x, std::size_t n, std::uint32_t lo, std::size_t cap,
             std::uint32_t* const* out, std::uint32_t* const* out_raw, std::size_t* counts) {
  const std::int32_t lo_minus_1 = static_cast<std::int32_t>(lo) - 1;  // keys and lo are < 2^31
  std::size_t c[kStreams] = {};
  const auto total = [&] {
    std::size_t t = 0;
    for (std::size_t s = 0; s < kStreams; ++s) t += c[s];
    return t;
  };
  const auto one_by_one = [&](std::size_t from, std::size_t end, std::size_t s) {
    for (std::size_t i = from; i < end; ++i) {
      std::uint32_t u;
      std::memcpy(&u, x + i, 4);
      if ((u & kAbsMask) >= lo) {
        out[s][c[s]] = static_cast<std::uint32_t>(i);
        out_raw[s][c[s]] = u;
        ++c[s];
        if (total() > cap) return false;
      }
    }
    return true;
  };
  // Up to the first 64-byte boundary one by one: whole-line vector loads then never straddle two
  // cache lines (which cost about a tenth of the pass on a 16-byte aligned buffer).
  const std::size_t misalign = reinterpret_cast<std::uintptr_t>(x) % 64;
  const std::size_t head = misalign % 4 == 0 ? std::min(n, (64 - misalign) % 64 / 4) : 0;
  if (!one_by_one(0, head, 0)) return false;
  const std::size_t part = (n - head) / (32 * kStreams) * 32;
  for (std::size_t j = 0; j < part; j += 32) {
    for (std::size_t s = 0; s < kStreams; ++s) {
      const std::size_t i = head + s * part + j;
      c[s] += collect32(Isa{}, x + i, static_cast<std::uint32_t>(i), lo_minus_1, out[s] + c[s],
                        out_raw[s] + c[s]);
    }
    if (total() > cap) return false;
  }
  constexpr std::size_t kLast = kStreams - 1;
  std::size_t i = head + kStreams * part;  // the rest goes to the last stream
  for (; i + 32 <= n; i += 32) {
    c[kLast] += collect32(Isa{}, x + i, static_cast<std::uint32_t>(i), lo_minus_1,
                          out[kLast] + c[kLast], out_raw[kLast] + c[kLast]);
    if (total() > cap) return false;
  }
  if (!one_by_one(i, n, kLast)) return false;
  std::copy(std::begin(c), std::end(c), counts);
  return true;
}
FRUGAL_DISPATCH(collect,
                (const float* x, std::size_t n, std::uint32_t lo, std::size_t cap,
                 std::uint32_t* const* out, std::uint32_t* const* out_raw, std::size_t* counts),
                (x, n, lo, cap, out, out_raw, counts))

// Counts of the top 11 key bits (bits 30..20), over four sub-histograms so that runs of equal
// bins (gradients cluster in a few exponents) do not serialize on one counter.
template <class Isa>
void histogram(const float* x, std::size_t n, std::uint32_t* hist) {
  std::vector<std::uint32_t> sub(4 * 2048, 0);
  std::uint32_t* h = sub.data();
  std::size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const u32x8 bin = reinterpret_cast<u32x8>(abs_keys(x + i)) >> 20;
    for (std::size_t l = 0; l < kLanes; ++l) ++h[(l & 3) * 2048 + bin[l]];
  }
  for (; i < n; ++i) {
    std::uint32_t u;
    std::memcpy(&u, x + i, 4);
    ++h[(u & kAbsMask) >> 20];
  }
  for (std::size_t b = 0; b < 2048; ++b) hist[b] = h[b] + h[2048 + b] + h[4096 + b] + h[6144 + b];
}
FRUGAL_DISPATCH(histogram, (const float* x, std::size_t n, std::uint32_t* hist), (x, n, hist))

// collect() for one block of the error-feedback pass: one stream, no cap (the caller's buffers
// hold len + 32 more entries), indices from `base`.
template <class Isa>
std::size_t collect_block(const float* x, std::size_t len, std::uint32_t base, std::uint32_t lo,
                          std::uint32_t* idx, std::uint32_t* raw) {
  const std::int32_t lo_minus_1 = static_cast<std::int32_t>(lo) - 1;  // keys and lo are < 2^31
  std::size_t c = 0, i = 0;
  for (; i + 32 <= len; i += 32) {
    c +=
        collect32(Isa{}, x + i, base + static_cast<std::uint32_t>(i), lo_minus_1, idx + c, raw + c);
  }
  for (; i < len; ++i) {
    std::uint32_t u;
    std::memcpy(&u, x + i, 4);
    if ((u & kAbsMask) >= lo) {
      idx[c] = base + static_cast<std::uint32_t>(i);
      raw[c] = u;
      ++c;
    }
  }
  return c;
}
FRUGAL_DISPATCH(collect_block,
                (const float* x, std::size_t len, std::uint32_t base, std::uint32_t lo,
                 std::uint32_t* idx, std::uint32_t* raw),
                (x, len, base, lo, idx, raw))

struct Threshold {
  std::uint32_t key;    // the k-th largest key
  std::size_t greater;  // how many keys are > key (< k); k - greater of the ties are taken
};

// Radix select (MSD, digits of 11, 11 and 9 bits) of the k-th largest of keys (raw & kAbsMask).
// 1 <= k <= keys.size().
Threshold radix_select(std::span<const std::uint32_t> raw, std::size_t k) {
  static constexpr int kShift[3] = {20, 9, 0};
  static constexpr std::uint32_t kDigit[3] = {0x7ff, 0x7ff, 0x1ff};
  std::uint32_t prefix = 0, prefix_mask = 0;
  std::size_t need = k;  // how many of the keys matching the prefix are still to be taken
  std::uint32_t hist[2048];
  // After the first digit only the keys sharing its bin matter (a few percent): they are gathered
  // once, so the last two digits do not rescan everything.
  thread_local std::vector<std::uint32_t> t_rest;
  std::vector<std::uint32_t>& rest = t_rest;
  for (int r = 0; r < 3; ++r) {
    std::fill(std::begin(hist), std::end(hist), 0u);
    if (r == 0) {
      for (const std::uint32_t u : raw) ++hist[(u & kAbsMask) >> kShift[0]];
    } else {
      for (const std::uint32_t key : rest) ++hist[(key >> kShift[r]) & kDigit[r]];
    }
    std::size_t above = 0;
    std::uint32_t d = kDigit[r];
    for (;; --d) {
      if (above + hist[d] >= need) break;
      above += hist[d];
    }
    need -= above;
    prefix |= d << kShift[r];
    prefix_mask |= kDigit[r] << kShift[r];
    if (r == 0) {
      rest.resize(hist[d]);
      std::size_t c = 0;
      for (const std::uint32_t u : raw) {
        const std::uint32_t key = u & kAbsMask;
        if ((key >> kShift[0]) == d) rest[c++] = key;
      }
    } else {
      std::size_t c = 0;  // keep the keys matching the longer prefix
      for (const std::uint32_t key : rest) {
        if ((key & prefix_mask) == prefix) rest[c++] = key;
      }
      rest.resize(c);
    }
  }
  return {prefix, k - need};
}

// Scratch reused across calls on a thread, so that repeated encodes do not fault in fresh pages.
// idx[0] / raw[0] hold collect()'s result, the others its per-stream scratch.
struct Scratch {
  std::vector<std::uint32_t> idx[kStreams], raw[kStreams];
  std::uint32_t* idx_ptr[kStreams];
  std::uint32_t* raw_ptr[kStreams];
  std::size_t counts[kStreams];  // of the last collect, per stream
  // Appends streams 1.. to stream 0 (once); returns the total.
  std::size_t merge() {
    std::size_t at = counts[0];
    for (std::size_t s = 1; s < kStreams; ++s) {
      if (counts[s] != 0) {
        std::memcpy(idx_ptr[0] + at, idx_ptr[s], 4 * counts[s]);
        std::memcpy(raw_ptr[0] + at, raw_ptr[s], 4 * counts[s]);
      }
      at += counts[s];
      counts[s] = 0;
    }
    counts[0] = at;
    return at;
  }
  void reserve(std::size_t n) {
    if (idx[0].size() < n) {
      for (std::size_t s = 0; s < kStreams; ++s) {
        idx[s].resize(n);
        raw[s].resize(n);
        idx_ptr[s] = idx[s].data();
        raw_ptr[s] = raw[s].data();
      }
    }
  }
};
thread_local Scratch t_scratch;

// Lays out a body from the chosen pairs (indices increasing): the values first, fp32 copied from
// `values` (raw bits) or fp16 converted from the floats at `values`, then the coded indices.
// Values ahead of the indices keep them at a fixed offset; the index stream's length goes in
// the header.
TopKBody write_body(std::size_t n, std::span<const std::uint32_t> idx, const void* values,
                    bool fp16, std::byte* body) {
  const std::size_t count = idx.size();
  TopKBody result;
  result.count = count;
  // NaN/Inf keys exceed every finite key, so if there is any, one was selected.
  if (fp16) {
    result.non_finite = encode_half(static_cast<const float*>(values), count, body);
  } else {
    const auto* raw = static_cast<const std::uint32_t*>(values);
    std::uint32_t nonfinite = 0;
    for (std::size_t i = 0; i < count; ++i) nonfinite |= (raw[i] & 0x7f800000u) == 0x7f800000u;
    result.non_finite = nonfinite != 0;
    if (count != 0) std::memcpy(body, raw, 4 * count);
  }
  result.index_bytes = write_topk_indices(idx, n, body + count * (fp16 ? 2 : 4));
  return result;
}

class TopKCompressor final : public Compressor {
 public:
  explicit TopKCompressor(const CompressionConfig& config) : Compressor(config) {}

  std::size_t max_encoded_bytes(std::size_t n) const noexcept override {
    const std::size_t k = max_k(n);
    return PayloadHeader::kSize + k * value_bytes() + max_topk_index_bytes(n, k);
  }
  // The coded indices' size depends on where they are.
  std::optional<std::size_t> encoded_bytes(std::size_t) const noexcept override {
    return std::nullopt;
  }
  // Values sent as fp16 overflow beyond fp16's largest finite value, as fp16's do: without this
  // bound the compressed allreduce's scan let such a value through and its rank alone threw in
  // the encode (the others timed out). fp32 values flag only as NaN/Inf.
  float flag_free_magnitude() const noexcept override {
    return config_.values == TopKValues::Fp16 ? 65504.0f : 0.0f;
  }

 protected:
  void fill_header(PayloadHeader& h) const noexcept override {
    h.variant = static_cast<std::uint8_t>(config_.values);
    h.bucket = static_cast<std::uint32_t>(kTopKIndexChunk);
  }
  // bits: the index stream's length (check_header_extra bounds it).
  std::size_t body_bytes(const PayloadHeader& h) const noexcept override {
    return static_cast<std::size_t>(h.k) * value_bytes() + h.bits;
  }
  void check_header_extra(const PayloadHeader& h) const override {
    const std::size_t n = static_cast<std::size_t>(h.count);
    if (h.k < min_k(n) || h.k > max_k(n)) {
      throw Error(ErrorCode::Mismatch, "payload top-k holds " + std::to_string(h.k) +
                                           " pairs, receiver expects " + std::to_string(min_k(n)) +
                                           ".." + std::to_string(max_k(n)) + " for " +
                                           std::to_string(n) + " elements");
    }
    if (h.bits > max_topk_index_bytes(n, static_cast<std::size_t>(h.k))) {
      corrupt("top-k index stream length");
    }
  }

  std::size_t encode_body(std::span<const float> input, std::span<std::byte> body, Rng&,
                          PayloadHeader& header) const override {
    const std::size_t n = input.size();
    require(n <= 0xffffffffu, "input", "top-k indices are 32-bit: at most 2^32 - 1 elements");
    const std::size_t k = k_for(n);
    if (k == 0) return 0;
    // The selection writes the pairs to scratch: u32 indices, then the fp32 values behind them
    // (out_val null) or the fp16-bound ones in `values`; write_body lays them out.
    std::vector<float>& values = t_values;
    float* out_val = nullptr;
    if (config_.values == TopKValues::Fp16) {
      values.resize(max_k(n));
      out_val = values.data();
    }
    std::vector<std::uint32_t>& pairs = t_pairs;
    pairs.resize(2 * max_k(n));
    std::byte* const at = reinterpret_cast<std::byte*>(pairs.data());
    const std::size_t count = config_.selection == TopKSelection::Sampled
                                  ? select_sampled(input, k, at, out_val)
                                  : select_exact(input, k, at, out_val);
    const TopKBody written =
        write_body(n, std::span<const std::uint32_t>(pairs.data(), count),
                   out_val != nullptr ? static_cast<const void*>(out_val) : pairs.data() + count,
                   config_.values == TopKValues::Fp16, body.data());
    header.k = count;
    header.bits = static_cast<std::uint32_t>(written.index_bytes);
    if (written.non_finite) header.flags |= PayloadHeader::kNonFinite;
    return count * value_bytes() + written.index_bytes;
  }

  void decode_body(const PayloadHeader& h, std::span<const std::byte> body, std::span<float> out,
                   bool add) const override {
    const std::size_t n = out.size();
    const std::size_t k = static_cast<std::size_t>(h.k);
    const std::byte* values = body.data();
    // Every index is read and checked before anything is written at it.
    std::vector<std::uint32_t>& idx = t_pairs;
    read_topk_indices(body.subspan(k * value_bytes()), n, k, idx);
    std::vector<float>& v = t_values;
    v.resize(k);
    bool bad = false;
    if (config_.values == TopKValues::Fp16) {
      bad = decode_half(values, k, v.data());
    } else {
      if (k != 0) std::memcpy(v.data(), values, 4 * k);
      for (const float f : v) bad |= !std::isfinite(f);
    }
    if (bad && !h.non_finite()) corrupt("top-k value (NaN/Inf in an unflagged payload)");
    if (!add) std::fill(out.begin(), out.end(), 0.0f);
    for (std::size_t i = 0; i < k; ++i) out[idx[i]] += v[i];
  }

 private:
  std::size_t value_bytes() const noexcept { return config_.values == TopKValues::Fp16 ? 2 : 4; }
  std::size_t max_k(std::size_t n) const noexcept {
    const std::size_t k = k_for(n);
    if (config_.selection == TopKSelection::Exact) return k;
    const auto hi =
        static_cast<std::size_t>(std::floor(static_cast<double>(k) * (1.0 + config_.tolerance)));
    return std::min(n, std::max(k, hi));
  }
  std::size_t min_k(std::size_t n) const noexcept {
    const std::size_t k = k_for(n);
    if (config_.selection == TopKSelection::Exact) return k;
    const auto lo =
        static_cast<std::size_t>(std::ceil(static_cast<double>(k) * (1.0 - config_.tolerance)));
    return std::min(k, std::max<std::size_t>(lo, n == 0 ? 0 : 1));
  }

  // Writes the increasing indices (to the payload) and values (to out_val, or as fp32 right
  // behind the indices when out_val is null) of the chosen candidates: those with key > t.key,
  // plus the first k - t.greater with key == t.key.
  static std::size_t emit(std::span<const std::uint32_t> idx, std::span<const std::uint32_t> raw,
                          Threshold t, std::size_t k, std::byte* out_idx, float* out_val) {
    std::byte* const behind = out_idx + 4 * k;  // exactly k are chosen
    std::size_t ties = k - t.greater, c = 0;
    for (std::size_t i = 0; i < idx.size() && c < k; ++i) {
      const std::uint32_t key = raw[i] & kAbsMask;
      if (key > t.key || (key == t.key && ties > 0)) {
        if (key == t.key) --ties;
        std::memcpy(out_idx + 4 * c, &idx[i], 4);
        if (out_val != nullptr) {
          out_val[c] = std::bit_cast<float>(raw[i]);
        } else {
          std::memcpy(behind + 4 * c, &raw[i], 4);
        }
        ++c;
      }
    }
    return c;
  }

  // Writes all candidates (they are the answer).
  static std::size_t emit_all(std::span<const std::uint32_t> idx,
                              std::span<const std::uint32_t> raw, std::byte* out_idx,
                              float* out_val) {
    const std::size_t c = idx.size();
    if (c != 0) {
      std::memcpy(out_idx, idx.data(), 4 * c);
      std::memcpy(out_val != nullptr ? static_cast<void*>(out_val) : out_idx + 4 * c, raw.data(),
                  4 * c);
    }
    return c;
  }

  // The (rank + 1)-th largest key of a sample of `size` elements (a multiple of kRun) taken as
  // runs of kRun consecutive elements at evenly spaced places: a cache line or two per run
  // instead of one per element, so the sample costs size / kRun memory round trips.
  static constexpr std::size_t kRun = 16;
  static std::uint32_t sample_runs_key(std::span<const float> x, std::size_t size,
                                       std::size_t rank) {
    const std::size_t runs = size / kRun;
    const std::size_t stride = x.size() / runs;  // >= kRun: callers sample at most n / 4
    std::vector<std::uint32_t>& s = t_sample;
    s.resize(runs * kRun);
    for (std::size_t j = 0; j < runs; ++j) {
      std::memcpy(s.data() + j * kRun, x.data() + j * stride + (stride - kRun) / 2, 4 * kRun);
    }
    return radix_select(s, rank + 1).key;
  }

  // The (rank + 1)-th largest key of a strided sample of `size` elements.
  static std::uint32_t sample_key(std::span<const float> x, std::size_t size, std::size_t rank) {
    const std::size_t stride = x.size() / size;
    std::vector<std::uint32_t>& s = t_sample;
    s.resize(size);
    for (std::size_t j = 0; j < size; ++j) {
      s[j] = std::bit_cast<std::uint32_t>(x[j * stride + stride / 2]);
    }
    return radix_select(s, rank + 1).key;
  }

  static bool collect_into(std::span<const float> x, std::uint32_t lo, std::size_t cap,
                           std::size_t& count) {
    t_scratch.reserve(cap + 32);
    if (!collect_dispatch(x.data(), x.size(), lo, cap, t_scratch.idx_ptr, t_scratch.raw_ptr,
                          t_scratch.counts)) {
      return false;
    }
    count = 0;
    for (const std::size_t c : t_scratch.counts) count += c;
    return true;
  }

  static std::size_t finish_exact(std::size_t count, std::size_t k, std::byte* out_idx,
                                  float* out_val) {
    t_scratch.merge();
    const std::span<const std::uint32_t> idx(t_scratch.idx[0].data(), count);
    const std::span<const std::uint32_t> raw(t_scratch.raw[0].data(), count);
    if (count == k) return emit_all(idx, raw, out_idx, out_val);
    return emit(idx, raw, radix_select(raw, k), k, out_idx, out_val);
  }

  static std::size_t select_exact(std::span<const float> x, std::size_t k, std::byte* out_idx,
                                  float* out_val) {
    const std::size_t n = x.size();
    constexpr std::size_t kSample = 65536;
    const double expected = static_cast<double>(k) / static_cast<double>(n) * kSample;
    if (n >= 16 * kSample && expected >= 64.0) {
      const double rank = std::ceil(expected + 4.0 * std::sqrt(expected) + 16.0);
      if (rank < static_cast<double>(kSample)) {
        const std::uint32_t lo = sample_key(x, kSample, static_cast<std::size_t>(rank));
        const std::size_t cap = 2 * static_cast<std::size_t>(rank / kSample * n) + 1024;
        std::size_t count = 0;
        if (collect_into(x, lo, cap, count) && count >= k)
          return finish_exact(count, k, out_idx, out_val);
      }
    }
    // The bound from the histogram cannot fail: collect the bins down to the one holding the
    // k-th largest key.
    std::uint32_t hist[2048];
    histogram_dispatch(x.data(), n, hist);
    std::size_t above = 0;
    std::uint32_t bin = 2047;
    for (;; --bin) {
      above += hist[bin];
      if (above >= k || bin == 0) break;
    }
    std::size_t count = 0;
    collect_into(x, bin << 20, above, count);
    return finish_exact(count, k, out_idx, out_val);
  }

  std::size_t select_sampled(std::span<const float> x, std::size_t k, std::byte* out_idx,
                             float* out_val) const {
    const std::size_t n = x.size();
    const double density = static_cast<double>(k) / static_cast<double>(n);
    const double tol = config_.tolerance;
    // Sampling noise of the count is about sqrt(k_sample) / k_sample relative; make it tol / 4.
    const double want = tol > 0.0 ? 16.0 / (tol * tol) : 1e300;
    const double size = std::max(want / density, 65536.0);
    if (n < (1u << 16) || size > static_cast<double>(n) / 4)
      return select_exact(x, k, out_idx, out_val);
    const std::size_t sample = static_cast<std::size_t>(size) / kRun * kRun;
    const auto rank = static_cast<std::size_t>(
        std::max(0.0, std::round(density * static_cast<double>(sample)) - 1.0));
    const std::uint32_t thr = sample_runs_key(x, sample, rank);
    const std::size_t lo = min_k(n), hi = max_k(n);
    std::size_t count = 0;
    if (!collect_into(x, thr, 4 * k + 1024, count) || count < lo) {
      return select_exact(x, k, out_idx, out_val);
    }
    if (count <= hi) {
      // All collected are the answer: copy each stream's run straight to the payload.
      std::byte* values =
          out_val != nullptr ? reinterpret_cast<std::byte*>(out_val) : out_idx + 4 * count;
      for (std::size_t s = 0, at = 0; s < kStreams; at += t_scratch.counts[s], ++s) {
        const std::size_t c = t_scratch.counts[s];
        if (c == 0) continue;
        std::memcpy(out_idx + 4 * at, t_scratch.idx_ptr[s], 4 * c);
        std::memcpy(values + 4 * at, t_scratch.raw_ptr[s], 4 * c);
      }
      return count;
    }
    t_scratch.merge();
    const std::span<const std::uint32_t> idx(t_scratch.idx[0].data(), count);
    const std::span<const std::uint32_t> raw(t_scratch.raw[0].data(), count);
    return emit(idx, raw, radix_select(raw, k), k, out_idx, out_val);
  }

  static thread_local std::vector<float> t_values;
  static thread_local std::vector<std::uint32_t> t_sample;
  static thread_local std::vector<std::uint32_t> t_pairs;

 public:
  // For the one-pass error-feedback path (topk_sampled_plan and friends below): the same
  // decisions select_sampled takes, without the buffer.
  std::optional<TopKSampledPlan> sampled_plan(std::size_t n) const {
    if (config_.selection != TopKSelection::Sampled || n > 0xffffffffu) return std::nullopt;
    const std::size_t k = k_for(n);
    if (k == 0) return std::nullopt;
    const double density = static_cast<double>(k) / static_cast<double>(n);
    const double tol = config_.tolerance;
    const double want = tol > 0.0 ? 16.0 / (tol * tol) : 1e300;
    const double size = std::max(want / density, 65536.0);
    if (n < (1u << 16) || size > static_cast<double>(n) / 4) return std::nullopt;
    TopKSampledPlan plan;
    const std::size_t sample = static_cast<std::size_t>(size) / kRun * kRun;
    plan.n = n;
    plan.rank = static_cast<std::size_t>(
        std::max(0.0, std::round(density * static_cast<double>(sample)) - 1.0));
    plan.runs = sample / kRun;
    plan.stride = n / plan.runs;
    plan.first = (plan.stride - kRun) / 2;
    plan.lo = min_k(n);
    plan.hi = max_k(n);
    plan.k = k;
    plan.cap = 4 * k + 1024;
    plan.fp16_values = config_.values == TopKValues::Fp16;
    return plan;
  }
  static std::size_t emit_for_feedback(std::span<const std::uint32_t> idx,
                                       std::span<const std::uint32_t> raw, Threshold t,
                                       std::size_t k, std::byte* out_idx, float* out_val) {
    return emit(idx, raw, t, k, out_idx, out_val);
  }
};
static_assert(TopKSampledPlan::kRun == 16);

thread_local std::vector<float> TopKCompressor::t_values;
thread_local std::vector<std::uint32_t> TopKCompressor::t_sample;
thread_local std::vector<std::uint32_t> TopKCompressor::t_pairs;

thread_local std::vector<float> t_feedback_values;
thread_local std::vector<std::uint32_t> t_feedback_pairs;

}  // namespace

std::unique_ptr<Compressor> make_topk_compressor(const CompressionConfig& config) {
  return std::make_unique<TopKCompressor>(config);
}

std::optional<TopKSampledPlan> topk_sampled_plan(const Compressor& compressor, std::size_t n) {
  const auto* topk = dynamic_cast<const TopKCompressor*>(&compressor);
  return topk != nullptr ? topk->sampled_plan(n) : std::nullopt;
}

std::uint32_t topk_sample_threshold(std::span<std::uint32_t> sample, std::size_t rank) {
  return radix_select(sample, rank + 1).key;
}

std::size_t topk_collect_block(const float* x, std::size_t len, std::uint32_t base,
                               std::uint32_t threshold, std::uint32_t* idx, std::uint32_t* raw) {
  return collect_block_dispatch(x, len, base, threshold, idx, raw);
}

TopKBody topk_sampled_body(const TopKSampledPlan& plan, std::span<const std::uint32_t> idx,
                           std::span<const std::uint32_t> raw, std::byte* body,
                           std::vector<std::uint32_t>& dropped) {
  // As select_sampled then encode_body: more than hi candidates, the k chosen go through
  // scratch (indices, then fp32 raw bits or fp16-bound floats), then write_body lays them out.
  std::span<const std::uint32_t> chosen = idx;
  const std::uint32_t* chosen_raw = raw.data();
  std::vector<float>& values = t_feedback_values;
  if (idx.size() > plan.hi) {
    std::vector<std::uint32_t>& pairs = t_feedback_pairs;
    pairs.resize(2 * plan.k);
    float* out_val = nullptr;
    if (plan.fp16_values) {
      values.resize(plan.k);
      out_val = values.data();
    }
    const Threshold t = radix_select(raw, plan.k);
    const std::size_t count = TopKCompressor::emit_for_feedback(
        idx, raw, t, plan.k, reinterpret_cast<std::byte*>(pairs.data()), out_val);
    // emit's rule, to name the candidates it left out.
    std::size_t ties = plan.k - t.greater, c = 0;
    for (std::size_t i = 0; i < idx.size(); ++i) {
      const std::uint32_t key = raw[i] & kAbsMask;
      if (c < plan.k && (key > t.key || (key == t.key && ties > 0))) {
        if (key == t.key) --ties;
        ++c;
      } else {
        dropped.push_back(static_cast<std::uint32_t>(i));
      }
    }
    chosen = std::span<const std::uint32_t>(pairs.data(), count);
    chosen_raw = pairs.data() + count;
  } else if (plan.fp16_values) {
    values.resize(idx.size());
    for (std::size_t i = 0; i < idx.size(); ++i) values[i] = std::bit_cast<float>(raw[i]);
  }
  if (plan.fp16_values) return write_body(plan.n, chosen, values.data(), true, body);
  return write_body(plan.n, chosen, chosen_raw, false, body);
}

}  // namespace frugal::compression
