// Compression kernel throughput on one core: encode, decode and decode_add for every method at
// 1 M and 25.6 M floats (a ResNet-50 gradient), next to memcpy and std::nth_element (top 1%)
// baselines in the same binary so ratios come from one run, and one error-feedback step
// (encode_with_feedback) fused and unfused, with and without `applied`, and the two-phase
// owner's sum of 4 payloads. Bytes processed = fp32 input bytes.
//
//   frugal-kernel-bench --benchmark_filter=25600000

#include <benchmark/benchmark.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "frugal/compression/compressor.hpp"
#include "frugal/compression/error_feedback.hpp"
#include "frugal/compression/simd.hpp"

namespace fc = frugal::compression;

namespace {

constexpr std::size_t kSizes[] = {1 << 20, 25'600'000};

// Gaussian gradients, generated once per size (25.6 M normals take a while).
const std::vector<float>& data(std::size_t n) {
  static std::map<std::size_t, std::vector<float>> cache;
  auto& v = cache[n];
  if (v.empty()) {
    std::mt19937 gen(1234);
    std::normal_distribution<float> d(0.0f, 1e-3f);
    v.resize(n);
    for (auto& x : v) x = d(gen);
  }
  return v;
}

void set_bytes(benchmark::State& state, std::size_t n) {
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations()) *
                          static_cast<std::int64_t>(n * sizeof(float)));
}

void bm_memcpy(benchmark::State& state, std::size_t n) {
  const auto& x = data(n);
  std::vector<float> y(n, 1.0f);
  for (auto _ : state) {
    std::memcpy(y.data(), x.data(), n * sizeof(float));
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  set_bytes(state, n);
}

// One read of the input and nothing else (an OR of all bit patterns, one vector instruction per
// load): the floor for any kernel that must look at every element, such as top-k selection.
void bm_read(benchmark::State& state, std::size_t n) {
  const auto& x = data(n);
  for (auto _ : state) {
    std::uint32_t acc = 0;
    for (const float v : x) acc |= std::bit_cast<std::uint32_t>(v);
    benchmark::DoNotOptimize(acc);
  }
  set_bytes(state, n);
}

// What a top-k without a better select does: nth_element on magnitudes (on a fresh copy each
// iteration; the copy is excluded from the timing).
void bm_nth_element(benchmark::State& state, std::size_t n) {
  const auto& x = data(n);
  std::vector<float> y(n);
  const std::size_t k = (n + 99) / 100;
  for (auto _ : state) {
    state.PauseTiming();
    std::copy(x.begin(), x.end(), y.begin());
    state.ResumeTiming();
    std::nth_element(y.begin(), y.begin() + static_cast<long>(k - 1), y.end(),
                     [](float a, float b) { return std::abs(a) > std::abs(b); });
    benchmark::DoNotOptimize(y.data());
  }
  set_bytes(state, n);
}

enum class Op { Encode, Decode, DecodeAdd };

void bm_method(benchmark::State& state, fc::CompressionConfig cfg, Op op, std::size_t n) {
  const auto c = fc::make_compressor(cfg);
  const auto& x = data(n);
  std::vector<std::byte> payload(c->max_encoded_bytes(n));
  fc::Rng rng(1, 0, 0);
  const std::size_t bytes = c->encode(x, payload, rng);
  std::vector<float> y(n, 0.0f);
  for (auto _ : state) {
    switch (op) {
      case Op::Encode:
        rng.set_offset(0);
        benchmark::DoNotOptimize(c->encode(x, payload, rng));
        break;
      case Op::Decode:
        c->decode(std::span<const std::byte>(payload).first(bytes), y);
        break;
      case Op::DecodeAdd:
        c->decode_add(std::span<const std::byte>(payload).first(bytes), y);
        break;
    }
    benchmark::DoNotOptimize(payload.data());
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  set_bytes(state, n);
  state.counters["wire_ratio"] =
      static_cast<double>(n * sizeof(float)) / static_cast<double>(bytes);
}

// One error-feedback step, fused (encode_with_feedback) or as the unfused reference sequence the
// fused path is bit-identical to (compensate into a copy, encode, decode, absorb). Bytes processed
// = fp32 gradient bytes, as for encode.
void bm_feedback(benchmark::State& state, fc::CompressionConfig cfg, bool fused, std::size_t n,
                 bool in_place) {
  const auto c = fc::make_compressor(cfg);
  const auto& grad = data(n);
  std::vector<std::byte> payload(c->max_encoded_bytes(n));
  std::vector<float> applied(n, 0.0f), compensated(n, 0.0f);
  fc::ErrorFeedback ef(n);
  std::uint64_t step = 0;
  for (auto _ : state) {
    fc::Rng rng(1, 0, step++);
    if (in_place) {  // as the collectives call it: applied is the gradient (a fresh copy)
      state.PauseTiming();
      std::copy(grad.begin(), grad.end(), applied.begin());
      state.ResumeTiming();
      benchmark::DoNotOptimize(fc::encode_with_feedback(*c, ef, applied, payload, rng, applied));
    } else if (fused) {
      benchmark::DoNotOptimize(fc::encode_with_feedback(*c, ef, grad, payload, rng, applied));
    } else {
      ef.compensate(grad, compensated);
      const std::size_t bytes = c->encode(compensated, payload, rng);
      c->decode(std::span<const std::byte>(payload).first(bytes), applied);
      ef.absorb(compensated, applied);
    }
    benchmark::DoNotOptimize(applied.data());
    benchmark::ClobberMemory();
  }
  set_bytes(state, n);
}

// The error-feedback steps of a compressed allreduce, whose input has been checked against the
// flag-free magnitude beforehand (FeedbackInput::FlagFree: no copy of the old residual): with
// `applied` written, or payload and residual only (encode_payload_with_feedback, what two-phase
// and allgather run).
void bm_feedback_checked(benchmark::State& state, fc::CompressionConfig cfg, std::size_t n,
                         bool with_applied) {
  const auto c = fc::make_compressor(cfg);
  const auto& grad = data(n);
  std::vector<std::byte> payload(c->max_encoded_bytes(n));
  std::vector<float> applied(n, 0.0f);
  fc::ErrorFeedback ef(n);
  std::uint64_t step = 0;
  for (auto _ : state) {
    fc::Rng rng(1, 0, step++);
    if (with_applied) {
      benchmark::DoNotOptimize(fc::encode_with_feedback(*c, ef, grad, payload, rng, applied, 0,
                                                        fc::FeedbackInput::FlagFree));
    } else {
      benchmark::DoNotOptimize(fc::encode_payload_with_feedback(*c, ef, grad, payload, rng, 0,
                                                                fc::FeedbackInput::FlagFree));
    }
    benchmark::DoNotOptimize(payload.data());
    benchmark::ClobberMemory();
  }
  set_bytes(state, n);
}

// The two-phase owner's sum of P = 4 payloads of a quarter of the buffer each (its chunk):
// Compressor::decode_sum, one pass over the sum, or fill with 0 and decode_add each payload in
// turn (what it replaces, bit-identical). Bytes processed = fp32 bytes of the P decoded chunks.
void bm_sum(benchmark::State& state, fc::CompressionConfig cfg, std::size_t n, bool fused) {
  constexpr std::size_t kSources = 4;
  const auto c = fc::make_compressor(cfg);
  const std::size_t m = n / kSources;
  const auto& x = data(n);
  std::vector<std::vector<std::byte>> payloads(kSources);
  for (std::size_t q = 0; q < kSources; ++q) {
    payloads[q].resize(c->max_encoded_bytes(m));
    fc::Rng rng(1, q, 0);
    payloads[q].resize(c->encode(std::span<const float>(x).subspan(q * m, m), payloads[q], rng));
  }
  const std::vector<std::span<const std::byte>> views(payloads.begin(), payloads.end());
  std::vector<float> sum(m, 1.0f);
  for (auto _ : state) {
    if (fused) {
      c->decode_sum(views, sum);
    } else {
      std::fill(sum.begin(), sum.end(), 0.0f);
      for (const auto& p : views) c->decode_add(p, sum);
    }
    benchmark::DoNotOptimize(sum.data());
    benchmark::ClobberMemory();
  }
  set_bytes(state, n);
}

std::vector<std::pair<std::string, fc::CompressionConfig>> methods() {
  std::vector<std::pair<std::string, fc::CompressionConfig>> out;
  auto add = [&](std::string name, auto tweak) {
    fc::CompressionConfig c;
    tweak(c);
    out.emplace_back(std::move(name), c);
  };
  add("none", [](auto& c) { c.method = fc::Method::None; });
  add("fp16", [](auto& c) { c.method = fc::Method::Fp16; });
  add("bf16", [](auto& c) { c.method = fc::Method::Bf16; });
  add("bf16_sr", [](auto& c) {
    c.method = fc::Method::Bf16;
    c.stochastic_rounding = true;
  });
  add("topk1%_exact", [](auto& c) {
    c.method = fc::Method::TopK;
    c.density = 0.01;
  });
  add("topk1%_sampled", [](auto& c) {
    c.method = fc::Method::TopK;
    c.density = 0.01;
    c.selection = fc::TopKSelection::Sampled;
  });
  add("onebit", [](auto& c) { c.method = fc::Method::OneBit; });
  add("onebit_signmeans", [](auto& c) {
    c.method = fc::Method::OneBit;
    c.scaling = fc::OneBitScaling::SignMeans;
  });
  add("ternary", [](auto& c) { c.method = fc::Method::Ternary; });
  for (int bits : {2, 4, 8}) {
    add("qsgd" + std::to_string(bits), [bits](auto& c) {
      c.method = fc::Method::Qsgd;
      c.bits = bits;
    });
  }
  return out;
}

const bool registered = [] {
  for (std::size_t n : kSizes) {
    std::string size("/");
    size.append(std::to_string(n));
    benchmark::RegisterBenchmark(std::string("memcpy").append(size).c_str(), bm_memcpy, n)
        ->Unit(benchmark::kMillisecond);
    benchmark::RegisterBenchmark(std::string("read").append(size).c_str(), bm_read, n)
        ->Unit(benchmark::kMillisecond);
    benchmark::RegisterBenchmark(std::string("nth_element_top1%").append(size).c_str(),
                                 bm_nth_element, n)
        ->Unit(benchmark::kMillisecond);
    for (const auto& [name, cfg] : methods()) {
      if (name == "bf16" || name == "onebit_signmeans" || name == "qsgd2" || name == "qsgd8") {
        continue;  // their feedback cost follows from their siblings'
      }
      // Under the default NonFinitePolicy::Error the fused path keeps each block's old residual
      // in `applied` until the pass is known clean (so a throw can restore it), then writes
      // `applied` once more; under Flag its single pass writes everything.
      for (const bool flag : {false, true}) {
        if (flag && name != "qsgd4" && name != "onebit" && name != "fp16" &&
            name != "topk1%_sampled") {
          continue;
        }
        fc::CompressionConfig c = cfg;
        if (flag) c.non_finite = fc::NonFinitePolicy::Flag;
        for (const bool fused : {true, false}) {
          std::string full(fused ? "feedback_fused/" : "feedback_unfused/");
          full.append(name).append(flag ? "_flag" : "").append(size);
          benchmark::RegisterBenchmark(full.c_str(), bm_feedback, c, fused, n, false)
              ->Unit(benchmark::kMillisecond);
        }
        if (!flag && name != "topk1%_exact") {
          std::string full("feedback_fused_in_place/");
          full.append(name).append(size);
          benchmark::RegisterBenchmark(full.c_str(), bm_feedback, c, true, n, true)
              ->Unit(benchmark::kMillisecond);
        }
        if (!flag && name.rfind("topk", 0) != 0) {
          for (const bool with_applied : {true, false}) {
            std::string full(with_applied ? "feedback_checked/" : "feedback_payload_only/");
            full.append(name).append(size);
            benchmark::RegisterBenchmark(full.c_str(), bm_feedback_checked, c, n, with_applied)
                ->Unit(benchmark::kMillisecond);
          }
        }
      }
    }
    for (const auto& [name, cfg] : methods()) {
      if (name != "onebit" && name != "fp16" && name != "qsgd4") continue;
      for (const bool fused : {true, false}) {
        std::string full(fused ? "sum4_fused/" : "sum4_decode_add/");
        full.append(name).append(size);
        benchmark::RegisterBenchmark(full.c_str(), bm_sum, cfg, n, fused)
            ->Unit(benchmark::kMillisecond);
      }
    }
    for (const auto& [name, cfg] : methods()) {
      for (auto [op, label] : {std::pair{Op::Encode, "encode/"}, std::pair{Op::Decode, "decode/"},
                               std::pair{Op::DecodeAdd, "decode_add/"}}) {
        std::string full(label);
        full.append(name).append(size);
        benchmark::RegisterBenchmark(full.c_str(), bm_method, cfg, op, n)
            ->Unit(benchmark::kMillisecond);
      }
    }
  }
  return true;
}();

}  // namespace

int main(int argc, char** argv) {
  // FRUGAL_BENCH_SIMD=scalar|avx2|avx512 lowers the kernels' instruction set (default: best).
  if (const char* want = std::getenv("FRUGAL_BENCH_SIMD")) {
    const auto level = frugal::parse_enum<fc::SimdLevel>(want);
    if (!level) {
      std::cerr << "frugal-kernel-bench: FRUGAL_BENCH_SIMD: '" << want << "' is not one of "
                << frugal::enum_choices<fc::SimdLevel>() << '\n';
      return 2;
    }
    fc::set_simd_level(*level);
  }
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::AddCustomContext("frugal_simd", std::string(frugal::enum_name(fc::simd_level())));
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
