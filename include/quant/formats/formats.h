// Packing of quantized matrices into the tensors of the checkpoint formats (pure functions over
// QuantizedMatrix; the codecs in codec.h write and read them). Byte layouts: docs/formats.md.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "quant/core/quantizer.h"
#include "quant/formats/codec.h"

namespace quant::formats {

// Packs `n` codes of `bits` bits into a little-endian bit stream of 32-bit words, LSB first:
// code i occupies stream bits [i·bits, (i+1)·bits); codes may straddle words (3, 5, 6 bits).
void pack_bits(const std::uint32_t* codes, std::size_t n, int bits, std::uint32_t* words);
void unpack_bits(const std::uint32_t* words, std::size_t n, int bits, std::uint32_t* codes);

// GPTQ v1 (AutoGPTQ/GPTQModel checkpoint_format "gptq").
struct GptqTensors {
  std::vector<std::int32_t> qweight;  // [in·bits/32, out]: column o is the bit stream of row o's codes
  std::vector<std::int32_t> qzeros;   // [n_groups, out·bits/32]: bit stream over o of (zero − 1)
  std::vector<std::uint16_t> scales;  // fp16 [n_groups, out]
  std::vector<std::int32_t> g_idx;    // [in]
};
GptqTensors pack_gptq(const QuantizedMatrix& m);
QuantizedMatrix unpack_gptq(const GptqTensors& t, std::int64_t out, std::int64_t in, int bits);

// AutoAWQ GEMM (version "gemm"), 4-bit: eight codes per int32, nibble k holding output channel
// 8c + kAwqOrder[k].
inline constexpr int kAwqOrder[8] = {0, 2, 4, 6, 1, 3, 5, 7};
struct AwqTensors {
  std::vector<std::int32_t> qweight;  // [in, out/8]
  std::vector<std::int32_t> qzeros;   // [n_groups, out/8], raw zeros
  std::vector<std::uint16_t> scales;  // fp16 [n_groups, out]
};
AwqTensors pack_awq(const QuantizedMatrix& m);
QuantizedMatrix unpack_awq(const AwqTensors& t, std::int64_t out, std::int64_t in, std::int64_t group_size);

// Look-up-table format for non-uniform (k-means) quantization, SqueezeLLM's layout: codes
// packed like gptq's qweight (each column a bit stream of one output row's codes, padded to
// whole words), fp16 codebooks, and optional CSR outliers that replace the decoded values.
struct LutTensors {
  std::vector<std::int32_t> qweight;         // [ceil(in·bits/32), out]
  std::vector<std::uint16_t> lookup_table;   // fp16 [out, 2^bits] or [out, n_groups, 2^bits]
  std::vector<std::int32_t> outlier_rowptr;  // [out + 1], empty without outliers
  std::vector<std::int32_t> outlier_cols;    // [nnz]
  std::vector<float> outlier_vals;           // [nnz], stored in the source weight's dtype
};
std::int64_t code_rows(std::int64_t in, int bits);  // ceil(in·bits/32)
LutTensors pack_lut(const QuantizedMatrix& m);
QuantizedMatrix unpack_lut(const LutTensors& t, std::int64_t out, std::int64_t in, int bits, std::int64_t n_groups);

}  // namespace quant::formats
