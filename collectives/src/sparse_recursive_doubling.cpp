// SparCML-style sparse allreduce: recursive doubling over sparse vectors. At each step partners
// swap their current (merged) vectors and merge again; once a merged vector would be larger
// sparse than dense it turns dense, so the exchange never costs more than a dense one. Any P:
// extra ranks fold into a proxy first and get the result back at the end.
#include <vector>

#include "../patterns/recursive_doubling.hpp"
#include "compressed_run.hpp"
#include "reduce_kernels.hpp"
#include "sparse_vector.hpp"

namespace frugal::detail {

namespace {

SparseVector swap(CompressedRun& run, int partner, const SparseVector& mine, std::size_t size) {
  std::vector<std::byte> out(mine.wire_bytes());
  mine.serialize(out);
  std::vector<std::byte> in(SparseVector::max_wire_bytes(size));
  Request recv = run.ctx().irecv(partner, in);
  Request send = run.ctx().isend(partner, out);
  run.wait(recv);
  run.wait(send);
  return SparseVector::deserialize(std::span(in).first(recv.bytes()), size);
}

void send_vector(CompressedRun& run, int peer, const SparseVector& v) {
  std::vector<std::byte> out(v.wire_bytes());
  v.serialize(out);
  Request send = run.ctx().isend(peer, out);
  run.wait(send);
}

SparseVector receive_vector(CompressedRun& run, int peer, std::size_t size) {
  std::vector<std::byte> in(SparseVector::max_wire_bytes(size));
  Request recv = run.ctx().irecv(peer, in);
  run.wait(recv);
  return SparseVector::deserialize(std::span(in).first(recv.bytes()), size);
}

}  // namespace

void sparse_recursive_doubling(CompressedRun& run, std::span<float> data) {
  CollectiveContext& ctx = run.ctx();
  const std::size_t n = data.size();
  std::vector<std::byte> payload(run.compressor().max_encoded_bytes(n));
  const std::size_t bytes = run.encode_worker(data, payload, 0);
  SparseVector v = SparseVector::from_topk_payload(std::span(payload).first(bytes), n);
  // A vector past break-even always travels dense, so no message exceeds the dense size.
  auto densify_if_past_break_even = [&](int next_step) {
    if (!v.past_break_even()) return;
    v.make_dense();
    if (run.stats().dense_switch_step < 0) run.stats().dense_switch_step = next_step;
  };
  densify_if_past_break_even(0);

  const patterns::Fold fold = patterns::fold_for(ctx.rank(), ctx.size());
  if (fold.role == patterns::FoldRole::Extra) {
    send_vector(run, fold.partner, v);
    v = receive_vector(run, fold.partner, n);
  } else {
    if (fold.role == patterns::FoldRole::Proxy) {
      const SparseVector extra = receive_vector(run, fold.partner, n);
      run.timed(run.stats().decode_seconds, [&] { v = v.merged(extra); });
      densify_if_past_break_even(0);
    }
    int step = 0;
    for (int mask = 1; mask < fold.pof2; mask *= 2, ++step) {
      const int partner =
          patterns::real_rank(patterns::rd_partner(fold.virtual_rank, mask), fold.rem);
      const SparseVector other = swap(run, partner, v, n);
      run.timed(run.stats().decode_seconds, [&] {
        v = v.merged(other);
        densify_if_past_break_even(step + 1);
      });
    }
    if (fold.role == patterns::FoldRole::Proxy) send_vector(run, fold.partner, v);
  }
  v.scatter_to(data);
  if (run.options().op == ReduceOp::Average) {
    divide(std::as_writable_bytes(data), DType::Float32, ctx.size());
  }
}

}  // namespace frugal::detail
