// Communicators: MPI, UCX (MPI or environment bootstrap) and in-process loopback groups.

#include <chrono>
#include <cstring>
#include <functional>
#include <vector>

#include "capi_internal.hpp"
#include "frugal/frugal_mpi.h"
#include "frugal/loopback.hpp"
#include "frugal/mpi.hpp"
#ifdef FRUGAL_HAVE_UCX
#include "frugal/ucx.hpp"
#include "frugal/ucx_mpi.hpp"
#endif

namespace frugal::capi {
namespace {

// Thrown where this libfrugal lacks UCX; mapped to FRUGAL_ERR_UNSUPPORTED.
struct Unsupported {
  const char* what;
};

// A C caller may pass any int where the header says frugal_transport; reading such a value as
// the C++ enum type is undefined (UBSan flags it), so the bytes are taken as they are.
int transport_value(const frugal_transport& transport) noexcept {
  static_assert(sizeof(int) == sizeof(frugal_transport));
  int value = 0;
  std::memcpy(&value, &transport, sizeof value);
  return value;
}

std::unique_ptr<Communicator> make_from_mpi(MPI_Comm comm, int transport) {
  switch (transport) {
    case FRUGAL_TRANSPORT_MPI:
      ensure_mpi_initialized();
      return make_mpi_communicator(comm);
    case FRUGAL_TRANSPORT_UCX:
#ifdef FRUGAL_HAVE_UCX
      ensure_mpi_initialized();
      return make_ucx_communicator(comm);
#else
      throw Unsupported{"FRUGAL_TRANSPORT_UCX: this libfrugal was built without UCX"};
#endif
  }
  throw Error(ErrorCode::InvalidArgument,
              "transport " + std::to_string(transport) +
                  " is not FRUGAL_TRANSPORT_MPI (0) or FRUGAL_TRANSPORT_UCX (1)");
}

frugal_status create(std::string_view function, frugal_comm** out,
                     const std::function<std::unique_ptr<Communicator>()>& make) noexcept {
  clear_error();
  try {
    require_pointer(out, "out");
    auto handle = std::make_unique<frugal_comm>();
    handle->comm = make();
    *out = handle.release();
    return FRUGAL_OK;
  } catch (const Unsupported& unsupported) {
    return set_error(FRUGAL_ERR_UNSUPPORTED, function, unsupported.what);
  } catch (...) {
    return status_of_current_exception(function);
  }
}

}  // namespace
}  // namespace frugal::capi

using frugal::capi::guarded;
using frugal::capi::require_pointer;

extern "C" {

frugal_status frugal_comm_create_mpi(MPI_Comm comm, frugal_transport transport, frugal_comm** out) {
  return frugal::capi::create("frugal_comm_create_mpi", out, [&] {
    return frugal::capi::make_from_mpi(comm, frugal::capi::transport_value(transport));
  });
}

frugal_status frugal_comm_create_mpi_world(frugal_transport transport, frugal_comm** out) {
  return frugal::capi::create("frugal_comm_create_mpi_world", out, [&] {
    return frugal::capi::make_from_mpi(MPI_COMM_WORLD, frugal::capi::transport_value(transport));
  });
}

frugal_status frugal_comm_create_env(frugal_comm** out) {
  return frugal::capi::create("frugal_comm_create_env", out,
                              []() -> std::unique_ptr<frugal::Communicator> {
#ifdef FRUGAL_HAVE_UCX
                                return frugal::make_ucx_communicator_from_env();
#else
    throw frugal::capi::Unsupported{
        "the environment bootstrap needs UCX, and this libfrugal was built without it"};
#endif
                              });
}

frugal_status frugal_comm_create_loopback(int size, frugal_comm** comms) {
  return guarded("frugal_comm_create_loopback", [&] {
    require_pointer(comms, "comms");
    frugal::require(size >= 1, "size", "must be at least 1");
    frugal::LoopbackGroup group = frugal::make_loopback_group(size);
    std::vector<std::unique_ptr<frugal_comm>> made;
    for (auto& transport : group.transports) {
      auto handle = std::make_unique<frugal_comm>();
      handle->keepalive = group.fabric;
      handle->comm = std::make_unique<frugal::Communicator>(std::move(transport));
      made.push_back(std::move(handle));
    }
    for (int i = 0; i < size; ++i) comms[i] = made[static_cast<std::size_t>(i)].release();
  });
}

void frugal_comm_destroy(frugal_comm* comm) {
  // The destructor runs what is still queued; every wait in it has a deadline, so this ends.
  // Destructors do not throw; the guard is for the rule, not for an expected path.
  (void)guarded("frugal_comm_destroy", [&] { delete comm; });
}

frugal_status frugal_comm_rank(const frugal_comm* comm, int* rank) {
  return guarded("frugal_comm_rank", [&] {
    require_pointer(comm, "comm");
    require_pointer(rank, "rank");
    *rank = comm->comm->rank();
  });
}

frugal_status frugal_comm_size(const frugal_comm* comm, int* size) {
  return guarded("frugal_comm_size", [&] {
    require_pointer(comm, "comm");
    require_pointer(size, "size");
    *size = comm->comm->size();
  });
}

frugal_status frugal_comm_set_timeout_ms(frugal_comm* comm, int64_t timeout_ms) {
  return guarded("frugal_comm_set_timeout_ms", [&] {
    require_pointer(comm, "comm");
    frugal::require(timeout_ms > 0, "timeout_ms", "must be positive");
    comm->comm->set_timeout(std::chrono::milliseconds(timeout_ms));
  });
}

}  // extern "C"
