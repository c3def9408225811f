#pragma once

#include <gtest/gtest.h>

#include <cstddef>
#include <random>
#include <vector>

#include "frugal/compression/compressor.hpp"
#include "frugal/compression/simd.hpp"
#include "frugal/error.hpp"

namespace frugal::compression::testing {

// The method as its paper defines it: QSGD with the L2 norm, ternary unclipped (the library's
// defaults, max norm and TernGrad's clipping, are set explicitly where tested).
inline CompressionConfig config_of(Method m) {
  CompressionConfig c;
  c.method = m;
  c.norm = QsgdNorm::L2;
  c.clip_sigma = 0.0f;
  return c;
}

// One config per method and variant, as (name, config).
inline std::vector<std::pair<std::string, CompressionConfig>> all_configs() {
  std::vector<std::pair<std::string, CompressionConfig>> out;
  auto add = [&](std::string name, CompressionConfig c) { out.emplace_back(std::move(name), c); };
  add("none", config_of(Method::None));
  add("fp16", config_of(Method::Fp16));
  add("bf16", config_of(Method::Bf16));
  CompressionConfig c = config_of(Method::Bf16);
  c.stochastic_rounding = true;
  add("bf16_sr", c);
  c = config_of(Method::TopK);
  c.density = 0.1;
  add("topk_exact", c);
  c.values = TopKValues::Fp16;
  add("topk_exact_fp16", c);
  c = config_of(Method::TopK);
  c.density = 0.1;
  c.selection = TopKSelection::Sampled;
  add("topk_sampled", c);
  c = config_of(Method::OneBit);
  c.bucket = 64;
  add("onebit_meanabs", c);
  c.scaling = OneBitScaling::SignMeans;
  add("onebit_signmeans", c);
  c = config_of(Method::Ternary);
  c.bucket = 64;
  add("ternary", c);
  for (int bits : {2, 4, 8}) {
    c = config_of(Method::Qsgd);
    c.bucket = 64;
    c.bits = bits;
    add("qsgd" + std::to_string(bits), c);
  }
  c = config_of(Method::Qsgd);
  c.norm = QsgdNorm::Max;
  add("qsgd4_max", c);
  return out;
}

inline std::vector<float> gaussian(std::size_t n, std::uint32_t seed, float sigma = 1.0f) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> d(0.0f, sigma);
  std::vector<float> v(n);
  for (auto& x : v) x = d(gen);
  return v;
}

inline std::vector<std::byte> encode(const Compressor& c, std::span<const float> x, Rng& rng) {
  std::vector<std::byte> out(c.max_encoded_bytes(x.size()));
  out.resize(c.encode(x, out, rng));
  return out;
}

inline std::vector<float> round_trip(const Compressor& c, std::span<const float> x, Rng rng) {
  const auto payload = encode(c, x, rng);
  std::vector<float> y(x.size(), -12345.0f);
  c.decode(payload, y);
  return y;
}

// Every SIMD level this CPU runs, best first (Avx512, Avx2, Scalar on a recent x86).
inline std::vector<SimdLevel> supported_levels() {
  std::vector<SimdLevel> out;
  for (int l = static_cast<int>(best_simd_level()); l >= 0; --l) {
    out.push_back(static_cast<SimdLevel>(l));
  }
  return out;
}

// The levels below the best one: what parity tests compare the best level's output against.
inline std::vector<SimdLevel> lower_levels() {
  std::vector<SimdLevel> out;
  for (int l = static_cast<int>(best_simd_level()) - 1; l >= 0; --l) {
    out.push_back(static_cast<SimdLevel>(l));
  }
  return out;
}

// Runs `body` with the given SIMD level, restoring the best one afterwards.
template <class F>
void with_level(SimdLevel level, F&& body) {
  set_simd_level(level);
  body();
  set_simd_level(best_simd_level());
}

inline ErrorCode code_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.code();
  }
  ADD_FAILURE() << "expected frugal::Error";
  return ErrorCode::Internal;
}

}  // namespace frugal::compression::testing
