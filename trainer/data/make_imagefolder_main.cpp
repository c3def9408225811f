// frugal-make-imagefolder: writes an ImageNet-layout JPEG folder from IDX files.

#include <boost/program_options.hpp>
#include <frugal/error.hpp>
#include <iostream>

#include "imagefolder_writer.hpp"

namespace po = boost::program_options;

namespace {

constexpr const char* kUsage =
    "Usage: frugal-make-imagefolder --idx DIR|fashion-mnist --out DIR [options]\n"
    "\n"
    "Writes IDX images (MNIST format) as real JPEG files in the ImageNet layout read by\n"
    "frugal-train --data imagefolder:OUT:\n"
    "  OUT/train/<class>/<index>.JPEG   from train-images-idx3-ubyte[.gz]\n"
    "  OUT/val/<class>/<index>.JPEG     from t10k-images-idx3-ubyte[.gz]\n"
    "Class folders are '<label>_<name>' for fashion-mnist (0_tshirt_top ... 9_ankle_boot) and\n"
    "the zero-padded label otherwise; <index> is the image's position in the IDX file (6\n"
    "digits). JPEGs are grayscale. OUT/train and OUT/val must not exist or be empty.\n";

}  // namespace

int main(int argc, char** argv) {
  po::options_description options("Options");
  // clang-format off
  options.add_options()
    ("help,h", "print this help and exit")
    ("idx", po::value<std::string>()->value_name("DIR|fashion-mnist"),
     "IDX source: a directory with {train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz], or "
     "fashion-mnist (/usr/share/datasets/fashion-mnist, Debian package dataset-fashion-mnist)")
    ("out", po::value<std::string>()->value_name("DIR"), "output folder (created)")
    ("limit-train", po::value<std::size_t>()->value_name("N")->default_value(0),
     "write only the first N train images (0: all); every class must keep at least one")
    ("limit-val", po::value<std::size_t>()->value_name("N")->default_value(0),
     "write only the first N val (t10k) images (0: all)")
    ("size", po::value<int>()->value_name("S")->default_value(0),
     "side length of the written images, bilinear resize (0: the IDX size, 28 for "
     "Fashion-MNIST)")
    ("quality", po::value<int>()->value_name("Q")->default_value(95), "JPEG quality, 1..100");
  // clang-format on
  po::variables_map vm;
  try {
    po::store(po::command_line_parser(argc, argv).options(options).run(), vm);
    po::notify(vm);
  } catch (const po::error& error) {
    std::cerr << "frugal-make-imagefolder: " << error.what() << "\n(see --help)\n";
    return 2;
  }
  if (vm.count("help")) {
    std::cout << kUsage << "\n" << options << "\n";
    return 0;
  }
  if (!vm.count("idx") || !vm.count("out")) {
    std::cerr << "frugal-make-imagefolder: --idx and --out are required (see --help)\n";
    return 2;
  }
  frugal::train::ImageFolderWriteOptions write;
  write.idx = vm["idx"].as<std::string>();
  write.out = vm["out"].as<std::string>();
  write.limit_train = vm["limit-train"].as<std::size_t>();
  write.limit_val = vm["limit-val"].as<std::size_t>();
  write.size = vm["size"].as<int>();
  write.quality = vm["quality"].as<int>();
  write.progress = [](const std::string& line) { std::cout << line << std::endl; };
  try {
    const auto summary = frugal::train::write_imagefolder(write);
    std::cout << "wrote " << summary.train << " train and " << summary.val << " val images in "
              << summary.classes.size() << " classes to " << write.out.string() << "\n";
  } catch (const frugal::Error& error) {
    std::cerr << "frugal-make-imagefolder: " << error.what() << "\n";
    return error.code() == frugal::ErrorCode::InvalidArgument ? 2 : 1;
  } catch (const std::exception& error) {
    std::cerr << "frugal-make-imagefolder: " << error.what() << "\n";
    return 1;
  }
  return 0;
}
