#include "frugal/collectives/allreduce_state.hpp"

#include <cmath>
#include <cstring>
#include <string>

#include "byte_image.hpp"
#include "frugal/compression/payload.hpp"
#include "frugal/dtype.hpp"
#include "frugal/error.hpp"
#include "lazy_require.hpp"
#include "state_binding.hpp"

namespace frugal {

namespace {

constexpr std::uint32_t kMagic = 0x53415246;  // "FRAS"
// 2: the layout records op and k. 3: and the segments' digest, behind a flag byte (0: not
// known yet, an older image not bound since its restore). 4: and the gTop-k flag, behind its
// own flag byte likewise. Versions 1 to 3 are still read.
constexpr std::uint8_t kVersion = 4;

}  // namespace

AllreduceState::AllreduceState(float decay) : decay_(decay) {
  require(decay >= 0.0f && decay <= 1.0f, "decay", "must be in [0, 1]");
}

std::span<const float> AllreduceState::worker_residual() const noexcept {
  return worker_ ? worker_->residual() : std::span<const float>();
}

std::span<const float> AllreduceState::server_residual() const noexcept {
  return server_ ? server_->residual() : std::span<const float>();
}

void AllreduceState::reset() noexcept {
  layout_.reset();
  worker_.reset();
  server_.reset();
}

void AllreduceState::scale_residuals(float factor) {
  require(std::isfinite(factor) && factor >= 0.0f, "factor",
          [&] { return "must be finite and >= 0, got " + std::to_string(factor); });
  if (worker_) worker_->scale(factor);
  if (server_) server_->scale(factor);
}

std::vector<std::byte> AllreduceState::save() const {
  detail::ImageWriter w;
  w.put(kMagic);
  w.put(kVersion);
  w.put(decay_);
  w.put(steps_);
  w.put<std::uint8_t>(layout_ ? 1 : 0);
  if (layout_) {
    w.put(layout_->count);
    w.put(layout_->ranks);
    w.put(layout_->rank);
    w.put(layout_->method);
    w.put(layout_->feedback);
    w.put(layout_->op);
    w.put(layout_->k);
    // 0 keeps an old image's "not recorded" until its first allreduce.
    w.put(layout_->segments_recorded);
    w.put(layout_->segments);
    w.put(layout_->gtopk_recorded);
    w.put(layout_->gtopk);
  }
  w.put<std::uint8_t>(worker_ ? 1 : 0);
  if (worker_) {
    w.put<std::uint64_t>(worker_->size());
    w.put_blob(worker_->save());
  }
  w.put<std::uint8_t>(server_ ? 1 : 0);
  if (server_) {
    w.put<std::uint64_t>(server_->size());
    w.put_blob(server_->save());
  }
  return w.take();
}

void AllreduceState::restore(std::span<const std::byte> image) {
  detail::ImageReader r(image, "AllreduceState");
  if (r.get<std::uint32_t>() != kMagic) {
    r.malformed("not a frugal state image");
  }
  const auto version = r.get<std::uint8_t>();
  if (version < 1 || version > kVersion) {
    r.malformed("version " + std::to_string(version) + ", this libfrugal reads versions 1 to " +
                std::to_string(kVersion));
  }
  const auto decay = r.get<float>();
  if (!(decay >= 0.0f && decay <= 1.0f)) {
    r.malformed("decay out of range");
  }
  const auto steps = r.get<std::uint64_t>();
  std::optional<Layout> layout;
  if (r.get<std::uint8_t>() != 0) {
    Layout l;
    l.count = r.get<std::uint64_t>();
    l.ranks = r.get<std::int32_t>();
    l.rank = r.get<std::int32_t>();
    l.method = r.get<std::uint8_t>();
    l.feedback = r.get<std::uint8_t>();
    if (version >= 2) {
      l.op = r.get<std::uint8_t>();
      l.k = r.get<std::uint64_t>();
      // Op 0 with k 0 is a version-1 layout saved again before its first allreduce: still not
      // recorded, supplied by that allreduce as when it was restored from version 1.
      if (l.op == 0 && l.k != 0) {
        r.malformed("no op in the layout");
      }
    }
    if (version >= 3) {
      l.segments_recorded = r.get<std::uint8_t>();
      if (l.segments_recorded > 1) {
        r.malformed("bad segments flag");
      }
      l.segments = r.get<std::uint64_t>();
    } else {
      l.segments_recorded = 0;
    }
    if (version >= 4) {
      l.gtopk_recorded = r.get<std::uint8_t>();
      l.gtopk = r.get<std::uint8_t>();
      if (l.gtopk_recorded > 1 || l.gtopk > 1) {
        r.malformed("bad gtopk flag");
      }
    } else {
      l.gtopk_recorded = 0;
    }
    layout = l;
  }
  auto residual = [&]() -> std::optional<compression::ErrorFeedback> {
    if (r.get<std::uint8_t>() == 0) return std::nullopt;
    const auto size = r.get<std::uint64_t>();
    const std::span<const std::byte> blob = r.get_blob();
    if (size > blob.size() / sizeof(float)) {
      r.malformed("bad residual size");
    }
    std::optional<compression::ErrorFeedback> feedback(std::in_place, size, decay);
    feedback->restore(blob);
    return feedback;
  };
  std::optional<compression::ErrorFeedback> worker = residual();
  std::optional<compression::ErrorFeedback> server = residual();
  if (!r.done()) r.malformed("trailing bytes");
  decay_ = decay;
  steps_ = steps;
  layout_ = layout;
  worker_ = std::move(worker);
  server_ = std::move(server);
}

namespace detail {

namespace {

std::string method_name(std::uint8_t method) {
  return std::string(compression::to_string(static_cast<compression::Method>(method)));
}

std::string op_name(std::uint8_t op) {
  return std::string(to_string(static_cast<ReduceOp>(op)));
}

// "op sum -> average, k 50 -> 100": every field in which `now` differs from `was`.
std::string layout_changes(const AllreduceState::Layout& was, const AllreduceState::Layout& now) {
  std::string out;
  const auto add = [&](const char* field, const std::string& a, const std::string& b) {
    if (a == b) return;
    out += (out.empty() ? "" : ", ") + std::string(field) + " " + a + " -> " + b;
  };
  add("count", std::to_string(was.count), std::to_string(now.count));
  add("ranks", std::to_string(was.ranks), std::to_string(now.ranks));
  add("rank", std::to_string(was.rank), std::to_string(now.rank));
  add("method", method_name(was.method), method_name(now.method));
  add("error feedback", was.feedback != 0 ? "on" : "off", now.feedback != 0 ? "on" : "off");
  if (was.op != 0) add("op", op_name(was.op), op_name(now.op));
  if (was.op != 0) add("k", std::to_string(was.k), std::to_string(now.k));
  const auto segments = [](std::uint64_t digest) {
    return digest == 0 ? std::string("one tensor") : "digest " + std::to_string(digest);
  };
  if (was.segments_recorded != 0) add("segments", segments(was.segments), segments(now.segments));
  if (was.gtopk_recorded != 0) {
    add("gtopk", was.gtopk != 0 ? "on" : "off", now.gtopk != 0 ? "on" : "off");
  }
  return out;
}

}  // namespace

void StateBinding::bind(AllreduceState& state, const AllreduceState::Layout& layout,
                        std::size_t worker_size, std::size_t server_size) {
  if (state.layout_) {
    AllreduceState::Layout& bound = *state.layout_;
    // A version-1 image recorded neither op nor k, a version-2 image no segments, a version-3
    // image no gTop-k flag: the first call after its restore supplies them, as long as
    // everything that image did record matches.
    if (bound.op == 0 || bound.segments_recorded == 0 || bound.gtopk_recorded == 0) {
      AllreduceState::Layout adopted = bound;
      if (adopted.op == 0) {
        adopted.op = layout.op;
        adopted.k = layout.k;
      }
      if (adopted.segments_recorded == 0) {
        adopted.segments = layout.segments;
        adopted.segments_recorded = 1;
      }
      if (adopted.gtopk_recorded == 0) {
        adopted.gtopk = layout.gtopk;
        adopted.gtopk_recorded = 1;
      }
      if (adopted == layout) bound = adopted;
    }
    if (bound != layout) {
      throw Error(ErrorCode::Mismatch,
                  "AllreduceState was bound to a buffer of " + std::to_string(bound.count) +
                      " elements on " + std::to_string(bound.ranks) + " ranks with method " +
                      method_name(bound.method) + "; this call changes " +
                      layout_changes(bound, layout) +
                      " (its residuals mean nothing there: one state per buffer; reset() to "
                      "reuse)");
    }
    return;
  }
  state.layout_ = layout;
  state.worker_.reset();
  state.server_.reset();
  if (worker_size > 0) state.worker_.emplace(worker_size, state.decay_);
  if (server_size > 0) state.server_.emplace(server_size, state.decay_);
}

}  // namespace detail

}  // namespace frugal
