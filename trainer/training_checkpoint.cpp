// The run's side of checkpoints: where they live, resuming from the latest, and the per-epoch
// save whose commit waits for every rank (checkpoint.hpp has the files themselves).
#include <filesystem>
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
  return {epochs_done,  global_step_,   options_.seed,
          ranks_,       options_.model, options_.sgd.momentum_correction,
          options_.bmuf};
}

void TrainingRun::resume() {
  const std::filesystem::path dir = options_.checkpoint_dir;
  if (!latest_) {
    if (options_.resume) {
      reporter_.message("--resume: no checkpoint in " + dir.string() + ", starting afresh");
    }
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
}

}  // namespace frugal::train
