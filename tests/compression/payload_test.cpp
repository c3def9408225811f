// Decoders reject corrupt, truncated and mismatched payloads with frugal::Error and never touch
// memory out of bounds (run under -Db_sanitize=address,undefined to check the latter).

#include "frugal/compression/payload.hpp"

#include <cstring>
#include <functional>
#include <limits>

#include "test_util.hpp"

namespace frugal::compression {
namespace {

using testing::all_configs;
using testing::code_of;
using testing::config_of;
using testing::encode;
using testing::gaussian;

TEST(Payload, TruncatedAndOverlongAreRejected) {
  for (const auto& [name, cfg] : all_configs()) {
    const auto c = make_compressor(cfg);
    const auto x = gaussian(100, 1);
    Rng rng(1, 0, 0);
    const auto p = encode(*c, x, rng);
    std::vector<float> y(100);
    for (std::size_t len = 0; len < p.size(); ++len) {
      // An exact-size copy so ASan sees any read past the end.
      std::vector<std::byte> cut(p.begin(), p.begin() + static_cast<long>(len));
      ASSERT_EQ(code_of([&] { c->decode(cut, y); }), ErrorCode::InvalidArgument)
          << name << " " << len;
    }
    auto longer = p;
    longer.push_back(std::byte{0});
    EXPECT_EQ(code_of([&] { c->decode(longer, y); }), ErrorCode::InvalidArgument) << name;
  }
}

TEST(Payload, BadFramingIsInvalid) {
  const auto c = make_compressor(config_of(Method::Fp16));
  const std::vector<float> x(10, 1.0f);
  Rng rng(1, 0, 0);
  const auto p = encode(*c, x, rng);
  std::vector<float> y(10);
  for (std::size_t at : {0, 4, 5, 7}) {  // magic, version, method (unknown), flags
    auto bad = p;
    bad[at] = std::byte{0xee};
    EXPECT_EQ(code_of([&] { c->decode(bad, y); }), ErrorCode::InvalidArgument) << at;
  }
}

TEST(Payload, ConfigurationMismatchesAreMismatch) {
  const auto x = gaussian(100, 2);
  std::vector<float> y(100), y_long(101);
  Rng rng(1, 0, 0);
  // Different method.
  const auto fp16 = make_compressor(config_of(Method::Fp16));
  const auto bf16 = make_compressor(config_of(Method::Bf16));
  EXPECT_EQ(code_of([&] { bf16->decode(encode(*fp16, x, rng), y); }), ErrorCode::Mismatch);
  // Different element count.
  EXPECT_EQ(code_of([&] { fp16->decode(encode(*fp16, x, rng), y_long); }), ErrorCode::Mismatch);
  // Different bucket, bits, scaling, norm, values, rounding, k.
  auto pair = [&](CompressionConfig a, CompressionConfig b) {
    const auto ca = make_compressor(a);
    const auto cb = make_compressor(b);
    return code_of([&] { cb->decode(encode(*ca, x, rng), y); });
  };
  CompressionConfig a = config_of(Method::Qsgd), b = a;
  b.bucket = 256;
  EXPECT_EQ(pair(a, b), ErrorCode::Mismatch);
  b = a;
  b.bits = 8;
  EXPECT_EQ(pair(a, b), ErrorCode::Mismatch);
  b = a;
  b.norm = QsgdNorm::Max;
  EXPECT_EQ(pair(a, b), ErrorCode::Mismatch);
  a = config_of(Method::OneBit);
  b = a;
  b.scaling = OneBitScaling::SignMeans;
  EXPECT_EQ(pair(a, b), ErrorCode::Mismatch);
  a = config_of(Method::Bf16);
  b = a;
  b.stochastic_rounding = true;
  EXPECT_EQ(pair(a, b), ErrorCode::Mismatch);
  a = config_of(Method::TopK);
  a.k = 5;
  b = a;
  b.k = 6;
  EXPECT_EQ(pair(a, b), ErrorCode::Mismatch);
  b = a;
  b.values = TopKValues::Fp16;
  EXPECT_EQ(pair(a, b), ErrorCode::Mismatch);
}

void put_u32(std::vector<std::byte>& p, std::size_t at, std::uint32_t v) {
  std::memcpy(p.data() + at, &v, 4);
}

TEST(Payload, CorruptBodiesAreRejected) {
  const auto x = gaussian(100, 3);
  std::vector<float> y(100);
  Rng rng(1, 0, 0);
  // Top-k: an index out of range, an unknown chunk coding, a stream cut short inside (header
  // and length agreeing). The indices follow the 4 values: one delta chunk of 4.
  CompressionConfig cfg = config_of(Method::TopK);
  cfg.k = 4;
  const auto topk = make_compressor(cfg);
  const auto p = encode(*topk, x, rng);
  const std::size_t idx = PayloadHeader::kSize + 16;
  ASSERT_EQ(p[idx], std::byte{1});
  ASSERT_EQ(p[idx + 1], std::byte{4});
  auto out_of_range = p;
  out_of_range[idx + 2] = std::byte{100};
  EXPECT_EQ(code_of([&] { topk->decode(out_of_range, y); }), ErrorCode::InvalidArgument);
  auto bad_coding = p;
  bad_coding[idx] = std::byte{7};
  EXPECT_EQ(code_of([&] { topk->decode(bad_coding, y); }), ErrorCode::InvalidArgument);
  auto cut = p;
  cut.pop_back();
  std::uint32_t bits;
  std::memcpy(&bits, cut.data() + 12, 4);
  --bits;
  std::memcpy(cut.data() + 12, &bits, 4);
  EXPECT_EQ(code_of([&] { topk->decode(cut, y); }), ErrorCode::InvalidArgument);
  // k in the header that disagrees with the body length or the receiver.
  auto k_big = p;
  const std::uint64_t k = 5;
  std::memcpy(k_big.data() + 24, &k, 8);
  EXPECT_EQ(code_of([&] { topk->decode(k_big, y); }), ErrorCode::Mismatch);
  // NaN value in an unflagged payload.
  auto nan_value = p;
  put_u32(nan_value, PayloadHeader::kSize + 8, 0x7fc00000u);
  EXPECT_EQ(code_of([&] { topk->decode(nan_value, y); }), ErrorCode::InvalidArgument);

  // Quantizers: non-finite or negative scale.
  for (Method m : {Method::OneBit, Method::Ternary, Method::Qsgd}) {
    const auto c = make_compressor(config_of(m));
    const auto q = encode(*c, x, rng);
    for (std::uint32_t scale : {0x7f800000u, 0xffc00000u, 0xbf800000u}) {
      auto bad = q;
      put_u32(bad, PayloadHeader::kSize, scale);
      EXPECT_EQ(code_of([&] { c->decode(bad, y); }), ErrorCode::InvalidArgument)
          << to_string(m) << " " << scale;
    }
  }
  // Casts: NaN element.
  for (Method m : {Method::None, Method::Fp16, Method::Bf16}) {
    const auto c = make_compressor(config_of(m));
    auto bad = encode(*c, x, rng);
    put_u32(bad, PayloadHeader::kSize + 8, 0x7fff7fffu);
    EXPECT_EQ(code_of([&] { c->decode(bad, y); }), ErrorCode::InvalidArgument) << to_string(m);
  }
}

TEST(Payload, RandomCorruptionNeverCrashes) {
  // Flip random bytes (header included): decode either succeeds with finite output or throws
  // frugal::Error. Under ASan/UBSan this is the out-of-bounds check.
  std::mt19937 gen(99);
  for (const auto& [name, cfg] : all_configs()) {
    const auto c = make_compressor(cfg);
    const auto x = gaussian(75, 4);
    Rng rng(1, 0, 0);
    const auto p = encode(*c, x, rng);
    for (int trial = 0; trial < 300; ++trial) {
      auto bad = p;
      const int flips = 1 + static_cast<int>(gen() % 4);
      for (int f = 0; f < flips; ++f) {
        bad[gen() % bad.size()] ^= static_cast<std::byte>(1 + gen() % 255);
      }
      std::vector<float> y(75);
      try {
        c->decode_add(bad, y);
        if (!read_header(bad).non_finite()) {
          for (float v : y) ASSERT_TRUE(std::isfinite(v)) << name;
        }
      } catch (const Error&) {
      }
    }
  }
}

}  // namespace
}  // namespace frugal::compression
