// frugal.Buckets' C++ half: GradientBuckets plus the arrays it writes back into at finish().

#include "frugal/collectives/buckets.hpp"

#include <optional>
#include <string>
#include <vector>

#include <pybind11/stl.h>

#include "bindings.hpp"

namespace frugal::python {
namespace {

class PyBuckets {
 public:
  PyBuckets(const PyCommunicator& comm, const AllreduceOptions& allreduce, std::size_t bucket_bytes,
            bool dense_vectors)
      : comm_(comm.use()) {
    BucketOptions options;
    options.allreduce = allreduce;
    options.bucket_bytes = bucket_bytes;
    options.dense_vectors = dense_vectors;
    buckets_ = std::make_unique<GradientBuckets>(*comm_, options);
  }
  // GradientBuckets' destructor waits for the allreduces still writing into its buffers; the
  // marked arrays are released only after that, and with the GIL.
  ~PyBuckets() {
    {
      py::gil_scoped_release nogil;
      buckets_.reset();
    }
    marked_.clear();
  }
  PyBuckets(const PyBuckets&) = delete;
  PyBuckets& operator=(const PyBuckets&) = delete;

  std::size_t add(std::string name, std::size_t count, std::optional<std::size_t> dims) {
    return dims ? buckets_->add(std::move(name), count, *dims)
                : buckets_->add(std::move(name), count);
  }

  void mark_ready(const py::object& key, const py::buffer& array) {
    const py::buffer_info info = array.request(true);
    const std::span<float> grad = writable_floats(info, "tensor");
    if (py::isinstance<py::str>(key)) {
      buckets_->mark_ready(key.cast<std::string>(), grad);
    } else {
      buckets_->mark_ready(key.cast<std::size_t>(), grad);
    }
    marked_.push_back(array);  // finish() writes into it
  }

  void finish() {
    {
      py::gil_scoped_release nogil;
      try {
        buckets_->finish();
      } catch (...) {
        // finish() has waited for what was launched, so the arrays are no longer in use.
        py::gil_scoped_acquire gil;
        marked_.clear();
        throw;
      }
    }
    marked_.clear();
  }

  GradientBuckets& get() noexcept { return *buckets_; }

 private:
  std::shared_ptr<Communicator> comm_;
  std::unique_ptr<GradientBuckets> buckets_;
  std::vector<py::object> marked_;
};

py::bytes to_bytes(const std::vector<std::byte>& image) {
  return {reinterpret_cast<const char*>(image.data()), image.size()};
}

}  // namespace

void bind_buckets(py::module_& m) {
  py::class_<PyBuckets>(m, "Buckets")
      .def(py::init<const PyCommunicator&, const AllreduceOptions&, std::size_t, bool>(),
           py::arg("comm"), py::arg("options"), py::arg("bucket_bytes"), py::arg("dense_vectors"))
      .def("add", &PyBuckets::add, py::arg("name"), py::arg("numel"), py::arg("dims"))
      .def("mark_ready", &PyBuckets::mark_ready, py::arg("key"), py::arg("array"))
      .def("finish", &PyBuckets::finish)
      .def("undo_last_step", [](PyBuckets& b) { b.get().undo_last_step(); })
      .def_property_readonly("last_step_skipped",
                             [](PyBuckets& b) { return b.get().last_step_skipped(); })
      .def_property_readonly("last_step_wire_bytes",
                             [](PyBuckets& b) { return b.get().last_step_wire_bytes(); })
      .def_property_readonly("tensor_count", [](PyBuckets& b) { return b.get().tensor_count(); })
      .def_property_readonly("bucket_count", [](PyBuckets& b) { return b.get().bucket_count(); })
      .def("bucket_of", [](PyBuckets& b, std::size_t id) { return b.get().bucket_of(id); })
      .def("save_state", [](PyBuckets& b) { return to_bytes(b.get().save_state()); })
      .def("restore_state", [](PyBuckets& b, const py::bytes& image) {
        const std::string_view bytes = image;
        b.get().restore_state({reinterpret_cast<const std::byte*>(bytes.data()), bytes.size()});
      });
}

}  // namespace frugal::python
