#include "options.hpp"

#include <gtest/gtest.h>

#include <sstream>
#include <string>
#include <vector>

#include "report.hpp"

namespace frugal::bench {
namespace {

using Sizes = std::vector<std::size_t>;

ParseResult parse(std::vector<std::string> args) {
  args.insert(args.begin(), "frugal-bench");
  std::vector<const char*> argv;
  for (const std::string& a : args) argv.push_back(a.c_str());
  return parse_command_line(static_cast<int>(argv.size()), argv.data());
}

// The UsageError message of parse(args), or "" when it parses.
std::string usage_error(std::vector<std::string> args) {
  try {
    parse(std::move(args));
  } catch (const UsageError& e) {
    return e.what();
  }
  return "";
}

TEST(ByteCount, PlainAndSuffixes) {
  EXPECT_EQ(parse_byte_count("0", "--x"), 0u);
  EXPECT_EQ(parse_byte_count("4", "--x"), 4u);
  EXPECT_EQ(parse_byte_count("1K", "--x"), 1024u);
  EXPECT_EQ(parse_byte_count("64k", "--x"), 64u * 1024);
  EXPECT_EQ(parse_byte_count("128M", "--x"), 128u << 20);
  EXPECT_EQ(parse_byte_count("2G", "--x"), std::size_t{2} << 30);
}

TEST(ByteCount, BadInputNamesFlagAndValue) {
  for (const char* bad : {"", "K", "-4", "4KB", "4 K", "1.5M", "x", "4T", "99999999999999999999"}) {
    try {
      parse_byte_count(bad, "--sizes");
      ADD_FAILURE() << "accepted '" << bad << "'";
    } catch (const UsageError& e) {
      const std::string message = e.what();
      EXPECT_NE(message.find("--sizes"), std::string::npos) << message;
      EXPECT_NE(message.find(std::string("'") + bad + "'"), std::string::npos) << message;
    }
  }
  EXPECT_THROW(parse_byte_count("18014398509481984G", "--x"), UsageError);  // overflows
}

TEST(Sizes, RangeDoubles) {
  EXPECT_EQ(parse_sizes("4:64"), (Sizes{4, 8, 16, 32, 64}));
  EXPECT_EQ(parse_sizes("1M:8M"), (Sizes{1 << 20, 2 << 20, 4 << 20, 8 << 20}));
  const Sizes full = parse_sizes("4:128M");
  EXPECT_EQ(full.size(), 26u);
  EXPECT_EQ(full.front(), 4u);
  EXPECT_EQ(full.back(), 128u << 20);
}

TEST(Sizes, SingleAndMaxOffTheSequence) {
  EXPECT_EQ(parse_sizes("4K"), (Sizes{4096}));
  EXPECT_EQ(parse_sizes("8:8"), (Sizes{8}));
  EXPECT_EQ(parse_sizes("4:20"), (Sizes{4, 8, 16, 20}));
  EXPECT_EQ(parse_sizes("12:100"), (Sizes{12, 24, 48, 96, 100}));
}

TEST(Sizes, ListsOfValuesAndRanges) {
  EXPECT_EQ(parse_sizes("1M,102400000"), (Sizes{1 << 20, 102400000}));
  EXPECT_EQ(parse_sizes("4K,16:64,32"), (Sizes{16, 32, 64, 4096}));  // sorted, duplicates once
  EXPECT_EQ(parse_sizes("1G"), Sizes{std::size_t{1} << 30});
  EXPECT_THROW(parse_sizes("4K,"), UsageError);
  EXPECT_THROW(parse_sizes(",4K"), UsageError);
  EXPECT_THROW(parse_sizes("4K,6"), UsageError);  // 6 is not a multiple of 4
}

TEST(Sizes, BadInput) {
  EXPECT_THROW(parse_sizes(""), UsageError);
  EXPECT_THROW(parse_sizes(":4"), UsageError);
  EXPECT_THROW(parse_sizes("4:"), UsageError);
  EXPECT_THROW(parse_sizes("4:8:16"), UsageError);
  EXPECT_THROW(parse_sizes("0:16"), UsageError);
  EXPECT_THROW(parse_sizes("6"), UsageError);     // not whole float32 elements
  EXPECT_THROW(parse_sizes("4:6"), UsageError);   // MAX not whole elements
  EXPECT_THROW(parse_sizes("64:4"), UsageError);  // MIN > MAX
  try {
    parse_sizes("1M:4K");
    ADD_FAILURE();
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("larger than MAX"), std::string::npos) << e.what();
  }
}

TEST(Methods, NamesOrderAndErrors) {
  const std::vector<Method> all = parse_methods("ring,rd,rabenseifner,auto,mpi");
  ASSERT_EQ(all.size(), 5u);
  EXPECT_EQ(all[0], Method::dense(AllreduceAlgorithm::Ring));
  EXPECT_EQ(all[1], Method::dense(AllreduceAlgorithm::RecursiveDoubling));
  EXPECT_EQ(all[2], Method::dense(AllreduceAlgorithm::Rabenseifner));
  EXPECT_EQ(all[3], Method::dense(AllreduceAlgorithm::Auto));
  EXPECT_EQ(all[4], Method::mpi());
  EXPECT_EQ(
      parse_methods("mpi,recursive_doubling"),
      (std::vector<Method>{Method::mpi(), Method::dense(AllreduceAlgorithm::RecursiveDoubling)}));
  EXPECT_THROW(parse_methods(""), UsageError);
  EXPECT_THROW(parse_methods("ring,"), UsageError);
  EXPECT_THROW(parse_methods("ring,tree"), UsageError);
  EXPECT_THROW(parse_methods("rd,recursive_doubling"), UsageError);  // the same twice
  EXPECT_EQ(parse_methods("ring,memcpy,mpi"),
            (std::vector<Method>{Method::dense(AllreduceAlgorithm::Ring), Method::memcpy(),
                                 Method::mpi()}));
  EXPECT_THROW(parse_methods("memcpy,memcpy"), UsageError);
  EXPECT_EQ(method_field(Method::memcpy()), "memcpy");
  EXPECT_EQ(algorithm_field(Method::memcpy()), "memcpy");
  EXPECT_EQ(method_field(Method::mpi()), "mpi");
  EXPECT_EQ(method_field(all[0]), "dense");
  EXPECT_EQ(algorithm_field(Method::mpi()), "MPI_Allreduce");
  EXPECT_EQ(algorithm_field(all[1]), "recursive_doubling");
}

TEST(Timeout, Seconds) {
  EXPECT_EQ(parse_timeout("30").count(), 30000);
  EXPECT_EQ(parse_timeout("0.5").count(), 500);
  EXPECT_EQ(parse_timeout("0.0001").count(), 1);
  for (const char* bad : {"", "0", "-1", "abc", "5s", "inf", "nan"})
    EXPECT_THROW(parse_timeout(bad), UsageError) << bad;
}

TEST(CommandLine, Defaults) {
  const ParseResult r = parse({});
  EXPECT_FALSE(r.help);
  const BenchOptions& o = r.options;
  EXPECT_EQ(o.sizes, parse_sizes("4:128M"));
  EXPECT_EQ(o.iters, 100);
  EXPECT_EQ(o.warmup, 10);
  EXPECT_TRUE(o.scale_iterations);
  EXPECT_EQ(o.methods.size(), 5u);
  EXPECT_EQ(o.op, ReduceOp::Sum);
  EXPECT_FALSE(o.timeout.has_value());
  EXPECT_FALSE(o.check);
  EXPECT_TRUE(o.json_path.empty());
  EXPECT_TRUE(o.csv_path.empty());
  EXPECT_EQ(o.segment_bytes, 0u);
  EXPECT_EQ(o.mode, Mode::All);
}

TEST(CommandLine, ModesSetDefaultsThatFlagsOverride) {
  const BenchOptions latency = parse({"--mode", "latency"}).options;
  EXPECT_EQ(latency.sizes, parse_sizes("4:64K"));
  EXPECT_EQ(latency.sizes.front(), 4u);
  EXPECT_EQ(latency.sizes.back(), 65536u);
  EXPECT_EQ(latency.iters, 1000);
  EXPECT_EQ(latency.warmup, 100);
  const BenchOptions bandwidth = parse({"--mode=bandwidth"}).options;
  EXPECT_EQ(bandwidth.sizes.front(), 1u << 20);
  EXPECT_EQ(bandwidth.sizes.back(), 128u << 20);
  EXPECT_EQ(bandwidth.iters, 20);
  EXPECT_EQ(bandwidth.warmup, 3);
  const BenchOptions custom =
      parse({"--mode", "latency", "--sizes", "8", "--iters", "7", "--warmup", "2"}).options;
  EXPECT_EQ(custom.sizes, Sizes{8});
  EXPECT_EQ(custom.iters, 7);
  EXPECT_EQ(custom.warmup, 2);
  EXPECT_EQ(custom.mode, Mode::Latency);
  EXPECT_NE(usage_error({"--mode", "throughput"}).find("--mode"), std::string::npos);
}

TEST(CommandLine, RanksCheckAndCheckAliasAndCsv) {
  EXPECT_TRUE(parse({"--ranks-check"}).options.check);
  EXPECT_TRUE(parse({"--check"}).options.check);
  EXPECT_FALSE(parse({}).options.check);
  EXPECT_EQ(parse({"--csv", "out.csv"}).options.csv_path, "out.csv");
  EXPECT_NE(usage_error({"--csv", ""}).find("--csv"), std::string::npos);
  EXPECT_NE(usage_error({"--csv", "x", "--json", "x"}).find("same file"), std::string::npos);
}

TEST(CommandLine, EveryFlag) {
  const ParseResult r =
      parse({"--sizes",    "1M:4M",        "--iters",         "7",       "--warmup=0",
             "--no-scale", "--algorithms", "ring,mpi",        "--dtype", "float32",
             "--op",       "average",      "--timeout",       "2.5",     "--check",
             "--json",     "out.jsonl",    "--segment-bytes", "256K",    "-q"});
  const BenchOptions& o = r.options;
  EXPECT_EQ(o.sizes, (Sizes{1 << 20, 2 << 20, 4 << 20}));
  EXPECT_EQ(o.iters, 7);
  EXPECT_EQ(o.warmup, 0);
  EXPECT_FALSE(o.scale_iterations);
  EXPECT_EQ(o.methods,
            (std::vector<Method>{Method::dense(AllreduceAlgorithm::Ring), Method::mpi()}));
  EXPECT_EQ(o.op, ReduceOp::Average);
  ASSERT_TRUE(o.timeout.has_value());
  EXPECT_EQ(o.timeout->count(), 2500);
  EXPECT_TRUE(o.check);
  EXPECT_EQ(o.json_path, "out.jsonl");
  EXPECT_EQ(o.segment_bytes, 256u * 1024);
  EXPECT_TRUE(o.quiet);
}

TEST(CommandLine, Help) {
  EXPECT_TRUE(parse({"--help"}).help);
  EXPECT_TRUE(parse({"-h"}).help);
  const std::string help = help_text();
  for (const char* flag : {"--mode",
                           "--sizes",
                           "--iters",
                           "--warmup",
                           "--no-scale",
                           "--algorithms",
                           "--methods",
                           "--density",
                           "--bits",
                           "--bucket-size",
                           "--onebit-scaling",
                           "--topk-selection",
                           "--qsgd-norm",
                           "--error-feedback",
                           "--topk-gtopk",
                           "--powersgd-rank",
                           "--powersgd-min-compression-rate",
                           "--seed",
                           "--dtype",
                           "--op",
                           "--transport",
                           "--timeout",
                           "--ranks-check",
                           "--check",
                           "--json",
                           "--csv",
                           "--segment-bytes",
                           "--quiet"})
    EXPECT_NE(help.find(flag), std::string::npos) << flag;
  // Every table column and every JSON/CSV field is explained.
  std::string columns = table_header() + " " + csv_header();
  for (char& c : columns) {
    if (c == ',') c = ' ';
  }
  std::istringstream words(columns);
  for (std::string column; words >> column;)
    EXPECT_NE(help.find(column), std::string::npos) << column;
  for (const char* formula : {"algbw x 2(P-1)/P", "uncompressed bytes / median time",
                              "bytes / median time", "1 / vs_mpi"})
    EXPECT_NE(help.find(formula), std::string::npos) << formula;
}

TEST(CommandLine, BadInputNamesTheProblem) {
  EXPECT_NE(usage_error({"--iters", "0"}).find("--iters"), std::string::npos);
  EXPECT_NE(usage_error({"--iters", "many"}).find("iters"), std::string::npos);
  EXPECT_NE(usage_error({"--warmup", "-1"}).find("--warmup"), std::string::npos);
  EXPECT_NE(usage_error({"--dtype", "float16"}).find("float16"), std::string::npos);
  EXPECT_NE(usage_error({"--op", "max"}).find("'max'"), std::string::npos);
  EXPECT_NE(usage_error({"--sizes", "4:3"}).find("--sizes"), std::string::npos);
  EXPECT_NE(usage_error({"--algorithms", "tree"}).find("'tree'"), std::string::npos);
  EXPECT_NE(usage_error({"--segment-bytes", "0"}).find("--segment-bytes"), std::string::npos);
  EXPECT_NE(usage_error({"--timeout", "never"}).find("--timeout"), std::string::npos);
  EXPECT_NE(usage_error({"--bogus"}).find("bogus"), std::string::npos);
  EXPECT_NE(usage_error({"--iter", "5"}).find("iter"), std::string::npos);  // no prefix guessing
  EXPECT_FALSE(usage_error({"stray"}).empty());
  EXPECT_FALSE(usage_error({"--sizes"}).empty());  // value missing
}

TEST(Iterations, ScaledFrom16MiB) {
  BenchOptions o;  // iters 100, warmup 10
  EXPECT_EQ(iterations_at(4, o), 100);
  EXPECT_EQ(iterations_at((16u << 20) - 4, o), 100);
  EXPECT_EQ(iterations_at(16u << 20, o), 100);
  EXPECT_EQ(iterations_at(32u << 20, o), 50);
  EXPECT_EQ(iterations_at(64u << 20, o), 25);
  EXPECT_EQ(iterations_at(128u << 20, o), 12);
  EXPECT_EQ(iterations_at(std::size_t{1} << 30, o), kMinLargeIterations);
  EXPECT_EQ(warmup_at(8u << 20, o), 10);
  EXPECT_EQ(warmup_at(32u << 20, o), 5);
  EXPECT_EQ(warmup_at(128u << 20, o), 1);
  o.iters = 5;
  o.warmup = 0;
  EXPECT_EQ(iterations_at(128u << 20, o), 5);  // never above --iters
  EXPECT_EQ(warmup_at(128u << 20, o), 0);
  o.iters = 100;
  o.warmup = 10;
  o.scale_iterations = false;
  EXPECT_EQ(iterations_at(128u << 20, o), 100);
  EXPECT_EQ(warmup_at(128u << 20, o), 10);
}

}  // namespace
}  // namespace frugal::bench

namespace frugal::bench {
namespace {

TEST(Options, MethodsCombineWithAlgorithmsAndParameters) {
  const std::vector<Method> algorithms = parse_methods("ring,mpi");
  const std::vector<Method> all = combine_methods("dense,onebit,topk", algorithms);
  ASSERT_EQ(all.size(), 4U);
  EXPECT_EQ(all[0], Method::dense(AllreduceAlgorithm::Ring));
  EXPECT_TRUE(all[1].is_mpi());
  EXPECT_EQ(all[2], Method::compressed(compression::Method::OneBit));
  EXPECT_EQ(method_field(all[3]), "topk");
  // Without dense, only the baseline stays from --algorithms.
  const std::vector<Method> compressed_only = combine_methods("qsgd", algorithms);
  ASSERT_EQ(compressed_only.size(), 2U);
  EXPECT_TRUE(compressed_only[0].is_mpi());
  EXPECT_THROW(combine_methods("onebit,onebit", algorithms), UsageError);
  EXPECT_THROW(combine_methods("gzip", algorithms), UsageError);
  EXPECT_THROW(combine_methods("dense,", algorithms), UsageError);

  // A compressed method may name its algorithm; each (method, algorithm) is its own row.
  const std::vector<Method> named =
      combine_methods("onebit:two_phase,onebit:allgather,onebit,topk:sparse_rd", algorithms);
  ASSERT_EQ(named.size(), 5U);
  EXPECT_EQ(named[1],
            Method::compressed(compression::Method::OneBit, AllreduceAlgorithm::TwoPhase));
  EXPECT_EQ(named[2],
            Method::compressed(compression::Method::OneBit, AllreduceAlgorithm::Allgather));
  EXPECT_EQ(named[3], Method::compressed(compression::Method::OneBit));
  EXPECT_EQ(algorithm_field(named[2]), "allgather");
  EXPECT_EQ(algorithm_field(named[3]), "auto");
  EXPECT_EQ(named[4].algorithm, AllreduceAlgorithm::SparseRecursiveDoubling);
  for (const char* bad : {"onebit:ring", "topk:allgather", "qsgd:sparse_rd", "onebit:tree",
                          "onebit:", "dense:ring", "onebit,onebit:auto", "dense,dense"}) {
    EXPECT_THROW(combine_methods(bad, algorithms), UsageError) << bad;
  }
  try {
    combine_methods("ternary:sparse_allgather", algorithms);
    ADD_FAILURE() << "ternary:sparse_allgather accepted";
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("cannot run 'ternary'; ternary runs two_phase, allgather"),
              std::string::npos)
        << e.what();
  }

  const char* argv[] = {"frugal-bench", "--methods",        "topk,qsgd", "--density",
                        "0.05",         "--bits",           "8",         "--error-feedback",
                        "off",          "--topk-selection", "sampled",   "--qsgd-norm",
                        "max",          "--bucket-size",    "64"};
  const ParseResult r = parse_command_line(15, argv);
  EXPECT_EQ(r.options.compression.density, 0.05);
  EXPECT_EQ(r.options.compression.bits, 8);
  EXPECT_FALSE(r.options.error_feedback);
  EXPECT_EQ(r.options.compression.selection, compression::TopKSelection::Sampled);
  EXPECT_EQ(r.options.compression.norm, compression::QsgdNorm::Max);
  EXPECT_EQ(r.options.compression.bucket, 64u);
  const ParseResult onebit = parse({"--methods", "dense,onebit", "--onebit-scaling", "sign-means"});
  EXPECT_EQ(onebit.options.compression.scaling, compression::OneBitScaling::SignMeans);
  for (const std::vector<const char*>& bad :
       {std::vector<const char*>{"frugal-bench", "--methods", "topk", "--density", "0"},
        std::vector<const char*>{"frugal-bench", "--methods", "qsgd", "--bits", "3"},
        std::vector<const char*>{"frugal-bench", "--methods", "onebit", "--bucket-size", "12"},
        std::vector<const char*>{"frugal-bench", "--methods", "onebit", "--onebit-scaling", "l2"},
        std::vector<const char*>{"frugal-bench", "--methods", "fp16", "--error-feedback",
                                 "maybe"}}) {
    const std::string message = usage_error({bad.begin() + 1, bad.end()});
    EXPECT_NE(message.find(std::string(bad[3]) + ": "), std::string::npos) << message;
  }
}

// "<method>:reduce_scatter" times the compressed reduce-scatter alone, dense or a quantizer.
TEST(Options, ReduceScatterRows) {
  const std::vector<Method> algorithms = parse_methods("mpi");
  const std::vector<Method> rs =
      combine_methods("dense:reduce_scatter,onebit:reduce_scatter,onebit", algorithms);
  ASSERT_EQ(rs.size(), 4U);
  EXPECT_EQ(rs[1], Method::halves(compression::Method::None));
  EXPECT_FALSE(rs[1].is_compressed());
  EXPECT_EQ(rs[2], Method::halves(compression::Method::OneBit));
  EXPECT_TRUE(rs[2].is_compressed());
  EXPECT_NE(rs[2], rs[3]);  // the allreduce of the same method is another row
  EXPECT_EQ(algorithm_field(rs[1]), "reduce_scatter");
  EXPECT_EQ(method_field(rs[2]), "onebit");
  for (const char* bad : {"topk:reduce_scatter", "none:reduce_scatter", "zip:reduce_scatter",
                          "qsgd:reduce_scatter,qsgd:reduce_scatter"}) {
    EXPECT_THROW(combine_methods(bad, algorithms), UsageError) << bad;
  }
}

// "<method>:shard_allgather" times the compressed allgather alone, dense or a quantizer.
TEST(Options, ShardAllgatherRows) {
  const std::vector<Method> algorithms = parse_methods("mpi");
  const std::vector<Method> ag = combine_methods(
      "dense:shard_allgather,onebit:shard_allgather,onebit:reduce_scatter", algorithms);
  ASSERT_EQ(ag.size(), 4U);
  EXPECT_EQ(ag[1], Method::gather(compression::Method::None));
  EXPECT_TRUE(ag[1].shard_allgather);
  EXPECT_FALSE(ag[1].reduce_scatter);
  EXPECT_FALSE(ag[1].is_compressed());
  EXPECT_TRUE(ag[2].is_compressed());
  EXPECT_NE(ag[2], ag[3]);
  EXPECT_EQ(algorithm_field(ag[1]), "shard_allgather");
  EXPECT_EQ(method_field(ag[2]), "onebit");
  EXPECT_EQ(combine_methods("onebit:allgather", algorithms)[1].algorithm,
            AllreduceAlgorithm::Allgather);  // the allreduce's algorithm, not this
  for (const char* bad : {"topk:shard_allgather", "none:shard_allgather",
                          "fp16:shard_allgather,fp16:shard_allgather"}) {
    EXPECT_THROW(combine_methods(bad, algorithms), UsageError) << bad;
  }
}

// "<method>:hierarchical" runs hierarchical_allreduce, dense or any compressed method.
TEST(Options, HierarchicalRows) {
  const std::vector<Method> algorithms = parse_methods("mpi");
  const std::vector<Method> h = combine_methods(
      "dense:hierarchical,onebit:hierarchical,topk:hierarchical,onebit", algorithms);
  ASSERT_EQ(h.size(), 5U);
  EXPECT_EQ(h[1], Method::hierarchy(compression::Method::None));
  EXPECT_TRUE(h[1].hierarchical);
  EXPECT_FALSE(h[1].is_compressed());
  EXPECT_FALSE(h[1].reduce_scatter);
  EXPECT_TRUE(h[2].is_compressed());
  EXPECT_EQ(h[3].compression, compression::Method::TopK);
  EXPECT_NE(h[2], h[4]);  // the flat allreduce of the same method is another row
  EXPECT_EQ(method_field(h[1]), "dense");
  EXPECT_EQ(method_field(h[2]), "onebit");
  EXPECT_EQ(algorithm_field(h[2]), "hierarchical");
  for (const char* bad : {"none:hierarchical", "zip:hierarchical",
                          "qsgd:hierarchical,qsgd:hierarchical", "powersgd:hierarchical"}) {
    EXPECT_THROW(combine_methods(bad, algorithms), UsageError) << bad;
  }
}

// "topk:gtopk" is gTop-k's row beside plain top-k's; --topk-gtopk on turns every top-k row into
// gTop-k, which runs on sparse recursive doubling only.
TEST(Options, GlobalTopKRows) {
  const std::vector<Method> algorithms = parse_methods("mpi");
  const std::vector<Method> g = combine_methods("topk:gtopk,topk:sparse_rd", algorithms);
  ASSERT_EQ(g.size(), 3U);
  EXPECT_EQ(g[1], Method::global_topk());
  EXPECT_TRUE(g[1].gtopk);
  EXPECT_EQ(g[1].algorithm, AllreduceAlgorithm::SparseRecursiveDoubling);
  EXPECT_NE(g[1], g[2]);
  EXPECT_EQ(method_field(g[1]), "topk");
  EXPECT_EQ(algorithm_field(g[1]), "gtopk");
  EXPECT_FALSE(g[2].gtopk);
  for (const char* bad : {"onebit:gtopk", "dense:gtopk", "topk:gtopk,topk:gtopk"}) {
    EXPECT_THROW(combine_methods(bad, algorithms), UsageError) << bad;
  }
  EXPECT_EQ(usage_error({"--methods", "topk:gtopk", "--density", "0.1"}), "");
  EXPECT_EQ(usage_error({"--methods", "topk:sparse_allgather", "--topk-gtopk", "on"}),
            "--topk-gtopk on runs topk or topk:sparse_rd, not topk:sparse_allgather");
  EXPECT_TRUE(parse({"--methods", "topk", "--topk-gtopk", "on"}).options.compression.gtopk);
  EXPECT_FALSE(parse({"--methods", "topk:gtopk"}).options.compression.gtopk);
}

// "powersgd" takes --powersgd-rank, "powersgd:R" names its rank; --error-feedback applies.
TEST(Options, PowerSgdRows) {
  const ParseResult r = parse({"--methods", "powersgd,powersgd:4", "--powersgd-rank", "2",
                               "--powersgd-min-compression-rate", "3", "--error-feedback", "off"});
  const std::vector<Method>& m = r.options.methods;
  ASSERT_EQ(m.size(), 3U);  // mpi, then the two PowerSGD rows
  EXPECT_TRUE(m[1].is_powersgd());
  EXPECT_FALSE(m[1].is_compressed());
  EXPECT_EQ(m[1].powersgd_rank, 2);
  EXPECT_EQ(m[2], Method::powersgd(4));
  EXPECT_EQ(method_field(m[1]), "powersgd");
  EXPECT_EQ(algorithm_field(m[1]), "rank2");
  EXPECT_EQ(algorithm_field(m[2]), "rank4");
  EXPECT_EQ(r.options.powersgd_min_compression_rate, 3.0);
  EXPECT_FALSE(r.options.error_feedback);
  EXPECT_EQ(parse({"--methods", "powersgd"}).options.methods[1].powersgd_rank, 1);  // default
  EXPECT_TRUE(parse({"--methods", "powersgd"}).options.error_feedback);

  EXPECT_EQ(usage_error({"--methods", "powersgd,powersgd:1"}),
            "--methods: powersgd and powersgd:1 are the same row (--powersgd-rank 1)");
  EXPECT_EQ(usage_error({"--methods", "powersgd:3,powersgd", "--powersgd-rank", "3"}),
            "--methods: powersgd and powersgd:3 are the same row (--powersgd-rank 3)");
  EXPECT_EQ(usage_error({"--methods", "powersgd", "--powersgd-rank", "0"}),
            "--powersgd-rank: must be >= 1, got 0");
  EXPECT_NE(usage_error({"--methods", "powersgd", "--powersgd-min-compression-rate", "0.5"})
                .find("--powersgd-min-compression-rate: must be finite and >= 1"),
            std::string::npos);
  EXPECT_EQ(usage_error({"--methods", "onebit", "--powersgd-rank", "2"}),
            "--powersgd-rank applies to --methods powersgd only, and --methods names none of it");
  EXPECT_EQ(usage_error({"--powersgd-min-compression-rate", "4"}),
            "--powersgd-min-compression-rate applies to --methods powersgd only, and --methods "
            "names none of it");
  // The other methods' parameters are still refused with PowerSGD alone.
  EXPECT_EQ(usage_error({"--methods", "powersgd", "--density", "0.1"}),
            "--density applies to --methods topk only, and --methods names none of them");
  for (const char* bad : {"powersgd:0", "powersgd:", "powersgd:two", "powersgd:2x",
                          "powersgd:2,powersgd:2", "powersgd:-1"}) {
    EXPECT_FALSE(usage_error({"--methods", bad}).empty()) << bad;
  }
}

// The compression options are frugal-train's too (compression/cli): one spelling each.
TEST(Options, RenamedFlagsAreRefusedWithTheNewSpelling) {
  EXPECT_EQ(usage_error({"--methods", "onebit", "--bucket", "512"}),
            "--bucket was renamed --bucket-size");
  EXPECT_EQ(usage_error({"--methods", "onebit", "--scaling", "signmeans"}),
            "--scaling was renamed --onebit-scaling");
  EXPECT_EQ(usage_error({"--methods", "topk", "--selection", "sampled"}),
            "--selection was renamed --topk-selection");
}

// A flag that applies to none of the methods given would be ignored: an error naming them.
TEST(Options, AFlagForNoneOfTheMethodsIsAnError) {
  EXPECT_EQ(usage_error({"--methods", "fp16,onebit", "--density", "0.1"}),
            "--density applies to --methods topk only, not fp16, onebit");
  EXPECT_EQ(usage_error({"--methods", "topk", "--bits", "2"}),
            "--bits applies to --methods qsgd only, not topk");
  EXPECT_EQ(usage_error({"--methods", "qsgd:allgather,qsgd", "--onebit-scaling", "sign-means"}),
            "--onebit-scaling applies to --methods onebit only, not qsgd");
  EXPECT_EQ(usage_error({"--methods", "topk", "--bucket-size", "64"}),
            "--bucket-size applies to --methods onebit, ternary or qsgd only, not topk");
  EXPECT_EQ(usage_error({"--error-feedback", "off"}),  // --methods dense
            "--error-feedback applies to --methods fp16, bf16, topk, onebit, ternary or qsgd "
            "only, and --methods names none of them");
  // One method it applies to is enough.
  EXPECT_EQ(usage_error({"--methods", "dense,fp16,topk", "--density", "0.1"}), "");
  EXPECT_EQ(usage_error({"--methods", "none"}),
            "--methods: unknown method 'none'; known: dense, fp16, bf16, topk, onebit, ternary, "
            "qsgd, powersgd");
}

TEST(Options, HelpListsEachSharedOptionOnce) {
  const std::string help = help_text();
  for (const char* flag : {"--density", "--topk-selection", "--onebit-scaling", "--bits",
                           "--qsgd-norm", "--bucket-size", "--error-feedback"}) {
    const std::string entry = std::string("  ") + flag + " ";
    const std::size_t first = help.find(entry);
    ASSERT_NE(first, std::string::npos) << flag;
    EXPECT_EQ(help.find(entry, first + 1), std::string::npos) << flag;
  }
  for (const char* old : {"  --bucket ", "  --scaling ", "  --selection "}) {
    EXPECT_EQ(help.find(old), std::string::npos) << old;
  }
}

TEST(Options, ModeNamesRoundTrip) {
  const std::vector<Mode> modes = enum_values<Mode>();
  EXPECT_EQ(modes.size(), 3u);
  for (const Mode m : modes) EXPECT_EQ(parse_mode(to_string(m)), m);
  EXPECT_EQ(enum_choices<Mode>(), "all, latency, bandwidth");
  EXPECT_THROW(parse_mode("fast"), UsageError);
}

}  // namespace
}  // namespace frugal::bench
