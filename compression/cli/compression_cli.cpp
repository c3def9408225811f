#include "compression_cli.hpp"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <optional>
#include <vector>

#include "frugal/enum_names.hpp"

namespace frugal::compression::cli {

namespace po = boost::program_options;

namespace {

// Which methods a parameter means something to. A flag given for none of the methods that run
// is refused instead of ignored: `--compress onebit --density 2` should not start a 30-epoch run
// that looks as if it were sparse.
struct Scope {
  std::string_view flag;
  bool (*applies)(Method);
};

constexpr bool is_topk(Method m) {
  return m == Method::TopK;
}
constexpr bool is_qsgd(Method m) {
  return m == Method::Qsgd;
}

constexpr Scope kScopes[] = {
    {"density", is_topk},
    {"topk-selection", is_topk},
    {"topk-scope", is_topk},
    {"topk-gtopk", is_topk},
    {"onebit-scaling", [](Method m) { return m == Method::OneBit; }},
    {"bits", is_qsgd},
    {"qsgd-norm", is_qsgd},
    {"ternary-clip", [](Method m) { return m == Method::Ternary; }},
    {"bucket-size",
     [](Method m) { return m == Method::OneBit || m == Method::Ternary || m == Method::Qsgd; }},
    {"error-feedback", [](Method m) { return m != Method::None; }},
};

struct Renamed {
  const char* old_name;
  const char* new_name;
};

// frugal-bench's spellings before the options were shared; frugal-train's won.
constexpr Renamed kRenamed[] = {
    {"bucket", "bucket-size"},
    {"scaling", "onebit-scaling"},
    {"selection", "topk-selection"},
};

std::string quoted(std::string_view text) {
  return "'" + std::string(text) + "'";
}

// "a", "a or b", "a, b or c".
std::string one_of(const std::vector<std::string_view>& names) {
  std::string out;
  for (std::size_t i = 0; i < names.size(); ++i) {
    if (i > 0) out += i + 1 == names.size() ? " or " : ", ";
    out += names[i];
  }
  return out;
}

template <NamedEnum E>
E parse_choice(const po::variables_map& vm, const char* flag) {
  const std::string& text = vm[flag].as<std::string>();
  if (const std::optional<E> value = parse_enum<E>(text)) return *value;
  throw OptionError("--" + std::string(flag) + ": " + quoted(text) + " is not one of " +
                    enum_choices<E>());
}

void require_applicable(const po::variables_map& vm, const Scope& scope,
                        std::span<const Method> methods, std::string_view method_flag) {
  const po::variable_value& value = vm[std::string(scope.flag)];
  if (value.empty() || value.defaulted()) return;
  if (std::any_of(methods.begin(), methods.end(), scope.applies)) return;
  std::vector<std::string_view> applicable;
  for (const Method m : enum_values<Method>()) {
    if (scope.applies(m)) applicable.push_back(enum_name(m));
  }
  std::vector<std::string_view> given;
  for (const Method m : methods) {
    if (std::find(given.begin(), given.end(), enum_name(m)) == given.end()) {
      given.push_back(enum_name(m));
    }
  }
  std::string message = "--" + std::string(scope.flag) + " applies to " + std::string(method_flag) +
                        " " + one_of(applicable) + " only, ";
  if (given.empty()) {
    message += "and " + std::string(method_flag) + " names none of them";
  } else {
    message += "not ";
    for (std::size_t i = 0; i < given.size(); ++i) {
      message += (i > 0 ? ", " : "") + std::string(given[i]);
    }
  }
  throw OptionError(message);
}

}  // namespace

void add_compression_options(po::options_description& options) {
  const CompressionConfig defaults;
  // clang-format off
  options.add_options()
    ("density", po::value<double>()->value_name("D")->default_value(defaults.density, "0.01"),
     "topk: fraction of elements each rank keeps, in (0, 1]")
    ("topk-selection",
     po::value<std::string>()->value_name("S")->default_value(
         std::string(enum_name(defaults.selection))),
     "topk: exact (the k largest magnitudes) or sampled (DGC-style threshold estimated from a "
     "sample)")
    ("topk-scope",
     po::value<std::string>()->value_name("S")->default_value(
         std::string(enum_name(defaults.topk_scope))),
     "topk: global (one selection over each fused bucket) or per_tensor (each tensor keeps "
     "its share of k, at least 1)")
    ("topk-gtopk", po::value<std::string>()->value_name("on|off")->default_value("off"),
     "topk: gTop-k, the sum cut back to the k largest at every step of sparse_rd (each rank "
     "sends O(k log P) instead of O(k P); what a cut drops goes back to the senders' error "
     "feedback)")
    ("onebit-scaling",
     po::value<std::string>()->value_name("S")->default_value(
         std::string(enum_name(defaults.scaling))),
     "onebit: mean-abs (one value per chunk, ||x||_1/n, EF-SignSGD) or sign-means (the means of "
     "the non-negative and of the negative elements, 1-bit SGD)")
    ("bits", po::value<int>()->value_name("B")->default_value(defaults.bits),
     "qsgd: 2, 4 or 8 bits per level")
    ("qsgd-norm",
     po::value<std::string>()->value_name("N")->default_value(
         std::string(enum_name(defaults.norm))),
     "qsgd: scale each bucket by its l2 norm (the paper) or its max magnitude (lower variance)")
    ("ternary-clip", po::value<float>()->value_name("C")->default_value(defaults.clip_sigma),
     "ternary: clip each bucket to +-C times its RMS before taking the scale (TernGrad's "
     "2.5 sigma; 0: no clipping, scale = max|x|)")
    ("bucket-size", po::value<std::size_t>()->value_name("N")->default_value(defaults.bucket),
     "onebit chunk / ternary and qsgd bucket in elements (multiple of 8; 0: the method's "
     "default)")
    ("error-feedback", po::value<std::string>()->value_name("on|off")->default_value("on"),
     "compressed methods keep what compression dropped and add it back next step");
  // clang-format on
}

void add_renamed_compression_options(po::options_description& hidden) {
  for (const Renamed& r : kRenamed) {
    // Any number of values, so that the old "--bucket 512" reaches the hint rather than a
    // complaint about a stray or missing value.
    hidden.add_options()(
        r.old_name,
        po::value<std::vector<std::string>>()->multitoken()->zero_tokens()->notifier(
            [r](const std::vector<std::string>&) {
              throw OptionError("--" + std::string(r.old_name) + " was renamed --" + r.new_name);
            }));
  }
}

CompressionSettings compression_settings(const po::variables_map& vm,
                                         std::span<const Method> methods,
                                         std::string_view method_flag) {
  // The wrong flag for the method is the likelier mistake than its value: say that first.
  for (const Scope& scope : kScopes) require_applicable(vm, scope, methods, method_flag);
  CompressionSettings s;
  CompressionConfig& c = s.compression;
  c.density = vm["density"].as<double>();
  if (!(c.density > 0 && c.density <= 1)) {
    throw OptionError("--density: must be in (0, 1], got " + std::to_string(c.density));
  }
  c.selection = parse_choice<TopKSelection>(vm, "topk-selection");
  c.topk_scope = parse_choice<TopKScope>(vm, "topk-scope");
  const std::string gtopk = vm["topk-gtopk"].as<std::string>();
  if (gtopk != "on" && gtopk != "off") {
    throw OptionError("--topk-gtopk: " + quoted(gtopk) + " is not one of on, off");
  }
  c.gtopk = gtopk == "on";
  c.scaling = parse_choice<OneBitScaling>(vm, "onebit-scaling");
  c.bits = vm["bits"].as<int>();
  if (c.bits != 2 && c.bits != 4 && c.bits != 8) {
    throw OptionError("--bits: must be 2, 4 or 8, got " + std::to_string(c.bits));
  }
  c.norm = parse_choice<QsgdNorm>(vm, "qsgd-norm");
  c.clip_sigma = vm["ternary-clip"].as<float>();
  if (!(std::isfinite(c.clip_sigma) && c.clip_sigma >= 0)) {
    throw OptionError("--ternary-clip: must be >= 0 (0: no clipping), got " +
                      std::to_string(c.clip_sigma));
  }
  c.bucket = vm["bucket-size"].as<std::size_t>();
  if (c.bucket % 8 != 0) {
    throw OptionError("--bucket-size: must be a multiple of 8 (or 0), got " +
                      std::to_string(c.bucket));
  }
  const std::string& feedback = vm["error-feedback"].as<std::string>();
  if (feedback != "on" && feedback != "off") {
    throw OptionError("--error-feedback: " + quoted(feedback) + " is not one of on, off");
  }
  s.error_feedback = feedback == "on";
  return s;
}

}  // namespace frugal::compression::cli
