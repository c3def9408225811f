#pragma once

// Checkpoints of a data-parallel run. Every rank writes its own file per epoch,
// DIR/ckpt-e<E>.rank<R>.pt (model and momentum are the same on every rank, but the
// error-feedback residuals are not), each written atomically (atomic_file.hpp). Once every rank
// has written, rank 0 atomically replaces DIR/latest with "<E>": that is the commit point. A
// crash or a dead peer before it leaves `latest` at the previous epoch, whose files are only
// removed after the commit, so a half-written checkpoint never replaces a good one.

#include <torch/torch.h>

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "sgd.hpp"

namespace frugal::train {

struct CheckpointMeta {
  std::int64_t epochs_done = 0;  // the next epoch to run
  std::int64_t step = 0;         // global optimizer steps so far
  std::uint64_t seed = 0;        // the run's seed (sampler order and augmentation derive from it)
  std::int64_t world_size = 0;
  std::string model;
  // The momentum buffers hold each rank's own velocity (--momentum-correction), not the
  // global one: resuming must keep the same choice.
  bool local_momentum = false;
  // --sync bmuf: the error-feedback image is frugal::Bmuf's filter state (W, Δ, counters and the
  // delta's residuals), and the momentum buffers are each rank's own. Files without it: false.
  bool bmuf = false;
  // --compress powersgd: the error-feedback image is a PowerSgdState's, not the buckets'. Files
  // without it: false.
  bool powersgd = false;
};

std::filesystem::path checkpoint_path(const std::filesystem::path& dir, std::int64_t epochs_done,
                                      int rank);

// Writes this rank's checkpoint file atomically: meta, parameters and buffers of `model`, the
// momentum buffers of `sgd`, the error-feedback image `ef` (may be empty) and torch's CPU
// generator state. Throws frugal::Error(InvalidArgument) naming the file on I/O errors.
void save_checkpoint(const std::filesystem::path& path, const CheckpointMeta& meta,
                     torch::nn::Module& model, const Sgd& sgd, const std::vector<std::byte>& ef);

// Marks epoch `epochs_done` as the latest complete checkpoint (rank 0, after every rank saved).
void commit_checkpoint(const std::filesystem::path& dir, std::int64_t epochs_done);

// The committed epoch in DIR/latest, or nullopt if there is none. Throws InvalidArgument if the
// file exists but is malformed.
std::optional<std::int64_t> latest_checkpoint(const std::filesystem::path& dir);

// Loads a file written by save_checkpoint into `model` and `sgd` and returns its meta and the
// error-feedback image. Throws frugal::Error(InvalidArgument) naming the file when it is
// missing, truncated or corrupt, or when it holds another model (parameter names or shapes
// differ) or was written by a run with another world size (unless `any_world_size`: an elastic
// resume), seed, kind of momentum (--momentum-correction), --sync or gradient exchange
// (--compress powersgd or not) than `expected`. Files without the momentum kind predate it:
// global.
CheckpointMeta load_checkpoint(const std::filesystem::path& path, const CheckpointMeta& expected,
                               torch::nn::Module& model, Sgd& sgd, std::vector<std::byte>& ef,
                               bool any_world_size = false);

// The world size a checkpoint file was written with (only that is read and checked).
std::int64_t checkpoint_world_size(const std::filesystem::path& path);

// The meta and error-feedback image of a file, checked as load_checkpoint does but without
// touching a model (an elastic resume reads every old rank's image).
CheckpointMeta read_checkpoint_error_feedback(const std::filesystem::path& path,
                                              const CheckpointMeta& expected,
                                              std::vector<std::byte>& ef, bool any_world_size);

// The momentum buffers of a file, checked as read_checkpoint_error_feedback checks it, one per
// parameter of `sgd` (undefined where the file has none: a parameter not yet updated). A buffer
// whose shape is not its parameter's is InvalidArgument naming the file. An elastic resume with
// momentum correction reads every old rank's velocities.
std::vector<torch::Tensor> read_checkpoint_momentum(const std::filesystem::path& path,
                                                    const CheckpointMeta& expected, const Sgd& sgd,
                                                    bool any_world_size);

// Removes this rank's checkpoint files other than the one of `keep_epoch`, and the temporary
// files a killed run of this rank left behind (rank 0: also those of `latest`); errors are
// ignored (best effort). Call it after a commit: it assumes no other process writes to `dir`.
void remove_old_checkpoints(const std::filesystem::path& dir, std::int64_t keep_epoch, int rank);

}  // namespace frugal::train
