// ggml block formats. Without importance weights every quantizer reproduces ggml's
// quantize_row_*_ref arithmetic step by step (float32, the same rounding helpers and clamps), so
// the bytes equal llama-quantize's; with weights, the imatrix variants' weighted scale search.
#include "quant/formats/ggml_quants.h"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstring>

#include "quant/core/dtype.h"
#include "quant/core/error.h"
#include "ggml_block_detail.h"

namespace quant::gguf {

namespace detail {

void put_f16(std::uint8_t* p, float v) {
  const std::uint16_t h = f32_to_f16(v);
  std::memcpy(p, &h, 2);
}
float get_f16(const std::uint8_t* p) {
  std::uint16_t h;
  std::memcpy(&h, p, 2);
  return f16_to_f32(h);
}
// (int8_t) of a float as x86 compiles ggml's casts: truncate to int32 (NaN and out of range give
// INT32_MIN), keep the low byte. The same bytes as ggml, and defined for every input (subnormal
// blocks make ggml's inverse scales infinite).
std::int8_t trunc_i8(float v) {
  const std::int32_t i = (v >= -2147483648.0f && v < 2147483648.0f) ? static_cast<std::int32_t>(v) : INT32_MIN;
  return static_cast<std::int8_t>(static_cast<std::uint8_t>(static_cast<std::uint32_t>(i) & 0xFFu));
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
  // ggml keeps the first value of largest magnitude (updating on a strict increase only, so an
  // all-zero block keeps max = +0); a vectorized maximum, then that first value.
  float amax = 0, max = 0;
  for (int j = 0; j < QK; ++j) amax = std::max(amax, std::fabs(x[j]));
  if (amax > 0) {
    for (int j = 0; j < QK; ++j) {
      if (std::fabs(x[j]) == amax) {
        max = x[j];
        break;
      }
    }
  }
  d = max / static_cast<float>(-half);
  const float id = d ? 1.0f / d : 0.0f;
  const int top = (1 << bits) - 1;
  for (int j = 0; j < QK; ++j) {
    codes[j] = static_cast<std::uint8_t>(std::min(top, static_cast<int>(trunc_i8(x[j] * id + (static_cast<float>(half) + 0.5f)))));
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
    codes[j] = bits == 4 ? static_cast<std::uint8_t>(std::min(15, static_cast<int>(trunc_i8(v + 0.5f))))
                         : static_cast<std::uint8_t>(trunc_i8(v + 0.5f));
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

// make_qkx2_quants (weights given) / make_qkx3_quants (weights or x²): asymmetric codes in
// [0, nmax] with min ≤ 0, a least-squares (scale, min) refit over nstep+1 candidate inverse
// scales, keeping the lowest weighted squared error. Returns the scale; *the_min = −min.
float make_qkx_quants(int n, int nmax, const float* x, const float* weights, std::uint8_t* L, float* the_min,
                      std::uint8_t* Laux, float rmin, float rdelta, int nstep, bool strict_eq, bool use_mad) {
  // The error of one value: |diff| (use_mad, Q2_K's reference search) or diff².
  auto err = [use_mad](float diff) { return use_mad ? std::fabs(diff) : diff * diff; };
  auto wt = [&](int i) { return weights ? weights[i] : x[i] * x[i]; };
  float min = x[0], max = x[0];
  float sum_w = wt(0);
  float sum_x = sum_w * x[0];
  for (int i = 1; i < n; ++i) {
    if (x[i] < min) min = x[i];
    if (x[i] > max) max = x[i];
    const float w = wt(i);
    sum_w += w;
    sum_x += w * x[i];
  }
  if (min > 0) min = 0;
  if (strict_eq ? max == min : max <= min) {
    std::fill(L, L + n, 0);
    *the_min = -min;
    return 0.f;
  }
  float iscale = nmax / (max - min);
  float scale = 1 / iscale;
  float best_error = 0;
  for (int i = 0; i < n; ++i) {
    const int l = nearest_int(iscale * (x[i] - min));
    L[i] = static_cast<std::uint8_t>(std::max(0, std::min(nmax, l)));
    const float diff = scale * L[i] + min - x[i];
    best_error += wt(i) * err(diff);
  }
  if (nstep < 1) {
    *the_min = -min;
    return scale;
  }
  for (int is = 0; is <= nstep; ++is) {
    iscale = (rmin + rdelta * is + nmax) / (max - min);
    float sum_l = 0, sum_l2 = 0, sum_xl = 0;
    for (int i = 0; i < n; ++i) {
      int l = nearest_int(iscale * (x[i] - min));
      l = std::max(0, std::min(nmax, l));
      Laux[i] = static_cast<std::uint8_t>(l);
      const float w = wt(i);
      sum_l += w * l;
      sum_l2 += w * l * l;
      sum_xl += w * l * x[i];
    }
    const float D = sum_w * sum_l2 - sum_l * sum_l;
    if (D > 0) {
      float this_scale = (sum_w * sum_xl - sum_x * sum_l) / D;
      float this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D;
      if (this_min > 0) {
        this_min = 0;
        this_scale = sum_xl / sum_l2;
      }
      float cur_error = 0;
      for (int i = 0; i < n; ++i) {
        const float diff = this_scale * Laux[i] + this_min - x[i];
        cur_error += wt(i) * err(diff);
      }
      if (cur_error < best_error) {
        std::copy(Laux, Laux + n, L);
        best_error = cur_error;
        scale = this_scale;
        min = this_min;
      }
    }
  }
  *the_min = -min;
  return scale;
}

// make_qp_quants: non-negative values to codes in [0, nmax] with one weighted scale (the
// super-block's 6-bit sub-scales and sub-mins under an imatrix).
float make_qp_quants(int n, int nmax, const float* x, std::uint8_t* L, const float* qw) {
  float max = 0;
  for (int i = 0; i < n; ++i) max = std::max(max, x[i]);
  if (max < kGroupMaxEps) {
    std::fill(L, L + n, 0);
    return 0.f;
  }
  float iscale = nmax / max;
  for (int i = 0; i < n; ++i) L[i] = static_cast<std::uint8_t>(nearest_int(iscale * x[i]));
  const float scale = 1 / iscale;
  float best_mse = 0;
  for (int i = 0; i < n; ++i) {
    const float diff = x[i] - scale * L[i];
    best_mse += qw[i] * diff * diff;
  }
  for (int is = -4; is <= 4; ++is) {
    if (is == 0) continue;
    const float iscale_is = (0.1f * is + nmax) / max;
    const float scale_is = 1 / iscale_is;
    float mse = 0;
    for (int i = 0; i < n; ++i) {
      const int l = std::min(nmax, nearest_int(iscale_is * x[i]));
      const float diff = x[i] - scale_is * l;
      mse += qw[i] * diff * diff;
    }
    if (mse < best_mse) {
      best_mse = mse;
      iscale = iscale_is;
    }
  }
  float sumlx = 0, suml2 = 0;
  for (int i = 0; i < n; ++i) {
    const int l = std::min(nmax, nearest_int(iscale * x[i]));
    L[i] = static_cast<std::uint8_t>(l);
    sumlx += qw[i] * x[i] * l;
    suml2 += qw[i] * l * l;
  }
  for (int itry = 0; itry < 5; ++itry) {
    int n_changed = 0;
    for (int i = 0; i < n; ++i) {
      const float w = qw[i];
      float slx = sumlx - w * x[i] * L[i];
      float sl2 = suml2 - w * L[i] * L[i];
      if (slx > 0 && sl2 > 0) {
        const int new_l = std::min(nmax, nearest_int(x[i] * sl2 / slx));
        if (new_l != L[i]) {
          slx += w * x[i] * new_l;
          sl2 += w * new_l * new_l;
          if (slx * slx * suml2 > sumlx * sumlx * sl2) {
            L[i] = static_cast<std::uint8_t>(new_l);
            sumlx = slx;
            suml2 = sl2;
            ++n_changed;
          }
        }
      }
    }
    if (!n_changed) break;
  }
  return suml2 > 0.0f ? sumlx / suml2 : 0.0f;
}

void get_scale_min_k4(int j, const std::uint8_t* q, std::uint8_t& d, std::uint8_t& m) {
  if (j < 4) {
    d = q[j] & 63;
    m = q[j + 4] & 63;
  } else {
    d = static_cast<std::uint8_t>((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
    m = static_cast<std::uint8_t>((q[j + 4] >> 4) | ((q[j - 0] >> 6) << 4));
  }
}

// Q4_K (bits 4) and Q5_K (bits 5) super-blocks of 256: eight sub-blocks of 32 with 6-bit
// scales and mins packed in 12 bytes, fp16 d and dmin. Layout: d, dmin, scales[12],
// (Q5_K: qh[32]), qs[128].
void quantize_qk(const float* x, const float* imp, int bits, std::uint8_t* out) {
  const int nmax = (1 << bits) - 1;
  std::uint8_t L[QK_K], Laux[32], Ls[8], Lm[8];
  float weights[32], mins[8], scales[8], sw[8];
  std::uint8_t* sc = out + 4;
  std::memset(sc, 0, 12);
  float dval, mval;
  if (!imp) {
    float max_scale = 0, max_min = 0;
    for (int j = 0; j < 8; ++j) {
      float sum_x2 = 0;
      for (int l = 0; l < 32; ++l) sum_x2 += x[32 * j + l] * x[32 * j + l];
      const float av_x = std::sqrt(sum_x2 / 32);
      for (int l = 0; l < 32; ++l) weights[l] = av_x + std::fabs(x[32 * j + l]);
      scales[j] = bits == 4 ? make_qkx_quants(32, nmax, x + 32 * j, weights, L + 32 * j, &mins[j], Laux, -1.f, 0.1f, 20, true, false)
                            : make_qkx_quants(32, nmax, x + 32 * j, weights, L + 32 * j, &mins[j], Laux, -0.5f, 0.1f, 15, true, false);
      max_scale = std::max(max_scale, scales[j]);
      max_min = std::max(max_min, mins[j]);
    }
    const float inv_scale = max_scale > 0 ? 63.f / max_scale : 0.f;
    const float inv_min = max_min > 0 ? 63.f / max_min : 0.f;
    for (int j = 0; j < 8; ++j) {
      Ls[j] = static_cast<std::uint8_t>(std::min<std::uint8_t>(63, static_cast<std::uint8_t>(nearest_int(inv_scale * scales[j]))));
      Lm[j] = static_cast<std::uint8_t>(std::min<std::uint8_t>(63, static_cast<std::uint8_t>(nearest_int(inv_min * mins[j]))));
    }
    dval = max_scale / 63.f;
    mval = max_min / 63.f;
  } else {
    float sum_x2 = 0;
    for (int l = 0; l < QK_K; ++l) sum_x2 += x[l] * x[l];
    const float sigma2 = 2 * sum_x2 / QK_K;
    for (int j = 0; j < 8; ++j) {
      for (int l = 0; l < 32; ++l) weights[l] = imp[32 * j + l] * std::sqrt(sigma2 + x[32 * j + l] * x[32 * j + l]);
      float sumw = 0;
      for (int l = 0; l < 32; ++l) sumw += weights[l];
      sw[j] = sumw;
      scales[j] = make_qkx_quants(32, nmax, x + 32 * j, weights, L + 32 * j, &mins[j], Laux, -0.9f, 0.05f, 36, false, false);
    }
    dval = make_qp_quants(8, 63, scales, Ls, sw);
    mval = make_qp_quants(8, 63, mins, Lm, sw);
    for (int j = 0; j < 8; ++j) {
      Ls[j] = std::min<std::uint8_t>(63, Ls[j]);
      Lm[j] = std::min<std::uint8_t>(63, Lm[j]);
    }
  }
  for (int j = 0; j < 8; ++j) {
    if (j < 4) {
      sc[j] = Ls[j];
      sc[j + 4] = Lm[j];
    } else {
      sc[j + 4] = static_cast<std::uint8_t>((Ls[j] & 0xF) | ((Lm[j] & 0xF) << 4));
      sc[j - 4] |= static_cast<std::uint8_t>((Ls[j] >> 4) << 6);
      sc[j - 0] |= static_cast<std::uint8_t>((Lm[j] >> 4) << 6);
    }
  }
  put_f16(out, dval);
  put_f16(out + 2, mval);
  for (int j = 0; j < 8; ++j) {
    std::uint8_t s, m;
    get_scale_min_k4(j, sc, s, m);
    const float d = get_f16(out) * s;
    if (!d) continue;
    const float dm = get_f16(out + 2) * m;
    for (int ii = 0; ii < 32; ++ii) {
      const int l = nearest_int((x[32 * j + ii] + dm) / d);
      L[32 * j + ii] = static_cast<std::uint8_t>(std::max(0, std::min(nmax, l)));
    }
  }
  if (bits == 4) {
    std::uint8_t* q = out + 16;
    for (int j = 0; j < QK_K; j += 64) {
      for (int l = 0; l < 32; ++l) q[l] = static_cast<std::uint8_t>(L[j + l] | (L[j + l + 32] << 4));
      q += 32;
    }
    return;
  }
  std::uint8_t* qh = out + 16;
  std::uint8_t* ql = out + 48;
  std::memset(qh, 0, 32);
  std::uint8_t m1 = 1, m2 = 2;
  for (int n = 0; n < QK_K; n += 64) {
    for (int j = 0; j < 32; ++j) {
      int l1 = L[n + j], l2 = L[n + j + 32];
      if (l1 > 15) l1 -= 16, qh[j] |= m1;
      if (l2 > 15) l2 -= 16, qh[j] |= m2;
      ql[j] = static_cast<std::uint8_t>(l1 | (l2 << 4));
    }
    m1 = static_cast<std::uint8_t>(m1 << 2);
    m2 = static_cast<std::uint8_t>(m2 << 2);
    ql += 32;
  }
}

void dequantize_qk(const std::uint8_t* in, int bits, float* y) {
  const float d = get_f16(in), min = get_f16(in + 2);
  const std::uint8_t* sc = in + 4;
  const std::uint8_t* qh = in + 16;
  const std::uint8_t* q = bits == 4 ? in + 16 : in + 48;
  int is = 0;
  std::uint8_t u1 = 1, u2 = 2;
  for (int j = 0; j < QK_K; j += 64) {
    std::uint8_t s, m;
    get_scale_min_k4(is + 0, sc, s, m);
    const float d1 = d * s, m1 = min * m;
    get_scale_min_k4(is + 1, sc, s, m);
    const float d2 = d * s, m2 = min * m;
    for (int l = 0; l < 32; ++l) *y++ = d1 * ((q[l] & 0xF) + (bits == 5 && (qh[l] & u1) ? 16 : 0)) - m1;
    for (int l = 0; l < 32; ++l) *y++ = d2 * ((q[l] >> 4) + (bits == 5 && (qh[l] & u2) ? 16 : 0)) - m2;
    q += 32;
    is += 2;
    u1 = static_cast<std::uint8_t>(u1 << 2);
    u2 = static_cast<std::uint8_t>(u2 << 2);
  }
}

}  // namespace detail

using namespace detail;

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
      case GgmlType::BF16: {  // ggml_compute_fp32_to_bf16: round to nearest even
        const std::uint16_t h = f32_to_bf16(xb[0]);
        std::memcpy(p, &h, 2);
        break;
      }
      case GgmlType::Q8_0: {
        float amax = 0;
        for (int j = 0; j < QK; ++j) amax = std::max(amax, std::fabs(xb[j]));
        const float d = amax / 127.f;
        const float id = d ? 1.0f / d : 0.0f;
        put_f16(p, d);
        for (int j = 0; j < QK; ++j) p[2 + j] = static_cast<std::uint8_t>(trunc_i8(std::round(xb[j] * id)));
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
        const int nmax = type == GgmlType::Q4_1 ? 15 : 31;
        if (ib) {
          // quantize_row_q4_1_impl / q5_1_impl: the importance times sqrt(σ² + x²) weighs a
          // least-squares (scale, min) search.
          float weight[QK], the_min;
          std::uint8_t aux[QK];
          for (int j = 0; j < QK; ++j) weight[j] = ib[j] * std::sqrt(sigma2 + xb[j] * xb[j]);
          d = make_qkx_quants(QK, nmax, xb, weight, codes, &the_min, aux, -0.9f, 0.05f, 36, false, false);
          m = -the_min;
        } else {
          affine_codes(xb, nmax == 15 ? 4 : 5, d, m, codes);
        }
        put_f16(p, d);
        put_f16(p + 2, m);
        put_nibbles(p + 4, codes, type == GgmlType::Q5_1);
        break;
      }
      case GgmlType::Q4_K: quantize_qk(xb, ib, 4, p); break;
      case GgmlType::Q5_K: quantize_qk(xb, ib, 5, p); break;
      case GgmlType::Q6_K: quantize_q6_k(xb, ib, p); break;
      case GgmlType::Q2_K: quantize_q2_k(xb, ib, p); break;
      case GgmlType::Q3_K: quantize_q3_k(xb, ib, p); break;
      case GgmlType::IQ4_NL: quantize_iq4(xb, ib, 32, p); break;
      case GgmlType::IQ4_XS: quantize_iq4(xb, ib, QK_K, p); break;
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
      case GgmlType::BF16: {
        std::uint16_t h;
        std::memcpy(&h, p, 2);
        yb[0] = bf16_to_f32(h);
        break;
      }
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
      case GgmlType::Q4_K: dequantize_qk(p, 4, yb); break;
      case GgmlType::Q5_K: dequantize_qk(p, 5, yb); break;
      case GgmlType::Q6_K: dequantize_q6_k(p, yb); break;
      case GgmlType::Q2_K: dequantize_q2_k(p, yb); break;
      case GgmlType::Q3_K: dequantize_q3_k(p, yb); break;
      case GgmlType::IQ4_NL: dequantize_iq4(p, 32, yb); break;
      case GgmlType::IQ4_XS: dequantize_iq4(p, QK_K, yb); break;
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

std::vector<float> dequantize_tensor(const File& file, const std::string& name) {
  const TensorInfo& t = file.tensor(name);
  std::vector<float> y(static_cast<std::size_t>(t.numel()));
  const std::int64_t rows = t.numel() / t.ne[0];
  const std::uint64_t row_bytes = data_bytes(t.type, t.ne[0]);
#pragma omp parallel for schedule(static) if (rows > 64)
  for (std::int64_t r = 0; r < rows; ++r) {
    dequantize_row(t.type, file.data(t) + static_cast<std::uint64_t>(r) * row_bytes, t.ne[0], y.data() + r * t.ne[0]);
  }
  return y;
}

}  // namespace quant::gguf
