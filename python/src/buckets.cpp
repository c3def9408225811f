// frugal.Buckets' C++ half: GradientBuckets plus the arrays it writes back into at finish(), the
// guardrail's options (frugal.Guardrail's C++ half) and auto's (frugal.Autotune's).

#include "frugal/collectives/buckets.hpp"

#include <pybind11/stl.h>

#include <limits>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "bindings.hpp"

namespace frugal::python {
namespace {

// frugal.Autotune's C++ half: the validated options, and the cost function (None or a callable
// (bucket, candidate, seconds) -> float) that PyBuckets turns into the C++ hook.
struct PyAutotune {
  AutotuneOptions options;
  py::object cost;
};

PyAutotune make_autotune(std::vector<compression::CompressionConfig> candidates, std::size_t warmup,
                         std::size_t trial_steps, std::size_t retune, double margin,
                         py::object cost) {
  PyAutotune a;
  a.options.enabled = true;
  a.options.candidates = std::move(candidates);
  a.options.warmup = warmup;
  a.options.trial_steps = trial_steps;
  a.options.retune = retune;
  a.options.margin = margin;
  validate(a.options);  // InvalidArgument naming autotune.<field>
  a.cost = std::move(cost);
  return a;
}

class PyBuckets {
 public:
  PyBuckets(const PyCommunicator& comm, const AllreduceOptions& allreduce, std::size_t bucket_bytes,
            bool dense_vectors, const std::optional<GuardrailOptions>& guardrail, bool hierarchical,
            const std::optional<PyAutotune>& autotune)
      : comm_(comm.use()) {
    BucketOptions options;
    options.allreduce = allreduce;
    options.bucket_bytes = bucket_bytes;
    options.dense_vectors = dense_vectors;
    if (guardrail) options.guardrail = *guardrail;
    if (autotune) {
      options.autotune = autotune->options;
      if (!autotune->cost.is_none()) {
        cost_ = autotune->cost;
        // Captures `this` only: the hook is destroyed with the buckets, without the GIL, so it
        // must hold no Python object (cost_ is released in the destructor, with it).
        options.autotune.cost = [this](std::size_t bucket, const compression::CompressionConfig&,
                                       double seconds) { return call_cost(bucket, seconds); };
      }
    }
    // No topology: the constructor discovers the hosts (collective; FRUGAL_HOST_ID or hostname).
    options.hierarchical = hierarchical;
    // Collective when hierarchical (topology discovery): the GIL is released while it waits.
    py::gil_scoped_release nogil;
    buckets_ = std::make_unique<GradientBuckets>(*comm_, options);
  }
  // GradientBuckets' destructor waits for the allreduces still writing into its buffers; the
  // marked arrays are released only after that, and with the GIL.
  ~PyBuckets() {
    {
      py::gil_scoped_release nogil;
      buckets_.reset();
    }
    marked_.clear();
  }
  PyBuckets(const PyBuckets&) = delete;
  PyBuckets& operator=(const PyBuckets&) = delete;

  std::size_t add(std::string name, std::size_t count, std::optional<std::size_t> dims) {
    return dims ? buckets_->add(std::move(name), count, *dims)
                : buckets_->add(std::move(name), count);
  }

  void mark_ready(const py::object& key, const py::buffer& array) {
    const py::buffer_info info = array.request(true);
    const std::span<float> grad = writable_floats(info, "tensor");
    if (py::isinstance<py::str>(key)) {
      buckets_->mark_ready(key.cast<std::string>(), grad);
    } else {
      buckets_->mark_ready(key.cast<std::size_t>(), grad);
    }
    marked_.push_back(array);  // finish() writes into it
  }

  void finish() {
    {
      py::gil_scoped_release nogil;
      try {
        buckets_->finish();
      } catch (...) {
        // finish() has waited for what was launched, so the arrays are no longer in use.
        py::gil_scoped_acquire gil;
        marked_.clear();
        rethrow_with_cost_error();
      }
    }
    marked_.clear();
  }

  GradientBuckets& get() noexcept { return *buckets_; }

 private:
  // The C++ hook, called by finish() on this thread (GIL released). The bucket's candidate has
  // not moved on yet, so bucket_candidate() is the one whose step is costed. A Python exception
  // or a result that is not a float becomes NaN, which the library refuses on every rank alike
  // (naming autotune.cost): raising here would leave the other ranks waiting in the gather.
  double call_cost(std::size_t bucket, double seconds) {
    const std::size_t candidate = buckets_->bucket_candidate(bucket);
    py::gil_scoped_acquire gil;
    try {
      return cost_(bucket, candidate, seconds).cast<double>();
    } catch (py::error_already_set& e) {
      cost_error_ = e.what();
    } catch (const py::cast_error&) {
      cost_error_ = "it returned something that is not a float";
    }
    return std::numeric_limits<double>::quiet_NaN();
  }

  // Rethrows the exception in flight, with the cost function's own error (if it raised) added.
  void rethrow_with_cost_error() {
    if (cost_error_.empty()) throw;
    const std::string why = std::exchange(cost_error_, {});
    try {
      throw;
    } catch (const Error& e) {
      throw Error(e.code(), std::string(e.what()) + " (the cost function failed: " + why + ")");
    }
  }

  std::shared_ptr<Communicator> comm_;
  py::object cost_;  // frugal.Autotune's cost function, or None
  std::string cost_error_;
  std::unique_ptr<GradientBuckets> buckets_;
  std::vector<py::object> marked_;
};

// The keys of frugal-train's "autotune" log records (less "kind" and "epoch").
py::dict to_dict(const AutotuneEvent& e) {
  py::dict d;
  d["step"] = e.step;
  d["bucket"] = e.bucket;
  d["from"] = e.from;
  d["to"] = e.to;
  d["decision"] = e.decision;
  d["costs"] = e.costs;
  return d;
}

// The keys of frugal-train's "guardrail" log records.
py::dict to_dict(const GuardrailEvent& e) {
  py::dict d;
  d["step"] = e.step;
  d["bucket"] = e.bucket;
  d["from"] = e.from;
  d["to"] = e.to;
  d["from_rung"] = e.from_rung;
  d["to_rung"] = e.to_rung;
  d["ratio"] = e.ratio;
  d["relative_error"] = e.relative_error;
  return d;
}

GuardrailOptions make_guardrail(double lower, double upper, std::size_t patience, double smoothing,
                                std::size_t cooldown) {
  GuardrailOptions o;
  o.enabled = true;
  o.lower = lower;
  o.upper = upper;
  o.patience = patience;
  o.smoothing = smoothing;
  o.cooldown = cooldown;
  validate(o);  // InvalidArgument naming guardrail.<field>
  return o;
}

}  // namespace

void bind_buckets(py::module_& m) {
  py::class_<GuardrailOptions>(m, "GuardrailOptions")
      .def(py::init(&make_guardrail), py::arg("lower"), py::arg("upper"), py::arg("patience"),
           py::arg("smoothing"), py::arg("cooldown"))
      .def_static("defaults", [] { return GuardrailOptions{}; })
      .def_readonly("lower", &GuardrailOptions::lower)
      .def_readonly("upper", &GuardrailOptions::upper)
      .def_readonly("patience", &GuardrailOptions::patience)
      .def_readonly("smoothing", &GuardrailOptions::smoothing)
      .def_readonly("cooldown", &GuardrailOptions::cooldown);
  py::class_<PyAutotune>(m, "AutotuneOptions")
      .def(py::init(&make_autotune), py::arg("candidates"), py::arg("warmup"),
           py::arg("trial_steps"), py::arg("retune"), py::arg("margin"), py::arg("cost"))
      .def_static("defaults",
                  [] {
                    return PyAutotune{AutotuneOptions{}, py::none()};
                  })
      .def_property_readonly("warmup", [](const PyAutotune& a) { return a.options.warmup; })
      .def_property_readonly("trial_steps",
                             [](const PyAutotune& a) { return a.options.trial_steps; })
      .def_property_readonly("retune", [](const PyAutotune& a) { return a.options.retune; })
      .def_property_readonly("margin", [](const PyAutotune& a) { return a.options.margin; })
      .def_property_readonly("cost", [](const PyAutotune& a) { return a.cost; });
  py::class_<PyBuckets>(m, "Buckets")
      .def(py::init<const PyCommunicator&, const AllreduceOptions&, std::size_t, bool,
                    const std::optional<GuardrailOptions>&, bool,
                    const std::optional<PyAutotune>&>(),
           py::arg("comm"), py::arg("options"), py::arg("bucket_bytes"), py::arg("dense_vectors"),
           py::arg("guardrail"), py::arg("hierarchical"), py::arg("autotune"))
      .def("add", &PyBuckets::add, py::arg("name"), py::arg("numel"), py::arg("dims"))
      .def("mark_ready", &PyBuckets::mark_ready, py::arg("key"), py::arg("array"))
      .def("finish", &PyBuckets::finish)
      .def("undo_last_step", [](PyBuckets& b) { b.get().undo_last_step(); })
      .def_property_readonly("last_step_skipped",
                             [](PyBuckets& b) { return b.get().last_step_skipped(); })
      .def_property_readonly("last_step_wire_bytes",
                             [](PyBuckets& b) { return b.get().last_step_wire_bytes(); })
      .def_property_readonly("tensor_count", [](PyBuckets& b) { return b.get().tensor_count(); })
      .def_property_readonly("bucket_count", [](PyBuckets& b) { return b.get().bucket_count(); })
      .def("bucket_of", [](PyBuckets& b, std::size_t id) { return b.get().bucket_of(id); })
      .def_property_readonly(
          "last_step_guardrail_events",
          [](PyBuckets& b) {
            py::list events;
            for (const GuardrailEvent& e : b.get().last_step_guardrail_events()) {
              events.append(to_dict(e));
            }
            return events;
          })
      .def("bucket_rung",
           [](PyBuckets& b, std::size_t bucket) { return b.get().bucket_rung(bucket); })
      .def("bucket_residual_ratio",
           [](PyBuckets& b, std::size_t bucket) { return b.get().bucket_residual_ratio(bucket); })
      .def(
          "bucket_setting",
          [](PyBuckets& b, std::size_t bucket) { return describe(b.get().bucket_setting(bucket)); })
      .def_property_readonly("last_step_autotune_events",
                             [](PyBuckets& b) {
                               py::list events;
                               for (const AutotuneEvent& e : b.get().last_step_autotune_events()) {
                                 events.append(to_dict(e));
                               }
                               return events;
                             })
      .def_property_readonly("autotune_candidates",
                             [](PyBuckets& b) {
                               std::vector<std::string> names;
                               for (const auto& c : b.get().autotune_candidates()) {
                                 names.push_back(describe(c));
                               }
                               return names;
                             })
      .def("bucket_is_dense",
           [](PyBuckets& b, std::size_t bucket) { return b.get().bucket_is_dense(bucket); })
      .def("bucket_candidate",
           [](PyBuckets& b, std::size_t bucket) { return b.get().bucket_candidate(bucket); })
      .def("save_state", [](PyBuckets& b) { return to_py_bytes(b.get().save_state()); })
      .def("restore_state",
           [](PyBuckets& b, const py::bytes& image) { b.get().restore_state(byte_view(image)); });
}

}  // namespace frugal::python
