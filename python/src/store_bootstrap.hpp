#pragma once

// A Bootstrap over a Python key-value store: a torch.distributed Store (TCPStore, PrefixStore,
// the default store of init_process_group) or any object with set(key: str, value: bytes) and a
// get(key: str) -> bytes that blocks until the key is set.
//
// allgather runs on whatever thread calls it (the UCX transport's constructor, with the GIL
// released) and takes the GIL for each store call. Errors from the store become frugal::Error:
// Timeout when the store says it timed out, Transport otherwise, both naming the key.

#include <cstdint>
#include <memory>
#include <string>

#include "bindings.hpp"
#include "frugal/bootstrap.hpp"

namespace frugal::python {

// Create and destroy with the GIL held (it owns a reference to the store).
std::unique_ptr<Bootstrap> make_store_bootstrap(py::object store, int rank, int size,
                                                std::string prefix);

}  // namespace frugal::python
