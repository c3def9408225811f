// Compressor::decode_sum, the two-phase owner's one-pass sum, against what it replaces: fill with
// 0, then decode_add every payload in turn. Bit for bit for every method and variant, SIMD
// level, payload count (1..8) and length (none a multiple of the blocks or buckets), flagged
// payloads included; and the same errors for bad payloads.
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "test_util.hpp"

namespace frugal::compression {
namespace {

using testing::all_configs;
using testing::code_of;
using testing::gaussian;

std::vector<std::byte> encode(const Compressor& c, std::span<const float> x, Rng& rng) {
  std::vector<std::byte> out(c.max_encoded_bytes(x.size()));
  out.resize(c.encode(x, out, rng));
  return out;
}

// `sources` payloads of n elements; under Flag, one holds a NaN and is flagged.
std::vector<std::vector<std::byte>> payloads(const Compressor& c, std::size_t n, int sources,
                                             bool with_nan) {
  std::vector<std::vector<std::byte>> out;
  for (int q = 0; q < sources; ++q) {
    auto x = gaussian(n, 300 + static_cast<std::uint32_t>(q), q % 2 == 0 ? 1.0f : 1e-3f);
    if (with_nan && q == sources / 2 && n > 0) x[n / 2] = std::numeric_limits<float>::quiet_NaN();
    Rng rng(5, static_cast<std::uint64_t>(q), 0);
    out.push_back(encode(c, x, rng));
  }
  return out;
}

void compare(const std::string& name, const CompressionConfig& cfg, std::size_t n, int sources,
             bool with_nan, float divisor = 1.0f) {
  SCOPED_TRACE(name + " n=" + std::to_string(n) + " sources=" + std::to_string(sources) +
               (with_nan ? " flagged" : ""));
  const auto c = make_compressor(cfg);
  const auto encoded = payloads(*c, n, sources, with_nan);
  std::vector<std::span<const std::byte>> views(encoded.begin(), encoded.end());
  std::vector<float> want(n, 0.0f), got_store(n + 1, 7.0f);
  for (const auto& p : encoded) c->decode_add(p, want);
  for (float& x : want) x /= divisor;                   // what an average computes after the sum
  const std::span<float> got(got_store.data() + 1, n);  // unaligned, and not zero to begin with
  c->decode_sum(views, got, divisor);
  ASSERT_TRUE(n == 0 || std::memcmp(got.data(), want.data(), 4 * n) == 0);
}

TEST(DecodeSum, BitIdenticalToDecodeAddInTurn) {
  const std::size_t lengths[] = {0, 1, 9, 100, 2047, 2049, 4097, 3 * 4096 + 77};
  for (const auto& [name, cfg] : all_configs()) {
    for (const std::size_t n : lengths) {
      for (int sources = 1; sources <= 8; ++sources) {
        compare(name, cfg, n, sources, false);
        compare(name + " average", cfg, n, sources, false, static_cast<float>(sources));
      }
    }
    CompressionConfig flag = cfg;
    flag.non_finite = NonFinitePolicy::Flag;
    compare(name + "_flag", flag, 3 * 4096 + 77, 4, true);
  }
  // The library's default buckets (1-bit 4096, so blocks of one bucket).
  for (const Method m : {Method::OneBit, Method::Ternary, Method::Qsgd}) {
    CompressionConfig cfg;
    cfg.method = m;
    compare(std::string(to_string(m)) + "_default", cfg, 5 * 4096 + 9, 5, false);
  }
}

TEST(DecodeSum, BitIdenticalAtEverySimdLevel) {
  for (const SimdLevel level : testing::supported_levels()) {
    testing::with_level(level, [&] {
      for (const auto& [name, cfg] : all_configs()) {
        compare(name + " level " + std::to_string(static_cast<int>(level)), cfg, 2 * 4096 + 13, 3,
                false);
      }
    });
  }
}

void put_u32(std::vector<std::byte>& p, std::size_t at, std::uint32_t v) {
  std::memcpy(p.data() + at, &v, 4);
}

TEST(DecodeSum, BadPayloadsThrowWhatDecodeThrows) {
  const std::size_t n = 3000;
  for (const auto& [name, cfg] : all_configs()) {
    SCOPED_TRACE(name);
    const auto c = make_compressor(cfg);
    auto encoded = payloads(*c, n, 3, false);
    std::vector<float> out(n);
    const auto code_with = [&](std::vector<std::byte> bad) {
      auto copy = encoded;
      copy[2] = std::move(bad);
      std::vector<std::span<const std::byte>> views(copy.begin(), copy.end());
      return code_of([&] { c->decode_sum(views, out); });
    };
    // Truncated, another element count (Mismatch), and a corrupt first body word: a scale or
    // norm (quantizers), a value (casts and top-k, whose values come first).
    auto truncated = encoded[2];
    truncated.pop_back();
    EXPECT_EQ(code_with(truncated), ErrorCode::InvalidArgument);
    auto other = payloads(*c, n - 8, 1, false)[0];
    EXPECT_EQ(code_with(other), ErrorCode::Mismatch);
    if (cfg.method == Method::Bf16 || cfg.method == Method::Fp16) {
      auto bad = encoded[2];
      put_u32(bad, PayloadHeader::kSize + 2 * 1000, 0x7fff7fffu);  // NaN halves, not the first
      EXPECT_EQ(code_with(bad), ErrorCode::InvalidArgument);
    } else {
      auto bad = encoded[2];
      put_u32(bad, PayloadHeader::kSize, cfg.method == Method::TopK ? 0xffffffffu : 0x7fc00000u);
      EXPECT_EQ(code_with(bad), ErrorCode::InvalidArgument);
    }
  }
}

}  // namespace
}  // namespace frugal::compression
