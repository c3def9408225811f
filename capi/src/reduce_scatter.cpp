// frugal_shard_range, frugal_reduce_scatter and frugal_allgather: the compressed halves of the
// two-phase allreduce (frugal/collectives/reduce_scatter.hpp).

#include "frugal/collectives/reduce_scatter.hpp"

#include <span>

#include "capi_internal.hpp"

using frugal::capi::guarded;
using frugal::capi::require_pointer;

namespace {

template <typename T>
std::span<T> floats(T* buf, size_t count, const char* name) {
  if (count > 0) require_pointer(buf, name);
  return {buf, count};
}

}  // namespace

extern "C" {

frugal_status frugal_shard_range(size_t count, int ranks, int rank, size_t* offset,
                                 size_t* shard_count) {
  return guarded("frugal_shard_range", [&] {
    require_pointer(offset, "offset");
    require_pointer(shard_count, "shard_count");
    const frugal::ShardRange shard = frugal::reduce_scatter_shard(count, ranks, rank);
    *offset = shard.offset;
    *shard_count = shard.count;
  });
}

frugal_status frugal_reduce_scatter(frugal_comm* comm, float* input, size_t count, float* output,
                                    size_t output_count, const frugal_options* options) {
  return guarded("frugal_reduce_scatter", [&] {
    require_pointer(comm, "comm");
    frugal::capi::call_reporting_skip(options, [&](const frugal::AllreduceOptions& converted) {
      frugal::compressed_reduce_scatter(*comm->comm, floats(input, count, "input"),
                                        floats(output, output_count, "output"), converted);
    });
  });
}

frugal_status frugal_allgather(frugal_comm* comm, const float* shard, size_t shard_count,
                               float* output, size_t count, const frugal_options* options) {
  return guarded("frugal_allgather", [&] {
    require_pointer(comm, "comm");
    frugal::capi::call_reporting_skip(options, [&](const frugal::AllreduceOptions& converted) {
      frugal::compressed_allgather(*comm->comm, floats(shard, shard_count, "shard"),
                                   floats(output, count, "output"), converted);
    });
  });
}

}  // extern "C"
