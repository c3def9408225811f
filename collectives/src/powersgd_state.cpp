// PowerSgdState: the per-tensor Q's and residuals, the layout they belong to, and the checkpoint
// image.

#include <cmath>
#include <cstring>
#include <string>

#include "byte_image.hpp"
#include "fnv1a.hpp"
#include "frugal/collectives/powersgd.hpp"
#include "frugal/error.hpp"
#include "lazy_require.hpp"
#include "powersgd_binding.hpp"

namespace frugal {

namespace {

constexpr std::uint32_t kMagic = 0x53505246;  // "FRPS"
constexpr std::uint8_t kVersion = 1;

// FNV-1a over the image: restore() must refuse a flipped bit in a residual, which no structural
// check would see.
std::uint64_t checksum(std::span<const std::byte> bytes) noexcept {
  return detail::Fnv1a().add(bytes.data(), bytes.size()).value();
}

[[noreturn]] void malformed(const std::string& why) {
  throw Error(ErrorCode::InvalidArgument, "PowerSgdState image: " + why);
}

// A count of floats, which must be `expected` for the layout, and the floats.
std::vector<float> get_counted_floats(detail::ImageReader& r, std::uint64_t expected,
                                      const char* what) {
  const auto count = r.get<std::uint64_t>();
  if (count != expected) {
    r.malformed(std::string(what) + " of " + std::to_string(count) +
                " floats where the layout has " + std::to_string(expected));
  }
  return r.get_floats(count, what);
}

std::string shape_text(const std::vector<std::uint64_t>& shapes) {
  std::string out;
  for (std::size_t t = 0; t + 1 < shapes.size(); t += 2) {
    out +=
        (out.empty() ? "" : ", ") + std::to_string(shapes[t]) + "x" + std::to_string(shapes[t + 1]);
  }
  return "[" + out + "]";
}

}  // namespace

std::span<const float> PowerSgdState::q(std::size_t index) const {
  require(index < q_.size(), "index", [&] {
    return std::to_string(index) + " is beyond the " + std::to_string(q_.size()) +
           " tensors of the state's layout";
  });
  return q_[index];
}

std::span<const float> PowerSgdState::residual(std::size_t index) const {
  require(index < residual_.size(), "index", [&] {
    return std::to_string(index) + " is beyond the " + std::to_string(residual_.size()) +
           " tensors of the state's layout";
  });
  return residual_[index];
}

void PowerSgdState::reset() noexcept {
  layout_.reset();
  q_.clear();
  residual_.clear();
}

std::vector<std::byte> PowerSgdState::save() const {
  detail::ImageWriter w;
  w.put(kMagic);
  w.put(kVersion);
  w.put(steps_);
  w.put<std::uint8_t>(layout_ ? 1 : 0);
  if (layout_) {
    w.put<std::uint64_t>(layout_->shapes.size() / 2);
    for (const std::uint64_t s : layout_->shapes) w.put(s);
    w.put(layout_->ranks);
    w.put(layout_->rank);
    w.put(layout_->approximation_rank);
    w.put(layout_->op);
    w.put(layout_->feedback);
    w.put(layout_->min_compression_rate);
    for (std::size_t t = 0; t < q_.size(); ++t) {
      for (const std::vector<float>* values : {&q_[t], &residual_[t]}) {
        w.put<std::uint64_t>(values->size());
        w.put_floats(*values);
      }
    }
  }
  w.put(checksum(w.bytes()));
  return w.take();
}

void PowerSgdState::restore(std::span<const std::byte> image) {
  if (image.size() < sizeof(std::uint64_t)) malformed("truncated");
  const std::span<const std::byte> body = image.first(image.size() - sizeof(std::uint64_t));
  detail::ImageReader r(body, "PowerSgdState");
  if (r.get<std::uint32_t>() != kMagic) malformed("not a PowerSGD state image");
  const auto version = r.get<std::uint8_t>();
  if (version != kVersion) {
    malformed("version " + std::to_string(version) + ", this libfrugal reads version " +
              std::to_string(kVersion));
  }
  std::uint64_t stored_sum = 0;
  std::memcpy(&stored_sum, image.data() + body.size(), sizeof stored_sum);
  if (stored_sum != checksum(body)) malformed("checksum mismatch (corrupted)");
  const auto steps = r.get<std::uint64_t>();
  std::optional<Layout> layout;
  std::vector<std::vector<float>> q, residual;
  const auto has_layout = r.get<std::uint8_t>();
  if (has_layout > 1) malformed("bad layout flag");
  if (has_layout == 1) {
    Layout l;
    const auto tensors = r.get<std::uint64_t>();
    // Each tensor takes at least its shape and two counts: bounds the allocation below.
    if (tensors > image.size() / 32) malformed("tensor count " + std::to_string(tensors));
    l.shapes.resize(2 * tensors);
    for (std::uint64_t& s : l.shapes) s = r.get<std::uint64_t>();
    l.ranks = r.get<std::int32_t>();
    l.rank = r.get<std::int32_t>();
    l.approximation_rank = r.get<std::int32_t>();
    l.op = r.get<std::uint8_t>();
    l.feedback = r.get<std::uint8_t>();
    l.min_compression_rate = r.get<double>();
    if (l.ranks < 1 || l.rank < 0 || l.rank >= l.ranks) malformed("bad rank or ranks");
    if (l.approximation_rank < 1) malformed("bad approximation rank");
    if (l.op != static_cast<std::uint8_t>(ReduceOp::Sum) &&
        l.op != static_cast<std::uint8_t>(ReduceOp::Average)) {
      malformed("bad op");
    }
    if (l.feedback > 1) malformed("bad error-feedback flag");
    if (!std::isfinite(l.min_compression_rate) || l.min_compression_rate < 1.0) {
      malformed("bad min_compression_rate");
    }
    for (std::uint64_t t = 0; t < tensors; ++t) {
      const std::uint64_t rows = l.shapes[2 * t], cols = l.shapes[2 * t + 1];
      const bool compressed =
          detail::powersgd_compresses(rows, cols, l.approximation_rank, l.min_compression_rate);
      const auto r_cols = static_cast<std::uint64_t>(l.approximation_rank) * cols;
      // rows * cols can only overflow in a forged image; such sizes fail the float count.
      q.push_back(get_counted_floats(r, compressed ? r_cols : 0, "a Q"));
      residual.push_back(
          get_counted_floats(r, compressed && l.feedback != 0 ? rows * cols : 0, "a residual"));
    }
    layout = std::move(l);
  }
  if (!r.done()) malformed("trailing bytes");
  steps_ = steps;
  layout_ = std::move(layout);
  q_ = std::move(q);
  residual_ = std::move(residual);
}

namespace detail {

bool powersgd_compresses(std::size_t rows, std::size_t cols, int r, double min_compression_rate) {
  if (rows < 2 || cols < 2) return false;  // 1-D: nothing to factor
  const double dense = static_cast<double>(rows) * static_cast<double>(cols);
  const double factors = (static_cast<double>(rows) + static_cast<double>(cols)) * r;
  return factors * min_compression_rate < dense;
}

std::string PowerSgdBinding::changes(const PowerSgdState& state, const PowerSgdState::Layout& now) {
  if (!state.layout_ || *state.layout_ == now) return {};
  const PowerSgdState::Layout& was = *state.layout_;
  std::string out;
  const auto add = [&](const char* field, const std::string& a, const std::string& b) {
    if (a != b) out += (out.empty() ? "" : ", ") + std::string(field) + " " + a + " -> " + b;
  };
  add("shapes", shape_text(was.shapes), shape_text(now.shapes));
  add("ranks", std::to_string(was.ranks), std::to_string(now.ranks));
  add("this rank", std::to_string(was.rank), std::to_string(now.rank));
  add("rank r", std::to_string(was.approximation_rank), std::to_string(now.approximation_rank));
  add("op", std::string(to_string(static_cast<ReduceOp>(was.op))),
      std::string(to_string(static_cast<ReduceOp>(now.op))));
  add("error feedback", was.feedback != 0 ? "on" : "off", now.feedback != 0 ? "on" : "off");
  add("min_compression_rate", std::to_string(was.min_compression_rate),
      std::to_string(now.min_compression_rate));
  return out;
}

void PowerSgdBinding::bind(PowerSgdState& state, const PowerSgdState::Layout& layout,
                           std::uint64_t seed) {
  const std::size_t tensors = layout.shapes.size() / 2;
  std::vector<std::vector<float>> q(tensors), residual(tensors);
  const auto r = static_cast<std::size_t>(layout.approximation_rank);
  for (std::size_t t = 0; t < tensors; ++t) {
    const std::size_t rows = layout.shapes[2 * t], cols = layout.shapes[2 * t + 1];
    if (!powersgd_compresses(rows, cols, layout.approximation_rank, layout.min_compression_rate)) {
      continue;
    }
    q[t].resize(r * cols);
    for (std::size_t c = 0; c < r; ++c) {
      powersgd_initial_q(seed, t, 0, c, std::span<float>(q[t]).subspan(c * cols, cols));
    }
    if (layout.feedback != 0) residual[t].assign(rows * cols, 0.0f);
  }
  state.layout_ = layout;
  state.q_ = std::move(q);
  state.residual_ = std::move(residual);
}

}  // namespace detail

}  // namespace frugal
