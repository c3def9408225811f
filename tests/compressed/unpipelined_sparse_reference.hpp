// A serial copy of the sparse recursive doubling as it ran before the pipelining, the reference
// of the pipelined one (sparse_pipeline_test in-process, mpi_sparse_pipeline_test under mpirun).
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "chunking.hpp"
#include "collective_context.hpp"
#include "frugal/collectives/allreduce.hpp"
#include "frugal/compression/compressor.hpp"
#include "frugal/compression/error_feedback.hpp"
#include "frugal/compression/rng.hpp"
#include "recursive_doubling.hpp"
#include "sparse_vector.hpp"

namespace frugal::testing {

using detail::SparseVector;

// Ranges of at least `elements` while in scope (the library's default afterwards).
class SmallRanges {
 public:
  explicit SmallRanges(std::size_t elements) {
    detail::set_pipeline_min_range_elements_for_tests(elements);
  }
  ~SmallRanges() { detail::set_pipeline_min_range_elements_for_tests(0); }
  SmallRanges(const SmallRanges&) = delete;
  SmallRanges& operator=(const SmallRanges&) = delete;
};

// The sparse recursive doubling as it ran before the pipelining, serially: every rank's top-k
// payload with its own residual, then the recursive-doubling tree (extras folded into their
// proxies) over whole SparseVectors, each merge `mine.merged(theirs)`, a vector turned dense as
// soon as it is past break-even. With `per_range`, the vectors are cut into the library's ranges
// and each range turns dense on its own: the rule the library must not follow (it changes bits).
class UnpipelinedReference {
 public:
  UnpipelinedReference(int ranks, std::size_t count, const AllreduceOptions& options,
                       bool per_range = false)
      : ranks_(ranks),
        count_(count),
        options_(options),
        per_range_(per_range),
        compressor_(compression::make_compressor(options.compression)) {
    for (int r = 0; r < ranks; ++r) residual_.emplace_back(count);
  }

  struct Step {
    std::vector<std::vector<float>> results;  // per rank
    std::vector<std::vector<float>> residuals;
    std::vector<int> dense_switch_step;
  };

  Step step(const std::vector<std::vector<float>>& inputs) {
    using Parts = std::vector<SparseVector>;
    const auto p = static_cast<std::size_t>(ranks_);
    Step out;
    out.dense_switch_step.assign(p, -1);
    auto densify = [&](Parts& v, int rank, int next_step) {
      bool switched = false;
      if (per_range_) {
        for (SparseVector& part : v) {
          if (part.past_break_even()) {
            part.make_dense();
            switched = true;
          }
        }
      } else if (v[0].past_break_even()) {
        v[0].make_dense();
        switched = true;
      }
      int& first = out.dense_switch_step[static_cast<std::size_t>(rank)];
      if (switched && first < 0) first = next_step;
    };
    auto merge = [](const Parts& mine, const Parts& theirs) {
      Parts m;
      for (std::size_t s = 0; s < mine.size(); ++s) m.push_back(mine[s].merged(theirs[s]));
      return m;
    };
    std::vector<Parts> own(p);
    for (int r = 0; r < ranks_; ++r) {
      own[static_cast<std::size_t>(r)] = cut(payload(r, inputs[static_cast<std::size_t>(r)]));
      densify(own[static_cast<std::size_t>(r)], r, 0);
    }
    const int pof2 = patterns::floor_pow2(ranks_);
    const int rem = ranks_ - pof2;
    for (int extra = 0; extra < 2 * rem; extra += 2) {
      Parts& proxy = own[static_cast<std::size_t>(extra + 1)];
      proxy = merge(proxy, own[static_cast<std::size_t>(extra)]);
      densify(proxy, extra + 1, 0);
    }
    std::vector<Parts> v(static_cast<std::size_t>(pof2));
    for (int q = 0; q < pof2; ++q) {
      v[static_cast<std::size_t>(q)] = own[static_cast<std::size_t>(patterns::real_rank(q, rem))];
    }
    int step = 0;
    for (int mask = 1; mask < pof2; mask *= 2, ++step) {
      std::vector<Parts> next(v.size());
      for (int q = 0; q < pof2; ++q) {
        const auto uq = static_cast<std::size_t>(q);
        next[uq] = merge(v[uq], v[static_cast<std::size_t>(q ^ mask)]);
        densify(next[uq], patterns::real_rank(q, rem), step + 1);
      }
      v = std::move(next);
    }
    out.results.resize(p);
    for (int q = 0; q < pof2; ++q) {
      const int real = patterns::real_rank(q, rem);
      std::vector<float> result(count_);
      std::size_t at = 0;
      for (const SparseVector& part : v[static_cast<std::size_t>(q)]) {
        part.scatter_to(std::span(result).subspan(at, part.size()));
        at += part.size();
      }
      if (options_.op == ReduceOp::Average) {
        for (float& x : result) x /= static_cast<float>(ranks_);
      }
      out.results[static_cast<std::size_t>(real)] = result;
      if (real < 2 * rem) out.results[static_cast<std::size_t>(real - 1)] = result;
    }
    for (const compression::ErrorFeedback& f : residual_) {
      out.residuals.emplace_back(f.residual().begin(), f.residual().end());
    }
    ++step_;
    return out;
  }

 private:
  // Rank r's payload, encoded with its residual as the library's worker encode does.
  SparseVector payload(int r, std::vector<float> values) {
    std::vector<std::byte> out(compressor_->max_encoded_bytes(count_));
    compression::Rng rng(options_.seed, static_cast<std::uint64_t>(r), step_, 0);
    const std::size_t bytes =
        options_.error_feedback
            ? compression::encode_with_feedback(
                  *compressor_, residual_[static_cast<std::size_t>(r)], values, out, rng, values, 0)
            : compressor_->encode(values, out, rng);
    return SparseVector::from_topk_payload(std::span(out).first(bytes), count_);
  }

  // The whole vector, or (per_range) its parts in the library's ranges, indexed from their start.
  std::vector<SparseVector> cut(const SparseVector& whole) const {
    if (!per_range_) return {whole};
    const std::size_t ranges =
        std::max<std::size_t>(1, count_ / detail::pipeline_range_elements(count_));
    std::vector<SparseVector> parts;
    for (std::size_t s = 0; s < ranges; ++s) {
      const patterns::Range r =
          patterns::chunk_range(count_, static_cast<int>(ranges), static_cast<int>(s));
      std::vector<std::uint32_t> index;
      std::vector<float> value;
      for (std::size_t j = 0; j < whole.indices().size(); ++j) {
        const std::uint32_t i = whole.indices()[j];
        if (i >= r.offset && i < r.end()) {
          index.push_back(static_cast<std::uint32_t>(i - r.offset));
          value.push_back(whole.values()[j]);
        }
      }
      parts.push_back(SparseVector::from_entries(r.count, std::move(index), std::move(value)));
    }
    return parts;
  }

  int ranks_;
  std::size_t count_;
  AllreduceOptions options_;
  bool per_range_;
  std::unique_ptr<compression::Compressor> compressor_;
  std::vector<compression::ErrorFeedback> residual_;
  std::uint64_t step_ = 0;
};

}  // namespace frugal::testing
