// ggml block quantization, byte-compatible with ggml's reference quantizers (ggml-quants.c):
// the same block layouts and, without importance weights, the same bytes as llama.cpp's
// llama-quantize. Layouts are documented in docs/formats.md.
#pragma once

#include <cstdint>
#include <vector>

#include "quant/io/gguf.h"

namespace quant::gguf {

// Quantizes one row of n values (n a multiple of the type's block size). `importance` (n
// values, or nullptr) weighs each element's squared error in the scale searches, as llama.cpp
// does with an imatrix; types without a search (F32, F16, Q8_0) ignore it.
void quantize_row(GgmlType type, const float* x, std::int64_t n, const float* importance, std::uint8_t* out);
void dequantize_row(GgmlType type, const std::uint8_t* in, std::int64_t n, float* y);

// Whole [rows, n] matrix (row-major), rows in parallel.
std::vector<std::uint8_t> quantize_matrix(GgmlType type, const float* x, std::int64_t rows, std::int64_t n,
                                          const float* importance);

// A tensor of a GGUF file as float (any block type quant can write), rows in order.
std::vector<float> dequantize_tensor(const File& file, const std::string& name);

}  // namespace quant::gguf
