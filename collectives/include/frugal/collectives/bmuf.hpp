#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "frugal/collectives/allreduce.hpp"
#include "frugal/collectives/allreduce_state.hpp"
#include "frugal/communicator.hpp"

namespace frugal {

// Blockwise model-update filtering (BMUF; K. Chen and Q. Huo, "Scalable training of deep
// learning machines by incremental block training with intra-block parallel optimization and
// blockwise model-update filtering", ICASSP 2016), and local SGD / model averaging as its
// special case η = 0, ζ = 1.
//
// Each rank trains its own copy of the model on its own data for a block of H local steps
// without communicating, starting from the global model W_g(t−1). At the block boundary:
//
//   Ḡ(t)   = mean over ranks of (local model − W_g(t−1))     the block's averaged delta
//   Δ(t)   = η·Δ(t−1) + ζ·Ḡ(t)                              block momentum η, block LR ζ
//   W(t)   = W(t−1) + Δ(t)
//   W_g(t) = W(t)                  classical block momentum (CBM)
//   W_g(t) = W(t) + η·Δ(t)         Nesterov block momentum (NBM)
//
// and every rank's parameters are set to W_g(t), where the next block starts. Δ(0) = 0 and
// W(0) = W_g(0) = rank 0's parameters at construction. Ḡ(t) is the paper's W̄(t) − W_g(t−1)
// (the mean of the local models minus the model they started from): the ranks average their
// deltas, not their models, because a delta is what compresses well and what error feedback
// is defined on. With η = 0 and ζ = 1, W_g(t) = W(t) = the mean of the local models (up to
// float rounding): model averaging. The paper's guidance is ζ/(1 − η) ≈ N for N ranks, e.g.
// ζ = 1, η = 1 − 1/N.
struct BmufOptions {
  std::size_t block_steps = 1;  // H >= 1: local steps per block
  double block_momentum = 0;    // η in [0, 1)
  double block_lr = 1;          // ζ > 0, finite
  bool nesterov = false;        // NBM instead of CBM
  // How the block deltas are averaged: compression (method None: dense), error feedback,
  // algorithm, seed, non-finite action, timeout. `op` is ignored (always Average) and so are
  // `state` and `stats`: this class owns the error-feedback state of its one flat delta buffer.
  // NonFiniteAction::Skip discards a block some rank's delta is not finite in: every rank's
  // parameters go back to W_g(t−1) and the filter state is unchanged.
  AllreduceOptions allreduce;
};

// One parameter tensor the filter manages: the caller's storage, which must stay valid and at
// the same address for the object's lifetime.
struct BmufTensor {
  std::string name;
  std::span<float> data;
};

// The filter state over a set of parameter tensors: W, Δ and W_g (each a flat copy of all
// tensors, in registration order), the local step within the block and the block counter, and
// the error-feedback state of the delta's allreduce. One thread drives an instance.
class Bmuf {
 public:
  // Collective (every rank, same tensors and options). Checks the options and tensors, then
  // agrees on them with the other ranks: InvalidArgument naming the parameter on every rank
  // when any rank's is out of range (block_steps, block_momentum, block_lr, tensors), Mismatch
  // on every rank when ranks pass different options or tensor layouts. Then broadcasts rank 0's
  // parameters into every rank's tensors: W(0).
  Bmuf(Communicator& comm, std::vector<BmufTensor> tensors, BmufOptions options);
  Bmuf(const Bmuf&) = delete;
  Bmuf& operator=(const Bmuf&) = delete;

  // Counts one local step (call it after each optimizer step); at the H-th step of a block runs
  // the block boundary (sync()) and returns true. Collective at that step.
  bool step();
  // The block boundary now, after fewer than H steps (e.g. at the end of an epoch): averages the
  // deltas, updates the filter and writes W_g into the tensors. Returns false and does nothing
  // when no local step ran since the last boundary (every rank alike, since every rank counts
  // the same steps). Throws what the allreduce throws; then the tensors and the filter state are
  // unchanged (the error-feedback state as AllreduceOptions documents).
  bool sync();

  const BmufOptions& options() const noexcept { return options_; }
  std::size_t element_count() const noexcept { return global_.size(); }
  std::uint64_t blocks() const noexcept { return blocks_; }  // block boundaries run
  std::uint64_t skipped_blocks() const noexcept { return skipped_blocks_; }
  bool last_block_skipped() const noexcept { return last_skipped_; }
  std::size_t steps_in_block() const noexcept { return steps_in_block_; }
  // Payload bytes this rank's block allreduces sent (AllreduceStats::wire_bytes_sent, summed).
  std::uint64_t bytes_sent() const noexcept { return bytes_sent_; }
  std::span<const float> global_model() const noexcept { return global_; }  // W(t)
  std::span<const float> block_start() const noexcept { return start_; }    // W_g(t)
  std::span<const float> momentum() const noexcept { return momentum_; }    // Δ(t)
  const AllreduceState& allreduce_state() const noexcept { return state_; }

  // A versioned byte image of the filter state: options, layout, counters, W, Δ and the
  // error-feedback state (not the tensors: a checkpoint saves those itself).
  std::vector<std::byte> save_state() const;
  // Restores an image of save_state(); W_g is recomputed from W and Δ. The tensors are left
  // alone. Throws InvalidArgument on a malformed or truncated image, one with non-finite
  // values, or one written with other options, tensors or ranks; the state is unchanged then.
  void restore_state(std::span<const std::byte> image);

 private:
  void write_tensors(std::span<const float> flat);

  Communicator& comm_;
  BmufOptions options_;
  std::vector<BmufTensor> tensors_;
  std::uint64_t layout_key_ = 0;  // hash of the tensors' names and sizes
  std::vector<float> global_;     // W
  std::vector<float> momentum_;   // Δ
  std::vector<float> start_;      // W_g: where the current block started
  std::vector<float> delta_;      // the block's delta, reduced in place
  AllreduceState state_;
  std::uint64_t blocks_ = 0;
  std::uint64_t skipped_blocks_ = 0;
  std::size_t steps_in_block_ = 0;
  std::uint64_t bytes_sent_ = 0;
  bool last_skipped_ = false;
};

}  // namespace frugal
