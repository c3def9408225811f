#include "ucx_transport.hpp"

#include <poll.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <iterator>
#include <new>
#include <string>
#include <string_view>
#include <thread>

#include "frugal/error.hpp"
#include "ucx_peer_info.hpp"
#include "ucx_tags.hpp"

namespace frugal::transport::ucx {

namespace {

// How long an abandoned send may take to finish on its own before its endpoint is force-closed.
constexpr std::chrono::milliseconds kAbandonGrace{500};

// wait_all polls this long without an event before it yields the core between polls: a
// shared-memory message that is about to arrive is taken at once.
constexpr std::chrono::microseconds kDefaultSpin{50};
// ...and then this long before it sleeps. A peer that shares this rank's core answers within its
// time slice (4 ranks on 2 cores: the dense ring took 455-486 ms per 100 MiB with this, 487-634
// ms sleeping right after the spin, 527-708 ms never sleeping, alternated runs on a loaded
// machine), while a wait for a straggler or a slow link gives its core back after a millisecond.
constexpr std::chrono::microseconds kDefaultYield{1000};
// The longest sleep: the liveness probe's period (probe_peers), which also bounds how late a
// send queued on a full shared-memory FIFO is retried (UCX signals no event when the receiver
// makes room).
constexpr std::chrono::microseconds kDefaultWakePeriod{1000};

void on_send_done(void* request, ucs_status_t status, void*) {
  Completion& completion = completion_of(request);
  completion.status = status;
  completion.done = true;
}

void on_recv_done(void* request, ucs_status_t status, const ucp_tag_recv_info_t* info, void*) {
  Completion& completion = completion_of(request);
  completion.status = status;
  if (status == UCS_OK && info != nullptr) {
    completion.length = info->length;
    completion.sender_tag = info->sender_tag;
  }
  completion.done = true;
}

// Called once when UCX allocates a request slot. Slots are reused, so release() clears the state
// again before handing a slot back; it cannot be cleared after posting, because UCX may run the
// callback inside the posting call (NO_IMM_CMPL with data already there).
void init_request(void* request) {
  new (request) Completion();
}

void release(void* request) noexcept {
  completion_of(request) = Completion();
  ucp_request_free(request);
}

bool env_set(const char* name) {
  const char* value = std::getenv(name);
  return value != nullptr && *value != '\0';
}

// Sets a UCX option unless the user chose it in the environment (UCX_<name>).
void default_option(ucp_config_t* config, const char* name, const std::string& value) {
  if (env_set(("UCX_" + std::string(name)).c_str())) return;
  const ucs_status_t status = ucp_config_modify(config, name, value.c_str());
  if (status != UCS_OK) {
    throw Error(ErrorCode::Transport, "ucp_config_modify(" + std::string(name) + "=" + value +
                                          ") failed: " + ucs_status_string(status));
  }
}

// True if UCX_PROTO_ENABLE in the environment turns the v2 protocols on.
bool env_proto_v2(bool fallback) {
  const char* value = std::getenv("UCX_PROTO_ENABLE");
  if (value == nullptr || *value == '\0') return fallback;
  const std::string text = value;
  return text == "y" || text == "yes" || text == "on" || text == "1";
}

// The configuration of one context. `v2`: UCX 1.13's v2 protocols, else v1 (UCX_PROTO_ENABLE,
// when set, overrides either way). Which generation a context needs is decided by its endpoints:
//  - Callback mode (shared memory + CMA between ranks of one host) needs v2: the v1 protocols lost
//    rendezvous completions over CMA (with 3-4 ranks a pipelined broadcast left a sender waiting
//    for an acknowledgement its receiver had already sent; reproducible within a few runs of
//    tests/mpi under ucx).
//  - Peer mode (TCP) needs v1. When UCX fails or force-closes an endpoint, it purges the
//    requests still queued on it (ucp_ep_discard_lanes -> uct_*_ep_pending_purge ->
//    ucp_ep_err_pending_purge). v1 completes them with the error; v2 calls the protocol's abort,
//    which in UCX 1.13 is ucs_empty_function_do_assert for every tag eager protocol and most
//    rendezvous stages: the process aborts. Over TCP to a peer that stopped reading, sends queue
//    up, so this happened in 1 of 8 peer-mode runs on v2 and on a survivor in 2 namespaces x 2
//    ranks when the victim's link went down before it died.
// Peer mode deliberately leaves UCX_MM_ERROR_HANDLING at UCX's default (off), so UCX uses TCP
// between local ranks there: with it on, UCX 1.13 aborts the process (assertion in
// uct_mm_ep_pending_purge) when a peer dies while sends to it are queued.
Config read_config(const UcxOptions& options, bool v2) {
  ucp_config_t* raw = nullptr;
  const ucs_status_t status = ucp_config_read(nullptr, nullptr, &raw);
  if (status != UCS_OK) {
    throw Error(ErrorCode::Transport,
                std::string("ucp_config_read failed: ") + ucs_status_string(status));
  }
  Config config(raw);
  default_option(config.get(), "PROTO_ENABLE", v2 ? "y" : "n");
  if (!env_set("UCX_KEEPALIVE_INTERVAL")) {
    const auto keepalive = options.keepalive.value_or(std::chrono::milliseconds(1000));
    default_option(config.get(), "KEEPALIVE_INTERVAL", std::to_string(keepalive.count()) + "ms");
  }
  return config;
}

// `wakeup`: the workers get an event descriptor to sleep on (UCP_FEATURE_WAKEUP). UCX then only
// chooses transports that can signal events, which rules out `self`: a rank's sends to itself go
// through shared memory (or TCP in peer mode) instead, the same wires as to a local peer.
Context make_context(ucp_config_t* config, int size, bool wakeup) {
  ucp_params_t params{};
  params.field_mask = UCP_PARAM_FIELD_FEATURES | UCP_PARAM_FIELD_ESTIMATED_NUM_EPS |
                      UCP_PARAM_FIELD_MT_WORKERS_SHARED | UCP_PARAM_FIELD_REQUEST_SIZE |
                      UCP_PARAM_FIELD_REQUEST_INIT;
  params.features = UCP_FEATURE_TAG | (wakeup ? UCP_FEATURE_WAKEUP : 0);
  params.request_size = sizeof(Completion);
  params.request_init = &init_request;
  params.estimated_num_eps = static_cast<std::size_t>(size);
  params.mt_workers_shared = 0;
  ucp_context_h context = nullptr;
  const ucs_status_t status = ucp_init(&params, config, &context);
  if (status != UCS_OK) {
    throw Error(ErrorCode::Transport, std::string("ucp_init failed: ") + ucs_status_string(status));
  }
  return Context(context);
}

Worker make_worker(ucp_context_h context) {
  ucp_worker_params_t params{};
  params.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE;
  // One thread at a time, possibly a different one each time (Transport's contract).
  params.thread_mode = UCS_THREAD_MODE_SERIALIZED;
  ucp_worker_h worker = nullptr;
  const ucs_status_t status = ucp_worker_create(context, &params, &worker);
  if (status != UCS_OK) {
    throw Error(ErrorCode::Transport,
                std::string("ucp_worker_create failed: ") + ucs_status_string(status));
  }
  return Worker(worker);
}

// The worker's event descriptor, or -1 if it has none (then the transport polls).
int event_fd(ucp_worker_h worker) {
  int fd = -1;
  return ucp_worker_get_efd(worker, &fd) == UCS_OK ? fd : -1;
}

// A duration in microseconds from the environment: digits only, at most `max`.
std::chrono::microseconds env_microseconds(const char* name, std::chrono::microseconds fallback,
                                           std::chrono::microseconds max) {
  const char* env = std::getenv(name);
  if (env == nullptr || *env == '\0') return fallback;
  const std::string text = env;
  const bool digits =
      text.size() <= 12 && std::ranges::all_of(text, [](char c) { return c >= '0' && c <= '9'; });
  if (!digits || std::stoll(text) > max.count()) {
    throw Error(ErrorCode::InvalidArgument, std::string(name) +
                                                ": expected a whole number of microseconds "
                                                "from 0 to " +
                                                std::to_string(max.count()) + ", got '" + text +
                                                "'");
  }
  return std::chrono::microseconds(std::stoll(text));
}

bool resolve_sleep_when_idle() {
  const char* env = std::getenv("FRUGAL_UCX_WAIT");
  if (env == nullptr || *env == '\0') return true;
  const std::string text = env;
  if (text == "block") return true;
  if (text == "spin") return false;
  throw Error(ErrorCode::InvalidArgument,
              "FRUGAL_UCX_WAIT: expected 'block' or 'spin', got '" + text + "'");
}

UcxErrorMode resolve_error_mode(const UcxOptions& options) {
  if (options.error_mode) return *options.error_mode;
  const char* env = std::getenv("FRUGAL_UCX_ERROR_MODE");
  if (env == nullptr || *env == '\0') return UcxErrorMode::Auto;
  const std::string text = env;
  if (text == "auto") return UcxErrorMode::Auto;
  if (text == "peer") return UcxErrorMode::Peer;
  if (text == "callback") return UcxErrorMode::Callback;
  throw Error(ErrorCode::InvalidArgument,
              "FRUGAL_UCX_ERROR_MODE: expected 'auto', 'peer' or 'callback', got '" + text + "'");
}

std::string mode_name(std::uint8_t mode) {
  switch (mode) {
    case static_cast<std::uint8_t>(UcxErrorMode::Peer):
      return "peer";
    case static_cast<std::uint8_t>(UcxErrorMode::Callback):
      return "callback";
    case static_cast<std::uint8_t>(UcxErrorMode::Auto):
      return "auto";
    default:
      return "unknown (" + std::to_string(mode) + ")";
  }
}

// The UCX error mode of the endpoint from `self` to `peer` under the setting `mode`. In auto mode
// it depends only on same_host(), which is symmetric, so both ends of every pair agree as UCX
// requires.
ucp_err_handling_mode_t endpoint_err_mode(UcxErrorMode mode, const PeerInfo& self,
                                          const PeerInfo& peer) {
  switch (mode) {
    case UcxErrorMode::Peer:
      return UCP_ERR_HANDLING_MODE_PEER;
    case UcxErrorMode::Callback:
      return UCP_ERR_HANDLING_MODE_NONE;
    case UcxErrorMode::Auto:
      break;
  }
  return same_host(self, peer) ? UCP_ERR_HANDLING_MODE_NONE : UCP_ERR_HANDLING_MODE_PEER;
}

// True if some two ranks are (`shared` = true) or are not (false) on one host (same_host). The
// same on every rank: it is computed from the same blobs.
bool any_pair(const std::vector<PeerInfo>& peers, bool shared) {
  for (std::size_t i = 0; i < peers.size(); ++i) {
    for (std::size_t j = i + 1; j < peers.size(); ++j) {
      if (same_host(peers[i], peers[j]) == shared) return true;
    }
  }
  return false;
}

WorkerAddress worker_address(ucp_worker_h worker) {
  ucp_address_t* address = nullptr;
  std::size_t length = 0;
  const ucs_status_t status = ucp_worker_get_address(worker, &address, &length);
  if (status != UCS_OK) {
    throw Error(ErrorCode::Transport,
                std::string("ucp_worker_get_address failed: ") + ucs_status_string(status));
  }
  return WorkerAddress(worker, address, length);
}

// What one of UCX's print-to-FILE calls writes, as a string.
template <class Print>
std::string printed(Print print) {
  char* text = nullptr;
  std::size_t length = 0;
  FILE* stream = open_memstream(&text, &length);
  if (stream == nullptr) throw Error(ErrorCode::Internal, "open_memstream failed");
  print(stream);
  std::fclose(stream);
  std::string info(text, length);
  std::free(text);
  return info;
}

// ucp_ep_print_info's text: the endpoint's lanes and thresholds.
std::string ep_info(ucp_ep_h ep) {
  return printed([ep](FILE* stream) { ucp_ep_print_info(ep, stream); });
}

// True if TCP is the only network transport among the context's resources (ucp_context_print_info
// lines "resource N : md M dev D flags -- <tl>/<device>"): tcp, and besides it only transports
// that stay on this host. A transport not named here counts as a network one, so an RDMA-capable
// context keeps UCX's defaults.
bool tcp_only_network(ucp_context_h context) {
  const std::string info =
      printed([context](FILE* stream) { ucp_context_print_info(context, stream); });
  // Memory-only transports, GPU copies included: a CUDA- or ROCm-enabled UCX lists them on
  // hosts whose only network is TCP.
  static constexpr std::string_view kLocal[] = {"self",     "sysv",      "posix",     "cma",
                                                "knem",     "xpmem",     "cuda_copy", "cuda_ipc",
                                                "gdr_copy", "rocm_copy", "rocm_ipc",  "ze_copy"};
  bool tcp = false;
  for (std::size_t at = info.find("resource"); at != std::string::npos;
       at = info.find("resource", at + 1)) {
    const std::size_t dashes = info.find("-- ", at);
    const std::size_t end = info.find('\n', at);
    if (dashes == std::string::npos || dashes > end) continue;
    const std::size_t slash = info.find('/', dashes);
    if (slash == std::string::npos || slash > end) continue;
    const std::string_view tl = std::string_view(info).substr(dashes + 3, slash - dashes - 3);
    if (tl == "tcp") {
      tcp = true;
    } else if (std::ranges::find(kLocal, tl) == std::end(kLocal)) {
      return false;
    }
  }
  return tcp;
}

}  // namespace

UcxTransport::UcxTransport(Bootstrap& bootstrap, const UcxOptions& options)
    : options_(options),
      error_mode_(resolve_error_mode(options)),
      rank_(bootstrap.rank()),
      size_(bootstrap.size()),
      sleep_when_idle_(resolve_sleep_when_idle()),
      spin_(env_microseconds("FRUGAL_UCX_SPIN_US", kDefaultSpin, std::chrono::seconds(10))),
      yield_(env_microseconds("FRUGAL_UCX_YIELD_US", kDefaultYield, std::chrono::seconds(10))),
      wake_period_(
          env_microseconds("FRUGAL_UCX_WAKE_US", kDefaultWakePeriod, std::chrono::seconds(10))) {
  require(wake_period_.count() > 0, "FRUGAL_UCX_WAKE_US", "must be at least 1 microsecond");
  require(size_ >= 1 && rank_ >= 0 && rank_ < size_, "bootstrap", "has an invalid rank or size");
  require(size_ <= kMaxRanks, "bootstrap", "has more ranks than UCP tags can name (2^30)");
  const auto check_count = [this](std::size_t count, const char* what) {
    if (count != static_cast<std::size_t>(size_)) {
      throw Error(ErrorCode::Internal, "bootstrap returned " + std::to_string(count) + " " + what +
                                           " for " + std::to_string(size_) + " ranks");
    }
  };
  // Round 1, before UCX is configured: where every rank runs and which error-mode setting it
  // uses. The protocol generation (a context-wide UCX setting) depends on whether any two ranks
  // share a host, so every rank must know all locations first.
  std::vector<PeerInfo> peers(static_cast<std::size_t>(size_));
  {
    PeerInfo mine = local_peer_info();
    mine.error_mode = static_cast<std::uint8_t>(error_mode_);
    const std::vector<std::vector<std::byte>> blobs = bootstrap.allgather(encode(mine));
    check_count(blobs.size(), "peer infos");
    for (int r = 0; r < size_; ++r) {
      peers[static_cast<std::size_t>(r)] = decode(blobs[static_cast<std::size_t>(r)], r);
    }
  }
  for (int r = 0; r < size_; ++r) {
    const PeerInfo& peer = peers[static_cast<std::size_t>(r)];
    if (peer.error_mode != static_cast<std::uint8_t>(error_mode_)) {
      throw Error(ErrorCode::Mismatch,
                  "rank " + std::to_string(rank_) + " uses UCX error mode " +
                      mode_name(static_cast<std::uint8_t>(error_mode_)) + " but rank " +
                      std::to_string(r) + " uses " + mode_name(peer.error_mode) +
                      " (FRUGAL_UCX_ERROR_MODE must be the same on every rank)");
    }
  }
  const PeerInfo& me = peers[static_cast<std::size_t>(rank_)];
  for (const PeerInfo& peer : peers) same_host_.push_back(same_host(me, peer));
  // The fabrics (context + worker) and which rank's endpoint lives on which, decided from the
  // same blobs on every rank, so both ends of every endpoint agree. Callback mode: one, v2. Peer
  // mode: one, v1. Auto: v2 for the callback-mode endpoints to ranks on this host, v1 for the
  // peer-mode ones to other hosts (read_config says why each); a job with both kinds of pairs
  // gets both fabrics on every rank (a rank alone on its host only uses the first for itself).
  std::vector<bool> fabric_v2;
  fabric_of_.assign(static_cast<std::size_t>(size_), 0);
  switch (error_mode_) {
    case UcxErrorMode::Callback:
      fabric_v2 = {true};
      break;
    case UcxErrorMode::Peer:
      fabric_v2 = {false};
      break;
    case UcxErrorMode::Auto: {
      const bool shared = any_pair(peers, true);
      if (shared && any_pair(peers, false)) {
        fabric_v2 = {true, false};
        for (int r = 0; r < size_; ++r) {
          fabric_of_[static_cast<std::size_t>(r)] = same_host_[static_cast<std::size_t>(r)] ? 0 : 1;
        }
      } else {
        fabric_v2 = {shared};
      }
      break;
    }
  }
  for (const bool v2 : fabric_v2) {
    const Config config = read_config(options, v2);
    Fabric fabric;
    fabric.context = make_context(config.get(), size_, sleep_when_idle_);
    // The protocols in use, not the ones asked for: UCX_PROTO_ENABLE can turn v2 on here.
    fabric.v2 = env_proto_v2(v2);
    // Over TCP, send every message eagerly (unless UCX_RNDV_THRESH says otherwise). A rendezvous
    // send moves no data until the receiver has answered its request, and each step of that
    // handshake waits until the other side progresses its worker, which a rank does only inside
    // frugal's calls. A send posted while both ranks compute (the two-phase scatter sends each
    // chunk as soon as it is encoded) therefore stalled, and over 1 Gbit/s shaped links the
    // pipelined scatter came out slower than sending after all encodes (docs/performance.md,
    // "Two-phase: pipelined phases"). Eager sends start writing to the socket when posted.
    // Rendezvous saves no copy over TCP; eager's price is that a message arriving before its
    // receive is posted is buffered whole by the receiver, not just announced. Only the v1
    // (peer-mode) fabric: the v2 one is for ranks of this host, where rendezvous is a CMA
    // zero-copy.
    if (!fabric.v2 && !env_set("UCX_RNDV_THRESH") && tcp_only_network(fabric.context.get())) {
      default_option(config.get(), "RNDV_THRESH", "inf");
      fabric.context = make_context(config.get(), size_, sleep_when_idle_);
    }
    fabric.worker = make_worker(fabric.context.get());
    if (sleep_when_idle_) fabric.event_fd = event_fd(fabric.worker.get());
    fabrics_.push_back(std::move(fabric));
  }

  // Round 2 (one allgather per fabric): the worker addresses.
  std::vector<std::vector<std::byte>> addresses(static_cast<std::size_t>(size_));
  for (std::size_t f = 0; f < fabrics_.size(); ++f) {
    const WorkerAddress address = worker_address(fabrics_[f].worker.get());
    std::vector<std::vector<std::byte>> all = bootstrap.allgather(address.bytes());
    check_count(all.size(), "worker addresses");
    for (int r = 0; r < size_; ++r) {
      if (all[static_cast<std::size_t>(r)].empty()) {
        throw Error(ErrorCode::Mismatch,
                    "rank " + std::to_string(r) + " published an empty UCX worker address");
      }
      if (fabric_of_[static_cast<std::size_t>(r)] == f) {
        addresses[static_cast<std::size_t>(r)] = std::move(all[static_cast<std::size_t>(r)]);
      }
    }
  }
  std::vector<ucp_err_handling_mode_t> err_modes;
  std::vector<ucp_worker_h> workers;
  for (int r = 0; r < size_; ++r) {
    err_modes.push_back(endpoint_err_mode(error_mode_, me, peers[static_cast<std::size_t>(r)]));
    workers.push_back(worker_of(r));
  }
  endpoints_ = std::make_unique<Endpoints>(workers, addresses, err_modes, options.shutdown_timeout);
  endpoint_records_ = endpoints_->records();
  bool direct = true;
  if (options.direct_copy) {
    direct = *options.direct_copy;
  } else if (const char* env = std::getenv("FRUGAL_UCX_DIRECT_COPY"); env != nullptr) {
    direct = std::string(env) != "0";
  }
  agree_on_direct_copy(bootstrap, peers, err_modes, direct);
  bool watch = true;
  if (options.watch_local_peers) {
    watch = *options.watch_local_peers;
  } else if (const char* env = std::getenv("FRUGAL_UCX_WATCH_PEERS"); env != nullptr) {
    watch = std::string(env) != "0";
  }
  if (!watch) {
    for (PeerInfo& peer : peers) peer.boot_id.clear();  // no peer counts as local
  }
  liveness_ = std::make_unique<LivenessProbe>(peers, rank_);
  wire_up(options.connect_timeout);
}

UcxTransport::~UcxTransport() {
  const Deadline deadline = Clock::now() + options_.shutdown_timeout;
  drain_unexpected(Clock::now() + options_.shutdown_timeout / 4);
  for (Fabric& fabric : fabrics_) {
    if (fabric.frozen) endpoints_->forget(fabric.worker.get());
  }
  graveyard_.insert(graveyard_.end(), acks_in_flight_.begin(), acks_in_flight_.end());
  acks_in_flight_.clear();
  endpoints_.reset();  // closes (bounded) before the worker goes
  bury(deadline);
  if (!graveyard_.empty()) {
    // Destroying a worker with requests in flight crashes UCX 1.13 (it dereferences their
    // protocol state while reporting the leak). Leaking the worker and context of a failed
    // transport is the lesser evil; this only happens after a peer stopped responding.
    std::fprintf(stderr,
                 "frugal: ucx: rank %d: %zu request(s) still in flight at shutdown; leaving the "
                 "UCX worker undestroyed\n",
                 rank_, graveyard_.size());
    for (Fabric& fabric : fabrics_) {
      (void)fabric.worker.release();
      (void)fabric.context.release();
    }
  }
}

Tag UcxTransport::max_tag() const noexcept {
  return kMaxTag;
}

unsigned UcxTransport::progress() noexcept {
  unsigned events = 0;
  for (Fabric& fabric : fabrics_) {
    if (!fabric.frozen) events += ucp_worker_progress(fabric.worker.get());
  }
  if (!acks_in_flight_.empty()) {
    std::erase_if(acks_in_flight_, [](const Buried& ack) {
      if (!completion_of(ack.request).done) return false;
      release(ack.request);
      return true;
    });
  }
  return events;
}

void UcxTransport::agree_on_direct_copy(Bootstrap& bootstrap, const std::vector<PeerInfo>& peers,
                                        const std::vector<ucp_err_handling_mode_t>& err_modes,
                                        bool enabled) {
  const auto n = static_cast<std::size_t>(size_);
  live_sends_ = std::make_unique<LiveSends>();
  direct_to_.assign(n, false);
  pids_.assign(n, 0);
  // Round 3: where each rank's probe word is.
  const std::uint64_t mine = live_sends_->probe_address();
  std::vector<std::byte> blob(sizeof mine);
  std::memcpy(blob.data(), &mine, sizeof mine);
  const std::vector<std::vector<std::byte>> probes = bootstrap.allgather(blob);
  // Round 4: which ranks each rank can read. Only peers on this host with callback-mode
  // endpoints to which UCX itself would use CMA: peer mode exists to keep local traffic off
  // shared memory, UCX_TLS may have ruled CMA out, and a pid only names the same process within
  // one pid namespace.
  std::vector<std::byte> readable(n, std::byte{0});
  const PeerInfo& me = peers[static_cast<std::size_t>(rank_)];
  for (std::size_t r = 0; r < n && enabled; ++r) {
    pids_[r] = peers[r].pid;
    if (static_cast<int>(r) == rank_ || err_modes[r] != UCP_ERR_HANDLING_MODE_NONE ||
        !me.same_process_space(peers[r]) || probes[r].size() != sizeof(std::uint64_t) ||
        ep_info((*endpoints_)[static_cast<int>(r)].ep).find("cma/") == std::string::npos) {
      continue;
    }
    std::uint64_t address = 0;
    std::memcpy(&address, probes[r].data(), sizeof address);
    std::uint64_t word = 0;
    const int error = copy_from_process(peers[r].pid, address,
                                        std::as_writable_bytes(std::span<std::uint64_t>(&word, 1)));
    if (error == 0 && word == kDirectCopyMagic) readable[r] = std::byte{1};
  }
  const std::vector<std::vector<std::byte>> all = bootstrap.allgather(readable);
  for (std::size_t r = 0; r < n && enabled; ++r) {
    // Rank r copies what we send it, so it must be able to read us; we read its descriptors'
    // slots only when it sends to us, which it decides the same way.
    const auto self = static_cast<std::size_t>(rank_);
    direct_to_[r] = all[r].size() == n && all[r][self] == std::byte{1};
  }
}

void UcxTransport::wire_up(std::chrono::milliseconds timeout) {
  std::vector<std::byte> out(static_cast<std::size_t>(size_), std::byte{1});
  std::vector<std::byte> in(static_cast<std::size_t>(size_));
  std::vector<Request> requests;
  requests.reserve(2 * static_cast<std::size_t>(size_));
  for (int r = 0; r < size_; ++r) {
    requests.emplace_back(post_recv(r, 0, make_internal_tag(r, 0),
                                    std::span(in).subspan(static_cast<std::size_t>(r), 1)));
  }
  for (int r = 0; r < size_; ++r) {
    requests.emplace_back(post_send(r, 0, make_internal_tag(rank_, 0),
                                    std::span(out).subspan(static_cast<std::size_t>(r), 1)));
  }
  std::vector<Request*> pointers;
  for (Request& r : requests) pointers.push_back(&r);
  wait_all(pointers, Clock::now() + timeout);
}

std::unique_ptr<UcxOp> UcxTransport::post_send(int peer, Tag tag, ucp_tag_t ucp_tag,
                                               std::span<const std::byte> data) {
  auto op = std::make_unique<UcxOp>(*this, OpKind::Send, peer, tag, data.size());
  Peer& p = (*endpoints_)[peer];
  if (p.failed()) throw peer_error(*op);
  ucp_request_param_t params{};
  params.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK;
  params.cb.send = &on_send_done;
  const ucs_status_ptr_t status =
      ucp_tag_send_nbx(p.ep, data.data(), data.size(), ucp_tag, &params);
  if (UCS_PTR_IS_ERR(status)) throw op_error(*op, UCS_PTR_STATUS(status));
  if (status == nullptr) {
    op->transferred_bytes = data.size();
    op->complete = true;
  } else {
    op->request = status;
  }
  return op;
}

std::unique_ptr<UcxOp> UcxTransport::post_recv(int peer, Tag tag, ucp_tag_t ucp_tag,
                                               std::span<std::byte> data) {
  auto op = std::make_unique<UcxOp>(*this, OpKind::Recv, peer, tag, data.size());
  op->buffer = data.data();
  // Posted even when the peer has failed: what it sent before dying may be waiting here.
  ucp_request_param_t params{};
  // Always a request and a callback: UCX 1.13 left the length of a receive that completed
  // immediately at 0 (recv_info), which the collectives rightly report as a size mismatch.
  params.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FLAG_NO_IMM_CMPL;
  params.cb.recv = &on_recv_done;
  const ucs_status_ptr_t status =
      ucp_tag_recv_nbx(worker_of(peer), data.data(), data.size(), ucp_tag, kReceiveMask, &params);
  if (UCS_PTR_IS_ERR(status)) throw op_error(*op, UCS_PTR_STATUS(status));
  op->request = status;
  return op;
}

std::unique_ptr<UcxOp> UcxTransport::post_direct_send(int peer, Tag tag,
                                                      std::span<const std::byte> data,
                                                      std::uint64_t token) {
  auto op = std::make_unique<UcxOp>(*this, OpKind::Send, peer, tag, data.size());
  op->token = token;
  Peer& p = (*endpoints_)[peer];
  if (p.failed()) {
    live_sends_->retire(token);
    throw peer_error(*op);
  }
  op->descriptor.address = reinterpret_cast<std::uint64_t>(data.data());
  op->descriptor.length = data.size();
  op->descriptor.token = token;
  op->descriptor.slot_address = live_sends_->slot_address(token);
  // The acknowledgement's receive first: it may arrive as soon as the descriptor is out.
  ucp_request_param_t ack{};
  ack.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FLAG_NO_IMM_CMPL;
  ack.cb.recv = &on_recv_done;
  const ucs_status_ptr_t ack_status =
      ucp_tag_recv_nbx(worker_of(peer), nullptr, 0, make_ack_tag(peer, token), kFullMask, &ack);
  if (UCS_PTR_IS_ERR(ack_status)) {
    live_sends_->retire(token);
    throw op_error(*op, UCS_PTR_STATUS(ack_status));
  }
  op->ack_request = ack_status;
  ucp_request_param_t params{};
  params.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK;
  params.cb.send = &on_send_done;
  const ucs_status_ptr_t status = ucp_tag_send_nbx(p.ep, &op->descriptor, sizeof op->descriptor,
                                                   make_tag(rank_, tag) | kDirectBit, &params);
  if (UCS_PTR_IS_ERR(status)) {
    abandon(*op);
    throw op_error(*op, UCS_PTR_STATUS(status));
  }
  op->request = status;  // nullptr: already sent
  return op;
}

Request UcxTransport::isend(int peer, Tag tag, std::span<const std::byte> data) {
  check_peer(peer, "isend");
  if (data.size() >= kDirectCopyMinBytes && direct_to_[static_cast<std::size_t>(peer)]) {
    if (const std::optional<std::uint64_t> token = live_sends_->open()) {
      return Request(post_direct_send(peer, tag, data, *token));
    }
  }
  return Request(post_send(peer, tag, make_tag(rank_, tag), data));
}

void UcxTransport::finish_direct_recv(UcxOp& op, std::size_t length) {
  DirectCopyDescriptor d;
  if (length != sizeof d) {
    throw Error(ErrorCode::Transport, where(op) + ": malformed direct-copy descriptor (" +
                                          std::to_string(length) + " bytes) from peer " +
                                          std::to_string(op.peer));
  }
  std::memcpy(&d, op.buffer, sizeof d);
  if (d.magic != kDirectCopyMagic) {
    throw Error(ErrorCode::Transport, where(op) + ": malformed direct-copy descriptor from peer " +
                                          std::to_string(op.peer));
  }
  const int pid = pids_[static_cast<std::size_t>(op.peer)];
  auto acknowledge = [&] {
    ucp_request_param_t params{};
    params.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK;
    params.cb.send = &on_send_done;
    const ucs_status_ptr_t status = ucp_tag_send_nbx((*endpoints_)[op.peer].ep, nullptr, 0,
                                                     make_ack_tag(rank_, d.token), &params);
    if (UCS_PTR_IS_ERR(status)) throw op_error(op, UCS_PTR_STATUS(status));
    // Queued (the peer's FIFO is full): the receive completes once it is out, so that the rank
    // goes on progressing UCX until then; a rank that finished its part of a collective and
    // left would otherwise hold the sender's completion back indefinitely.
    op.ack_request = status;
  };
  if (d.length > op.posted_bytes) {
    acknowledge();  // the sender is done with it, as after UCX's own truncated rendezvous
    if (op.ack_request != nullptr) {
      acks_in_flight_.push_back({op.ack_request, fabric_of_[static_cast<std::size_t>(op.peer)]});
      op.ack_request = nullptr;
    }
    throw op_error(op, UCS_ERR_MESSAGE_TRUNCATED);
  }
  const int error = copy_from_process(pid, d.address, std::span<std::byte>(op.buffer, d.length));
  // The slot is read even when the data copy failed: a sender that gave up may have freed the
  // buffer already (EFAULT), which is a withdrawal, not a transport failure.
  std::uint64_t slot = 0;
  const int slot_error = copy_from_process(
      pid, d.slot_address, std::as_writable_bytes(std::span<std::uint64_t>(&slot, 1)));
  if (error == ESRCH || slot_error == ESRCH) {
    endpoints_->mark_failed(
        op.peer, "its process (pid " + std::to_string(pid) + " on this host) has exited");
    throw peer_error(op);
  }
  if (slot_error != 0) {  // the slots live as long as the sender's transport
    endpoints_->mark_failed(op.peer, "its transport is gone (reading its send slot failed: " +
                                         std::string(std::strerror(slot_error)) + ")");
    throw peer_error(op);
  }
  if (slot != d.token) {  // what was copied may be the caller's reuse of the buffer: dropped
    op.withdrawn = true;
    return;
  }
  if (error != 0) {
    throw Error(ErrorCode::Transport, where(op) + ": copying from peer " + std::to_string(op.peer) +
                                          " (pid " + std::to_string(pid) +
                                          ") failed: " + std::strerror(error));
  }
  acknowledge();
  op.transferred_bytes = d.length;
}

Request UcxTransport::irecv(int peer, Tag tag, std::span<std::byte> data) {
  check_peer(peer, "irecv");
  return Request(post_recv(peer, tag, make_tag(peer, tag), data));
}

bool UcxTransport::check(UcxOp& op) {
  if (op.complete) return true;
  if (op.request != nullptr && completion_of(op.request).done) {
    const Completion result = completion_of(op.request);
    release(op.request);
    op.request = nullptr;
    if (result.status != UCS_OK) {
      abandon(op);  // a direct send's acknowledgement
      op.complete = true;
      throw op_error(op, result.status);
    }
    if (op.kind == OpKind::Send) {
      op.transferred_bytes = op.posted_bytes;
    } else if ((result.sender_tag & kDirectBit) != 0) {
      try {
        finish_direct_recv(op, result.length);
      } catch (...) {
        op.complete = true;
        throw;
      }
    } else {
      op.transferred_bytes = result.length;
    }
  }
  if (op.ack_request != nullptr && completion_of(op.ack_request).done) {
    const ucs_status_t status = completion_of(op.ack_request).status;
    release(op.ack_request);
    op.ack_request = nullptr;
    if (op.kind == OpKind::Send) live_sends_->retire(op.token);
    if (status != UCS_OK) {
      abandon(op);
      op.complete = true;
      throw op_error(op, status);
    }
  }
  if (op.request == nullptr && op.ack_request == nullptr && !op.withdrawn) {
    op.complete = true;
    return true;
  }
  // UCX fails sends on a broken endpoint by itself; a receive is posted on the worker, not the
  // endpoint, and would wait forever for a dead sender.
  if ((*endpoints_)[op.peer].failed()) {
    abandon(op);
    op.complete = true;
    throw peer_error(op);
  }
  return false;
}

bool UcxTransport::test(Request& request) {
  if (request.done()) return true;
  progress();
  probe_peers();
  return check(static_cast<UcxOp&>(*request.op()));
}

void UcxTransport::probe_peers() {
  // A poll() per watched peer costs about a microsecond: once a millisecond is plenty. Every
  // local peer, not only those we wait on: a wait on a survivor that stalls because another rank
  // died then names the dead rank (see wait_all's deadline).
  const Clock::time_point now = Clock::now();
  if (now < next_probe_) return;
  next_probe_ = now + std::chrono::milliseconds(1);
  for (int peer = 0; peer < size_; ++peer) {
    if (!liveness_->watches(peer)) continue;
    if (!(*endpoints_)[peer].failed() && liveness_->exited(peer)) {
      endpoints_->mark_failed(peer, "its process (pid " + std::to_string(liveness_->pid(peer)) +
                                        " on this host) has exited");
    }
  }
}

void UcxTransport::wait_all(std::span<Request* const> requests, Deadline deadline) {
  // Poll while UCX reports events and for spin_ after the last one (shared-memory completions
  // arrive within microseconds), poll yielding the core for yield_, then sleep on the workers'
  // event descriptors until the next event. A rank that polls, or polls and yields, throughout
  // takes the CPU that ranks sharing its core need for computing: with 4 ranks training on 2
  // cores, backward ran twice as long beside UCX's polling as beside MPI's. FRUGAL_UCX_WAIT=spin
  // keeps the polling (spin, then yield between polls) for ranks that own their cores. The clock
  // is read every few hundred polls even while UCX reports activity, so a deadline is never
  // skipped.
  constexpr unsigned kSpinsBeforeYield = 2000;  // FRUGAL_UCX_WAIT=spin
  constexpr unsigned kPollsPerClockRead = 16;   // while idle
  std::size_t first_open = 0;
  unsigned polls = 0;
  unsigned idle = 0;     // polls since UCX last reported an event
  bool patient = false;  // idle for spin_: yielding between polls
  const Clock::time_point start = Clock::now();
  Clock::time_point idle_since = start;
  for (;;) {
    bool all_done = true;
    for (std::size_t i = first_open; i < requests.size(); ++i) {
      Request& r = *requests[i];
      if (r.done() || check(static_cast<UcxOp&>(*r.op()))) {
        if (i == first_open) ++first_open;
      } else {
        all_done = false;
      }
    }
    if (all_done) return;
    const bool progressed = progress() != 0;
    idle = progressed ? 0 : idle + 1;
    if (progressed) patient = false;
    const bool yielding = sleep_when_idle_ ? patient : idle >= kSpinsBeforeYield;
    const bool read_clock =
        yielding || (++polls & 255u) == 0 || (idle != 0 && idle % kPollsPerClockRead == 0);
    if (!read_clock) continue;
    const Clock::time_point now = Clock::now();
    if (now >= deadline) {
      for (std::size_t i = first_open; i < requests.size(); ++i) {
        if (!requests[i]->done()) {
          const auto waited = std::chrono::duration_cast<std::chrono::milliseconds>(now - start);
          const PendingOp& op = *requests[i]->op();
          // A wait that stalls while another rank is known dead is that death's consequence
          // (a collective cannot finish without it): PeerFailure naming it, not Timeout.
          const std::string failed = other_failures(op.peer);
          throw Error(failed.empty() ? ErrorCode::Timeout : ErrorCode::PeerFailure,
                      context(op) + " (waited " + std::to_string(waited.count()) + " ms)" + failed);
        }
      }
    }
    if (!sleep_when_idle_) {
      if (yielding) {
        probe_peers();
        std::this_thread::yield();
      }
      continue;
    }
    if (idle < kPollsPerClockRead) continue;
    if (idle == kPollsPerClockRead) idle_since = now;
    const Clock::duration idle_for = now - idle_since;
    if (idle_for >= spin_ + yield_) {
      probe_peers();
      sleep_until_event(deadline);
    } else if (idle_for >= spin_) {
      patient = true;
      probe_peers();
      std::this_thread::yield();
    }
  }
}

void UcxTransport::sleep_until_event(Deadline deadline) {
  wait_fds_.clear();
  for (Fabric& fabric : fabrics_) {
    if (fabric.frozen) continue;  // never progressed again, so never armed
    if (fabric.event_fd < 0) {
      // An event on this worker would not wake us: poll it, but let other processes run.
      std::this_thread::yield();
      return;
    }
    const ucs_status_t status = ucp_worker_arm(fabric.worker.get());
    // Busy: events arrived since the last progress; they would not signal the descriptor.
    if (status == UCS_ERR_BUSY) return;
    if (status != UCS_OK) {
      throw Error(ErrorCode::Transport,
                  "rank " + std::to_string(rank_) +
                      " (ucx): ucp_worker_arm failed: " + ucs_status_string(status));
    }
    wait_fds_.push_back({fabric.event_fd, POLLIN, 0});
  }
  // Up to the deadline (which wait_all then reports) or the wake-up period, which bounds what
  // signals no event: a dead local peer (probe_peers), UCX's keepalive, sends UCX queued on a
  // full shared-memory FIFO.
  const auto left = std::chrono::duration_cast<std::chrono::nanoseconds>(deadline - Clock::now());
  const auto sleep =
      std::clamp(left, std::chrono::nanoseconds(0), std::chrono::nanoseconds(wake_period_));
  const timespec timeout{static_cast<time_t>(sleep.count() / 1'000'000'000),
                         static_cast<long>(sleep.count() % 1'000'000'000)};
  if (::ppoll(wait_fds_.data(), wait_fds_.size(), &timeout, nullptr) < 0 && errno != EINTR) {
    throw Error(ErrorCode::Transport,
                "rank " + std::to_string(rank_) +
                    " (ucx): waiting for UCX events failed: " + std::strerror(errno));
  }
}

void UcxTransport::cancel(PendingOp& base) noexcept {
  abandon(static_cast<UcxOp&>(base));
}

void UcxTransport::abandon(UcxOp& op) noexcept {
  if (op.ack_request != nullptr) {
    void* ack = op.ack_request;
    op.ack_request = nullptr;
    const std::size_t f = fabric_of_[static_cast<std::size_t>(op.peer)];
    if (op.kind == OpKind::Send) {
      // First of all withdraw the send, so that a receiver copying it refuses what it got.
      live_sends_->retire(op.token);
      if (!completion_of(ack).done && !fabrics_[f].frozen) {
        ucp_request_cancel(fabrics_[f].worker.get(), ack);
      }
    }
    if (completion_of(ack).done) {
      release(ack);
    } else {
      graveyard_.push_back({ack, f});  // zero bytes: nothing it could still write into
    }
  }
  if (op.request == nullptr) return;
  void* request = op.request;
  op.request = nullptr;
  Fabric& fabric = fabrics_[fabric_of_[static_cast<std::size_t>(op.peer)]];
  auto done = [&] { return completion_of(request).done; };
  if (op.kind == OpKind::Recv && !done()) {
    // An unmatched receive completes (UCS_ERR_CANCELED) right here; a matched one is finishing.
    ucp_request_cancel(fabric.worker.get(), request);
  }
  if (!done() && !fabric.frozen) {
    const Peer& peer = (*endpoints_)[op.peer];
    // No grace once any rank is known dead: the collective is lost and the error it raised should
    // reach the caller now, not after waiting for sends to survivors that are leaving as well.
    const bool lost = peer.failed() || !other_failures(op.peer).empty();
    const Deadline give_up = Clock::now() + (lost ? std::chrono::milliseconds(0) : kAbandonGrace);
    while (!done() && Clock::now() < give_up) progress();
    // Still in flight, UCX goes on reading (a send: a receiver that never comes holds a
    // rendezvous send indefinitely) or writing (a matched receive whose data is still arriving)
    // the caller's buffer, which is freed once we return. Closing the endpoint makes UCX let go
    // (it completes what is queued on it with UCS_ERR_CANCELED); the communicator has failed
    // anyway when an operation is abandoned unfinished.
    if (!done() &&
        endpoints_->force_close(op.peer, "its endpoint was closed after " + op.describe() +
                                             " was abandoned unfinished")) {
      for (int i = 0; i < 100 && !done(); ++i) progress();
    }
  }
  if (done()) {
    release(request);
    return;
  }
  // Could be neither completed nor cancelled, e.g. on a callback-mode endpoint, which UCX cannot
  // force-close: the send stays queued (a shared-memory FIFO its dead or busy receiver does not
  // empty) and is copied from the freed buffer whenever the worker is progressed (a segfault in
  // uct_mm_ep_am_bcopy at shutdown, seen in ucx-cluster-peer-failure's mixed case), and a receive
  // a live sender still feeds (a segfault in ucp_rndv_data_handler) is written into it. So that
  // worker is never progressed again.
  fabric.frozen = true;
  graveyard_.push_back({request, fabric_of_[static_cast<std::size_t>(op.peer)]});
}

void UcxTransport::bury(Deadline deadline) noexcept {
  while (!graveyard_.empty()) {
    std::erase_if(graveyard_, [](const Buried& buried) {
      if (!completion_of(buried.request).done) return false;
      release(buried.request);
      return true;
    });
    const bool stuck = std::all_of(graveyard_.begin(), graveyard_.end(),
                                   [this](const Buried& b) { return fabrics_[b.fabric].frozen; });
    if (stuck || Clock::now() >= deadline) return;
    progress();
  }
}

void UcxTransport::drain_unexpected(Deadline deadline) noexcept {
  std::vector<std::byte>& sink = drain_sink_;
  for (std::size_t f = 0; f < fabrics_.size(); ++f) {
    if (fabrics_[f].frozen) continue;
    ucp_worker_h worker = fabrics_[f].worker.get();
    while (Clock::now() < deadline) {
      ucp_tag_recv_info_t info{};
      // Mask 0 matches any tag; remove = 1 takes the message off the unexpected queue.
      ucp_tag_message_h message = ucp_tag_probe_nb(worker, 0, 0, 1, &info);
      if (message == nullptr) {
        if (ucp_worker_progress(worker) == 0) break;
        continue;
      }
      sink.resize(std::max(sink.size(), info.length));
      ucp_request_param_t params{};
      params.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FLAG_NO_IMM_CMPL;
      params.cb.recv = &on_recv_done;
      const ucs_status_ptr_t request =
          ucp_tag_msg_recv_nbx(worker, sink.data(), info.length, message, &params);
      if (request == nullptr || UCS_PTR_IS_ERR(request)) continue;
      graveyard_.push_back({request, f});
      bury(deadline);  // one at a time: the sink is reused
      if (!graveyard_.empty()) return;
    }
  }
}

std::string UcxTransport::where(const PendingOp& op) const {
  return "rank " + std::to_string(rank_) + " of " + std::to_string(size_) +
         " (ucx): " + op.describe();
}

std::string UcxTransport::other_failures(int except) const {
  std::string text;
  for (int r = 0; r < size_; ++r) {
    const Peer& peer = (*endpoints_)[r];
    // UCS_ERR_CANCELED: closed by us (an abandoned send), which says nothing about the peer.
    if (r == except || !peer.failed() || peer.failure == UCS_ERR_CANCELED) continue;
    text += text.empty() ? "; failed before: " : "; ";
    text += "peer " + std::to_string(r) + " (" + peer.reason + ")";
  }
  return text;
}

Error UcxTransport::peer_error(const UcxOp& op) const {
  const Peer& peer = (*endpoints_)[op.peer];
  // In a collective the peer we waited on is often only a survivor that gave up; naming every
  // failed endpoint lets each rank's message point at the rank that actually died.
  return Error(ErrorCode::PeerFailure,
               where(op) + " failed: peer " + std::to_string(op.peer) + " is unreachable: " +
                   (peer.reason.empty() ? std::string("endpoint failed") : peer.reason) +
                   other_failures(op.peer));
}

Error UcxTransport::op_error(const UcxOp& op, ucs_status_t status) const {
  if ((*endpoints_)[op.peer].failed()) return peer_error(op);
  switch (status) {
    case UCS_ERR_MESSAGE_TRUNCATED:
      return Error(ErrorCode::Mismatch, where(op) + ": the message from peer " +
                                            std::to_string(op.peer) + " is larger than the " +
                                            std::to_string(op.posted_bytes) +
                                            "-byte receive buffer");
    case UCS_ERR_ENDPOINT_TIMEOUT:
    case UCS_ERR_CONNECTION_RESET:
    case UCS_ERR_UNREACHABLE:
    case UCS_ERR_NOT_CONNECTED:
    case UCS_ERR_REJECTED:
      return Error(ErrorCode::PeerFailure, where(op) + " failed: peer " + std::to_string(op.peer) +
                                               " is unreachable (" + ucs_status_string(status) +
                                               ")");
    case UCS_ERR_INVALID_PARAM:
      return Error(ErrorCode::InvalidArgument,
                   where(op) + ": UCX rejected the arguments (" + ucs_status_string(status) + ")");
    default:
      return Error(ErrorCode::Transport,
                   where(op) + " failed in UCX: " + ucs_status_string(status));
  }
}

std::string UcxTransport::endpoint_info(int peer) {
  check_peer(peer, "ucx_endpoint_info");
  const Peer& p = (*endpoints_)[peer];
  if (p.ep == nullptr) return "endpoint closed: " + p.reason;
  const auto r = static_cast<std::size_t>(peer);
  std::string info = std::string("# frugal: err_mode=") +
                     (p.err_mode == UCP_ERR_HANDLING_MODE_PEER ? "peer" : "none") + " (peer " +
                     (same_host_[r] ? "on this host" : "on another host or network namespace") +
                     ") protocols=" + (fabrics_[fabric_of_[r]].v2 ? "v2" : "v1") + "\n";
  info += "# frugal: direct copy (process_vm_readv) of sends >= " +
          std::to_string(kDirectCopyMinBytes) + " bytes: " + (direct_to_[r] ? "on" : "off") + "\n";
  return info + ep_info(p.ep);
}

}  // namespace frugal::transport::ucx
