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
