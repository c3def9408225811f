// CompressionConfig from a method name and a dict of parameters, validated by the library
// itself (make_compressor), and back to a dict of the values it resolves to, defaults included:
// the Python class Compression holds no default numbers of its own.

#include <pybind11/stl.h>

#include <algorithm>
#include <cmath>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "bindings.hpp"
#include "frugal/compression/compressor.hpp"
#include "frugal/error.hpp"

namespace frugal::python {
namespace {

using compression::CompressionConfig;
using compression::Method;

// The parameters each method takes, in the order repr and messages list them.
std::vector<std::string_view> parameters_of(Method method) {
  switch (method) {
    case Method::None:
    case Method::Fp16:
      return {};
    case Method::Bf16:
      return {"stochastic_rounding"};
    case Method::TopK:
      return {"density", "k", "selection", "tolerance", "values", "scope", "gtopk"};
    case Method::OneBit:
      return {"scaling", "bucket"};
    case Method::Ternary:
      return {"bucket", "clip"};
    case Method::Qsgd:
      return {"bits", "bucket", "norm"};
  }
  return {};
}

std::string joined(const std::vector<std::string_view>& names) {
  std::string out;
  for (const std::string_view n : names) out += (out.empty() ? "" : ", ") + std::string(n);
  return out.empty() ? "no parameters" : out;
}

[[noreturn]] void bad(std::string_view parameter, const std::string& why) {
  throw Error(ErrorCode::InvalidArgument, std::string(parameter) + ": " + why);
}

std::string type_name(const py::handle& value) {
  return py::str(py::type::handle_of(value).attr("__name__"));
}

// Python ints only (bool is an int to Python, never a count here).
long long to_int(std::string_view parameter, const py::handle& value) {
  if (!py::isinstance<py::int_>(value) || py::isinstance<py::bool_>(value)) {
    bad(parameter, "expected an int, got " + type_name(value));
  }
  return value.cast<long long>();
}

double to_float(std::string_view parameter, const py::handle& value) {
  if (py::isinstance<py::bool_>(value) ||
      !(py::isinstance<py::float_>(value) || py::isinstance<py::int_>(value))) {
    bad(parameter, "expected a number, got " + type_name(value));
  }
  return value.cast<double>();
}

template <NamedEnum E>
E to_enum(std::string_view parameter, const py::handle& value) {
  if (!py::isinstance<py::str>(value)) bad(parameter, "expected a str, got " + type_name(value));
  const std::string text = value.cast<std::string>();
  if (const std::optional<E> parsed = parse_enum<E>(text)) return *parsed;
  bad(parameter, "'" + text + "' is not one of " + enum_choices<E>());
}

void set_parameter(CompressionConfig& c, std::string_view name, const py::handle& value) {
  if (name == "density") {
    c.density = to_float(name, value);
    if (!(c.density > 0.0 && c.density <= 1.0)) {
      bad(name, "must be in (0, 1], got " + std::string(py::repr(value)));
    }
  } else if (name == "k") {
    const long long k = to_int(name, value);
    if (k < 1)
      bad(name, "must be at least 1 (leave it unset to use density), got " + std::to_string(k));
    c.k = static_cast<std::size_t>(k);
  } else if (name == "selection") {
    c.selection = to_enum<compression::TopKSelection>(name, value);
  } else if (name == "tolerance") {
    c.tolerance = to_float(name, value);
  } else if (name == "values") {
    c.values = to_enum<compression::TopKValues>(name, value);
  } else if (name == "scope") {
    c.topk_scope = to_enum<compression::TopKScope>(name, value);
  } else if (name == "gtopk") {
    if (!py::isinstance<py::bool_>(value)) bad(name, "expected a bool, got " + type_name(value));
    c.gtopk = value.cast<bool>();
  } else if (name == "scaling") {
    c.scaling = to_enum<compression::OneBitScaling>(name, value);
  } else if (name == "bucket") {
    const long long bucket = to_int(name, value);
    if (bucket < 8 || bucket % 8 != 0) {
      bad(name, "must be a positive multiple of 8 (unset: the method's default), got " +
                    std::to_string(bucket));
    }
    c.bucket = static_cast<std::size_t>(bucket);
  } else if (name == "bits") {
    c.bits = static_cast<int>(std::clamp<long long>(to_int(name, value), -1, 1 << 20));
  } else if (name == "norm") {
    c.norm = to_enum<compression::QsgdNorm>(name, value);
  } else if (name == "clip") {
    // TernGrad's clipping at clip·σ; 0 turns it off.
    const double clip = to_float(name, value);
    if (!(std::isfinite(clip) && clip >= 0.0)) {
      bad(name, "must be finite and >= 0 (0: no clipping), got " + std::string(py::repr(value)));
    }
    c.clip_sigma = static_cast<float>(clip);
  } else if (name == "stochastic_rounding") {
    if (!py::isinstance<py::bool_>(value)) {
      bad(name, "expected a bool, got " + type_name(value));
    }
    c.stochastic_rounding = value.cast<bool>();
  }
}

std::size_t default_bucket(Method method) {
  switch (method) {
    case Method::OneBit:
      return compression::kDefaultOneBitChunk;
    case Method::Ternary:
      return compression::kDefaultTernaryBucket;
    case Method::Qsgd:
      return compression::kDefaultQsgdBucket;
    default:
      return 0;
  }
}

CompressionConfig make_config(const std::string& method_name, const py::dict& params) {
  const std::optional<Method> method = parse_enum<Method>(method_name);
  if (!method) {
    bad("method", "'" + method_name + "' is not one of " + enum_choices<Method>());
  }
  CompressionConfig c;
  c.method = *method;
  const std::vector<std::string_view> allowed = parameters_of(*method);
  for (const auto& [key, value] : params) {
    const std::string name = py::str(key);
    if (std::find(allowed.begin(), allowed.end(), name) == allowed.end()) {
      bad(name, "is not a parameter of " + method_name + " (it takes " + joined(allowed) + ")");
    }
    if (value.is_none()) continue;  // unset: the library's default
    set_parameter(c, name, value);
  }
  // The library's own checks (bits, tolerance, ...), naming the field.
  (void)compression::make_compressor(c);
  if (c.bucket == 0) c.bucket = default_bucket(c.method);
  return c;
}

py::dict params_of(const CompressionConfig& c) {
  py::dict d;
  for (const std::string_view name : parameters_of(c.method)) {
    const std::string key(name);
    if (name == "density") {
      if (c.k == 0) d[key.c_str()] = c.density;
    } else if (name == "k") {
      if (c.k != 0) d[key.c_str()] = c.k;
    } else if (name == "selection") {
      d[key.c_str()] = enum_name(c.selection);
    } else if (name == "tolerance") {
      d[key.c_str()] = c.tolerance;
    } else if (name == "values") {
      d[key.c_str()] = enum_name(c.values);
    } else if (name == "scope") {
      d[key.c_str()] = enum_name(c.topk_scope);
    } else if (name == "gtopk") {
      d[key.c_str()] = c.gtopk;
    } else if (name == "scaling") {
      d[key.c_str()] = enum_name(c.scaling);
    } else if (name == "bucket") {
      d[key.c_str()] = c.bucket;
    } else if (name == "bits") {
      d[key.c_str()] = c.bits;
    } else if (name == "norm") {
      d[key.c_str()] = enum_name(c.norm);
    } else if (name == "clip") {
      d[key.c_str()] = c.clip_sigma;
    } else if (name == "stochastic_rounding") {
      d[key.c_str()] = c.stochastic_rounding;
    }
  }
  return d;
}

}  // namespace

void bind_compression(py::module_& m) {
  py::class_<CompressionConfig>(m, "CompressionConfig")
      .def_property_readonly("method",
                             [](const CompressionConfig& c) { return enum_name(c.method); })
      .def_property_readonly("params", &params_of);
  m.def("make_compression", &make_config, py::arg("method"), py::arg("params"),
        "Validated CompressionConfig; unset (None or absent) parameters take the defaults.");
  m.def("compression_methods", [] {
    std::vector<std::string_view> names;
    for (const Method method : enum_values<Method>()) names.push_back(enum_name(method));
    return names;
  });
  m.def("compression_parameters", [](const std::string& method) {
    const std::optional<Method> parsed = parse_enum<Method>(method);
    if (!parsed) bad("method", "'" + method + "' is not one of " + enum_choices<Method>());
    return parameters_of(*parsed);
  });
}

}  // namespace frugal::python
