#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "frugal/collectives/allreduce.hpp"
#include "frugal/collectives/allreduce_state.hpp"
#include "frugal/communicator.hpp"
#include "frugal/dtype.hpp"

namespace frugal {

// Which ranks share a host. Identical on every rank: hosts are ordered by their lowest rank,
// the ranks of a host ascending.
struct HostTopology {
  std::vector<std::vector<int>> hosts;  // the ranks of each host
  int host = 0;                         // this rank's host
  int local_rank = 0;                   // this rank's index within its host

  int host_count() const noexcept { return static_cast<int>(hosts.size()); }
  int ranks_on_host() const noexcept {
    return static_cast<int>(hosts[static_cast<std::size_t>(host)].size());
  }
  friend bool operator==(const HostTopology&, const HostTopology&) = default;
};

// This process's host identity: FRUGAL_HOST_ID when set and not empty, else the hostname plus
// the inode of /proc/self/ns/net, so that ranks in different network namespaces of one machine
// (bench/cluster/run's simulated hosts) count as different hosts.
std::string local_host_identity();

// The topology of `rank` given every rank's identity (rank order). Throws InvalidArgument
// naming `identities` if `rank` is outside it.
HostTopology topology_from_identities(std::span<const std::string> identities, int rank);

// Gathers every rank's local_host_identity() with frugal's allgather and groups the ranks.
// Collective over `comm`.
HostTopology discover_host_topology(Communicator& comm);

// The sub-communicators a hierarchical collective runs on, over `parent` (which must outlive
// this): the ranks of this rank's host, and the ranks with this rank's local index on every
// host ("cross"). Every host must hold the same number of ranks (InvalidArgument naming
// `topology` otherwise, on every rank alike since the topology is). Both sub-communicators
// carry their tags in a range of their own (frugal/group_transport.hpp), so `parent` stays
// usable for other collectives in between. Both drive the parent's transport: run no
// asynchronous collective on any of the three while another of them is in use (the parent
// refuses hierarchical_allreduce while its own asynchronous collectives are pending).
class Hierarchy {
 public:
  // Discovers the topology (collective over `parent`).
  explicit Hierarchy(Communicator& parent);
  // With a given topology, which every rank must pass alike (a partition of the parent's ranks).
  Hierarchy(Communicator& parent, HostTopology topology);
  Hierarchy(const Hierarchy&) = delete;
  Hierarchy& operator=(const Hierarchy&) = delete;
  ~Hierarchy();

  const HostTopology& topology() const noexcept { return topology_; }
  Communicator& parent() noexcept { return parent_; }
  Communicator& host() noexcept { return *host_; }
  Communicator& cross() noexcept { return *cross_; }

 private:
  Communicator& parent_;
  HostTopology topology_;
  std::unique_ptr<Communicator> host_;
  std::unique_ptr<Communicator> cross_;
};

// The error feedback of hierarchical_allreduce for one buffer: the AllreduceState of the share
// this rank carries across hosts. Bound on first use to the topology (hosts, ranks per host,
// local index) and the element count; used with another, it throws Mismatch on the rank that
// changed and every other rank of the call gets Mismatch from the agreement. Owned by the
// caller, one per buffer.
class HierarchicalState {
 public:
  explicit HierarchicalState(float decay = 1.0f) : share_(decay) {}

  const AllreduceState& share() const noexcept { return share_; }
  std::uint64_t steps() const noexcept { return share_.steps(); }
  // Forgets the residual and the binding.
  void reset() noexcept;
  // The share's AllreduceState::scale_residuals (lr_prev / lr_now when the learning rate
  // changes). Throws InvalidArgument for a factor that is not finite and >= 0.
  void scale_residuals(float factor);

  struct Binding {
    int hosts = 0;
    int ranks_on_host = 0;
    int local_rank = 0;
    std::uint64_t count = 0;
    friend bool operator==(const Binding&, const Binding&) = default;
  };
  // What the state is bound to (empty before its first use with error feedback, or reset).
  const std::optional<Binding>& binding() const noexcept { return binding_; }

  // A self-describing byte image (magic, version, binding, the share's AllreduceState image),
  // for checkpoints. restore() throws InvalidArgument on a malformed image and leaves the state
  // unchanged then; a restored state used with another topology or count is a Mismatch at its
  // next hierarchical_allreduce, as any bound state.
  std::vector<std::byte> save() const;
  void restore(std::span<const std::byte> image);

 private:
  friend struct HierarchicalAccess;
  AllreduceState share_;
  std::optional<Binding> binding_;
};

// In-place allreduce in three steps: a dense reduce-scatter among the ranks of each host (every
// local rank ends with one share of its host's sum), an allreduce of each share across hosts
// among the ranks with the same local index (compressed with options.compression, with error
// feedback in `state`), and a dense allgather of the shares within each host. The result is
// bit-identical on every rank. Share j of a buffer is seeded with
// compression::stream_seed(options.seed, j). With one host there is no inter-host step: the
// result is the exact (dense) sum whatever the method, `state` is not advanced, and
// options.stats reports no bytes.
//
// Options as allreduce(); options.state must be null (the residuals live in `state`, which
// error feedback needs). options.stats, if set, describes the inter-host step (its algorithm
// and its wire bytes). Every rank first agrees with all the others on count, dtype, op,
// compression and the NaN/Inf flag (one exchange of a 32-byte block over the parent), so ranks
// that disagree get Mismatch on every rank and non_finite's Error and Skip are decided alike.
void hierarchical_allreduce(Hierarchy& hierarchy, std::span<std::byte> data, DType dtype,
                            const AllreduceOptions& options = {},
                            HierarchicalState* state = nullptr);

template <Reducible T>
void hierarchical_allreduce(Hierarchy& hierarchy, std::span<T> data,
                            const AllreduceOptions& options = {},
                            HierarchicalState* state = nullptr) {
  hierarchical_allreduce(hierarchy, std::as_writable_bytes(data), dtype_of<T>, options, state);
}

}  // namespace frugal
