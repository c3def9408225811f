#include <frugal/error.hpp>

#include "dataset.hpp"
#include "idx_dataset.hpp"
#include "image_folder_dataset.hpp"

namespace frugal::train {

std::unique_ptr<Dataset> make_dataset(const std::string& spec, Split split,
                                      const DataOptions& options) {
  const auto argument = [&](std::string_view prefix) {
    std::string dir = spec.substr(prefix.size());
    if (dir.empty()) {
      throw Error(ErrorCode::InvalidArgument, "data spec '" + spec + "': the directory after '" +
                                                  std::string(prefix) + "' is empty");
    }
    return dir;
  };
  if (spec == "fashion-mnist") {
    std::error_code ec;
    if (!std::filesystem::is_directory(kFashionMnistDir, ec)) {
      throw Error(ErrorCode::InvalidArgument,
                  std::string("Fashion-MNIST not found: '") + kFashionMnistDir +
                      "' does not exist (install the Debian package dataset-fashion-mnist, or "
                      "use idx:DIR)");
    }
    return std::make_unique<IdxDataset>(kFashionMnistDir, "fashion-mnist", split, options);
  }
  if (spec.starts_with("idx:")) {
    const std::string dir = argument("idx:");
    return std::make_unique<IdxDataset>(dir, "idx:" + dir, split, options);
  }
  if (spec.starts_with("imagefolder:")) {
    return std::make_unique<ImageFolderDataset>(argument("imagefolder:"), split, options);
  }
  throw Error(
      ErrorCode::InvalidArgument,
      "unknown data spec '" + spec + "' (expected fashion-mnist, idx:DIR or imagefolder:DIR)");
}

}  // namespace frugal::train
