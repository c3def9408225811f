#include "gradient_sync.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>

#include "frugal/collectives/allreduce.hpp"
#include "frugal/collectives/collectives.hpp"
#include "frugal/error.hpp"

namespace frugal::train {

// Why the hooks are correct with gradient accumulation. In LibTorch 1.13 a hook registered on a
// leaf parameter runs before AccumulateGrad adds this backward's gradient `g` to .grad, and it
// runs once per backward with the sum over every use of the parameter in the graph. So during
// the last micro-batch, .grad holds the sum of the earlier micro-batches and the parameter's
// full local gradient is .grad + g. The hook writes exactly that into local_[i], a buffer this
// class owns (so nothing depends on whether autograd later steals, copies or adds into `g`), and
// hands local_[i] to the buckets, which copy it at once and write the reduced sum back into
// local_[i] in finish(). Whatever autograd then accumulates into .grad is discarded: end_step()
// replaces .grad by local_[i], after backward has returned, so no later accumulation can touch
// it, and begin_step() clears .grad before the next step's first backward.
//
// Non-finite steps are the buckets' decision alone (NonFiniteAction::Skip): any rank's NaN or Inf
// gradient, or an overflowed sum, skips the step on every rank and leaves every bucket's
// error-feedback state as before it, top-k residuals included.

GradientSync::GradientSync(Communicator& comm,
                           std::vector<std::pair<std::string, torch::Tensor>> params,
                           SyncOptions options, std::uint64_t seed, PrepareGradient prepare)
    : comm_(comm),
      options_(std::move(options)),
      seed_(seed),
      prepare_(std::move(prepare)),
      params_(std::move(params)) {
  require(!params_.empty(), "params", "the model has no parameters");
  // Every check before the first hook: a hook outlives a constructor that throws.
  bool any_matrix = false;
  for (const auto& [name, p] : params_) {
    require(p.scalar_type() == torch::kFloat32, "params", name + " is not float32");
    any_matrix |= p.dim() > 1;
  }
  const bool compressing =
      options_.compression.method != compression::Method::None || options_.autotune.enabled;
  require(!(compressing && options_.powersgd), "--compress",
          "powersgd cannot be combined with a compression method");
  require(!(options_.hierarchical && options_.powersgd), "--hierarchical",
          "does not combine with --compress powersgd (PowerSGD reduces after backward, flat)");
  require(!(options_.hierarchical && options_.guardrail.enabled), "--hierarchical",
          "does not combine with --guardrail");
  require(!(options_.hierarchical && options_.autotune.enabled), "--hierarchical",
          "does not combine with --compress auto");
  require(!(options_.powersgd && options_.autotune.enabled), "--compress",
          "powersgd and auto exclude each other");
  require(options_.hierarchical || !options_.topology, "topology", "needs --hierarchical");
  if (options_.powersgd) {
    PowerSgdOptions checked = options_.powersgd_options;
    checked.op = ReduceOp::Sum;
    checked.non_finite = NonFiniteAction::Skip;
    validate(checked);
  }
  require(!compressing || !options_.dense_vectors || any_matrix, "--dense-vectors",
          "leaves no parameter of this model to compress (--no-dense-vectors compresses the "
          "1-D ones too)");
  // One discovery for every set of buckets this object builds (dense, compressed, and those of
  // a density change), collective like the constructor's callers.
  if (options_.hierarchical && !options_.topology)
    options_.topology = discover_host_topology(comm_);
  local_.reserve(params_.size());
  for (std::size_t i = 0; i < params_.size(); ++i) {
    const torch::Tensor& p = params_[i].second;
    local_.push_back(torch::empty_like(p, torch::MemoryFormat::Contiguous));
    p.register_hook([this, i](const torch::Tensor& grad) { on_grad(i, grad); });
  }
  dense_ = make_buckets(false);
  if (compressing) compressed_ = make_buckets(true);
}

BucketOptions GradientSync::bucket_options(bool compressed) const {
  BucketOptions bucket_options;
  bucket_options.bucket_bytes = options_.bucket_bytes;
  bucket_options.dense_vectors = options_.dense_vectors;
  bucket_options.allreduce.op = ReduceOp::Sum;
  bucket_options.allreduce.seed = seed_;
  bucket_options.allreduce.non_finite = NonFiniteAction::Skip;
  bucket_options.hierarchical = options_.hierarchical;
  bucket_options.topology = options_.topology;
  if (compressed) {
    bucket_options.allreduce.compression = options_.compression;
    bucket_options.allreduce.error_feedback = options_.error_feedback;
    bucket_options.allreduce.algorithm = options_.algorithm;
    bucket_options.guardrail = options_.guardrail;
    bucket_options.autotune = options_.autotune;
  } else {
    bucket_options.allreduce.error_feedback = false;
  }
  return bucket_options;
}

std::unique_ptr<GradientBuckets> GradientSync::make_buckets(bool compressed) {
  auto buckets = std::make_unique<GradientBuckets>(comm_, bucket_options(compressed));
  ids_.assign(params_.size(), 0);
  for (std::size_t k = params_.size(); k-- > 0;) {
    const torch::Tensor& p = params_[k].second;
    ids_[k] = buckets->add(params_[k].first, static_cast<std::size_t>(p.numel()),
                           static_cast<std::size_t>(p.dim()));
  }
  return buckets;
}

std::span<float> GradientSync::span_of(std::size_t index) {
  torch::Tensor& local = local_[index];
  return {local.data_ptr<float>(), static_cast<std::size_t>(local.numel())};
}

void GradientSync::begin_step(bool compressed) {
  require(!compressed || compressed_ != nullptr || options_.powersgd, "compressed",
          "no compression method configured");
  for (auto& [name, p] : params_) p.mutable_grad() = torch::Tensor();
  powersgd_step_ = compressed && options_.powersgd;
  powersgd_received_ = 0;
  active_ = powersgd_step_ ? nullptr : compressed ? compressed_.get() : dense_.get();
  hook_error_ = nullptr;
  last_micro_ = true;
}

void GradientSync::on_grad(std::size_t index, const torch::Tensor& grad) {
  if (!last_micro_ || (active_ == nullptr && !powersgd_step_) || hook_error_) return;
  // Errors must not cross autograd (it would rethrow them as c10::Error, losing the code):
  // keep the first one for end_step().
  try {
    torch::NoGradGuard no_grad;
    torch::Tensor& local = local_[index];
    const torch::Tensor& accumulated = params_[index].second.grad();
    if (accumulated.defined()) {
      torch::add_out(local, accumulated, grad);
    } else {
      local.copy_(grad);
    }
    if (powersgd_step_) {
      ++powersgd_received_;
    } else if (options_.clip_norm == 0) {
      hand_over(*active_, index);
    }
  } catch (...) {
    hook_error_ = std::current_exception();
  }
}

void GradientSync::hand_over(GradientBuckets& buckets, std::size_t index) {
  torch::NoGradGuard no_grad;
  torch::Tensor& local = local_[index];
  if (prepare_) prepare_(index, local);
  if (&buckets == compressed_.get() && !carried_.empty() && carried_[index].defined()) {
    local.add_(carried_[index]);
  }
  buckets.mark_ready(ids_[index], span_of(index));
}

void GradientSync::clip_locals() {
  torch::NoGradGuard no_grad;
  double squares = 0;
  for (const torch::Tensor& local : local_) squares += local.square().sum().item<double>();
  const double norm = std::sqrt(squares);
  // A non-finite norm leaves the gradients as they are: the buckets then skip the step.
  if (std::isfinite(norm) && norm > options_.clip_norm) {
    for (torch::Tensor& local : local_) local.mul_(options_.clip_norm / norm);
  }
}

void GradientSync::clip_and_hand_over(GradientBuckets& buckets) {
  clip_locals();
  // In backward's order, the order the buckets were laid out for.
  for (std::size_t k = params_.size(); k-- > 0;) hand_over(buckets, k);
}

void GradientSync::reduce_powersgd() {
  require(powersgd_received_ == params_.size(), "end_step",
          "backward produced no gradient for some parameters (PowerSGD needs them all)");
  if (options_.clip_norm > 0) clip_locals();
  std::vector<PowerSgdTensor> tensors;
  tensors.reserve(params_.size());
  for (std::size_t i = 0; i < params_.size(); ++i) {
    if (prepare_) {
      torch::NoGradGuard no_grad;
      prepare_(i, local_[i]);
    }
    const torch::Tensor& p = params_[i].second;
    // The first dimension by the rest (a conv's output channels by its fan-in); 1-D: n x 1.
    const auto rows = static_cast<std::size_t>(p.dim() == 0 ? 1 : p.size(0));
    tensors.push_back({span_of(i), rows, static_cast<std::size_t>(p.numel()) / rows});
  }
  PowerSgdOptions o = options_.powersgd_options;
  o.op = ReduceOp::Sum;  // each rank's loss is already divided by the ranks, as for the buckets
  o.seed = seed_;
  o.error_feedback = options_.error_feedback;
  o.non_finite = NonFiniteAction::Skip;
  PowerSgdStats stats;
  o.stats = &stats;
  powersgd_allreduce(comm_, tensors, powersgd_, o);
  powersgd_skipped_ = stats.non_finite_skipped;
}

bool GradientSync::end_step() {
  if (powersgd_step_) {
    powersgd_step_ = false;
    if (hook_error_) std::rethrow_exception(hook_error_);
    reduce_powersgd();
    const bool stands = !powersgd_skipped_;
    for (std::size_t i = 0; i < params_.size(); ++i) {
      params_[i].second.mutable_grad() = stands ? local_[i] : torch::Tensor();
    }
    return stands;
  }
  require(active_ != nullptr, "end_step", "begin_step was not called");
  GradientBuckets* buckets = active_;
  active_ = nullptr;
  if (hook_error_) {
    // finish() waits for what was launched before it reports the missing tensors; its own
    // error is secondary to the hook's.
    try {
      buckets->finish();
    } catch (...) {
    }
    std::rethrow_exception(hook_error_);
  }
  if (options_.clip_norm > 0) {
    try {
      clip_and_hand_over(*buckets);
    } catch (...) {
      try {
        buckets->finish();
      } catch (...) {
      }
      throw;
    }
  }
  buckets->finish();
  const std::vector<GuardrailEvent>& events = buckets->last_step_guardrail_events();
  guardrail_events_.insert(guardrail_events_.end(), events.begin(), events.end());
  const std::vector<AutotuneEvent>& tuned = buckets->last_step_autotune_events();
  autotune_events_.insert(autotune_events_.end(), tuned.begin(), tuned.end());
  const bool stands = !buckets->last_step_skipped();
  if (stands && buckets == compressed_.get()) carried_.clear();
  for (std::size_t i = 0; i < params_.size(); ++i) {
    params_[i].second.mutable_grad() = stands ? local_[i] : torch::Tensor();
  }
  return stands;
}

bool GradientSync::scale_residuals(float factor) {
  if (options_.powersgd) return false;
  if (compressed_) compressed_->scale_residuals(factor);
  for (torch::Tensor& r : carried_) {
    if (r.defined()) r.mul_(factor);
  }
  return true;
}

void GradientSync::set_density(double density) {
  require(compressed_ != nullptr && options_.compression.method == compression::Method::TopK,
          "--density-warmup-epochs", "needs --compress topk");
  require(density > 0 && density <= 1, "--density", "must be in (0, 1]");
  if (density == options_.compression.density) return;
  // Residuals not yet re-sent from an earlier change are in the new ones' place already.
  std::vector<torch::Tensor> residuals = worker_residuals();
  if (!carried_.empty()) {
    for (std::size_t i = 0; i < residuals.size(); ++i) {
      if (!carried_[i].defined()) continue;
      residuals[i] = residuals[i].defined() ? residuals[i].add(carried_[i]) : carried_[i];
    }
  }
  carried_ = std::move(residuals);
  options_.compression.density = density;
  compressed_ = make_buckets(true);
}

std::vector<GuardrailEvent> GradientSync::take_guardrail_events() {
  return std::exchange(guardrail_events_, {});
}

std::vector<AutotuneEvent> GradientSync::take_autotune_events() {
  return std::exchange(autotune_events_, {});
}

std::pair<double, std::size_t> GradientSync::guardrail_status() const {
  std::pair<double, std::size_t> status{0.0, 0};
  if (!compressed_) return status;
  for (std::size_t b = 0; b < compressed_->bucket_count(); ++b) {
    status.first = std::max(status.first, compressed_->bucket_residual_ratio(b));
    status.second = std::max(status.second, compressed_->bucket_rung(b));
  }
  return status;
}

std::vector<torch::Tensor> GradientSync::worker_residuals() const {
  // A hierarchical bucket's residual covers this rank's share of the bucket only.
  require(!options_.hierarchical, "--hierarchical",
          "keeps a residual per share of a bucket, not per parameter (--momentum-masking and "
          "--density-warmup-epochs need flat buckets)");
  std::vector<torch::Tensor> out(params_.size());
  if (!compressed_ || compressed_->bucket_count() == 0) return out;
  // A bucket holds its tensors side by side in the order they were registered (ids ascending);
  // ids_ maps parameters to ids.
  std::vector<std::size_t> param_of(params_.size());
  for (std::size_t i = 0; i < params_.size(); ++i) param_of[ids_[i]] = i;
  for (std::size_t b = 0; b < compressed_->bucket_count(); ++b) {
    if (compressed_->bucket_is_dense(b)) continue;
    std::span<const float> r = compressed_->allreduce_state(b).worker_residual();
    // The guardrail's carry is residual mass too (flushed at a change of setting): both go.
    const std::span<const float> carry = compressed_->guardrail_carry(b);
    std::vector<float> both;
    if (!carry.empty()) {
      both.assign(carry.begin(), carry.end());
      for (std::size_t e = 0; e < r.size() && e < both.size(); ++e) both[e] += r[e];
      r = both;
    }
    if (r.empty()) continue;
    std::size_t offset = 0;
    for (std::size_t id = 0; id < params_.size(); ++id) {
      if (compressed_->bucket_of(id) != b) continue;
      const torch::Tensor& p = params_[param_of[id]].second;
      const auto n = static_cast<std::size_t>(p.numel());
      require(offset + n <= r.size(), "worker_residuals",
              "the residual is shorter than its bucket");
      out[param_of[id]] =
          torch::from_blob(const_cast<float*>(r.data() + offset), p.sizes(), torch::kFloat32)
              .clone();
      offset += n;
    }
    require(offset == r.size(), "worker_residuals", "the residual is longer than its bucket");
  }
  return out;
}

std::vector<std::byte> GradientSync::save_state() const {
  if (options_.powersgd) return powersgd_.save();
  if (!compressed_ || compressed_->bucket_count() == 0) return {};
  return compressed_->save_state();
}

void GradientSync::restore_state(const std::vector<std::byte>& image) {
  if (image.empty()) return;
  if (options_.powersgd) {
    powersgd_.restore(image);
    return;
  }
  require(compressed_ != nullptr, "checkpoint",
          "holds error-feedback state but this run has no compression method");
  compressed_->restore_state(image);
}

void GradientSync::restore_redistributed(const std::vector<std::vector<std::byte>>& images) {
  require(!options_.powersgd, "--resume",
          "PowerSGD's state cannot be redistributed to another number of ranks (resume with "
          "the -np the checkpoint was written with)");
  const auto empty = static_cast<std::size_t>(
      std::count_if(images.begin(), images.end(), [](const auto& i) { return i.empty(); }));
  if (empty == images.size()) return;
  require(empty == 0, "checkpoint", "some ranks saved error-feedback state and others none");
  require(compressed_ != nullptr, "checkpoint",
          "holds error-feedback state but this run has no compression method");
  const std::vector<std::vector<std::byte>> mine =
      GradientBuckets::redistribute_state(images, comm_.size(), bucket_options(true));
  compressed_->restore_state(mine.at(static_cast<std::size_t>(comm_.rank())));
}

double GradientSync::carried_update() const {
  double sum = 0;
  if (!compressed_) return sum;
  for (std::size_t b = 0; b < compressed_->bucket_count(); ++b) {
    if (compressed_->bucket_is_dense(b)) continue;
    const AllreduceState& state = compressed_->allreduce_state(b);
    for (const float r : state.worker_residual()) sum += r;
    for (const float r : state.server_residual()) sum += r;
    for (const float r : compressed_->guardrail_carry(b)) sum += r;
  }
  for (const torch::Tensor& r : carried_) {
    if (r.defined()) sum += r.sum().item<double>();
  }
  return sum;
}

}  // namespace frugal::train
