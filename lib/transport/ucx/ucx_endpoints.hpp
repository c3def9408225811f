#pragma once

// The endpoints to every rank, owned together: each created on the worker given for its rank (a
// transport may run two, see UcxTransport), with an error callback and its own error-handling
// mode (UCX's peer mode or none), closed in the destructor.
// Closing flushes healthy endpoints and force-closes broken ones, progressing the worker for at
// most `close_timeout`, so that shutdown never hangs on a dead or stalled peer.

#include <ucp/api/ucp.h>

#include <chrono>
#include <cstddef>
#include <memory>
#include <span>
#include <string>
#include <vector>

namespace frugal::transport::ucx {

// One remote rank: its endpoint and what UCX reported about it.
struct Peer {
  int rank = 0;
  ucp_worker_h worker = nullptr;  // the worker `ep` belongs to
  ucp_ep_h ep = nullptr;
  ucp_err_handling_mode_t err_mode = UCP_ERR_HANDLING_MODE_NONE;
  ucs_status_t failure = UCS_OK;  // set by the error callback or by a forced close
  std::string reason;             // why the endpoint is unusable, for error messages
  bool failed() const noexcept { return failure != UCS_OK; }
};

class Endpoints {
 public:
  // Connects to every address (index = rank) from that rank's worker (`workers`) with its error
  // mode (`err_modes`), all three the same size. Throws Error(Transport) naming the rank that
  // failed; endpoints already created are closed.
  Endpoints(std::span<const ucp_worker_h> workers,
            std::span<const std::vector<std::byte>> addresses,
            std::span<const ucp_err_handling_mode_t> err_modes,
            std::chrono::milliseconds close_timeout);
  ~Endpoints();
  Endpoints(const Endpoints&) = delete;
  Endpoints& operator=(const Endpoints&) = delete;

  Peer& operator[](int rank) noexcept { return (*peers_)[static_cast<std::size_t>(rank)]; }
  const Peer& operator[](int rank) const noexcept {
    return (*peers_)[static_cast<std::size_t>(rank)];
  }

  // The records UCX's error callback writes to. An endpoint whose close did not finish can still
  // report an error while its worker is progressed after this object is gone (the transport's
  // shutdown drains abandoned requests), so whoever owns the worker keeps these alive as long.
  std::shared_ptr<const void> records() const noexcept { return peers_; }

  // Closes `rank`'s endpoint at once, which makes UCX complete (with UCS_ERR_CANCELED) every
  // operation still queued on it and forget the buffers; the peer counts as failed afterwards.
  // Returns false for an endpoint not in UCX's peer error mode: UCX 1.13 refuses to force-close
  // those (UCS_ERR_INVALID_PARAM) and keeps their operations queued; the endpoint stays open, but
  // the peer counts as failed all the same (nothing more is sent to it).
  bool force_close(int rank, const std::string& reason) noexcept;
  // Forgets every endpoint of `worker` without closing it: closing progresses the worker, which
  // must not happen again once it holds a send whose buffer may be gone (UcxTransport::abandon).
  void forget(ucp_worker_h worker) noexcept;
  // Records that `rank` is gone (found by other means than UCX); its endpoint is force-closed
  // when it is abandoned or at shutdown.
  void mark_failed(int rank, const std::string& reason) noexcept;

 private:
  static void on_error(void* arg, ucp_ep_h ep, ucs_status_t status);
  void close_all() noexcept;

  std::chrono::milliseconds close_timeout_;
  // Sized once: the error callback holds pointers into it.
  std::shared_ptr<std::vector<Peer>> peers_;
};

}  // namespace frugal::transport::ucx
