// PowerSGD's matrix kernels on one core next to a memcpy of the same matrix M, so that the
// ratios come from one run: P = M Q, Q = M^T P and the reconstruction with error feedback
// (which reads M and the residual and writes both). With r of 1 to 4 every kernel streams M
// once and should stay within ~2x of memcpy (docs/powersgd.md).
//
//   frugal-powersgd-bench --benchmark_filter=512x4608
//
// Bytes processed: the float32 bytes of M, for every kernel and for memcpy.

#include <benchmark/benchmark.h>

#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "powersgd_kernels.hpp"

namespace kernels = frugal::detail::powersgd;

namespace {

struct Shape {
  std::size_t rows, cols;
};

// ResNet-50's largest convolution (512 x 512 x 3 x 3), its fully connected layer, and a
// ResNet-20 convolution (64 x 64 x 3 x 3, cache-resident).
constexpr Shape kShapes[] = {{512, 4608}, {1000, 2048}, {64, 576}};

std::vector<float> random_floats(std::size_t n, unsigned seed) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> d(0.0f, 1e-3f);
  std::vector<float> v(n);
  for (float& x : v) x = d(gen);
  return v;
}

void set_bytes(benchmark::State& state, Shape s) {
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations()) *
                          static_cast<std::int64_t>(s.rows * s.cols * sizeof(float)));
}

void bm_memcpy(benchmark::State& state, Shape s) {
  const auto m = random_floats(s.rows * s.cols, 1);
  std::vector<float> out(m.size(), 1.0f);
  for (auto _ : state) {
    std::memcpy(out.data(), m.data(), m.size() * sizeof(float));
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  set_bytes(state, s);
}

void bm_mq(benchmark::State& state, Shape s, std::size_t r) {
  const auto m = random_floats(s.rows * s.cols, 1);
  const auto q = random_floats(r * s.cols, 2);
  std::vector<float> p(r * s.rows);
  for (auto _ : state) {
    kernels::multiply_mq(m, s.rows, s.cols, q, r, p);
    benchmark::DoNotOptimize(p.data());
    benchmark::ClobberMemory();
  }
  set_bytes(state, s);
}

void bm_mtp(benchmark::State& state, Shape s, std::size_t r) {
  const auto m = random_floats(s.rows * s.cols, 1);
  const auto p = random_floats(r * s.rows, 2);
  std::vector<float> q(r * s.cols);
  for (auto _ : state) {
    kernels::multiply_mtp(m, s.rows, s.cols, p, r, q);
    benchmark::DoNotOptimize(q.data());
    benchmark::ClobberMemory();
  }
  set_bytes(state, s);
}

// compensate + reconstruct: what a step does to M and the residual besides the two products.
void bm_feedback(benchmark::State& state, Shape s, std::size_t r) {
  auto m = random_floats(s.rows * s.cols, 1);
  auto residual = random_floats(s.rows * s.cols, 3);
  const auto p = random_floats(r * s.rows, 2);
  const auto q = random_floats(r * s.cols, 4);
  for (auto _ : state) {
    kernels::compensate(m, residual);
    kernels::reconstruct(m, s.rows, s.cols, p, q, r, residual, 1.0f);
    benchmark::DoNotOptimize(m.data());
    benchmark::ClobberMemory();
  }
  set_bytes(state, s);
}

std::string name(const char* what, Shape s, std::size_t r) {
  return std::string(what) + "/" + std::to_string(s.rows) + "x" + std::to_string(s.cols) +
         (r > 0 ? "/r" + std::to_string(r) : "");
}

const bool registered = [] {
  for (const Shape s : kShapes) {
    benchmark::RegisterBenchmark(name("memcpy", s, 0).c_str(), bm_memcpy, s);
    for (const std::size_t r : {1, 2, 4}) {
      benchmark::RegisterBenchmark(name("mq", s, r).c_str(), bm_mq, s, r);
      benchmark::RegisterBenchmark(name("mtp", s, r).c_str(), bm_mtp, s, r);
      benchmark::RegisterBenchmark(name("feedback", s, r).c_str(), bm_feedback, s, r);
    }
  }
  return true;
}();

}  // namespace

BENCHMARK_MAIN();
