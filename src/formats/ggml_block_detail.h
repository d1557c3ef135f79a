// Internal to the ggml block codecs (ggml_quants.cpp, ggml_quants_lowbit.cpp): ggml's rounding
// helpers and scale searches, shared so that every block type reuses one copy. Compiled with
// -ffp-contract=off, as ggml's reference arithmetic is.
#pragma once

#include <cstdint>

namespace quant::gguf::detail {

constexpr int QK = 32;
constexpr int QK_K = 256;
constexpr float kGroupMaxEps = 1e-15f;  // ggml's GROUP_MAX_EPS

void put_f16(std::uint8_t* p, float v);
float get_f16(const std::uint8_t* p);
int nearest_int(float v);
float make_qx_quants(int n, int nmax, const float* x, std::int8_t* L, const float* qw);
float make_qkx_quants(int n, int nmax, const float* x, const float* weights, std::uint8_t* L, float* the_min,
                      std::uint8_t* Laux, float rmin, float rdelta, int nstep, bool strict_eq, bool use_mad);
float make_qp_quants(int n, int nmax, const float* x, std::uint8_t* L, const float* qw);

// The low-bit types (ggml_quants_lowbit.cpp), one super-block (IQ4_NL: one block of 32) each;
// `imp` (the block's importance, or nullptr) selects ggml's imatrix variant.
void quantize_q2_k(const float* x, const float* imp, std::uint8_t* out);
void dequantize_q2_k(const std::uint8_t* in, float* y);
void quantize_q3_k(const float* x, const float* imp, std::uint8_t* out);
void dequantize_q3_k(const std::uint8_t* in, float* y);
void quantize_iq4(const float* x, const float* imp, int n, std::uint8_t* out);  // n = 32: IQ4_NL, 256: IQ4_XS
void dequantize_iq4(const std::uint8_t* in, int n, float* y);

}  // namespace quant::gguf::detail
