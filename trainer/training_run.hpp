#pragma once

// One call of run_training: the state a run owns, and the parts it is made of, each in a file
// named for it: training_run.cpp (setup and the epoch loop), train_epoch.cpp, train_step.cpp,
// validate.cpp, training_checkpoint.cpp.

#include <torch/torch.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <ostream>
#include <vector>

#include "checkpoint.hpp"
#include "data/dataset.hpp"
#include "frugal/collectives/bmuf.hpp"
#include "frugal/collectives/parameter_server.hpp"
#include "frugal/communicator.hpp"
#include "gradient_sync.hpp"
#include "metrics.hpp"
#include "report.hpp"
#include "sgd.hpp"
#include "sharded_optimizer.hpp"
#include "trainer.hpp"

namespace frugal::train {

class CountingTransport;

using Clock = std::chrono::steady_clock;

inline double since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// Seconds spent in each phase of a step, or summed over steps.
struct Timers {
  double data = 0, compute = 0, comm = 0, optimizer = 0;
  Timers& operator+=(const Timers& other);
};

// What an epoch runs, fixed before its first step.
struct EpochPlan {
  std::int64_t epoch = 0;
  std::int64_t global_batch = 0;
  std::int64_t batch = 0;           // per rank
  std::vector<std::int64_t> micro;  // the rank's batch, in micro-batches
  std::int64_t steps = 0;
  bool compressed = false;
};

// What a step hands its epoch.
struct StepOutcome {
  Sums sums;       // this rank's examples
  Timers seconds;  // compute, comm and optimizer; the epoch times the data
  bool skipped = false;
  std::int64_t blocks = 0;        // --sync bmuf: 1 when the step ended a block
  std::uint64_t block_bytes = 0;  // --sync bmuf: what that block's delta allreduce sent
  // --sync async-ps: the push's staleness and the bytes the step pushed and pulled.
  bool pushed = false;
  std::int64_t staleness = 0;
  std::uint64_t push_bytes = 0, pull_bytes = 0;
};

// Steps since a starting point: the epoch's, and the window of a "step" log record.
struct Tally {
  Tally(std::uint64_t wire_bytes, std::uint64_t inter_host_bytes)
      : wire_at_start(wire_bytes), inter_host_at_start(inter_host_bytes) {}
  void add(const StepOutcome& step);

  Sums sums;
  Timers seconds;
  std::int64_t steps = 0, skipped = 0;
  std::int64_t blocks = 0;
  std::uint64_t block_bytes = 0;
  std::uint64_t pushes = 0;  // --sync async-ps
  double staleness_sum = 0;
  std::int64_t staleness_max = 0;
  std::uint64_t push_bytes = 0, pull_bytes = 0;
  std::uint64_t wire_at_start;        // the transport's bytes sent when the tally started
  std::uint64_t inter_host_at_start;  // of which to other hosts (--hierarchical)
  Clock::time_point start = Clock::now();
};

// Throws InvalidArgument naming the first option out of range (or not applying to the
// --sync mode); returns `options`. Every rank runs it before anything else, servers included.
const TrainOptions& checked_options(const TrainOptions& options, const Dataset& train,
                                    const Dataset& val);

// Every parameter of the model `options` describe, in the optimizer's order.
std::size_t parameter_count(const TrainOptions& options, const Dataset& train);

// frugal::ParameterServerOptions of --sync async-ps.
ParameterServerOptions ps_options(const TrainOptions& options);

// async_ps_server.cpp: a server rank of --sync async-ps serves until every worker has finished,
// then prints its account (updates applied, per worker, staleness, update lag, bytes) to `out`.
RunResult serve_parameters(Communicator& comm, const Dataset& train, const TrainOptions& options,
                           std::ostream& out);

class TrainingRun {
 public:
  // Checks the options, builds the model (rank 0's weights on every rank), the optimizer and the
  // gradient sync, and loads the latest checkpoint when resuming. With --sync async-ps `comm`
  // holds the workers only and `ps_comm` every rank, servers included.
  TrainingRun(Communicator& comm, Communicator* ps_comm, const CountingTransport* counter,
              const Dataset& train, const Dataset& val, const TrainOptions& options,
              std::ostream& out);
  TrainingRun(const TrainingRun&) = delete;
  TrainingRun& operator=(const TrainingRun&) = delete;

  // Trains the epochs not done yet, validating and checkpointing after each.
  RunResult run() &&;

 private:
  // train_epoch.cpp
  EpochPlan plan_epoch(std::int64_t epoch) const;
  Tally train_epoch(const EpochPlan& plan);
  // Top-k's density in a compressed `epoch`: --density-warmup-epochs ramps it from the first
  // compressed epoch on (warmup_density).
  double density_at(std::int64_t epoch) const;
  // The LR of the step before step `step` of `plan` (the previous epoch's last for step 0).
  double previous_lr(const EpochPlan& plan, std::int64_t step) const;
  // Before a compressed step at `lr`: rescales the error-feedback residuals, collected at the
  // previous step's LR, so that they are applied at the rate they were dropped at.
  void follow_lr(const EpochPlan& plan, std::int64_t step, double lr);
  void log_window(const EpochPlan& plan, double lr, Tally& window);
  // --guardrail: the guardrail_ratio and guardrail_rung fields of a record.
  void guardrail_fields(LogRecord& r) const;
  // --hierarchical: the hierarchical_hosts, hierarchical_ranks_per_host and inter-host byte
  // fields of a record over `tally`'s window.
  void hierarchy_fields(LogRecord& r, const Tally& tally) const;
  // A tally starting now.
  Tally start_tally() const { return Tally(wire_bytes(), inter_host_bytes()); }
  EpochSummary end_epoch(const EpochPlan& plan, const Tally& epoch);
  // train_step.cpp
  StepOutcome train_step(const EpochPlan& plan, const Batch& batch, double lr);
  // Forward and backward over the rank's micro-batches into `outcome.sums`; each micro-batch's
  // loss is weighted by its share of the rank's batch and divided by `divisor` (the ranks when
  // the gradients are summed over ranks, 1 for a rank's own mean gradient).
  void forward_backward(const EpochPlan& plan, const Batch& batch, int divisor,
                        StepOutcome& outcome);
  // bmuf_step.cpp (--sync bmuf): a local step without communication, ending a block every
  // --block-steps steps; the epoch's last, possibly shorter, block.
  StepOutcome bmuf_step(const EpochPlan& plan, const Batch& batch, double lr);
  void end_epoch_block(Tally& tally);
  void after_block(StepOutcome& outcome, std::uint64_t bytes_before);
  // async_ps_step.cpp (--sync async-ps): forward and backward, the push of the rank's share of
  // the gradient and the pull of the parameters; the epoch's end, where every worker pulls the
  // same model; the epoch record's fields, gathered over the workers.
  StepOutcome async_ps_step(const EpochPlan& plan, const Batch& batch, double lr);
  void end_epoch_refresh();
  void ps_epoch_fields(const Tally& epoch, EpochSummary& summary, LogRecord& record);
  void ps_to_model();
  // --straggler: sleeps (factor − 1) × `compute_s` on the straggling rank.
  void straggle(double compute_s) const;
  // validate.cpp
  Sums validate(std::int64_t batch);
  // training_checkpoint.cpp
  static std::optional<std::int64_t> prepare_checkpoint_dir(const TrainOptions& options);
  CheckpointMeta checkpoint_meta(std::int64_t epochs_done) const;
  void resume();
  // --resume of a checkpoint written by `old_ranks` != ranks_: the model from rank 0's file, the
  // error-feedback images of every old rank re-cut for ranks_ (GradientSync::
  // restore_redistributed). Returns the epochs done.
  std::int64_t resume_elastic(std::int64_t old_ranks);
  // Momentum correction: this rank's velocities from the old ranks' files (the rule is at the
  // definition).
  void redistribute_velocities(std::int64_t old_ranks);
  // The world size of the latest checkpoint, read by rank 0 and broadcast (InvalidArgument on
  // every rank if rank 0 cannot read its file).
  std::int64_t old_world_size();
  // --print-carried-update: rank 0 prints the total over ranks of GradientSync::carried_update.
  void report_carried_update(const std::string& when);
  void save_checkpoint(std::int64_t epochs_done);

  std::uint64_t wire_bytes() const noexcept;        // this rank's bytes sent so far (0 uncounted)
  std::uint64_t inter_host_bytes() const noexcept;  // of which to other hosts (--hierarchical)
  // Every rank takes rank 0's values of `tensors` (parameters, BN statistics).
  void broadcast_from_rank0(const std::vector<torch::Tensor>& tensors);

  Communicator& comm_;
  const CountingTransport* counter_;
  const Dataset& train_;
  const Dataset& val_;
  const TrainOptions& options_;
  const int rank_;
  const int ranks_;
  std::optional<std::int64_t> latest_;  // the committed checkpoint to resume from
  Reporter reporter_;
  std::shared_ptr<torch::nn::Module> model_;
  std::vector<torch::Tensor> buffers_;  // the model's BN statistics
  Sgd sgd_;
  // Exactly one of the two: the per-step gradient allreduce (--sync sync), or the filter over
  // the parameters (--sync bmuf), which leaves the parameters without hooks.
  std::unique_ptr<GradientSync> sync_;
  std::unique_ptr<Bmuf> bmuf_;
  // --shard-optimizer: instead of sync_ and sgd_'s update (sgd_ keeps the parameters' list).
  std::unique_ptr<ShardedOptimizer> shard_;
  std::size_t optimizer_state_bytes_ = 0;  // this rank's momentum, for the log
  // --sync async-ps: the worker (over ps_comm) and the flat parameters and gradient it works on.
  std::unique_ptr<PsWorker> ps_;
  std::vector<float> ps_params_, ps_grad_;
  double ps_last_lr_ = 0;  // the LR of the previous push: its residuals are rescaled to the next
  std::int64_t start_epoch_ = 0;
  std::int64_t global_step_ = 0;  // optimizer steps so far, skipped ones included
  RunResult result_;              // epochs and step losses of this call; the model at the end
};

}  // namespace frugal::train
