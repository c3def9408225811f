// PowerSGD: frugal.PowerSGDState, the options (checked by the library's own validate()), a batch
// of tensors checked and viewed as matrices, and the allreduce itself. frugal/powersgd.py builds
// these in the order that lets a rank reject its own arguments before its peers wait for it.

#include "frugal/collectives/powersgd.hpp"

#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "bindings.hpp"
#include "frugal/enum_names.hpp"
#include "frugal/error.hpp"

namespace frugal::python {
namespace {

template <NamedEnum E>
E parse_named(const std::string& text, const char* parameter) {
  if (const std::optional<E> value = parse_enum<E>(text)) return *value;
  throw Error(ErrorCode::InvalidArgument,
              std::string(parameter) + ": '" + text + "' is not one of " + enum_choices<E>());
}

PowerSgdOptions make_options(int rank, double min_compression_rate, std::uint64_t start_iter,
                             std::uint64_t seed, bool error_feedback, const std::string& op,
                             const std::string& non_finite, std::optional<double> timeout) {
  PowerSgdOptions o;
  o.rank = rank;
  o.min_compression_rate = min_compression_rate;
  o.start_iter = start_iter;
  o.seed = seed;
  o.error_feedback = error_feedback;
  o.op = parse_named<ReduceOp>(op, "op");
  o.non_finite = parse_named<NonFiniteAction>(non_finite, "non_finite");
  if (timeout) {
    require(std::isfinite(*timeout) && *timeout > 0, "timeout",
            "must be a positive number of seconds, got " + std::to_string(*timeout));
    o.timeout = std::chrono::milliseconds(
        std::max<long long>(1, std::llround(std::min(*timeout, 1e9) * 1000.0)));
  }
  validate(o);
  return o;
}

// The library's defaults, so that the Python keyword arguments are read from it, not copied.
py::dict defaults() {
  const PowerSgdOptions o;
  py::dict d;
  d["rank"] = o.rank;
  d["min_compression_rate"] = o.min_compression_rate;
  d["start_iter"] = o.start_iter;
  d["seed"] = o.seed;
  d["error_feedback"] = o.error_feedback;
  d["op"] = std::string(enum_name(o.op));
  d["non_finite"] = std::string(enum_name(o.non_finite));
  return d;
}

// The tensors of one call, checked: each a writeable, contiguous float32 buffer viewed as its
// first dimension by the product of the others, no two sharing memory. Holds the buffers (and
// so the arrays) until it is dropped.
class Batch {
 public:
  explicit Batch(const std::vector<py::buffer>& arrays) {
    infos_.reserve(arrays.size());
    tensors_.reserve(arrays.size());
    for (std::size_t i = 0; i < arrays.size(); ++i) {
      const std::string name = "tensors[" + std::to_string(i) + "]";
      infos_.push_back(arrays[i].request(true));
      const py::buffer_info& info = infos_.back();
      const std::span<float> data = writable_floats(info, name.c_str());
      std::size_t rows = 1;
      std::size_t cols = 1;
      for (py::ssize_t d = 0; d < info.ndim; ++d) {
        const auto extent = static_cast<std::size_t>(info.shape[static_cast<std::size_t>(d)]);
        (d == 0 ? rows : cols) *= extent;
      }
      tensors_.push_back({data, rows, cols});
    }
    check_disjoint();
  }

  std::span<const PowerSgdTensor> tensors() const noexcept { return tensors_; }

 private:
  // Two tensors over the same memory would be reduced twice, each overwriting the other's result.
  void check_disjoint() const {
    std::vector<std::pair<const float*, std::size_t>> spans;
    for (std::size_t i = 0; i < tensors_.size(); ++i) {
      if (!tensors_[i].data.empty()) spans.emplace_back(tensors_[i].data.data(), i);
    }
    std::sort(spans.begin(), spans.end());
    for (std::size_t k = 1; k < spans.size(); ++k) {
      const PowerSgdTensor& before = tensors_[spans[k - 1].second];
      if (before.data.data() + before.data.size() > spans[k].first) {
        throw Error(ErrorCode::InvalidArgument,
                    "tensors: tensors[" + std::to_string(spans[k - 1].second) + "] and tensors[" +
                        std::to_string(spans[k].second) +
                        "] share memory; pass each gradient once");
      }
    }
  }

  std::vector<py::buffer_info> infos_;
  std::vector<PowerSgdTensor> tensors_;
};

py::dict run(const PyCommunicator& self, const Batch& batch, PowerSgdState& state,
             const PowerSgdOptions& options) {
  const std::shared_ptr<Communicator> comm = self.use();
  PowerSgdStats stats;
  PowerSgdOptions o = options;
  o.stats = &stats;
  {
    py::gil_scoped_release nogil;
    powersgd_allreduce(*comm, batch.tensors(), state, o);
  }
  py::dict d;
  d["dense_step"] = stats.dense_step;
  d["compressed_tensors"] = stats.compressed_tensors;
  d["wire_bytes_sent"] = stats.wire_bytes_sent;
  d["non_finite_skipped"] = stats.non_finite_skipped;
  d["non_finite_zeroed"] = stats.non_finite_zeroed;
  return d;
}

py::bytes save(const PowerSgdState& s) {
  return to_py_bytes(s.save());
}

// A copy of tensor `index`'s Q as the matrix of P Q^T (cols x r; the library keeps column c of Q
// contiguous) or of its residual (rows x cols); None for a tensor without one.
py::object factor(const PowerSgdState& s, std::size_t index, bool residual) {
  const std::span<const float> values = residual ? s.residual(index) : s.q(index);
  if (values.empty()) return py::none();
  const PowerSgdState::Layout& layout = *s.layout();
  const auto rows = static_cast<py::ssize_t>(layout.shapes[2 * index]);
  const auto cols = static_cast<py::ssize_t>(layout.shapes[2 * index + 1]);
  const py::ssize_t r = layout.approximation_rank;
  constexpr auto f = static_cast<py::ssize_t>(sizeof(float));
  py::array_t<float> out =
      residual ? py::array_t<float>({rows, cols}) : py::array_t<float>({cols, r}, {f, cols * f});
  std::copy(values.begin(), values.end(), out.mutable_data());
  return out;
}

void restore(PowerSgdState& s, const py::bytes& image) {
  s.restore(byte_view(image));
}

}  // namespace

void bind_powersgd(py::module_& m) {
  py::class_<PowerSgdState>(m, "PowerSGDState", R"(
What PowerSGD keeps for one list of tensors between steps: the step counter, each compressed
tensor's Q (the warm start) and its error-feedback residual. One per tensor list, kept across
steps, each rank its own: save() it with checkpoints. The first powersgd_allreduce binds it to its
layout (shapes, ranks, this rank, rank r, op, min_compression_rate, error feedback); another
layout is MismatchError on every rank until reset(). One call at a time.)")
      .def(py::init<>())
      .def_property_readonly("steps", &PowerSgdState::steps)
      .def_property_readonly("bound", &PowerSgdState::bound,
                             "Whether an allreduce has bound it to a layout yet.")
      .def("reset", &PowerSgdState::reset,
           "Forgets the layout, Q's and residuals; keeps the step counter.")
      .def(
          "q", [](const PowerSgdState& s, std::size_t i) { return factor(s, i, false); },
          py::arg("index"),
          "A copy of tensor `index`'s Q, the next step's warm start, as the cols x r matrix of "
          "P Q^T; None for a tensor that is not compressed.")
      .def(
          "residual", [](const PowerSgdState& s, std::size_t i) { return factor(s, i, true); },
          py::arg("index"),
          "A copy of tensor `index`'s error-feedback residual (rows x cols); None for a tensor "
          "that is not compressed or without error feedback.")
      .def("save", &save, "A self-describing byte image for checkpoints.")
      .def("restore", &restore, py::arg("image"),
           "Reads save()'s image; InvalidArgumentError (state unchanged) on a malformed one.")
      .def("__repr__", [](const PowerSgdState& s) {
        return "<frugal.PowerSGDState steps=" + std::to_string(s.steps()) +
               (s.bound() ? " bound>" : ">");
      });
  py::class_<PowerSgdOptions>(m, "PowerSGDOptions")
      .def(py::init(&make_options), py::arg("rank"), py::arg("min_compression_rate"),
           py::arg("start_iter"), py::arg("seed"), py::arg("error_feedback"), py::arg("op"),
           py::arg("non_finite"), py::arg("timeout"));
  py::class_<Batch>(m, "PowerSGDBatch")
      .def(py::init<const std::vector<py::buffer>&>(), py::arg("arrays"));
  m.def("powersgd_defaults", &defaults);
  m.def(
      "powersgd_compresses",
      [](std::size_t rows, std::size_t cols, const PowerSgdOptions& o) {
        return powersgd_compresses(rows, cols, o);
      },
      py::arg("rows"), py::arg("cols"), py::arg("options"));
  m.def("powersgd_allreduce", &run, py::arg("comm"), py::arg("batch"), py::arg("state"),
        py::arg("options"));
}

}  // namespace frugal::python
