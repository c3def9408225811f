// allreduce (blocking and asynchronous), broadcast, barrier and an allgather of byte strings.
// The Python wrappers (frugal/collectives.py) check the arguments and build the options; these
// check again what memory safety depends on.

#include "frugal/collectives/collectives.hpp"

#include <pybind11/stl.h>

#include <chrono>
#include <cmath>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "bindings.hpp"
#include "frugal/collectives/async.hpp"
#include "frugal/error.hpp"

namespace frugal::python {
namespace {

template <NamedEnum E>
E parse_named(const std::string& text, const char* parameter) {
  if (const std::optional<E> value = parse_enum<E>(text)) return *value;
  throw Error(ErrorCode::InvalidArgument,
              std::string(parameter) + ": '" + text + "' is not one of " + enum_choices<E>());
}

std::optional<std::chrono::milliseconds> timeout_of(const std::optional<double>& seconds) {
  if (!seconds) return std::nullopt;
  require(std::isfinite(*seconds) && *seconds > 0, "timeout",
          "must be a positive number of seconds, got " + std::to_string(*seconds));
  return std::chrono::milliseconds(
      std::max<long long>(1, std::llround(std::min(*seconds, 1e9) * 1000.0)));
}

AllreduceOptions make_options(const compression::CompressionConfig& compression,
                              const std::string& op, const std::string& algorithm,
                              std::uint64_t seed, bool error_feedback,
                              std::optional<double> timeout, const std::string& non_finite) {
  AllreduceOptions o;
  o.compression = compression;
  o.op = parse_named<ReduceOp>(op, "op");
  o.algorithm = parse_named<AllreduceAlgorithm>(algorithm, "algorithm");
  if (!algorithm_supports(o.algorithm, compression.method)) {
    throw Error(ErrorCode::InvalidArgument, "algorithm: '" + algorithm + "' does not run " +
                                                std::string(enum_name(compression.method)) +
                                                " (it takes auto, " +
                                                supported_algorithms(compression.method) + ")");
  }
  o.seed = seed;
  o.error_feedback = error_feedback;
  o.timeout = timeout_of(timeout);
  o.non_finite = parse_named<NonFiniteAction>(non_finite, "non_finite");
  return o;
}

// An asynchronous allreduce and what it needs alive until it is done: the array it writes
// into, its state object, its statistics and its communicator.
class PyHandle {
 public:
  // Takes what the allreduce uses before starting it, so that nothing it writes into can be
  // released while it runs, not even if this constructor throws after allreduce_async returned.
  PyHandle(std::shared_ptr<Communicator> comm, std::span<float> data, AllreduceOptions options,
           py::object array, py::object state)
      : comm_(std::move(comm)), array_(std::move(array)), state_(std::move(state)) {
    options.stats = stats_.get();
    handle_ = allreduce_async(*comm_, data, options);
  }
  // Dropped before done: the allreduce still writes into the array and the statistics, so wait
  // for it (bounded by the timeout) before letting them go. Its error is lost, as its handle was.
  ~PyHandle() {
    if (handle_.test()) return;
    py::gil_scoped_release nogil;
    try {
      handle_.wait();
    } catch (...) {
    }
  }
  PyHandle(const PyHandle&) = delete;
  PyHandle& operator=(const PyHandle&) = delete;

  bool done() const noexcept { return handle_.test(); }
  void wait() {
    {
      py::gil_scoped_release nogil;
      handle_.wait();
    }
    succeeded_ = true;  // with the GIL, which stats() holds too
  }
  // The allreduce writes its statistics when it completes; before a successful wait() they are
  // not there to read.
  const AllreduceStats& stats() const {
    if (!succeeded_) {
      throw Error(ErrorCode::InvalidArgument,
                  "stats: available after wait() has returned without an error");
    }
    return *stats_;
  }

 private:
  // Members are destroyed in reverse order of declaration. AllreduceHandle's destructor neither
  // waits nor cancels, so ~PyHandle's wait is what keeps the allreduce from outliving what it
  // writes into; declaring handle_ last keeps the rule that the allreduce's buffers outlive its
  // handle should that destructor ever return early (stats_ used to go first).
  std::shared_ptr<Communicator> comm_;
  py::object array_;
  py::object state_;
  std::unique_ptr<AllreduceStats> stats_ = std::make_unique<AllreduceStats>();
  bool succeeded_ = false;
  AllreduceHandle handle_;  // last: destroyed first
};

AllreduceState* state_of(const py::object& state) {
  return state.is_none() ? nullptr : state.cast<AllreduceState*>();
}

void allreduce_blocking(const PyCommunicator& self, const py::buffer& array,
                        const AllreduceOptions& options, const py::object& state,
                        const std::vector<std::size_t>& segments) {
  const std::shared_ptr<Communicator> comm = self.use();
  const py::buffer_info info = array.request(true);
  const std::span<float> data = writable_floats(info, "tensor");
  AllreduceOptions o = options;
  o.state = state_of(state);
  o.segments = segments;
  py::gil_scoped_release nogil;
  allreduce(*comm, data, o);
}

std::unique_ptr<PyHandle> allreduce_start(const PyCommunicator& self, const py::buffer& array,
                                          const AllreduceOptions& options, const py::object& state,
                                          const std::vector<std::size_t>& segments) {
  std::shared_ptr<Communicator> comm = self.use();
  const py::buffer_info info = array.request(true);
  const std::span<float> data = writable_floats(info, "tensor");
  AllreduceOptions o = options;
  o.state = state_of(state);
  o.segments = segments;  // allreduce_async copies them
  return std::make_unique<PyHandle>(std::move(comm), data, std::move(o), array, state);
}

void broadcast_bytes(const PyCommunicator& self, const py::buffer& array, int root,
                     std::optional<double> timeout) {
  const std::shared_ptr<Communicator> comm = self.use();
  const py::buffer_info info = array.request(true);
  const std::span<std::byte> data = writable_bytes(info, "tensor");
  CollectiveOptions o;
  o.timeout = timeout_of(timeout);
  py::gil_scoped_release nogil;
  broadcast(*comm, data, root, o);
}

void barrier_all(const PyCommunicator& self, std::optional<double> timeout) {
  const std::shared_ptr<Communicator> comm = self.use();
  CollectiveOptions o;
  o.timeout = timeout_of(timeout);
  py::gil_scoped_release nogil;
  barrier(*comm, o);
}

// Every rank's bytes, in rank order: the sizes first (allgather of 8 bytes each), then
// allgatherv of the contents.
std::vector<py::bytes> allgather_bytes(const PyCommunicator& self, const py::bytes& mine_obj,
                                       std::optional<double> timeout) {
  const std::shared_ptr<Communicator> comm = self.use();
  const std::string mine = mine_obj;  // a copy: the bytes are read with the GIL released
  CollectiveOptions o;
  o.timeout = timeout_of(timeout);
  const auto size = static_cast<std::size_t>(comm->size());
  std::vector<std::uint64_t> sizes(size);
  std::vector<std::byte> out;
  std::vector<std::size_t> counts(size);
  {
    py::gil_scoped_release nogil;
    const std::uint64_t my_size = mine.size();
    allgather(*comm, std::as_bytes(std::span(&my_size, 1)),
              std::as_writable_bytes(std::span(sizes)), o);
    std::size_t total = 0;
    for (std::size_t r = 0; r < size; ++r) {
      counts[r] = static_cast<std::size_t>(sizes[r]);
      total += counts[r];
    }
    out.resize(total);
    allgatherv(*comm, std::as_bytes(std::span(mine.data(), mine.size())), out, counts, o);
  }
  std::vector<py::bytes> result;
  std::size_t offset = 0;
  for (const std::size_t count : counts) {
    result.push_back(to_py_bytes(std::span(out).subspan(offset, count)));
    offset += count;
  }
  return result;
}

}  // namespace

void bind_collectives(py::module_& m) {
  py::class_<AllreduceOptions>(m, "AllreduceOptions")
      .def(py::init(&make_options), py::arg("compression"), py::arg("op"), py::arg("algorithm"),
           py::arg("seed"), py::arg("error_feedback"), py::arg("timeout"), py::arg("non_finite"));
  py::class_<AllreduceStats>(m, "AllreduceStats")
      .def_property_readonly(
          "algorithm", [](const AllreduceStats& s) { return std::string(to_string(s.algorithm)); })
      .def_readonly("encode_seconds", &AllreduceStats::encode_seconds)
      .def_readonly("comm_seconds", &AllreduceStats::comm_seconds)
      .def_readonly("decode_seconds", &AllreduceStats::decode_seconds)
      .def_readonly("wire_bytes_sent", &AllreduceStats::wire_bytes_sent)
      .def_readonly("non_finite_skipped", &AllreduceStats::non_finite_skipped)
      .def_readonly("non_finite_zeroed", &AllreduceStats::non_finite_zeroed);
  py::class_<PyHandle>(m, "AllreduceHandle")
      .def("done", &PyHandle::done)
      .def("wait", &PyHandle::wait)
      .def("stats", &PyHandle::stats, py::return_value_policy::copy);
  m.def("allreduce", &allreduce_blocking, py::arg("comm"), py::arg("array"), py::arg("options"),
        py::arg("state"), py::arg("segments") = std::vector<std::size_t>{});
  m.def("allreduce_async", &allreduce_start, py::arg("comm"), py::arg("array"), py::arg("options"),
        py::arg("state"), py::arg("segments") = std::vector<std::size_t>{});
  m.def("broadcast", &broadcast_bytes, py::arg("comm"), py::arg("array"), py::arg("root"),
        py::arg("timeout"));
  m.def("barrier", &barrier_all, py::arg("comm"), py::arg("timeout"));
  m.def("allgather_bytes", &allgather_bytes, py::arg("comm"), py::arg("mine"), py::arg("timeout"));
}

}  // namespace frugal::python
