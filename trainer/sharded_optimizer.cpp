#include "sharded_optimizer.hpp"

#include <algorithm>
#include <cmath>
#include <span>

#include "frugal/collectives/allreduce.hpp"
#include "frugal/error.hpp"

namespace frugal::train {

std::size_t optimizer_state_bytes(const SgdOptions& sgd, std::size_t params, bool sharded,
                                  int ranks, int rank) {
  if (sgd.momentum == 0) return 0;
  const std::size_t n = sharded ? reduce_scatter_shard(params, ranks, rank).count : params;
  return n * sizeof(float);
}

ShardedOptimizer::ShardedOptimizer(Communicator& comm, const Sgd& sgd, const SyncOptions& sync,
                                   std::uint64_t seed)
    : comm_(comm), sgd_(sgd) {
  for (const Sgd::Param& p : sgd.params()) {
    require(p.value.is_contiguous() && p.value.scalar_type() == torch::kFloat32, "params",
            p.name + " is not a contiguous float32 tensor");
    segments_.push_back(static_cast<std::size_t>(p.value.numel()));
    const float* data = p.value.data_ptr<float>();
    params_.insert(params_.end(), data, data + p.value.numel());
  }
  grad_.resize(params_.size());
  shard_ = reduce_scatter_shard(params_.size(), comm.size(), comm.rank());
  shard_grad_.resize(shard_.count);
  if (sgd.options().momentum != 0) momentum_.assign(shard_.count, 0.0f);
  // Weight decay per element of the shard (--no-wd-bn-bias turns it off for 1-D parameters).
  decay_.resize(shard_.count);
  std::size_t at = 0;
  for (const Sgd::Param& p : sgd.params()) {
    const std::size_t end = at + static_cast<std::size_t>(p.value.numel());
    for (std::size_t i = std::max(at, shard_.offset); i < std::min(end, shard_.end()); ++i) {
      decay_[i - shard_.offset] = p.decay ? 1.0f : 0.0f;
    }
    at = end;
  }
  decay_everywhere_ = std::ranges::all_of(decay_, [](float d) { return d == 1.0f; });

  // Sums of the ranks' shares: each is its gradient / P (TrainingRun::forward_backward).
  dense_.op = ReduceOp::Sum;
  compressed_ = dense_;
  compressed_.compression = sync.compression;
  compressed_.error_feedback = sync.error_feedback;
  compressed_.algorithm = sync.algorithm;
  compressed_.seed = seed;
  compressed_.state = &state_;
  compressed_.segments = segments_;
  compressed_.non_finite = NonFiniteAction::Skip;  // as the gradient sync: skip, never poison
}

void ShardedOptimizer::begin_step() {
  for (const Sgd::Param& p : sgd_.params()) p.value.mutable_grad() = torch::Tensor();
}

bool ShardedOptimizer::scale_residuals(float factor) {
  if (state_.worker_residual().empty()) return false;
  state_.scale_residuals(factor);
  return true;
}

bool ShardedOptimizer::step(double lr, bool compressed) {
  torch::NoGradGuard no_grad;
  std::size_t at = 0;
  for (const Sgd::Param& p : sgd_.params()) {
    const auto n = static_cast<std::size_t>(p.value.numel());
    const torch::Tensor& g = p.value.grad();
    if (g.defined()) {
      const torch::Tensor c = g.contiguous();
      std::copy_n(c.data_ptr<float>(), n, grad_.data() + at);
    } else {
      std::fill_n(grad_.data() + at, n, 0.0f);
    }
    at += n;
  }
  AllreduceStats stats;
  AllreduceOptions options = compressed ? compressed_ : dense_;
  options.stats = &stats;
  compressed_reduce_scatter(comm_, grad_, shard_grad_, options);
  bool finite = !stats.non_finite_skipped;
  if (!compressed) {
    // The dense reduce-scatter does not look: one flag per rank decides for every rank alike.
    std::int32_t bad =
        std::ranges::all_of(shard_grad_, [](float x) { return std::isfinite(x); }) ? 0 : 1;
    allreduce(comm_, std::span<std::int32_t>(&bad, 1));
    finite = bad == 0;
  }
  if (!finite) return false;

  // The update of the shard, with Sgd's operations element for element.
  const auto count = static_cast<std::int64_t>(shard_.count);
  const auto opts = torch::TensorOptions().dtype(torch::kFloat32);
  const torch::Tensor p = torch::from_blob(params_.data() + shard_.offset, {count}, opts);
  const torch::Tensor g = torch::from_blob(shard_grad_.data(), {count}, opts);
  const SgdOptions& o = sgd_.options();
  torch::Tensor d = g;
  if (o.weight_decay != 0) {
    const torch::Tensor decayed =
        decay_everywhere_ ? p : p.mul(torch::from_blob(decay_.data(), {count}, opts));
    d = d.add(decayed, o.weight_decay);
  }
  torch::Tensor direction = d;
  if (o.momentum != 0) {
    // v starts at 0: μ·0 + d is d exactly, Sgd's first step.
    torch::Tensor v = torch::from_blob(momentum_.data(), {count}, opts);
    v.mul_(o.momentum).add_(d);
    direction = o.nesterov ? d.add(v, o.momentum) : v;
  }
  p.add_(direction, -lr);

  // Dense: every rank then holds the owners' updated values exactly.
  const std::span<float> flat(params_);
  compressed_allgather(comm_, flat.subspan(shard_.offset, shard_.count), flat, dense_);
  at = 0;
  for (const Sgd::Param& param : sgd_.params()) {
    const auto n = static_cast<std::size_t>(param.value.numel());
    std::copy_n(params_.data() + at, n, param.value.data_ptr<float>());
    at += n;
  }
  return true;
}

}  // namespace frugal::train
