#include "frugal/collectives/allreduce_state.hpp"

#include <cstring>
#include <string>

#include "frugal/error.hpp"
#include "state_binding.hpp"

namespace frugal {

namespace {

constexpr std::uint32_t kMagic = 0x53415246;  // "FRAS"
constexpr std::uint8_t kVersion = 1;

class Writer {
 public:
  template <typename T>
  void put(T value) {
    const std::size_t at = bytes_.size();
    bytes_.resize(at + sizeof value);
    std::memcpy(bytes_.data() + at, &value, sizeof value);
  }
  void put_blob(const std::vector<std::byte>& blob) {
    put<std::uint64_t>(blob.size());
    bytes_.insert(bytes_.end(), blob.begin(), blob.end());
  }
  std::vector<std::byte> take() { return std::move(bytes_); }

 private:
  std::vector<std::byte> bytes_;
};

class Reader {
 public:
  explicit Reader(std::span<const std::byte> bytes) : bytes_(bytes) {}
  template <typename T>
  T get() {
    need(sizeof(T));
    T value;
    std::memcpy(&value, bytes_.data() + at_, sizeof value);
    at_ += sizeof value;
    return value;
  }
  std::span<const std::byte> get_blob() {
    const auto size = get<std::uint64_t>();
    need(size);
    const std::span<const std::byte> blob = bytes_.subspan(at_, size);
    at_ += size;
    return blob;
  }
  bool done() const noexcept { return at_ == bytes_.size(); }

 private:
  void need(std::uint64_t size) const {
    if (size > bytes_.size() - at_) {
      throw Error(ErrorCode::InvalidArgument, "AllreduceState image: truncated");
    }
  }
  std::span<const std::byte> bytes_;
  std::size_t at_ = 0;
};

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

std::vector<std::byte> AllreduceState::save() const {
  Writer w;
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
  Reader r(image);
  if (r.get<std::uint32_t>() != kMagic || r.get<std::uint8_t>() != kVersion) {
    throw Error(ErrorCode::InvalidArgument, "AllreduceState image: not a frugal state image");
  }
  const auto decay = r.get<float>();
  if (!(decay >= 0.0f && decay <= 1.0f)) {
    throw Error(ErrorCode::InvalidArgument, "AllreduceState image: decay out of range");
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
    layout = l;
  }
  auto residual = [&]() -> std::optional<compression::ErrorFeedback> {
    if (r.get<std::uint8_t>() == 0) return std::nullopt;
    const auto size = r.get<std::uint64_t>();
    const std::span<const std::byte> blob = r.get_blob();
    if (size > blob.size() / sizeof(float)) {
      throw Error(ErrorCode::InvalidArgument, "AllreduceState image: bad residual size");
    }
    std::optional<compression::ErrorFeedback> feedback(std::in_place, size, decay);
    feedback->restore(blob);
    return feedback;
  };
  std::optional<compression::ErrorFeedback> worker = residual();
  std::optional<compression::ErrorFeedback> server = residual();
  if (!r.done()) throw Error(ErrorCode::InvalidArgument, "AllreduceState image: trailing bytes");
  decay_ = decay;
  steps_ = steps;
  layout_ = layout;
  worker_ = std::move(worker);
  server_ = std::move(server);
}

namespace detail {

void StateBinding::bind(AllreduceState& state, const AllreduceState::Layout& layout,
                        std::size_t worker_size, std::size_t server_size) {
  if (state.layout_) {
    if (*state.layout_ != layout) {
      throw Error(
          ErrorCode::Mismatch,
          "AllreduceState was used for a buffer of " + std::to_string(state.layout_->count) +
              " elements on " + std::to_string(state.layout_->ranks) + " ranks with method " +
              std::to_string(state.layout_->method) + "; now " + std::to_string(layout.count) +
              " elements on " + std::to_string(layout.ranks) + " ranks with method " +
              std::to_string(layout.method) +
              (state.layout_->feedback != layout.feedback ? " (error feedback switched)" : "") +
              " (one state per buffer; reset() to reuse)");
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
