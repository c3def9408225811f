#pragma once

// What rank 0 tells the user: a progress bar on a terminal or plain lines otherwise, and the
// JSON-lines log (--log FILE). No torch here: the trainer hands over plain numbers.

#include <cstdint>
#include <fstream>
#include <optional>
#include <ostream>
#include <string>
#include <vector>

namespace frugal::train {

// One line of the JSON log: a window of steps (`kind` "step") or a whole epoch ("epoch").
// Losses and accuracies are over every rank's examples in the window; times and wire bytes are
// rank 0's, summed over the window. Validation fields are set on epoch records only.
struct LogRecord {
  std::string kind = "epoch";
  std::int64_t epoch = 0;  // 0-based epoch the record belongs to
  std::int64_t step = 0;   // global optimizer steps completed so far (skipped ones included)
  double lr = 0;
  std::int64_t global_batch = 0;
  double train_loss = 0;
  double train_top1 = 0;  // fraction in [0, 1]
  std::optional<double> val_loss, val_top1, val_top5;
  double images_per_sec = 0;
  std::uint64_t wire_bytes = 0;  // bytes this rank sent in the window
  double wire_bytes_per_step = 0;
  std::int64_t steps = 0;          // steps in the window
  std::int64_t skipped_steps = 0;  // steps skipped for a non-finite gradient in the window
  double data_s = 0, compute_s = 0, comm_wait_s = 0, optimizer_s = 0;
  double elapsed_s = 0;  // wall time of the window
  // --sync bmuf only (absent from the JSON otherwise): block boundaries in the window, the
  // number of the last block finished (blocks since the run's start, resumed ones included),
  // and the bytes this rank's block-delta allreduces sent in the window (part of wire_bytes).
  std::optional<std::int64_t> blocks, block;
  std::optional<std::uint64_t> block_bytes;
  // --sync async-ps only: gradients pushed, the servers' applied updates since the run's start
  // (epoch records, after the epoch's closing refresh: every push so far), the pushes' staleness
  // (steps behind the slowest worker's), and the bytes pushed and pulled. Epoch records sum or
  // take the maximum over every worker; step records are rank 0's own (no collective mid-epoch).
  std::optional<std::uint64_t> pushes, applied_updates;
  std::optional<std::int64_t> staleness_max;
  std::optional<double> staleness_mean;
  std::optional<std::uint64_t> push_bytes, pull_bytes;
  // Epoch records: the bytes of optimizer state (momentum) this rank holds, its shard's only
  // under --shard-optimizer.
  std::optional<std::uint64_t> optimizer_state_bytes;
  // --guardrail only: at the record's last step, the largest smoothed residual ratio over the
  // compressed buckets (what the bounds are compared with) and the highest rung any is on.
  std::optional<double> guardrail_ratio;
  std::optional<std::uint64_t> guardrail_rung;
  // --hierarchical only: the hosts the buckets were reduced over and the ranks on each.
  std::optional<std::int64_t> hierarchical_hosts, hierarchical_ranks_per_host;
  // ... and of wire_bytes, what this rank sent to ranks of other hosts (all of it, steps and
  // checkpoints' collectives alike, counted at the transport), in all and per step.
  std::optional<std::uint64_t> inter_host_bytes;
  std::optional<double> inter_host_bytes_per_step;
};

std::string to_json(const LogRecord& record);

// A "guardrail" record: one compressed bucket changed setting (--guardrail), identical on every
// rank. It applies from the step after `step`.
struct GuardrailRecord {
  std::int64_t epoch = 0;
  std::int64_t step = 0;  // global optimizer steps completed, the deciding one included
  std::uint64_t bucket = 0;
  std::uint64_t from_rung = 0, to_rung = 0;
  std::string from, to;       // the settings ("onebit", "fp16", "topk(density=0.04)", "dense")
  double ratio = 0;           // the smoothed ||residual|| / ||gradient|| that decided it
  double relative_error = 0;  // the smoothed relative error of the compression
};

std::string to_json(const GuardrailRecord& record);

// An "autotune" record (--compress auto): a compressed bucket moved to the next candidate of a
// trial, or a trial ended with a decision; identical on every rank. It applies from the step
// after `step`.
struct AutotuneRecord {
  std::int64_t epoch = 0;
  std::int64_t step = 0;  // global optimizer steps completed, the deciding one included
  std::uint64_t bucket = 0;
  std::string from, to;  // the candidates ("dense", "fp16", "ternary", "topk(density=0.01)")
  bool decision = false;
  std::vector<double> costs;  // at a decision: each candidate's agreed cost (s), in order
};

std::string to_json(const AutotuneRecord& record);

// Rank 0's output. Other ranks construct it disabled and nothing is printed or written.
class Reporter {
 public:
  // `log_path` empty: no JSON log. Throws frugal::Error(InvalidArgument) if it cannot be opened.
  // `append` keeps an existing log (resume).
  Reporter(bool enabled, std::ostream& out, bool progress_bar, const std::string& log_path,
           bool append);

  // The progress bar (or, without a terminal, nothing: plain lines come from step()/epoch()).
  void progress(std::int64_t epoch, std::int64_t epochs, std::int64_t step, std::int64_t steps,
                double loss, double images_per_sec, double eta_s);
  void step(const LogRecord& record);  // a "step" record: JSON, and a plain line without a bar
  void epoch(const LogRecord& record, std::int64_t epochs);  // an "epoch" record and its summary
  void message(const std::string& text);          // a line for the user (after clearing the bar)
  void guardrail(const GuardrailRecord& record);  // a "guardrail" record and a one-line message
  void autotune(const AutotuneRecord& record);    // an "autotune" record; decisions also printed

 private:
  void clear_bar();

  bool enabled_;
  std::ostream& out_;
  bool bar_;
  bool bar_shown_ = false;
  std::ofstream log_;
};

// "1:02:03", "4:05"
std::string format_duration(double seconds);

}  // namespace frugal::train
