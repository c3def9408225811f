#include "store_bootstrap.hpp"

#include <cctype>
#include <string_view>
#include <vector>

#include "frugal/error.hpp"

namespace frugal::python {
namespace {

bool says_timeout(const py::error_already_set& e) {
  if (e.matches(PyExc_TimeoutError)) return true;
  std::string text = e.what();
  for (char& c : text) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  // torch's stores raise RuntimeError("... Socket Timeout" / "timed out") on an expired wait.
  return text.find("timeout") != std::string::npos || text.find("timed out") != std::string::npos;
}

class StoreBootstrap final : public Bootstrap {
 public:
  StoreBootstrap(py::object store, int rank, int size, std::string prefix)
      : store_(std::move(store)), rank_(rank), size_(size), prefix_(std::move(prefix)) {}

  int rank() const noexcept override { return rank_; }
  int size() const noexcept override { return size_; }
  std::string_view name() const noexcept override { return "python store"; }

  std::vector<std::vector<std::byte>> allgather(std::span<const std::byte> mine) override {
    const std::string round = prefix_ + std::to_string(round_++) + "/";
    py::gil_scoped_acquire gil;
    std::vector<std::vector<std::byte>> all(static_cast<std::size_t>(size_));
    std::string key = round + std::to_string(rank_);
    try {
      store_.attr("set")(key, py::bytes(reinterpret_cast<const char*>(mine.data()), mine.size()));
      for (int r = 0; r < size_; ++r) {
        key = round + std::to_string(r);
        const py::object value = store_.attr("get")(key);
        if (!py::isinstance<py::bytes>(value)) {
          throw Error(ErrorCode::InvalidArgument,
                      "store: get('" + key + "') returned " +
                          std::string(py::str(py::type::handle_of(value).attr("__name__"))) +
                          ", expected bytes");
        }
        const std::string_view bytes = value.cast<std::string_view>();
        const auto* begin = reinterpret_cast<const std::byte*>(bytes.data());
        all[static_cast<std::size_t>(r)].assign(begin, begin + bytes.size());
      }
    } catch (py::error_already_set& e) {
      // Converted here, with the GIL held, so that the Python exception dies with it.
      throw Error(says_timeout(e) ? ErrorCode::Timeout : ErrorCode::Transport,
                  "store: rank " + std::to_string(rank_) + " at key '" + key + "': " + e.what());
    }
    return all;
  }

 private:
  py::object store_;
  int rank_;
  int size_;
  std::string prefix_;
  std::uint64_t round_ = 0;
};

}  // namespace

std::unique_ptr<Bootstrap> make_store_bootstrap(py::object store, int rank, int size,
                                                std::string prefix) {
  require(size >= 1, "world_size", "must be at least 1, got " + std::to_string(size));
  require(rank >= 0 && rank < size, "rank",
          "must be in [0, world_size = " + std::to_string(size) + "), got " + std::to_string(rank));
  for (const char* method : {"set", "get"}) {
    require(py::hasattr(store, method), "store",
            std::string("has no ") + method +
                "() method; pass a torch.distributed Store or an "
                "object with set(key, value: bytes) and get(key) -> bytes");
  }
  return std::make_unique<StoreBootstrap>(std::move(store), rank, size, std::move(prefix));
}

}  // namespace frugal::python
