#include <unistd.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "frugal/collectives/collectives.hpp"
#include "frugal/collectives/hierarchical.hpp"
#include "frugal/group_transport.hpp"
#include "lazy_require.hpp"

namespace frugal {

namespace {

// The identity of the network namespace: ranks in different namespaces of one machine reach
// each other only through a (simulated) network, like ranks on different hosts.
std::string network_namespace() {
  std::array<char, 256> link{};
  const ssize_t n = ::readlink("/proc/self/ns/net", link.data(), link.size() - 1);
  return n > 0 ? std::string(link.data(), static_cast<std::size_t>(n)) : std::string("net:?");
}

void check_topology(const HostTopology& t, int rank, int size) {
  require(!t.hosts.empty(), "topology", "has no hosts");
  std::vector<int> seen(static_cast<std::size_t>(size), 0);
  for (const std::vector<int>& ranks : t.hosts) {
    require(!ranks.empty(), "topology", "has a host without ranks");
    for (int r : ranks) {
      require(r >= 0 && r < size, "topology",
              [&] { return "rank " + std::to_string(r) + " is outside the communicator"; });
      require(++seen[static_cast<std::size_t>(r)] == 1, "topology",
              [&] { return "rank " + std::to_string(r) + " is on more than one host"; });
    }
  }
  require(std::all_of(seen.begin(), seen.end(), [](int s) { return s == 1; }), "topology",
          "does not place every rank of the communicator");
  require(t.host >= 0 && t.host < t.host_count(), "topology", "host is out of range");
  const std::vector<int>& mine = t.hosts[static_cast<std::size_t>(t.host)];
  require(t.local_rank >= 0 && static_cast<std::size_t>(t.local_rank) < mine.size() &&
              mine[static_cast<std::size_t>(t.local_rank)] == rank,
          "topology", "host and local_rank do not point at this rank");
  for (const std::vector<int>& ranks : t.hosts) {
    require(ranks.size() == mine.size(), "topology", [&] {
      return "hosts hold different numbers of ranks (" + std::to_string(ranks.size()) + " and " +
             std::to_string(mine.size()) +
             "); the hierarchical allreduce needs the same number on every host";
    });
  }
}

}  // namespace

std::string local_host_identity() {
  if (const char* env = std::getenv("FRUGAL_HOST_ID"); env != nullptr && *env != '\0') {
    return std::string("id:") + env;
  }
  std::array<char, 256> name{};
  if (::gethostname(name.data(), name.size() - 1) != 0) std::strcpy(name.data(), "?");
  return std::string("host:") + name.data() + "/" + network_namespace();
}

HostTopology topology_from_identities(std::span<const std::string> identities, int rank) {
  require(rank >= 0 && static_cast<std::size_t>(rank) < identities.size(), "identities",
          [&] { return "holds no entry for rank " + std::to_string(rank); });
  HostTopology t;
  // Ranks are visited in order, so hosts come out ordered by their lowest rank.
  std::map<std::string, std::size_t> index;
  for (std::size_t r = 0; r < identities.size(); ++r) {
    const auto [it, added] = index.try_emplace(identities[r], t.hosts.size());
    if (added) t.hosts.emplace_back();
    t.hosts[it->second].push_back(static_cast<int>(r));
    if (static_cast<int>(r) == rank) {
      t.host = static_cast<int>(it->second);
      t.local_rank = static_cast<int>(t.hosts[it->second].size()) - 1;
    }
  }
  return t;
}

HostTopology discover_host_topology(Communicator& comm) {
  const std::string mine = local_host_identity();
  const auto p = static_cast<std::size_t>(comm.size());
  const std::uint64_t length = mine.size();
  std::vector<std::uint64_t> lengths(p);
  allgather(comm, std::as_bytes(std::span<const std::uint64_t>(&length, 1)),
            std::as_writable_bytes(std::span<std::uint64_t>(lengths)));
  std::vector<std::size_t> counts(lengths.begin(), lengths.end());
  std::size_t total = 0;
  for (std::size_t c : counts) total += c;
  std::string all(total, '\0');
  allgatherv(comm, std::as_bytes(std::span<const char>(mine)),
             std::as_writable_bytes(std::span<char>(all)), counts);
  std::vector<std::string> identities;
  std::size_t offset = 0;
  for (std::size_t c : counts) {
    identities.push_back(all.substr(offset, c));
    offset += c;
  }
  return topology_from_identities(identities, comm.rank());
}

Hierarchy::Hierarchy(Communicator& parent) : Hierarchy(parent, discover_host_topology(parent)) {}

Hierarchy::Hierarchy(Communicator& parent, HostTopology topology)
    : parent_(parent), topology_(std::move(topology)) {
  check_topology(topology_, parent.rank(), parent.size());
  host_ =
      make_group_communicator(parent_, topology_.hosts[static_cast<std::size_t>(topology_.host)]);
  std::vector<int> cross;
  for (const std::vector<int>& ranks : topology_.hosts) {
    cross.push_back(ranks[static_cast<std::size_t>(topology_.local_rank)]);
  }
  cross_ = make_group_communicator(parent_, std::move(cross));
}

Hierarchy::~Hierarchy() = default;

}  // namespace frugal
