#include "frugal/compression/error_feedback.hpp"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <string>

#include "frugal/compression/topk_indices.hpp"
#include "frugal/error.hpp"
#include "kernel.hpp"
#include "methods.hpp"

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

void ErrorFeedback::add(std::span<const std::uint32_t> indices, std::span<const float> values) {
  require(indices.size() == values.size(), "values", "must have as many elements as indices");
  for (const std::uint32_t i : indices) {
    require(i < residual_.size(), "indices", "past the residual's size");
  }
  for (std::size_t j = 0; j < indices.size(); ++j) residual_[indices[j]] += values[j];
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

// Elements per block of the fused path (unless a method's granule is larger): the two buffers
// of compensated values and the reconstruction (8 KiB each) stay in L1 next to the lines of
// gradient, residual and payload passing through (4096 was up to 10% slower for QSGD).
constexpr std::size_t kFeedbackBlock = 2048;

// From this many elements on, `applied` (unless it is the gradient) is written with
// non-temporal stores: the buffer (8 MiB and up) will not be read again before it leaves the
// cache, and streaming stores skip reading every destination line first.
constexpr std::size_t kStreamFrom = std::size_t{1} << 21;

thread_local std::vector<float> t_block;
thread_local std::vector<float> t_topk_values;
thread_local std::vector<std::uint32_t> t_topk_indices;

using namespace kernel;

// A non-temporal store of 8 lanes at a 32-byte aligned p.
FRUGAL_INLINE void stream8(Scalar, float* p, f32x8 v) {
#if defined(__SSE2__)
  _mm_stream_ps(p, reinterpret_cast<__m128>(__builtin_shufflevector(v, v, 0, 1, 2, 3)));
  _mm_stream_ps(p + 4, reinterpret_cast<__m128>(__builtin_shufflevector(v, v, 4, 5, 6, 7)));
#else
  store8(p, v);
#endif
}
#if FRUGAL_HAVE_AVX2_KERNELS
FRUGAL_AVX2 inline void stream8(Avx2, float* p, f32x8 v) {
  _mm256_stream_ps(p, reinterpret_cast<__m256>(v));
}
#endif

FRUGAL_INLINE std::size_t lanes_to_aligned(const float* p) {
  return (32 - reinterpret_cast<std::uintptr_t>(p) % 32) % 32 / 4;
}

// One step of the fused pass: writes block b's residual (the block is encoded and
// reconstructed by now), compensates block b + 1 and writes one block of `applied`. One loop
// does the three, so that reading the next block overlaps writing this one.
struct Step {
  // Block b: r = s - d.
  float* r;
  const float* s;
  const float* d;
  std::size_t len;
  // Block b + 1: s_next = g_next + decay * r_next.
  const float* g_next;
  const float* r_next;
  float* s_next;
  std::size_t next_len;
  // out = src: block b's reconstruction into `applied`, or, under NonFinitePolicy::Error, block
  // b + 1's old residual (see FusedPass). `out` may alias g_next; null when nothing is written.
  float* out;
  const float* src;
  std::size_t out_len;
  float decay;
  bool stream;  // non-temporal stores for `out`
};

// The loop of fused_step, specialised so that no flag is tested per vector. Copies the fields
// into locals: through `st` every store might alias them, and the compiler would reload them.
template <class Isa, bool kUnit, bool kStream, bool kOut = true>
FRUGAL_INLINE void fused_step_loop(const Step& st) {
  float* const r = st.r;
  const float* const s = st.s;
  const float* const d = st.d;
  const float* const g_next = st.g_next;
  const float* const r_next = st.r_next;
  float* const s_next = st.s_next;
  float* const out = st.out;
  const float* const src = st.src;
  const std::size_t len = st.len, next_len = st.next_len, out_len = st.out_len;
  const float decay = st.decay;
  const f32x8 vdecay = splat(decay);
  const auto compensate8 = [&](std::size_t i) {
    const f32x8 g = load8(g_next + i), rv = load8(r_next + i);
    store8(s_next + i, kUnit ? g + rv : g + vdecay * rv);
  };
  const auto put = [&](std::size_t i) {
    if constexpr (kStream) {
      stream8(Isa{}, out + i, load8(src + i));
    } else {
      store8(out + i, load8(src + i));
    }
  };
  // Streaming stores need 32-byte alignment: `out` has a scalar head (never when it aliases
  // g_next: aliasing is only allowed without streaming). The residual was read one step ago, its
  // lines are in cache: plain stores.
  const std::size_t head = kStream ? std::min(out_len, lanes_to_aligned(out)) : 0;
  const std::size_t vo = (out_len - head) / kLanes, vr = len / kLanes, vc = next_len / kLanes;
  const std::size_t common = kOut ? std::min({vo, vr, vc}) : std::min(vr, vc);
  std::size_t j = 0;
  for (; j < common; ++j) {
    const std::size_t i = kLanes * j;
    compensate8(i);  // before `out` is written, which may alias g_next
    store8(r + i, load8(s + i) - load8(d + i));
    if constexpr (kOut) put(head + i);
  }
  for (std::size_t k = j; k < vc; ++k) compensate8(kLanes * k);
  for (std::size_t i = kLanes * vc; i < next_len; ++i) {
    s_next[i] = kUnit ? g_next[i] + r_next[i] : g_next[i] + decay * r_next[i];
  }
  for (std::size_t k = j; k < vr; ++k) {
    const std::size_t i = kLanes * k;
    store8(r + i, load8(s + i) - load8(d + i));
  }
  for (std::size_t i = kLanes * vr; i < len; ++i) r[i] = s[i] - d[i];
  if constexpr (!kOut) return;
  for (std::size_t i = 0; i < head; ++i) out[i] = src[i];
  for (std::size_t k = j; k < vo; ++k) put(head + kLanes * k);
  for (std::size_t i = head + kLanes * vo; i < out_len; ++i) out[i] = src[i];
}

template <class Isa>
void fused_step(const Step& st) {
  if (st.out == nullptr) {
    st.decay == 1.0f ? fused_step_loop<Isa, true, false, false>(st)
                     : fused_step_loop<Isa, false, false, false>(st);
  } else if (st.decay == 1.0f) {
    st.stream ? fused_step_loop<Isa, true, true>(st) : fused_step_loop<Isa, true, false>(st);
  } else {
    st.stream ? fused_step_loop<Isa, false, true>(st) : fused_step_loop<Isa, false, false>(st);
  }
}
FRUGAL_DISPATCH(fused_step, (const Step& st), (st))

// dst[i] = src[i] for i < len; non-temporal from the first 32-byte boundary on if `stream`.
template <class Isa>
void copy_block(float* dst, const float* src, std::size_t len, bool stream) {
  const std::size_t h = stream ? std::min(len, lanes_to_aligned(dst)) : 0;
  std::size_t i = 0;
  for (; i < h; ++i) dst[i] = src[i];
  for (; i + kLanes <= len; i += kLanes) {
    if (stream) {
      stream8(Isa{}, dst + i, load8(src + i));
    } else {
      store8(dst + i, load8(src + i));
    }
  }
  for (; i < len; ++i) dst[i] = src[i];
}
FRUGAL_DISPATCH(copy_block, (float* dst, const float* src, std::size_t len, bool stream),
                (dst, src, len, stream))

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

// The fused pass over n elements in blocks: each block is compensated (grad + decay * residual),
// handed to `code(b0, len, s, d)`, which encodes the compensated values s and writes the
// reconstruction into d, then written (residual = s - d, applied = d) while it is in L1. One
// loop writes a block and compensates the next, so that reading and writing overlap.
//
// Under NonFinitePolicy::Error (`keep_old`) a flagged block must throw with the residual
// untouched, yet the earlier blocks' residuals are written by then. So `applied` receives the old
// residual of every block instead (taken as the block is compensated): restore_residual(b0)
// copies it back for a throw (leaving `applied` unspecified), and after a clean pass
// rebuild_applied writes the reconstruction, a pure write. That costs one write of `applied`,
// where checking every element first costs a read of gradient and residual.
//
// An empty `applied` (without keep_old) means no caller reads the reconstruction: the pass then
// writes the residual only.
class FusedPass {
 public:
  FusedPass(std::span<const float> grad, float* r, float decay, std::span<float> applied,
            std::size_t block, bool keep_old)
      : grad_(grad),
        r_(r),
        applied_(applied),
        n_(grad.size()),
        block_(block),
        decay_(decay),
        keep_old_(keep_old),
        writes_applied_(!applied.empty()),
        // Streaming stores for `applied`, unless it is the gradient, whose lines are in cache.
        stream_(writes_applied_ && n_ >= kStreamFrom && applied.data() != grad.data()) {
    const std::size_t bs = std::min(block_, n_);
    t_block.resize(3 * bs);
    s_[0] = t_block.data();
    s_[1] = t_block.data() + bs;
    d_ = t_block.data() + 2 * bs;
  }

  template <class Code>
  void run(Code&& code) {
    step(0, 0, 0, 1);  // compensates block 0 into s_[0]
    std::size_t cur = 0;
    for (std::size_t b0 = 0; b0 < n_; b0 += block_, cur = 1 - cur) {
      const std::size_t len = block_len(b0);
      code(b0, len, s_[cur], d_);
      step(b0, len, b0 + len, cur);
    }
  }

  // Under keep_old: the residual of [0, b0) as it was before run().
  void restore_residual(std::size_t b0) {
    std::copy(applied_.begin(), applied_.begin() + static_cast<std::ptrdiff_t>(b0), r_);
  }

  // Under keep_old, after a clean run: applied = the reconstruction that `reconstruct(b0, len,
  // d)` writes into d, block by block.
  template <class Reconstruct>
  void rebuild_applied(Reconstruct&& reconstruct) {
    for (std::size_t b0 = 0; b0 < n_; b0 += block_) {
      const std::size_t len = block_len(b0);
      reconstruct(b0, len, d_);
      // Streaming even when `applied` is the gradient: its lines left the cache long ago.
      copy_block_dispatch(applied_.data() + b0, d_, len, n_ >= kStreamFrom);
    }
  }

  ~FusedPass() {
#if defined(__SSE2__)
    if (stream_) _mm_sfence();  // order the streaming stores before what the caller does next
#endif
  }

 private:
  std::size_t block_len(std::size_t b0) const {
    return b0 < n_ ? std::min(block_, n_ - b0) : 0;
  }

  // Writes block [b0, b0 + len) from s_[cur] and d_, compensates the block at `next` into the
  // other buffer.
  void step(std::size_t b0, std::size_t len, std::size_t next, std::size_t cur) {
    Step st{};
    st.r = r_ + b0;
    st.s = s_[cur];
    st.d = d_;
    st.len = len;
    st.g_next = grad_.data() + next;
    st.r_next = r_ + next;
    st.s_next = s_[1 - cur];
    st.next_len = block_len(next);
    st.out = writes_applied_ ? applied_.data() + (keep_old_ ? next : b0) : nullptr;
    st.src = keep_old_ ? r_ + next : d_;
    st.out_len = keep_old_ ? st.next_len : len;
    st.decay = decay_;
    st.stream = stream_;
    fused_step_dispatch(st);
  }

  std::span<const float> grad_;
  float* r_;
  std::span<float> applied_;
  std::size_t n_, block_;
  float decay_;
  bool keep_old_, writes_applied_, stream_;
  float* s_[2];
  float* d_;
};

// Top-k's outputs from its own fresh payload: applied = 0 except at the selected indices (what
// decode computes: fill with 0, then add), residual = compensated - applied. `compensated` may
// be r itself or `applied`.
void write_topk_outputs(const Compressor& compressor, std::span<const std::byte> payload,
                        const float* compensated, float* r, std::span<float> applied) {
  const std::size_t n = applied.size();
  const PayloadHeader h = read_header(payload);
  const auto k = static_cast<std::size_t>(h.k);
  const bool fp16 = compressor.config().values == TopKValues::Fp16;
  const std::byte* values = payload.data() + PayloadHeader::kSize;
  std::vector<std::uint32_t>& idx = t_topk_indices;
  read_topk_indices(payload.subspan(PayloadHeader::kSize + k * (fp16 ? 2 : 4), h.bits), n, k, idx);
  std::vector<float>& v = t_topk_values;
  v.resize(k);
  if (fp16) {
    kernel::decode_half(values, k, v.data());
  } else if (k != 0) {
    std::memcpy(v.data(), values, 4 * k);
  }
  std::size_t next = 0;
  for (std::size_t b0 = 0; b0 < n; b0 += kFeedbackBlock) {  // the block's r and applied in cache
    const std::size_t end = std::min(n, b0 + kFeedbackBlock);
    if (compensated != r) std::copy(compensated + b0, compensated + end, r + b0);
    std::fill(applied.begin() + static_cast<std::ptrdiff_t>(b0),
              applied.begin() + static_cast<std::ptrdiff_t>(end), 0.0f);
    for (; next < k; ++next) {
      const std::uint32_t j = idx[next];
      if (j >= end) break;
      applied[j] = 0.0f + v[next];
      r[j] -= applied[j];
    }
  }
}

thread_local std::vector<std::uint32_t> t_cand_idx, t_cand_raw, t_sample_keys;
thread_local std::vector<float> t_cand_value;
thread_local std::vector<std::uint32_t> t_dropped;

// Sampled top-k in one pass. The threshold comes from a sample of compensated values computed
// where they are sampled; the pass then collects the candidates block by block and, betting on
// the usual outcome (between lo and hi candidates: all of them are the answer), writes each
// block's outputs as if every candidate were selected. Afterwards: too many candidates, the few
// left out are put back (residual = compensated, applied = 0); too few, or too many to keep
// (the cap), and exact selection is needed: the residual is turned into the compensated buffer
// (the candidates' values are known) and the plain sequence runs on it. Under
// NonFinitePolicy::Error a candidate that could flag takes that route too, which throws exactly
// when the unfused sequence does, after the old residual is restored.
// Returns the payload's header; `header` comes filled as encode fills it before the body.
PayloadHeader encode_topk_sampled(const Compressor& compressor, const TopKSampledPlan& plan,
                                  std::span<const float> grad, float* r, float decay,
                                  std::span<std::byte> out, Rng& rng, std::span<float> applied,
                                  PayloadHeader header) {
  const std::size_t n = plan.n;
  const bool error_policy = compressor.config().non_finite == NonFinitePolicy::Error;
  const auto compensated_at = [&](std::size_t i) {
    return decay == 1.0f ? grad[i] + r[i] : grad[i] + decay * r[i];
  };
  std::vector<std::uint32_t>& sample = t_sample_keys;
  sample.resize(plan.runs * TopKSampledPlan::kRun);
  for (std::size_t j = 0; j < plan.runs; ++j) {
    for (std::size_t t = 0; t < TopKSampledPlan::kRun; ++t) {
      sample[j * TopKSampledPlan::kRun + t] =
          std::bit_cast<std::uint32_t>(compensated_at(plan.first + j * plan.stride + t));
    }
  }
  const std::uint32_t threshold = topk_sample_threshold(sample, plan.rank);

  std::vector<std::uint32_t>& idx = t_cand_idx;
  std::vector<std::uint32_t>& raw = t_cand_raw;
  std::vector<float>& value = t_cand_value;  // what applied receives for each candidate
  const std::size_t room = plan.cap + kFeedbackBlock + 32;
  if (idx.size() < room) idx.resize(room), raw.resize(room), value.resize(room);
  std::size_t count = 0;
  bool over_cap = false, may_flag = false;
  std::vector<std::uint16_t> halves;
  FusedPass pass(grad, r, decay, applied, kFeedbackBlock, error_policy);
  pass.run([&](std::size_t b0, std::size_t len, const float* s, float* d) {
    std::fill(d, d + len, 0.0f);
    if (over_cap) return;  // exact selection follows: no more bets
    const std::size_t c = topk_collect_block(s, len, static_cast<std::uint32_t>(b0), threshold,
                                             idx.data() + count, raw.data() + count);
    float* v = value.data() + count;
    std::memcpy(v, raw.data() + count, 4 * c);
    if (plan.fp16_values && c != 0) {  // the value decode gives back
      halves.resize(c);
      kernel::encode_half(v, c, reinterpret_cast<std::byte*>(halves.data()));
      kernel::decode_half(reinterpret_cast<const std::byte*>(halves.data()), c, v);
    }
    for (std::size_t i = 0; i < c; ++i) {
      may_flag |= !std::isfinite(v[i]);
      d[idx[count + i] - b0] = 0.0f + v[i];
    }
    count += c;
    over_cap = count > plan.cap;
  });

  if (over_cap || count < plan.lo || (error_policy && may_flag)) {
    // Exact selection on the compensated buffer, rebuilt in the residual: it holds compensated
    // - 0 = compensated except where a bet was placed.
    for (std::size_t i = 0; i < count; ++i) r[idx[i]] = std::bit_cast<float>(raw[i]);
    std::size_t bytes = 0;
    try {
      bytes = compressor.encode(std::span<const float>(r, n), out, rng);
    } catch (...) {
      if (error_policy) pass.restore_residual(n);
      throw;
    }
    write_topk_outputs(compressor, out.first(bytes), r, r, applied);
    return read_header(out.first(bytes));
  }

  std::vector<std::uint32_t>& dropped = t_dropped;
  dropped.clear();
  const TopKBody body = topk_sampled_body(plan, std::span<const std::uint32_t>(idx.data(), count),
                                          std::span<const std::uint32_t>(raw.data(), count),
                                          out.data() + PayloadHeader::kSize, dropped);
  for (const std::uint32_t i : dropped) {  // lost bets
    r[idx[i]] = std::bit_cast<float>(raw[i]);
    if (!error_policy) applied[idx[i]] = 0.0f;
    value[i] = 0.0f;  // for rebuild_applied
  }
  if (error_policy) {
    std::size_t next = 0;
    pass.rebuild_applied([&](std::size_t b0, std::size_t len, float* d) {
      std::fill(d, d + len, 0.0f);
      for (; next < count && idx[next] < b0 + len; ++next) {
        if (value[next] != 0.0f) d[idx[next] - b0] = 0.0f + value[next];
      }
    });
  }
  rng.advance(n);
  header.k = body.count;
  header.bits = static_cast<std::uint32_t>(body.index_bytes);
  if (body.non_finite) header.flags |= PayloadHeader::kNonFinite;
  write_header(header, out);
  return header;
}

}  // namespace

// Both entry points in one: the fused pass with or without an `applied` output. Bit-identical
// to the unfused sequence (compensate into `applied`, encode it, copy it to the residual, decode
// over it, subtract): every element goes through the same operations, only the order in which
// blocks of elements are visited changes. See the header for the contract.
struct FeedbackEncoder {
  // `applied`: n elements, or empty when the caller does not want the reconstruction.
  // `flag_free`: the caller has checked that no range can flag (FeedbackInput::FlagFree).
  static std::size_t run(const Compressor& compressor, ErrorFeedback& feedback,
                         std::span<const float> grad, std::span<std::byte> out, Rng& rng,
                         std::span<float> applied, std::size_t offset, bool flag_free) {
    feedback.check_range(grad.size(), offset);
    const std::size_t n = grad.size();
    const std::size_t granule = compressor.range_granule();
    if (granule == 0) {
      // Without ranges the reconstruction is a step of the computation itself: a stand-in
      // takes it when the caller has no use for it.
      std::vector<float> stand_in;
      if (applied.size() != n) {
        stand_in.resize(n);
        applied = stand_in;
      }
      return whole(compressor, feedback, grad, out, rng, applied, offset);
    }
    float* r = feedback.residual_.data() + offset;
    PayloadHeader header = compressor.start_payload(n, out);
    const std::span<std::byte> body = out.subspan(PayloadHeader::kSize);
    const bool error_policy = compressor.config().non_finite == NonFinitePolicy::Error;
    // A flag must leave the residual as it was: keep the old one, in `applied` (or in a stand-in
    // when there is none), unless the caller has ruled a flag out.
    const bool keep_old = error_policy && !flag_free;
    std::vector<float> old;
    const bool wants_applied = !applied.empty();
    if (keep_old && !wants_applied && n != 0) {
      old.resize(n);
      applied = old;
    }
    bool flagged = false;
    {
      FusedPass pass(grad, r, feedback.decay_, applied,
                     std::max(granule, kFeedbackBlock / granule * granule), keep_old);
      const bool reconstructs = encodes_with_reconstruction(compressor);
      const bool stream_payload = n >= kStreamFrom;  // not read back in this pass
      pass.run([&](std::size_t b0, std::size_t len, const float* s, float* d) {
        const std::span<const float> x(s, len);
        const std::size_t next = b0 + len;  // the block FusedPass reads after this one
        const PrefetchHint hint{grad.data() + next, r + next, std::min(len, n - next)};
        if (reconstructs
                ? encode_range_reconstruct(compressor, x, n, b0, body, rng, d, stream_payload, hint)
                : compressor.encode_range(x, n, b0, body, rng)) {
          if (error_policy) {
            // Without keep_old the caller's check was wrong: the residual is lost.
            if (keep_old) pass.restore_residual(b0);
            rng.advance(n);
            throw_non_finite(compressor, n);
          }
          flagged = true;
        }
        if (!reconstructs) compressor.decode_range(body, n, b0, std::span<float>(d, len));
      });
      if (keep_old && wants_applied) {
        pass.rebuild_applied([&](std::size_t b0, std::size_t len, float* d) {
          compressor.decode_range(body, n, b0, std::span<float>(d, len));
        });
      }
    }
    rng.advance(n);
    if (flagged) header.flags |= PayloadHeader::kNonFinite;
    write_header(header, out);
    return PayloadHeader::kSize + compressor.body_bytes(header);
  }

 private:
  // Methods whose payload only exists whole (top-k; any method without ranges).
  static std::size_t whole(const Compressor& compressor, ErrorFeedback& feedback,
                           std::span<const float> grad, std::span<std::byte> out, Rng& rng,
                           std::span<float> applied, std::size_t offset) {
    const std::size_t n = grad.size();
    float* r = feedback.residual_.data() + offset;
    if (compressor.method() != Method::TopK) {
      // The plain sequence. `applied` holds the compensated gradient until the residual has
      // taken a copy, then the reconstruction.
      feedback.compensate(grad, applied, offset);
      const std::size_t bytes = compressor.encode(applied, out, rng);
      std::copy(applied.begin(), applied.end(), r);
      compressor.decode(out.first(bytes), applied);
      for (std::size_t i = 0; i < n; ++i) r[i] -= applied[i];
      return bytes;
    }
    const auto plan = topk_sampled_plan(compressor, n);
    // Under Error, below 2^21 elements (in cache) the plain sequence below beats writing
    // `applied` twice (1.05 vs 1.27 ms at 2^20 elements).
    if (plan && (n >= kStreamFrom || compressor.config().non_finite != NonFinitePolicy::Error)) {
      PayloadHeader header = compressor.start_payload(n, out);
      header = encode_topk_sampled(compressor, *plan, grad, r, feedback.decay_, out, rng, applied,
                                   header);
      return PayloadHeader::kSize + compressor.body_bytes(header);
    }
    // Exact top-k: the selection needs the whole compensated buffer first. The reconstruction is
    // then zero except at the k selected indices: one blocked pass writes residual = compensated
    // and applied = 0, and patches the selected entries of the block while it is in cache.
    feedback.compensate(grad, applied, offset);
    const std::size_t bytes = compressor.encode(applied, out, rng);  // throws: residual intact
    write_topk_outputs(compressor, out.first(bytes), applied.data(), r, applied);
    return bytes;
  }
};

std::size_t encode_with_feedback(const Compressor& compressor, ErrorFeedback& feedback,
                                 std::span<const float> grad, std::span<std::byte> out, Rng& rng,
                                 std::span<float> applied, std::size_t offset,
                                 FeedbackInput input) {
  require(applied.size() == grad.size(), "applied", "must have as many elements as grad");
  return FeedbackEncoder::run(compressor, feedback, grad, out, rng, applied, offset,
                              input == FeedbackInput::FlagFree);
}

std::size_t encode_payload_with_feedback(const Compressor& compressor, ErrorFeedback& feedback,
                                         std::span<const float> grad, std::span<std::byte> out,
                                         Rng& rng, std::size_t offset, FeedbackInput input) {
  return FeedbackEncoder::run(compressor, feedback, grad, out, rng, {}, offset,
                              input == FeedbackInput::FlagFree);
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
