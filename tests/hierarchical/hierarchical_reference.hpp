#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <vector>

#include "compressed_reference.hpp"
#include "frugal/collectives/allreduce.hpp"
#include "frugal/collectives/hierarchical.hpp"

namespace frugal::testing {

// A serial model of hierarchical_allreduce for a topology: the dense sum of each host's inputs
// (exact, since the test inputs are small integers), split into one share per local index,
// each share reduced across hosts by CompressedReference with the share's seed (a dense sum for
// method None), and the shares put back together.
class HierarchicalReference {
 public:
  HierarchicalReference(const HostTopology& topology, std::size_t count,
                        const AllreduceOptions& options);

  // inputs[r]: rank r's buffer. Returns what every rank must hold.
  std::vector<float> step(const std::vector<std::vector<float>>& inputs);

 private:
  std::vector<std::vector<int>> hosts_;
  std::size_t count_;
  bool compressed_;
  std::vector<std::unique_ptr<CompressedReference>> shares_;
};

// Small integers (so that dense sums are exact in any order), different per rank, step and
// element.
std::vector<float> integer_input(int rank, int step, std::size_t count);

// Ranks' host identities: `hosts` hosts of `per_host` ranks, placed round-robin when
// `interleaved` (rank r on host r % hosts), else in blocks.
std::vector<std::string> host_identities(int hosts, int per_host, bool interleaved);

}  // namespace frugal::testing
