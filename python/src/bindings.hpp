#pragma once

// Shared pieces of the _frugal extension: each bind_* function registers one area's classes and
// functions on the module, in its own file.
//
// GIL: every call that may wait for a peer (connecting, collectives, waits, finish) releases it,
// so that other Python threads run meanwhile; Python objects are only touched with it held.

#include <pybind11/pybind11.h>

#include <memory>
#include <span>
#include <string>
#include <string_view>

#include "frugal/communicator.hpp"

namespace frugal::python {

namespace py = pybind11;

void bind_errors(py::module_& m);
void bind_compression(py::module_& m);
void bind_communicator(py::module_& m);
void bind_state(py::module_& m);
void bind_collectives(py::module_& m);
void bind_buckets(py::module_& m);
void bind_powersgd(py::module_& m);
void bind_reduce_scatter(py::module_& m);
void bind_momentum(py::module_& m);

// The Python-side communicator. close() drops this object's reference; collectives and handles
// hold their own (use()), so a communicator closed from another thread while a collective runs
// lives until that collective is over.
class PyCommunicator {
 public:
  PyCommunicator(std::unique_ptr<Communicator> comm, std::string transport)
      : comm_(std::move(comm)), transport_(std::move(transport)) {}
  ~PyCommunicator();

  // The communicator, or InvalidArgument once closed.
  std::shared_ptr<Communicator> use() const;
  bool closed() const noexcept { return comm_ == nullptr; }
  const std::string& transport() const noexcept { return transport_; }
  void close();

 private:
  std::shared_ptr<Communicator> comm_;
  std::string transport_;
};

// The bytes of a C-contiguous, writeable, aligned numpy array (or any object exposing such a
// buffer). Throws InvalidArgument naming `what` otherwise; `float32` also requires that dtype.
std::span<std::byte> writable_bytes(const py::buffer_info& info, const char* what);
std::span<float> writable_floats(const py::buffer_info& info, const char* what);

// State images (save/restore of AllreduceState, PowerSGDState, Buckets) cross as Python bytes.
// byte_view's span lives as long as `image`.
inline py::bytes to_py_bytes(std::span<const std::byte> image) {
  return {reinterpret_cast<const char*>(image.data()), image.size()};
}
inline std::span<const std::byte> byte_view(const py::bytes& image) {
  const std::string_view bytes = image;
  return {reinterpret_cast<const std::byte*>(bytes.data()), bytes.size()};
}

}  // namespace frugal::python
