// The cost model's formulas against hand-computed cases, its calibration file and row reader,
// the transport fit, and bad inputs refused by name.
#include <gtest/gtest.h>

#include <cmath>
#include <sstream>
#include <string>
#include <vector>

#include "calibration.hpp"
#include "cost_model.hpp"
#include "frugal/compression/topk_indices.hpp"
#include "frugal/error.hpp"
#include "measured_rows.hpp"
#include "transport_fit.hpp"

namespace frugal::model {
namespace {

using bench::Method;
using compression::CompressionConfig;

// Every kernel free, a link of exactly `rate` payload bytes per second: only the network terms.
Scenario network_only(std::size_t n, int ranks, double rate = 1e9) {
  Scenario s;
  s.elements = n;
  s.ranks = ranks;
  s.cores = 0;
  s.link.bytes_per_second = rate;
  s.link.payload_share = 1.0;
  return s;
}

Method ring() {
  return Method::dense(AllreduceAlgorithm::Ring);
}

TEST(CostModel, DenseRingIsSeedFormula) {
  // T = L·(agreement + 2(P−1) rounds) + 2·γ·m·(P−1)/P, with γ = 1/rate.
  const Calibration c;  // all zero
  for (const int p : {2, 4, 8}) {
    const std::size_t n = 1000 * static_cast<std::size_t>(p);
    const Prediction r = predict(ring(), {}, network_only(n, p), c);
    const double m = 4.0 * static_cast<double>(n);
    EXPECT_DOUBLE_EQ(r.wire_bytes, 2.0 * m * (p - 1) / p) << p;
    EXPECT_DOUBLE_EQ(r.wire_bytes, ring_wire_bytes(m, p));
    EXPECT_NEAR(r.seconds, 2.0 * m * (p - 1) / p / 1e9, 1e-15) << p;
    EXPECT_EQ(r.rounds, 2 * (p - 1) + static_cast<int>(std::log2(p)));
  }
}

TEST(CostModel, LatencyTermsCountRounds) {
  Calibration c;
  c.message_seconds = 1e-3;
  Scenario s = network_only(1 << 16, 8, 1e15);  // the link never limits
  // Agreement log2 8 = 3 rounds, then ring 14, recursive doubling 3, Rabenseifner 6.
  EXPECT_NEAR(predict(ring(), {}, s, c).seconds, 17e-3, 1e-9);
  EXPECT_NEAR(predict(Method::dense(AllreduceAlgorithm::RecursiveDoubling), {}, s, c).seconds, 6e-3,
              1e-9);
  EXPECT_NEAR(predict(Method::dense(AllreduceAlgorithm::Rabenseifner), {}, s, c).seconds, 9e-3,
              1e-9);
  // Non-powers of two fold in and out: P = 6 is pof2 4, 2 + 2 agreement rounds, 2 + 2 steps.
  s.ranks = 6;
  EXPECT_EQ(predict(Method::dense(AllreduceAlgorithm::RecursiveDoubling), {}, s, c).rounds, 8);
  // An added link delay counts once per round.
  s.ranks = 8;
  s.link.latency_seconds = 1e-3;
  EXPECT_NEAR(predict(ring(), {}, s, c).seconds, 34e-3, 1e-9);
}

TEST(CostModel, RoundsWithManyPeersPayPerMessage) {
  Calibration c;
  c.post_seconds = 1e-5;
  const Scenario s = network_only(1 << 16, 8, 1e15);
  // Allgather: one round of 7 peers: 6 extra messages; the agreement's rounds have one peer.
  EXPECT_NEAR(
      predict(Method::compressed(compression::Method::OneBit, AllreduceAlgorithm::Allgather), {}, s,
              c)
          .latency_seconds,
      6e-5, 1e-12);
  // Two-phase: two such rounds; the dense ring's rounds each have one peer.
  EXPECT_NEAR(predict(Method::compressed(compression::Method::OneBit, AllreduceAlgorithm::TwoPhase),
                      {}, s, c)
                  .latency_seconds,
              12e-5, 1e-12);
  EXPECT_NEAR(predict(ring(), {}, s, c).latency_seconds, 0, 1e-12);
}

TEST(CostModel, RabenseifnerSendsRingBytesInFewerRounds) {
  const Calibration c;
  const Scenario s = network_only(1 << 20, 8);
  const Prediction rab = predict(Method::dense(AllreduceAlgorithm::Rabenseifner), {}, s, c);
  const Prediction rd = predict(Method::dense(AllreduceAlgorithm::RecursiveDoubling), {}, s, c);
  EXPECT_DOUBLE_EQ(rab.wire_bytes, ring_wire_bytes(4.0 * (1 << 20), 8));
  EXPECT_DOUBLE_EQ(rd.wire_bytes, 3 * 4.0 * (1 << 20));  // log2 P whole buffers
}

TEST(CostModel, TwoPhaseOneBitBytesFromTheCompressor) {
  // n = 32768 on P = 4: chunks of 8192; a 1-bit payload of 8192 is 32 (header) + 8 (two 4096
  // chunks' scales) + 1024 (signs) = 1064 bytes. Rank 0 sends 3 chunks in each phase.
  const Calibration c;
  const Scenario s = network_only(32768, 4);
  const Prediction r = predict(
      Method::compressed(compression::Method::OneBit, AllreduceAlgorithm::TwoPhase), {}, s, c);
  CompressionConfig config;
  config.method = compression::Method::OneBit;
  EXPECT_EQ(compression::make_compressor(config)->encoded_bytes(8192), 1064u);
  EXPECT_DOUBLE_EQ(r.wire_bytes, 6 * 1064.0);
  EXPECT_NEAR(r.seconds, 6 * 1064.0 / 1e9, 1e-15);  // two rounds of 3 payloads each way
  EXPECT_EQ(r.rounds, 2 + 2);                       // agreement + two phases
}

TEST(CostModel, AllgatherSendsWholePayloadToEveryPeer) {
  const Calibration c;
  CompressionConfig config;
  config.method = compression::Method::Fp16;
  const std::size_t payload = *compression::make_compressor(config)->encoded_bytes(4096);
  EXPECT_EQ(payload, 32u + 2 * 4096);
  const Method fp16 = Method::compressed(compression::Method::Fp16, AllreduceAlgorithm::Allgather);
  EXPECT_DOUBLE_EQ(predict(fp16, {}, network_only(4096, 8), c).wire_bytes, 7.0 * payload);
  // At P = 2 two-phase and allgather send the same payload bytes (plus one header).
  const Method tp = Method::compressed(compression::Method::Fp16, AllreduceAlgorithm::TwoPhase);
  EXPECT_NEAR(predict(tp, {}, network_only(4096, 2), c).wire_bytes,
              predict(fp16, {}, network_only(4096, 2), c).wire_bytes, 32.0 + 1e-9);
}

TEST(CostModel, SparseRecursiveDoublingDoublesThenTurnsDense) {
  const Calibration c;
  CompressionConfig config;
  config.density = 0.1;  // k = 100 of n = 1000
  const Method srd =
      Method::compressed(compression::Method::TopK, AllreduceAlgorithm::SparseRecursiveDoubling);
  // P = 8: 100, 200, 400 disjoint entries, each a 16-byte head, 4-byte values and the coded
  // indices (at most a 1 + 125 byte bitmap of 1000 elements).
  const auto sparse = [](double e) {
    return 16.0 + 4 * e + compression::expected_topk_index_bytes(1000, e);
  };
  EXPECT_LE(compression::expected_topk_index_bytes(1000, 400), 126.0);
  const double three = sparse(100) + sparse(200) + sparse(400);
  EXPECT_DOUBLE_EQ(predict(srd, config, network_only(1000, 8), c).wire_bytes, three);
  // P = 16: the fourth step would be 800 entries, past half density: it goes dense.
  EXPECT_DOUBLE_EQ(predict(srd, config, network_only(1000, 16), c).wire_bytes, three + 4016.0);
}

TEST(CostModel, EfficiencyLimitsConnectionsBusyBothWays) {
  const Calibration c;
  Scenario s = network_only(1 << 20, 2);
  s.link.efficiency = 0.5;
  const double m = 4.0 * (1 << 20);
  // P = 2: the ring's one connection carries both directions: half the rate.
  EXPECT_NEAR(predict(ring(), {}, s, c).seconds, 2 * m / 1e9, 1e-12);
  // P = 4: the ring sends to one peer and receives from another: the full rate.
  s.ranks = 4;
  EXPECT_NEAR(predict(ring(), {}, s, c).seconds, 2 * m * 3 / 4 / 1e9, 1e-12);
  // P = 4, allgather: 3 connections each both ways; the link (3 payloads each way at rate 1)
  // is slower than one connection's payload at rate 0.5.
  CompressionConfig config;
  config.method = compression::Method::Fp16;
  const double payload = static_cast<double>(
      *compression::make_compressor(config)->encoded_bytes(std::size_t{1} << 20));
  const Method ag = Method::compressed(compression::Method::Fp16, AllreduceAlgorithm::Allgather);
  EXPECT_NEAR(predict(ag, {}, s, c).seconds, 3 * payload / 1e9, 1e-12);
  // P = 2, allgather: one connection both ways: half the rate.
  s.ranks = 2;
  EXPECT_NEAR(predict(ag, {}, s, c).seconds, 2 * payload / 1e9, 1e-12);
}

TEST(CostModel, SharedCoresStretchComputation) {
  Calibration c;  // no sizes: every n takes the large kernels
  c.large.reduce = 1e-9;
  Scenario s = network_only(1 << 20, 8, 1e15);
  const double alone = predict(ring(), {}, s, c).compute_seconds;
  EXPECT_NEAR(alone, 7.0 / 8 * (1 << 20) * 1e-9, 1e-12);  // (P−1) blocks of n/P reduced
  s.cores = 2;
  EXPECT_NEAR(predict(ring(), {}, s, c).compute_seconds, 4 * alone, 1e-12);  // 8 ranks / 2
  s.cores = 16;
  EXPECT_NEAR(predict(ring(), {}, s, c).compute_seconds, alone, 1e-12);  // never below 1
}

TEST(CostModel, StackBoundWhenSlowerThanTheLink) {
  Calibration c;
  c.stack_seconds_per_byte = 1e-9;  // 1 GB/s of send + receive together
  const Scenario s = network_only(1 << 20, 2, 1e15);
  // P = 2 ring: 2 rounds of m/2 out and m/2 in.
  EXPECT_NEAR(predict(ring(), {}, s, c).wire_seconds, 2 * (4.0 * (1 << 20)) * 1e-9, 1e-12);
}

TEST(CostModel, MpiIsTheFasterPairwiseShapeWithoutAgreement) {
  Calibration c;
  c.message_seconds = 1e-4;
  for (const std::size_t n : {std::size_t{256}, std::size_t{1} << 22}) {
    const Scenario s = network_only(n, 8);
    double best = 1e300;
    for (const AllreduceAlgorithm a :
         {AllreduceAlgorithm::RecursiveDoubling, AllreduceAlgorithm::Rabenseifner}) {
      best = std::min(best, predict(Method::dense(a), {}, s, c).seconds - 3 * 1e-4);
    }
    EXPECT_NEAR(predict(Method::mpi(), {}, s, c).seconds, best, 1e-12) << n;
  }
}

TEST(CostModel, AutoResolvesWithTheLibrarysChoice) {
  const CompressionConfig config;
  EXPECT_EQ(resolved_algorithm(Method::compressed(compression::Method::OneBit), config, 1 << 20, 2),
            AllreduceAlgorithm::Allgather);
  EXPECT_EQ(resolved_algorithm(Method::dense(AllreduceAlgorithm::Auto), config, 16, 4),
            AllreduceAlgorithm::RecursiveDoubling);
  EXPECT_EQ(
      method_label(Method::compressed(compression::Method::Qsgd, AllreduceAlgorithm::TwoPhase),
                   config, 1000, 4),
      "qsgd/two_phase");
}

void expect_invalid(const std::function<void()>& f, const std::string& names) {
  try {
    f();
    FAIL() << "no error; expected one naming " << names;
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::InvalidArgument);
    EXPECT_NE(std::string(e.what()).find(names), std::string::npos) << e.what();
  }
}

TEST(CostModel, BadInputsAreRefusedByName) {
  const Calibration c;
  Scenario s = network_only(1000, 0);
  expect_invalid([&] { predict(ring(), {}, s, c); }, "ranks");
  s.ranks = 2;
  s.elements = 0;
  expect_invalid([&] { predict(ring(), {}, s, c); }, "elements");
  s.elements = 1000;
  s.link.bytes_per_second = 0;
  expect_invalid([&] { predict(ring(), {}, s, c); }, "rate");
  s.link.bytes_per_second = 1e9;
  s.link.latency_seconds = -1;
  expect_invalid([&] { predict(ring(), {}, s, c); }, "latency");
  s.link.latency_seconds = 0;
  s.cores = -1;
  expect_invalid([&] { predict(ring(), {}, s, c); }, "cores");
  s.cores = 0;
  expect_invalid([&] { predict(Method::memcpy(), {}, s, c); }, "method");
  expect_invalid(
      [&] {
        predict(Method::compressed(compression::Method::TopK, AllreduceAlgorithm::TwoPhase), {}, s,
                c);
      },
      "method");
  expect_invalid([&] { predict(Method::dense(AllreduceAlgorithm::TwoPhase), {}, s, c); }, "method");
  expect_invalid([&] { c.large.kernels(compression::Method::None); }, "method");
  expect_invalid([] { ring_wire_bytes(1, 0); }, "ranks");
}

Calibration sample_calibration() {
  Calibration c;
  c.small_elements = 4096;
  c.large_elements = 1 << 20;
  c.machine = "test machine, 2 cores";
  c.small.scan = 1.5e-10;
  c.large.scan = 3.5e-10;
  c.small.reduce = 2.5e-10;
  c.message_seconds = 3e-5;
  c.post_seconds = 4e-6;
  c.stack_seconds_per_byte = 1.25e-9;
  c.large.kernels(compression::Method::Qsgd).decode_sum_payload = 7e-11;
  return c;
}

TEST(Calibration, RoundTrip) {
  std::stringstream file;
  write_calibration(file, sample_calibration());
  const Calibration back = read_calibration(file, "mem");
  EXPECT_EQ(back.machine, "test machine, 2 cores");
  EXPECT_EQ(back.small_elements, 4096u);
  EXPECT_EQ(back.large_elements, 1u << 20);
  EXPECT_DOUBLE_EQ(back.small.scan, 1.5e-10);
  EXPECT_DOUBLE_EQ(back.large.scan, 3.5e-10);
  EXPECT_DOUBLE_EQ(back.message_seconds, 3e-5);
  EXPECT_DOUBLE_EQ(back.post_seconds, 4e-6);
  EXPECT_DOUBLE_EQ(back.large.kernels(compression::Method::Qsgd).decode_sum_payload, 7e-11);
}

TEST(Calibration, InterpolatesInLogNBetweenItsSizes) {
  const Calibration c = sample_calibration();  // scan 1.5e-10 at 4096 = 2^12, 3.5e-10 at 2^20
  EXPECT_DOUBLE_EQ(c.at(1024).scan, 1.5e-10);  // below the small size: small
  EXPECT_DOUBLE_EQ(c.at(4096).scan, 1.5e-10);
  EXPECT_NEAR(c.at(65536).scan, 2.5e-10, 1e-22);  // 2^16: half way in log n
  EXPECT_DOUBLE_EQ(c.at(double(1 << 20)).scan, 3.5e-10);
  EXPECT_DOUBLE_EQ(c.at(1e9).scan, 3.5e-10);  // above the large size: large
  EXPECT_NEAR(c.at(65536).kernels(compression::Method::Qsgd).decode_sum_payload, 3.5e-11, 1e-22);
}

std::string written() {
  std::stringstream file;
  write_calibration(file, sample_calibration());
  return file.str();
}

void expect_refused(const std::string& text, const std::string& why) {
  std::istringstream in(text);
  expect_invalid([&] { read_calibration(in, "cal.txt"); }, "calibration file 'cal.txt'");
  std::istringstream again(text);
  expect_invalid([&] { read_calibration(again, "cal.txt"); }, why);
}

TEST(Calibration, OtherFormatsAndVersionsAreRefused) {
  const std::string good = written();
  const std::string body = good.substr(good.find('\n'));
  expect_refused("frugal-kernel-bench 1" + body, "another format");
  expect_refused("{\"method\": \"dense\"}\n", "another format");
  expect_refused("frugal-model-calibration 1" + body, "another version (1)");
  expect_refused(good + "small.scan 1e-9\n", "'small.scan' given twice");
  expect_refused(good + "warp_speed 1\n", "unknown key 'warp_speed'");
  std::string missing = good;
  const std::size_t line = missing.find("large.reduce ");
  missing.erase(line, missing.find('\n', line) - line + 1);
  expect_refused(missing, "'large.reduce' is missing");
  std::string negative = good;
  negative.replace(negative.find("small.fill 0"), 12, "small.fill -1");
  expect_refused(negative, "'small.fill'");
  std::string sizes = good;
  sizes.replace(sizes.find("small_elements 4096"), 19, "small_elements 9999999");
  expect_refused(sizes, "at most large_elements");
}

const char* const kRow =
    R"({"method": "onebit", "algorithm": "two_phase", "selected": "two_phase", "transport": )"
    R"("mpi", "ranks": 4, "bytes": 1048576, "median_us": 2500.5, "wire_bytes_per_rank": 99480})";

TEST(MeasuredRows, ReadsFrugalBenchRows) {
  std::istringstream in(std::string(kRow) + "\n\n" +
                        R"({"method": "mpi", "algorithm": "MPI_Allreduce", "selected": )"
                        R"("MPI_Allreduce", "ranks": 2, "bytes": 4096, "median_us": 10, )"
                        R"("min_us": 8, "max_us": 12, )"
                        R"("wire_bytes_per_rank": null})"
                        "\n");
  const std::vector<MeasuredRow> rows = read_rows(in, "rows.jsonl");
  ASSERT_EQ(rows.size(), 2u);
  EXPECT_EQ(rows[0].method,
            Method::compressed(compression::Method::OneBit, AllreduceAlgorithm::TwoPhase));
  EXPECT_EQ(rows[0].ranks, 4);
  EXPECT_EQ(rows[0].bytes, 1048576u);
  EXPECT_DOUBLE_EQ(rows[0].median_seconds, 2500.5e-6);
  EXPECT_DOUBLE_EQ(*rows[0].wire_bytes_per_rank, 99480);
  EXPECT_FALSE(rows[0].min_seconds.has_value());
  EXPECT_TRUE(rows[1].method.is_mpi());
  EXPECT_FALSE(rows[1].wire_bytes_per_rank.has_value());
  EXPECT_DOUBLE_EQ(*rows[1].min_seconds, 8e-6);
  EXPECT_DOUBLE_EQ(*rows[1].max_seconds, 12e-6);
}

TEST(MeasuredRows, BadLinesAreRefusedWithFileAndLine) {
  auto refused = [](const std::string& text, const std::string& why) {
    std::istringstream in(text);
    expect_invalid([&] { read_rows(in, "rows.jsonl"); }, why);
  };
  refused(std::string(kRow) + "\nnot json\n", "rows.jsonl:2");
  std::string unknown = kRow;
  unknown.replace(unknown.find("\"onebit\""), 8, "\"twobit\"");
  refused(unknown, "unknown method 'twobit'");
  std::string algorithm = kRow;
  algorithm.replace(algorithm.find("\"two_phase\", \"transport\""), 11, "\"four_phase\"");
  refused(algorithm, "unknown algorithm 'four_phase'");
  std::string no_ranks = kRow;
  no_ranks.replace(no_ranks.find("\"ranks\""), 7, "\"nodes\"");
  refused(no_ranks, "no field 'ranks'");
}

// Rows the model itself predicts with known transport constants: the fit must recover them.
TEST(TransportFit, RecoversLatencyStackAndEfficiency) {
  Calibration truth = sample_calibration();
  truth.message_seconds = 2e-3;
  truth.stack_seconds_per_byte = 1.5e-9;
  auto row = [&](std::size_t bytes, const Link& link, int cores) {
    Scenario s;
    s.elements = bytes / 4;
    s.ranks = 2;
    s.cores = cores;
    s.link = link;
    MeasuredRow r;
    r.method = ring();
    r.ranks = 2;
    r.bytes = bytes;
    r.median_seconds = predict(r.method, {}, s, truth).seconds;
    return r;
  };
  Link unlimited;
  unlimited.bytes_per_second = 1e15;
  // The small row holds 3 rounds of latency plus a little stack time, which the fit neglects.
  const std::vector<MeasuredRow> transport{row(4096, unlimited, 0), row(1 << 26, unlimited, 0)};
  Calibration fitted = sample_calibration();
  fit_transport(fitted, transport);
  EXPECT_NEAR(fitted.message_seconds, 2e-3, 2e-3 * 0.01);
  EXPECT_NEAR(fitted.stack_seconds_per_byte, 1.5e-9, 1.5e-9 * 0.01);

  Link shaped;
  shaped.bytes_per_second = 125e6;
  shaped.efficiency = 0.5;
  const std::vector<MeasuredRow> at_rate{row(1 << 20, shaped, 2), row(1 << 26, shaped, 2)};
  EXPECT_NEAR(fit_efficiency(truth, at_rate, shaped, 2), 0.5, 1e-9);
  expect_invalid([&] { fit_transport(fitted, std::vector<MeasuredRow>{}); }, "transport");
  expect_invalid([&] { fit_transport(fitted, std::vector<MeasuredRow>{transport[0]}); },
                 "two sizes");
  expect_invalid([&] { fit_efficiency(truth, std::vector<MeasuredRow>{}, shaped, 2); },
                 "efficiency");
}

}  // namespace
}  // namespace frugal::model
