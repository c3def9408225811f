// SparCML-style sparse allreduce: recursive doubling over sparse vectors. At each step partners
// swap their current (merged) vectors and merge again; once a merged vector would be larger
// sparse than dense it turns dense, so the exchange never costs more than a dense one. Any P:
// extra ranks fold into a proxy first and get the result back at the end.
//
// Pipelined (without gTop-k): the index space is cut into contiguous ranges
// (pipeline_range_elements: at least 2^18 elements, at most 64 ranges, at least one), each a
// vector and a message of its own. Each step (the fold's too) posts every range's receive, and
// every range's send as soon as it is serialized, then waits for and merges the ranges in order,
// so that merging range s overlaps the transfer of the later ones. Merging is elementwise and
// keeps its operands' order (mine.merged(theirs)), so every element is summed exactly as in one
// vector. The ranges travel on the collective's one tag: messages of one tag between two ranks
// match in the order they were sent, and both sides post theirs in range order, as the dense
// ring's segments do; a step's partner is never another step's, nor the fold's.
// The decision to turn dense stays the whole vector's, taken once every range of a step is
// merged: a decision per range would change bits, since a dense add turns a lone -0 into +0
// where a sparse merge copies it (sparse_vector.hpp). It is the one pause between steps: the
// next step's sends start when this step's merges end. stats().dense_switch_step keeps its
// meaning: the first step whose messages go dense (0: this rank's own payload, or the proxy's
// merge with its extra rank's), or the number of steps when only the final sum is past
// break-even.
//
// gTop-k (CompressionConfig::gtopk; Shi et al. 2019), which is not pipelined (its cut keeps the
// largest magnitudes of the whole vector, so it needs every range merged first): after every
// merge the vector is cut back to the k entries of largest magnitude (ties to the lower index), so
// every message holds at most k entries (a rank's own payload, sent before any cut, those of its
// selection: sampled top-k's up to k·(1 + tolerance)) and each rank sends O(k log P) instead of up
// to the dense size. The vector is never turned dense: the cut needs its entries, and a dense form
// would lose which ones are held (an entry whose values cancel to 0 stays held). At densities where
// the coded sparse form is above dense (k near n) gTop-k sends a little more than a dense vector.
// Partners hold the same merged vector, so they cut alike, and after the last step every rank holds
// the same one. What a cut drops is the sum of the group's contributions there: each rank follows
// its own contribution (its payload's entries) through the cuts of its groups, and gives back to
// its own error-feedback residual every entry of it that some cut dropped, so the mass is delayed,
// never lost. A proxy follows its extra rank's contribution too and sends back the dropped entries
// after the result.
#include <algorithm>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <vector>

#include "../patterns/chunking.hpp"
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

// One step's messages with one peer, a receive and a send per range, posted in range order.
// The buffers are members declared before the requests, so that the requests are cancelled
// before the buffers are freed.
class RangeMessages {
 public:
  RangeMessages(CompressedRun& run, std::span<const patterns::Range> ranges)
      : run_(run), ranges_(ranges) {}

  void post_receives(int peer) {
    in_at_.assign(ranges_.size() + 1, 0);
    for (std::size_t s = 0; s < ranges_.size(); ++s) {
      in_at_[s + 1] = in_at_[s] + SparseVector::max_wire_bytes(ranges_[s].count);
    }
    in_ = scratch(in_at_.back());
    for (std::size_t s = 0; s < ranges_.size(); ++s) {
      recvs_.push_back(run_.ctx().irecv(peer, {in_.get() + in_at_[s], in_at_[s + 1] - in_at_[s]}));
    }
  }

  // Each range is sent as soon as it is serialized, so that the wire starts after one range.
  void post_sends(int peer, std::span<const SparseVector> parts) {
    std::vector<std::size_t> at(parts.size() + 1, 0);
    for (std::size_t s = 0; s < parts.size(); ++s) at[s + 1] = at[s] + parts[s].wire_bytes();
    out_ = scratch(at.back());
    for (std::size_t s = 0; s < parts.size(); ++s) {
      const std::span<std::byte> bytes(out_.get() + at[s], at[s + 1] - at[s]);
      parts[s].serialize(bytes);
      sends_.push_back(run_.ctx().isend(peer, bytes));
    }
  }

  SparseVector receive(std::size_t s) {
    run_.wait(recvs_[s]);
    return SparseVector::deserialize({in_.get() + in_at_[s], recvs_[s].bytes()}, ranges_[s].count);
  }

  // Keeps the later ranges moving while this rank merges (CollectiveContext::progress).
  void progress() {
    run_.timed(run_.stats().comm_seconds, [&] {
      run_.ctx().progress(recvs_);
      run_.ctx().progress(sends_);
    });
  }

  void finish_sends() { run_.wait_all(sends_); }

 private:
  CompressedRun& run_;
  std::span<const patterns::Range> ranges_;
  std::vector<std::size_t> in_at_;
  std::unique_ptr<std::byte[]> in_;
  std::unique_ptr<std::byte[]> out_;
  std::vector<Request> recvs_;
  std::vector<Request> sends_;
};

// [0, n) in contiguous ranges of at least pipeline_range_elements(n) elements, at least one.
std::vector<patterns::Range> pipeline_ranges(std::size_t n) {
  const int count = static_cast<int>(std::max<std::size_t>(1, n / pipeline_range_elements(n)));
  std::vector<patterns::Range> ranges;
  for (int s = 0; s < count; ++s) ranges.push_back(patterns::chunk_range(n, count, s));
  return ranges;
}

// A sparse vector cut into `ranges`, each part indexed from its range's start.
std::vector<SparseVector> split(const SparseVector& whole,
                                std::span<const patterns::Range> ranges) {
  const std::span<const std::uint32_t> index = whole.indices();
  const std::span<const float> value = whole.values();
  std::vector<SparseVector> parts;
  parts.reserve(ranges.size());
  std::size_t j = 0;
  for (const patterns::Range r : ranges) {
    const std::size_t first = j;
    while (j < index.size() && index[j] < r.end()) ++j;
    std::vector<std::uint32_t> local(j - first);
    for (std::size_t i = first; i < j; ++i) {
      local[i - first] = static_cast<std::uint32_t>(index[i] - r.offset);
    }
    parts.push_back(SparseVector::from_entries(
        r.count, std::move(local),
        std::vector<float>(value.begin() + static_cast<std::ptrdiff_t>(first),
                           value.begin() + static_cast<std::ptrdiff_t>(j))));
  }
  return parts;
}

// The whole vector's break-even rule (SparseVector::past_break_even) over its parts: all sparse
// (the parts of agreeing ranks always share their form) and more than half the elements held.
bool past_break_even(std::span<const SparseVector> parts, std::size_t n) {
  std::size_t held = 0;
  bool sparse = true;
  for (const SparseVector& p : parts) {
    held += p.nonzeros();
    sparse = sparse && !p.dense();
  }
  return sparse && held * 8 > n * 4;
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
  const std::vector<patterns::Range> ranges = pipeline_ranges(n);
  std::vector<SparseVector> parts = split(v, ranges);
  v = SparseVector(0);
  auto part_of_data = [&](std::size_t s) {
    return data.subspan(ranges[s].offset, ranges[s].count);
  };
  // A vector past break-even always travels dense, so no message exceeds the dense size. When
  // nothing is merged or sent any more the dense form would change no bit of the result (both
  // forms scatter alike): only the statistic is kept.
  auto densify_if_past_break_even = [&](int next_step, bool used) {
    if (!past_break_even(parts, n)) return;
    if (used) {
      for (SparseVector& p : parts) p.make_dense();
    }
    if (run.stats().dense_switch_step < 0) run.stats().dense_switch_step = next_step;
  };

  const patterns::Fold fold = patterns::fold_for(ctx.rank(), ctx.size());
  densify_if_past_break_even(0, ctx.size() > 1);
  if (fold.role == patterns::FoldRole::Extra) {
    RangeMessages result(run, ranges);
    result.post_receives(fold.partner);
    RangeMessages mine(run, ranges);
    mine.post_sends(fold.partner, parts);
    parts.clear();
    // Each range of the result is written out as it arrives.
    for (std::size_t s = 0; s < ranges.size(); ++s) result.receive(s).scatter_to(part_of_data(s));
    mine.finish_sends();
  } else {
    if (fold.role == patterns::FoldRole::Proxy) {
      RangeMessages extra(run, ranges);
      extra.post_receives(fold.partner);
      for (std::size_t s = 0; s < ranges.size(); ++s) {
        const SparseVector theirs = extra.receive(s);
        run.timed(run.stats().decode_seconds, [&] { parts[s] = parts[s].merged(theirs); });
        extra.progress();
      }
      densify_if_past_break_even(0, true);
    }
    int step = 0;
    for (int mask = 1; mask < fold.pof2; mask *= 2, ++step) {
      const int partner =
          patterns::real_rank(patterns::rd_partner(fold.virtual_rank, mask), fold.rem);
      RangeMessages step_messages(run, ranges);
      step_messages.post_receives(partner);
      step_messages.post_sends(partner, parts);
      for (std::size_t s = 0; s < ranges.size(); ++s) {
        const SparseVector other = step_messages.receive(s);
        run.timed(run.stats().decode_seconds, [&] { parts[s] = parts[s].merged(other); });
        step_messages.progress();
      }
      const bool used = mask * 2 < fold.pof2 || fold.role == patterns::FoldRole::Proxy;
      run.timed(run.stats().decode_seconds, [&] { densify_if_past_break_even(step + 1, used); });
      step_messages.finish_sends();
    }
    if (fold.role == patterns::FoldRole::Proxy) {
      RangeMessages result(run, ranges);
      result.post_sends(fold.partner, parts);
      for (std::size_t s = 0; s < ranges.size(); ++s) parts[s].scatter_to(part_of_data(s));
      result.finish_sends();
    } else {
      for (std::size_t s = 0; s < ranges.size(); ++s) parts[s].scatter_to(part_of_data(s));
    }
  }
  if (run.options().op == ReduceOp::Average) {
    divide(std::as_writable_bytes(data), DType::Float32, ctx.size());
  }
}

}  // namespace frugal::detail
