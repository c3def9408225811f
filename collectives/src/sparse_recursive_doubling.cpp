// SparCML-style sparse allreduce: recursive doubling over sparse vectors. At each step partners
// swap their current (merged) vectors and merge again; once a merged vector would be larger
// sparse than dense it turns dense, so the exchange never costs more than a dense one. Any P:
// extra ranks fold into a proxy first and get the result back at the end.
//
// gTop-k (CompressionConfig::gtopk; Shi et al. 2019): after every merge the vector is cut back to
// the k entries of largest magnitude (ties to the lower index), so every message holds at most k
// entries (a rank's own payload, sent before any cut, those of its selection: sampled top-k's up
// to k·(1 + tolerance)) and each rank sends O(k log P) instead of up to the dense size. The
// vector is never turned dense: the cut needs its entries, and a dense form would lose which
// ones are held (an entry whose values cancel to 0 stays held). At densities where the coded
// sparse form is above dense (k near n) gTop-k sends a little more than a dense vector. Partners
// hold the same merged vector, so they cut alike, and after the last step every rank holds the
// same one. What a cut drops is the sum of the group's contributions there: each rank follows its
// own contribution (its payload's entries) through the cuts of its groups, and gives back to its
// own error-feedback residual every entry of it that some cut dropped, so the mass is delayed,
// never lost. A proxy follows its extra rank's contribution too and sends back the dropped entries
// after the result.
#include <optional>
#include <vector>

#include "../patterns/recursive_doubling.hpp"
#include "compressed_run.hpp"
#include "frugal/compression/error_feedback.hpp"
#include "reduce_kernels.hpp"
#include "sparse_vector.hpp"

namespace frugal::detail {

namespace {

// Receive buffers hold the largest message any vector of `size` can be (max_wire_bytes): gTop-k
// never densifies, so at density 1 its sparse form is above dense. They are not zero-filled:
// only the bytes a message brings are read, and untouched pages of a large buffer cost nothing.
// Each request is declared after the buffers it uses, so that on an error it is cancelled
// (Request's destructor) before they are freed.
SparseVector swap(CompressedRun& run, int partner, const SparseVector& mine, std::size_t size) {
  std::vector<std::byte> out(mine.wire_bytes());
  mine.serialize(out);
  const std::size_t capacity = SparseVector::max_wire_bytes(size);
  const auto in = scratch(capacity);
  Request recv = run.ctx().irecv(partner, {in.get(), capacity});
  Request send = run.ctx().isend(partner, out);
  run.wait(recv);
  run.wait(send);
  return SparseVector::deserialize({in.get(), recv.bytes()}, size);
}

void send_vector(CompressedRun& run, int peer, const SparseVector& v) {
  std::vector<std::byte> out(v.wire_bytes());
  v.serialize(out);
  Request send = run.ctx().isend(peer, out);
  run.wait(send);
}

SparseVector receive_vector(CompressedRun& run, int peer, std::size_t size) {
  const std::size_t capacity = SparseVector::max_wire_bytes(size);
  const auto in = scratch(capacity);
  Request recv = run.ctx().irecv(peer, {in.get(), capacity});
  run.wait(recv);
  return SparseVector::deserialize({in.get(), recv.bytes()}, size);
}

// One rank's contribution (its payload's entries) followed through gTop-k's cuts.
class Contribution {
 public:
  explicit Contribution(const SparseVector& v)
      : index_(v.indices().begin(), v.indices().end()),
        value_(v.values().begin(), v.values().end()),
        kept_(index_.size(), true) {}
  // Marks the entries the cut vector `v` no longer holds.
  void follow(const SparseVector& v) {
    const std::span<const std::uint32_t> held = v.indices();
    std::size_t j = 0;
    for (std::size_t i = 0; i < index_.size(); ++i) {
      while (j < held.size() && held[j] < index_[i]) ++j;
      if (j == held.size() || held[j] != index_[i]) kept_[i] = false;
    }
  }
  SparseVector dropped(std::size_t size) const {
    std::vector<std::uint32_t> idx;
    std::vector<float> val;
    for (std::size_t i = 0; i < index_.size(); ++i) {
      if (!kept_[i]) {
        idx.push_back(index_[i]);
        val.push_back(value_[i]);
      }
    }
    return SparseVector::from_entries(size, std::move(idx), std::move(val));
  }

 private:
  std::vector<std::uint32_t> index_;
  std::vector<float> value_;
  std::vector<bool> kept_;
};

void give_back(CompressedRun& run, const SparseVector& dropped) {
  compression::ErrorFeedback* feedback = run.worker_feedback();
  if (feedback == nullptr || dropped.nonzeros() == 0) return;
  feedback->add(dropped.indices(), dropped.values());
}

void global_topk(CompressedRun& run, std::span<float> data, SparseVector v) {
  CollectiveContext& ctx = run.ctx();
  const std::size_t n = data.size();
  const std::size_t k = run.compressor().k_for(n);
  Contribution mine(v);
  const patterns::Fold fold = patterns::fold_for(ctx.rank(), ctx.size());
  if (fold.role == patterns::FoldRole::Extra) {
    send_vector(run, fold.partner, v);
    v = receive_vector(run, fold.partner, n);
    give_back(run, receive_vector(run, fold.partner, n));
  } else {
    std::optional<Contribution> extra;
    auto cut = [&] {
      v.keep_largest(k);
      mine.follow(v);
      if (extra) extra->follow(v);
    };
    if (fold.role == patterns::FoldRole::Proxy) {
      const SparseVector theirs = receive_vector(run, fold.partner, n);
      extra.emplace(theirs);
      run.timed(run.stats().decode_seconds, [&] {
        v = v.merged(theirs);
        cut();
      });
    }
    for (int mask = 1; mask < fold.pof2; mask *= 2) {
      const int partner =
          patterns::real_rank(patterns::rd_partner(fold.virtual_rank, mask), fold.rem);
      const SparseVector other = swap(run, partner, v, n);
      run.timed(run.stats().decode_seconds, [&] {
        v = v.merged(other);
        cut();
      });
    }
    if (fold.role == patterns::FoldRole::Proxy) {
      send_vector(run, fold.partner, v);
      send_vector(run, fold.partner, extra->dropped(n));
    }
    give_back(run, mine.dropped(n));
  }
  v.scatter_to(data);
  if (run.options().op == ReduceOp::Average) {
    divide(std::as_writable_bytes(data), DType::Float32, ctx.size());
  }
}

}  // namespace

void sparse_recursive_doubling(CompressedRun& run, std::span<float> data) {
  CollectiveContext& ctx = run.ctx();
  const std::size_t n = data.size();
  std::vector<std::byte> payload(run.compressor().max_encoded_bytes(n));
  const std::size_t bytes = run.encode_worker(data, payload, 0);
  SparseVector v = SparseVector::from_topk_payload(std::span(payload).first(bytes), n);
  if (run.compressor().config().gtopk) {
    global_topk(run, data, std::move(v));
    return;
  }
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
