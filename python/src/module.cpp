// The _frugal extension module: the C++ half of the Python package frugal. The public API is
// the package's .py modules; this module is their implementation detail.

#include "bindings.hpp"
#include "frugal/version.h"

PYBIND11_MODULE(_frugal, m) {
  m.doc() = "frugal's C++ collectives (internal: use the package frugal)";
  m.attr("__version__") = FRUGAL_VERSION_STRING;
  frugal::python::bind_errors(m);
  frugal::python::bind_compression(m);
  frugal::python::bind_communicator(m);
  frugal::python::bind_state(m);
  frugal::python::bind_collectives(m);
  frugal::python::bind_buckets(m);
  frugal::python::bind_powersgd(m);
  frugal::python::bind_reduce_scatter(m);
  frugal::python::bind_momentum(m);
}
