#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>

#include "agreement.hpp"
#include "byte_image.hpp"
#include "frugal/collectives/buckets.hpp"
#include "frugal/collectives/elastic.hpp"
#include "frugal/compression/rng.hpp"
#include "frugal/error.hpp"
#include "lazy_require.hpp"

namespace frugal {

namespace {

constexpr std::uint32_t kMagic = 0x42475246;  // "FRGB"
constexpr std::uint32_t kVersion = 1;

// FNV-1a: a stable hash of the bucket's tensor names and sizes, so a checkpoint's state finds
// its bucket again even if the model registers tensors in a different process.
std::uint64_t fnv1a(std::uint64_t h, const void* data, std::size_t size) {
  const auto* p = static_cast<const unsigned char*>(data);
  for (std::size_t i = 0; i < size; ++i) {
    h ^= p[i];
    h *= 0x100000001b3ULL;
  }
  return h;
}

using SavedStates = std::vector<std::pair<std::uint64_t, std::span<const std::byte>>>;

// The (bucket key, AllreduceState image) entries of a save_state() image, in bucket order.
SavedStates parse_image(std::span<const std::byte> image) {
  detail::ImageReader r(image, "GradientBuckets state");
  if (r.get<std::uint32_t>() != kMagic || r.get<std::uint32_t>() != kVersion) {
    r.malformed("not a bucket state");
  }
  const auto count = r.get<std::uint64_t>();
  SavedStates saved;
  for (std::uint64_t i = 0; i < count; ++i) {
    const auto key = r.get<std::uint64_t>();
    saved.emplace_back(key, r.get_blob());
  }
  // Bytes past the last record mean a corrupt or concatenated image, not one save_state() wrote.
  if (!r.done()) {
    r.malformed(std::to_string(r.rest().size()) + " trailing bytes after its " +
                std::to_string(count) + " records (image is " + std::to_string(image.size()) +
                " bytes)");
  }
  return saved;
}

detail::ImageWriter start_image(std::size_t buckets) {
  detail::ImageWriter w;
  w.put(kMagic);
  w.put(kVersion);
  w.put<std::uint64_t>(buckets);
  return w;
}

}  // namespace

GradientBuckets::GradientBuckets(Communicator& comm, BucketOptions options)
    : comm_(comm), options_(std::move(options)) {
  require(options_.bucket_bytes > 0, "bucket_bytes", "must be positive");
  options_.allreduce.state = nullptr;
  options_.allreduce.stats = nullptr;
  options_.allreduce.segments = {};  // each bucket passes its own
}

GradientBuckets::~GradientBuckets() {
  wait_all_launched();
}

std::size_t GradientBuckets::add(std::string name, std::size_t count, std::size_t dims) {
  const std::size_t id = add(std::move(name), count);
  tensors_[id].dense = dims <= 1 && options_.dense_vectors &&
                       options_.allreduce.compression.method != compression::Method::None;
  return id;
}

std::size_t GradientBuckets::add(std::string name, std::size_t count) {
  require(buckets_.empty(), "add", "tensors can only be registered before the first step");
  require(!name.empty(), "name", "must not be empty");
  require(count > 0, "count", [&] { return "tensor '" + name + "' has no elements"; });
  for (const Tensor& t : tensors_) {
    require(t.name != name, "name", [&] { return "tensor '" + name + "' is registered twice"; });
  }
  Tensor t;
  t.name = std::move(name);
  t.count = count;
  tensors_.push_back(std::move(t));
  return tensors_.size() - 1;
}

void GradientBuckets::freeze_layout() {
  require(!tensors_.empty(), "tensors", "no tensor registered");
  const std::size_t capacity = std::max<std::size_t>(1, options_.bucket_bytes / sizeof(float));
  // Two buckets fill side by side, compressed and dense; each takes its place in the launch
  // order when it is closed (full, or at the end), so a dense bucket of vectors spread over the
  // whole backward does not hold back the compressed buckets that fill before it does.
  std::vector<Bucket> open(2);
  open[1].dense = true;
  const auto close = [&](Bucket& b) {
    if (b.tensors.empty()) return;
    const bool dense = b.dense;
    for (std::size_t id : b.tensors) tensors_[id].bucket = buckets_.size();
    buckets_.push_back(std::move(b));
    b = Bucket{};
    b.dense = dense;
  };
  for (std::size_t id = 0; id < tensors_.size(); ++id) {
    Tensor& t = tensors_[id];
    Bucket& b = open[t.dense ? 1 : 0];
    if (!b.data.empty() && b.data.size() + t.count > capacity) close(b);
    t.offset = b.data.size();
    b.tensors.push_back(id);
    b.segments.push_back(t.count);
    b.data.resize(b.data.size() + t.count);
  }
  // The bucket holding the last-registered tensor (first in backward) closes last.
  const bool last_dense = tensors_.back().dense;
  close(open[last_dense ? 0 : 1]);
  close(open[last_dense ? 1 : 0]);
  for (Bucket& b : buckets_) {
    std::uint64_t h = 0xcbf29ce484222325ULL;
    for (std::size_t id : b.tensors) {
      h = fnv1a(h, tensors_[id].name.data(), tensors_[id].name.size());
      const std::uint64_t count = tensors_[id].count;
      h = fnv1a(h, &count, sizeof count);
    }
    if (b.dense) h = fnv1a(h, "dense", 5);
    b.key = h;
    b.pending = b.tensors.size();
    b.state = std::make_unique<AllreduceState>();
    if (skips_non_finite()) b.before_step = std::make_unique<AllreduceState>();
  }
}

std::size_t GradientBuckets::bucket_of(std::size_t id) const {
  require(id < tensors_.size(), "id", [&] { return "no tensor " + std::to_string(id); });
  require(!buckets_.empty(), "bucket_of", "the layout is fixed at the first mark_ready");
  return tensors_[id].bucket;
}

bool GradientBuckets::bucket_is_dense(std::size_t bucket) const {
  require(bucket < buckets_.size(), "bucket",
          [&] { return "no bucket " + std::to_string(bucket); });
  return buckets_[bucket].dense;
}

AllreduceHandle::State GradientBuckets::bucket_state(std::size_t bucket) const {
  require(bucket < buckets_.size(), "bucket",
          [&] { return "no bucket " + std::to_string(bucket); });
  const Bucket& b = buckets_[bucket];
  return b.launched ? b.handle.state() : AllreduceHandle::State::Queued;
}

const AllreduceState& GradientBuckets::allreduce_state(std::size_t bucket) const {
  require(bucket < buckets_.size(), "bucket",
          [&] { return "no bucket " + std::to_string(bucket); });
  return *buckets_[bucket].state;
}

void GradientBuckets::scale_residuals(float factor) {
  const bool in_step = std::any_of(buckets_.begin(), buckets_.end(),
                                   [](const Bucket& b) { return b.pending != b.tensors.size(); });
  require(!in_step, "scale_residuals", "only between steps (a tensor was marked ready)");
  require(std::isfinite(factor) && factor >= 0.0f, "factor",
          [&] { return "must be finite and >= 0, got " + std::to_string(factor); });
  for (Bucket& b : buckets_) {
    b.state->scale_residuals(factor);
    if (undo_possible_ && b.before_step) b.before_step->scale_residuals(factor);
  }
}

void GradientBuckets::mark_ready(std::string_view name, std::span<float> grad) {
  for (std::size_t id = 0; id < tensors_.size(); ++id) {
    if (tensors_[id].name == name) return mark_ready(id, grad);
  }
  throw Error(ErrorCode::InvalidArgument,
              "mark_ready: no tensor named '" + std::string(name) + "'");
}

void GradientBuckets::mark_ready(std::size_t id, std::span<float> grad) {
  require(id < tensors_.size(), "id", [&] { return "no tensor " + std::to_string(id); });
  if (buckets_.empty()) freeze_layout();
  Tensor& t = tensors_[id];
  require(grad.size() == t.count, "grad", [&] {
    return "tensor '" + t.name + "' has " + std::to_string(t.count) + " elements, got " +
           std::to_string(grad.size());
  });
  require(t.grad.empty(), "mark_ready",
          [&] { return "tensor '" + t.name + "' was already marked this step"; });
  Bucket& b = buckets_[t.bucket];
  std::copy(grad.begin(), grad.end(), b.data.begin() + static_cast<std::ptrdiff_t>(t.offset));
  t.grad = grad;
  if (--b.pending == 0) launch_ready_buckets();
}

void GradientBuckets::launch_ready_buckets() {
  // Buckets start in index order on every rank, whatever order their tensors became ready in:
  // the launch order is the collective order.
  while (next_launch_ < buckets_.size() && buckets_[next_launch_].pending == 0) {
    Bucket& b = buckets_[next_launch_++];
    undo_possible_ = false;
    if (b.before_step) *b.before_step = *b.state;
    AllreduceOptions options = options_.allreduce;
    // Without this every bucket would draw the same number for its element i at a step: one
    // stochastic rounding error, repeated in every layer, instead of independent ones.
    options.seed = compression::stream_seed(options.seed, b.key);
    if (b.dense) {
      options.compression = compression::CompressionConfig{};
      options.error_feedback = false;
      options.algorithm = AllreduceAlgorithm::Auto;
    }
    options.segments = b.segments;
    options.state = b.state.get();
    b.stats = AllreduceStats{};
    options.stats = &b.stats;
    b.handle = allreduce_async(comm_, b.data, options);
    b.launched = true;
  }
}

void GradientBuckets::wait_all_launched() noexcept {
  for (Bucket& b : buckets_) {
    if (!b.launched) continue;
    try {
      b.handle.wait();
    } catch (...) {
    }
  }
}

void GradientBuckets::finish() {
  require(!buckets_.empty(), "finish", "no tensor was marked ready");
  const auto missing = std::find_if(tensors_.begin(), tensors_.end(),
                                    [](const Tensor& t) { return t.grad.empty(); });
  if (missing != tensors_.end()) {
    // What was launched must end before this object's buffers can be reused or freed.
    wait_all_launched();
    for (Tensor& t : tensors_) t.grad = {};
    for (Bucket& b : buckets_) {
      b.pending = b.tensors.size();
      b.launched = false;
    }
    next_launch_ = 0;
    throw Error(ErrorCode::InvalidArgument,
                "finish: tensor '" + missing->name + "' was not marked ready this step");
  }
  std::exception_ptr first_error;
  bool skipped = false;
  last_step_wire_bytes_ = 0;
  for (Bucket& b : buckets_) {
    try {
      b.handle.wait();
      skipped |= b.stats.non_finite_skipped;
      last_step_wire_bytes_ += b.stats.wire_bytes_sent;
    } catch (...) {
      if (!first_error) first_error = std::current_exception();
    }
  }
  if (!first_error && skips_non_finite()) {
    // A bucket skipped on every rank, or a sum that overflowed (bit-identical everywhere): the
    // step as a whole is skipped alike on every rank, so no bucket may keep its progress.
    for (std::size_t i = 0; i < buckets_.size() && !skipped; ++i) {
      skipped = detail::has_non_finite(std::as_bytes(std::span(buckets_[i].data)), DType::Float32);
    }
    if (skipped) restore_states_before_step();
    undo_possible_ = !skipped;
  }
  last_step_skipped_ = skipped;
  for (Bucket& b : buckets_) {
    for (std::size_t id : b.tensors) {
      Tensor& t = tensors_[id];
      if (!first_error && !skipped) {
        std::copy_n(b.data.begin() + static_cast<std::ptrdiff_t>(t.offset), t.count,
                    t.grad.begin());
      }
      t.grad = {};
    }
    b.pending = b.tensors.size();
    b.launched = false;
  }
  next_launch_ = 0;
  if (first_error) std::rethrow_exception(first_error);
}

void GradientBuckets::restore_states_before_step() noexcept {
  for (Bucket& b : buckets_) {
    if (b.before_step) std::swap(b.state, b.before_step);
  }
}

void GradientBuckets::undo_last_step() {
  require(skips_non_finite(), "undo_last_step", "needs allreduce.non_finite = skip");
  require(undo_possible_, "undo_last_step",
          "only once, after a finish() that reduced (not skipped) and before the next step");
  restore_states_before_step();
  undo_possible_ = false;
  last_step_skipped_ = true;
}

std::vector<std::byte> GradientBuckets::save_state() const {
  require(!buckets_.empty(), "save_state", "the layout is fixed at the first mark_ready");
  detail::ImageWriter w = start_image(buckets_.size());
  for (const Bucket& b : buckets_) {
    w.put(b.key);
    w.put_blob(b.state->save());
  }
  return w.take();
}

std::vector<std::vector<std::byte>> GradientBuckets::redistribute_state(
    std::span<const std::vector<std::byte>> images, int new_ranks, const BucketOptions& options) {
  require(!images.empty(), "images", "no images to redistribute");
  std::vector<SavedStates> saved;
  for (const std::vector<std::byte>& image : images) saved.push_back(parse_image(image));
  const SavedStates& first = saved.front();
  for (std::size_t i = 1; i < saved.size(); ++i) {
    const bool same = saved[i].size() == first.size() &&
                      std::equal(first.begin(), first.end(), saved[i].begin(),
                                 [](const auto& a, const auto& b) { return a.first == b.first; });
    require(same, "images", [&] {
      return "images[" + std::to_string(i) +
             "] holds other buckets than images[0] (another model?)";
    });
  }
  std::vector<detail::ImageWriter> out;
  for (int j = 0; j < new_ranks; ++j) out.push_back(start_image(first.size()));
  for (std::size_t b = 0; b < first.size(); ++b) {
    std::vector<AllreduceState> states(saved.size());
    for (std::size_t i = 0; i < saved.size(); ++i) states[i].restore(saved[i][b].second);
    const std::vector<AllreduceState> cut =
        redistribute_states(states, new_ranks, options.allreduce);
    for (std::size_t j = 0; j < out.size(); ++j) {
      out[j].put(first[b].first);
      out[j].put_blob(cut[j].save());
    }
  }
  std::vector<std::vector<std::byte>> cut_images;
  for (detail::ImageWriter& w : out) cut_images.push_back(w.take());
  return cut_images;
}

void GradientBuckets::restore_state(std::span<const std::byte> image) {
  if (buckets_.empty()) freeze_layout();
  const SavedStates saved = parse_image(image);
  // Check everything before changing anything.
  std::vector<AllreduceState> restored;
  for (const Bucket& b : buckets_) {
    if (b.dense) {
      // No residual to restore (and images from before dense vectors have no such bucket).
      restored.emplace_back();
      continue;
    }
    const auto it = std::find_if(saved.begin(), saved.end(),
                                 [&](const auto& entry) { return entry.first == b.key; });
    if (it == saved.end()) {
      throw Error(ErrorCode::Mismatch,
                  "GradientBuckets state image has no state for the bucket holding tensor '" +
                      tensors_[b.tensors.front()].name + "' (was the model changed?)");
    }
    restored.emplace_back();
    restored.back().restore(it->second);
  }
  for (std::size_t i = 0; i < buckets_.size(); ++i) *buckets_[i].state = std::move(restored[i]);
  undo_possible_ = false;  // the copies from before the last step predate this image
}

}  // namespace frugal
