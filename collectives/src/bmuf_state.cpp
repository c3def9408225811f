// Bmuf's checkpoint image: everything restore_state needs to continue the filter exactly, with
// enough of the options and layout to refuse an image written for another run.
#include <cmath>
#include <cstring>

#include "bmuf_terms.hpp"
#include "frugal/collectives/bmuf.hpp"
#include "frugal/error.hpp"
#include "lazy_require.hpp"

namespace frugal {

namespace {

constexpr std::uint32_t kMagic = 0x46554d42;  // "BMUF"
constexpr std::uint32_t kVersion = 1;

template <typename T>
void put(std::vector<std::byte>& out, T value) {
  const std::size_t at = out.size();
  out.resize(at + sizeof value);
  std::memcpy(out.data() + at, &value, sizeof value);
}

void put_floats(std::vector<std::byte>& out, std::span<const float> values) {
  const auto bytes = std::as_bytes(values);
  out.insert(out.end(), bytes.begin(), bytes.end());
}

void malformed(const std::string& why) {
  throw Error(ErrorCode::InvalidArgument, "Bmuf state image: " + why);
}

template <typename T>
T take(std::span<const std::byte>& in) {
  if (in.size() < sizeof(T)) malformed("truncated");
  T value;
  std::memcpy(&value, in.data(), sizeof value);
  in = in.subspan(sizeof value);
  return value;
}

std::vector<float> take_floats(std::span<const std::byte>& in, std::size_t count,
                               const char* what) {
  if (in.size() / sizeof(float) < count) malformed("truncated");
  std::vector<float> values(count);
  std::memcpy(values.data(), in.data(), count * sizeof(float));
  in = in.subspan(count * sizeof(float));
  for (float v : values) {
    if (!std::isfinite(v)) malformed(std::string(what) + " holds a non-finite value");
  }
  return values;
}

}  // namespace

std::vector<std::byte> Bmuf::save_state() const {
  std::vector<std::byte> out;
  put(out, kMagic);
  put(out, kVersion);
  put<std::uint64_t>(out, options_.block_steps);
  put(out, options_.block_momentum);
  put(out, options_.block_lr);
  put<std::uint8_t>(out, options_.nesterov ? 1 : 0);
  put<std::int32_t>(out, comm_.size());
  put(out, layout_key_);
  put<std::uint64_t>(out, global_.size());
  put(out, blocks_);
  put(out, skipped_blocks_);
  put<std::uint64_t>(out, steps_in_block_);
  put(out, bytes_sent_);
  put_floats(out, global_);
  put_floats(out, momentum_);
  const std::vector<std::byte> ef = state_.save();
  put<std::uint64_t>(out, ef.size());
  out.insert(out.end(), ef.begin(), ef.end());
  return out;
}

void Bmuf::restore_state(std::span<const std::byte> image) {
  std::span<const std::byte> in = image;
  if (take<std::uint32_t>(in) != kMagic) malformed("not a Bmuf state (bad magic)");
  const auto version = take<std::uint32_t>(in);
  if (version != kVersion) malformed("unknown version " + std::to_string(version));
  const auto written_for = [](const char* what, const std::string& theirs,
                              const std::string& ours) {
    require(false, "image", [&] {
      return std::string("the Bmuf state was written with ") + what + " " + theirs +
             ", this one has " + ours;
    });
  };
  const auto block_steps = take<std::uint64_t>(in);
  if (block_steps != options_.block_steps) {
    written_for("block_steps", std::to_string(block_steps), std::to_string(options_.block_steps));
  }
  const auto eta = take<double>(in);
  if (eta != options_.block_momentum) {
    written_for("block_momentum", std::to_string(eta), std::to_string(options_.block_momentum));
  }
  const auto zeta = take<double>(in);
  if (zeta != options_.block_lr) {
    written_for("block_lr", std::to_string(zeta), std::to_string(options_.block_lr));
  }
  const auto nesterov = take<std::uint8_t>(in);
  if (nesterov > 1 || (nesterov == 1) != options_.nesterov) {
    written_for("nesterov", std::to_string(nesterov), options_.nesterov ? "1" : "0");
  }
  const auto ranks = take<std::int32_t>(in);
  if (ranks != comm_.size()) {
    written_for("ranks", std::to_string(ranks), std::to_string(comm_.size()));
  }
  if (take<std::uint64_t>(in) != layout_key_) {
    written_for("tensors", "of other names or sizes", "different ones");
  }
  const auto count = take<std::uint64_t>(in);
  if (count != global_.size()) {
    written_for("element count", std::to_string(count), std::to_string(global_.size()));
  }
  const auto blocks = take<std::uint64_t>(in);
  const auto skipped = take<std::uint64_t>(in);
  const auto steps_in_block = take<std::uint64_t>(in);
  if (steps_in_block >= options_.block_steps) malformed("step within the block out of range");
  const auto bytes_sent = take<std::uint64_t>(in);
  std::vector<float> global = take_floats(in, global_.size(), "W");
  std::vector<float> momentum = take_floats(in, global_.size(), "Δ");
  const auto ef_size = take<std::uint64_t>(in);
  if (ef_size != in.size()) malformed("error-feedback image size does not match the rest");
  AllreduceState state(state_.decay());
  state.restore(in);

  // Nothing throws past this point: the state changes all at once.
  global_ = std::move(global);
  momentum_ = std::move(momentum);
  const auto eta_f = static_cast<float>(options_.block_momentum);
  for (std::size_t i = 0; i < global_.size(); ++i) {
    start_[i] = options_.nesterov ? global_[i] + eta_f * momentum_[i] : global_[i];
  }
  state_ = std::move(state);
  blocks_ = blocks;
  skipped_blocks_ = skipped;
  steps_in_block_ = static_cast<std::size_t>(steps_in_block);
  bytes_sent_ = bytes_sent;
  last_skipped_ = false;
}

}  // namespace frugal
