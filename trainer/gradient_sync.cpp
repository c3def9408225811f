#include "gradient_sync.hpp"

#include <algorithm>
#include <array>

#include "frugal/collectives/allreduce.hpp"
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

GradientSync::GradientSync(Communicator& comm,
                           std::vector<std::pair<std::string, torch::Tensor>> params,
                           SyncOptions options)
    : comm_(comm), options_(std::move(options)), params_(std::move(params)) {
  require(!params_.empty(), "params", "the model has no parameters");
  options_.compression.non_finite = compression::NonFinitePolicy::Flag;
  // Every check before the first hook: a hook outlives a constructor that throws.
  std::size_t vector_elements = 0, elements = 0;
  for (std::size_t i = 0; i < params_.size(); ++i) {
    const torch::Tensor& p = params_[i].second;
    require(p.scalar_type() == torch::kFloat32, "params", params_[i].first + " is not float32");
    elements += static_cast<std::size_t>(p.numel());
    if (bypasses(i)) vector_elements += static_cast<std::size_t>(p.numel());
  }
  require(options_.compression.method == compression::Method::None || vector_elements < elements,
          "--dense-vectors", "leaves no parameter of this model to compress");
  vectors_.resize(vector_elements);
  local_.reserve(params_.size());
  for (std::size_t i = 0; i < params_.size(); ++i) {
    const torch::Tensor& p = params_[i].second;
    local_.push_back(torch::empty_like(p, torch::MemoryFormat::Contiguous));
    p.register_hook([this, i](const torch::Tensor& grad) { on_grad(i, grad); });
  }
  dense_ = make_buckets(false);
  if (options_.compression.method != compression::Method::None) compressed_ = make_buckets(true);
}

std::unique_ptr<GradientBuckets> GradientSync::make_buckets(bool compressed) {
  BucketOptions bucket_options;
  bucket_options.bucket_bytes = options_.bucket_bytes;
  bucket_options.allreduce.op = ReduceOp::Sum;
  bucket_options.allreduce.seed = options_.seed;
  if (compressed) {
    bucket_options.allreduce.compression = options_.compression;
    bucket_options.allreduce.error_feedback = options_.error_feedback;
    bucket_options.allreduce.algorithm = options_.algorithm;
  } else {
    bucket_options.allreduce.error_feedback = false;
  }
  auto buckets = std::make_unique<GradientBuckets>(comm_, bucket_options);
  std::vector<std::size_t>& ids = compressed ? compressed_ids_ : dense_ids_;
  ids.assign(params_.size(), 0);
  for (std::size_t k = params_.size(); k-- > 0;) {
    if (compressed && bypasses(k)) continue;
    ids[k] = buckets->add(params_[k].first, static_cast<std::size_t>(params_[k].second.numel()));
  }
  return buckets;
}

bool GradientSync::bypasses(std::size_t index) const noexcept {
  return options_.dense_vectors && params_[index].second.dim() <= 1;
}

void GradientSync::allreduce_vectors() {
  std::size_t at = 0;
  for (std::size_t i = 0; i < params_.size(); ++i) {
    if (!bypasses(i)) continue;
    const torch::Tensor& local = local_[i];
    const auto n = static_cast<std::size_t>(local.numel());
    std::copy_n(local.data_ptr<float>(), n, vectors_.begin() + static_cast<std::ptrdiff_t>(at));
    at += n;
  }
  AllreduceOptions options;
  options.op = ReduceOp::Sum;
  allreduce(comm_, std::span<float>(vectors_), options);
  at = 0;
  for (std::size_t i = 0; i < params_.size(); ++i) {
    if (!bypasses(i)) continue;
    torch::Tensor& local = local_[i];
    const auto n = static_cast<std::size_t>(local.numel());
    std::copy_n(vectors_.begin() + static_cast<std::ptrdiff_t>(at), n, local.data_ptr<float>());
    at += n;
  }
}

void GradientSync::begin_step(bool compressed) {
  require(!compressed || compressed_ != nullptr, "compressed", "no compression method configured");
  for (auto& [name, p] : params_) p.mutable_grad() = torch::Tensor();
  active_ = compressed ? compressed_.get() : dense_.get();
  snapshot_.clear();
  if (compressed && options_.error_feedback && compressed_started_) {
    snapshot_ = compressed_->save_state();
  }
  local_nonfinite_ = false;
  hook_error_ = nullptr;
  last_micro_ = true;
}

void GradientSync::on_grad(std::size_t index, const torch::Tensor& grad) {
  if (!last_micro_ || active_ == nullptr || hook_error_) return;
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
    if (options_.prepare) options_.prepare(index, local);
    if (!local_nonfinite_ && !torch::isfinite(local).all().item<bool>()) local_nonfinite_ = true;
    if (active_ == compressed_.get() && bypasses(index)) return;  // end_step sends it
    const std::vector<std::size_t>& ids =
        active_ == compressed_.get() ? compressed_ids_ : dense_ids_;
    active_->mark_ready(ids[index], std::span<float>(local.data_ptr<float>(),
                                                     static_cast<std::size_t>(local.numel())));
  } catch (...) {
    hook_error_ = std::current_exception();
  }
}

bool GradientSync::end_step() {
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
  buckets->finish();
  if (buckets == compressed_.get()) {
    compressed_started_ = true;
    if (!vectors_.empty()) allreduce_vectors();
  }

  // The reduced values are bit-identical on every rank, but a rank's own non-finite gradient
  // may not reach them (a top-k selection can leave a NaN behind in its residual), so the ranks
  // agree explicitly: one tiny allreduce per step.
  bool reduced_finite = true;
  for (const torch::Tensor& local : local_) {
    if (!torch::isfinite(local).all().item<bool>()) {
      reduced_finite = false;
      break;
    }
  }
  std::array<float, 1> flag = {(local_nonfinite_ || !reduced_finite) ? 1.0f : 0.0f};
  allreduce(comm_, std::span<float>(flag));
  if (flag[0] != 0) {
    for (auto& [name, p] : params_) p.mutable_grad() = torch::Tensor();
    if (buckets == compressed_.get() && options_.error_feedback) {
      if (!snapshot_.empty()) {
        compressed_->restore_state(snapshot_);
      } else {
        // The first compressed step failed: start again from empty residuals.
        compressed_ = make_buckets(true);
        compressed_started_ = false;
      }
    }
    return false;
  }
  for (std::size_t i = 0; i < params_.size(); ++i) params_[i].second.mutable_grad() = local_[i];
  return true;
}

std::vector<std::byte> GradientSync::save_state() const {
  if (!compressed_ || !compressed_started_) return {};
  return compressed_->save_state();
}

void GradientSync::restore_state(const std::vector<std::byte>& image) {
  if (image.empty()) return;
  require(compressed_ != nullptr, "checkpoint",
          "holds error-feedback state but this run has no compression method");
  compressed_->restore_state(image);
  compressed_started_ = true;
}

}  // namespace frugal::train
