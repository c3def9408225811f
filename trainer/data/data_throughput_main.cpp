// frugal-data-throughput: how many images per second the data pipeline delivers (a
// measurement tool, not built by default: meson compile -C BUILD frugal-data-throughput).

#include <sys/resource.h>

#include <boost/program_options.hpp>
#include <chrono>
#include <frugal/error.hpp>
#include <iostream>

#include "dataset.hpp"

namespace po = boost::program_options;

namespace {

// CPU seconds of all threads of this process (user + system): on a shared machine images per
// CPU-second is steadier than images per wall-second.
double cpu_seconds() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  const auto seconds = [](const timeval& t) { return double(t.tv_sec) + t.tv_usec * 1e-6; };
  return seconds(usage.ru_utime) + seconds(usage.ru_stime);
}

}  // namespace

int main(int argc, char** argv) {
  po::options_description options("Options");
  // clang-format off
  options.add_options()
    ("help,h", "print this help and exit")
    ("data", po::value<std::string>()->default_value("fashion-mnist"),
     "fashion-mnist, idx:DIR or imagefolder:DIR")
    ("split", po::value<std::string>()->default_value("train"), "train or val")
    ("image-size", po::value<int>()->default_value(224), "image-folder output size")
    ("threads", po::value<int>()->default_value(2), "loader threads")
    ("batch", po::value<std::size_t>()->default_value(128), "batch size")
    ("prefetch", po::value<std::size_t>()->default_value(4), "batches decoded ahead")
    ("limit", po::value<std::size_t>()->default_value(0), "first N examples (0: all)");
  // clang-format on
  po::variables_map vm;
  try {
    po::store(po::parse_command_line(argc, argv, options), vm);
    po::notify(vm);
  } catch (const po::error& error) {
    std::cerr << "frugal-data-throughput: " << error.what() << "\n";
    return 2;
  }
  if (vm.count("help")) {
    std::cout << "Usage: frugal-data-throughput [options]\nDecodes one epoch with the Loader and "
                 "prints images/s.\n\n"
              << options << "\n";
    return 0;
  }
  try {
    using namespace frugal::train;
    const std::string split_name = vm["split"].as<std::string>();
    const auto split = frugal::parse_enum<Split>(split_name);
    if (!split) {
      std::cerr << "frugal-data-throughput: --split must be one of "
                << frugal::enum_choices<Split>() << ", got '" << split_name << "'\n";
      return 2;
    }
    DataOptions data;
    data.image_size = vm["image-size"].as<int>();
    const auto start_open = std::chrono::steady_clock::now();
    const auto dataset = make_dataset(vm["data"].as<std::string>(), *split, data);
    const double open_s =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start_open).count();
    const DistributedSampler sampler(dataset->size(), 0, 1, 1, true, vm["limit"].as<std::size_t>());
    LoaderOptions loader_options;
    loader_options.batch_size = vm["batch"].as<std::size_t>();
    loader_options.threads = vm["threads"].as<int>();
    loader_options.prefetch = vm["prefetch"].as<std::size_t>();
    const auto start = std::chrono::steady_clock::now();
    const double cpu_start = cpu_seconds();
    Loader loader(*dataset, sampler.indices(0), 1, loader_options);
    std::size_t images = 0;
    while (auto batch = loader.next()) images += static_cast<std::size_t>(batch->images.size(0));
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    const double cpu = cpu_seconds() - cpu_start;
    std::cout << dataset->describe() << "\nopen " << open_s << " s; " << images << " images in "
              << seconds << " s with " << loader_options.threads
              << " threads: " << static_cast<long>(images / seconds) << " images/s, "
              << static_cast<long>(images / cpu) << " images per CPU-second\n";
  } catch (const frugal::Error& error) {
    std::cerr << "frugal-data-throughput: " << error.what() << "\n";
    return 2;
  }
  return 0;
}
