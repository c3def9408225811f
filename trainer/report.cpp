#include "report.hpp"

#include <cmath>
#include <cstdio>
#include <sstream>

#include "frugal/error.hpp"

namespace frugal::train {

namespace {

// JSON has no NaN or Infinity: such values are written as null.
void number(std::ostringstream& s, double value) {
  if (!std::isfinite(value)) {
    s << "null";
    return;
  }
  char buffer[32];
  std::snprintf(buffer, sizeof buffer, "%.9g", value);
  s << buffer;
}

}  // namespace

std::string to_json(const LogRecord& r) {
  std::ostringstream s;
  s << "{\"kind\":\"" << r.kind << "\",\"epoch\":" << r.epoch << ",\"step\":" << r.step
    << ",\"lr\":";
  number(s, r.lr);
  s << ",\"global_batch\":" << r.global_batch << ",\"train_loss\":";
  number(s, r.train_loss);
  s << ",\"train_top1\":";
  number(s, r.train_top1);
  for (const auto& [name, value] :
       {std::pair{"val_loss", r.val_loss}, std::pair{"val_top1", r.val_top1},
        std::pair{"val_top5", r.val_top5}}) {
    s << ",\"" << name << "\":";
    if (value) {
      number(s, *value);
    } else {
      s << "null";
    }
  }
  s << ",\"images_per_sec\":";
  number(s, r.images_per_sec);
  s << ",\"wire_bytes\":" << r.wire_bytes << ",\"wire_bytes_per_step\":";
  number(s, r.wire_bytes_per_step);
  s << ",\"steps\":" << r.steps << ",\"skipped_steps\":" << r.skipped_steps;
  for (const auto& [name, value] :
       {std::pair{"data_s", r.data_s}, std::pair{"compute_s", r.compute_s},
        std::pair{"comm_wait_s", r.comm_wait_s}, std::pair{"optimizer_s", r.optimizer_s},
        std::pair{"elapsed_s", r.elapsed_s}}) {
    s << ",\"" << name << "\":";
    number(s, value);
  }
  if (r.blocks) s << ",\"blocks\":" << *r.blocks;
  if (r.block) s << ",\"block\":" << *r.block;
  if (r.block_bytes) s << ",\"block_bytes\":" << *r.block_bytes;
  if (r.pushes) s << ",\"pushes\":" << *r.pushes;
  if (r.applied_updates) s << ",\"applied_updates\":" << *r.applied_updates;
  if (r.staleness_max) s << ",\"staleness_max\":" << *r.staleness_max;
  if (r.staleness_mean) {
    s << ",\"staleness_mean\":";
    number(s, *r.staleness_mean);
  }
  if (r.push_bytes) s << ",\"push_bytes\":" << *r.push_bytes;
  if (r.pull_bytes) s << ",\"pull_bytes\":" << *r.pull_bytes;
  if (r.optimizer_state_bytes) s << ",\"optimizer_state_bytes\":" << *r.optimizer_state_bytes;
  if (r.guardrail_ratio) {
    s << ",\"guardrail_ratio\":";
    number(s, *r.guardrail_ratio);
  }
  if (r.guardrail_rung) s << ",\"guardrail_rung\":" << *r.guardrail_rung;
  if (r.hierarchical_hosts) s << ",\"hierarchical_hosts\":" << *r.hierarchical_hosts;
  if (r.hierarchical_ranks_per_host) {
    s << ",\"hierarchical_ranks_per_host\":" << *r.hierarchical_ranks_per_host;
  }
  if (r.inter_host_bytes) s << ",\"inter_host_bytes\":" << *r.inter_host_bytes;
  if (r.inter_host_bytes_per_step) {
    s << ",\"inter_host_bytes_per_step\":";
    number(s, *r.inter_host_bytes_per_step);
  }
  s << "}";
  return s.str();
}

std::string to_json(const GuardrailRecord& r) {
  std::ostringstream s;
  // The settings' names are describe()'s: letters, digits, "(=.)", nothing to escape.
  s << "{\"kind\":\"guardrail\",\"epoch\":" << r.epoch << ",\"step\":" << r.step
    << ",\"bucket\":" << r.bucket << ",\"from\":\"" << r.from << "\",\"to\":\"" << r.to
    << "\",\"from_rung\":" << r.from_rung << ",\"to_rung\":" << r.to_rung << ",\"ratio\":";
  number(s, r.ratio);
  s << ",\"relative_error\":";
  number(s, r.relative_error);
  s << "}";
  return s.str();
}

std::string to_json(const AutotuneRecord& r) {
  std::ostringstream s;
  s << "{\"kind\":\"autotune\",\"epoch\":" << r.epoch << ",\"step\":" << r.step
    << ",\"bucket\":" << r.bucket << ",\"from\":\"" << r.from << "\",\"to\":\"" << r.to
    << "\",\"decision\":" << (r.decision ? "true" : "false") << ",\"costs\":[";
  for (std::size_t i = 0; i < r.costs.size(); ++i) {
    if (i > 0) s << ",";
    number(s, r.costs[i]);
  }
  s << "]}";
  return s.str();
}

std::string format_duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  const auto total = static_cast<long long>(std::llround(seconds));
  char buffer[32];
  if (total >= 3600) {
    std::snprintf(buffer, sizeof buffer, "%lld:%02lld:%02lld", total / 3600, total / 60 % 60,
                  total % 60);
  } else {
    std::snprintf(buffer, sizeof buffer, "%lld:%02lld", total / 60, total % 60);
  }
  return buffer;
}

Reporter::Reporter(bool enabled, std::ostream& out, bool progress_bar, const std::string& log_path,
                   bool append)
    : enabled_(enabled), out_(out), bar_(progress_bar) {
  if (!enabled_ || log_path.empty()) return;
  log_.open(log_path, append ? std::ios::app : std::ios::trunc);
  if (!log_) throw Error(ErrorCode::InvalidArgument, "--log: cannot open '" + log_path + "'");
}

void Reporter::clear_bar() {
  if (bar_shown_) {
    out_ << "\r\033[K";
    bar_shown_ = false;
  }
}

void Reporter::progress(std::int64_t epoch, std::int64_t epochs, std::int64_t step,
                        std::int64_t steps, double loss, double images_per_sec, double eta_s) {
  if (!enabled_ || !bar_) return;
  constexpr int kWidth = 24;
  const int filled = steps > 0 ? static_cast<int>(kWidth * step / steps) : 0;
  char buffer[256];
  std::snprintf(buffer, sizeof buffer,
                "\r\033[Kepoch %lld/%lld [%-*s] step %lld/%lld  loss %.4f  %.0f img/s  ETA %s",
                static_cast<long long>(epoch + 1), static_cast<long long>(epochs), kWidth,
                std::string(static_cast<std::size_t>(filled), '#').c_str(),
                static_cast<long long>(step), static_cast<long long>(steps), loss, images_per_sec,
                format_duration(eta_s).c_str());
  out_ << buffer << std::flush;
  bar_shown_ = true;
}

void Reporter::step(const LogRecord& r) {
  if (!enabled_) return;
  if (log_.is_open()) log_ << to_json(r) << '\n' << std::flush;
  if (bar_) return;
  char buffer[256];
  std::snprintf(buffer, sizeof buffer,
                "epoch %lld step %lld  lr %.4g  loss %.4f  top1 %.2f%%  %.0f img/s\n",
                static_cast<long long>(r.epoch + 1), static_cast<long long>(r.step), r.lr,
                r.train_loss, 100 * r.train_top1, r.images_per_sec);
  out_ << buffer << std::flush;
}

void Reporter::guardrail(const GuardrailRecord& r) {
  if (!enabled_) return;
  if (log_.is_open()) log_ << to_json(r) << '\n' << std::flush;
  char buffer[256];
  std::snprintf(buffer, sizeof buffer,
                "guardrail: step %lld bucket %llu %s -> %s (residual ratio %.3g, relative error "
                "%.3g)",
                static_cast<long long>(r.step), static_cast<unsigned long long>(r.bucket),
                r.from.c_str(), r.to.c_str(), r.ratio, r.relative_error);
  message(buffer);
}

void Reporter::autotune(const AutotuneRecord& r) {
  if (!enabled_) return;
  if (log_.is_open()) log_ << to_json(r) << '\n' << std::flush;
  if (!r.decision) return;  // a trial's steps from one candidate to the next: the log has them
  std::string line = "autotune: step " + std::to_string(r.step) + " bucket " +
                     std::to_string(r.bucket) + " keeps " + r.to + " (costs";
  char cost[32];
  for (const double c : r.costs) {
    std::snprintf(cost, sizeof cost, " %.3g", c);
    line += cost;
  }
  message(line + " s)");
}

void Reporter::epoch(const LogRecord& r, std::int64_t epochs) {
  if (!enabled_) return;
  if (log_.is_open()) log_ << to_json(r) << '\n' << std::flush;
  clear_bar();
  char buffer[512];
  std::snprintf(
      buffer, sizeof buffer,
      "epoch %lld/%lld  lr %.4g  batch %lld  train loss %.4f top1 %.2f%%  "
      "val loss %.4f top1 %.2f%% top5 %.2f%%  %.0f img/s  %.1f s "
      "(data %.1f, compute %.1f, comm wait %.1f, optimizer %.1f)  %.0f wire B/step%s\n",
      static_cast<long long>(r.epoch + 1), static_cast<long long>(epochs), r.lr,
      static_cast<long long>(r.global_batch), r.train_loss, 100 * r.train_top1,
      r.val_loss.value_or(NAN), 100 * r.val_top1.value_or(NAN), 100 * r.val_top5.value_or(NAN),
      r.images_per_sec, r.elapsed_s, r.data_s, r.compute_s, r.comm_wait_s, r.optimizer_s,
      r.wire_bytes_per_step,
      r.skipped_steps > 0
          ? ("  " + std::to_string(r.skipped_steps) + " steps skipped (non-finite)").c_str()
          : "");
  out_ << buffer << std::flush;
}

void Reporter::message(const std::string& text) {
  if (!enabled_) return;
  clear_bar();
  out_ << text << '\n' << std::flush;
}

}  // namespace frugal::train
