#pragma once

// The UCX transport: UCP tagged messages between the ranks of one group, with one UCP context and
// worker per transport and an endpoint per peer. UCX picks the wires (shared memory and CMA
// between ranks on one host, TCP across hosts or network namespaces, InfiniBand when present);
// UCX_TLS and the other UCX_* variables steer it as usual.
//
// Only built when UCX is found (Meson option -Ducx); the dependency frugal_ucx_dep then defines
// FRUGAL_HAVE_UCX=1 for code that wants to test for it.
//
// Ownership: Requests from a UcxTransport must be destroyed before it. Thread-safety: as for any
// Transport, one thread at a time. Errors: frugal::Error — PeerFailure when UCX reports the peer's
// endpoint broken (dead process, reset connection), Timeout when a wait passes its deadline,
// Mismatch for a message larger than the receive buffer, InvalidArgument for bad arguments,
// Transport for other UCX failures; messages name rank, peer and tag.
//
// Needs no MPI: to bootstrap over an MPI communicator, see frugal/ucx_mpi.hpp.

#include <chrono>
#include <memory>
#include <optional>
#include <string>

#include "frugal/bootstrap.hpp"
#include "frugal/communicator.hpp"
#include "frugal/transport.hpp"

namespace frugal {

// How endpoints handle a broken peer.
enum class UcxErrorMode {
  // UCP_ERR_HANDLING_MODE_PEER for every endpoint: UCX's keepalive probes every peer and fails the
  // endpoint of a dead one. In UCX 1.13 this costs all shared memory between local ranks:
  // rendezvous needs memory invalidation, which CMA lacks, and the shared-memory FIFOs only take
  // part if UCX_MM_ERROR_HANDLING=y, with which UCX aborts the process when a peer dies with sends
  // queued to it. Local ranks therefore talk TCP over loopback. Robust, but several times slower.
  Peer,
  // UCP_ERR_HANDLING_MODE_NONE with the same error callback for every endpoint: UCX may use shared
  // memory and CMA zero-copy rendezvous. Errors the wires see (a reset TCP connection, a failed
  // CMA read) still reach the callback; a dead rank on the same host is found by frugal's own
  // probe (a pidfd per local peer, polled while waiting); anything else ends in Timeout.
  Callback,
  // Per peer (the default): Callback's endpoints to ranks on this host (same boot id, network
  // and pid namespace, and host name, decided identically by both ranks of a pair from the
  // exchanged peer infos), Peer's to every other rank, where no shared memory is possible anyway
  // and only UCX's
  // keepalive can see a death.
  Auto,
};

struct UcxOptions {
  // Unset: FRUGAL_UCX_ERROR_MODE from the environment ("auto", "peer" or "callback"), else Auto.
  // Every rank must use the same setting (checked when connecting: Mismatch otherwise).
  std::optional<UcxErrorMode> error_mode;
  // Watch the processes of peers on this host (pidfd) while waiting, so that a dead local peer is
  // PeerFailure within about a millisecond. Unset: on unless FRUGAL_UCX_WATCH_PEERS=0 (the tests
  // turn it off to measure what UCX detects on its own).
  std::optional<bool> watch_local_peers;
  // How often UCX probes peers for liveness (UCX_KEEPALIVE_INTERVAL). A rank that only waits to
  // receive from a peer learns of the peer's death through this probe, so it bounds how fast a
  // dead peer becomes PeerFailure instead of Timeout. Unset: UCX_KEEPALIVE_INTERVAL if set in the
  // environment, else 1 s.
  std::optional<std::chrono::milliseconds> keepalive;
  // Messages of 64 KiB and more to ranks on this host (callback-mode endpoints) are copied once,
  // by the receiver, straight from the sender's memory (process_vm_readv) instead of through
  // UCX, whose v2 protocols in UCX 1.13 copy them twice through shared memory. Used only between
  // ranks that found at setup that they can read each other (Yama's ptrace_scope may forbid it).
  // Unset: on unless FRUGAL_UCX_DIRECT_COPY=0.
  std::optional<bool> direct_copy;
  // Upper bound on the destructor's flush and endpoint close; after it the endpoints are closed
  // forcibly, so shutdown never hangs on a dead or stalled peer.
  std::chrono::milliseconds shutdown_timeout{2'000};
  // Bound on setting up: the address exchange is the bootstrap's business, this bounds the
  // wire-up handshake with every peer that the constructor waits for.
  std::chrono::milliseconds connect_timeout{60'000};
};

// Creates the UCP context and worker, exchanges worker addresses through `bootstrap` (collective
// over its ranks), connects an endpoint to every rank (itself included) with the error handling
// that `options.error_mode` gives that rank, and wires them up. The bootstrap is only used during
// the call.
std::unique_ptr<Transport> make_ucx_transport(Bootstrap& bootstrap, const UcxOptions& options = {});

// UCX for data, the TCP store configured by FRUGAL_RANK / FRUGAL_WORLD_SIZE / FRUGAL_ADDR /
// FRUGAL_TOKEN / FRUGAL_TIMEOUT for the address exchange; no MPI involved. The store is closed
// once the endpoints are up.
std::unique_ptr<Communicator> make_ucx_communicator_from_env(CommunicatorOptions options = {},
                                                             UcxOptions ucx_options = {});

// What UCX chose for the endpoint from `transport`'s rank to `peer`: a first line
// "# frugal: err_mode=peer|none (peer on this host|on another host or network namespace)", then
// ucp_ep_print_info (lanes, transports such as "sysv/memory" or "tcp/lo", rendezvous thresholds).
// Throws InvalidArgument if `transport` is not a UCX transport or `peer` is out of range.
std::string ucx_endpoint_info(Transport& transport, int peer);

}  // namespace frugal
