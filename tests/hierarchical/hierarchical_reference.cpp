#include "hierarchical_reference.hpp"

#include "chunking.hpp"
#include "frugal/compression/rng.hpp"

namespace frugal::testing {

HierarchicalReference::HierarchicalReference(const HostTopology& topology, std::size_t count,
                                             const AllreduceOptions& options)
    : hosts_(topology.hosts),
      count_(count),
      compressed_(options.compression.method != compression::Method::None) {
  if (!compressed_) return;
  const int hosts = topology.host_count();
  const int per_host = static_cast<int>(hosts_.front().size());
  for (int j = 0; j < per_host; ++j) {
    const std::size_t share = patterns::chunk_range(count, per_host, j).count;
    AllreduceOptions o = options;
    o.seed = compression::stream_seed(options.seed, static_cast<std::uint64_t>(j));
    const AllreduceAlgorithm algorithm = o.algorithm == AllreduceAlgorithm::Auto
                                             ? choose_allreduce_algorithm(o, share, hosts)
                                             : o.algorithm;
    shares_.push_back(std::make_unique<CompressedReference>(hosts, share, o, algorithm));
  }
}

std::vector<float> HierarchicalReference::step(const std::vector<std::vector<float>>& inputs) {
  std::vector<std::vector<float>> host_sums;
  for (const std::vector<int>& ranks : hosts_) {
    std::vector<float> sum(count_, 0.0f);
    for (int r : ranks) {
      for (std::size_t i = 0; i < count_; ++i) sum[i] += inputs[static_cast<std::size_t>(r)][i];
    }
    host_sums.push_back(std::move(sum));
  }
  std::vector<float> result(count_, 0.0f);
  if (!compressed_ || hosts_.size() == 1) {  // one host: exact, nothing crosses hosts
    for (const std::vector<float>& s : host_sums) {
      for (std::size_t i = 0; i < count_; ++i) result[i] += s[i];
    }
    return result;
  }
  const int per_host = static_cast<int>(shares_.size());
  for (int j = 0; j < per_host; ++j) {
    const patterns::Range range = patterns::chunk_range(count_, per_host, j);
    std::vector<std::vector<float>> share_inputs;
    for (const std::vector<float>& s : host_sums) {
      share_inputs.emplace_back(s.begin() + static_cast<std::ptrdiff_t>(range.offset),
                                s.begin() + static_cast<std::ptrdiff_t>(range.end()));
    }
    const std::vector<float> reduced = shares_[static_cast<std::size_t>(j)]->step(share_inputs);
    std::copy(reduced.begin(), reduced.end(),
              result.begin() + static_cast<std::ptrdiff_t>(range.offset));
  }
  return result;
}

std::vector<float> integer_input(int rank, int step, std::size_t count) {
  std::vector<float> v(count);
  for (std::size_t i = 0; i < count; ++i) {
    const std::size_t x = static_cast<std::size_t>(rank) * 7919 +
                          static_cast<std::size_t>(step) * 104729 + i * 31 + (i * i) % 97;
    v[i] = static_cast<float>(static_cast<int>(x % 41) - 20);
  }
  return v;
}

std::vector<std::string> host_identities(int hosts, int per_host, bool interleaved) {
  std::vector<std::string> ids;
  for (int r = 0; r < hosts * per_host; ++r) {
    const int host = interleaved ? r % hosts : r / per_host;
    ids.push_back("host" + std::to_string(host));
  }
  return ids;
}

}  // namespace frugal::testing
