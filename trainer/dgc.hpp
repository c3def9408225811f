#pragma once

// The parts of Deep Gradient Compression (Lin et al., ICLR 2018) that sit around the top-k
// allreduce, beyond momentum correction (Sgd): the sparsity warm-up schedule and momentum factor
// masking. DGC's update on rank k, with error feedback's residual as its accumulated v_k:
//   g_k ← clip(g_k, C/√N);  u_k ← m·u_k + g_k;  v_k ← v_k + u_k;  send top-k(v_k);
//   v_k ← v_k ⊙ ¬mask;  u_k ← u_k ⊙ ¬mask;  w ← w − lr·(Σ sent + λ·w)
// (the sent velocities are of each rank's share of the global mean gradient, so they sum).

#include <torch/torch.h>

#include <cstdint>
#include <vector>

namespace frugal::train {

// Top-k density at `epoch` (0-based): target^((epoch+1)/(warmup+1)) during the first `warmup`
// epochs, then `target`. An exponential ramp that starts near dense; with DGC's target 0.001 and 4
// epochs it is DGC's 75%, 93.75%, 98.4375%, 99.6% sparsity. warmup 0: always `target`.
double warmup_density(double target, std::int64_t epoch, std::int64_t warmup_epochs);

// Momentum factor masking: zeroes the velocity entries that the last compressed step sent. A
// coordinate was sent exactly when its error-feedback residual became 0 (top-k with fp32 values
// sends the accumulated value itself and keeps the rest), so `residuals` (GradientSync::
// worker_residuals, undefined for parameters reduced dense) is the mask. Parameters reduced
// dense keep their velocity: with a dense sum momentum correction is plain momentum already.
void mask_velocity(std::vector<torch::Tensor>& velocity,
                   const std::vector<torch::Tensor>& residuals);

}  // namespace frugal::train
