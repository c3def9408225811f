#include "reduce_kernels.hpp"

#include <cstdint>

namespace frugal::detail {

namespace {

template <typename T>
void add(std::byte* __restrict dst, const std::byte* __restrict src, std::size_t n) noexcept {
  T* __restrict d = reinterpret_cast<T*>(dst);
  const T* __restrict s = reinterpret_cast<const T*>(src);
  for (std::size_t i = 0; i < n; ++i) d[i] += s[i];
}

template <typename T>
void div(std::byte* data, std::size_t n, T divisor) noexcept {
  T* d = reinterpret_cast<T*>(data);
  for (std::size_t i = 0; i < n; ++i) d[i] /= divisor;
}

}  // namespace

void reduce_sum(std::span<std::byte> dst, std::span<const std::byte> src, DType dtype) noexcept {
  switch (dtype) {
    case DType::Float32:
      add<float>(dst.data(), src.data(), dst.size() / sizeof(float));
      break;
    case DType::Float64:
      add<double>(dst.data(), src.data(), dst.size() / sizeof(double));
      break;
    case DType::Int32:
      add<std::uint32_t>(dst.data(), src.data(), dst.size() / sizeof(std::uint32_t));
      break;
  }
}

void divide(std::span<std::byte> data, DType dtype, int divisor) noexcept {
  switch (dtype) {
    case DType::Float32:
      div<float>(data.data(), data.size() / sizeof(float), static_cast<float>(divisor));
      break;
    case DType::Float64:
      div<double>(data.data(), data.size() / sizeof(double), static_cast<double>(divisor));
      break;
    case DType::Int32:
      break;  // rejected before any communication
  }
}

}  // namespace frugal::detail
