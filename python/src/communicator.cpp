// Making communicators (MPI, UCX over MPI, UCX over frugal's TCP store, UCX over a Python store)
// and the Communicator class. Python picks which (frugal/runtime.py); each connect_* call is
// collective and waits for the peers with the GIL released.

#include <chrono>
#include <cmath>
#include <string>

#include "bindings.hpp"
#include "frugal/collectives/collectives.hpp"
#include "frugal/error.hpp"
#include "frugal/mpi.hpp"
#include "store_bootstrap.hpp"
#ifdef FRUGAL_HAVE_UCX
#include "frugal/tcp_store.hpp"
#include "frugal/ucx.hpp"
#include "frugal/ucx_mpi.hpp"
#endif

namespace frugal::python {
namespace {

std::chrono::milliseconds milliseconds(double seconds, const char* what) {
  require(std::isfinite(seconds) && seconds > 0, what,
          "must be a positive number of seconds, got " + std::to_string(seconds));
  return std::chrono::milliseconds(
      std::max<long long>(1, std::llround(std::min(seconds, 1e9) * 1000.0)));
}

#ifdef FRUGAL_HAVE_UCX
UcxOptions ucx_options(std::chrono::milliseconds timeout) {
  UcxOptions options;
  options.connect_timeout = timeout;
  return options;
}
#else
[[noreturn]] void no_ucx() {
  throw Error(ErrorCode::InvalidArgument,
              "transport: this frugal was built without UCX; use transport='mpi' under mpirun");
}
#endif

std::shared_ptr<PyCommunicator> connect_mpi(const std::string& transport, double timeout_s) {
  const CommunicatorOptions options{milliseconds(timeout_s, "timeout")};
  std::unique_ptr<Communicator> comm;
  if (transport == "mpi") {
    py::gil_scoped_release nogil;
    ensure_mpi_initialized();
    comm = make_mpi_communicator(MPI_COMM_WORLD, options);
  } else if (transport == "ucx") {
#ifdef FRUGAL_HAVE_UCX
    py::gil_scoped_release nogil;
    ensure_mpi_initialized();
    comm = make_ucx_communicator(MPI_COMM_WORLD, options, ucx_options(*options.timeout));
#else
    no_ucx();
#endif
  } else {
    throw Error(ErrorCode::InvalidArgument,
                "transport: '" + transport + "' is not one of ucx, mpi");
  }
  return std::make_shared<PyCommunicator>(std::move(comm), transport);
}

std::shared_ptr<PyCommunicator> connect_env(double timeout_s) {
#ifdef FRUGAL_HAVE_UCX
  const CommunicatorOptions options{milliseconds(timeout_s, "timeout")};
  TcpBootstrapOptions store = tcp_bootstrap_options_from_env();
  store.timeout = *options.timeout;
  std::unique_ptr<Communicator> comm;
  {
    py::gil_scoped_release nogil;
    const std::unique_ptr<Bootstrap> bootstrap = make_tcp_bootstrap(store);
    comm = std::make_unique<Communicator>(
        make_ucx_transport(*bootstrap, ucx_options(*options.timeout)), options);
  }
  return std::make_shared<PyCommunicator>(std::move(comm), "ucx");
#else
  (void)timeout_s;
  no_ucx();
#endif
}

std::shared_ptr<PyCommunicator> connect_store(py::object store, int rank, int size,
                                              std::string prefix, double timeout_s) {
#ifdef FRUGAL_HAVE_UCX
  const CommunicatorOptions options{milliseconds(timeout_s, "timeout")};
  // Made and destroyed with the GIL held; its allgather takes the GIL for each store call.
  const std::unique_ptr<Bootstrap> bootstrap =
      make_store_bootstrap(std::move(store), rank, size, std::move(prefix));
  std::unique_ptr<Transport> transport;
  {
    py::gil_scoped_release nogil;
    transport = make_ucx_transport(*bootstrap, ucx_options(*options.timeout));
  }
  return std::make_shared<PyCommunicator>(
      std::make_unique<Communicator>(std::move(transport), options), "ucx");
#else
  (void)store, (void)rank, (void)size, (void)prefix, (void)timeout_s;
  no_ucx();
#endif
}

// After a rank rejected its own arguments: enter a barrier, which the peers' collective does not
// match, so that they fail with Mismatch at once instead of waiting for the timeout. Errors are
// dropped: the caller raises the rejection, which is what its user needs to see.
void reject(const PyCommunicator& self) {
  if (self.closed()) return;
  const std::shared_ptr<Communicator> comm = self.use();
  if (comm->failed()) return;
  py::gil_scoped_release nogil;
  try {
    barrier(*comm);
  } catch (const std::exception&) {
  }
}

}  // namespace

PyCommunicator::~PyCommunicator() {
  if (comm_ == nullptr) return;
  // The transport's shutdown may wait (bounded) for peers; let other threads run meanwhile.
  py::gil_scoped_release nogil;
  comm_.reset();
}

std::shared_ptr<Communicator> PyCommunicator::use() const {
  if (comm_ == nullptr) {
    throw Error(ErrorCode::InvalidArgument, "comm: the communicator is closed");
  }
  return comm_;
}

void PyCommunicator::close() {
  std::shared_ptr<Communicator> comm = std::move(comm_);
  py::gil_scoped_release nogil;
  comm.reset();
}

void bind_communicator(py::module_& m) {
  py::class_<PyCommunicator, std::shared_ptr<PyCommunicator>>(m, "Communicator", R"(
A group of ranks over one transport, made by frugal.init(). Every rank must call collectives on
it in the same order. After a timeout, peer failure, transport error or mismatch it is failed:
later collectives raise the same error at once.)")
      .def_property_readonly("rank", [](const PyCommunicator& c) { return c.use()->rank(); })
      .def_property_readonly("size", [](const PyCommunicator& c) { return c.use()->size(); })
      .def_property_readonly("transport", &PyCommunicator::transport)
      .def_property_readonly("timeout",
                             [](const PyCommunicator& c) {
                               return std::chrono::duration<double>(c.use()->timeout()).count();
                             })
      .def_property_readonly("closed", &PyCommunicator::closed)
      .def_property_readonly(
          "failed", [](const PyCommunicator& c) { return !c.closed() && c.use()->failed(); })
      .def("close", &PyCommunicator::close,
           "Closes the communicator (idempotent); collectives on it raise afterwards.")
      .def("_reject", &reject)
      .def("__enter__", [](py::object self) { return self; })
      .def("__exit__",
           [](PyCommunicator& c, const py::args&) {
             c.close();
             return false;
           })
      .def("__repr__", [](const PyCommunicator& c) {
        if (c.closed()) return "<frugal.Communicator " + c.transport() + ", closed>";
        const std::shared_ptr<Communicator> comm = c.use();
        return "<frugal.Communicator " + c.transport() + ", rank " + std::to_string(comm->rank()) +
               " of " + std::to_string(comm->size()) + ">";
      });

  m.def("connect_mpi", &connect_mpi, py::arg("transport"), py::arg("timeout"));
  m.def("connect_env", &connect_env, py::arg("timeout"));
  m.def("connect_store", &connect_store, py::arg("store"), py::arg("rank"), py::arg("world_size"),
        py::arg("prefix"), py::arg("timeout"));
#ifdef FRUGAL_HAVE_UCX
  m.attr("has_ucx") = true;
#else
  m.attr("has_ucx") = false;
#endif
}

}  // namespace frugal::python
