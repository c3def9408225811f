#pragma once

// Internal: one factory per method file. `config` has been validated by make_compressor.

#include <memory>

#include "frugal/compression/compressor.hpp"

namespace frugal::compression {

std::unique_ptr<Compressor> make_raw_compressor(const CompressionConfig& config);
std::unique_ptr<Compressor> make_fp16_compressor(const CompressionConfig& config);
std::unique_ptr<Compressor> make_bf16_compressor(const CompressionConfig& config);
std::unique_ptr<Compressor> make_topk_compressor(const CompressionConfig& config);
std::unique_ptr<Compressor> make_onebit_compressor(const CompressionConfig& config);
std::unique_ptr<Compressor> make_ternary_compressor(const CompressionConfig& config);
std::unique_ptr<Compressor> make_qsgd_compressor(const CompressionConfig& config);

}  // namespace frugal::compression
