#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <memory>
#include <span>
#include <utility>
#include <vector>

#include "frugal/communicator.hpp"
#include "frugal/compression/compressor.hpp"
#include "frugal/compression/error_feedback.hpp"

namespace frugal {

// Asynchronous data parallelism with a sharded parameter server (Dean et al. 2012, "Downpour
// SGD"; Ho et al. 2013, stale-synchronous parallel). docs/parameter_server.md has the whole
// protocol; in short:
//
// The last S ranks of the communicator are servers, ranks 0 … W−1 (W = size − S) workers. The
// n parameters are cut into S contiguous shards (shard_range): server j owns shard j. A worker
// step pushes its gradient, one message per shard (dense, or compressed with error feedback
// whose residual stays on the worker, one per shard), and pulls every shard back; no barrier
// joins the workers. Each server applies pushes in the order they arrive with momentum SGD
// (PyTorch's form, dampening 0):
//
//   v = μ·v + g;  w −= lr·(nesterov ? g + μ·v : v)
//
// where lr travels with the push, so the worker's LR schedule rules. Weight decay is the
// worker's: it adds λ·w of the weights it pulled to its gradient.
//
// Clocks and staleness. A worker's k-th push (k = 0, 1, …) is its step k. A pull answer carries
// a clock c: every live worker had pushed at least c steps when it was sent, and all those pushes
// were applied. The staleness of a push of step t computed on parameters of clock c is t − c
// (s = 0: every push is computed on parameters holding every worker's previous steps). The
// stale-synchronous bound: the answer to the pull after step t (which the worker's step t + 1
// will use) is held until every live worker has pushed at least t + 1 − s steps, so staleness
// never exceeds s. s = 0 is bulk-synchronous; kUnboundedStaleness never holds an answer.
// Servers also measure the update lag: the number of pushes (of any worker) a shard applied
// between the answer a gradient was computed on and that gradient's own arrival.
inline constexpr std::int64_t kUnboundedStaleness = std::numeric_limits<std::int64_t>::max();

// What the servers do when a worker dies (its transport fails, or it holds up another worker for
// longer than the timeout without a message).
enum class WorkerFailurePolicy : std::uint8_t {
  Stop,      // every server tells every live worker (PeerFailure) and throws
  Continue,  // the worker is dropped from the clocks; the others go on; reported at the end
};

struct ParameterServerOptions {
  int servers = 1;             // S >= 1, S < communicator size (at least one worker)
  std::int64_t staleness = 0;  // s >= 0, or kUnboundedStaleness
  double momentum = 0.9;       // μ in [0, 1)
  bool nesterov = false;       // needs μ > 0
  compression::CompressionConfig compression;  // of the pushes; method None: dense
  bool error_feedback = true;                  // compressed pushes: keep the residual, per shard
  std::uint64_t seed = 0;  // of stochastic compression: Rng(seed, rank, step, offset)
  WorkerFailurePolicy on_worker_failure = WorkerFailurePolicy::Stop;
  // Servers keep the (worker, step) of every push they apply, in order (ServerReport::order):
  // what a serial replay needs. Grows by one entry per push.
  bool record_order = false;
};

// Shard `shard` of `elements` parameters over `servers` servers: the half-open element range
// [⌊shard·n/S⌋, ⌊(shard + 1)·n/S⌋). Contiguous, in server order, sizes differing by at most one;
// the same on every rank since it depends on (n, S, shard) only. Throws InvalidArgument unless
// 1 <= servers <= elements and 0 <= shard < servers.
std::pair<std::size_t, std::size_t> shard_range(std::size_t elements, int servers, int shard);

// A worker's measurements since construction.
struct WorkerStats {
  std::uint64_t pushes = 0;  // gradients pushed (to every shard)
  std::uint64_t pulls = 0;   // pull answers received (every shard's counts once per step)
  std::int64_t max_staleness = 0;
  double staleness_sum = 0;        // over pushes: mean = staleness_sum / pushes
  std::uint64_t bytes_pushed = 0;  // payload bytes sent, headers included
  std::uint64_t bytes_pulled = 0;  // bytes received
  double wait_seconds = 0;         // blocked in push_pull / refresh waiting for answers
};

// One worker's side. Not thread-safe; uses the communicator's transport for its lifetime (no
// other collective may run on that communicator meanwhile, except on a group communicator).
class PsWorker {
 public:
  // Collective over every rank of `comm` (with the servers' PsServer constructors). Checks the
  // options and agrees on them and the parameter count: InvalidArgument naming the parameter on
  // every rank when any rank's is out of range ("servers", "staleness", "momentum", "nesterov",
  // "parameters", "compression"), Mismatch on every rank when ranks differ. Then worker 0's
  // `parameters` initialise the servers, and every worker's `parameters` receive the servers'
  // values (clock 0). `parameters` must stay valid at the same address for the object's lifetime.
  PsWorker(Communicator& comm, std::span<float> parameters, ParameterServerOptions options);
  PsWorker(const PsWorker&) = delete;
  PsWorker& operator=(const PsWorker&) = delete;
  ~PsWorker();

  // Pushes `gradient` (one value per parameter) as step `stats().pushes` with learning rate `lr`,
  // then writes the current parameters into `parameters`, after waiting as the staleness bound
  // says. Throws InvalidArgument ("gradient": wrong size or not finite, "lr": not finite), on
  // this rank only and before anything is sent; PeerFailure when a server reports a dead worker
  // (policy Stop); Timeout or PeerFailure when a server does not answer within the timeout.
  void push_pull(std::span<const float> gradient, double lr);
  // Pulls without pushing, once every live worker has pushed as many steps as this one: with all
  // workers at the same step (an epoch's end) every worker receives the same parameters.
  void refresh();
  // Tells every server this worker is done and checks the end-to-end count: each server's
  // applied pushes from this worker must equal stats().pushes (else Internal). Idempotent;
  // the destructor does it (ignoring errors) if not called, unless it runs while an exception
  // unwinds: then the worker is failing, and the servers learn it as a failure.
  void finish();

  const WorkerStats& stats() const noexcept { return stats_; }
  std::size_t element_count() const noexcept { return parameters_.size(); }
  int workers() const noexcept;
  // Clock of the parameters currently in `parameters` (minimum over the shards).
  std::int64_t clock() const noexcept { return clock_; }
  // The fewest pushes (of all workers together) any server had applied when it sent its last
  // answer. After a refresh with every worker at the same step: every push so far.
  std::uint64_t servers_applied() const noexcept { return servers_applied_; }
  // Rescales every shard's error-feedback residual (ErrorFeedback::scale), e.g. by
  // lr_prev / lr_now when the LR changes. False when there is none (dense, or no feedback).
  bool scale_residuals(float factor);

 private:
  struct Shard;
  void send_to_servers(std::uint8_t kind, std::span<const float> gradient, double lr);
  void receive_from_servers();
  [[noreturn]] void fail(const Error& error);

  Communicator& comm_;
  std::span<float> parameters_;
  ParameterServerOptions options_;
  std::unique_ptr<compression::Compressor> compressor_;  // null: dense pushes
  std::vector<Shard> shards_;
  std::int64_t clock_ = 0;
  std::uint64_t servers_applied_ = 0;
  WorkerStats stats_;
  bool finished_ = false;
  std::uint32_t tag_ = 0;
};

// A server's account at the end of serve().
struct ServerReport {
  int server = 0;             // shard index
  std::uint64_t applied = 0;  // pushes applied, all workers
  std::vector<std::uint64_t> applied_per_worker;
  std::vector<int> failed_workers;  // policy Continue: the workers lost on the way (ranks)
  std::int64_t max_staleness = 0;   // over the applied pushes
  double staleness_sum = 0;
  std::uint64_t max_update_lag = 0;
  double update_lag_sum = 0;
  std::uint64_t bytes_received = 0;  // from construction on, headers included
  std::uint64_t bytes_sent = 0;
  std::vector<std::pair<int, std::uint64_t>> order;  // record_order: (worker, step) as applied
};

// One server's side.
class PsServer {
 public:
  // Collective, as PsWorker's constructor; `elements` is the parameter count. Receives its
  // shard's initial values from worker 0 and answers every worker's first pull.
  PsServer(Communicator& comm, std::size_t elements, ParameterServerOptions options);
  PsServer(const PsServer&) = delete;
  PsServer& operator=(const PsServer&) = delete;
  ~PsServer();

  // Serves pushes and pulls until every worker has finished (or, under policy Continue, failed).
  // Checks the end-to-end count with every finishing worker (Internal on a difference). Throws
  // PeerFailure/Timeout when a worker fails under policy Stop (after telling the others), and
  // when every worker is lost under Continue.
  ServerReport serve();

  int shard() const noexcept { return shard_; }
  std::pair<std::size_t, std::size_t> range() const noexcept { return range_; }
  // The shard's current values (its velocity stays inside).
  std::span<const float> parameters() const noexcept { return weights_; }

 private:
  struct Peer;
  struct Loop;

  Communicator& comm_;
  ParameterServerOptions options_;
  std::unique_ptr<compression::Compressor> compressor_;
  int shard_ = 0;
  std::pair<std::size_t, std::size_t> range_;
  std::vector<float> weights_;
  std::vector<float> velocity_;
  std::uint32_t tag_ = 0;
  std::uint64_t init_bytes_received_ = 0;  // the constructor's exchange, counted in the report
  std::uint64_t init_bytes_sent_ = 0;
};

// The ranks' roles: true when `rank` of a communicator of `size` ranks is a server.
bool is_server_rank(int rank, int size, int servers) noexcept;

}  // namespace frugal
