// JPEG codec, resampling, image-folder dataset and frugal-make-imagefolder.

#include <sys/wait.h>
#include <turbojpeg.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <numeric>
#include <tuple>

#include "data/dataset.hpp"
#include "data/image_folder_dataset.hpp"
#include "data/imagefolder_writer.hpp"
#include "data/jpeg_codec.hpp"
#include "data/resample.hpp"
#include "data_test_support.hpp"

namespace frugal::train {
namespace {

namespace fs = std::filesystem;
using testing::expect_invalid_argument;
using testing::ScratchDir;

const Normalisation kBytes{{0, 0, 0}, {1 / 255.0f, 1 / 255.0f, 1 / 255.0f}};

// A split's name is its folder: DIR/train, DIR/val.
TEST(Split, NamesRoundTrip) {
  const std::vector<Split> splits = enum_values<Split>();
  EXPECT_EQ(splits.size(), 2u);
  for (const Split split : splits) EXPECT_EQ(parse_enum<Split>(enum_name(split)), split);
  EXPECT_EQ(enum_choices<Split>(), "train, val");
}

TEST(Resample, IdentityFlipAndHalving) {
  // 4x4 RGB source, channel c of pixel (y, x) = 10*(4y + x) + c.
  std::vector<std::uint8_t> source(4 * 4 * 3);
  for (int p = 0; p < 16; ++p)
    for (int c = 0; c < 3; ++c) source[3 * p + c] = static_cast<std::uint8_t>(10 * p + c);
  std::vector<float> out(3 * 16);
  resample_bilinear(source, 4, 4, 3, {0, 0, 4, 4}, 4, false, kBytes, 3, out);
  for (int c = 0; c < 3; ++c)
    for (int p = 0; p < 16; ++p) EXPECT_FLOAT_EQ(out[c * 16 + p], 10 * p + c);
  resample_bilinear(source, 4, 4, 3, {0, 0, 4, 4}, 4, true, kBytes, 3, out);
  for (int y = 0; y < 4; ++y)
    for (int x = 0; x < 4; ++x) EXPECT_FLOAT_EQ(out[y * 4 + x], 10 * (4 * y + 3 - x));
  // Halving with half-pixel centres averages 2x2 blocks.
  std::vector<float> half(3 * 4);
  resample_bilinear(source, 4, 4, 3, {0, 0, 4, 4}, 2, false, kBytes, 3, half);
  EXPECT_FLOAT_EQ(half[0], 10 * (0 + 1 + 4 + 5) / 4.0f);
  EXPECT_FLOAT_EQ(half[3], 10 * (10 + 11 + 14 + 15) / 4.0f);
  // A crop box: the 2x2 block at (1, 1) at its own size.
  resample_bilinear(source, 4, 4, 3, {1, 1, 2, 2}, 2, false, kBytes, 3, half);
  EXPECT_FLOAT_EQ(half[0], 50);
  EXPECT_FLOAT_EQ(half[3], 100);
  // Grayscale replicated to 3 channels, normalised.
  const std::vector<std::uint8_t> gray = {0, 51, 102, 255};
  std::vector<float> rgb(3 * 4);
  const Normalisation norm{{0.5f, 0.25f, 0}, {0.5f, 0.25f, 1}};
  resample_bilinear(gray, 2, 2, 1, {0, 0, 2, 2}, 2, false, norm, 3, rgb);
  EXPECT_FLOAT_EQ(rgb[1], (0.2f - 0.5f) / 0.5f);
  EXPECT_FLOAT_EQ(rgb[4 + 1], (0.2f - 0.25f) / 0.25f);
  EXPECT_FLOAT_EQ(rgb[8 + 3], 1.0f);
}

TEST(Resample, MatchesTorchInterpolate) {
  // LibTorch's bilinear interpolate (align_corners=false, no antialiasing) is an independent
  // reference for both upscaling and downscaling of a whole image.
  for (const auto& [width, height, out] :
       std::vector<std::tuple<int, int, int>>{{7, 5, 11}, {40, 30, 13}, {9, 9, 9}}) {
    const torch::Tensor source =
        torch::randint(0, 256, {height, width, 3}, torch::TensorOptions().dtype(torch::kUInt8));
    std::vector<float> mine(3 * out * out);
    resample_bilinear(std::span(source.data_ptr<std::uint8_t>(), source.numel()), width, height, 3,
                      {0, 0, double(width), double(height)}, out, false, kBytes, 3, mine);
    const torch::Tensor reference = torch::nn::functional::interpolate(
        source.permute({2, 0, 1}).unsqueeze(0).to(torch::kFloat32),
        torch::nn::functional::InterpolateFuncOptions()
            .size(std::vector<std::int64_t>{out, out})
            .mode(torch::kBilinear)
            .align_corners(false));
    const torch::Tensor ours = torch::from_blob(mine.data(), {1, 3, out, out});
    EXPECT_LT((ours - reference).abs().max().item<float>(), 1e-3) << width << "x" << height;
  }
}

TEST(Jpeg, RoundTripIsCloseAndScaledDecodeWorks) {
  const int w = 64, h = 48;
  std::vector<std::uint8_t> rgb(w * h * 3);
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x) {
      rgb[3 * (y * w + x) + 0] = static_cast<std::uint8_t>(4 * x);
      rgb[3 * (y * w + x) + 1] = static_cast<std::uint8_t>(5 * y);
      rgb[3 * (y * w + x) + 2] = 128;
    }
  const auto jpeg = encode_jpeg(rgb, w, h, 3, 100);
  EXPECT_EQ(jpeg[0], 0xFF);
  EXPECT_EQ(jpeg[1], 0xD8);  // SOI marker
  const auto header = read_jpeg_header(jpeg, "x.jpg");
  EXPECT_EQ(header.width, w);
  EXPECT_EQ(header.height, h);
  const RgbImage full = decode_jpeg(jpeg, "x.jpg");
  ASSERT_EQ(full.width, w);
  ASSERT_EQ(full.height, h);
  double error = 0;
  for (std::size_t i = 0; i < rgb.size(); ++i) error += std::abs(full.pixels[i] - rgb[i]);
  EXPECT_LT(error / rgb.size(), 1.5);
  // Asking for >= 16x12 allows the 1/4 DCT scale.
  const RgbImage quarter = decode_jpeg(jpeg, "x.jpg", 16, 12);
  EXPECT_EQ(quarter.width, 16);
  EXPECT_EQ(quarter.height, 12);
  const RgbImage half = decode_jpeg(jpeg, "x.jpg", 17, 12);
  EXPECT_EQ(half.width, 32);
  expect_invalid_argument(
      [&] {
        decode_jpeg(std::vector<std::uint8_t>{1, 2, 3}, "junk.jpg");
      },
      {"junk.jpg"});
  expect_invalid_argument([&] { decode_jpeg(std::span(jpeg).first(40), "cut.jpg"); }, {"cut.jpg"});
}

TEST(Jpeg, CmykIsConvertedToRgb) {
  // libjpeg stores CMYK Adobe-style (inverted: 255 = no ink), so the RGB value of a channel is
  // its CMY byte scaled by K / 255.
  const int side = 16;
  std::vector<std::uint8_t> cmyk(side * side * 4);
  for (int p = 0; p < side * side; ++p) {
    cmyk[4 * p + 0] = 255;
    cmyk[4 * p + 1] = 128;
    cmyk[4 * p + 2] = 0;
    cmyk[4 * p + 3] = 200;
  }
  tjhandle handle = tjInitCompress();
  ASSERT_NE(handle, nullptr);
  unsigned char* jpeg = nullptr;
  unsigned long size = 0;
  ASSERT_EQ(
      tjCompress2(handle, cmyk.data(), side, 0, side, TJPF_CMYK, &jpeg, &size, TJSAMP_444, 100, 0),
      0)
      << tjGetErrorStr2(handle);
  const std::vector<std::uint8_t> bytes(jpeg, jpeg + size);
  tjFree(jpeg);
  tjDestroy(handle);
  const RgbImage image = decode_jpeg(bytes, "cmyk.jpg");
  ASSERT_EQ(image.channels, 3);
  ASSERT_EQ(image.pixels.size(), std::size_t{side * side * 3});
  EXPECT_NEAR(image.pixels[0], 200, 3);
  EXPECT_NEAR(image.pixels[1], 100, 3);
  EXPECT_NEAR(image.pixels[2], 0, 3);
}

TEST(RandomResizedCrop, BoxesFollowTorchvisionsRanges) {
  int fallback = 0;
  double min_area = 1, max_area = 0;
  for (std::uint64_t seed = 0; seed < 2000; ++seed) {
    const CropBox box = random_resized_crop_box(300, 200, seed);
    const CropBox again = random_resized_crop_box(300, 200, seed);
    ASSERT_EQ(box.x, again.x);
    ASSERT_EQ(box.width, again.width);
    ASSERT_GE(box.x, 0);
    ASSERT_GE(box.y, 0);
    ASSERT_LE(box.x + box.width, 300);
    ASSERT_LE(box.y + box.height, 200);
    const double area = box.width * box.height / (300.0 * 200);
    const double ratio = box.width / box.height;
    if (box.width == 266 && box.height == 200) {
      ++fallback;  // 300x200 is wider than 4/3: the fallback cuts it to 4/3
      continue;
    }
    // Rounding w and h to integers moves area and ratio slightly outside the drawn ranges.
    ASSERT_GE(area, 0.08 * 0.97);
    ASSERT_LE(ratio, 4.0 / 3.0 * 1.03);
    ASSERT_GE(ratio, 3.0 / 4.0 / 1.03);
    min_area = std::min(min_area, area);
    max_area = std::max(max_area, area);
  }
  EXPECT_LT(min_area, 0.1);
  EXPECT_GT(max_area, 0.6);
  EXPECT_LT(fallback, 20);
  const CropBox centre = centre_crop_box(300, 200, 224);
  EXPECT_NEAR(centre.width, 175.0, 1e-9);  // 224 * 200 / 256
  EXPECT_NEAR(centre.x, (300 - 175.0) / 2, 1e-9);
}

// The first 100 train and 30 val Fashion-MNIST images as a JPEG folder, written by the CLI.
class GeneratedFolder : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!testing::have_fashion_mnist()) GTEST_SKIP() << "dataset-fashion-mnist is not installed";
    const char* tool = std::getenv("FRUGAL_MAKE_IMAGEFOLDER");
    ASSERT_NE(tool, nullptr) << "run under meson test (FRUGAL_MAKE_IMAGEFOLDER)";
    const std::string command = std::string(tool) + " --idx fashion-mnist --out '" +
                                root().string() +
                                "' --limit-train 100 --limit-val 30 --quality 98 > /dev/null";
    const int status = std::system(command.c_str());
    ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << command;
  }
  fs::path root() const { return scratch_.path() / "folder"; }
  std::string spec() const { return "imagefolder:" + root().string(); }

  ScratchDir scratch_;
};

TEST_F(GeneratedFolder, LoadsWithClassesCountsAndShapes) {
  DataOptions options;
  options.image_size = 32;
  const auto train = make_dataset(spec(), Split::Train, options);
  const auto val = make_dataset(spec(), Split::Val, options);
  EXPECT_EQ(train->size(), 100u);
  EXPECT_EQ(val->size(), 30u);
  EXPECT_EQ(train->num_classes(), 10);
  EXPECT_EQ(val->num_classes(), 10);
  EXPECT_NE(train->describe().find(" train: 100 images"), std::string::npos) << train->describe();
  EXPECT_NE(val->describe().find(" val: 30 images"), std::string::npos) << val->describe();
  EXPECT_EQ(train->channels(), 3);
  EXPECT_EQ(train->image_size(), 32);
  const auto& folder = dynamic_cast<const ImageFolderDataset&>(*train);
  EXPECT_EQ(folder.classes().front(), "0_tshirt_top");
  EXPECT_EQ(folder.classes().back(), "9_ankle_boot");

  // Labels agree with the IDX labels (file names are IDX positions).
  const auto labels = read_idx_labels(find_idx_file(kFashionMnistDir, "train-labels-idx1-ubyte"));
  for (std::size_t i = 0; i < train->size(); ++i) {
    const Example e = train->get(i, 5);
    ASSERT_EQ(e.image.sizes(), (c10::IntArrayRef{3, 32, 32}));
    const std::size_t position = std::stoul(folder.file(i).stem().string());
    EXPECT_EQ(e.label, labels[position]);
  }
  // Augmentation: deterministic per seed, different across seeds; val is not augmented.
  EXPECT_TRUE(torch::equal(train->get(3, 11).image, train->get(3, 11).image));
  EXPECT_FALSE(torch::equal(train->get(3, 11).image, train->get(3, 12).image));
  EXPECT_TRUE(torch::equal(val->get(3, 11).image, val->get(3, 12).image));

  // The loader batches them.
  Loader loader(*train, DistributedSampler(100, 0, 1, 1, true).indices(0), 3,
                {.batch_size = 16, .threads = 2});
  int batches = 0;
  while (auto batch = loader.next()) {
    EXPECT_EQ(batch->images.sizes(), (c10::IntArrayRef{16, 3, 32, 32}));
    ++batches;
  }
  EXPECT_EQ(batches, 6);
}

TEST_F(GeneratedFolder, DecodedPixelsMatchTheSource) {
  DataOptions options;
  options.image_size = 28;
  const auto val = make_dataset(spec(), Split::Val, options);
  const auto& folder = dynamic_cast<const ImageFolderDataset&>(*val);
  const IdxImages source =
      read_idx_images(find_idx_file(kFashionMnistDir, "t10k-images-idx3-ubyte"));
  for (std::size_t i = 0; i < val->size(); i += 7) {
    const std::size_t position = std::stoul(folder.file(i).stem().string());
    const torch::Tensor image = val->get(i, 0).image;
    // Undo ImageNet normalisation: every channel holds the same gray value.
    std::vector<torch::Tensor> channels;
    for (int c = 0; c < 3; ++c) {
      channels.push_back(
          (image[c] * kImageNetNormalisation.std[c] + kImageNetNormalisation.mean[c]) * 255);
    }
    EXPECT_LT((channels[0] - channels[1]).abs().max().item<float>(), 0.01);
    EXPECT_LT((channels[0] - channels[2]).abs().max().item<float>(), 0.01);
    // Expected: the source IDX image resized to 32 x 32 (28 * 256 / 224) and centre-cropped
    // to 28 x 28, i.e. the source box of side 28 * 28 / 32 = 24.5 at offset 1.75.
    std::vector<float> expected(28 * 28);
    resample_bilinear(source.image(position), 28, 28, 1, {1.75, 1.75, 24.5, 24.5}, 28, false,
                      kBytes, 1, expected);
    const torch::Tensor reference = torch::from_blob(expected.data(), {28, 28}).clone();
    const double mean_error = (channels[0] - reference).abs().mean().item<double>();
    EXPECT_LT(mean_error, 1.0) << folder.file(i);     // measured ~0.3 at quality 98
    EXPECT_GT(reference.std().item<double>(), 20.0);  // a real image, not a flat one
  }
}

TEST_F(GeneratedFolder, CorruptJpegIsAnErrorOrSkippedWithAWarning) {
  DataOptions options;
  options.image_size = 16;
  const auto strict = make_dataset(spec(), Split::Train, options);
  const auto& folder = dynamic_cast<const ImageFolderDataset&>(*strict);
  const fs::path bad = folder.file(4);
  const fs::path cut = folder.file(9);
  testing::write_bytes(bad, {'n', 'o', 't', ' ', 'a', ' ', 'j', 'p', 'e', 'g'});
  auto bytes = testing::read_bytes(cut);
  bytes.resize(30);
  testing::write_bytes(cut, bytes);
  expect_invalid_argument([&] { strict->get(4, 0); }, {bad.string(), "corrupt"});
  expect_invalid_argument([&] { strict->get(9, 0); }, {cut.string()});

  options.skip_corrupt = true;
  const auto lenient = make_dataset(spec(), Split::Train, options);
  ::testing::internal::CaptureStderr();
  const Example replaced = lenient->get(4, 0);
  const Example again = lenient->get(4, 0);
  const std::string warnings = ::testing::internal::GetCapturedStderr();
  // Replaced by the next readable example (index 5), identically both times, warned once.
  EXPECT_EQ(replaced.label, lenient->get(5, 0).label);
  EXPECT_TRUE(torch::equal(replaced.image, lenient->get(5, 0).image));
  EXPECT_TRUE(torch::equal(replaced.image, again.image));
  EXPECT_NE(warnings.find("warning"), std::string::npos) << warnings;
  EXPECT_NE(warnings.find(bad.string()), std::string::npos) << warnings;
  EXPECT_EQ(warnings.find(bad.string()), warnings.rfind(bad.string())) << "warned twice";
}

TEST_F(GeneratedFolder, BadLayoutsNameThePath) {
  expect_invalid_argument([&] { make_dataset(spec() + "-absent", Split::Train); },
                          {root().string() + "-absent"});
  const fs::path empty_class = root() / "train" / "99_empty";
  fs::create_directories(empty_class);
  expect_invalid_argument([&] { make_dataset(spec(), Split::Train); },
                          {empty_class.string(), "empty"});
  fs::remove(empty_class);
  const fs::path stray = root() / "val" / "zz_unknown";
  fs::create_directories(stray);
  fs::copy_file(root() / "val" / "9_ankle_boot" / "000000.JPEG", stray / "a.JPEG");
  expect_invalid_argument([&] { make_dataset(spec(), Split::Val); }, {stray.string()});
  EXPECT_EQ(make_dataset(spec(), Split::Train)->size(), 100u);  // train is unaffected
  fs::remove_all(root() / "val");
  expect_invalid_argument([&] { make_dataset(spec(), Split::Val); },
                          {(root() / "val").string(), "does not exist"});
  fs::remove_all(root() / "train");
  fs::create_directories(root() / "train");
  expect_invalid_argument([&] { make_dataset(spec(), Split::Train); },
                          {(root() / "train").string(), "no class folders"});
}

TEST(ImageFolderWriter, ResizesAndRefusesToOverwrite) {
  ScratchDir dir;
  std::vector<std::uint8_t> pixels(4 * 8 * 8);
  std::iota(pixels.begin(), pixels.end(), 0);
  fs::create_directories(dir.path() / "idx");
  testing::write_idx_split(dir.path() / "idx", "train", 8, pixels, {0, 1, 2, 1}, false);
  testing::write_idx_split(dir.path() / "idx", "t10k", 8, pixels, {1, 1, 1, 1}, true);
  ImageFolderWriteOptions options;
  options.idx = (dir.path() / "idx").string();
  options.out = dir.path() / "out";
  options.size = 16;
  options.limit_val = 2;
  std::vector<std::string> lines;
  options.progress = [&](const std::string& line) { lines.push_back(line); };
  const auto summary = write_imagefolder(options);
  EXPECT_EQ(summary.classes, (std::vector<std::string>{"0", "1", "2"}));
  EXPECT_EQ(summary.train, 4u);
  EXPECT_EQ(summary.val, 2u);
  EXPECT_EQ(lines.back(), "val: 2/2 images");
  const auto jpeg = testing::read_bytes(options.out / "train" / "1" / "000003.JPEG");
  const auto header = read_jpeg_header(jpeg, "000003.JPEG");
  EXPECT_EQ(header.width, 16);
  EXPECT_TRUE(fs::exists(options.out / "val" / "1" / "000001.JPEG"));
  EXPECT_FALSE(fs::exists(options.out / "val" / "0"));  // no val images of class 0
  expect_invalid_argument([&] { write_imagefolder(options); },
                          {(options.out / "train").string(), "not empty"});
  options.out = dir.path() / "out2";
  options.limit_train = 1;
  expect_invalid_argument([&] { write_imagefolder(options); }, {"'1'", "--limit-train"});
}

int run(const std::string& arguments) {
  const char* tool = std::getenv("FRUGAL_MAKE_IMAGEFOLDER");
  if (tool == nullptr) return -1;
  const int status =
      std::system((std::string(tool) + " " + arguments + " > /dev/null 2>&1").c_str());
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

TEST(MakeImageFolderCli, HelpAndBadArguments) {
  if (std::getenv("FRUGAL_MAKE_IMAGEFOLDER") == nullptr) GTEST_SKIP() << "not under meson test";
  ScratchDir dir;
  EXPECT_EQ(run("--help"), 0);
  const std::string help_command = std::string(std::getenv("FRUGAL_MAKE_IMAGEFOLDER")) + " --help";
  FILE* help = popen(help_command.c_str(), "r");
  ASSERT_NE(help, nullptr);
  std::string text;
  char buffer[512];
  while (const std::size_t got = std::fread(buffer, 1, sizeof buffer, help))
    text.append(buffer, got);
  pclose(help);
  EXPECT_NE(text.find("Usage: frugal-make-imagefolder"), std::string::npos);
  EXPECT_NE(text.find("--limit-train"), std::string::npos);
  EXPECT_EQ(run("--bogus"), 2);
  EXPECT_EQ(run("--out " + dir.path().string()), 2);  // --idx missing
  EXPECT_EQ(run("--idx fashion-mnist --out " + dir.path().string() + " --quality 0"), 2);
  EXPECT_EQ(run("--idx fashion-mnist --out " + dir.path().string() + " --size -3"), 2);
  EXPECT_EQ(run("--idx " + (dir.path() / "none").string() + " --out " + dir.path().string()), 2);
  EXPECT_EQ(run("--idx fashion-mnist --out " + dir.path().string() + " --limit-train x"), 2);
}

}  // namespace
}  // namespace frugal::train
