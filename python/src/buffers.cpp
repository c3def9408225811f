// What a numpy array must be for frugal to work on its memory in place.

#include <cstdint>
#include <string>

#include "bindings.hpp"
#include "frugal/error.hpp"

namespace frugal::python {

std::span<std::byte> writable_bytes(const py::buffer_info& info, const char* what) {
  const std::string name(what);
  require(!info.readonly, name, "is read-only; frugal writes the result into it");
  // C order: each stride is the product of the later dimensions' sizes (any stride is fine for
  // a dimension of size 1, as numpy's own C_CONTIGUOUS flag says).
  py::ssize_t expected = info.itemsize;
  for (py::ssize_t d = info.ndim - 1; d >= 0; --d) {
    const auto i = static_cast<std::size_t>(d);
    require(info.shape[i] == 1 || info.strides[i] == expected, name,
            "is not contiguous; pass a contiguous copy and copy the result back");
    expected *= info.shape[i];
  }
  const auto address = reinterpret_cast<std::uintptr_t>(info.ptr);
  require(address % static_cast<std::uintptr_t>(info.itemsize) == 0, name,
          "is not aligned to its element size");
  return {static_cast<std::byte*>(info.ptr), static_cast<std::size_t>(info.size * info.itemsize)};
}

std::span<float> writable_floats(const py::buffer_info& info, const char* what) {
  require(info.itemsize == sizeof(float) && info.format == py::format_descriptor<float>::format(),
          what, "dtype is not float32 (format '" + info.format + "'); frugal reduces float32");
  const std::span<std::byte> bytes = writable_bytes(info, what);
  return {reinterpret_cast<float*>(bytes.data()), bytes.size() / sizeof(float)};
}

}  // namespace frugal::python
