#include <atomic>
#include <condition_variable>
#include <cstring>
#include <exception>
#include <frugal/error.hpp>
#include <map>
#include <mutex>
#include <thread>

#include "dataset.hpp"
#include "random.hpp"

namespace frugal::train {

std::uint64_t example_seed(std::uint64_t epoch_seed, std::size_t index) {
  return mix_seed(epoch_seed, static_cast<std::uint64_t>(index));
}

// Workers claim batch numbers in increasing order, at most `prefetch` ahead of the consumer,
// and park finished batches in `ready` keyed by number; next() hands them out strictly in
// order, so the result is the same for any thread count or timing. Workers copy examples into
// a preallocated batch with memcpy rather than torch::stack, so no loader thread enters
// LibTorch's intra-op thread pool.
struct Loader::Impl {
  struct Result {
    std::optional<Batch> batch;
    std::exception_ptr error;
  };

  const Dataset& dataset;
  std::vector<std::size_t> indices;
  std::uint64_t epoch_seed;
  LoaderOptions options;
  std::size_t batch_count;

  std::mutex mutex;
  std::condition_variable work_cv;   // a worker may claim more
  std::condition_variable ready_cv;  // a batch was parked
  std::size_t claimed = 0;           // next batch number to claim
  std::size_t consumed = 0;          // next batch number to hand out
  std::map<std::size_t, Result> ready;
  std::exception_ptr failed;  // sticky: rethrown by every next() after the first
  std::atomic<bool> stop{false};
  std::vector<std::thread> workers;

  Impl(const Dataset& d, std::vector<std::size_t> idx, std::uint64_t seed, LoaderOptions o)
      : dataset(d), indices(std::move(idx)), epoch_seed(seed), options(o) {
    require(options.batch_size >= 1, "batch_size", "must be >= 1");
    require(options.threads >= 1, "threads", "must be >= 1");
    require(options.prefetch >= 1, "prefetch", "must be >= 1");
    batch_count = options.drop_last
                      ? indices.size() / options.batch_size
                      : (indices.size() + options.batch_size - 1) / options.batch_size;
    const auto count =
        std::min<std::size_t>(static_cast<std::size_t>(options.threads), batch_count);
    try {
      for (std::size_t t = 0; t < count; ++t) workers.emplace_back([this] { work(); });
    } catch (...) {
      shut_down();
      throw;
    }
  }

  ~Impl() { shut_down(); }

  void shut_down() {
    {
      std::lock_guard lock(mutex);
      stop = true;
    }
    work_cv.notify_all();
    for (std::thread& worker : workers) worker.join();
  }

  void work() {
    while (true) {
      std::size_t number = 0;
      {
        std::unique_lock lock(mutex);
        work_cv.wait(lock, [&] {
          return stop || claimed >= batch_count || claimed < consumed + options.prefetch;
        });
        if (stop || claimed >= batch_count) return;
        number = claimed++;
      }
      Result result;
      try {
        result.batch = build(number);
      } catch (...) {
        result.error = std::current_exception();
      }
      if (!result.batch && !result.error) return;  // stopped mid-batch
      {
        std::lock_guard lock(mutex);
        ready.emplace(number, std::move(result));
      }
      ready_cv.notify_all();
    }
  }

  std::optional<Batch> build(std::size_t number) {
    const std::size_t first = number * options.batch_size;
    const std::size_t count = std::min(options.batch_size, indices.size() - first);
    const std::int64_t channels = dataset.channels(), side = dataset.image_size();
    const auto b = static_cast<std::int64_t>(count);
    Batch batch{torch::empty({b, channels, side, side}, torch::kFloat32),
                torch::empty({b}, torch::kInt64)};
    const std::size_t example_floats = static_cast<std::size_t>(channels * side * side);
    float* images = batch.images.data_ptr<float>();
    std::int64_t* labels = batch.labels.data_ptr<std::int64_t>();
    for (std::size_t i = 0; i < count; ++i) {
      if (stop.load(std::memory_order_relaxed)) return std::nullopt;
      const std::size_t index = indices[first + i];
      Example example = dataset.get(index, example_seed(epoch_seed, index));
      const torch::Tensor image = example.image.contiguous();
      if (image.scalar_type() != torch::kFloat32 || image.dim() != 3 || image.size(0) != channels ||
          image.size(1) != side || image.size(2) != side) {
        throw Error(ErrorCode::Internal, "dataset '" + dataset.describe() + "' returned example " +
                                             std::to_string(index) +
                                             " with a shape other than its declared [C, S, S]");
      }
      std::memcpy(images + i * example_floats, image.data_ptr<float>(),
                  example_floats * sizeof(float));
      labels[i] = example.label;
    }
    return batch;
  }

  std::optional<Batch> next() {
    if (failed) std::rethrow_exception(failed);
    std::unique_lock lock(mutex);
    if (consumed >= batch_count) return std::nullopt;
    ready_cv.wait(lock, [&] { return ready.count(consumed) != 0; });
    auto node = ready.extract(consumed);
    ++consumed;
    lock.unlock();
    work_cv.notify_all();
    Result& result = node.mapped();
    if (result.error) {
      failed = result.error;
      std::rethrow_exception(failed);
    }
    return std::move(result.batch);
  }
};

Loader::Loader(const Dataset& dataset, std::vector<std::size_t> indices, std::uint64_t epoch_seed,
               LoaderOptions options)
    : impl_(std::make_unique<Impl>(dataset, std::move(indices), epoch_seed, options)) {}

Loader::~Loader() = default;

std::optional<Batch> Loader::next() {
  return impl_->next();
}

std::size_t Loader::batches() const {
  return impl_->batch_count;
}

}  // namespace frugal::train
