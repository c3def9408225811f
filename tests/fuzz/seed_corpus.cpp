// Writes the seed corpora of the fuzz targets: valid payloads of every method and variant (with
// the fuzz_payload knob byte in front), valid bootstrap frames, and valid collective blocks.
// Usage: seed-corpus DIR (creates DIR/payload, DIR/bootstrap, DIR/collective_headers).
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "agreement.hpp"
#include "frugal/compression/compressor.hpp"
#include "sparse_vector.hpp"
#include "tcp_store_protocol.hpp"

namespace fs = std::filesystem;
using namespace frugal;
using namespace frugal::compression;

namespace {

int g_files = 0;

void write(const fs::path& dir, const std::string& name, std::span<const std::byte> bytes) {
  std::ofstream(dir / name, std::ios::binary)
      .write(reinterpret_cast<const char*>(bytes.data()),
             static_cast<std::streamsize>(bytes.size()));
  ++g_files;
}

void payloads(const fs::path& dir) {
  std::vector<CompressionConfig> configs;
  for (Method m : {Method::None, Method::Fp16, Method::Bf16, Method::TopK, Method::OneBit,
                   Method::Ternary, Method::Qsgd}) {
    CompressionConfig c;
    c.method = m;
    c.non_finite = NonFinitePolicy::Flag;
    configs.push_back(c);
  }
  CompressionConfig c;
  c.non_finite = NonFinitePolicy::Flag;
  c.method = Method::TopK;
  c.values = TopKValues::Fp16;
  c.density = 0.2;
  configs.push_back(c);
  c.selection = TopKSelection::Sampled;
  configs.push_back(c);
  c = {};
  c.non_finite = NonFinitePolicy::Flag;
  c.method = Method::OneBit;
  c.scaling = OneBitScaling::SignMeans;
  c.bucket = 16;
  configs.push_back(c);
  for (int bits : {2, 8}) {
    c = {};
    c.non_finite = NonFinitePolicy::Flag;
    c.method = Method::Qsgd;
    c.bits = bits;
    c.norm = bits == 2 ? QsgdNorm::Max : QsgdNorm::L2;
    c.bucket = 8;
    configs.push_back(c);
  }
  c = {};
  c.non_finite = NonFinitePolicy::Flag;
  c.method = Method::Bf16;
  c.stochastic_rounding = true;
  configs.push_back(c);
  int i = 0;
  for (const CompressionConfig& config : configs) {
    const auto compressor = make_compressor(config);
    for (std::size_t n :
         {std::size_t{0}, std::size_t{1}, std::size_t{7}, std::size_t{33}, std::size_t{100}}) {
      std::vector<float> x(n);
      for (std::size_t j = 0; j < n; ++j) x[j] = std::sin(static_cast<float>(j) * 1.7f) * 3.0f;
      if (n > 5) x[5] = std::nanf("");
      Rng rng(1, 0, 0, 0);
      std::vector<std::byte> out(1 + compressor->max_encoded_bytes(n));
      const std::uint8_t knobs = config.selection == TopKSelection::Sampled ? 3 : 1;
      out[0] = std::byte{knobs};
      const std::size_t bytes = compressor->encode(x, std::span(out).subspan(1), rng);
      write(dir, "payload-" + std::to_string(i++), std::span(out).first(1 + bytes));
    }
  }
}

// Top-k payloads past one index chunk (65536), sparse and dense, so that the seeds hold delta,
// bitmap and empty chunks; returned for the sparse vector seeds too.
std::vector<std::vector<std::byte>> chunked_topk(const fs::path& dir) {
  std::vector<std::vector<std::byte>> out;
  const std::size_t n = 140000;
  std::vector<float> x(n, 0.0f);
  for (std::size_t j = 0; j < n; ++j) {
    // Large values in the first chunk's every other element, scattered ones elsewhere.
    x[j] = j < 65536 ? (j % 2 == 0 ? 10.0f : 0.0f) : (j % 97 == 0 ? 1.0f : 0.0f);
  }
  for (std::size_t k : {std::size_t{40000}, std::size_t{100}}) {
    CompressionConfig c;
    c.method = Method::TopK;
    c.k = k;
    const auto compressor = make_compressor(c);
    std::vector<std::byte> payload(1 + compressor->max_encoded_bytes(n));
    payload[0] = std::byte{1};
    Rng rng(1, 0, 0, 0);
    const std::size_t bytes = compressor->encode(x, std::span(payload).subspan(1), rng);
    payload.resize(1 + bytes);
    write(dir, "payload-chunked-" + std::to_string(k), payload);
    out.emplace_back(payload.begin() + 1, payload.end());
  }
  return out;
}

// Sparse allreduce messages: fuzz_sparse_vector's first byte picks the count (index into its
// table: 6 is 140000), then a serialized vector, sparse or dense.
void sparse_vectors(const fs::path& dir, const std::vector<std::vector<std::byte>>& payloads) {
  int i = 0;
  for (const auto& payload : payloads) {
    detail::SparseVector v = detail::SparseVector::from_topk_payload(payload, 140000);
    for (int dense = 0; dense < 2; ++dense) {
      if (dense == 1) v.make_dense();
      std::vector<std::byte> out(1 + v.wire_bytes());
      out[0] = std::byte{6};
      v.serialize(std::span(out).subspan(1));
      write(dir, "vector-" + std::to_string(i++), out);
    }
  }
}

void bootstrap(const fs::path& dir) {
  using namespace bootstrap_wire;
  const std::string token = "secret";
  std::vector<std::vector<std::byte>> frames;
  frames.push_back(Writer(Type::Hello).u32(kVersion).i32(1).i32(4).short_string(token).finish());
  frames.push_back(
      Writer(Type::Set).short_string("ucx/address/1").raw(std::string_view("abc")).finish());
  frames.push_back(Writer(Type::Get).short_string("ucx/address/0").finish());
  frames.push_back(Writer(Type::Error).u8(2).raw(std::string_view("no")).finish());
  for (std::size_t i = 0; i < frames.size(); ++i) {
    write(dir, "frame-" + std::to_string(i), frames[i]);
  }
}

void collective_headers(const fs::path& dir) {
  std::vector<std::byte> a(detail::CollectiveAgreement::kSize);
  detail::AgreementTerms terms;
  terms.kind = detail::CollectiveKind::Allreduce;
  terms.count = 1000;
  terms.dtype = DType::Float32;
  terms.op = ReduceOp::Sum;
  terms.algorithm = AllreduceAlgorithm::RecursiveDoubling;
  detail::CollectiveAgreement(terms, true).write(a);
  write(dir, "dense-agreement", a);
  // A compressed allreduce's block: compression digest in param, out-of-range flag set.
  terms.algorithm = AllreduceAlgorithm::TwoPhase;
  terms.compression.method = static_cast<std::uint8_t>(Method::Qsgd);
  terms.compression.bits = 4;
  terms.compression.bucket = 512;
  detail::CollectiveAgreement(terms, false, true).write(a);
  write(dir, "compressed-agreement", a);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2 || std::string(argv[1]) == "--help") {
    std::fprintf(stderr, "usage: %s DIR\nWrites the fuzz targets' seed corpora under DIR.\n",
                 argv[0]);
    return argc == 2 ? 0 : 2;
  }
  const fs::path root = argv[1];
  for (const char* d : {"payload", "bootstrap", "collective_headers", "sparse_vector"}) {
    fs::create_directories(root / d);
  }
  payloads(root / "payload");
  sparse_vectors(root / "sparse_vector", chunked_topk(root / "payload"));
  bootstrap(root / "bootstrap");
  collective_headers(root / "collective_headers");
  std::printf("seed-corpus: %d files under %s\n", g_files, argv[1]);
  return 0;
}
