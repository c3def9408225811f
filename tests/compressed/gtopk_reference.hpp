// gTop-k's serial reference, shared by the in-process and the mpirun tests: every rank's top-k
// payload with its own residual, then the recursive-doubling tree of the sparse allreduce
// (extra ranks folded into their proxies, MPICH's scheme) over ordered maps, the sum cut back to
// the k largest magnitudes (ties to the lower index) after every merge, and every rank's dropped
// entries returned to its residual. Written from the rule, not from the library's SparseVector.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <map>
#include <set>
#include <vector>

#include "frugal/collectives/allreduce.hpp"
#include "frugal/compression/compressor.hpp"
#include "frugal/compression/error_feedback.hpp"
#include "frugal/compression/payload.hpp"
#include "frugal/compression/topk_indices.hpp"

namespace frugal::testing {

// Integer-valued, so that every sum is exact whatever the order; magnitudes spread over 0..1000
// so that ranks select different indices.
inline std::vector<float> gtopk_input(int rank, std::uint64_t step, std::size_t count) {
  std::vector<float> v(count);
  for (std::size_t i = 0; i < count; ++i) {
    const std::uint64_t h =
        (i * 2654435761u + static_cast<std::uint64_t>(rank) * 40503u + step * 977u) *
        0x9e3779b97f4a7c15ULL;
    v[i] = static_cast<float>(static_cast<int>((h >> 40) % 2001) - 1000);
  }
  return v;
}

class GtopkReference {
 public:
  GtopkReference(int ranks, std::size_t count, const AllreduceOptions& options)
      : ranks_(ranks),
        count_(count),
        options_(options),
        compressor_(compression::make_compressor(options.compression)) {
    for (int r = 0; r < ranks; ++r) residual_.emplace_back(count);
  }

  std::span<const float> residual(int rank) const {
    return residual_[static_cast<std::size_t>(rank)].residual();
  }

  std::vector<float> step(const std::vector<std::vector<float>>& inputs) {
    using Vec = std::map<std::uint32_t, float>;
    const std::size_t k = compressor_->k_for(count_);
    std::vector<Vec> own(static_cast<std::size_t>(ranks_));
    for (int r = 0; r < ranks_; ++r) own[static_cast<std::size_t>(r)] = payload(r, inputs);
    // Who still contributes what: rank -> its entries not yet dropped by a cut.
    std::vector<std::set<std::uint32_t>> alive(own.size());
    for (std::size_t r = 0; r < own.size(); ++r) {
      for (const auto& [i, v] : own[r]) alive[r].insert(i);
    }
    const auto merge = [](const Vec& a, const Vec& b) {
      Vec out = a;
      for (const auto& [i, v] : b) {
        auto it = out.find(i);
        if (it == out.end()) {
          out.emplace(i, v);
        } else {
          it->second = it->second + v;
        }
      }
      return out;
    };
    const auto cut = [&](Vec& v, const std::vector<int>& members) {
      if (v.size() > k) {
        std::vector<std::pair<std::uint32_t, float>> e(v.begin(), v.end());
        const auto key = [](float x) {
          std::uint32_t u;
          std::memcpy(&u, &x, 4);
          return u & 0x7fffffffu;
        };
        std::stable_sort(e.begin(), e.end(), [&](const auto& a, const auto& b) {
          return key(a.second) > key(b.second);  // stable: ties stay in index order
        });
        e.resize(k);
        v = Vec(e.begin(), e.end());
      }
      for (const int r : members) {
        auto& set = alive[static_cast<std::size_t>(r)];
        for (auto it = set.begin(); it != set.end();) {
          it = v.count(*it) != 0 ? std::next(it) : set.erase(it);
        }
      }
    };
    int pof2 = 1;
    while (pof2 * 2 <= ranks_) pof2 *= 2;
    const int rem = ranks_ - pof2;
    // Virtual rank -> its vector and the real ranks it stands for.
    std::vector<Vec> v(static_cast<std::size_t>(pof2));
    std::vector<std::vector<int>> members(static_cast<std::size_t>(pof2));
    for (int q = 0; q < pof2; ++q) {
      const auto uq = static_cast<std::size_t>(q);
      if (q < rem) {
        const int proxy = 2 * q + 1, extra = 2 * q;
        members[uq] = {extra, proxy};
        v[uq] = merge(own[static_cast<std::size_t>(proxy)], own[static_cast<std::size_t>(extra)]);
        cut(v[uq], members[uq]);
      } else {
        members[uq] = {q + rem};
        v[uq] = own[static_cast<std::size_t>(q + rem)];
      }
    }
    for (int mask = 1; mask < pof2; mask *= 2) {
      std::vector<Vec> next(v.size());
      std::vector<std::vector<int>> next_members(v.size());
      for (int q = 0; q < pof2; ++q) {
        const auto uq = static_cast<std::size_t>(q), up = static_cast<std::size_t>(q ^ mask);
        next[uq] = merge(v[uq], v[up]);
        next_members[uq] = members[uq];
        next_members[uq].insert(next_members[uq].end(), members[up].begin(), members[up].end());
        cut(next[uq], next_members[uq]);
      }
      v = std::move(next);
      members = std::move(next_members);
    }
    // Each rank gives back what it sent and a cut dropped.
    if (options_.error_feedback) {
      for (std::size_t r = 0; r < own.size(); ++r) {
        std::vector<std::uint32_t> idx;
        std::vector<float> val;
        for (const auto& [i, x] : own[r]) {
          if (alive[r].count(i) == 0) {
            idx.push_back(i);
            val.push_back(x);
          }
        }
        residual_[r].add(idx, val);
      }
    }
    std::vector<float> result(count_, 0.0f);
    for (const auto& [i, x] : v[0]) result[i] = x;
    if (options_.op == ReduceOp::Average) {
      for (float& x : result) x /= static_cast<float>(ranks_);
    }
    ++step_;
    return result;
  }

 private:
  // Rank r's payload entries, encoded with its residual as the library's worker encode does.
  std::map<std::uint32_t, float> payload(int r, const std::vector<std::vector<float>>& inputs) {
    const auto ur = static_cast<std::size_t>(r);
    std::vector<std::byte> out(compressor_->max_encoded_bytes(count_));
    std::vector<float> applied(count_);
    compression::Rng rng(options_.seed, static_cast<std::uint64_t>(r), step_, 0);
    std::size_t bytes = 0;
    if (options_.error_feedback) {
      bytes = compression::encode_with_feedback(*compressor_, residual_[ur], inputs[ur], out, rng,
                                                applied, 0);
    } else {
      bytes = compressor_->encode(inputs[ur], out, rng);
    }
    const compression::PayloadHeader h = compression::read_header(std::span(out).first(bytes));
    const auto k = static_cast<std::size_t>(h.k);
    std::vector<std::uint32_t> idx;
    compression::read_topk_indices(
        std::span(out).subspan(compression::PayloadHeader::kSize + 4 * k, h.bits), count_, k, idx);
    std::map<std::uint32_t, float> m;
    for (std::size_t j = 0; j < k; ++j) {
      float x;
      std::memcpy(&x, out.data() + compression::PayloadHeader::kSize + 4 * j, 4);
      m.emplace(idx[j], x);
    }
    return m;
  }

  int ranks_;
  std::size_t count_;
  AllreduceOptions options_;
  std::unique_ptr<compression::Compressor> compressor_;
  std::vector<compression::ErrorFeedback> residual_;
  std::uint64_t step_ = 0;
};

// The reference over `steps` steps of gtopk_input: each step's result and each rank's residual
// after it ([step] and [step][rank]).
struct GtopkExpected {
  std::vector<std::vector<float>> results;
  std::vector<std::vector<std::vector<float>>> residuals;
};
inline GtopkExpected reference_steps(int ranks, std::size_t count, const AllreduceOptions& options,
                                     int steps) {
  GtopkReference reference(ranks, count, options);
  GtopkExpected e;
  for (int step = 0; step < steps; ++step) {
    std::vector<std::vector<float>> inputs;
    for (int r = 0; r < ranks; ++r) {
      inputs.push_back(gtopk_input(r, static_cast<std::uint64_t>(step), count));
    }
    e.results.push_back(reference.step(inputs));
    e.residuals.emplace_back();
    for (int r = 0; r < ranks; ++r) {
      const auto res = reference.residual(r);
      e.residuals.back().emplace_back(res.begin(), res.end());
    }
  }
  return e;
}

}  // namespace frugal::testing
