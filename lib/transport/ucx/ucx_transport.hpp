#pragma once

#include <poll.h>
#include <ucp/api/ucp.h>

#include <memory>
#include <span>
#include <string>
#include <vector>

#include "frugal/bootstrap.hpp"
#include "frugal/transport.hpp"
#include "frugal/ucx.hpp"
#include "ucx_direct_copy.hpp"
#include "ucx_endpoints.hpp"
#include "ucx_handles.hpp"
#include "ucx_liveness.hpp"
#include "ucx_peer_info.hpp"

namespace frugal::transport::ucx {

// What UCX's completion callback reports. Lives in the request memory UCX allocates for us
// (ucp_params_t::request_size), so it exists exactly as long as the request: an abandoned
// request that is still in flight cannot write into freed memory.
struct Completion {
  bool done = false;
  ucs_status_t status = UCS_OK;
  std::size_t length = 0;
  ucp_tag_t sender_tag = 0;  // receives: tells a direct-copy descriptor (kDirectBit) from data
};

inline Completion& completion_of(void* request) noexcept {
  return *static_cast<Completion*>(request);
}

struct UcxOp final : PendingOp {
  using PendingOp::PendingOp;
  // Requests are released by the transport (check/abandon) before an op is destroyed.
  void* request = nullptr;  // UCX's request while it is in flight
  // Receives: the caller's buffer, into which a direct copy goes.
  std::byte* buffer = nullptr;
  // Direct copies (ucx_direct_copy.hpp). Sends: the receive of the acknowledgement while it is
  // in flight, the send's token, and the descriptor, which UCX reads until `request` completes.
  // Receives: the acknowledgement's send while UCX still queues it.
  void* ack_request = nullptr;
  std::uint64_t token = 0;
  DirectCopyDescriptor descriptor;
  // Receives: the sender gave up on this direct send before the copy was done. The receive then
  // never completes, like one whose UCX send was cancelled: it ends as the wait decides (the
  // failure that made the sender give up, seen by this rank, or Timeout), not with an error
  // blaming a sender that is alive.
  bool withdrawn = false;
};

class UcxTransport final : public Transport {
 public:
  UcxTransport(Bootstrap& bootstrap, const UcxOptions& options);
  ~UcxTransport() override;
  UcxTransport(const UcxTransport&) = delete;
  UcxTransport& operator=(const UcxTransport&) = delete;

  int rank() const noexcept override { return rank_; }
  int size() const noexcept override { return size_; }
  std::string_view name() const noexcept override { return "ucx"; }
  Tag max_tag() const noexcept override;

  Request isend(int peer, Tag tag, std::span<const std::byte> data) override;
  Request irecv(int peer, Tag tag, std::span<std::byte> data) override;
  bool test(Request& request) override;
  void wait_all(std::span<Request* const> requests, Deadline deadline) override;
  void cancel(PendingOp& op) noexcept override;

  std::string endpoint_info(int peer);

 private:
  std::unique_ptr<UcxOp> post_send(int peer, Tag tag, ucp_tag_t ucp_tag,
                                   std::span<const std::byte> data);
  std::unique_ptr<UcxOp> post_recv(int peer, Tag tag, ucp_tag_t ucp_tag, std::span<std::byte> data);
  // Sends a DirectCopyDescriptor of `data` under `token` instead of the data itself.
  std::unique_ptr<UcxOp> post_direct_send(int peer, Tag tag, std::span<const std::byte> data,
                                          std::uint64_t token);
  // The receiver's part of a direct copy, once its receive got the descriptor (`length` bytes
  // in the op's buffer): copies, checks that the send was still live, acknowledges.
  void finish_direct_recv(UcxOp& op, std::size_t length);
  // Finds out (two bootstrap rounds) which local peers can read this process's memory and this
  // process theirs; fills direct_to_.
  void agree_on_direct_copy(Bootstrap& bootstrap, const std::vector<PeerInfo>& peers,
                            const std::vector<ucp_err_handling_mode_t>& err_modes, bool enabled);
  // Sends one byte to and receives one from every rank, so that every endpoint is wired up (and
  // known to work) before the constructor returns.
  void wire_up(std::chrono::milliseconds timeout);

  // Marks local peers whose process has exited as failed (rate-limited).
  void probe_peers();
  // Looks at `op` without progressing UCX. Returns whether it completed; throws its error.
  bool check(UcxOp& op);
  // Releases UCX's request for `op` so that UCX no longer touches the buffer: cancels a receive,
  // waits (boundedly) for a send, and force-closes the endpoint of a send that does not finish.
  // A request that is still in flight after that goes to the graveyard, never freed early.
  void abandon(UcxOp& op) noexcept;
  // Receives and drops messages nobody asked for (left by failed collectives), so that UCX does
  // not warn about each at worker destruction. Bounded by `deadline`.
  void drain_unexpected(Deadline deadline) noexcept;
  // Progresses until every graveyard request has completed or `deadline`; frees the completed.
  void bury(Deadline deadline) noexcept;

  std::string where(const PendingOp& op) const;
  Error op_error(const UcxOp& op, ucs_status_t status) const;
  Error peer_error(const UcxOp& op) const;
  // "; failed before: peer r (reason)..." for every failed endpoint but `except`'s, or "".
  std::string other_failures(int except) const;

  UcxOptions options_;
  UcxErrorMode error_mode_ = UcxErrorMode::Auto;
  std::vector<bool> same_host_;  // per rank: same_host() with this rank, for endpoint_info
  int rank_ = 0;
  int size_ = 1;
  // One UCP context with its worker. A job with ranks on several hosts and several ranks on one
  // host has two (see the constructor): UCX 1.13 chooses its protocol generation per context.
  struct Fabric {
    Context context;
    Worker worker;
    bool v2 = false;  // UCX's v2 protocols (UCX_PROTO_ENABLE=y), for endpoint_info
    // Never progressed again: it holds an abandoned send that could be neither completed nor
    // cancelled (see abandon), which UCX would go on reading from a buffer the caller may free.
    bool frozen = false;
    // The worker's wake-up descriptor (ucp_worker_get_efd; the worker owns it), -1 if UCX has
    // none, in which case wait_all never sleeps.
    int event_fd = -1;
  };
  // An abandoned request still in flight, and the fabric it belongs to.
  struct Buried {
    void* request;
    std::size_t fabric;
  };
  // Progresses every worker that is not frozen once; returns the number of events UCX handled.
  unsigned progress() noexcept;
  // Arms every worker that is not frozen and sleeps until one signals an event, `deadline` or the
  // wake-up period, whichever comes first. Returns at once if UCX has unprocessed events (the
  // caller progresses and tries again). Call only after progress() returned 0.
  void sleep_until_event(Deadline deadline);
  ucp_worker_h worker_of(int peer) const noexcept {
    return fabrics_[fabric_of_[static_cast<std::size_t>(peer)]].worker.get();
  }

  // Destroyed bottom-up: endpoints are closed while the workers and contexts still exist, and
  // the endpoints' error records outlive the workers, which may still report errors into them.
  std::shared_ptr<const void> endpoint_records_;
  std::vector<Fabric> fabrics_;
  std::vector<std::size_t> fabric_of_;  // per rank: the fabric its endpoint and receives use
  std::unique_ptr<Endpoints> endpoints_;
  std::unique_ptr<LivenessProbe> liveness_;
  std::vector<Buried> graveyard_;  // abandoned requests still in flight
  // Direct copy: per rank, whether sends to it go that way; the pids to copy from; our live
  // sends; acknowledgements UCX has not finished sending (no buffer: zero bytes).
  std::vector<bool> direct_to_;
  std::vector<int> pids_;
  std::unique_ptr<LiveSends> live_sends_;
  std::vector<Buried> acks_in_flight_;
  // drain_unexpected's receive buffer: a receive it buries may still complete into it later.
  std::vector<std::byte> drain_sink_;
  Clock::time_point next_probe_{};
  // wait_all's idle policy (FRUGAL_UCX_WAIT, FRUGAL_UCX_SPIN_US, FRUGAL_UCX_YIELD_US,
  // FRUGAL_UCX_WAKE_US): whether it sleeps at all, how long it polls without an event first, then
  // polls yielding the core, and the longest sleep, which bounds how late the liveness probe and
  // UCX's timers (keepalive, sends queued on a full shared-memory FIFO, which UCX signals no event
  // for) run while the rank waits.
  bool sleep_when_idle_ = true;
  std::chrono::microseconds spin_{};
  std::chrono::microseconds yield_{};
  std::chrono::microseconds wake_period_{};
  std::vector<pollfd> wait_fds_;  // sleep_until_event's poll set, kept to avoid reallocating
};

}  // namespace frugal::transport::ucx
