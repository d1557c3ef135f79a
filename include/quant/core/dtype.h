// Element types of stored tensors, and exact conversions between the float formats.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string_view>

namespace quant {

// F8_E4M3: OCP float8 e4m3fn (torch.float8_e4m3fn; FP8 checkpoints), read only.
enum class DType { F64, F32, F16, BF16, I64, I32, I16, I8, U8, F8_E4M3 };

// Bytes per element.
std::size_t dtype_size(DType dtype);
// safetensors spelling: "F32", "BF16", "I8", ...
std::string_view dtype_name(DType dtype);
std::optional<DType> parse_dtype(std::string_view name);
bool is_float(DType dtype);

// IEEE binary16 <-> binary32. Exact for every half value (subnormals, ±inf, NaN keep their
// class; NaN payloads are kept where they fit). f32 -> f16 rounds to nearest, ties to even,
// overflowing to ±inf.
float f16_to_f32(std::uint16_t h);
std::uint16_t f32_to_f16(float f);

// bfloat16 is the top half of a binary32. f32 -> bf16 rounds to nearest even; NaN stays a
// quiet NaN.
float bf16_to_f32(std::uint16_t b);
std::uint16_t f32_to_bf16(float f);

// float8 e4m3fn: 1 sign, 4 exponent (bias 7), 3 mantissa bits; no infinities, S.1111.111 is
// NaN, largest finite ±448, subnormals m/8 · 2^−6.
float f8e4m3_to_f32(std::uint8_t v);
// f32 -> e4m3fn, rounding to nearest (ties to even) and saturating at ±448 as vLLM's
// scaled_fp8_quant clamps before its cast; NaN stays NaN (0x7f / 0xff).
std::uint8_t f32_to_f8e4m3(float f);
// f8e4m3_to_f32(f32_to_f8e4m3(f)) for finite f, by rounding the float's own bits (fast path for
// activation fake-quant).
float round_to_f8e4m3(float f);

// Converts `n` elements of `dtype` stored little-endian at `src` to float.
void convert_to_f32(DType dtype, const std::byte* src, std::size_t n, float* dst);
// The same on the calling thread alone, for small spans (a GEMM kernel's tile of weights).
void convert_span_to_f32(DType dtype, const std::byte* src, std::size_t n, float* dst);
// Index of the first inf/NaN among `n` F16 or BF16 values at `src` (their exponent bits all ones), or n.
std::size_t first_non_finite_16(DType dtype, const std::byte* src, std::size_t n);
// The same scan over floats.
std::size_t first_non_finite(const float* p, std::size_t n);
// Converts floats to `dtype` (F32/F16/BF16/F64 only).
void convert_from_f32(DType dtype, std::span<const float> src, std::byte* dst);

}  // namespace quant
