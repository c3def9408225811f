#include "guardrail.hpp"

#include <cmath>
#include <cstdio>
#include <string>

#include "fnv1a.hpp"
#include "frugal/error.hpp"
#include "lazy_require.hpp"

namespace frugal {

namespace {

using compression::CompressionConfig;
using compression::Method;

// Past this density a top-k payload (4-byte index and a value per element) is larger than fp16's
// and still loses more: the ladder goes to dense instead.
constexpr double kTopKMaxDensity = 0.25;
constexpr double kTopKStep = 4.0;

CompressionConfig with_method(const CompressionConfig& base, Method method) {
  CompressionConfig c;
  c.method = method;
  c.non_finite = base.non_finite;
  return c;
}

}  // namespace

std::vector<CompressionConfig> guardrail_ladder(const CompressionConfig& base, std::size_t count) {
  std::vector<CompressionConfig> ladder{base};
  switch (base.method) {
    case Method::None:
      return ladder;
    case Method::TopK:
      if (base.k != 0) {
        // k is absolute: its density depends on the bucket.
        for (double k = static_cast<double>(base.k) * kTopKStep;
             count > 0 && k / static_cast<double>(count) <= kTopKMaxDensity; k *= kTopKStep) {
          CompressionConfig c = base;
          c.k = static_cast<std::size_t>(k);
          ladder.push_back(c);
        }
      } else {
        for (double d = base.density * kTopKStep; d <= kTopKMaxDensity; d *= kTopKStep) {
          CompressionConfig c = base;
          c.density = d;
          ladder.push_back(c);
        }
      }
      break;
    case Method::Qsgd:
      for (int bits = base.bits * 2; bits <= 8; bits *= 2) {
        CompressionConfig c = base;
        c.bits = bits;
        ladder.push_back(c);
      }
      ladder.push_back(with_method(base, Method::Fp16));
      break;
    case Method::OneBit:
    case Method::Ternary:
      ladder.push_back(with_method(base, Method::Fp16));
      break;
    case Method::Fp16:
    case Method::Bf16:
      break;
  }
  ladder.push_back(with_method(base, Method::None));
  return ladder;
}

std::string describe(const CompressionConfig& config) {
  char buffer[64];
  switch (config.method) {
    case Method::None:
      return "dense";
    case Method::TopK:
      if (config.k != 0) return "topk(k=" + std::to_string(config.k) + ")";
      std::snprintf(buffer, sizeof buffer, "topk(density=%.6g)", config.density);
      return buffer;
    case Method::Qsgd:
      return "qsgd(bits=" + std::to_string(config.bits) + ")";
    default:
      return std::string(compression::to_string(config.method));
  }
}

void validate(const GuardrailOptions& o) {
  if (!o.enabled) return;
  require(std::isfinite(o.lower) && o.lower >= 0, "guardrail.lower",
          [&] { return "must be finite and >= 0, got " + std::to_string(o.lower); });
  require(std::isfinite(o.upper) && o.upper > o.lower, "guardrail.upper", [&] {
    return "must be finite and above guardrail.lower (" + std::to_string(o.lower) + "), got " +
           std::to_string(o.upper);
  });
  require(o.smoothing > 0 && o.smoothing <= 1, "guardrail.smoothing",
          [&] { return "must be in (0, 1], got " + std::to_string(o.smoothing); });
  require(o.patience >= 1, "guardrail.patience", "must be >= 1");
  require(o.cooldown >= 1, "guardrail.cooldown", "must be >= 1");
}

namespace detail {

std::optional<std::size_t> guardrail_decide(GuardrailBucket& b, const GuardrailOptions& o,
                                            const GuardrailSums& sums, std::size_t rungs) {
  ++b.since_change;
  // An all-zero input (a frozen layer) says nothing about how well compression does.
  if (!(sums.input > 0) || !std::isfinite(sums.input) || !std::isfinite(sums.residual)) {
    return std::nullopt;
  }
  const double ratio = std::sqrt(sums.residual / sums.input);
  const double error = sums.encoded > 0 ? std::sqrt(sums.residual / sums.encoded) : 0.0;
  if (b.seeded) {
    b.ratio += o.smoothing * (ratio - b.ratio);
    b.relative_error += o.smoothing * (error - b.relative_error);
  } else {
    b.ratio = ratio;
    b.relative_error = error;
    b.seeded = true;
  }
  std::optional<std::size_t> to;
  if (b.ratio > o.upper) {
    b.calm = 0;
    if (b.rung + 1 < rungs && b.since_change >= o.cooldown) to = b.rung + 1;
  } else if (b.ratio < o.lower) {
    if (++b.calm >= o.patience && b.rung > 0) to = b.rung - 1;
  } else {
    b.calm = 0;
  }
  if (to) {
    b.rung = *to;
    b.seeded = false;
    b.calm = 0;
    b.since_change = 0;
  }
  return to;
}

void guardrail_input_norms(std::span<const float> x, std::span<const float> r, double& input,
                           double& encoded) {
  double xx = 0, vv = 0;
  if (r.size() == x.size()) {
    for (std::size_t i = 0; i < x.size(); ++i) {
      const double xi = x[i];
      const double vi = xi + static_cast<double>(r[i]);
      xx += xi * xi;
      vv += vi * vi;
    }
  } else {
    for (const float v : x) xx += static_cast<double>(v) * v;
    vv = xx;
  }
  input = xx;
  encoded = vv;
}

double guardrail_square_norm(std::span<const float> x) {
  double s = 0;
  for (const float v : x) s += static_cast<double>(v) * v;
  return s;
}

void guardrail_save(ImageWriter& w, const GuardrailBucket& b) {
  w.put<std::uint64_t>(b.rung);
  w.put<std::uint8_t>(b.seeded ? 1 : 0);
  w.put(b.ratio);
  w.put(b.relative_error);
  w.put(b.calm);
  w.put(b.since_change);
  w.put<std::uint64_t>(b.carry.size());
  w.put_floats(b.carry);
}

GuardrailBucket guardrail_load(ImageReader& r) {
  GuardrailBucket b;
  b.rung = static_cast<std::size_t>(r.get<std::uint64_t>());
  b.seeded = r.get<std::uint8_t>() != 0;
  b.ratio = r.get<double>();
  b.relative_error = r.get<double>();
  if (!std::isfinite(b.ratio) || !std::isfinite(b.relative_error)) {
    r.malformed("a guardrail ratio is NaN or Inf");
  }
  b.calm = r.get<std::uint64_t>();
  b.since_change = r.get<std::uint64_t>();
  b.carry = r.get_floats(r.get<std::uint64_t>(), "a guardrail carry");
  return b;
}

std::uint64_t guardrail_digest(const GuardrailOptions& o, std::span<const std::size_t> rungs) {
  Fnv1a h;
  for (const double v : {o.lower, o.upper, o.smoothing}) h.add(&v, sizeof v);
  h.add64(o.patience).add64(o.cooldown);
  for (const std::size_t rung : rungs) h.add64(rung);
  return h.value();
}

}  // namespace detail

}  // namespace frugal
