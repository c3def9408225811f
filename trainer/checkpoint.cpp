#include "checkpoint.hpp"

#include <ATen/core/Generator.h>

#include <cstring>
#include <fstream>
#include <mutex>
#include <sstream>

#include "atomic_file.hpp"
#include "frugal/error.hpp"

namespace frugal::train {

namespace {

namespace fs = std::filesystem;

constexpr std::int64_t kFormatVersion = 1;

[[noreturn]] void bad(const fs::path& path, const std::string& why) {
  throw Error(ErrorCode::InvalidArgument, "checkpoint '" + path.string() + "': " + why);
}

// "t12": appended, not "t" + to_string (GCC 12 -Wrestrict false positive on that operator+).
std::string key(char prefix, std::size_t index) {
  std::string k(1, prefix);
  return k.append(std::to_string(index));
}

torch::Tensor int_tensor(std::int64_t value) {
  return torch::tensor({value}, torch::kInt64);
}

std::int64_t read_int(torch::serialize::InputArchive& archive, const std::string& key) {
  torch::Tensor t;
  archive.read(key, t, /*is_buffer=*/true);
  return t.item<std::int64_t>();
}

// Tensors are stored under positional keys (archive keys must not contain '.'), with the names
// joined in one string so that a checkpoint of another model is recognised.
std::string joined_names(const std::vector<std::pair<std::string, torch::Tensor>>& items) {
  std::string names;
  for (const auto& [name, tensor] : items) {
    names += name;
    for (std::int64_t d : tensor.sizes()) names.append(1, ':').append(std::to_string(d));
    names += '\n';
  }
  return names;
}

std::vector<std::pair<std::string, torch::Tensor>> state_of(torch::nn::Module& model) {
  std::vector<std::pair<std::string, torch::Tensor>> items;
  for (const auto& item : model.named_parameters()) items.emplace_back(item.key(), item.value());
  for (const auto& item : model.named_buffers()) items.emplace_back(item.key(), item.value());
  return items;
}

const char* momentum_kind(bool local) {
  return local ? "local" : "global";
}

// Runs `read` over an archive of `path`: frugal::Errors pass, anything LibTorch throws becomes
// InvalidArgument naming the file.
template <typename Read>
void reading(const fs::path& path, Read&& read) {
  try {
    read();
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    // LibTorch's messages carry a backtrace after the first line.
    const std::string what = e.what();
    bad(path, "unreadable (truncated or corrupt?): " + what.substr(0, what.find('\n')));
  }
}

}  // namespace

fs::path checkpoint_path(const fs::path& dir, std::int64_t epochs_done, int rank) {
  return dir / ("ckpt-e" + std::to_string(epochs_done) + ".rank" + std::to_string(rank) + ".pt");
}

void save_checkpoint(const fs::path& path, const CheckpointMeta& meta, torch::nn::Module& model,
                     const Sgd& sgd, const std::vector<std::byte>& ef) {
  torch::serialize::OutputArchive archive;
  archive.write("version", int_tensor(kFormatVersion), true);
  archive.write("epochs_done", int_tensor(meta.epochs_done), true);
  archive.write("step", int_tensor(meta.step), true);
  archive.write("seed", int_tensor(static_cast<std::int64_t>(meta.seed)), true);
  archive.write("world_size", int_tensor(meta.world_size), true);
  archive.write("model", c10::IValue(meta.model));
  archive.write("momentum", c10::IValue(std::string(momentum_kind(meta.local_momentum))));
  archive.write("sync", c10::IValue(std::string(meta.bmuf ? "bmuf" : "sync")));
  archive.write("exchange", c10::IValue(std::string(meta.powersgd ? "powersgd" : "buckets")));
  const auto items = state_of(model);
  archive.write("names", c10::IValue(joined_names(items)));
  for (std::size_t i = 0; i < items.size(); ++i) {
    archive.write(key('t', i), items[i].second.detach(), true);
  }
  const auto& sgd_params = sgd.params();
  for (std::size_t i = 0; i < sgd_params.size(); ++i) {
    const torch::Tensor& m = sgd.momentum()[i];
    if (m.defined()) archive.write(key('m', i), m, true);
  }
  archive.write("ef",
                torch::from_blob(const_cast<std::byte*>(ef.data()),
                                 {static_cast<std::int64_t>(ef.size())}, torch::kUInt8)
                    .clone(),
                true);
  {
    auto generator = at::detail::getDefaultCPUGenerator();
    std::lock_guard<std::mutex> lock(generator.mutex());
    archive.write("rng", generator.get_state(), true);
  }
  std::ostringstream stream;
  archive.save_to(stream);
  const std::string bytes = stream.str();
  write_file_atomically(path, std::as_bytes(std::span(bytes.data(), bytes.size())),
                        "checkpoint-write");
}

void commit_checkpoint(const fs::path& dir, std::int64_t epochs_done) {
  const std::string text = std::to_string(epochs_done) + "\n";
  write_file_atomically(dir / "latest", std::as_bytes(std::span(text.data(), text.size())),
                        "latest-write");
}

std::optional<std::int64_t> latest_checkpoint(const fs::path& dir) {
  const fs::path path = dir / "latest";
  if (!fs::exists(path)) return std::nullopt;
  std::ifstream in(path);
  std::int64_t epoch = -1;
  std::string rest;
  if (!(in >> epoch) || epoch < 0 || (in >> rest))
    bad(path, "malformed (expected an epoch number)");
  return epoch;
}

namespace {

// Opens `path` into `archive` (over `bytes`, which must outlive it) and reads and checks its
// meta against `expected` (load_checkpoint's rules) and its error-feedback image.
CheckpointMeta read_meta(const fs::path& path, const CheckpointMeta& expected,
                         std::vector<std::byte>& bytes, torch::serialize::InputArchive& archive,
                         std::vector<std::byte>& ef, bool any_world_size) {
  if (!fs::exists(path)) bad(path, "missing");
  bytes = read_file(path);
  CheckpointMeta meta;
  reading(path, [&] {
    archive.load_from(reinterpret_cast<const char*>(bytes.data()), bytes.size());
    if (read_int(archive, "version") != kFormatVersion) bad(path, "unknown format version");
    meta.epochs_done = read_int(archive, "epochs_done");
    meta.step = read_int(archive, "step");
    meta.seed = static_cast<std::uint64_t>(read_int(archive, "seed"));
    meta.world_size = read_int(archive, "world_size");
    c10::IValue value;
    archive.read("model", value);
    meta.model = value.toStringRef();
    if (meta.model != expected.model) {
      bad(path, "holds model '" + meta.model + "', this run trains '" + expected.model + "'");
    }
    if (meta.world_size < 1) bad(path, "malformed world size");
    if (meta.world_size != expected.world_size && !any_world_size) {
      bad(path, "written by " + std::to_string(meta.world_size) + " ranks, this run has " +
                    std::to_string(expected.world_size));
    }
    if (meta.seed != expected.seed) {
      bad(path, "written with --seed " + std::to_string(meta.seed) + ", this run has " +
                    std::to_string(expected.seed));
    }
    // Before the momentum kind: a --sync bmuf run's buffers are rank-local too, and its "ef"
    // image is the filter state, which a gradient sync cannot take (nor the other way round).
    meta.bmuf = archive.try_read("sync", value) && value.toStringRef() == "bmuf";
    if (meta.bmuf != expected.bmuf) {
      bad(path, std::string("written by a --sync ") + (meta.bmuf ? "bmuf" : "sync") +
                    " run, this run is --sync " + (expected.bmuf ? "bmuf" : "sync") +
                    " (--sync must match the run being resumed)");
    }
    meta.local_momentum = archive.try_read("momentum", value) && value.toStringRef() == "local";
    if (meta.local_momentum != expected.local_momentum) {
      bad(path, "holds " + std::string(momentum_kind(meta.local_momentum)) +
                    " momentum buffers, this run keeps " + momentum_kind(expected.local_momentum) +
                    " ones (momentum correction must match the run being resumed: it is on by "
                    "default for --compress onebit and topk; --momentum-correction or "
                    "--no-momentum-correction says which)");
    }
    meta.powersgd = archive.try_read("exchange", value) && value.toStringRef() == "powersgd";
    if (meta.powersgd != expected.powersgd) {
      bad(path, std::string("holds ") + (meta.powersgd ? "PowerSGD" : "bucketed allreduce") +
                    " error-feedback state, this run uses " +
                    (expected.powersgd ? "PowerSGD" : "bucketed allreduce") +
                    " (--compress powersgd must match the run being resumed)");
    }
    torch::Tensor ef_tensor;
    archive.read("ef", ef_tensor, true);
    ef.resize(static_cast<std::size_t>(ef_tensor.numel()));
    std::memcpy(ef.data(), ef_tensor.data_ptr(), ef.size());
  });
  return meta;
}

// The momentum buffers in `archive`, one per parameter of `sgd` (undefined where the file has
// none), each checked against its parameter's shape. Call inside reading().
std::vector<torch::Tensor> momentum_of(const fs::path& path,
                                       torch::serialize::InputArchive& archive, const Sgd& sgd) {
  std::vector<torch::Tensor> out(sgd.params().size());
  for (std::size_t i = 0; i < out.size(); ++i) {
    torch::Tensor m;
    if (!archive.try_read(key('m', i), m, true)) continue;
    if (!m.sizes().equals(sgd.params()[i].value.sizes())) {
      bad(path,
          "momentum buffer of '" + sgd.params()[i].name + "' has another shape than the parameter");
    }
    out[i] = m.clone();
  }
  return out;
}

}  // namespace

std::int64_t checkpoint_world_size(const fs::path& path) {
  if (!fs::exists(path)) bad(path, "missing");
  const std::vector<std::byte> bytes = read_file(path);
  torch::serialize::InputArchive archive;
  std::int64_t world_size = 0;
  reading(path, [&] {
    archive.load_from(reinterpret_cast<const char*>(bytes.data()), bytes.size());
    if (read_int(archive, "version") != kFormatVersion) bad(path, "unknown format version");
    world_size = read_int(archive, "world_size");
  });
  if (world_size < 1) bad(path, "malformed world size");
  return world_size;
}

CheckpointMeta read_checkpoint_error_feedback(const fs::path& path, const CheckpointMeta& expected,
                                              std::vector<std::byte>& ef, bool any_world_size) {
  std::vector<std::byte> bytes;
  torch::serialize::InputArchive archive;
  return read_meta(path, expected, bytes, archive, ef, any_world_size);
}

std::vector<torch::Tensor> read_checkpoint_momentum(const fs::path& path,
                                                    const CheckpointMeta& expected, const Sgd& sgd,
                                                    bool any_world_size) {
  std::vector<std::byte> bytes, ef;
  torch::serialize::InputArchive archive;
  read_meta(path, expected, bytes, archive, ef, any_world_size);
  std::vector<torch::Tensor> out;
  reading(path, [&] { out = momentum_of(path, archive, sgd); });
  return out;
}

CheckpointMeta load_checkpoint(const fs::path& path, const CheckpointMeta& expected,
                               torch::nn::Module& model, Sgd& sgd, std::vector<std::byte>& ef,
                               bool any_world_size) {
  std::vector<std::byte> bytes;
  torch::serialize::InputArchive archive;
  const CheckpointMeta meta = read_meta(path, expected, bytes, archive, ef, any_world_size);
  reading(path, [&] {
    c10::IValue value;
    const auto items = state_of(model);
    archive.read("names", value);
    if (value.toStringRef() != joined_names(items)) {
      bad(path, "parameter names or shapes differ from this model's");
    }
    torch::NoGradGuard no_grad;
    for (std::size_t i = 0; i < items.size(); ++i) {
      torch::Tensor t;
      archive.read(key('t', i), t, true);
      items[i].second.copy_(t);
    }
    sgd.momentum() = momentum_of(path, archive, sgd);
    torch::Tensor rng;
    archive.read("rng", rng, true);
    auto generator = at::detail::getDefaultCPUGenerator();
    std::lock_guard<std::mutex> lock(generator.mutex());
    generator.set_state(rng);
  });
  return meta;
}

void remove_old_checkpoints(const fs::path& dir, std::int64_t keep_epoch, int rank) {
  const std::string suffix = ".rank" + std::to_string(rank) + ".pt";
  const std::string keep = checkpoint_path(dir, keep_epoch, rank).filename().string();
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    const std::string name = entry.path().filename().string();
    const bool ours = name.starts_with("ckpt-e") && name.ends_with(suffix);
    // Temporary files of a run killed mid-write (atomic_file.cpp names them
    // ".<name>.tmp.<pid>"); one run owns the directory, so after a commit none is in use.
    const bool torn = (name.starts_with(".ckpt-e") && name.find(suffix + ".tmp.") != name.npos) ||
                      (rank == 0 && name.starts_with(".latest.tmp."));
    if ((ours && name != keep) || torn) fs::remove(entry.path(), ec);
  }
}

}  // namespace frugal::train
