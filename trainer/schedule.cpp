#include "schedule.hpp"

#include <charconv>
#include <cmath>
#include <numbers>
#include <string>

#include "frugal/error.hpp"

namespace frugal::train {

namespace {

[[noreturn]] void bad(std::string_view option, const std::string& why) {
  throw Error(ErrorCode::InvalidArgument, std::string(option) + ": " + why);
}

std::int64_t parse_int(std::string_view text, std::string_view option) {
  std::int64_t value = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc{} || end != text.data() + text.size() || text.empty()) {
    // Appended piecewise: GCC 12 warns (-Wrestrict, a known false positive) on "'" + string.
    std::string why(1, '\'');
    why.append(text).append("' is not an integer");
    bad(option, why);
  }
  return value;
}

std::vector<std::string_view> split(std::string_view text, char sep) {
  std::vector<std::string_view> parts;
  std::size_t start = 0;
  while (true) {
    const std::size_t at = text.find(sep, start);
    parts.push_back(text.substr(start, at == std::string_view::npos ? at : at - start));
    if (at == std::string_view::npos) return parts;
    start = at + 1;
  }
}

}  // namespace

void validate(const ScheduleOptions& o) {
  if (!(o.base_lr > 0) || !std::isfinite(o.base_lr)) bad("--base-lr", "must be positive");
  if (o.ref_batch < 1) bad("--ref-batch", "must be at least 1");
  if (o.global_batch < 1) bad("--batch-size", "must be at least 1");
  if (!(o.warmup_epochs >= 0)) bad("--warmup-epochs", "must be >= 0");
  if (!(o.lr_gamma > 0) || o.lr_gamma > 1) bad("--lr-gamma", "must be in (0, 1]");
  if (o.epochs < 1) bad("--epochs", "must be at least 1");
  for (std::size_t i = 0; i < o.lr_steps.size(); ++i) {
    if (o.lr_steps[i] < 1 || (i > 0 && o.lr_steps[i] <= o.lr_steps[i - 1])) {
      bad("--lr-steps", "epochs must be positive and strictly increasing");
    }
  }
  for (std::size_t i = 0; i < o.batch_stages.size(); ++i) {
    const BatchStage& s = o.batch_stages[i];
    if (s.epoch < 0 || (i > 0 && s.epoch <= o.batch_stages[i - 1].epoch)) {
      bad("--batch-schedule", "epochs must be >= 0 and strictly increasing");
    }
    if (s.global_batch < 1) bad("--batch-schedule", "batch sizes must be at least 1");
  }
}

double scaled_lr(const ScheduleOptions& o) {
  return o.base_lr * static_cast<double>(o.global_batch) / static_cast<double>(o.ref_batch);
}

double learning_rate(const ScheduleOptions& o, std::int64_t epoch, std::int64_t step,
                     std::int64_t steps_per_epoch) {
  if (steps_per_epoch < 1) bad("steps_per_epoch", "must be at least 1");
  const double target = scaled_lr(o);
  const double t =
      static_cast<double>(epoch) + static_cast<double>(step) / static_cast<double>(steps_per_epoch);
  if (t < o.warmup_epochs) return o.base_lr + (target - o.base_lr) * t / o.warmup_epochs;
  switch (o.decay) {
    case Decay::None:
      return target;
    case Decay::Step: {
      double lr = target;
      for (std::int64_t milestone : o.lr_steps) {
        if (milestone <= epoch) lr *= o.lr_gamma;
      }
      return lr;
    }
    case Decay::Cosine: {
      const double span = static_cast<double>(o.epochs) - o.warmup_epochs;
      if (span <= 0) return target;
      const double progress = std::min(1.0, (t - o.warmup_epochs) / span);
      return target * 0.5 * (1.0 + std::cos(std::numbers::pi * progress));
    }
  }
  return target;
}

std::int64_t global_batch_at(const ScheduleOptions& o, std::int64_t epoch) {
  std::int64_t batch = o.global_batch;
  for (const BatchStage& s : o.batch_stages) {
    if (s.epoch <= epoch) batch = s.global_batch;
  }
  return batch;
}

std::int64_t local_batch(std::int64_t global_batch, int ranks) {
  if (ranks < 1) bad("ranks", "must be at least 1");
  if (global_batch < ranks || global_batch % ranks != 0) {
    bad("--batch-size", "the global batch " + std::to_string(global_batch) +
                            " is not a positive multiple of the number of ranks (" +
                            std::to_string(ranks) + ")");
  }
  return global_batch / ranks;
}

std::vector<std::int64_t> micro_batches(std::int64_t local, std::int64_t max_micro) {
  if (local < 1) bad("local batch", "must be at least 1");
  if (max_micro < 0) bad("--max-local-batch", "must be >= 0");
  const std::int64_t count = max_micro == 0 ? 1 : (local + max_micro - 1) / max_micro;
  std::vector<std::int64_t> sizes(static_cast<std::size_t>(count), local / count);
  for (std::int64_t i = 0; i < local % count; ++i) ++sizes[static_cast<std::size_t>(i)];
  return sizes;
}

std::vector<std::int64_t> parse_int_list(std::string_view text, std::string_view option) {
  std::vector<std::int64_t> values;
  if (text.empty()) return values;
  for (std::string_view part : split(text, ',')) values.push_back(parse_int(part, option));
  return values;
}

std::vector<BatchStage> parse_batch_schedule(std::string_view text, std::string_view option) {
  std::vector<BatchStage> stages;
  if (text.empty()) return stages;
  for (std::string_view part : split(text, ',')) {
    const std::vector<std::string_view> pair = split(part, ':');
    if (pair.size() != 2) {
      std::string why(1, '\'');
      why.append(part).append("' is not EPOCH:BATCH");
      bad(option, why);
    }
    stages.push_back({parse_int(pair[0], option), parse_int(pair[1], option)});
    if (stages.back().global_batch < 1) bad(option, "batch sizes must be at least 1");
    if (stages.back().epoch < 0 ||
        (stages.size() > 1 && stages.back().epoch <= stages[stages.size() - 2].epoch)) {
      bad(option, "epochs must be >= 0 and strictly increasing");
    }
  }
  return stages;
}

}  // namespace frugal::train
