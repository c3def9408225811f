#include "ucx_endpoints.hpp"

#include <string>
#include <utility>

#include "frugal/error.hpp"
#include "frugal/transport.hpp"

namespace frugal::transport::ucx {

namespace {

// Waits for a close request from ucp_ep_close_nbx, progressing the worker until `deadline`.
// Returns false if it did not finish (the request is then released unfinished; the worker's
// destruction reclaims the endpoint).
bool finish_close(ucp_worker_h worker, ucs_status_ptr_t request, Deadline deadline) {
  if (request == nullptr || UCS_PTR_IS_ERR(request)) return true;
  bool finished = false;
  while (!(finished = ucp_request_check_status(request) != UCS_INPROGRESS) &&
         Clock::now() < deadline) {
    ucp_worker_progress(worker);
  }
  ucp_request_free(request);
  return finished;
}

}  // namespace

Endpoints::Endpoints(std::span<const ucp_worker_h> workers,
                     std::span<const std::vector<std::byte>> addresses,
                     std::span<const ucp_err_handling_mode_t> err_modes,
                     std::chrono::milliseconds close_timeout)
    : close_timeout_(close_timeout), peers_(std::make_shared<std::vector<Peer>>(addresses.size())) {
  if (err_modes.size() != addresses.size() || workers.size() != addresses.size()) {
    throw Error(ErrorCode::Internal, "Endpoints: one worker and error mode per address expected");
  }
  for (std::size_t r = 0; r < addresses.size(); ++r) {
    Peer& peer = (*peers_)[r];
    peer.rank = static_cast<int>(r);
    peer.worker = workers[r];
    peer.err_mode = err_modes[r];
    ucp_ep_params_t params{};
    params.field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS | UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE |
                        UCP_EP_PARAM_FIELD_ERR_HANDLER;
    params.address = reinterpret_cast<const ucp_address_t*>(addresses[r].data());
    // The callback is installed in either mode: UCX calls it for any endpoint error it sees
    // (ucp_ep_set_failed), and without one it would only log the error.
    params.err_mode = peer.err_mode;
    params.err_handler.cb = &Endpoints::on_error;
    params.err_handler.arg = &peer;
    const ucs_status_t status = ucp_ep_create(peer.worker, &params, &peer.ep);
    if (status != UCS_OK) {
      peer.ep = nullptr;
      close_all();
      throw Error(ErrorCode::Transport, "ucp_ep_create to rank " + std::to_string(r) +
                                            " failed: " + ucs_status_string(status));
    }
  }
}

Endpoints::~Endpoints() {
  close_all();
}

void Endpoints::on_error(void* arg, ucp_ep_h, ucs_status_t status) {
  auto* peer = static_cast<Peer*>(arg);
  if (peer->failure != UCS_OK) return;
  peer->failure = status;
  peer->reason = std::string("UCX reported its endpoint broken (") + ucs_status_string(status) +
                 "): the process died or the connection was lost";
}

void Endpoints::mark_failed(int rank, const std::string& reason) noexcept {
  Peer& peer = (*this)[rank];
  if (peer.failed()) return;
  peer.failure = UCS_ERR_CONNECTION_RESET;
  peer.reason = reason;
}

bool Endpoints::force_close(int rank, const std::string& reason) noexcept {
  Peer& peer = (*this)[rank];
  if (peer.ep == nullptr) return true;
  if (peer.err_mode != UCP_ERR_HANDLING_MODE_PEER) {
    if (!peer.failed()) {
      peer.failure = UCS_ERR_CANCELED;  // as a closed endpoint: says nothing about the peer
      peer.reason = reason;
    }
    return false;
  }
  ucp_request_param_t params{};
  params.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
  params.flags = UCP_EP_CLOSE_FLAG_FORCE;
  const ucs_status_ptr_t request = ucp_ep_close_nbx(peer.ep, &params);
  peer.ep = nullptr;
  if (peer.failure == UCS_OK) {
    peer.failure = UCS_ERR_CANCELED;
    peer.reason = reason;
  }
  // A forced close completes locally; the bound is only a guard.
  finish_close(peer.worker, request, Clock::now() + close_timeout_);
  return true;
}

void Endpoints::forget(ucp_worker_h worker) noexcept {
  for (Peer& peer : *peers_) {
    if (peer.worker == worker) peer.ep = nullptr;
  }
}

void Endpoints::close_all() noexcept {
  // Post every close first, then progress them together: one slow peer costs the bound once.
  std::vector<std::pair<ucp_worker_h, ucs_status_ptr_t>> requests;
  requests.reserve(peers_->size());
  for (Peer& peer : *peers_) {
    if (peer.ep == nullptr) continue;
    ucp_request_param_t params{};
    params.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
    // Flush what is still queued to healthy peers; a failed endpoint can only be force-closed
    // (in peer mode; UCX rejects the close of another, which its worker's destruction reclaims).
    params.flags = peer.failed() ? UCP_EP_CLOSE_FLAG_FORCE : 0;
    requests.emplace_back(peer.worker, ucp_ep_close_nbx(peer.ep, &params));
    peer.ep = nullptr;
  }
  const Deadline deadline = Clock::now() + close_timeout_;
  for (const auto& [worker, request] : requests) finish_close(worker, request, deadline);
}

}  // namespace frugal::transport::ucx
