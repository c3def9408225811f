// Bmuf's checkpoint image: everything restore_state needs to continue the filter exactly, with
// enough of the options and layout to refuse an image written for another run.
#include <cmath>
#include <cstring>

#include "bmuf_terms.hpp"
#include "byte_image.hpp"
#include "frugal/collectives/bmuf.hpp"
#include "frugal/error.hpp"
#include "lazy_require.hpp"

namespace frugal {

namespace {

constexpr std::uint32_t kMagic = 0x46554d42;  // "BMUF"
constexpr std::uint32_t kVersion = 1;

}  // namespace

std::vector<std::byte> Bmuf::save_state() const {
  detail::ImageWriter w;
  w.put(kMagic);
  w.put(kVersion);
  w.put<std::uint64_t>(options_.block_steps);
  w.put(options_.block_momentum);
  w.put(options_.block_lr);
  w.put<std::uint8_t>(options_.nesterov ? 1 : 0);
  w.put<std::int32_t>(comm_.size());
  w.put(layout_key_);
  w.put<std::uint64_t>(global_.size());
  w.put(blocks_);
  w.put(skipped_blocks_);
  w.put<std::uint64_t>(steps_in_block_);
  w.put(bytes_sent_);
  w.put_floats(global_);
  w.put_floats(momentum_);
  w.put_blob(state_.save());
  return w.take();
}

void Bmuf::restore_state(std::span<const std::byte> image) {
  detail::ImageReader in(image, "Bmuf state");
  const auto malformed = [&](const std::string& why) { in.malformed(why); };
  if (in.get<std::uint32_t>() != kMagic) malformed("not a Bmuf state (bad magic)");
  const auto version = in.get<std::uint32_t>();
  if (version != kVersion) malformed("unknown version " + std::to_string(version));
  const auto written_for = [](const char* what, const std::string& theirs,
                              const std::string& ours) {
    require(false, "image", [&] {
      return std::string("the Bmuf state was written with ") + what + " " + theirs +
             ", this one has " + ours;
    });
  };
  const auto block_steps = in.get<std::uint64_t>();
  if (block_steps != options_.block_steps) {
    written_for("block_steps", std::to_string(block_steps), std::to_string(options_.block_steps));
  }
  const auto eta = in.get<double>();
  if (eta != options_.block_momentum) {
    written_for("block_momentum", std::to_string(eta), std::to_string(options_.block_momentum));
  }
  const auto zeta = in.get<double>();
  if (zeta != options_.block_lr) {
    written_for("block_lr", std::to_string(zeta), std::to_string(options_.block_lr));
  }
  const auto nesterov = in.get<std::uint8_t>();
  if (nesterov > 1 || (nesterov == 1) != options_.nesterov) {
    written_for("nesterov", std::to_string(nesterov), options_.nesterov ? "1" : "0");
  }
  const auto ranks = in.get<std::int32_t>();
  if (ranks != comm_.size()) {
    written_for("ranks", std::to_string(ranks), std::to_string(comm_.size()));
  }
  if (in.get<std::uint64_t>() != layout_key_) {
    written_for("tensors", "of other names or sizes", "different ones");
  }
  const auto count = in.get<std::uint64_t>();
  if (count != global_.size()) {
    written_for("element count", std::to_string(count), std::to_string(global_.size()));
  }
  const auto blocks = in.get<std::uint64_t>();
  const auto skipped = in.get<std::uint64_t>();
  const auto steps_in_block = in.get<std::uint64_t>();
  if (steps_in_block >= options_.block_steps) malformed("step within the block out of range");
  const auto bytes_sent = in.get<std::uint64_t>();
  std::vector<float> global = in.get_floats(global_.size(), "W");
  std::vector<float> momentum = in.get_floats(global_.size(), "Δ");
  const auto ef_size = in.get<std::uint64_t>();
  if (ef_size != in.rest().size()) malformed("error-feedback image size does not match the rest");
  AllreduceState state(state_.decay());
  state.restore(in.rest());

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
