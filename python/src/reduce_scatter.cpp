// compressed_reduce_scatter, compressed_allgather and the shard layout. The Python wrappers
// (frugal/sharded.py) check the arguments and build the options; these check again what memory
// safety depends on (float32, contiguous, writeable; the sizes are the library's to check).

#include "frugal/collectives/reduce_scatter.hpp"

#include <pybind11/stl.h>

#include <utility>
#include <vector>

#include "bindings.hpp"

namespace frugal::python {
namespace {

AllreduceState* state_of(const py::object& state) {
  return state.is_none() ? nullptr : state.cast<AllreduceState*>();
}

void reduce_scatter_blocking(const PyCommunicator& self, const py::buffer& tensor,
                             const py::buffer& shard, const AllreduceOptions& options,
                             const py::object& state, const std::vector<std::size_t>& segments) {
  const std::shared_ptr<Communicator> comm = self.use();
  const py::buffer_info in = tensor.request(true);
  const py::buffer_info out = shard.request(true);
  const std::span<float> input = writable_floats(in, "tensor");
  const std::span<float> output = writable_floats(out, "shard");
  AllreduceOptions o = options;
  o.state = state_of(state);
  o.segments = segments;
  py::gil_scoped_release nogil;
  compressed_reduce_scatter(*comm, input, output, o);
}

void allgather_blocking(const PyCommunicator& self, const py::buffer& shard,
                        const py::buffer& tensor, const AllreduceOptions& options,
                        const py::object& state, const std::vector<std::size_t>& segments) {
  const std::shared_ptr<Communicator> comm = self.use();
  const py::buffer_info in = shard.request(true);
  const py::buffer_info out = tensor.request(true);
  const std::span<float> mine = writable_floats(in, "shard");
  const std::span<float> output = writable_floats(out, "tensor");
  AllreduceOptions o = options;
  o.state = state_of(state);
  o.segments = segments;
  py::gil_scoped_release nogil;
  compressed_allgather(*comm, mine, output, o);
}

}  // namespace

void bind_reduce_scatter(py::module_& m) {
  m.def(
      "reduce_scatter_shard",
      [](std::size_t count, int ranks, int rank) {
        const ShardRange s = reduce_scatter_shard(count, ranks, rank);
        return std::make_pair(s.offset, s.count);
      },
      py::arg("count"), py::arg("ranks"), py::arg("rank"));
  m.def("reduce_scatter", &reduce_scatter_blocking, py::arg("comm"), py::arg("tensor"),
        py::arg("shard"), py::arg("options"), py::arg("state"),
        py::arg("segments") = std::vector<std::size_t>{});
  m.def("allgather", &allgather_blocking, py::arg("comm"), py::arg("shard"), py::arg("tensor"),
        py::arg("options"), py::arg("state"), py::arg("segments") = std::vector<std::size_t>{});
}

}  // namespace frugal::python
