#include <string>
#include <vector>

#include "../patterns/chunking.hpp"
#include "../patterns/recursive_doubling.hpp"
#include "../patterns/ring.hpp"
#include "agreement.hpp"
#include "collective_context.hpp"
#include "frugal/collectives/collectives.hpp"
#include "lazy_require.hpp"

namespace frugal {

void broadcast(Communicator& comm, std::span<std::byte> data, int root,
               const CollectiveOptions& options) {
  using namespace patterns;
  require(root >= 0 && root < comm.size(), "root", [&] {
    return std::to_string(root) + " is outside 0.." + std::to_string(comm.size() - 1);
  });
  detail::AgreementTerms terms;
  terms.kind = detail::CollectiveKind::Broadcast;
  terms.count = data.size();
  terms.param = static_cast<std::uint64_t>(root);
  detail::run_collective(comm, options, [&](detail::CollectiveContext& ctx) {
    detail::agree(ctx, terms);
    const int size = ctx.size();
    if (size == 1) return;
    const int relative = mod(ctx.rank() - root, size);
    const std::size_t segment = ctx.segment_bytes();
    const std::size_t pieces = segment_count(data.size(), segment);
    const Range whole{0, data.size()};
    auto piece = [&](std::size_t j) {
      const Range s = segment_range(whole, segment, j);
      return data.subspan(s.offset, s.count);
    };
    // Children in the order they are served: the farthest subtree first, as it is the deepest.
    std::vector<int> children;
    const int top = relative == 0 ? floor_pow2(size - 1) * 2 : lowest_bit(relative);
    for (int m = top / 2; m >= 1; m /= 2) {
      if (relative + m < size) children.push_back(mod(relative + m + root, size));
    }

    std::vector<Request> recvs(pieces);
    if (relative != 0) {
      const int parent = mod(binomial_parent(relative) + root, size);
      for (std::size_t j = 0; j < pieces; ++j) recvs[j] = ctx.irecv(parent, piece(j));
    }
    // Segments are forwarded as they arrive, so the tree works as a pipeline.
    std::vector<Request> sends;
    sends.reserve(pieces * children.size());
    for (std::size_t j = 0; j < pieces; ++j) {
      if (relative != 0) ctx.wait_recv(recvs[j], piece(j).size());
      for (int child : children) sends.push_back(ctx.isend(child, piece(j)));
    }
    ctx.wait_all(std::span<Request>(sends));
  });
}

}  // namespace frugal
