#include <array>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "../patterns/chunking.hpp"
#include "agreement.hpp"
#include "allreduce_plan.hpp"
#include "byte_image.hpp"
#include "collective_context.hpp"
#include "compressed_segments.hpp"
#include "frugal/collectives/collectives.hpp"
#include "frugal/collectives/hierarchical.hpp"
#include "frugal/compression/rng.hpp"
#include "lazy_require.hpp"
#include "refusal.hpp"

namespace frugal {

struct HierarchicalAccess {
  static AllreduceState& share(HierarchicalState& s) noexcept { return s.share_; }
  static std::optional<HierarchicalState::Binding>& binding(HierarchicalState& s) noexcept {
    return s.binding_;
  }
};

void HierarchicalState::reset() noexcept {
  share_.reset();
  binding_.reset();
}

void HierarchicalState::scale_residuals(float factor) {
  share_.scale_residuals(factor);
}

namespace {
constexpr std::uint64_t kStateMagic = 0x53485246;  // "FRHS"
constexpr std::uint64_t kStateVersion = 1;
}  // namespace

std::vector<std::byte> HierarchicalState::save() const {
  // The header as one block: magic and version, then the binding (flag, hosts, ranks per host,
  // local rank, count).
  const Binding b = binding_.value_or(Binding{});
  const std::array<std::uint64_t, 7> header{kStateMagic,
                                            kStateVersion,
                                            binding_ ? 1u : 0u,
                                            static_cast<std::uint64_t>(b.hosts),
                                            static_cast<std::uint64_t>(b.ranks_on_host),
                                            static_cast<std::uint64_t>(b.local_rank),
                                            b.count};
  detail::ImageWriter w;
  w.put_bytes(std::as_bytes(std::span(header)));
  w.put_blob(share_.save());
  return w.take();
}

void HierarchicalState::restore(std::span<const std::byte> image) {
  detail::ImageReader r(image, "HierarchicalState");
  if (r.get<std::uint64_t>() != kStateMagic) r.malformed("not a hierarchical state");
  if (r.get<std::uint64_t>() != kStateVersion) r.malformed("unknown version");
  const auto bound = r.get<std::uint64_t>();
  const auto hosts = r.get<std::uint64_t>();
  const auto ranks_on_host = r.get<std::uint64_t>();
  const auto local_rank = r.get<std::uint64_t>();
  const auto count = r.get<std::uint64_t>();
  if (bound > 1 || (bound == 1 && (hosts < 1 || hosts > INT32_MAX || ranks_on_host < 1 ||
                                   ranks_on_host > INT32_MAX || local_rank >= ranks_on_host))) {
    r.malformed("binding out of range");
  }
  Binding b;
  b.hosts = static_cast<int>(hosts);
  b.ranks_on_host = static_cast<int>(ranks_on_host);
  b.local_rank = static_cast<int>(local_rank);
  b.count = count;
  AllreduceState share(share_.decay());
  share.restore(r.get_blob());
  if (!r.done()) r.malformed("trailing bytes");
  share_ = std::move(share);
  binding_ = bound == 1 ? std::optional<Binding>(b) : std::nullopt;
}

namespace {

std::string describe(const HierarchicalState::Binding& b) {
  return std::to_string(b.hosts) + " hosts x " + std::to_string(b.ranks_on_host) +
         " ranks, local rank " + std::to_string(b.local_rank) + ", " + std::to_string(b.count) +
         " elements";
}

// Whether this rank scans its input for NaN/Inf before the agreement (as allreduce() does).
bool checks_non_finite(const AllreduceOptions& options, bool compressed) {
  switch (options.non_finite) {
    case NonFiniteAction::Error:
    case NonFiniteAction::Skip:
      return true;
    case NonFiniteAction::Default:
      return compressed && options.compression.non_finite == compression::NonFinitePolicy::Error;
    case NonFiniteAction::Zero:
      return false;
  }
  return false;
}

// The inter-host step runs on one cross communicator per local index, which see nothing of each
// other: a rank whose step failed tells its host through this count per ErrorCode, so that every
// rank of the host throws instead of waiting for its share in the allgather.
using Verdicts = std::array<std::int32_t, 6>;

}  // namespace

void hierarchical_allreduce(Hierarchy& hierarchy, std::span<std::byte> data, DType dtype,
                            const AllreduceOptions& options, HierarchicalState* state) {
  Communicator& parent = hierarchy.parent();
  // Arguments refused on one rank are refused on every rank (refusal.hpp): the others are
  // already in the agreement below.
  detail::AgreementTerms refused_terms;
  refused_terms.kind = detail::CollectiveKind::Allreduce;
  refused_terms.count = data.size();
  const HostTopology& topology = hierarchy.topology();
  detail::AllreducePlan plan;
  bool feedback = false;
  detail::refusing(parent, options, refused_terms, [&] {
    require(options.state == nullptr, "state",
            "hierarchical_allreduce keeps its residuals in a HierarchicalState; pass that as "
            "`state` and leave options.state null");
    AllreduceOptions checked = options;
    if (state != nullptr) checked.state = &HierarchicalAccess::share(*state);
    plan = detail::plan_allreduce(parent, data.size(), dtype, checked);
    feedback = plan.compressed && options.error_feedback;
    // A state bound to another topology or count is refused like a bad argument, inside the
    // same exchange: every peer learns of it from the agreement (Mismatch naming this rank)
    // instead of waiting for this rank in a later step, and the hierarchy stays usable.
    if (feedback) {
      const HierarchicalState::Binding want{topology.host_count(), topology.ranks_on_host(),
                                            topology.local_rank, data.size() / size_of(dtype)};
      const auto& bound = HierarchicalAccess::binding(*state);
      if (bound && *bound != want) {
        throw Error(ErrorCode::Mismatch, "state: bound to " + describe(*bound) + ", used with " +
                                             describe(want) + " (reset() it for a new layout)");
      }
    }
  });
  const std::size_t count = data.size() / size_of(dtype);
  const HierarchicalState::Binding binding{topology.host_count(), topology.ranks_on_host(),
                                           topology.local_rank, count};
  std::size_t zeroed = 0;
  if (options.non_finite == NonFiniteAction::Zero) zeroed = detail::zero_non_finite(data, dtype);
  const bool non_finite =
      checks_non_finite(options, plan.compressed) && detail::has_non_finite(data, dtype);

  detail::CollectiveAgreement agreement(plan.terms, non_finite);
  {
    detail::CollectiveContext ctx(parent, options);
    try {
      if (parent.size() > 1) detail::agree_recursive_doubling(ctx, agreement, {}, dtype, 1);
    } catch (const Error& e) {
      parent.fail(e);
      throw;
    }
    agreement.check(ctx);
  }
  if (agreement.non_finite()) {
    if (options.non_finite == NonFiniteAction::Skip) {
      if (options.stats != nullptr) {
        *options.stats = AllreduceStats{};
        options.stats->non_finite_skipped = true;
      }
      return;
    }
    throw Error(ErrorCode::InvalidArgument,
                "non_finite: some rank's input holds NaN or Inf (nothing was reduced; set "
                "non_finite to skip or zero to go on)");
  }
  if (feedback) HierarchicalAccess::binding(*state) = binding;

  const int local_ranks = topology.ranks_on_host();
  const int j = topology.local_rank;
  const CollectiveOptions& collective = options;
  try {
    // 1. Dense reduce-scatter within the host: share j of the host's sum.
    std::span<std::byte> share = data;
    if (local_ranks > 1) {
      share = reduce_scatter(hierarchy.host(), data, dtype, options.op, collective);
    }

    // 2. Share j across hosts, among the ranks with local index j.
    AllreduceOptions inner = options;
    inner.seed = compression::stream_seed(options.seed, static_cast<std::uint64_t>(j));
    inner.state = feedback ? &HierarchicalAccess::share(*state) : nullptr;
    inner.non_finite = NonFiniteAction::Default;
    // The segments describe the whole buffer: the share takes the pieces of them it holds.
    std::vector<std::size_t> share_segments;
    if (local_ranks > 1) {
      const std::size_t width = size_of(dtype);
      const patterns::Range range{static_cast<std::size_t>(share.data() - data.data()) / width,
                                  share.size() / width};
      if (detail::splits(options.segments) && range.count > 0) {
        for (const patterns::Range r : detail::segment_pieces(options.segments, range)) {
          share_segments.push_back(r.count);
        }
      }
      inner.segments = share_segments;
    }
    std::optional<Error> failed;
    try {
      // With one host nothing crosses hosts: the share already holds the exact sum, and
      // compressing it for no bytes would only lose precision (and feed error feedback).
      if (topology.host_count() > 1) {
        allreduce(hierarchy.cross(), share, dtype, inner);
      } else if (options.stats != nullptr) {
        *options.stats = AllreduceStats{};
      }
    } catch (const Error& e) {
      if (local_ranks == 1) throw;
      failed = e;
    }
    if (options.stats != nullptr) options.stats->non_finite_zeroed = zeroed;
    if (local_ranks == 1) return;

    Verdicts verdicts{};
    if (failed) verdicts[static_cast<std::size_t>(failed->code())] = 1;
    allreduce(hierarchy.host(), std::span<std::int32_t>(verdicts), AllreduceOptions{});
    if (failed) throw *failed;
    for (std::size_t code = 0; code < verdicts.size(); ++code) {
      if (verdicts[code] == 0) continue;
      throw Error(static_cast<ErrorCode>(code),
                  "hierarchical_allreduce: the inter-host step of another rank of this host (" +
                      std::to_string(verdicts[code]) + " rank(s)) failed with " +
                      std::string(to_string(static_cast<ErrorCode>(code))));
    }

    // 3. Dense allgather of the shares within the host.
    std::vector<std::size_t> counts(static_cast<std::size_t>(local_ranks));
    for (int i = 0; i < local_ranks; ++i) {
      counts[static_cast<std::size_t>(i)] =
          patterns::chunk_range(count, local_ranks, i).count * size_of(dtype);
    }
    std::vector<std::byte> mine(share.begin(), share.end());
    allgatherv(hierarchy.host(), mine, data, counts, collective);
  } catch (const Error& e) {
    // The sub-communicators have failed (and told the parent's peers); the parent follows, so
    // that the hierarchy is unusable on every rank alike.
    if (e.code() != ErrorCode::InvalidArgument) parent.fail(e, /*every_rank_knows=*/true);
    throw;
  }
}

}  // namespace frugal
