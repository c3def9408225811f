#pragma once

#include <cstdint>
#include <ostream>
#include <random>
#include <string>
#include <vector>

#include "frugal/collectives/allreduce.hpp"
#include "test_printers.hpp"

namespace frugal::testing {

// The method configurations every compressed-allreduce test runs, each with the algorithms it
// can use.
struct MethodCase {
  std::string name;
  compression::CompressionConfig config;
  std::vector<AllreduceAlgorithm> algorithms;
};

inline std::vector<MethodCase> method_cases() {
  using compression::Method;
  auto config = [](Method m) {
    compression::CompressionConfig c;
    c.method = m;
    return c;
  };
  const std::vector<AllreduceAlgorithm> quantized = {AllreduceAlgorithm::TwoPhase,
                                                     AllreduceAlgorithm::Allgather};
  const std::vector<AllreduceAlgorithm> sparse = {AllreduceAlgorithm::SparseAllgather,
                                                  AllreduceAlgorithm::SparseRecursiveDoubling};
  std::vector<MethodCase> cases;
  cases.push_back({"fp16", config(Method::Fp16), quantized});
  cases.push_back({"bf16", config(Method::Bf16), quantized});
  auto bf16_sr = config(Method::Bf16);
  bf16_sr.stochastic_rounding = true;
  cases.push_back({"bf16_sr", bf16_sr, quantized});
  auto onebit = config(Method::OneBit);
  onebit.bucket = 64;
  cases.push_back({"onebit", onebit, quantized});
  auto sign_means = onebit;
  sign_means.scaling = compression::OneBitScaling::SignMeans;
  cases.push_back({"onebit_signmeans", sign_means, quantized});
  auto ternary = config(Method::Ternary);
  ternary.bucket = 64;
  cases.push_back({"ternary", ternary, quantized});
  for (int bits : {2, 4, 8}) {
    auto qsgd = config(Method::Qsgd);
    qsgd.bits = bits;
    qsgd.bucket = 128;
    cases.push_back({"qsgd" + std::to_string(bits), qsgd, quantized});
  }
  auto topk = config(Method::TopK);
  topk.density = 0.05;
  cases.push_back({"topk", topk, sparse});
  auto topk_half = topk;
  topk_half.values = compression::TopKValues::Fp16;
  cases.push_back({"topk_fp16", topk_half, sparse});
  auto topk_sampled = topk;
  topk_sampled.selection = compression::TopKSelection::Sampled;
  cases.push_back({"topk_sampled", topk_sampled, sparse});
  return cases;
}

// How gtest prints a method parameter: its name.
inline void PrintTo(const MethodCase& m, std::ostream* os) {
  *os << m.name;
}

// One method with one algorithm it runs. The algorithms depend on the method, so tests take the
// pair as one parameter instead of a cross product of methods and algorithms.
struct MethodAlgorithm {
  MethodCase method;
  AllreduceAlgorithm algorithm;
};

inline std::vector<MethodAlgorithm> method_algorithms() {
  std::vector<MethodAlgorithm> pairs;
  for (const MethodCase& m : method_cases()) {
    for (AllreduceAlgorithm a : m.algorithms) pairs.push_back({m, a});
  }
  return pairs;
}

// method_algorithms() and per-tensor top-k (by density, by an absolute k, with fp16 values and
// sampled selection), for the tests of segmented buffers.
inline std::vector<MethodAlgorithm> segmented_method_algorithms() {
  std::vector<MethodAlgorithm> pairs = method_algorithms();
  const std::vector<AllreduceAlgorithm> sparse = {AllreduceAlgorithm::SparseAllgather,
                                                  AllreduceAlgorithm::SparseRecursiveDoubling};
  compression::CompressionConfig per_tensor;
  per_tensor.method = compression::Method::TopK;
  per_tensor.density = 0.05;
  per_tensor.topk_scope = compression::TopKScope::PerTensor;
  auto by_k = per_tensor;
  by_k.k = 40;
  auto half_sampled = per_tensor;
  half_sampled.values = compression::TopKValues::Fp16;
  half_sampled.selection = compression::TopKSelection::Sampled;
  for (const MethodCase& m : {MethodCase{"topk_per_tensor", per_tensor, sparse},
                              MethodCase{"topk_per_tensor_k40", by_k, sparse},
                              MethodCase{"topk_per_tensor_fp16_sampled", half_sampled, sparse}}) {
    for (AllreduceAlgorithm a : m.algorithms) pairs.push_back({m, a});
  }
  return pairs;
}

// Tensor boundaries for a buffer of `count` >= 100 elements: a 1-element tensor (a bias), a few
// small ones (batch-norm vectors) between large ones, so that two-phase chunks cut segments and
// segments cut chunks whatever the number of ranks.
inline std::vector<std::size_t> segment_layout(std::size_t count) {
  const std::size_t big = (count - 58) / 3;
  return {1, 7, big, 16, 16, big, 18, count - 58 - 2 * big};
}

// "onebit_two_phase": part of a generated test name (letters, digits and '_' only), so that
// --gtest_filter='*onebit*' or '*sparse_rd*' picks a method or an algorithm.
inline std::string param_name(const MethodAlgorithm& m) {
  return m.method.name + "_" + std::string(to_string(m.algorithm));
}

// How gtest prints the parameter of a failed test.
inline void PrintTo(const MethodAlgorithm& m, std::ostream* os) {
  *os << param_name(m);
}

// Rank r's input at a given step: deterministic, so every process can rebuild all ranks' inputs.
inline std::vector<float> case_input(int rank, std::uint64_t step, std::size_t count) {
  std::mt19937 gen(static_cast<unsigned>(7919 * rank + 104729 * step + 17));
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<float> v(count);
  for (float& x : v) x = dist(gen);
  return v;
}

// Integer-valued inputs: sums of top-k selections are exact in any order.
inline std::vector<float> integer_input(int rank, std::uint64_t step, std::size_t count) {
  std::vector<float> v(count);
  for (std::size_t i = 0; i < count; ++i) {
    v[i] = static_cast<float>(static_cast<int>((i * 37 + rank * 101 + step * 7) % 201) - 100);
  }
  return v;
}

}  // namespace frugal::testing
