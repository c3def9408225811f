#pragma once

// The compression options of every command line (frugal-train, frugal-bench), defined once so
// that each flag has one spelling, one default, one help text and one validation everywhere.
//
// The method itself is chosen differently by each program (frugal-train --compress METHOD,
// frugal-bench --methods LIST); these are the method's parameters, which the program turns into
// the CompressionConfig and error-feedback switch of its allreduce:
//
//   po::options_description shown("Compression"), hidden;
//   cli::add_compression_options(shown);
//   cli::add_renamed_compression_options(hidden);   // parsed, never listed by --help
//   ... po::store / po::notify over shown + hidden ...
//   const cli::CompressionSettings s = cli::compression_settings(vm, {method}, "--compress");

#include <boost/program_options.hpp>
#include <span>
#include <string>
#include <string_view>

#include "frugal/compression/compressor.hpp"

namespace frugal::compression::cli {

// Bad compression options. A program_options error, so that each program reports it exactly as
// it reports Boost's own (an unknown flag, a missing value).
class OptionError : public boost::program_options::error {
 public:
  using boost::program_options::error::error;
};

// What the options decide: the fields AllreduceOptions (and the trainer's TrainOptions) take.
struct CompressionSettings {
  // Every parameter; `method` is None: the program sets it (frugal-bench per row).
  CompressionConfig compression;
  bool error_feedback = true;
};

// Adds --density, --bits, --bucket-size, --onebit-scaling, --qsgd-norm, --ternary-clip,
// --topk-selection, --topk-scope, --topk-gtopk and --error-feedback, with their defaults.
void add_compression_options(boost::program_options::options_description& options);

// Adds the former spellings (--bucket, --scaling, --selection). Giving one fails during
// po::notify with an OptionError naming its new spelling. Keep them out of --help.
void add_renamed_compression_options(boost::program_options::options_description& hidden);

// The settings from a parsed command line holding add_compression_options' options. `methods`
// are the methods the command runs and `method_flag` the option that chose them, for messages.
// Throws OptionError naming the flag for a value out of range, and for a flag given explicitly
// that applies to none of `methods` (e.g. "--density applies to --compress topk only, not
// onebit"): it would otherwise be ignored without a word.
CompressionSettings compression_settings(const boost::program_options::variables_map& vm,
                                         std::span<const Method> methods,
                                         std::string_view method_flag);

}  // namespace frugal::compression::cli
