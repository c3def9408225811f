// IDX files, the IDX datasets (fashion-mnist, idx:DIR), normalisation and augmentation.

#include <array>
#include <cmath>
#include <numeric>
#include <set>
#include <tuple>

#include "data/dataset.hpp"
#include "data/idx_dataset.hpp"
#include "data/idx_file.hpp"
#include "data_test_support.hpp"

namespace frugal::train {
namespace {

using testing::expect_invalid_argument;
using testing::ScratchDir;

std::vector<std::uint8_t> iota_bytes(std::size_t count, std::uint8_t first) {
  std::vector<std::uint8_t> bytes(count);
  std::iota(bytes.begin(), bytes.end(), first);
  return bytes;
}

TEST(IdxFile, ParsesPlainAndGzipExactly) {
  for (const bool gzip : {false, true}) {
    ScratchDir dir;
    const auto pixels = iota_bytes(3 * 2 * 2, 10);
    testing::write_idx_split(dir.path(), "train", 2, pixels, {2, 0, 1}, gzip);
    const std::string suffix = gzip ? ".gz" : "";
    const IdxImages images = read_idx_images(dir.path() / ("train-images-idx3-ubyte" + suffix));
    EXPECT_EQ(images.count, 3u);
    EXPECT_EQ(images.rows, 2u);
    EXPECT_EQ(images.cols, 2u);
    EXPECT_EQ(images.pixels, pixels);
    const auto second = images.image(1);
    EXPECT_EQ(std::vector<std::uint8_t>(second.begin(), second.end()),
              (std::vector<std::uint8_t>{14, 15, 16, 17}));
    EXPECT_EQ(read_idx_labels(dir.path() / ("train-labels-idx1-ubyte" + suffix)),
              (std::vector<std::uint8_t>{2, 0, 1}));
    // The gzip file really is compressed (magic 1f 8b), the plain one starts with the IDX magic.
    const auto raw = testing::read_bytes(dir.path() / ("train-images-idx3-ubyte" + suffix));
    EXPECT_EQ(raw[0], gzip ? 0x1f : 0x00);
  }
}

TEST(IdxFile, HandWrittenBytesParse) {
  // Written byte by byte rather than with write_idx, so the reader is checked against the
  // format itself: magic 0x00000803, dims 2 x 1 x 3 big-endian, then 6 pixels.
  ScratchDir dir;
  const std::vector<std::uint8_t> bytes = {0, 0, 8, 3, 0, 0, 0, 2, 0,   0,   0,
                                           1, 0, 0, 0, 3, 1, 2, 3, 250, 251, 252};
  testing::write_bytes(dir.path() / "x", bytes);
  const IdxImages images = read_idx_images(dir.path() / "x");
  EXPECT_EQ(images.count, 2u);
  EXPECT_EQ(images.rows, 1u);
  EXPECT_EQ(images.cols, 3u);
  EXPECT_EQ(images.pixels, (std::vector<std::uint8_t>{1, 2, 3, 250, 251, 252}));
}

TEST(IdxFile, WrongMagicNamesTheFile) {
  ScratchDir dir;
  testing::write_idx_split(dir.path(), "train", 2, iota_bytes(8, 0), {0, 1}, false);
  // A labels file (magic 0x801) where images are expected, and vice versa.
  const auto labels = dir.path() / "train-labels-idx1-ubyte";
  const auto images = dir.path() / "train-images-idx3-ubyte";
  expect_invalid_argument([&] { read_idx_images(labels); }, {labels.string(), "magic"});
  expect_invalid_argument([&] { read_idx_labels(images); }, {images.string(), "magic"});
  // A non-ubyte type code (0x0D = float) is refused too.
  auto bytes = testing::read_bytes(images);
  bytes[2] = 0x0D;
  testing::write_bytes(images, bytes);
  expect_invalid_argument([&] { read_idx_images(images); }, {images.string(), "0x00000D03"});
}

TEST(IdxFile, TruncatedAndOverlongFilesNameTheFile) {
  ScratchDir dir;
  testing::write_idx_split(dir.path(), "train", 4, iota_bytes(3 * 16, 0), {0, 1, 2}, false);
  const auto images = dir.path() / "train-images-idx3-ubyte";
  auto bytes = testing::read_bytes(images);
  testing::write_bytes(images, std::vector<std::uint8_t>(bytes.begin(), bytes.end() - 5));
  expect_invalid_argument([&] { read_idx_images(images); }, {images.string(), "truncated"});
  testing::write_bytes(images, std::vector<std::uint8_t>(bytes.begin(), bytes.begin() + 10));
  expect_invalid_argument([&] { read_idx_images(images); }, {images.string(), "truncated"});
  testing::write_bytes(images, {});
  expect_invalid_argument([&] { read_idx_images(images); }, {images.string(), "truncated"});
  bytes.push_back(7);
  testing::write_bytes(images, bytes);
  expect_invalid_argument([&] { read_idx_images(images); }, {images.string(), "trailing"});

  // A gzip stream cut in the middle.
  testing::write_idx_split(dir.path(), "t10k", 4, iota_bytes(3 * 16, 0), {0, 1, 2}, true);
  const auto gz = dir.path() / "t10k-images-idx3-ubyte.gz";
  const auto compressed = testing::read_bytes(gz);
  testing::write_bytes(gz, std::vector<std::uint8_t>(compressed.begin(),
                                                     compressed.begin() + compressed.size() / 2));
  expect_invalid_argument([&] { read_idx_images(gz); }, {gz.string()});
  expect_invalid_argument([&] { read_idx_images(dir.path() / "absent"); },
                          {(dir.path() / "absent").string(), "no such file"});
}

TEST(IdxDataset, CountMismatchAndMissingFilesNameTheFiles) {
  ScratchDir dir;
  testing::write_idx_split(dir.path(), "train", 2, iota_bytes(12, 0), {0, 1, 2}, true);
  const auto labels = dir.path() / "train-labels-idx1-ubyte.gz";
  const std::uint32_t two[] = {2};
  write_idx(labels, two, std::vector<std::uint8_t>{0, 1}, true);
  const std::string spec = "idx:" + dir.path().string();
  expect_invalid_argument([&] { make_dataset(spec, Split::Train); },
                          {"train-images-idx3-ubyte.gz", labels.string(), "3 images", "2 labels"});
  // No t10k files at all: the message names both candidates.
  expect_invalid_argument([&] { make_dataset(spec, Split::Val); },
                          {"t10k-images-idx3-ubyte", "t10k-images-idx3-ubyte.gz", "missing"});
  expect_invalid_argument(
      [&] { make_dataset("idx:" + (dir.path() / "nope").string(), Split::Train); },
      {(dir.path() / "nope").string()});
  expect_invalid_argument([&] { make_dataset("mnist", Split::Train); }, {"unknown data spec"});
  expect_invalid_argument([&] { make_dataset("idx:", Split::Train); }, {"empty"});
}

TEST(IdxDataset, HandMadeDirectoryNormalisesWithTrainStatistics) {
  ScratchDir dir;
  const std::vector<std::uint8_t> train = {0, 255, 0, 255, 51, 102, 153, 204};  // 2 images 2x2
  testing::write_idx_split(dir.path(), "train", 2, train, {1, 3}, false);
  testing::write_idx_split(dir.path(), "t10k", 2, {255, 0, 0, 51}, {2}, true);
  double mean = 0, sq = 0;
  for (const auto p : train) mean += p / 255.0 / train.size();
  for (const auto p : train) sq += std::pow(p / 255.0 - mean, 2) / train.size();
  const double std = std::sqrt(sq);

  DataOptions options;
  options.augment = false;
  const std::string spec = "idx:" + dir.path().string();
  const auto train_set = make_dataset(spec, Split::Train, options);
  EXPECT_EQ(train_set->size(), 2u);
  EXPECT_EQ(train_set->num_classes(), 4);  // 1 + largest train label
  EXPECT_EQ(train_set->channels(), 1);
  EXPECT_EQ(train_set->image_size(), 2);
  const Example second = train_set->get(1, 123);
  EXPECT_EQ(second.label, 3);
  ASSERT_EQ(second.image.sizes(), (c10::IntArrayRef{1, 2, 2}));
  for (int i = 0; i < 4; ++i) {
    EXPECT_NEAR(second.image.view(-1)[i].item<float>(), (train[4 + i] / 255.0 - mean) / std, 1e-5);
  }
  // Val uses the train statistics, not its own.
  const auto val = make_dataset(spec, Split::Val, options);
  EXPECT_EQ(val->size(), 1u);
  EXPECT_EQ(val->num_classes(), 4);
  const Example v = val->get(0, 9);
  EXPECT_EQ(v.label, 2);
  EXPECT_NEAR(v.image[0][0][0].item<float>(), (1.0 - mean) / std, 1e-5);
  EXPECT_NEAR(v.image[0][1][1].item<float>(), (0.2 - mean) / std, 1e-5);
  expect_invalid_argument([&] { train_set->get(2, 0); }, {"out of range"});

  // A val label outside the train classes is refused, naming the labels file.
  testing::write_idx_split(dir.path(), "t10k", 2, {255, 0, 0, 51}, {4}, true);
  expect_invalid_argument([&] { make_dataset(spec, Split::Val, options); },
                          {"t10k-labels-idx1-ubyte.gz", "label 4"});
}

// The output of pad_crop_flip computed the slow, obvious way: build the padded image, cut the
// window, mirror it.
std::vector<float> reference_augment(const std::vector<std::uint8_t>& image, int size, int pad,
                                     IdxAugmentation aug) {
  const int padded_size = size + 2 * pad;
  std::vector<int> padded(static_cast<std::size_t>(padded_size * padded_size), 0);
  for (int y = 0; y < size; ++y)
    for (int x = 0; x < size; ++x) padded[(y + pad) * padded_size + x + pad] = image[y * size + x];
  std::vector<float> out(static_cast<std::size_t>(size * size));
  for (int y = 0; y < size; ++y) {
    for (int x = 0; x < size; ++x) {
      const int cropped = padded[(y + aug.dy) * padded_size + x + aug.dx];
      out[y * size + (aug.flip ? size - 1 - x : x)] = static_cast<float>(cropped);
    }
  }
  return out;
}

TEST(IdxAugmentation, PadCropFlipOnAHandMadeImage) {
  const int size = 3, pad = 4;
  const std::vector<std::uint8_t> image = {1, 2, 3, 4, 5, 6, 7, 8, 9};
  std::vector<float> out(9);
  // mean 0, std 1/255 keeps pixel units.
  const float unit = 1.0f / 255.0f;
  pad_crop_flip(image, size, pad, {pad, pad, true}, 0, unit, out);
  EXPECT_EQ(out, (std::vector<float>{3, 2, 1, 6, 5, 4, 9, 8, 7}));
  pad_crop_flip(image, size, pad, {pad + 1, pad - 1, false}, 0, unit, out);
  EXPECT_EQ(out, (std::vector<float>{0, 0, 0, 2, 3, 0, 5, 6, 0}));
  pad_crop_flip(image, size, pad, {0, 0, false}, 0, unit, out);
  EXPECT_EQ(out, std::vector<float>(9, 0.0f));
  for (int dx = 0; dx <= 2 * pad; ++dx)
    for (int dy = 0; dy <= 2 * pad; ++dy)
      for (const bool flip : {false, true}) {
        pad_crop_flip(image, size, pad, {dx, dy, flip}, 0, unit, out);
        ASSERT_EQ(out, reference_augment(image, size, pad, {dx, dy, flip}))
            << dx << "," << dy << "," << flip;
      }
}

TEST(IdxAugmentation, DatasetIsDeterministicPerSeedAndCoversTheCrops) {
  ScratchDir dir;
  const int size = 6;
  std::vector<std::uint8_t> image(size * size);
  std::iota(image.begin(), image.end(), 1);  // all distinct: every crop/flip looks different
  testing::write_idx_split(dir.path(), "train", size, image, {0}, false);
  const auto dataset = make_dataset("idx:" + dir.path().string(), Split::Train);
  std::set<std::tuple<int, int, bool>> seen;
  torch::Tensor previous;
  int differing = 0;
  for (std::uint64_t seed = 0; seed < 400; ++seed) {
    const torch::Tensor a = dataset->get(0, seed).image;
    EXPECT_TRUE(torch::equal(a, dataset->get(0, seed).image)) << "seed " << seed;
    if (previous.defined() && !torch::equal(a, previous)) ++differing;
    previous = a;
    const IdxAugmentation aug = draw_idx_augmentation(seed, IdxDataset::kPad);
    ASSERT_GE(aug.dx, 0);
    ASSERT_LE(aug.dx, 2 * IdxDataset::kPad);
    ASSERT_GE(aug.dy, 0);
    ASSERT_LE(aug.dy, 2 * IdxDataset::kPad);
    seen.insert({aug.dx, aug.dy, aug.flip});
    // Undo the normalisation and compare with the reference augmentation of that draw.
    const auto stats = idx_train_stats(dir.path());
    const torch::Tensor pixels = ((a * stats.std + stats.mean) * 255).round().view(-1);
    const auto expected = reference_augment(image, size, IdxDataset::kPad, aug);
    for (int i = 0; i < size * size; ++i) ASSERT_EQ(pixels[i].item<float>(), expected[i]);
  }
  EXPECT_GT(differing, 300);
  EXPECT_GT(seen.size(), 120u);  // of 9 * 9 * 2 = 162 possible

  DataOptions plain;
  plain.augment = false;
  const auto unaugmented = make_dataset("idx:" + dir.path().string(), Split::Train, plain);
  EXPECT_TRUE(torch::equal(unaugmented->get(0, 1).image, unaugmented->get(0, 2).image));
}

TEST(FashionMnist, RealFilesLoad) {
  if (!testing::have_fashion_mnist()) GTEST_SKIP() << "dataset-fashion-mnist is not installed";
  DataOptions options;
  options.augment = false;
  const auto train = make_dataset("fashion-mnist", Split::Train, options);
  const auto val = make_dataset("fashion-mnist", Split::Val, options);
  EXPECT_EQ(train->size(), 60000u);
  EXPECT_EQ(val->size(), 10000u);
  for (const auto* set : {train.get(), val.get()}) {
    EXPECT_EQ(set->num_classes(), 10);
    EXPECT_EQ(set->channels(), 1);
    EXPECT_EQ(set->image_size(), 28);
  }
  EXPECT_EQ(train->describe(), "fashion-mnist train: 60000 images, 10 classes, 1x28x28");
  // Every class appears 6000 times in train and 1000 times in val; and over the whole train
  // split the normalised pixels have mean 0 and std 1.
  std::array<int, 10> train_counts{}, val_counts{};
  double sum = 0, sum_sq = 0;
  for (std::size_t i = 0; i < train->size(); ++i) {
    const Example e = train->get(i, 0);
    ASSERT_GE(e.label, 0);
    ASSERT_LT(e.label, 10);
    ++train_counts[e.label];
    sum += e.image.sum().item<double>();
    sum_sq += e.image.square().sum().item<double>();
  }
  for (std::size_t i = 0; i < val->size(); ++i) {
    const auto label = val->get(i, 0).label;
    ASSERT_GE(label, 0);
    ASSERT_LT(label, 10);
    ++val_counts[label];
  }
  for (int c = 0; c < 10; ++c) {
    EXPECT_EQ(train_counts[c], 6000);
    EXPECT_EQ(val_counts[c], 1000);
  }
  const double n = 60000.0 * 784;
  EXPECT_NEAR(sum / n, 0.0, 1e-4);
  EXPECT_NEAR(std::sqrt(sum_sq / n - std::pow(sum / n, 2)), 1.0, 1e-4);

  // The published Fashion-MNIST statistics (mean 0.2860, std 0.3530).
  const IdxStats stats = idx_train_stats(kFashionMnistDir);
  EXPECT_NEAR(stats.mean, 0.2860, 1e-4);
  EXPECT_NEAR(stats.std, 0.3530, 1e-4);
  // Val pixels are normalised with those train statistics.
  const IdxImages raw = read_idx_images(find_idx_file(kFashionMnistDir, "t10k-images-idx3-ubyte"));
  const torch::Tensor first = val->get(0, 0).image.view(-1);
  for (int i = 0; i < 784; i += 37) {
    EXPECT_NEAR(first[i].item<float>(), (raw.pixels[i] / 255.0 - stats.mean) / stats.std, 1e-5);
  }
}

}  // namespace
}  // namespace frugal::train
