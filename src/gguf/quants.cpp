// ggml block formats. Without importance weights every quantizer reproduces ggml's
// quantize_row_*_ref arithmetic step by step (float32, the same rounding helpers and clamps), so
// the bytes equal llama-quantize's; with weights, the imatrix variants' weighted scale search.
#include "quant/gguf/quants.h"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstring>

#include "quant/dtype.h"
#include "quant/error.h"

namespace quant::gguf {

namespace {

constexpr int QK = 32;
constexpr int QK_K = 256;
constexpr float kGroupMaxEps = 1e-15f;

void put_f16(std::uint8_t* p, float v) {
  const std::uint16_t h = f32_to_f16(v);
  std::memcpy(p, &h, 2);
}
float get_f16(const std::uint8_t* p) {
  std::uint16_t h;
  std::memcpy(&h, p, 2);
  return f16_to_f32(h);
}
// ggml's rounding of |v| < 2^22 to the nearest integer (ties to even) through the float mantissa.
int nearest_int(float v) {
  float val = v + 12582912.f;
  int i;
  std::memcpy(&i, &val, sizeof(int));
  return (i & 0x007fffff) - 0x00400000;
}

// ggml's make_qx_quants: symmetric codes in [−nmax, nmax) with a weighted least-squares scale
// and a search over 18 perturbed inverse scales. rmse_type 1; `qw` weights or x² by default.
float make_qx_quants(int n, int nmax, const float* x, std::int8_t* L, const float* qw) {
  float max = 0, amax = 0;
  for (int i = 0; i < n; ++i) {
    const float ax = std::fabs(x[i]);
    if (ax > amax) {
      amax = ax;
      max = x[i];
    }
  }
  if (amax < kGroupMaxEps) {
    std::fill(L, L + n, 0);
    return 0.f;
  }
  float iscale = -nmax / max;
  float sumlx = 0, suml2 = 0;
  for (int i = 0; i < n; ++i) {
    int l = nearest_int(iscale * x[i]);
    l = std::max(-nmax, std::min(nmax - 1, l));
    L[i] = static_cast<std::int8_t>(l + nmax);
    const float w = qw ? qw[i] : x[i] * x[i];
    sumlx += w * x[i] * l;
    suml2 += w * l * l;
  }
  float scale = suml2 ? sumlx / suml2 : 0.0f;
  float best = scale * sumlx;
  for (int is = -9; is <= 9; ++is) {
    if (is == 0) continue;
    iscale = -(nmax + 0.1f * is) / max;
    sumlx = suml2 = 0;
    for (int i = 0; i < n; ++i) {
      int l = nearest_int(iscale * x[i]);
      l = std::max(-nmax, std::min(nmax - 1, l));
      const float w = qw ? qw[i] : x[i] * x[i];
      sumlx += w * x[i] * l;
      suml2 += w * l * l;
    }
    if (suml2 > 0 && sumlx * sumlx > best * suml2) {
      for (int i = 0; i < n; ++i) {
        const int l = nearest_int(iscale * x[i]);
        L[i] = static_cast<std::int8_t>(nmax + std::max(-nmax, std::min(nmax - 1, l)));
      }
      scale = sumlx / suml2;
      best = scale * sumlx;
    }
  }
  return scale;
}

// Q4_0 / Q5_0: d = max / −2^(b−1) (the signed value of largest magnitude), codes
// (int8)(x/d + 2^(b−1) + 0.5) clamped to 2^b − 1. With importance: weights qw·sqrt(σ² + x²) and
// make_qx_quants, as ggml's imatrix path.
void symmetric_codes(const float* x, int bits, const float* imp, float sigma2, float& d, std::uint8_t* codes) {
  const int half = 1 << (bits - 1);
  if (imp) {
    float w[QK];
    std::int8_t L[QK];
    for (int j = 0; j < QK; ++j) w[j] = imp[j] * std::sqrt(sigma2 + x[j] * x[j]);
    d = make_qx_quants(QK, half, x, L, w);
    for (int j = 0; j < QK; ++j) codes[j] = static_cast<std::uint8_t>(L[j]);
    return;
  }
  float amax = 0, max = 0;
  for (int j = 0; j < QK; ++j) {
    if (amax < std::fabs(x[j])) {
      amax = std::fabs(x[j]);
      max = x[j];
    }
  }
  d = max / static_cast<float>(-half);
  const float id = d ? 1.0f / d : 0.0f;
  const int top = (1 << bits) - 1;
  for (int j = 0; j < QK; ++j) {
    codes[j] = static_cast<std::uint8_t>(std::min(top, static_cast<int>(static_cast<std::int8_t>(x[j] * id + (static_cast<float>(half) + 0.5f)))));
  }
}

// Q4_1 / Q5_1: d = (max − min) / (2^b − 1), m = min, codes (x − min)/d + 0.5 truncated.
void affine_codes(const float* x, int bits, float& d, float& m, std::uint8_t* codes) {
  float min = FLT_MAX, max = -FLT_MAX;
  for (int j = 0; j < QK; ++j) {
    min = std::min(min, x[j]);
    max = std::max(max, x[j]);
  }
  const int top = (1 << bits) - 1;
  d = (max - min) / static_cast<float>(top);
  m = min;
  const float id = d ? 1.0f / d : 0.0f;
  for (int j = 0; j < QK; ++j) {
    const float v = (x[j] - min) * id;
    codes[j] = bits == 4 ? static_cast<std::uint8_t>(std::min(15, static_cast<int>(static_cast<std::int8_t>(v + 0.5f))))
                         : static_cast<std::uint8_t>(v + 0.5f);
  }
}

// 32 codes of 4 or 5 bits: low nibbles of j and j+16 share byte j; 5th bits in a u32 (bit j).
std::uint8_t* put_nibbles(std::uint8_t* p, const std::uint8_t* c, bool fifth) {
  if (fifth) {
    std::uint32_t qh = 0;
    for (int j = 0; j < 16; ++j) {
      qh |= static_cast<std::uint32_t>((c[j] & 0x10u) >> 4) << j;
      qh |= static_cast<std::uint32_t>((c[j + 16] & 0x10u) >> 4) << (j + 16);
    }
    std::memcpy(p, &qh, 4);
    p += 4;
  }
  for (int j = 0; j < 16; ++j) p[j] = static_cast<std::uint8_t>((c[j] & 0x0F) | ((c[j + 16] & 0x0F) << 4));
  return p + 16;
}
void get_nibbles(const std::uint8_t* p, std::uint8_t* c, bool fifth) {
  std::uint32_t qh = 0;
  if (fifth) {
    std::memcpy(&qh, p, 4);
    p += 4;
  }
  for (int j = 0; j < 16; ++j) {
    c[j] = static_cast<std::uint8_t>((p[j] & 0x0F) | (fifth ? ((qh >> j) & 1u) << 4 : 0u));
    c[j + 16] = static_cast<std::uint8_t>((p[j] >> 4) | (fifth ? ((qh >> (j + 16)) & 1u) << 4 : 0u));
  }
}

// Q6_K super-block of 256: 16 sub-blocks of 16 with int8 scales (relative to fp16 d), codes
// −32..31 stored +32 as 4 low bits (ql) and 2 high bits (qh). Layout: ql[128] qh[64]
// scales[16] d.
void quantize_q6_k(const float* x, const float* imp, std::uint8_t* out) {
  std::int8_t L[QK_K];
  float scales[QK_K / 16];
  float max_scale = 0, max_abs_scale = 0;
  for (int ib = 0; ib < QK_K / 16; ++ib) {
    const float scale = make_qx_quants(16, 32, x + 16 * ib, L + 16 * ib, imp ? imp + 16 * ib : nullptr);
    scales[ib] = scale;
    if (std::fabs(scale) > max_abs_scale) {
      max_abs_scale = std::fabs(scale);
      max_scale = scale;
    }
  }
  std::uint8_t* ql = out;
  std::uint8_t* qh = out + 128;
  auto* sc = reinterpret_cast<std::int8_t*>(out + 192);
  std::uint8_t* dp = out + 208;
  if (max_abs_scale < kGroupMaxEps) {
    std::memset(out, 0, 210);
    put_f16(dp, 0.f);
    return;
  }
  const float iscale = -128.f / max_scale;
  put_f16(dp, 1 / iscale);
  for (int ib = 0; ib < QK_K / 16; ++ib) sc[ib] = static_cast<std::int8_t>(std::min(127, nearest_int(iscale * scales[ib])));
  for (int j = 0; j < QK_K / 16; ++j) {
    const float d = get_f16(dp) * sc[j];
    if (!d) continue;
    for (int ii = 0; ii < 16; ++ii) {
      const int l = std::max(-32, std::min(31, nearest_int(x[16 * j + ii] / d)));
      L[16 * j + ii] = static_cast<std::int8_t>(l + 32);
    }
  }
  for (int j = 0; j < QK_K; j += 128) {
    for (int l = 0; l < 32; ++l) {
      const auto q1 = static_cast<std::uint8_t>(L[j + l] & 0xF), q2 = static_cast<std::uint8_t>(L[j + l + 32] & 0xF);
      const auto q3 = static_cast<std::uint8_t>(L[j + l + 64] & 0xF), q4 = static_cast<std::uint8_t>(L[j + l + 96] & 0xF);
      ql[l] = static_cast<std::uint8_t>(q1 | (q3 << 4));
      ql[l + 32] = static_cast<std::uint8_t>(q2 | (q4 << 4));
      qh[l] = static_cast<std::uint8_t>((L[j + l] >> 4) | ((L[j + l + 32] >> 4) << 2) | ((L[j + l + 64] >> 4) << 4) | ((L[j + l + 96] >> 4) << 6));
    }
    ql += 64;
    qh += 32;
  }
}

void dequantize_q6_k(const std::uint8_t* in, float* y) {
  const float d = get_f16(in + 208);
  const std::uint8_t* ql = in;
  const std::uint8_t* qh = in + 128;
  const auto* sc = reinterpret_cast<const std::int8_t*>(in + 192);
  for (int n = 0; n < QK_K; n += 128) {
    for (int l = 0; l < 32; ++l) {
      const int is = l / 16;
      const int q1 = ((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
      const int q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
      const int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
      const int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
      y[l] = d * sc[is + 0] * q1;
      y[l + 32] = d * sc[is + 2] * q2;
      y[l + 64] = d * sc[is + 4] * q3;
      y[l + 96] = d * sc[is + 6] * q4;
    }
    y += 128;
    ql += 64;
    qh += 32;
    sc += 8;
  }
}

}  // namespace

void quantize_row(GgmlType type, const float* x, std::int64_t n, const float* imp, std::uint8_t* out) {
  const TypeInfo& ti = type_info(type);
  if (n % ti.block != 0) fail<Error>("a row of {} is not whole {} blocks", n, ti.name);
  float sigma2 = 0;
  if (imp) {
    for (std::int64_t j = 0; j < n; ++j) sigma2 += x[j] * x[j];
    sigma2 /= static_cast<float>(n);
  }
  std::uint8_t codes[QK];
  for (std::int64_t b = 0; b < n / ti.block; ++b) {
    const float* xb = x + b * ti.block;
    const float* ib = imp ? imp + b * ti.block : nullptr;
    std::uint8_t* p = out + b * ti.bytes;
    switch (type) {
      case GgmlType::F32: std::memcpy(p, xb, 4); break;
      case GgmlType::F16: put_f16(p, xb[0]); break;
      case GgmlType::Q8_0: {
        float amax = 0;
        for (int j = 0; j < QK; ++j) amax = std::max(amax, std::fabs(xb[j]));
        const float d = amax / 127.f;
        const float id = d ? 1.0f / d : 0.0f;
        put_f16(p, d);
        for (int j = 0; j < QK; ++j) p[2 + j] = static_cast<std::uint8_t>(static_cast<std::int8_t>(std::round(xb[j] * id)));
        break;
      }
      case GgmlType::Q4_0: case GgmlType::Q5_0: {
        float d;
        symmetric_codes(xb, type == GgmlType::Q4_0 ? 4 : 5, ib, sigma2, d, codes);
        put_f16(p, d);
        put_nibbles(p + 2, codes, type == GgmlType::Q5_0);
        break;
      }
      case GgmlType::Q4_1: case GgmlType::Q5_1: {
        float d, m;
        affine_codes(xb, type == GgmlType::Q4_1 ? 4 : 5, d, m, codes);
        put_f16(p, d);
        put_f16(p + 2, m);
        put_nibbles(p + 4, codes, type == GgmlType::Q5_1);
        break;
      }
      case GgmlType::Q6_K: quantize_q6_k(xb, ib, p); break;
    }
  }
}

void dequantize_row(GgmlType type, const std::uint8_t* in, std::int64_t n, float* y) {
  const TypeInfo& ti = type_info(type);
  if (n % ti.block != 0) fail<Error>("a row of {} is not whole {} blocks", n, ti.name);
  std::uint8_t c[QK];
  for (std::int64_t b = 0; b < n / ti.block; ++b) {
    const std::uint8_t* p = in + b * ti.bytes;
    float* yb = y + b * ti.block;
    switch (type) {
      case GgmlType::F32: std::memcpy(yb, p, 4); break;
      case GgmlType::F16: yb[0] = get_f16(p); break;
      case GgmlType::Q8_0: {
        const float d = get_f16(p);
        for (int j = 0; j < QK; ++j) yb[j] = d * static_cast<float>(static_cast<std::int8_t>(p[2 + j]));
        break;
      }
      case GgmlType::Q4_0: case GgmlType::Q5_0: {
        const bool five = type == GgmlType::Q5_0;
        const float d = get_f16(p);
        get_nibbles(p + 2, c, five);
        for (int j = 0; j < QK; ++j) yb[j] = d * static_cast<float>(c[j] - (five ? 16 : 8));
        break;
      }
      case GgmlType::Q4_1: case GgmlType::Q5_1: {
        const float d = get_f16(p), m = get_f16(p + 2);
        get_nibbles(p + 4, c, type == GgmlType::Q5_1);
        for (int j = 0; j < QK; ++j) yb[j] = d * static_cast<float>(c[j]) + m;
        break;
      }
      case GgmlType::Q6_K: dequantize_q6_k(p, yb); break;
    }
  }
}

std::vector<std::uint8_t> quantize_matrix(GgmlType type, const float* x, std::int64_t rows, std::int64_t n, const float* imp) {
  const std::uint64_t rb = data_bytes(type, n);
  std::vector<std::uint8_t> out(static_cast<std::size_t>(rb * static_cast<std::uint64_t>(rows)));
#pragma omp parallel for schedule(static)
  for (std::int64_t r = 0; r < rows; ++r) quantize_row(type, x + r * n, n, imp, out.data() + static_cast<std::uint64_t>(r) * rb);
  return out;
}

}  // namespace quant::gguf
