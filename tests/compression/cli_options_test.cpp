#include <gtest/gtest.h>

#include <algorithm>
#include <boost/program_options.hpp>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "compression_cli.hpp"
#include "frugal/enum_names.hpp"

namespace frugal::compression::cli {
namespace {

namespace po = boost::program_options;

// Parses `args` as a program holding only the shared options would, then resolves them for
// `methods`. Throws OptionError (a po::error) as the programs see it.
CompressionSettings settings(const std::vector<std::string>& args, std::vector<Method> methods,
                             std::string_view method_flag = "--compress") {
  po::options_description shown, renamed;
  add_compression_options(shown);
  add_renamed_compression_options(renamed);
  shown.add(renamed);
  std::vector<const char*> argv{"prog"};
  for (const std::string& a : args) argv.push_back(a.c_str());
  po::variables_map vm;
  po::store(po::parse_command_line(static_cast<int>(argv.size()), argv.data(), shown), vm);
  po::notify(vm);
  return compression_settings(vm, methods, method_flag);
}

std::string error_of(const std::vector<std::string>& args, std::vector<Method> methods,
                     std::string_view method_flag = "--compress") {
  try {
    settings(args, std::move(methods), method_flag);
  } catch (const OptionError& e) {
    return e.what();
  }
  return "";
}

TEST(CompressionOptions, DefaultsAreTheLibrarysAndApplyToEveryMethod) {
  for (const Method m : enum_values<Method>()) {
    const CompressionSettings s = settings({}, {m});
    const CompressionConfig defaults;
    EXPECT_EQ(s.compression.density, defaults.density);
    EXPECT_EQ(s.compression.bits, defaults.bits);
    EXPECT_EQ(s.compression.bucket, defaults.bucket);
    EXPECT_EQ(s.compression.scaling, defaults.scaling);
    EXPECT_EQ(s.compression.norm, defaults.norm);
    EXPECT_EQ(s.compression.clip_sigma, defaults.clip_sigma);
    EXPECT_EQ(s.compression.selection, defaults.selection);
    EXPECT_EQ(s.compression.method, Method::None);  // the program sets it
    EXPECT_TRUE(s.error_feedback);
  }
}

TEST(CompressionOptions, ValuesReachTheConfig) {
  const CompressionSettings topk =
      settings({"--density", "0.05", "--topk-selection", "sampled", "--topk-scope", "per_tensor",
                "--error-feedback", "off"},
               {Method::TopK});
  EXPECT_EQ(topk.compression.density, 0.05);
  EXPECT_EQ(topk.compression.selection, TopKSelection::Sampled);
  EXPECT_EQ(topk.compression.topk_scope, TopKScope::PerTensor);
  EXPECT_EQ(settings({}, {Method::TopK}).compression.topk_scope, TopKScope::Global);
  EXPECT_FALSE(settings({}, {Method::TopK}).compression.gtopk);
  EXPECT_TRUE(settings({"--topk-gtopk", "on"}, {Method::TopK}).compression.gtopk);
  EXPECT_FALSE(topk.error_feedback);

  const CompressionSettings qsgd =
      settings({"--bits", "8", "--qsgd-norm", "max", "--bucket-size", "256"}, {Method::Qsgd});
  EXPECT_EQ(qsgd.compression.bits, 8);
  EXPECT_EQ(qsgd.compression.norm, QsgdNorm::Max);
  EXPECT_EQ(qsgd.compression.bucket, 256u);

  const CompressionSettings ternary = settings({"--ternary-clip", "3"}, {Method::Ternary});
  EXPECT_EQ(ternary.compression.clip_sigma, 3.0f);
  EXPECT_EQ(settings({"--ternary-clip", "0"}, {Method::Ternary}).compression.clip_sigma, 0.0f);
  EXPECT_EQ(error_of({"--ternary-clip", "2"}, {Method::Qsgd}),
            "--ternary-clip applies to --compress ternary only, not qsgd");

  const CompressionSettings onebit =
      settings({"--onebit-scaling", "sign-means", "--bucket-size", "1024"}, {Method::OneBit});
  EXPECT_EQ(onebit.compression.scaling, OneBitScaling::SignMeans);
  EXPECT_EQ(onebit.compression.bucket, 1024u);
}

TEST(CompressionOptions, OldSpellingsAreRefusedWithTheNewOne) {
  EXPECT_EQ(error_of({"--bucket", "512"}, {Method::OneBit}), "--bucket was renamed --bucket-size");
  EXPECT_EQ(error_of({"--bucket"}, {Method::OneBit}), "--bucket was renamed --bucket-size");
  EXPECT_EQ(error_of({"--scaling", "signmeans"}, {Method::OneBit}),
            "--scaling was renamed --onebit-scaling");
  EXPECT_EQ(error_of({"--selection=sampled"}, {Method::TopK}),
            "--selection was renamed --topk-selection");
}

// Each method-specific flag, given explicitly, against every method it does not apply to.
TEST(CompressionOptions, AFlagForAnotherMethodIsAnErrorNamingTheMethod) {
  struct Case {
    std::vector<std::string> args;
    std::vector<Method> applies;
    std::string scope;  // what the message says the flag applies to
  };
  const Case cases[] = {
      {{"--density", "0.5"}, {Method::TopK}, "--compress topk only"},
      {{"--topk-selection", "exact"}, {Method::TopK}, "--compress topk only"},
      {{"--topk-scope", "per_tensor"}, {Method::TopK}, "--compress topk only"},
      {{"--topk-gtopk", "on"}, {Method::TopK}, "--compress topk only"},
      {{"--onebit-scaling", "mean-abs"}, {Method::OneBit}, "--compress onebit only"},
      {{"--bits", "4"}, {Method::Qsgd}, "--compress qsgd only"},
      {{"--qsgd-norm", "l2"}, {Method::Qsgd}, "--compress qsgd only"},
      {{"--bucket-size", "64"},
       {Method::OneBit, Method::Ternary, Method::Qsgd},
       "--compress onebit, ternary or qsgd only"},
      {{"--error-feedback", "on"},
       {Method::Fp16, Method::Bf16, Method::TopK, Method::OneBit, Method::Ternary, Method::Qsgd},
       "--compress fp16, bf16, topk, onebit, ternary or qsgd only"},
  };
  for (const Case& c : cases) {
    for (const Method m : enum_values<Method>()) {
      const bool applies = std::find(c.applies.begin(), c.applies.end(), m) != c.applies.end();
      const std::string message = error_of(c.args, {m});
      if (applies) {
        EXPECT_EQ(message, "") << c.args[0] << " with " << enum_name(m);
      } else {
        EXPECT_EQ(message,
                  c.args[0] + " applies to " + c.scope + ", not " + std::string(enum_name(m)));
      }
    }
  }
  // The flag is wrong before its value is.
  EXPECT_EQ(error_of({"--density", "2"}, {Method::OneBit}),
            "--density applies to --compress topk only, not onebit");
}

// frugal-bench runs several methods at once: a flag must apply to at least one of them.
TEST(CompressionOptions, SeveralMethodsNeedOneTheFlagAppliesTo) {
  EXPECT_EQ(error_of({"--density", "0.1"}, {Method::Fp16, Method::TopK}, "--methods"), "");
  const CompressionSettings s =
      settings({"--density", "0.1", "--bits", "2"}, {Method::TopK, Method::Qsgd}, "--methods");
  EXPECT_EQ(s.compression.density, 0.1);
  EXPECT_EQ(s.compression.bits, 2);
  EXPECT_EQ(
      error_of({"--density", "0.1"}, {Method::Fp16, Method::OneBit, Method::OneBit}, "--methods"),
      "--density applies to --methods topk only, not fp16, onebit");
  EXPECT_EQ(error_of({"--error-feedback", "off"}, {}, "--methods"),
            "--error-feedback applies to --methods fp16, bf16, topk, onebit, ternary or qsgd "
            "only, and --methods names none of them");
}

TEST(CompressionOptions, BadValuesNameTheFlag) {
  // Expected message prefixes (std::to_string writes 0 as 0.000000).
  const std::vector<std::pair<std::vector<std::string>, std::string>> cases = {
      {{"--density", "0"}, "--density: must be in (0, 1], got 0"},
      {{"--density", "1.5"}, "--density: must be in (0, 1], got 1.5"},
      {{"--bits", "3"}, "--bits: must be 2, 4 or 8, got 3"},
      {{"--bucket-size", "12"}, "--bucket-size: must be a multiple of 8 (or 0), got 12"},
      {{"--onebit-scaling", "meanabs"},
       "--onebit-scaling: 'meanabs' is not one of mean-abs, sign-means"},
      {{"--qsgd-norm", "l1"}, "--qsgd-norm: 'l1' is not one of l2, max"},
      {{"--topk-selection", "random"}, "--topk-selection: 'random' is not one of exact, sampled"},
      {{"--topk-scope", "layer"}, "--topk-scope: 'layer' is not one of global, per_tensor"},
      {{"--error-feedback", "maybe"}, "--error-feedback: 'maybe' is not one of on, off"},
      {{"--topk-gtopk", "yes"}, "--topk-gtopk: 'yes' is not one of on, off"},
      {{"--ternary-clip", "-1"}, "--ternary-clip: must be >= 0 (0: no clipping), got -1"},
      {{"--ternary-clip", "inf"}, "--ternary-clip: must be >= 0 (0: no clipping), got inf"},
  };
  for (const auto& [args, expected] : cases) {
    const std::string message = error_of(args, enum_values<Method>(), "--methods");
    EXPECT_TRUE(message.starts_with(expected)) << message;
  }
}

// --help lists every shared option once, under one spelling; the renamed ones not at all.
TEST(CompressionOptions, HelpListsEachOptionOnce) {
  po::options_description shown;
  add_compression_options(shown);
  std::ostringstream out;
  out << shown;
  const std::string help = out.str();
  for (const char* flag :
       {"--density", "--topk-selection", "--topk-scope", "--topk-gtopk", "--onebit-scaling",
        "--bits", "--qsgd-norm", "--ternary-clip", "--bucket-size", "--error-feedback"}) {
    const std::size_t first = help.find(std::string("  ") + flag + " ");
    ASSERT_NE(first, std::string::npos) << flag;
    EXPECT_EQ(help.find(std::string("  ") + flag + " ", first + 1), std::string::npos) << flag;
  }
  for (const char* old : {"--bucket ", "--scaling ", "--selection "}) {
    EXPECT_EQ(help.find(old), std::string::npos) << old;
  }
}

}  // namespace
}  // namespace frugal::compression::cli
