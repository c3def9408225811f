#pragma once

// --shard-optimizer (ZeRO stage 1): each rank keeps the momentum of its shard of the flat
// parameters only (frugal::reduce_scatter_shard: 1/P of them), so the optimizer state per rank
// shrinks P-fold. A step reduce-scatters the ranks' shares of the gradient (compressed per
// --compress with error feedback, or dense), updates the rank's shard with momentum SGD as Sgd
// does (PyTorch's semantics: d = g + wd·p, v = μ·v + d, p -= lr·(nesterov ? d + μ·v : v)) and
// allgathers the parameters densely, so every rank holds identical weights. With a dense
// reduce-scatter the training is the unsharded dense one up to the order of the gradient sums.

#include <torch/torch.h>

#include <cstddef>
#include <cstdint>
#include <vector>

#include "frugal/collectives/reduce_scatter.hpp"
#include "frugal/communicator.hpp"
#include "gradient_sync.hpp"
#include "sgd.hpp"

namespace frugal::train {

// Bytes of optimizer state (momentum buffers) a rank holds for `params` parameters: all of them
// unsharded, its shard with `sharded`; 0 without momentum.
std::size_t optimizer_state_bytes(const SgdOptions& sgd, std::size_t params, bool sharded,
                                  int ranks, int rank);

class ShardedOptimizer {
 public:
  // `sgd` gives the parameters (in its order: the flat layout) and their weight-decay flags and
  // the SGD options; its own momentum stays unused. `sync` the compression of the gradient's
  // reduce-scatter (its error feedback and algorithm; top-k has no reduce-scatter), `seed` its
  // random streams. The parameters must already be identical on every rank.
  ShardedOptimizer(Communicator& comm, const Sgd& sgd, const SyncOptions& sync, std::uint64_t seed);

  // Clears every parameter's .grad before the step's backward.
  void begin_step();
  // After backward (each .grad this rank's share of the global gradient): reduce-scatter, the
  // shard's update at `lr`, the allgather into the model's parameters. `compressed`: whether
  // the reduce-scatter compresses (--compress-after-epochs). Returns false, with nothing changed
  // on any rank, when some rank's gradient held NaN or Inf.
  bool step(double lr, bool compressed);
  // lr_prev / lr_now for the reduce-scatter's residual (TrainingRun::follow_lr); false when
  // there is none.
  bool scale_residuals(float factor);

  ShardRange shard() const noexcept { return shard_; }
  std::size_t state_bytes() const noexcept { return momentum_.size() * sizeof(float); }
  std::span<const float> momentum() const noexcept { return momentum_; }

 private:
  Communicator& comm_;
  const Sgd& sgd_;
  std::vector<std::size_t> segments_;  // the parameters' sizes: no scale straddles two
  ShardRange shard_;
  std::vector<float> params_;      // the flat parameters, every rank's copy
  std::vector<float> grad_;        // the flat gradient share (the reduce-scatter's scratch)
  std::vector<float> shard_grad_;  // the global gradient of the shard
  std::vector<float> momentum_;    // of the shard; empty without momentum
  std::vector<float> decay_;       // of the shard: 1 where weight decay applies, else 0
  bool decay_everywhere_ = true;
  AllreduceOptions compressed_;  // of the reduce-scatter
  AllreduceOptions dense_;
  AllreduceState state_;  // the compressed reduce-scatter's residual and step
};

}  // namespace frugal::train
