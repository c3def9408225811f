#pragma once

// PowerSGD (Vogels, Karimireddy, Jaggi, NeurIPS 2019): low-rank gradient compression whose
// messages are plain dense allreduces, so the bytes a rank sends do not grow with the number of
// ranks. See docs/powersgd.md.
//
// Each tensor is viewed as a matrix M of `rows` x `cols` (the first dimension by the product of
// the others). Per step, for every tensor worth compressing:
//   M += residual                      (error feedback)
//   P = M Q                            (Q: the previous step's, a warm start)
//   allreduce(P); orthonormalise P's columns (modified Gram-Schmidt)
//   Q = M^T P; allreduce(Q)
//   approximation = P Q^T; residual = M - approximation (the mean's share under Sum, below)
// and the tensor is replaced by the approximation. Tensors not worth compressing ((rows + cols)
// * rank * min_compression_rate >= rows * cols; every 1-D tensor, i.e. cols == 1 or rows == 1,
// is one) travel exactly in the same allreduce as the P's. A step costs one small agreement
// allreduce and two data allreduces: [every P | the dense tensors], then [every Q]. During the
// first `start_iter` steps every tensor is reduced exactly, in one allreduce (PyTorch's
// start_powerSGD_iter); error feedback starts with the first compressed step.

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <vector>

#include "frugal/collectives/allreduce.hpp"
#include "frugal/collectives/options.hpp"
#include "frugal/communicator.hpp"
#include "frugal/dtype.hpp"

namespace frugal {

namespace detail {
class PowerSgdBinding;
}

// One gradient tensor: its float32 values (row-major, owned by the caller; the result is written
// back in place) and its shape as a matrix. A 1-D tensor of n elements is rows = n, cols = 1.
struct PowerSgdTensor {
  std::span<float> data;
  std::size_t rows = 0;
  std::size_t cols = 0;
};

// What one powersgd_allreduce did (filled in when PowerSgdOptions::stats is set).
struct PowerSgdStats {
  bool dense_step = false;             // one of the first start_iter steps: all exact
  std::size_t compressed_tensors = 0;  // tensors reduced as rank-r approximations
  std::size_t wire_bytes_sent = 0;     // payload bytes this rank sent (agreement included)
  bool non_finite_skipped = false;     // NonFiniteAction::Skip: every rank skipped this step
  std::size_t non_finite_zeroed = 0;   // NonFiniteAction::Zero: this rank's entries set to 0
};

struct PowerSgdOptions : CollectiveOptions {
  // The rank r of the approximation (PyTorch's matrix_approximation_rank); >= 1. The paper's
  // results use 1 to 4; r = 2 or 4 usually matches dense accuracy.
  int rank = 1;
  // A tensor is compressed only when its dense size is more than this many times its P and Q
  // together: (rows + cols) * rank * min_compression_rate < rows * cols. Finite and >= 1 (below
  // 1 a "compressed" tensor would send more than its dense self). PyTorch's default, 2.
  double min_compression_rate = 2.0;
  // Steps reduced exactly before PowerSGD starts. PyTorch defaults to 1000, which is tuned to
  // ImageNet-length runs; frugal's reference recipe (ResNet-20, 10 epochs of a few hundred
  // steps) would spend a third of its run dense with it. 10 steps skip the first updates, whose
  // gradients are the largest and change the most from one step to the next (where a warm start
  // from a random Q lags most), at a cost of 10 dense steps. 0 compresses from the first step.
  std::uint64_t start_iter = 10;
  // Q's initial values: normal draws from compression::Rng(seed, tensor index, 0), identical on
  // every rank (see powersgd_initial_q).
  std::uint64_t seed = 0;
  // Keep what the approximation missed and add it back next step. Without it PowerSGD is biased
  // and converges to a worse point (the paper's ablation).
  bool error_feedback = true;
  // Average (PyTorch's hook averages) or Sum. Under Sum the residual keeps this rank's share of
  // the mean: M - approximation / ranks, so that residuals add up to what the sum missed.
  ReduceOp op = ReduceOp::Average;
  // NaN/Inf in some rank's input, decided collectively in the agreement (every rank alike):
  // Default and Error: InvalidArgument naming `non_finite` on every rank, tensors and state
  // untouched, communicator usable (what the compressed allreduce does by default); Skip: every
  // rank keeps its input and state (stats->non_finite_skipped); Zero: each rank zeroes its own.
  NonFiniteAction non_finite = NonFiniteAction::Default;
  // Filled in when non-null.
  PowerSgdStats* stats = nullptr;
};

// Throws InvalidArgument naming the field (rank, min_compression_rate, op, non_finite, timeout)
// unless `options` is usable. powersgd_allreduce calls it first.
void validate(const PowerSgdOptions& options);

// Whether a rows x cols tensor is compressed with `options` (rank, min_compression_rate).
bool powersgd_compresses(std::size_t rows, std::size_t cols, const PowerSgdOptions& options);

// What PowerSGD keeps for one list of tensors between steps: the step counter, and for each
// compressed tensor its Q (rank x cols, column c of Q contiguous: q[c * cols + j]) and its
// error-feedback residual (rows x cols). Owned by the caller, one per tensor list (e.g. one per
// model); each rank keeps its own (residuals differ by rank) and saves it in its checkpoint.
//
// The first powersgd_allreduce binds the state to its layout (shapes, ranks, this rank, r, op,
// min_compression_rate, error feedback on or off); another layout afterwards is Mismatch on
// every rank, until reset(). Not thread-safe: one call at a time.
class PowerSgdState {
 public:
  struct Layout {
    std::vector<std::uint64_t> shapes;  // rows, cols of each tensor
    std::int32_t ranks = 0;
    std::int32_t rank = 0;
    std::int32_t approximation_rank = 0;
    std::uint8_t op = 0;
    std::uint8_t feedback = 0;
    double min_compression_rate = 0;
    friend bool operator==(const Layout&, const Layout&) = default;
  };

  std::uint64_t steps() const noexcept { return steps_; }
  bool bound() const noexcept { return layout_.has_value(); }
  const std::optional<Layout>& layout() const noexcept { return layout_; }

  // Tensor `index`'s Q and residual; empty for a tensor that is not compressed and (residual)
  // without error feedback. InvalidArgument naming `index` beyond the layout's tensors (any
  // index before binding).
  std::span<const float> q(std::size_t index) const;
  std::span<const float> residual(std::size_t index) const;

  // Forgets layout, Q's and residuals (the next call draws Q afresh). Keeps the step counter,
  // which every rank must still agree on.
  void reset() noexcept;

  // A self-describing byte image (magic, version, step, layout, Q's, residuals) for checkpoints.
  // restore() validates it completely (sizes against the layout, trailing bytes, finite values)
  // and throws InvalidArgument on a malformed one, leaving the state unchanged.
  std::vector<std::byte> save() const;
  void restore(std::span<const std::byte> image);

 private:
  friend class detail::PowerSgdBinding;

  std::uint64_t steps_ = 0;
  std::optional<Layout> layout_;
  std::vector<std::vector<float>> q_;         // per tensor; empty when not compressed
  std::vector<std::vector<float>> residual_;  // per tensor; empty when not compressed or no EF
};

// Column c of tensor `tensor`'s initial Q: element j is the normal draw (Box-Muller over two
// next_double() of compression::Rng(seed, tensor, step, 2 * (c * cols + j))). A column that ends
// a step all zero (its P was zero: a zero gradient) is drawn again for the next step with that
// step's number, so a tensor that starts at zero does not keep a dead column forever.
void powersgd_initial_q(std::uint64_t seed, std::size_t tensor, std::uint64_t step, std::size_t c,
                        std::span<float> column);

// Reduces `tensors` across the communicator in place as described at the top: afterwards every
// rank holds bit-identical values, the rank-r approximation of the (error-compensated) mean or
// sum of each compressed tensor and the exact mean or sum of the others. All ranks must pass the
// same shapes, options and a state at the same step; they agree on all of it first (a
// disagreement, or a state bound to another layout on any rank, is Mismatch on every rank before
// anything changes). Bad options or shapes (data.size() != rows * cols) are InvalidArgument
// naming them, nothing sent. After Timeout, PeerFailure or Transport in the middle of a step the
// communicator is failed and the state may hold a half-done step: restore a checkpoint.
// Not thread-safe per communicator.
void powersgd_allreduce(Communicator& comm, std::span<const PowerSgdTensor> tensors,
                        PowerSgdState& state, const PowerSgdOptions& options = {});

}  // namespace frugal
