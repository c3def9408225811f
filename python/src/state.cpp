// frugal.State: AllreduceState, the error-feedback residuals and step counter of one buffer.

#include <string>
#include <string_view>
#include <vector>

#include "bindings.hpp"
#include "frugal/collectives/allreduce_state.hpp"

namespace frugal::python {

void bind_state(py::module_& m) {
  py::class_<AllreduceState>(m, "State", R"(
Error feedback of one buffer: what compression dropped, added back at the next step, and the
step counter that keys the random streams. One per buffer, kept across steps; save() it with
checkpoints. decay scales the residual before it is added back (1: plain error feedback).)")
      .def(py::init<float>(), py::arg("decay") = 1.0f)
      .def_property_readonly("steps", &AllreduceState::steps)
      .def_property_readonly("decay", &AllreduceState::decay)
      .def_property_readonly("bound", &AllreduceState::bound,
                             "Whether an allreduce has bound it to a layout yet.")
      .def("reset", &AllreduceState::reset,
           "Forgets the residuals and the layout; keeps the step counter.")
      .def("save", [](const AllreduceState& s) { return to_py_bytes(s.save()); })
      .def(
          "restore", [](AllreduceState& s, const py::bytes& image) { s.restore(byte_view(image)); },
          py::arg("image"))
      .def("__repr__", [](const AllreduceState& s) {
        return "<frugal.State steps=" + std::to_string(s.steps()) +
               " decay=" + std::to_string(s.decay()) + (s.bound() ? " bound>" : ">");
      });
}

}  // namespace frugal::python
