#include "frugal/collectives/bmuf.hpp"

#include <algorithm>

#include "bmuf_terms.hpp"
#include "frugal/collectives/collectives.hpp"

namespace frugal {

Bmuf::Bmuf(Communicator& comm, std::vector<BmufTensor> tensors, BmufOptions options)
    : comm_(comm), options_(std::move(options)), tensors_(std::move(tensors)) {
  const detail::BmufProblem problem = detail::bmuf_problem(options_, tensors_);
  std::size_t total = 0;
  for (const BmufTensor& t : tensors_) total += t.data.size();
  layout_key_ = detail::bmuf_layout_key(tensors_);
  detail::bmuf_agree(comm_, options_, problem, tensors_.size(), total, layout_key_);

  options_.allreduce.op = ReduceOp::Average;
  options_.allreduce.state = nullptr;
  options_.allreduce.stats = nullptr;
  global_.resize(total);
  std::size_t at = 0;
  for (const BmufTensor& t : tensors_) {
    std::copy(t.data.begin(), t.data.end(), global_.begin() + static_cast<std::ptrdiff_t>(at));
    at += t.data.size();
  }
  // W(0) is rank 0's model, so that every rank's first block starts from the same point.
  broadcast(comm_, std::as_writable_bytes(std::span<float>(global_)), 0, options_.allreduce);
  write_tensors(global_);
  start_ = global_;
  momentum_.assign(total, 0.0f);
  delta_.resize(total);
}

void Bmuf::write_tensors(std::span<const float> flat) {
  std::size_t at = 0;
  for (BmufTensor& t : tensors_) {
    std::copy_n(flat.begin() + static_cast<std::ptrdiff_t>(at), t.data.size(), t.data.begin());
    at += t.data.size();
  }
}

bool Bmuf::step() {
  ++steps_in_block_;
  if (steps_in_block_ < options_.block_steps) return false;
  return sync();
}

bool Bmuf::sync() {
  if (steps_in_block_ == 0) return false;
  std::size_t at = 0;
  for (const BmufTensor& t : tensors_) {
    for (std::size_t i = 0; i < t.data.size(); ++i) delta_[at + i] = t.data[i] - start_[at + i];
    at += t.data.size();
  }
  AllreduceOptions o = options_.allreduce;
  AllreduceStats stats;
  o.state = &state_;
  o.stats = &stats;
  allreduce(comm_, std::span<float>(delta_), o);
  bytes_sent_ += stats.wire_bytes_sent;
  steps_in_block_ = 0;
  last_skipped_ = stats.non_finite_skipped;
  if (last_skipped_) {
    // The block is discarded on every rank alike: its start again, the filter untouched.
    ++skipped_blocks_;
    write_tensors(start_);
    return true;
  }
  // Δ(t) = η·Δ(t−1) + ζ·Ḡ(t);  W(t) = W(t−1) + Δ(t);  W_g(t) = W(t) [+ η·Δ(t) for Nesterov].
  const auto eta = static_cast<float>(options_.block_momentum);
  const auto zeta = static_cast<float>(options_.block_lr);
  for (std::size_t i = 0; i < global_.size(); ++i) {
    momentum_[i] = eta * momentum_[i] + zeta * delta_[i];
    global_[i] += momentum_[i];
    start_[i] = options_.nesterov ? global_[i] + eta * momentum_[i] : global_[i];
  }
  write_tensors(start_);
  ++blocks_;
  return true;
}

}  // namespace frugal
