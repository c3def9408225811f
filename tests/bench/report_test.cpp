#include "report.hpp"

#include <gtest/gtest.h>

#include <string>

namespace frugal::bench {
namespace {

Row sample_row() {
  Row row;
  row.method = "dense";
  row.algorithm = "ring";
  row.selected = "ring";
  row.ranks = 4;
  row.bytes = 1048576;
  row.iters = 100;
  row.warmup = 10;
  row.median_us = 250;
  row.p95_us = 312.5;
  row.min_us = 200;
  row.max_us = 400.25;
  row.algbw_gbps = 4.194304;
  row.busbw_gbps = 6.291456;
  row.vs_mpi = 1.25;
  row.check = "ok";
  return row;
}

TEST(Report, JsonLineHasEveryFieldInOrder) {
  EXPECT_EQ(json_line(sample_row()),
            R"({"method": "dense", "algorithm": "ring", "selected": "ring", "transport": "mpi", )"
            R"("ranks": 4, "bytes": 1048576, "dtype": "float32", "op": "sum", "iters": 100, )"
            R"("warmup": 10, "median_us": 250, "p95_us": 312.5, "min_us": 200, )"
            R"("max_us": 400.25, "algbw_gbps": 4.194304, )"
            R"("busbw_gbps": 6.291456, "vs_mpi": 1.25, "check": "ok", "wrong": null, )"
            R"("wire_bytes_per_rank": null, "compression_ratio": null, "effective_gbps": 0, )"
            R"("rel_error": null, "encode_us": null, "comm_us": null, "decode_us": null})");
}

TEST(Report, CompressedRowCarriesTheBreakdown) {
  Row row = sample_row();
  row.method = "onebit";
  row.algorithm = "auto";
  row.selected = "two_phase";
  row.wire_bytes_per_rank = 49152;
  row.compression_ratio = 32;
  row.effective_gbps = 4.194304;
  row.rel_error = 0.5;
  row.encode_us = 10;
  row.comm_us = 20.5;
  row.decode_us = 3;
  const std::string line = json_line(row);
  for (const char* field :
       {R"("method": "onebit")", R"("wire_bytes_per_rank": 49152)", R"("compression_ratio": 32)",
        R"("effective_gbps": 4.194304)", R"("rel_error": 0.5)", R"("encode_us": 10)",
        R"("comm_us": 20.5)", R"("decode_us": 3})"}) {
    EXPECT_NE(line.find(field), std::string::npos) << field << " in " << line;
  }
  EXPECT_EQ(display_algorithm(row), "onebit/auto(two_phase)");
  const std::string table = table_row(row);
  EXPECT_EQ(table.size(), table_header().size());
  row.algorithm = "two_phase";  // named on the command line (onebit:two_phase)
  EXPECT_EQ(display_algorithm(row), "onebit/two_phase");
  // The longest label keeps the columns aligned.
  row.method = "topk";
  row.algorithm = "auto";
  row.selected = "sparse_allgather";
  EXPECT_EQ(display_algorithm(row), "topk/auto(sparse_allgather)");
  EXPECT_EQ(table_row(row).size(), table_header().size());
  EXPECT_NE(table.find("48 KiB"), std::string::npos) << table;
  EXPECT_NE(table.find("32.0"), std::string::npos) << table;
  EXPECT_NE(table.find("5.0e-01"), std::string::npos) << table;
}

TEST(Report, JsonNullsAndEscapes) {
  Row row = sample_row();
  row.vs_mpi.reset();
  row.algorithm = "a\"b\\c\n";
  const std::string line = json_line(row);
  EXPECT_NE(line.find(R"("vs_mpi": null)"), std::string::npos) << line;
  EXPECT_NE(line.find(R"("algorithm": "a\"b\\c\n")"), std::string::npos) << line;
  EXPECT_EQ(line.find('\n'), std::string::npos);
  EXPECT_EQ(json_string(std::string("\x01", 1)), "\"\\u0001\"");
  EXPECT_EQ(json_number(0.1), "0.1");
  EXPECT_EQ(json_number(3), "3");
  EXPECT_EQ(json_number(1.0 / 0.0), "null");
}

TEST(Report, TableColumnsAlign) {
  const std::string header = table_header();
  Row row = sample_row();
  const std::string line = table_row(row);
  EXPECT_EQ(header.size(), line.size());
  // Every header column ends where the values of its column end (right-aligned numbers).
  for (const char* column : {"bytes", "median_us", "p95_us", "algbw_GB/s", "busbw_GB/s"}) {
    const std::size_t end = header.find(column) + std::string(column).size();
    EXPECT_NE(line[end - 1], ' ') << column << "\n" << header << "\n" << line;
    EXPECT_EQ(line[end], ' ') << column;
  }
  EXPECT_NE(line.find("1048576"), std::string::npos);
  EXPECT_NE(line.find("250.00"), std::string::npos);
  EXPECT_NE(line.find("312.50"), std::string::npos);
  EXPECT_NE(line.find("4.194"), std::string::npos);
  EXPECT_NE(line.find("6.291"), std::string::npos);
  EXPECT_NE(line.find("1.25"), std::string::npos);
  EXPECT_NE(line.find(" ok"), std::string::npos);
}

TEST(Report, TableAutoWrongAndNoBaseline) {
  Row row = sample_row();
  row.algorithm = "auto";
  row.selected = "recursive_doubling";
  row.check = "wrong";
  row.vs_mpi.reset();
  const std::string line = table_row(row);
  EXPECT_EQ(display_algorithm(row), "auto(recursive_doubling)");
  EXPECT_NE(line.find("auto(recursive_doubling)"), std::string::npos) << line;
  EXPECT_NE(line.find("WRONG"), std::string::npos) << line;
  EXPECT_EQ(line.size(), table_header().size());
  row.check = "off";
  EXPECT_EQ(table_row(row).back(), '-');
}

TEST(Report, CsvHasTheJsonFieldsInOrder) {
  EXPECT_EQ(csv_header(),
            "method,algorithm,selected,transport,ranks,bytes,dtype,op,iters,warmup,median_us,"
            "p95_us,min_us,max_us,algbw_gbps,busbw_gbps,vs_mpi,check,wrong,wire_bytes_per_rank,"
            "compression_ratio,effective_gbps,rel_error,encode_us,comm_us,decode_us");
  Row row = sample_row();
  row.wrong = 3;
  row.check = "wrong";
  EXPECT_EQ(csv_line(row),
            "dense,ring,ring,mpi,4,1048576,float32,sum,100,10,250,312.5,200,400.25,4.194304,"
            "6.291456,1.25,wrong,3,,,0,,,,");
  // Text with a separator or quote is quoted, quotes doubled (RFC 4180).
  row.algorithm = "a,\"b\"";
  const std::string line = csv_line(row);
  EXPECT_NE(line.find(R"(dense,"a,""b""",ring)"), std::string::npos) << line;
}

TEST(Report, TableShowsMinMaxEffectiveAndWrong) {
  Row row = sample_row();
  row.effective_gbps = 4.194304;
  row.wrong = 17;
  row.check = "wrong";
  const std::string header = table_header();
  const std::string line = table_row(row);
  ASSERT_EQ(header.size(), line.size());
  for (const auto& [column, value] : {std::pair{"min_us", "200.00"}, std::pair{"max_us", "400.25"},
                                      std::pair{"eff_GB/s", "4.194"}, std::pair{"wrong", "17"}}) {
    const std::size_t end = header.find(column) + std::string(column).size();
    EXPECT_EQ(line.substr(end - std::string(value).size(), std::string(value).size()), value)
        << column << "\n"
        << header << "\n"
        << line;
  }
}

TEST(Report, HumanBytes) {
  EXPECT_EQ(human_bytes(4), "4 B");
  EXPECT_EQ(human_bytes(4096), "4 KiB");
  EXPECT_EQ(human_bytes(128u << 20), "128 MiB");
  EXPECT_EQ(human_bytes(1536u << 20), "1.5 GiB");
}

}  // namespace
}  // namespace frugal::bench
