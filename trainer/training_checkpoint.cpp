// The run's side of checkpoints: where they live, resuming from the latest, and the per-epoch
// save whose commit waits for every rank (checkpoint.hpp has the files themselves).
#include <cstdio>
#include <exception>
#include <filesystem>
#include <span>
#include <string>
#include <system_error>

#include "fault_injection.hpp"
#include "frugal/collectives/collectives.hpp"
#include "frugal/error.hpp"
#include "training_run.hpp"

namespace frugal::train {

std::optional<std::int64_t> TrainingRun::prepare_checkpoint_dir(const TrainOptions& options) {
  if (options.checkpoint_dir.empty()) {
    require(!options.resume, "--resume", "needs --checkpoint-dir");
    return std::nullopt;
  }
  const std::filesystem::path dir = options.checkpoint_dir;
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) {
    throw Error(ErrorCode::InvalidArgument,
                "--checkpoint-dir: cannot create '" + dir.string() + "': " + ec.message());
  }
  check_fault_injection();
  if (!options.resume) return std::nullopt;
  return latest_checkpoint(dir);
}

CheckpointMeta TrainingRun::checkpoint_meta(std::int64_t epochs_done) const {
  CheckpointMeta meta{epochs_done,  global_step_,   options_.seed,
                      ranks_,       options_.model, options_.sgd.momentum_correction,
                      options_.bmuf};
  meta.powersgd = options_.sync.powersgd;
  return meta;
}

void TrainingRun::report_carried_update(const std::string& when) {
  if (!options_.print_carried_update || !sync_) return;
  // [0]: the residuals' update; [1]: the velocities (momentum correction), both summed over
  // ranks and elements: the next step's allreduce sums each rank's.
  double totals[2] = {sync_->carried_update(), 0};
  if (options_.sgd.momentum_correction) {
    for (const torch::Tensor& v : sgd_.momentum()) {
      if (v.defined()) totals[1] += v.sum(torch::kFloat64).item<double>();
    }
  }
  if (ranks_ > 1) allreduce(comm_, std::span<double>(totals, 2));
  char text[64];
  std::snprintf(text, sizeof text, "%.9g", totals[0]);
  reporter_.message("carried update " + when + ": " + text);
  if (options_.sgd.momentum_correction) {
    std::snprintf(text, sizeof text, "%.9g", totals[1]);
    reporter_.message("velocity sum " + when + ": " + text);
  }
}

// Momentum correction keeps one velocity per rank and each step applies their sum over ranks
// (each rank's gradient is already divided by the ranks). The rule of elastic.hpp for worker
// residuals keeps that sum: new rank j takes the sum of the old ranks i with i * P' / P == j
// (growing: one old rank's each, the rest zero).
void TrainingRun::redistribute_velocities(std::int64_t old_ranks) {
  const std::filesystem::path dir = options_.checkpoint_dir;
  std::vector<torch::Tensor>& velocities = sgd_.momentum();
  for (torch::Tensor& v : velocities) v = torch::Tensor();
  torch::NoGradGuard no_grad;
  for (std::int64_t i = 0; i < old_ranks; ++i) {
    if (i * ranks_ / old_ranks != rank_) continue;
    const std::vector<torch::Tensor> old = read_checkpoint_momentum(
        checkpoint_path(dir, *latest_, static_cast<int>(i)), checkpoint_meta(0), sgd_, true);
    for (std::size_t p = 0; p < velocities.size(); ++p) {
      if (!old[p].defined()) continue;
      if (velocities[p].defined()) {
        velocities[p].add_(old[p]);
      } else {
        velocities[p] = old[p];
      }
    }
  }
}

std::int64_t TrainingRun::old_world_size() {
  std::int64_t old_ranks = -1;
  std::exception_ptr error;
  if (rank_ == 0) {
    try {
      old_ranks = checkpoint_world_size(checkpoint_path(options_.checkpoint_dir, *latest_, 0));
    } catch (...) {
      error = std::current_exception();
    }
  }
  if (ranks_ > 1) broadcast(comm_, std::as_writable_bytes(std::span(&old_ranks, 1)), 0);
  if (error) std::rethrow_exception(error);
  require(old_ranks > 0, "--resume", "rank 0 could not read its checkpoint file");
  return old_ranks;
}

std::int64_t TrainingRun::resume_elastic(std::int64_t old_ranks) {
  const std::filesystem::path dir = options_.checkpoint_dir;
  const std::string from_to =
      "from " + std::to_string(old_ranks) + " to " + std::to_string(ranks_) + " ranks";
  // Each of these is state one rank keeps for itself that no rule re-cuts yet.
  require(!bmuf_, "--resume",
          "--sync bmuf cannot resume " + from_to + " (its filter state is per rank)");
  require(!options_.sync.powersgd, "--resume",
          "--compress powersgd cannot resume " + from_to +
              " (PowerSGD's state has no redistribution rule yet)");
  // The model, the (global) momentum and the RNG are the same in every old rank's file: rank 0's.
  std::vector<std::byte> unused;
  const CheckpointMeta meta = load_checkpoint(checkpoint_path(dir, *latest_, 0), checkpoint_meta(0),
                                              *model_, sgd_, unused, true);
  std::vector<std::vector<std::byte>> images(static_cast<std::size_t>(old_ranks));
  for (std::int64_t r = 0; r < old_ranks; ++r) {
    const std::filesystem::path path = checkpoint_path(dir, *latest_, static_cast<int>(r));
    const CheckpointMeta other = read_checkpoint_error_feedback(
        path, checkpoint_meta(0), images[static_cast<std::size_t>(r)], true);
    require(other.world_size == old_ranks && other.epochs_done == meta.epochs_done &&
                other.step == meta.step,
            "checkpoint",
            std::string(1, '\'')
                .append(path.string())
                .append("' is not from the same run and epoch as rank 0's"));
  }
  const std::int64_t last = meta.epochs_done - 1;
  if (options_.density_warmup_epochs > 0 && last >= 0 && plan_epoch(last).compressed) {
    sync_->set_density(density_at(last));
  }
  sync_->restore_redistributed(images);
  if (options_.sgd.momentum_correction) redistribute_velocities(old_ranks);
  start_epoch_ = meta.epochs_done;
  global_step_ = meta.step;
  reporter_.message("error-feedback state redistributed " + from_to + "; resumed from " +
                    (dir / ("ckpt-e" + std::to_string(*latest_) + ".rank*.pt")).string() +
                    " (epoch " + std::to_string(start_epoch_) + ", step " +
                    std::to_string(global_step_) + ")");
  return meta.epochs_done;
}

void TrainingRun::resume() {
  const std::filesystem::path dir = options_.checkpoint_dir;
  if (!latest_) {
    if (options_.resume) {
      reporter_.message("--resume: no checkpoint in " + dir.string() + ", starting afresh");
    }
    return;
  }
  // Every checkpoint has a rank-0 file; its world size says whether this is an elastic resume.
  // Rank 0 reads it and tells the others (a rank beyond the old world has no file of its own).
  if (const std::int64_t old_ranks = old_world_size(); old_ranks != ranks_) {
    // Every rank must learn whether another failed, or it would wait in the next collective.
    std::exception_ptr error;
    try {
      resume_elastic(old_ranks);
    } catch (...) {
      error = std::current_exception();
    }
    double failed = error ? 1 : 0;
    allreduce(comm_, std::span<double>(&failed, 1));
    if (error) std::rethrow_exception(error);
    require(failed == 0, "--resume", "another rank could not read the checkpoint");
    report_carried_update("after resume");
    return;
  }
  const std::filesystem::path path = checkpoint_path(dir, *latest_, rank_);
  std::vector<std::byte> error_feedback;
  const CheckpointMeta meta =
      load_checkpoint(path, checkpoint_meta(0), *model_, sgd_, error_feedback);
  // The saved residuals belong to the buckets of the last epoch trained, at its density (the
  // next epoch's change then carries them over as in an uninterrupted run).
  const std::int64_t last = meta.epochs_done - 1;
  if (options_.density_warmup_epochs > 0 && last >= 0 && plan_epoch(last).compressed) {
    sync_->set_density(density_at(last));
  }
  if (bmuf_) {
    // W, Δ, the block counter and the delta's residuals; the parameters (the block start, since
    // every epoch ends a block) and this rank's momentum buffers came with the file.
    bmuf_->restore_state(error_feedback);
  } else {
    sync_->restore_state(error_feedback);
  }
  start_epoch_ = meta.epochs_done;
  global_step_ = meta.step;
  reporter_.message("resumed from " + path.string() + " (epoch " + std::to_string(start_epoch_) +
                    ", step " + std::to_string(global_step_) + ")");
  report_carried_update("after resume");
}

void TrainingRun::save_checkpoint(std::int64_t epochs_done) {
  const std::filesystem::path dir = options_.checkpoint_dir;
  train::save_checkpoint(checkpoint_path(dir, epochs_done, rank_), checkpoint_meta(epochs_done),
                         *model_, sgd_, bmuf_ ? bmuf_->save_state() : sync_->save_state());
  // Commit only once every rank's file is durable; remove older files only after it.
  barrier(comm_);
  inject_fault_at("checkpoint-commit");
  if (rank_ == 0) commit_checkpoint(dir, epochs_done);
  barrier(comm_);
  remove_old_checkpoints(dir, epochs_done, rank_);
  report_carried_update("at checkpoint " + std::to_string(epochs_done));
}

}  // namespace frugal::train
