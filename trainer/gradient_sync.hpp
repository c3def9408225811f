#pragma once

// Gradient allreduce overlapped with backward: autograd hooks hand each parameter's gradient to
// frugal::GradientBuckets as soon as backward produces it, and end_step() waits for the buckets
// and installs the reduced gradients as the parameters' .grad. With PowerSGD the hooks only
// collect the gradients and end_step() reduces them all at once, after backward: a PowerSGD step
// orthogonalises P across every tensor before Q, so it cannot start on part of the model.

#include <torch/torch.h>

#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "frugal/collectives/buckets.hpp"
#include "frugal/collectives/hierarchical.hpp"
#include "frugal/collectives/powersgd.hpp"
#include "frugal/communicator.hpp"
#include "frugal/compression/compressor.hpp"

namespace frugal::train {

struct SyncOptions {
  compression::CompressionConfig compression;  // method None: dense only
  bool error_feedback = true;
  AllreduceAlgorithm algorithm = AllreduceAlgorithm::Auto;  // of the compressed buckets
  std::size_t bucket_bytes = 25u << 20;
  // Compressed steps send 1-D parameters (biases, BN γ/β) uncompressed: the buckets'
  // BucketOptions::dense_vectors, which says why.
  bool dense_vectors = true;
  // Local gradient clipping (DGC): before the prepare callback, this rank's whole gradient (all
  // parameters) is scaled down to this L2 norm if it is longer. 0: off. Clipping needs every
  // gradient before the first is sent, so with it the buckets are handed their tensors in
  // end_step(), after backward, instead of from the hooks (no overlap).
  double clip_norm = 0;
  // --compress powersgd: compressed steps reduce every gradient with frugal::powersgd_allreduce
  // (one PowerSgdState for the model) instead of the buckets; `compression.method` stays None
  // and only dense steps (--compress-after-epochs) use buckets. Only rank,
  // min_compression_rate and start_iter are read from here: GradientSync sets op (Sum, as the
  // buckets), seed, error feedback (`error_feedback` above) and non_finite (Skip).
  bool powersgd = false;
  PowerSgdOptions powersgd_options;
  // --guardrail: the compressed buckets' accuracy guardrail (BucketOptions::guardrail). A density
  // change (set_density) builds fresh buckets, which start again on rung 0.
  GuardrailOptions guardrail;
  // --compress auto: the compressed buckets choose their setting online
  // (BucketOptions::autotune); `compression.method` stays None and its other fields are the
  // candidates' base. A density change does not apply (no top-k method is configured).
  AutotuneOptions autotune;
  // --hierarchical: every bucket, dense or compressed, is reduced with hierarchical_allreduce
  // over `topology` (BucketOptions::hierarchical: dense within a host, compressed between
  // hosts, blocking in end_step(), without overlap). An empty `topology` is discovered by the
  // GradientSync constructor (collective; FRUGAL_HOST_ID names each rank's host). PowerSGD,
  // the guardrail, and what reads a whole bucket's residual (worker_residuals(), set_density())
  // do not combine with it; the buckets' own checkpoint images refuse a resume in the other mode.
  bool hierarchical = false;
  std::optional<HostTopology> topology;
};

// Called in the hook with each parameter's index and its full local gradient (this rank's share)
// just before the buckets take it; may rewrite it in place (momentum correction sends the rank's
// velocity instead). Runs on every step, dense or compressed, skipped or not.
using PrepareGradient = std::function<void(std::size_t, torch::Tensor&)>;

class GradientSync {
 public:
  // Registers a hook on every parameter (kept for the lifetime of the parameters: create one
  // GradientSync per model). `params` in the model's order; backward produces their gradients
  // roughly in reverse, which is the order they are registered with the buckets. `seed` keys the
  // stochastic quantizers' random streams (AllreduceOptions::seed).
  GradientSync(Communicator& comm, std::vector<std::pair<std::string, torch::Tensor>> params,
               SyncOptions options, std::uint64_t seed = 0, PrepareGradient prepare = {});
  GradientSync(const GradientSync&) = delete;
  GradientSync& operator=(const GradientSync&) = delete;

  // Starts a step: clears every .grad and picks dense or compressed buckets.
  void begin_step(bool compressed);
  // Whether the coming backward is the step's last micro-batch: only then do the hooks hand the
  // (accumulated) gradients to the buckets.
  void set_last_micro_batch(bool last) noexcept { last_micro_ = last; }
  // Waits for every bucket and installs the sum over ranks as each parameter's .grad. Returns
  // false, identically on every rank, when the step must be skipped because some rank's
  // gradient or the reduced gradient is not finite (the buckets' NonFiniteAction::Skip); the
  // .grads are cleared then and the error-feedback state is as before the step. Whatever the
  // prepare callback advanced (momentum-correction velocities) is the caller's to put back.
  // Throws what the allreduce threw (PeerFailure, ...).
  bool end_step();

  // Multiplies the compressed buckets' error-feedback residuals by `factor` (lr_prev / lr_now
  // before a step whose LR changed). Between steps only. Returns false when the residuals cannot
  // be scaled: PowerSgdState has no such operation, so PowerSGD's residuals are applied at the
  // LR of the step that adds them back (as PyTorch's hook does).
  bool scale_residuals(float factor);

  // Top-k only, between steps: the compressed buckets compress at `density` from the next step
  // on. A bucket's state is bound to its k (AllreduceState throws Mismatch when k changes), so
  // this builds fresh buckets; the old worker residuals are not lost but added to the first
  // compressed step's gradients, which is exactly what error feedback would have done with
  // them (v = residual + gradient). The server residuals of two-phase algorithms are dropped.
  void set_density(double density);
  double density() const noexcept { return options_.compression.density; }

  // Per parameter: its slice of this rank's worker residual after the last compressed step, a
  // copy (undefined for a parameter reduced dense or before the first compressed step).
  std::vector<torch::Tensor> worker_residuals() const;

  // The compressed exchange's error-feedback state: the buckets' (empty if they never ran) or,
  // with PowerSGD, the PowerSgdState's image.
  std::vector<std::byte> save_state() const;
  void restore_state(const std::vector<std::byte>& image);

  // Elastic resume (buckets only): `images[i]` is what save_state() returned on rank i of a run
  // of images.size() ranks; re-cuts them for this communicator's ranks (redistribute_state,
  // frugal/collectives/elastic.hpp has the rule) and restores this rank's share. All empty:
  // nothing to restore. Throws InvalidArgument with PowerSGD (no redistribution exists for it)
  // or when some images are empty and others not.
  void restore_redistributed(const std::vector<std::vector<std::byte>>& images);

  // Diagnostic: this rank's share of the update the compressed buckets' residuals carry into
  // the next step, summed over every element: the worker residuals plus the server residuals
  // (ReduceOp::Sum). Summed over ranks it is what an elastic resume preserves.
  double carried_update() const;

  bool uses_powersgd() const noexcept { return options_.powersgd; }
  // The hosts the buckets reduce over (--hierarchical), else null.
  const HostTopology* topology() const noexcept {
    return options_.hierarchical ? &*options_.topology : nullptr;
  }

  // The guardrail's changes of setting decided by the steps since the last call (identical on
  // every rank); empties the list.
  std::vector<GuardrailEvent> take_guardrail_events();
  // The largest smoothed residual ratio over the compressed buckets and the highest rung any of
  // them is on (0 and 0 without the guardrail or before its first compressed step).
  std::pair<double, std::size_t> guardrail_status() const;
  // --compress auto: the candidate switches and decisions of the steps since the last call
  // (identical on every rank); empties the list.
  std::vector<AutotuneEvent> take_autotune_events();

 private:
  void on_grad(std::size_t index, const torch::Tensor& grad);
  void hand_over(GradientBuckets& buckets, std::size_t index);
  void clip_and_hand_over(GradientBuckets& buckets);
  void clip_locals();
  void reduce_powersgd();
  BucketOptions bucket_options(bool compressed) const;
  std::unique_ptr<GradientBuckets> make_buckets(bool compressed);
  std::span<float> span_of(std::size_t index);

  Communicator& comm_;
  SyncOptions options_;
  std::uint64_t seed_;
  PrepareGradient prepare_;
  std::vector<std::pair<std::string, torch::Tensor>> params_;
  std::vector<torch::Tensor> local_;  // per parameter: this rank's gradient, then the reduced one
  // Per parameter: its id in dense_ and compressed_ (the same: both register every parameter in
  // the same order).
  std::vector<std::size_t> ids_;
  std::unique_ptr<GradientBuckets> dense_;
  std::unique_ptr<GradientBuckets> compressed_;  // null without a compression method
  GradientBuckets* active_ = nullptr;
  // --compress powersgd: the model's state, and whether this step is a PowerSGD one (the hooks
  // then collect into local_ and count what they got in powersgd_received_).
  PowerSgdState powersgd_;
  bool powersgd_step_ = false;
  std::size_t powersgd_received_ = 0;
  bool powersgd_skipped_ = false;
  // Residuals carried over a density change (set_density), added at the next compressed step.
  std::vector<torch::Tensor> carried_;
  bool last_micro_ = true;
  std::exception_ptr hook_error_;
  std::vector<GuardrailEvent> guardrail_events_;
  std::vector<AutotuneEvent> autotune_events_;
};

}  // namespace frugal::train
