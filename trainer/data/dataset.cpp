#include "dataset.hpp"

#include <cstring>
#include <frugal/error.hpp>

namespace frugal::train {

std::int64_t Dataset::get_into(std::size_t index, std::uint64_t seed, std::span<float> out) const {
  Example example = get(index, seed);
  const torch::Tensor image = example.image.contiguous();
  const std::int64_t side = image_size();
  if (image.scalar_type() != torch::kFloat32 || image.dim() != 3 || image.size(0) != channels() ||
      image.size(1) != side || image.size(2) != side) {
    throw Error(ErrorCode::Internal, "dataset '" + describe() + "' returned example " +
                                         std::to_string(index) +
                                         " with a shape other than its declared [C, S, S]");
  }
  if (out.size() != static_cast<std::size_t>(image.numel())) {
    throw Error(ErrorCode::InvalidArgument,
                "Dataset::get_into: out holds " + std::to_string(out.size()) +
                    " floats, the example " + std::to_string(image.numel()));
  }
  std::memcpy(out.data(), image.data_ptr<float>(), out.size() * sizeof(float));
  return example.label;
}

}  // namespace frugal::train
