// encode_with_feedback's fused, cache-blocked path against the unfused sequence it replaces
// (compensate into a copy, encode, decode, absorb): payload, reconstruction, residual and random
// offset must agree bit for bit, for every method, SIMD level, length, alignment and decay.

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>

#include "frugal/compression/error_feedback.hpp"
#include "test_util.hpp"

namespace frugal::compression {
namespace {

using testing::all_configs;
using testing::gaussian;

// The unfused reference, through the public API only.
std::size_t reference_step(const Compressor& c, ErrorFeedback& ef, std::span<const float> grad,
                           std::span<std::byte> out, Rng& rng, std::span<float> applied,
                           std::size_t offset) {
  std::vector<float> compensated(grad.size());
  ef.compensate(grad, compensated, offset);
  const std::size_t bytes = c.encode(compensated, out, rng);
  c.decode(out.first(bytes), applied);
  ef.absorb(compensated, applied, offset);
  return bytes;
}

bool same_bits(std::span<const float> a, std::span<const float> b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), 4 * a.size()) == 0);
}

// Every method and variant, plus the larger default buckets and the Flag policy.
std::vector<std::pair<std::string, CompressionConfig>> configs() {
  auto out = all_configs();
  CompressionConfig c = testing::config_of(Method::OneBit);
  out.emplace_back("onebit_chunk4096", c);
  c = testing::config_of(Method::Qsgd);
  c.bits = 2;
  out.emplace_back("qsgd2_bucket512", c);
  c = testing::config_of(Method::Ternary);
  out.emplace_back("ternary_bucket512", c);
  c = testing::config_of(Method::TopK);
  c.k = 5;
  c.values = TopKValues::Fp16;
  out.emplace_back("topk_k5_fp16", c);
  const std::size_t base = out.size();
  for (std::size_t i = 0; i < base; ++i) {
    auto [name, cfg] = out[i];
    cfg.non_finite = NonFinitePolicy::Flag;
    out.emplace_back(name + "_flag", cfg);
  }
  return out;
}

// Runs `steps` steps of both paths side by side on unaligned copies of the data and compares.
// `in_place`: applied aliases grad, as the collectives call it.
void compare(const std::string& name, const CompressionConfig& cfg, std::size_t n, float decay,
             bool in_place, bool reset_midway) {
  SCOPED_TRACE(name + " n=" + std::to_string(n) + " decay=" + std::to_string(decay) +
               (in_place ? " in-place" : "") + (reset_midway ? " reset" : ""));
  const auto c = make_compressor(cfg);
  constexpr std::size_t kOffset = 5;  // into the feedback buffer
  ErrorFeedback fused_ef(n + 2 * kOffset, decay), ref_ef(n + 2 * kOffset, decay);
  // One element / three bytes of misalignment.
  std::vector<float> grad_store(n + 1), applied_store(n + 1), ref_applied(n);
  std::vector<std::byte> out_store(c->max_encoded_bytes(n) + 3), ref_out(c->max_encoded_bytes(n));
  const std::span<float> grad(grad_store.data() + 1, n);
  const std::span<float> applied = in_place ? grad : std::span<float>(applied_store.data() + 1, n);
  const std::span<std::byte> out(out_store.data() + 3, c->max_encoded_bytes(n));
  for (int step = 0; step < 3; ++step) {
    if (reset_midway && step == 2) {
      fused_ef.reset();
      ref_ef.reset();
    }
    const auto g = gaussian(n, 40 + static_cast<std::uint32_t>(step));
    std::copy(g.begin(), g.end(), grad.begin());
    Rng fused_rng(3, 1, static_cast<std::uint64_t>(step), 11), ref_rng = fused_rng;
    const std::size_t ref_bytes =
        reference_step(*c, ref_ef, g, ref_out, ref_rng, ref_applied, kOffset);
    const std::size_t bytes =
        encode_with_feedback(*c, fused_ef, grad, out, fused_rng, applied, kOffset);
    ASSERT_EQ(bytes, ref_bytes) << "step " << step;
    ASSERT_EQ(0, std::memcmp(out.data(), ref_out.data(), bytes)) << "payload, step " << step;
    ASSERT_TRUE(same_bits(applied, ref_applied)) << "applied, step " << step;
    ASSERT_TRUE(same_bits(fused_ef.residual(), ref_ef.residual())) << "residual, step " << step;
    ASSERT_EQ(fused_rng.offset(), ref_rng.offset());
  }
}

TEST(FusedFeedback, BitIdenticalToTheUnfusedSequence) {
  const std::size_t lengths[] = {0, 1, 7, 8, 9, 63, 64, 65, 100, 513, 4097, 2 * 8192 + 77};
  for (const auto& [name, cfg] : configs()) {
    for (const std::size_t n : lengths) {
      compare(name, cfg, n, 1.0f, false, false);
      if (n == 513 || n == 2 * 8192 + 77) {
        compare(name, cfg, n, 1.0f, true, false);
        compare(name, cfg, n, 0.5f, false, false);
        compare(name, cfg, n, 0.9f, true, true);
      }
    }
  }
}

TEST(FusedFeedback, BitIdenticalAtEverySimdLevel) {
  for (const SimdLevel level : testing::supported_levels()) {
    testing::with_level(level, [&] {
      for (const auto& [name, cfg] : all_configs()) {
        compare(name + " level " + std::to_string(static_cast<int>(level)), cfg, 3 * 8192 + 9,
                0.75f, true, false);
      }
    });
  }
}

TEST(FusedFeedback, NonFiniteInALateBlock) {
  // A NaN far past the first block: under Error both paths throw with the residual untouched
  // (the fused path must not have written the earlier blocks' residuals); under Flag both
  // encode it and agree bit for bit.
  const std::size_t n = 3 * 8192 + 40;
  for (const auto& [name, cfg] : configs()) {
    SCOPED_TRACE(name);
    const auto c = make_compressor(cfg);
    ErrorFeedback fused_ef(n), ref_ef(n);
    std::vector<std::byte> out(c->max_encoded_bytes(n)), ref_out(out.size());
    std::vector<float> applied(n), ref_applied(n);
    {  // a first clean step, so that the residual is not zero
      const auto g = gaussian(n, 5);
      Rng a(1, 0, 0), b(1, 0, 0);
      encode_with_feedback(*c, fused_ef, g, out, a, applied);
      reference_step(*c, ref_ef, g, ref_out, b, ref_applied, 0);
    }
    auto g = gaussian(n, 6);
    g[n - 3] = std::numeric_limits<float>::quiet_NaN();
    const std::vector<float> before(ref_ef.residual().begin(), ref_ef.residual().end());
    Rng a(1, 0, 1), b(1, 0, 1);
    if (cfg.non_finite == NonFinitePolicy::Error) {
      EXPECT_EQ(testing::code_of([&] { encode_with_feedback(*c, fused_ef, g, out, a, applied); }),
                ErrorCode::InvalidArgument);
      EXPECT_EQ(
          testing::code_of([&] { reference_step(*c, ref_ef, g, ref_out, b, ref_applied, 0); }),
          ErrorCode::InvalidArgument);
      EXPECT_TRUE(same_bits(fused_ef.residual(), before));
      EXPECT_EQ(a.offset(), b.offset());
    } else {
      const std::size_t bytes = encode_with_feedback(*c, fused_ef, g, out, a, applied);
      ASSERT_EQ(bytes, reference_step(*c, ref_ef, g, ref_out, b, ref_applied, 0));
      EXPECT_EQ(0, std::memcmp(out.data(), ref_out.data(), bytes));
      EXPECT_TRUE(read_header(out).non_finite());
      EXPECT_TRUE(same_bits(applied, ref_applied));
      EXPECT_TRUE(same_bits(fused_ef.residual(), ref_ef.residual()));
    }
  }
}

// QSGD's fused step (the encoder writes the reconstruction, the max norm runs on bit patterns,
// the random words come without a per-draw wrap test when the call's positions cannot wrap)
// against the unfused sequence run at the scalar level, at every SIMD level: awkward lengths
// around a vector, a 32-element block and a bucket, inputs with NaN, +-Inf or squares that
// overflow, both policies, random offsets far from and straddling a wrap of the low 32 bits,
// and `applied` apart from or aliasing the gradient. Under Error both must throw with the
// residual untouched; otherwise payload, `applied`, residual and random offset agree bit for bit.
TEST(FusedFeedback, QsgdVectorPathsMatchTheScalarSequence) {
  const float kNaN = std::numeric_limits<float>::quiet_NaN();
  const float kInf = std::numeric_limits<float>::infinity();
  const std::size_t lengths[] = {0, 1, 15, 16, 17, 511, 512, 513, 4097};
  const std::uint64_t offsets[] = {11, (std::uint64_t{1} << 32) - 700};
  // What goes in at n / 2 and n - 1: nothing, NaN, -Inf, +Inf, a square that overflows.
  const float specials[] = {0.0f, kNaN, -kInf, kInf, 3e19f};
  std::vector<std::pair<std::string, CompressionConfig>> cfgs;
  for (const int bits : {2, 4, 8}) {
    for (const QsgdNorm norm : {QsgdNorm::Max, QsgdNorm::L2}) {
      for (const std::size_t bucket : {std::size_t{64}, std::size_t{512}}) {
        for (const NonFinitePolicy policy : {NonFinitePolicy::Error, NonFinitePolicy::Flag}) {
          CompressionConfig c = testing::config_of(Method::Qsgd);
          c.bits = bits;
          c.norm = norm;
          c.bucket = bucket;
          c.non_finite = policy;
          cfgs.emplace_back("qsgd" + std::to_string(bits) +
                                (norm == QsgdNorm::Max ? " max" : " l2") + " bucket " +
                                std::to_string(bucket) +
                                (policy == NonFinitePolicy::Flag ? " flag" : " error"),
                            c);
        }
      }
    }
  }
  std::size_t threw = 0, flagged = 0, compared = 0;
  for (const auto& [name, cfg] : cfgs) {
    const auto c = make_compressor(cfg);
    for (const std::size_t n : lengths) {
      for (std::size_t k = 0; k < std::size(specials); ++k) {
        if (k != 0 && n == 0) continue;
        auto g = gaussian(n, static_cast<std::uint32_t>(n + 7 * k));
        if (k != 0) {
          g[n / 2] = specials[k];
          g[n - 1] = -specials[k];
        }
        const std::vector<float> r0 = gaussian(n, 99, 0.1f);  // a non-zero residual
        std::vector<std::uint32_t> all(n);
        for (std::size_t i = 0; i < n; ++i) all[i] = static_cast<std::uint32_t>(i);
        for (const std::uint64_t offset : offsets) {
          // The reference: the unfused sequence at the scalar level.
          ErrorFeedback ref_ef(n, 0.9f);
          ref_ef.add(all, r0);
          std::vector<std::byte> ref_out(c->max_encoded_bytes(n));
          std::vector<float> ref_applied(n);
          Rng ref_rng(2, 1, 3, offset);
          bool ref_threw = false;
          std::size_t ref_bytes = 0;
          testing::with_level(SimdLevel::Scalar, [&] {
            try {
              ref_bytes = reference_step(*c, ref_ef, g, ref_out, ref_rng, ref_applied, 0);
            } catch (const Error&) {
              ref_threw = true;
            }
          });
          for (const SimdLevel level : testing::supported_levels()) {
            for (const bool in_place : {false, true}) {
              SCOPED_TRACE(name + " n=" + std::to_string(n) + " special " + std::to_string(k) +
                           " offset " + std::to_string(offset) + " level " +
                           std::to_string(static_cast<int>(level)) + (in_place ? " in place" : ""));
              ErrorFeedback ef(n, 0.9f);
              ef.add(all, r0);
              std::vector<float> grad = g, applied_store(n, -7.0f);
              const std::span<float> applied = in_place ? std::span<float>(grad) : applied_store;
              std::vector<std::byte> out(c->max_encoded_bytes(n));
              Rng rng(2, 1, 3, offset);
              bool did_throw = false;
              std::size_t bytes = 0;
              testing::with_level(level, [&] {
                try {
                  bytes = encode_with_feedback(*c, ef, grad, out, rng, applied);
                } catch (const Error& e) {
                  EXPECT_EQ(e.code(), ErrorCode::InvalidArgument);
                  did_throw = true;
                }
              });
              ASSERT_EQ(did_throw, ref_threw);
              if (did_throw) {
                ++threw;
                EXPECT_TRUE(same_bits(ef.residual(), r0)) << "residual after a throw";
                continue;
              }
              ++compared;
              ASSERT_EQ(bytes, ref_bytes);
              ASSERT_EQ(0, std::memcmp(out.data(), ref_out.data(), bytes)) << "payload";
              if (n != 0 && read_header(out).non_finite()) ++flagged;
              EXPECT_TRUE(same_bits(applied, ref_applied)) << "applied";
              EXPECT_TRUE(same_bits(ef.residual(), ref_ef.residual())) << "residual";
              EXPECT_EQ(rng.offset(), ref_rng.offset());
            }
          }
        }
      }
    }
  }
  // Every kind of outcome was exercised.
  EXPECT_GT(threw, 0u);
  EXPECT_GT(flagged, 0u);
  EXPECT_GT(compared, flagged);
}

// The largest magnitude each method promises to encode without the non-finite flag (what the
// fused path's single pass relies on under NonFinitePolicy::Error), restated from the formats.
float flag_free(const CompressionConfig& cfg) {
  constexpr float kMax = std::numeric_limits<float>::max();
  const auto bucket = static_cast<float>(cfg.bucket != 0                ? cfg.bucket
                                         : cfg.method == Method::OneBit ? kDefaultOneBitChunk
                                                                        : kDefaultQsgdBucket);
  switch (cfg.method) {
    case Method::Fp16:
      return 65504.0f;
    case Method::Bf16:
      return std::bit_cast<float>(std::uint32_t{0x7f7f0000u});
    case Method::OneBit:
      return kMax / (2.0f * bucket);
    case Method::Qsgd:
      return cfg.norm == QsgdNorm::Max ? kMax : std::sqrt(kMax / (2.0f * bucket));
    default:
      return kMax;
  }
}

TEST(FusedFeedback, HugeFiniteValuesAtAndBeyondTheFlagFreeMagnitude) {
  // At the promised magnitude the fused single pass must agree with the reference (which would
  // throw if the promise were wrong); just beyond it (where fp16 and friends do flag) both must
  // throw with the residual untouched, or both encode identically.
  const std::size_t n = 2 * 4096 + 136;
  for (const auto& [name, cfg] : all_configs()) {
    if (cfg.method == Method::TopK) continue;  // top-k has no flag-free pass
    for (const float scale : {1.0f, 1.0625f}) {
      SCOPED_TRACE(name + " scale " + std::to_string(scale));
      const auto c = make_compressor(cfg);
      ErrorFeedback fused_ef(n), ref_ef(n);
      std::vector<std::byte> out(c->max_encoded_bytes(n)), ref_out(out.size());
      std::vector<float> applied(n), ref_applied(n), g(n);
      const float m = std::min(flag_free(cfg) * scale, std::numeric_limits<float>::max());
      for (std::size_t i = 0; i < n; ++i) g[i] = (i % 3 == 0 ? -m : m) * (i % 7 == 0 ? 0.5f : 1.0f);
      Rng a(2, 0, 0), b(2, 0, 0);
      std::size_t bytes = 0, ref_bytes = 0;
      ErrorCode code = ErrorCode::Internal, ref_code = ErrorCode::Internal;
      try {
        bytes = encode_with_feedback(*c, fused_ef, g, out, a, applied);
      } catch (const Error& e) {
        code = e.code();
      }
      try {
        ref_bytes = reference_step(*c, ref_ef, g, ref_out, b, ref_applied, 0);
      } catch (const Error& e) {
        ref_code = e.code();
      }
      ASSERT_EQ(code, ref_code);
      if (scale == 1.0f) {
        EXPECT_EQ(ref_code, ErrorCode::Internal) << "reference threw";
      }
      ASSERT_EQ(bytes, ref_bytes);
      EXPECT_EQ(0, std::memcmp(out.data(), ref_out.data(), bytes));
      EXPECT_TRUE(same_bits(fused_ef.residual(), ref_ef.residual()));
      if (bytes != 0) {
        EXPECT_TRUE(same_bits(applied, ref_applied));
      }
    }
  }
}

// Sampled top-k runs one pass that bets on the usual outcome of its sample (the candidates are
// the answer) and repairs the rest. Inputs built around the sample's positions (restated from
// topk.cpp: 4096 runs of 16 at (stride - 16) / 2 + j * stride for density 1%, tolerance 0.2 and
// n >= 262144) steer it to every outcome; each must agree with the unfused sequence bit for bit,
// throws included (same code, residual untouched, same random offset).
enum class Steer { Plain, MoreThanHi, FewerThanLo, OverCap, NaNLate, HugeValues };

std::vector<float> steered(std::size_t n, Steer steer, std::uint32_t seed,
                           std::span<const float> residual, float decay) {
  auto g = gaussian(n, seed);
  const std::size_t runs = 4096, stride = n / runs, first = (stride - 16) / 2;
  const auto sampled = [&](std::size_t i) {
    return i >= first && (i - first) % stride < 16 && (i - first) / stride < runs;
  };
  for (std::size_t i = 0; i < n; ++i) {
    switch (steer) {
      case Steer::MoreThanHi:  // ~1.9% of the rest above the sample's 99th percentile
        if (!sampled(i)) g[i] *= 1.1f;
        break;
      case Steer::FewerThanLo:  // the sample overestimates the threshold
        if (sampled(i)) g[i] *= 1.5f;
        break;
      case Steer::OverCap:  // compensated to 0 but 0.2%: every element is a candidate
        if (i % 500 != 0) g[i] = -(decay * residual[i]);
        break;
      case Steer::HugeValues:  // beyond fp16's range, outside the sample
        if (!sampled(i) && i % 1000 == 7) g[i] = 1e6f;
        break;
      default:
        break;
    }
  }
  if (steer == Steer::NaNLate) g[n - 40] = std::numeric_limits<float>::quiet_NaN();
  return g;
}

void compare_steered(const CompressionConfig& cfg, std::size_t n, Steer steer, float decay,
                     bool in_place) {
  SCOPED_TRACE("n=" + std::to_string(n) + " steer=" + std::to_string(static_cast<int>(steer)) +
               " decay=" + std::to_string(decay) + (in_place ? " in-place" : ""));
  const auto c = make_compressor(cfg);
  ErrorFeedback fused_ef(n, decay), ref_ef(n, decay);
  std::vector<float> grad_store(n + 1), applied_store(n + 1), ref_applied(n);
  // Payload 2 bytes off a 16-byte boundary: fp16's streaming stores start with a head.
  std::vector<std::byte> out_store(c->max_encoded_bytes(n) + 2), ref_out(c->max_encoded_bytes(n));
  const std::span<std::byte> out(out_store.data() + 2, ref_out.size());
  const std::span<float> grad(grad_store.data() + 1, n);
  const std::span<float> applied = in_place ? grad : std::span<float>(applied_store.data() + 1, n);
  for (int step = 0; step < 2; ++step) {  // a clean step first, so that the residual is not zero
    const auto g = step == 0 ? gaussian(n, 70) : steered(n, steer, 71, ref_ef.residual(), decay);
    std::copy(g.begin(), g.end(), grad.begin());
    const std::vector<float> before(ref_ef.residual().begin(), ref_ef.residual().end());
    Rng fused_rng(4, 0, static_cast<std::uint64_t>(step)), ref_rng = fused_rng;
    std::size_t bytes = 0, ref_bytes = 0;
    ErrorCode code = ErrorCode::Internal, ref_code = ErrorCode::Internal;
    try {
      ref_bytes = reference_step(*c, ref_ef, g, ref_out, ref_rng, ref_applied, 0);
    } catch (const Error& e) {
      ref_code = e.code();
    }
    try {
      bytes = encode_with_feedback(*c, fused_ef, grad, out, fused_rng, applied);
    } catch (const Error& e) {
      code = e.code();
    }
    ASSERT_EQ(code, ref_code) << "step " << step;
    ASSERT_EQ(fused_rng.offset(), ref_rng.offset());
    ASSERT_TRUE(same_bits(fused_ef.residual(), ref_ef.residual())) << "residual, step " << step;
    if (ref_code != ErrorCode::Internal) {
      EXPECT_TRUE(same_bits(fused_ef.residual(), before));
      continue;
    }
    ASSERT_EQ(bytes, ref_bytes) << "step " << step;
    ASSERT_EQ(0, std::memcmp(out.data(), ref_out.data(), bytes)) << "payload, step " << step;
    ASSERT_TRUE(same_bits(applied, ref_applied)) << "applied, step " << step;
  }
}

TEST(FusedFeedback, SampledTopKEveryOutcomeOfTheSample) {
  for (const bool fp16 : {false, true}) {
    for (const auto policy : {NonFinitePolicy::Error, NonFinitePolicy::Flag}) {
      CompressionConfig cfg = testing::config_of(Method::TopK);
      cfg.density = 0.01;
      cfg.selection = TopKSelection::Sampled;
      if (fp16) cfg.values = TopKValues::Fp16;
      cfg.non_finite = policy;
      SCOPED_TRACE(std::string(fp16 ? "fp16" : "fp32") +
                   (policy == NonFinitePolicy::Error ? " error" : " flag"));
      // Under Error the one pass runs from 2^21 elements on (below, the plain sequence).
      const std::size_t n = policy == NonFinitePolicy::Error ? (std::size_t{1} << 21) + 13 : 300007;
      for (const Steer steer : {Steer::Plain, Steer::MoreThanHi, Steer::FewerThanLo, Steer::OverCap,
                                Steer::NaNLate, Steer::HugeValues}) {
        compare_steered(cfg, n, steer, 1.0f, false);
        compare_steered(cfg, n, steer, 0.75f, true);
      }
    }
  }
}

TEST(FusedFeedback, LargeBuffersStreamTheirOutputs) {
  // From 2^21 elements `applied` is written with streaming stores (scalar heads up to a 32-byte
  // boundary, unaligned here) unless it is the gradient itself.
  const std::size_t n = (std::size_t{1} << 21) + 13;
  for (const auto& [name, cfg] : all_configs()) {
    if (name.find("qsgd") == std::string::npos && name.find("onebit") == std::string::npos &&
        name.find("fp16") == std::string::npos && name.find("topk") == std::string::npos) {
      continue;
    }
    SCOPED_TRACE(name);
    compare_steered(cfg, n, Steer::Plain, 1.0f, false);
    compare_steered(cfg, n, Steer::NaNLate, 0.75f, false);
  }
  CompressionConfig cfg = testing::config_of(Method::TopK);
  cfg.selection = TopKSelection::Sampled;
  compare_steered(cfg, n, Steer::Plain, 1.0f, false);
  compare_steered(cfg, n, Steer::MoreThanHi, 1.0f, true);
}

TEST(FusedFeedback, RejectsBadArguments) {
  const auto c = make_compressor(testing::config_of(Method::Qsgd));
  ErrorFeedback ef(100);
  std::vector<float> g(64), applied(64), short_applied(63);
  std::vector<std::byte> out(c->max_encoded_bytes(64)), small(c->max_encoded_bytes(64) - 1);
  Rng rng(1, 0, 0);
  EXPECT_EQ(testing::code_of([&] { encode_with_feedback(*c, ef, g, out, rng, short_applied); }),
            ErrorCode::InvalidArgument);
  EXPECT_EQ(testing::code_of([&] { encode_with_feedback(*c, ef, g, small, rng, applied); }),
            ErrorCode::InvalidArgument);
  EXPECT_EQ(testing::code_of([&] { encode_with_feedback(*c, ef, g, out, rng, applied, 40); }),
            ErrorCode::InvalidArgument);
  EXPECT_TRUE(
      std::all_of(ef.residual().begin(), ef.residual().end(), [](float r) { return r == 0; }));
}

}  // namespace
}  // namespace frugal::compression

namespace frugal::compression {
namespace {

// encode_payload_with_feedback (no `applied`) and FeedbackInput::FlagFree (no copy of the old
// residual) against the unfused sequence: payload, residual and random offset bit for bit, and
// the gradient left as it was, over steps, lengths that are no multiple of any block, decays.
void compare_payload_only(const std::string& name, const CompressionConfig& cfg, std::size_t n,
                          float decay, FeedbackInput input, bool with_applied) {
  SCOPED_TRACE(name + " n=" + std::to_string(n) + " decay=" + std::to_string(decay) +
               (input == FeedbackInput::FlagFree ? " flag-free" : " unchecked") +
               (with_applied ? " applied" : " payload only"));
  const auto c = make_compressor(cfg);
  constexpr std::size_t kOffset = 3;
  ErrorFeedback ef(n + kOffset, decay), ref_ef(n + kOffset, decay);
  std::vector<float> grad_store(n + 1), applied(n), ref_applied(n);
  const std::span<float> grad(grad_store.data() + 1, n);  // unaligned
  std::vector<std::byte> out(c->max_encoded_bytes(n)), ref_out(out.size());
  for (int step = 0; step < 3; ++step) {
    const auto g = gaussian(n, 90 + static_cast<std::uint32_t>(step));
    std::copy(g.begin(), g.end(), grad.begin());
    Rng rng(7, 2, static_cast<std::uint64_t>(step), 13), ref_rng = rng;
    const std::size_t ref_bytes =
        reference_step(*c, ref_ef, g, ref_out, ref_rng, ref_applied, kOffset);
    const std::size_t bytes =
        with_applied ? encode_with_feedback(*c, ef, grad, out, rng, applied, kOffset, input)
                     : encode_payload_with_feedback(*c, ef, grad, out, rng, kOffset, input);
    ASSERT_EQ(bytes, ref_bytes) << "step " << step;
    ASSERT_EQ(0, std::memcmp(out.data(), ref_out.data(), bytes)) << "payload, step " << step;
    ASSERT_TRUE(same_bits(ef.residual(), ref_ef.residual())) << "residual, step " << step;
    ASSERT_EQ(rng.offset(), ref_rng.offset());
    if (with_applied) {
      ASSERT_TRUE(same_bits(applied, ref_applied)) << "applied, step " << step;
    } else {
      ASSERT_TRUE(same_bits(grad, g)) << "grad written, step " << step;
    }
  }
}

TEST(PayloadOnlyFeedback, BitIdenticalToTheUnfusedSequence) {
  const std::size_t lengths[] = {0, 1, 9, 65, 513, 4097, 2 * 8192 + 77};
  for (const auto& [name, cfg] : configs()) {
    for (const std::size_t n : lengths) {
      for (const FeedbackInput input : {FeedbackInput::Unchecked, FeedbackInput::FlagFree}) {
        compare_payload_only(name, cfg, n, 1.0f, input, false);
        if (n == 4097) {
          compare_payload_only(name, cfg, n, 0.75f, input, false);
          compare_payload_only(name, cfg, n, 0.5f, input, true);
        }
      }
    }
  }
}

TEST(PayloadOnlyFeedback, BitIdenticalAtEverySimdLevelAndWhenStreaming) {
  for (const SimdLevel level : testing::supported_levels()) {
    testing::with_level(level, [&] {
      for (const auto& [name, cfg] : all_configs()) {
        compare_payload_only(name + " level " + std::to_string(static_cast<int>(level)), cfg,
                             3 * 8192 + 9, 0.75f, FeedbackInput::FlagFree, false);
      }
    });
  }
  // From 2^21 elements the payload (fp16) and `applied` are streamed.
  const std::size_t n = (std::size_t{1} << 21) + 13;
  for (const Method m : {Method::Fp16, Method::OneBit, Method::Qsgd}) {
    const CompressionConfig cfg = testing::config_of(m);
    compare_payload_only(std::string(to_string(m)), cfg, n, 1.0f, FeedbackInput::FlagFree, false);
    compare_payload_only(std::string(to_string(m)), cfg, n, 1.0f, FeedbackInput::FlagFree, true);
  }
}

TEST(PayloadOnlyFeedback, UncheckedInputStillRollsBackUnderError) {
  // Without an `applied` to keep the old residual in, a NaN in a late block must still leave
  // the residual as it was (under Error) or encode flagged like the reference (under Flag).
  const std::size_t n = 3 * 8192 + 40;
  for (const auto& [name, cfg] : configs()) {
    SCOPED_TRACE(name);
    const auto c = make_compressor(cfg);
    ErrorFeedback ef(n), ref_ef(n);
    std::vector<std::byte> out(c->max_encoded_bytes(n)), ref_out(out.size());
    std::vector<float> ref_applied(n);
    {
      const auto g = gaussian(n, 5);
      Rng a(1, 0, 0), b(1, 0, 0);
      encode_payload_with_feedback(*c, ef, g, out, a);
      reference_step(*c, ref_ef, g, ref_out, b, ref_applied, 0);
    }
    auto g = gaussian(n, 6);
    g[n - 3] = std::numeric_limits<float>::quiet_NaN();
    const std::vector<float> before(ref_ef.residual().begin(), ref_ef.residual().end());
    Rng a(1, 0, 1), b(1, 0, 1);
    if (cfg.non_finite == NonFinitePolicy::Error) {
      EXPECT_EQ(testing::code_of([&] { encode_payload_with_feedback(*c, ef, g, out, a); }),
                ErrorCode::InvalidArgument);
      EXPECT_TRUE(same_bits(ef.residual(), before));
    } else {
      const std::size_t bytes = encode_payload_with_feedback(*c, ef, g, out, a);
      ASSERT_EQ(bytes, reference_step(*c, ref_ef, g, ref_out, b, ref_applied, 0));
      EXPECT_EQ(0, std::memcmp(out.data(), ref_out.data(), bytes));
      EXPECT_TRUE(read_header(out).non_finite());
      EXPECT_TRUE(same_bits(ef.residual(), ref_ef.residual()));
    }
  }
}

TEST(PayloadOnlyFeedback, RejectsBadArguments) {
  const auto c = make_compressor(testing::config_of(Method::OneBit));
  ErrorFeedback ef(100);
  std::vector<float> g(64);
  std::vector<std::byte> out(c->max_encoded_bytes(64)), small(c->max_encoded_bytes(64) - 1);
  Rng rng(1, 0, 0);
  EXPECT_EQ(testing::code_of([&] { encode_payload_with_feedback(*c, ef, g, small, rng); }),
            ErrorCode::InvalidArgument);
  EXPECT_EQ(testing::code_of([&] { encode_payload_with_feedback(*c, ef, g, out, rng, 40); }),
            ErrorCode::InvalidArgument);
  EXPECT_TRUE(
      std::all_of(ef.residual().begin(), ef.residual().end(), [](float r) { return r == 0; }));
}

}  // namespace
}  // namespace frugal::compression
