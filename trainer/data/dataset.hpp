#pragma once

// The contract between the trainer's data pipeline (trainer/data/) and the training loop.
// Datasets hand out single decoded, augmented examples; the sampler decides which examples a
// rank sees in which order; the loader turns a rank's index list into prefetched batches.

#include <torch/torch.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "frugal/enum_names.hpp"

namespace frugal::train {

enum class Split { Train, Val };

}  // namespace frugal::train

namespace frugal {

// The split's name is also its folder in an image folder (DIR/train, DIR/val).
template <>
struct EnumNames<train::Split> {
  static constexpr std::array<EnumName<train::Split>, 2> table{
      {{train::Split::Train, "train"}, {train::Split::Val, "val"}}};
};

}  // namespace frugal

namespace frugal::train {

struct DataOptions {
  // Output side length for image folders (random-resized-crop for Train, resize + centre crop
  // for Val). IDX datasets keep their native size (28 for Fashion-MNIST).
  int image_size = 224;
  // Image folders: a corrupt or undecodable file is skipped with a warning instead of an error.
  bool skip_corrupt = false;
  // Train-split augmentation (pad + random crop + flip for IDX, random-resized-crop + flip for
  // folders). Val never augments.
  bool augment = true;
};

// One decoded example: a float tensor [C, H, W], normalised, and its class.
struct Example {
  torch::Tensor image;
  std::int64_t label = 0;
};

// A read-only, thread-safe collection of examples. get() may be called from several loader
// threads at once; all randomness comes from `seed`, so the same (index, seed) always gives the
// same tensor, whichever thread or rank asks.
class Dataset {
 public:
  virtual ~Dataset() = default;
  virtual std::size_t size() const = 0;
  virtual std::int64_t num_classes() const = 0;
  virtual std::int64_t channels() const = 0;
  virtual std::int64_t image_size() const = 0;  // H = W of get()'s output
  // Throws frugal::Error(InvalidArgument) naming the file on a corrupt example that is not
  // skipped.
  virtual Example get(std::size_t index, std::uint64_t seed) const = 0;
  virtual std::string describe() const = 0;  // e.g. "fashion-mnist train: 60000 images, 10 classes"

  // The same example as get(index, seed), written into `out` (channels() · image_size()²
  // floats, [C, H, W]); returns its label. The Loader uses it to decode straight into the batch
  // tensor; the default calls get() and copies, the built-in datasets avoid the per-example
  // tensor.
  virtual std::int64_t get_into(std::size_t index, std::uint64_t seed, std::span<float> out) const;
};

// spec: "fashion-mnist" (IDX files from /usr/share/datasets/fashion-mnist, gzip or plain),
// "idx:DIR" (train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], t10k-…) or
// "imagefolder:DIR" (DIR/train/<class>/*.JPEG, DIR/val/<class>/*). Throws
// frugal::Error(InvalidArgument) with a message naming the missing/bad file or folder.
std::unique_ptr<Dataset> make_dataset(const std::string& spec, Split split,
                                      const DataOptions& options = {});

// Every rank a disjoint shard of one global permutation per epoch (from seed and epoch), taken
// strided: rank r gets global positions r, r + P, r + 2P, … of the permutation, so local
// batch s of every rank (local batch size b) together form global positions [s·bP, (s+1)·bP).
// `limit` (0 = all) keeps only the first `limit` examples of the dataset before shuffling. The
// tail that does not fill a whole global batch of P examples is dropped so every rank has the
// same count.
class DistributedSampler {
 public:
  DistributedSampler(std::size_t dataset_size, int rank, int world_size, std::uint64_t seed,
                     bool shuffle, std::size_t limit = 0);
  std::vector<std::size_t> indices(std::int64_t epoch) const;  // this rank's shard, in order
  std::size_t per_rank() const;

 private:
  std::size_t used_;  // min(limit, dataset_size), or dataset_size for limit 0
  int rank_;
  int world_size_;
  std::uint64_t seed_;
  bool shuffle_;
};

struct Batch {
  torch::Tensor images;  // [B, C, H, W] float
  torch::Tensor labels;  // [B] int64
};

struct LoaderOptions {
  std::size_t batch_size = 128;  // per rank, per step (micro-batch)
  int threads = 2;
  std::size_t prefetch = 4;  // batches decoded ahead of the consumer
  bool drop_last = true;     // drop a final partial batch
};

// The seed the Loader passes to Dataset::get_into (equivalently get) for dataset example
// `index` in an epoch.
std::uint64_t example_seed(std::uint64_t epoch_seed, std::size_t index);

// Decodes `indices` (in order) into batches on worker threads with a bounded queue. The example
// at position i uses seed mix(epoch_seed, index) so results do not depend on thread timing.
// next() returns std::nullopt at the end and rethrows a worker's exception.
class Loader {
 public:
  Loader(const Dataset& dataset, std::vector<std::size_t> indices, std::uint64_t epoch_seed,
         LoaderOptions options);
  ~Loader();  // stops and joins the workers
  Loader(const Loader&) = delete;
  Loader& operator=(const Loader&) = delete;
  std::optional<Batch> next();
  std::size_t batches() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace frugal::train
