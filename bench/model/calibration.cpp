#include "calibration.hpp"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <iomanip>
#include <istream>
#include <map>
#include <ostream>
#include <sstream>
#include <vector>

#include "frugal/error.hpp"

namespace frugal::model {

namespace {

std::size_t method_index(compression::Method method) {
  for (std::size_t i = 0; i < kModelMethods.size(); ++i) {
    if (kModelMethods[i] == method) return i;
  }
  throw Error(ErrorCode::InvalidArgument, "method: the cost model has no kernels for '" +
                                              std::string(compression::to_string(method)) +
                                              "' (known: fp16, bf16, topk, onebit, ternary, qsgd)");
}

void add_kernel_fields(std::vector<std::pair<std::string, double*>>& fields,
                       const std::string& prefix, Kernels& k) {
  fields.emplace_back(prefix + "scan", &k.scan);
  fields.emplace_back(prefix + "reduce", &k.reduce);
  fields.emplace_back(prefix + "fill", &k.fill);
  fields.emplace_back(prefix + "fresh", &k.fresh);
  fields.emplace_back(prefix + "sparse_merge", &k.sparse_merge);
  for (std::size_t i = 0; i < kModelMethods.size(); ++i) {
    const std::string name = prefix + std::string(compression::to_string(kModelMethods[i]));
    MethodKernels& m = k.methods[i];
    fields.emplace_back(name + ".encode_payload", &m.encode_payload);
    fields.emplace_back(name + ".encode_apply", &m.encode_apply);
    fields.emplace_back(name + ".decode", &m.decode);
    fields.emplace_back(name + ".decode_add", &m.decode_add);
    fields.emplace_back(name + ".decode_sum_base", &m.decode_sum_base);
    fields.emplace_back(name + ".decode_sum_payload", &m.decode_sum_payload);
  }
}

// Every numeric field of the file, by key, so that writing and reading cannot drift apart.
std::vector<std::pair<std::string, double*>> numeric_fields(Calibration& c) {
  std::vector<std::pair<std::string, double*>> fields{
      {"message_seconds", &c.message_seconds},
      {"post_seconds", &c.post_seconds},
      {"stack_seconds_per_byte", &c.stack_seconds_per_byte},
  };
  add_kernel_fields(fields, "small.", c.small);
  add_kernel_fields(fields, "large.", c.large);
  return fields;
}

// Every field of a Kernels, in order: for interpolating all of them alike.
std::vector<double*> kernel_values(Kernels& k) {
  std::vector<std::pair<std::string, double*>> fields;
  add_kernel_fields(fields, "", k);
  std::vector<double*> values;
  for (const auto& f : fields) values.push_back(f.second);
  return values;
}

[[noreturn]] void refuse(const std::string& source, const std::string& why) {
  throw Error(ErrorCode::InvalidArgument, "calibration file '" + source + "': " + why);
}

}  // namespace

const MethodKernels& Kernels::kernels(compression::Method method) const {
  return methods[method_index(method)];
}

MethodKernels& Kernels::kernels(compression::Method method) {
  return methods[method_index(method)];
}

Kernels Calibration::at(double n) const {
  Kernels out = small;
  Kernels lo = small;
  Kernels hi = large;
  const double a = std::log(static_cast<double>(std::max<std::size_t>(1, small_elements)));
  const double b = std::log(static_cast<double>(std::max<std::size_t>(1, large_elements)));
  const double x = std::log(std::max(1.0, n));
  // Share of the large size's speed: 0 at or below small_elements, 1 at or above large_elements.
  const double t = b > a ? std::clamp((x - a) / (b - a), 0.0, 1.0) : (x >= b ? 1.0 : 0.0);
  const std::vector<double*> o = kernel_values(out);
  const std::vector<double*> l = kernel_values(lo);
  const std::vector<double*> h = kernel_values(hi);
  for (std::size_t i = 0; i < o.size(); ++i) *o[i] = (1 - t) * *l[i] + t * *h[i];
  return out;
}

void write_calibration(std::ostream& out, const Calibration& calibration) {
  Calibration copy = calibration;
  out << kCalibrationMagic << ' ' << kCalibrationVersion << '\n';
  out << "# Seconds per float32 element on one core unless the key says otherwise, at\n"
         "# small_elements (small.*) and large_elements (large.*); top-k's decode_add is per\n"
         "# selected element. Written by frugal-model calibrate.\n";
  out << "machine " << calibration.machine << '\n';
  out << "small_elements " << calibration.small_elements << '\n';
  out << "large_elements " << calibration.large_elements << '\n';
  out << std::setprecision(6);
  for (const auto& [key, value] : numeric_fields(copy)) out << key << ' ' << *value << '\n';
}

Calibration read_calibration(std::istream& in, const std::string& source) {
  std::string line;
  std::getline(in, line);
  std::istringstream first(line);
  std::string magic;
  int version = -1;
  first >> magic >> version;
  if (magic != kCalibrationMagic) {
    refuse(source, "another format: the first line is not '" + std::string(kCalibrationMagic) +
                       " " + std::to_string(kCalibrationVersion) + "'");
  }
  if (version != kCalibrationVersion) {
    refuse(source, "another version (" + std::to_string(version) + "); this frugal-model reads " +
                       std::to_string(kCalibrationVersion) + ", run frugal-model calibrate again");
  }
  Calibration c;
  std::map<std::string, double*> numeric;
  for (const auto& [key, value] : numeric_fields(c)) numeric.emplace(key, value);
  std::map<std::string, bool> seen;
  while (std::getline(in, line)) {
    if (line.empty() || line.front() == '#') continue;
    const std::size_t space = line.find(' ');
    const std::string key = line.substr(0, space);
    const std::string text = space == std::string::npos ? "" : line.substr(space + 1);
    if (seen[key]) refuse(source, "key '" + key + "' given twice");
    seen[key] = true;
    if (key == "machine") {
      c.machine = text;
      continue;
    }
    double value = 0;
    std::istringstream number(text);
    number >> value;
    if (number.fail() || !number.eof() || !std::isfinite(value) || value < 0) {
      refuse(source, "key '" + key + "': '" + text + "' is not a finite number >= 0");
    }
    if (key == "small_elements" || key == "large_elements") {
      (key == "small_elements" ? c.small_elements : c.large_elements) =
          static_cast<std::size_t>(value);
      continue;
    }
    const auto field = numeric.find(key);
    if (field == numeric.end()) refuse(source, "unknown key '" + key + "'");
    *field->second = value;
  }
  for (const std::string key : {"machine", "small_elements", "large_elements"}) {
    if (!seen[key]) refuse(source, "key '" + key + "' is missing");
  }
  for (const auto& [key, value] : numeric) {
    if (!seen[key]) refuse(source, "key '" + key + "' is missing");
  }
  if (c.small_elements < 1 || c.small_elements > c.large_elements) {
    refuse(source, "small_elements must be at least 1 and at most large_elements");
  }
  return c;
}

Calibration load_calibration(const std::string& path) {
  std::ifstream in(path);
  if (!in)
    throw Error(ErrorCode::InvalidArgument, "calibration file '" + path + "': cannot read it");
  return read_calibration(in, path);
}

}  // namespace frugal::model
