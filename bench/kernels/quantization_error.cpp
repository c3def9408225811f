// The relative error ||decode(encode(g)) - g|| / ||g|| of the stochastic quantizers on
// gradient-like data, for choosing their defaults: QSGD's norm (L2, the paper's, or max) at 2, 4
// and 8 bits, and ternary's clipping (none, or TernGrad's c·RMS for a few c). One encode, no
// error feedback: the noise a single step adds. Data: Gaussian, Student-t with 3 degrees of
// freedom (heavy tails, as layers' gradients have), and Gaussian whose scale changes every 4096
// elements by up to 100× (tensors of different scale fused into one bucket). Mean over trials.
//
//   frugal-quantization-error [--elements N] [--trials T]
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "frugal/compression/compressor.hpp"

namespace fc = frugal::compression;

namespace {

std::vector<float> data(const std::string& kind, std::size_t n, unsigned seed) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::student_t_distribution<float> student(3.0f);
  std::uniform_real_distribution<float> exponent(-2.0f, 0.0f);
  std::vector<float> v(n);
  float scale = 1.0f;
  for (std::size_t i = 0; i < n; ++i) {
    if (kind == "student-t3") {
      v[i] = student(gen);
    } else {
      if (kind == "mixed-scale" && i % 4096 == 0) scale = std::pow(10.0f, exponent(gen));
      v[i] = scale * normal(gen);
    }
  }
  return v;
}

double relative_error(const fc::CompressionConfig& config, const std::vector<float>& g,
                      unsigned trial) {
  const auto compressor = fc::make_compressor(config);
  std::vector<std::byte> out(compressor->max_encoded_bytes(g.size()));
  fc::Rng rng(trial, 0, 0);
  const std::size_t bytes = compressor->encode(g, out, rng);
  std::vector<float> y(g.size());
  compressor->decode(std::span(out).first(bytes), y);
  double err = 0, norm = 0;
  for (std::size_t i = 0; i < g.size(); ++i) {
    err += (static_cast<double>(y[i]) - g[i]) * (static_cast<double>(y[i]) - g[i]);
    norm += static_cast<double>(g[i]) * g[i];
  }
  return std::sqrt(err / norm);
}

}  // namespace

int main(int argc, char** argv) {
  std::size_t n = 1 << 20;
  unsigned trials = 4;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (std::strcmp(argv[i], "--elements") == 0) n = std::strtoull(argv[i + 1], nullptr, 10);
    else if (std::strcmp(argv[i], "--trials") == 0) trials = std::strtoul(argv[i + 1], nullptr, 10);
    else {
      std::fprintf(stderr, "usage: %s [--elements N] [--trials T]\n", argv[0]);
      return 2;
    }
  }
  struct Row {
    std::string name;
    fc::CompressionConfig config;
  };
  std::vector<Row> rows;
  for (const int bits : {2, 4, 8}) {
    for (const fc::QsgdNorm norm : {fc::QsgdNorm::L2, fc::QsgdNorm::Max}) {
      fc::CompressionConfig c;
      c.method = fc::Method::Qsgd;
      c.bits = bits;
      c.norm = norm;
      rows.push_back({"qsgd" + std::to_string(bits) + " " +
                          (norm == fc::QsgdNorm::L2 ? "l2" : "max"),
                      c});
    }
  }
  for (const float clip : {0.0f, 1.5f, 2.0f, 2.5f, 3.0f}) {
    fc::CompressionConfig c;
    c.method = fc::Method::Ternary;
    c.clip_sigma = clip;
    char name[64];
    std::snprintf(name, sizeof name, "ternary clip %.1f", static_cast<double>(clip));
    rows.push_back({name, c});
  }
  const char* kinds[] = {"gaussian", "student-t3", "mixed-scale"};
  std::printf("# relative error ||decode(encode(g)) - g|| / ||g||, %zu elements, bucket 512, mean "
              "of %u trials\n%-20s", n, trials, "config");
  for (const char* k : kinds) std::printf(" %12s", k);
  std::printf("\n");
  for (const Row& row : rows) {
    std::printf("%-20s", row.name.c_str());
    for (const char* k : kinds) {
      double sum = 0;
      for (unsigned t = 0; t < trials; ++t) sum += relative_error(row.config, data(k, n, t), t);
      std::printf(" %12.4f", sum / trials);
    }
    std::printf("\n");
  }
  return 0;
}
