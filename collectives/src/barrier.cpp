#include "../patterns/recursive_doubling.hpp"
#include "../patterns/ring.hpp"
#include "collective_context.hpp"
#include "frugal/collectives/collectives.hpp"

namespace frugal {

void barrier(Communicator& comm, const CollectiveOptions& options) {
  detail::run_collective(comm, options, [](detail::CollectiveContext& ctx) {
    const int size = ctx.size();
    for (int distance = 1; distance < size; distance *= 2) {
      const int to = patterns::mod(ctx.rank() + distance, size);
      const int from = patterns::mod(ctx.rank() - distance, size);
      ctx.sendrecv(to, {}, from, {});
    }
  });
}

}  // namespace frugal
