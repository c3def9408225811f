#include "calibration.hpp"

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
  throw Error(ErrorCode::InvalidArgument,
              "method: the cost model has no kernels for '" +
                  std::string(compression::to_string(method)) +
                  "' (known: fp16, bf16, topk, onebit, ternary, qsgd)");
}

// Every numeric field of the file, by key, so that writing and reading cannot drift apart.
std::vector<std::pair<std::string, double*>> numeric_fields(Calibration& c) {
  std::vector<std::pair<std::string, double*>> fields{
      {"scan", &c.scan},
      {"reduce", &c.reduce},
      {"fill", &c.fill},
      {"sparse_merge", &c.sparse_merge},
      {"message_seconds", &c.message_seconds},
      {"stack_seconds_per_byte", &c.stack_seconds_per_byte},
  };
  for (std::size_t i = 0; i < kModelMethods.size(); ++i) {
    const std::string name(compression::to_string(kModelMethods[i]));
    MethodKernels& k = c.methods[i];
    fields.emplace_back(name + ".encode_payload", &k.encode_payload);
    fields.emplace_back(name + ".encode_apply", &k.encode_apply);
    fields.emplace_back(name + ".decode", &k.decode);
    fields.emplace_back(name + ".decode_add", &k.decode_add);
    fields.emplace_back(name + ".decode_sum_base", &k.decode_sum_base);
    fields.emplace_back(name + ".decode_sum_payload", &k.decode_sum_payload);
  }
  return fields;
}

[[noreturn]] void refuse(const std::string& source, const std::string& why) {
  throw Error(ErrorCode::InvalidArgument, "calibration file '" + source + "': " + why);
}

}  // namespace

const MethodKernels& Calibration::kernels(compression::Method method) const {
  return methods[method_index(method)];
}

MethodKernels& Calibration::kernels(compression::Method method) {
  return methods[method_index(method)];
}

void write_calibration(std::ostream& out, const Calibration& calibration) {
  Calibration copy = calibration;
  out << kCalibrationMagic << ' ' << kCalibrationVersion << '\n';
  out << "# Seconds per float32 element on one core unless the key says otherwise; top-k's\n"
         "# decode_add is per selected element. Written by frugal-model calibrate.\n";
  out << "machine " << calibration.machine << '\n';
  out << "elements " << calibration.elements << '\n';
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
    if (key == "elements") {
      c.elements = static_cast<std::size_t>(value);
      continue;
    }
    const auto field = numeric.find(key);
    if (field == numeric.end()) refuse(source, "unknown key '" + key + "'");
    *field->second = value;
  }
  for (const std::string key : {"machine", "elements"}) {
    if (!seen[key]) refuse(source, "key '" + key + "' is missing");
  }
  for (const auto& [key, value] : numeric) {
    if (!seen[key]) refuse(source, "key '" + key + "' is missing");
  }
  return c;
}

Calibration load_calibration(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw Error(ErrorCode::InvalidArgument, "calibration file '" + path + "': cannot read it");
  return read_calibration(in, path);
}

}  // namespace frugal::model
