// Q2_K, Q3_K, IQ4_NL and IQ4_XS blocks, arithmetic step by step as ggml-quants.c computes them
// (quantize_row_q2_K_ref / _impl, quantize_row_q3_K_ref / _impl, quantize_row_iq4_nl_impl as
// quantize_iq4_nl / quantize_iq4_xs call it), so the bytes equal llama-quantize's. Layouts in
// docs/formats.md.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "ggml_block_detail.h"

namespace quant::gguf::detail {

namespace {

// The IQ4 non-linear grid (ggml's kvalues_iq4nl).
constexpr std::int8_t kIq4Values[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};

// Index of the grid value nearest to x (ties to the upper one), by bisection as ggml's
// best_index_int8.
int best_index(float x) {
  if (x <= kIq4Values[0]) return 0;
  if (x >= kIq4Values[15]) return 15;
  int lo = 0, hi = 15;
  while (hi - lo > 1) {
    const int mid = (lo + hi) / 2;
    if (x < kIq4Values[mid]) hi = mid;
    else lo = mid;
  }
  return x - kIq4Values[hi - 1] < kIq4Values[hi] - x ? hi - 1 : hi;
}

// 256 codes of 2 bits: byte j/4 + l of each 128-value half holds values l, l+32, l+64, l+96.
void pack_2bit(const std::uint8_t* L, std::uint8_t* qs) {
  for (int j = 0; j < QK_K; j += 128) {
    for (int l = 0; l < 32; ++l) {
      qs[j / 4 + l] = static_cast<std::uint8_t>(L[j + l] | (L[j + l + 32] << 2) | (L[j + l + 64] << 4) | (L[j + l + 96] << 6));
    }
  }
}

}  // namespace

// Q2_K (84 bytes): scales[16] (low nibble scale, high nibble min), qs[64], fp16 d, fp16 dmin;
// sub-blocks of 16, value = d·sc·q − dmin·m.
void quantize_q2_k(const float* x, const float* imp, std::uint8_t* out) {
  std::uint8_t* scales_out = out;
  std::uint8_t* qs = out + 16;
  std::uint8_t L[QK_K], Laux[16];
  float weights[16], mins[16], scales[16];
  if (!imp) {
    const float q4scale = 15.f;
    float max_scale = 0, max_min = 0;
    for (int j = 0; j < 16; ++j) {
      for (int l = 0; l < 16; ++l) weights[l] = std::fabs(x[16 * j + l]);
      scales[j] = make_qkx_quants(16, 3, x + 16 * j, weights, L + 16 * j, &mins[j], Laux, -0.5f, 0.1f, 15, true, true);
      if (scales[j] > max_scale) max_scale = scales[j];
      if (mins[j] > max_min) max_min = mins[j];
    }
    if (max_scale > 0) {
      const float iscale = q4scale / max_scale;
      for (int j = 0; j < 16; ++j) scales_out[j] = static_cast<std::uint8_t>(nearest_int(iscale * scales[j]));
      put_f16(out + 80, max_scale / q4scale);
    } else {
      std::memset(scales_out, 0, 16);
      put_f16(out + 80, 0.f);
    }
    if (max_min > 0) {
      const float iscale = q4scale / max_min;
      for (int j = 0; j < 16; ++j) scales_out[j] = static_cast<std::uint8_t>(scales_out[j] | (nearest_int(iscale * mins[j]) << 4));
      put_f16(out + 82, max_min / q4scale);
    } else {
      put_f16(out + 82, 0.f);
    }
  } else {
    float sumx2 = 0;
    for (int j = 0; j < QK_K; ++j) sumx2 += x[j] * x[j];
    const float sigma2 = sumx2 / QK_K;
    float sw[16];
    std::uint8_t Ls[16], Lm[16];
    for (int j = 0; j < 16; ++j) {
      for (int l = 0; l < 16; ++l) weights[l] = imp[16 * j + l] * std::sqrt(sigma2 + x[16 * j + l] * x[16 * j + l]);
      sw[j] = 0;
      for (int l = 0; l < 16; ++l) sw[j] += weights[l];
      scales[j] = make_qkx_quants(16, 3, x + 16 * j, weights, L + 16 * j, &mins[j], Laux, -0.9f, 0.05f, 36, false, false);
    }
    put_f16(out + 80, make_qp_quants(16, 15, scales, Ls, sw));
    put_f16(out + 82, make_qp_quants(16, 15, mins, Lm, sw));
    for (int j = 0; j < 16; ++j) scales_out[j] = static_cast<std::uint8_t>(Ls[j] | (Lm[j] << 4));
  }
  const float d_all = get_f16(out + 80), m_all = get_f16(out + 82);
  for (int j = 0; j < 16; ++j) {
    const float d = d_all * (scales_out[j] & 0xF);
    if (!d) continue;
    const float dm = m_all * (scales_out[j] >> 4);
    for (int ii = 0; ii < 16; ++ii) {
      const int l = nearest_int((x[16 * j + ii] + dm) / d);
      L[16 * j + ii] = static_cast<std::uint8_t>(std::max(0, std::min(3, l)));
    }
  }
  pack_2bit(L, qs);
}

void dequantize_q2_k(const std::uint8_t* in, float* y) {
  const float d = get_f16(in + 80), min = get_f16(in + 82);
  const std::uint8_t* q = in + 16;
  int is = 0;
  for (int n = 0; n < QK_K; n += 128) {
    for (int shift = 0; shift < 8; shift += 2) {
      for (int half = 0; half < 2; ++half) {
        const std::uint8_t sc = in[is++];
        const float dl = d * (sc & 0xF), ml = min * (sc >> 4);
        for (int l = 0; l < 16; ++l) *y++ = dl * static_cast<float>((q[l + 16 * half] >> shift) & 3) - ml;
      }
    }
    q += 32;
  }
}

// Q3_K (110 bytes): hmask[32] (the third bit), qs[64] (two low bits), scales[12] (sixteen 6-bit
// scales biased by 32), fp16 d; value = d·(sc − 32)·(q − 4).
void quantize_q3_k(const float* x, const float* imp, std::uint8_t* out) {
  std::uint8_t* hmask = out;
  std::uint8_t* qs = out + 32;
  std::uint8_t* sc = out + 96;
  std::int8_t L[QK_K];
  float scales[16];
  std::memset(sc, 0, 12);
  auto put_scale = [&](int j, int l) {  // l in [0, 63]
    if (j < 8) sc[j] = static_cast<std::uint8_t>(l & 0xF);
    else sc[j - 8] = static_cast<std::uint8_t>(sc[j - 8] | ((l & 0xF) << 4));
    sc[j % 4 + 8] = static_cast<std::uint8_t>(sc[j % 4 + 8] | ((l >> 4) << (2 * (j / 4))));
  };
  if (!imp) {
    float max_scale = 0, amax = 0;
    for (int j = 0; j < 16; ++j) {
      // make_q3_quants(16, 4, x, L, do_rmse = true)
      const float* xs = x + 16 * j;
      std::int8_t* Lj = L + 16 * j;
      float max = 0, amx = 0;
      for (int i = 0; i < 16; ++i) {
        const float ax = std::fabs(xs[i]);
        if (ax > amx) {
          amx = ax;
          max = xs[i];
        }
      }
      if (amx < kGroupMaxEps) {
        std::fill(Lj, Lj + 16, 0);
        scales[j] = 0.f;
      } else {
        const float iscale = -4 / max;
        float sumlx = 0, suml2 = 0;
        for (int i = 0; i < 16; ++i) {
          const int l = std::max(-4, std::min(3, nearest_int(iscale * xs[i])));
          Lj[i] = static_cast<std::int8_t>(l);
          const float w = xs[i] * xs[i];
          sumlx += w * xs[i] * l;
          suml2 += w * l * l;
        }
        for (int itry = 0; itry < 5; ++itry) {
          int n_changed = 0;
          for (int i = 0; i < 16; ++i) {
            const float w = xs[i] * xs[i];
            float slx = sumlx - w * xs[i] * Lj[i];
            if (slx > 0) {
              float sl2 = suml2 - w * Lj[i] * Lj[i];
              const int new_l = std::max(-4, std::min(3, nearest_int(xs[i] * sl2 / slx)));
              if (new_l != Lj[i]) {
                slx += w * xs[i] * new_l;
                sl2 += w * new_l * new_l;
                if (sl2 > 0 && slx * slx * suml2 > sumlx * sumlx * sl2) {
                  Lj[i] = static_cast<std::int8_t>(new_l);
                  sumlx = slx;
                  suml2 = sl2;
                  ++n_changed;
                }
              }
            }
          }
          if (!n_changed) break;
        }
        for (int i = 0; i < 16; ++i) Lj[i] = static_cast<std::int8_t>(Lj[i] + 4);
        scales[j] = sumlx / suml2;
      }
      const float s = std::fabs(scales[j]);
      if (s > amax) {
        amax = s;
        max_scale = scales[j];
      }
    }
    if (max_scale) {
      const float iscale = -32.f / max_scale;
      for (int j = 0; j < 16; ++j) {
        const auto l = static_cast<std::int8_t>(nearest_int(iscale * scales[j]));
        put_scale(j, std::max<int>(-32, std::min<int>(31, l)) + 32);
      }
      put_f16(out + 108, 1 / iscale);
    } else {
      put_f16(out + 108, 0.f);
    }
  } else {
    float sumx2 = 0;
    for (int j = 0; j < QK_K; ++j) sumx2 += x[j] * x[j];
    const float sigma2 = 2 * sumx2 / QK_K;
    float weight[16], sw[16];
    std::int8_t Ls[16];
    for (int j = 0; j < 16; ++j) {
      for (int l = 0; l < 16; ++l) weight[l] = imp[16 * j + l] * std::sqrt(sigma2 + x[16 * j + l] * x[16 * j + l]);
      float sumw = 0;
      for (int l = 0; l < 16; ++l) sumw += weight[l];
      sw[j] = sumw;
      scales[j] = make_qx_quants(16, 4, x + 16 * j, L + 16 * j, weight);
    }
    const float d_block = make_qx_quants(16, 32, scales, Ls, sw);
    for (int j = 0; j < 16; ++j) put_scale(j, Ls[j]);
    put_f16(out + 108, d_block);
  }
  const float d_all = get_f16(out + 108);
  for (int j = 0; j < 16; ++j) {
    int s = j < 8 ? sc[j] & 0xF : sc[j - 8] >> 4;
    s = (s | (((sc[8 + j % 4] >> (2 * (j / 4))) & 3) << 4)) - 32;
    const float d = d_all * static_cast<float>(s);
    if (!d) continue;
    for (int ii = 0; ii < 16; ++ii) {
      const int l = std::max(-4, std::min(3, nearest_int(x[16 * j + ii] / d)));
      L[16 * j + ii] = static_cast<std::int8_t>(l + 4);
    }
  }
  // The third bit of value j goes to hmask[j % 32], bit j / 32.
  std::memset(hmask, 0, 32);
  std::uint8_t low[QK_K];
  for (int j = 0; j < QK_K; ++j) {
    int l = L[j];
    if (l > 3) {
      hmask[j % 32] = static_cast<std::uint8_t>(hmask[j % 32] | (1 << (j / 32)));
      l -= 4;
    }
    low[j] = static_cast<std::uint8_t>(l);
  }
  pack_2bit(low, qs);
}

void dequantize_q3_k(const std::uint8_t* in, float* y) {
  const std::uint8_t* hm = in;
  const std::uint8_t* q = in + 32;
  const std::uint8_t* sc = in + 96;
  const float d_all = get_f16(in + 108);
  int scale[16];
  for (int j = 0; j < 16; ++j) {
    const int s = j < 8 ? sc[j] & 0xF : sc[j - 8] >> 4;
    scale[j] = (s | (((sc[8 + j % 4] >> (2 * (j / 4))) & 3) << 4)) - 32;
  }
  int is = 0;
  std::uint8_t m = 1;
  for (int n = 0; n < QK_K; n += 128) {
    for (int shift = 0; shift < 8; shift += 2) {
      for (int half = 0; half < 2; ++half) {
        const float dl = d_all * static_cast<float>(scale[is++]);
        for (int l = 0; l < 16; ++l) {
          const int k = l + 16 * half;
          *y++ = dl * static_cast<float>(((q[k] >> shift) & 3) - ((hm[k] & m) ? 0 : 4));
        }
      }
      m = static_cast<std::uint8_t>(m << 1);
    }
    q += 32;
  }
}

// IQ4_NL (n = 32, 18 bytes: fp16 d, qs[16]) and IQ4_XS (n = 256, 136 bytes: fp16 d, u16
// scales_h, scales_l[4], qs[128]; eight 6-bit sub-block scales biased by 32): codes index the
// non-linear grid; each 32 values' scale searched over 15 candidates (ntry 7) by weighted least
// squares, weights imp·sqrt(σ² + x²) or x².
void quantize_iq4(const float* x, const float* imp, int n, std::uint8_t* out) {
  const int nb = n / 32;
  std::uint8_t L[QK_K];
  float scales[QK_K / 32], weight[32];
  float sigma2 = 0;
  for (int j = 0; j < n; ++j) sigma2 += x[j] * x[j];
  sigma2 *= 2.f / n;
  std::uint8_t* qs = out + (nb > 1 ? 8 : 2);
  std::memset(qs, 0, static_cast<std::size_t>(n / 2));
  float max_scale = 0, amax_scale = 0;
  for (int ib = 0; ib < nb; ++ib) {
    const float* xb = x + ib * 32;
    std::uint8_t* Lb = L + ib * 32;
    for (int j = 0; j < 32; ++j) weight[j] = imp ? imp[ib * 32 + j] * std::sqrt(sigma2 + xb[j] * xb[j]) : xb[j] * xb[j];
    float amax = 0, max = 0;
    for (int j = 0; j < 32; ++j) {
      const float ax = std::fabs(xb[j]);
      if (ax > amax) {
        amax = ax;
        max = xb[j];
      }
    }
    if (amax < kGroupMaxEps) {
      scales[ib] = 0;
      continue;
    }
    float d = -max / kIq4Values[0];
    float id = 1 / d;
    float sumqx = 0, sumq2 = 0;
    for (int j = 0; j < 32; ++j) {
      const int l = best_index(id * xb[j]);
      Lb[j] = static_cast<std::uint8_t>(l);
      const float q = kIq4Values[l];
      const float w = weight[j];
      sumqx += w * q * xb[j];
      sumq2 += w * q * q;
    }
    d = sumqx / sumq2;
    float best = d * sumqx;
    for (int itry = -7; itry <= 7; ++itry) {
      id = (itry + kIq4Values[0]) / max;
      sumqx = sumq2 = 0;
      for (int j = 0; j < 32; ++j) {
        const float q = kIq4Values[best_index(id * xb[j])];
        const float w = weight[j];
        sumqx += w * q * xb[j];
        sumq2 += w * q * q;
      }
      if (sumq2 > 0 && sumqx * sumqx > best * sumq2) {
        d = sumqx / sumq2;
        best = d * sumqx;
      }
    }
    scales[ib] = d;
    if (std::fabs(d) > amax_scale) {
      amax_scale = std::fabs(d);
      max_scale = d;
    }
  }
  if (nb > 1) {
    std::uint16_t scales_h = 0;
    std::uint8_t* scales_l = out + 4;
    std::memset(scales_l, 0, 4);
    const float d = -max_scale / 32;
    put_f16(out, d);
    const float id = d ? 1 / d : 0.f;
    for (int ib = 0; ib < nb; ++ib) {
      int l = std::max(-32, std::min(31, nearest_int(id * scales[ib])));
      const float dl = d * l;
      const float idl = dl ? 1 / dl : 0.f;
      for (int j = 0; j < 32; ++j) L[ib * 32 + j] = static_cast<std::uint8_t>(best_index(idl * x[ib * 32 + j]));
      l += 32;
      scales_l[ib / 2] = static_cast<std::uint8_t>(scales_l[ib / 2] | ((l & 0xf) << (4 * (ib % 2))));
      scales_h = static_cast<std::uint16_t>(scales_h | ((l >> 4) << (2 * ib)));
    }
    std::memcpy(out + 2, &scales_h, 2);
  } else {
    put_f16(out, scales[0]);
    const float id = scales[0] ? 1 / scales[0] : 0;
    for (int j = 0; j < 32; ++j) L[j] = static_cast<std::uint8_t>(best_index(id * x[j]));
  }
  for (int i = 0; i < n / 32; ++i) {
    for (int j = 0; j < 16; ++j) qs[16 * i + j] = static_cast<std::uint8_t>(L[32 * i + j] | (L[32 * i + 16 + j] << 4));
  }
}

void dequantize_iq4(const std::uint8_t* in, int n, float* y) {
  const float d = get_f16(in);
  if (n == 32) {
    const std::uint8_t* qs = in + 2;
    for (int j = 0; j < 16; ++j) {
      y[j] = d * kIq4Values[qs[j] & 0xf];
      y[j + 16] = d * kIq4Values[qs[j] >> 4];
    }
    return;
  }
  std::uint16_t scales_h;
  std::memcpy(&scales_h, in + 2, 2);
  const std::uint8_t* scales_l = in + 4;
  const std::uint8_t* qs = in + 8;
  for (int ib = 0; ib < n / 32; ++ib) {
    const int ls = ((scales_l[ib / 2] >> (4 * (ib % 2))) & 0xf) | (((scales_h >> (2 * ib)) & 3) << 4);
    const float dl = d * static_cast<float>(ls - 32);
    for (int j = 0; j < 16; ++j) {
      y[j] = dl * kIq4Values[qs[j] & 0xf];
      y[j + 16] = dl * kIq4Values[qs[j] >> 4];
    }
    y += 32;
    qs += 16;
  }
}

}  // namespace quant::gguf::detail
