#include "autotune.hpp"

#include <algorithm>
#include <cmath>
#include <string>

#include "fnv1a.hpp"
#include "frugal/collectives/guardrail.hpp"
#include "frugal/error.hpp"
#include "lazy_require.hpp"

namespace frugal {

namespace {

constexpr std::size_t kMaxCandidates = 16;

}  // namespace

std::vector<compression::CompressionConfig> default_autotune_candidates(
    const compression::CompressionConfig& base) {
  std::vector<compression::CompressionConfig> out;
  for (const compression::Method m :
       {compression::Method::None, compression::Method::Fp16, compression::Method::Ternary}) {
    compression::CompressionConfig c = base;
    c.method = m;
    out.push_back(c);
  }
  return out;
}

void validate(const AutotuneOptions& o) {
  if (!o.enabled) return;
  require(o.trial_steps >= 1, "autotune.trial_steps", "must be >= 1");
  require(std::isfinite(o.margin) && o.margin >= 0, "autotune.margin",
          [&] { return "must be finite and >= 0, got " + std::to_string(o.margin); });
  require(o.candidates.size() <= kMaxCandidates, "autotune.candidates", [&] {
    return "at most " + std::to_string(kMaxCandidates) + ", got " +
           std::to_string(o.candidates.size());
  });
  for (std::size_t i = 0; i < o.candidates.size(); ++i) {
    try {
      compression::make_compressor(o.candidates[i]);
    } catch (const Error& e) {
      require(false, "autotune.candidates",
              [&] { return "candidate " + std::to_string(i) + ": " + e.what(); });
    }
  }
}

namespace detail {

AutotunePhase autotune_phase(const AutotuneOptions& o, std::size_t candidates, std::uint64_t step) {
  if (step <= o.warmup) return {};
  const std::uint64_t since = step - o.warmup - 1;
  const std::uint64_t trial = static_cast<std::uint64_t>(candidates) * o.trial_steps;
  const std::uint64_t at = o.retune == 0 ? since : since % (trial + o.retune);
  if (at >= trial) return {};
  return {true, static_cast<std::size_t>(at / o.trial_steps), at + 1 == trial};
}

std::size_t autotune_choose(std::span<const std::vector<double>> samples, double margin,
                            std::vector<double>& medians) {
  medians.assign(samples.size(), 0.0);
  std::size_t best = 0;
  bool found = false;
  for (std::size_t c = 0; c < samples.size(); ++c) {
    if (samples[c].empty()) continue;
    std::vector<double> sorted = samples[c];
    std::sort(sorted.begin(), sorted.end());
    const std::size_t n = sorted.size();
    medians[c] = n % 2 == 1 ? sorted[n / 2] : 0.5 * (sorted[n / 2 - 1] + sorted[n / 2]);
    if (!found || medians[c] < medians[best]) best = c;
    found = true;
  }
  for (std::size_t c = 0; c < best; ++c) {
    if (!samples[c].empty() && medians[c] <= medians[best] * (1.0 + margin)) return c;
  }
  return best;
}

std::uint64_t autotune_digest(const AutotuneOptions& o,
                              std::span<const compression::CompressionConfig> candidates,
                              std::uint64_t steps, std::span<const std::size_t> current) {
  Fnv1a h;
  const auto mix = [&](const void* data, std::size_t size) { h.add(data, size); };
  const auto mix64 = [&](std::uint64_t v) { h.add64(v); };
  mix64(o.warmup);
  mix64(o.trial_steps);
  mix64(o.retune);
  mix(&o.margin, sizeof o.margin);
  mix64(steps);
  for (const compression::CompressionConfig& c : candidates) {
    const std::string name = describe(c);
    mix(name.data(), name.size());
    mix64(static_cast<std::uint64_t>(c.non_finite));
    mix64(c.bucket);
    mix64(static_cast<std::uint64_t>(c.scaling));
    mix64(static_cast<std::uint64_t>(c.selection));
    mix64(static_cast<std::uint64_t>(c.topk_scope));
    mix64(static_cast<std::uint64_t>(c.norm));
    mix64(c.gtopk ? 1 : 0);
    mix(&c.clip_sigma, sizeof c.clip_sigma);
  }
  for (const std::size_t c : current) mix64(c);
  return h.value();
}

void autotune_save(ImageWriter& w, const AutotuneBucket& b) {
  w.put<std::uint64_t>(b.current);
  w.put<std::uint64_t>(b.samples.size());
  for (const std::vector<double>& s : b.samples) {
    w.put<std::uint64_t>(s.size());
    for (const double v : s) w.put(v);
  }
}

AutotuneBucket autotune_load(ImageReader& r) {
  AutotuneBucket b;
  b.current = static_cast<std::size_t>(r.get<std::uint64_t>());
  const auto candidates = r.get<std::uint64_t>();
  if (candidates > kMaxCandidates) r.malformed("more autotune candidates than allowed");
  b.samples.resize(static_cast<std::size_t>(candidates));
  for (std::vector<double>& s : b.samples) {
    const auto n = r.get<std::uint64_t>();
    if (n > r.rest().size() / sizeof(double)) r.malformed("truncated");
    for (std::uint64_t i = 0; i < n; ++i) {
      const double v = r.get<double>();
      if (!std::isfinite(v) || v < 0) r.malformed("an autotune cost is negative, NaN or Inf");
      s.push_back(v);
    }
  }
  return b;
}

}  // namespace detail

}  // namespace frugal
