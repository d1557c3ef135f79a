#include "quant/core/dtype.h"

#include <omp.h>
#ifdef __F16C__
#include <immintrin.h>
#endif

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>

#include "quant/core/error.h"

namespace quant {

std::size_t dtype_size(DType dtype) {
  switch (dtype) {
    case DType::F64: case DType::I64: return 8;
    case DType::F32: case DType::I32: return 4;
    case DType::F16: case DType::BF16: case DType::I16: return 2;
    case DType::I8: case DType::U8: case DType::F8_E4M3: return 1;
  }
  return 0;
}

std::string_view dtype_name(DType dtype) {
  switch (dtype) {
    case DType::F64: return "F64";
    case DType::F32: return "F32";
    case DType::F16: return "F16";
    case DType::BF16: return "BF16";
    case DType::I64: return "I64";
    case DType::I32: return "I32";
    case DType::I16: return "I16";
    case DType::I8: return "I8";
    case DType::U8: return "U8";
    case DType::F8_E4M3: return "F8_E4M3";
  }
  return "?";
}

std::optional<DType> parse_dtype(std::string_view name) {
  for (DType d : {DType::F64, DType::F32, DType::F16, DType::BF16, DType::I64, DType::I32,
                  DType::I16, DType::I8, DType::U8, DType::F8_E4M3}) {
    if (dtype_name(d) == name) return d;
  }
  return std::nullopt;
}

bool is_float(DType d) {
  return d == DType::F64 || d == DType::F32 || d == DType::F16 || d == DType::BF16;
}

float f8e4m3_to_f32(std::uint8_t v) {
  const float sign = (v & 0x80u) ? -1.0f : 1.0f;
  const int exp = (v >> 3) & 0xf, mant = v & 0x7;
  if (exp == 0xf && mant == 0x7) return std::numeric_limits<float>::quiet_NaN();
  if (exp == 0) return sign * std::ldexp(static_cast<float>(mant) / 8.0f, -6);
  return sign * std::ldexp(1.0f + static_cast<float>(mant) / 8.0f, exp - 7);
}

std::uint8_t f32_to_f8e4m3(float f) {
  const std::uint8_t sign = std::signbit(f) ? 0x80u : 0x00u;
  if (std::isnan(f)) return static_cast<std::uint8_t>(sign | 0x7fu);
  const float a = std::min(std::abs(f), 448.0f);
  if (a < 0.015625f) {  // below 2^-6: subnormal steps of 2^-9 (8 steps reach the smallest normal)
    const int m = static_cast<int>(std::nearbyint(a * 512.0f));
    return static_cast<std::uint8_t>(sign | m);  // m == 8 is exponent 1, mantissa 0: the same bits
  }
  int e2 = 0;
  std::frexp(a, &e2);  // a = f·2^e2, f in [0.5, 1)
  int e = e2 - 1;
  int m = static_cast<int>(std::nearbyint((std::ldexp(a, -e) - 1.0f) * 8.0f));
  if (m == 8) m = 0, ++e;
  // The clamp keeps e <= 8 and (e, m) <= (8, 6): 448 itself is 1.75·2^8.
  return static_cast<std::uint8_t>(sign | ((e + 7) << 3) | m);
}

float round_to_f8e4m3(float f) {
  const float a = std::min(std::abs(f), 448.0f);
  float r;
  if (a < 0.015625f) {
    r = std::nearbyint(a * 512.0f) * (1.0f / 512.0f);
  } else {  // keep 3 of the 23 mantissa bits, ties to even
    std::uint32_t b = std::bit_cast<std::uint32_t>(a);
    b += 0x7ffffu + ((b >> 20) & 1u);
    r = std::bit_cast<float>(b & 0xfff00000u);
  }
  return std::copysign(r, f);
}

float f16_to_f32(std::uint16_t h) {
  const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
  const std::uint32_t exp = (h >> 10) & 0x1fu;
  std::uint32_t mant = h & 0x3ffu;
  std::uint32_t bits;
  if (exp == 0x1f) {  // inf / NaN
    bits = sign | 0x7f800000u | (mant << 13);
  } else if (exp != 0) {  // normal
    bits = sign | ((exp + 112u) << 23) | (mant << 13);
  } else if (mant == 0) {  // ±0
    bits = sign;
  } else {  // subnormal: value = mant * 2^-24; normalise
    int e = -1;
    do {
      mant <<= 1;
      ++e;
    } while ((mant & 0x400u) == 0);
    bits = sign | static_cast<std::uint32_t>(112 - e) << 23 | ((mant & 0x3ffu) << 13);
  }
  return std::bit_cast<float>(bits);
}

std::uint16_t f32_to_f16(float f) {
  const std::uint32_t x = std::bit_cast<std::uint32_t>(f);
  const std::uint16_t sign = static_cast<std::uint16_t>((x >> 16) & 0x8000u);
  const std::uint32_t abs = x & 0x7fffffffu;
  if (abs >= 0x7f800000u) {  // inf or NaN
    if (abs == 0x7f800000u) return sign | 0x7c00u;
    return sign | 0x7e00u | static_cast<std::uint16_t>((abs >> 13) & 0x3ffu);  // quiet NaN
  }
  if (abs >= 0x477ff000u) return sign | 0x7c00u;  // rounds to >= 65520: overflow to inf
  if (abs >= 0x38800000u) {                       // normal half (>= 2^-14)
    std::uint32_t mant = abs & 0x7fffffu;
    std::uint32_t e = (abs >> 23) - 112u;
    std::uint32_t h = (e << 10) | (mant >> 13);
    const std::uint32_t rest = mant & 0x1fffu;
    if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) ++h;  // carry may bump exponent
    return sign | static_cast<std::uint16_t>(h);
  }
  // Subnormal half or zero: value / 2^-24, rounded to nearest even.
  if (abs < 0x33000000u) return sign;  // < 2^-25: rounds to zero (2^-25 ties to even 0)
  const std::uint32_t e = abs >> 23;
  const std::uint32_t mant = (abs & 0x7fffffu) | 0x800000u;
  const std::uint32_t shift = 126u - e;  // 113 + 13 - e ... places bit 24 at 2^-24
  std::uint32_t h = mant >> shift;
  const std::uint32_t rest = mant & ((1u << shift) - 1u);
  const std::uint32_t half = 1u << (shift - 1u);
  if (rest > half || (rest == half && (h & 1u))) ++h;
  return sign | static_cast<std::uint16_t>(h);
}

float bf16_to_f32(std::uint16_t b) {
  return std::bit_cast<float>(static_cast<std::uint32_t>(b) << 16);
}

std::uint16_t f32_to_bf16(float f) {
  std::uint32_t x = std::bit_cast<std::uint32_t>(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return static_cast<std::uint16_t>((x >> 16) | 0x40u);
  x += 0x7fffu + ((x >> 16) & 1u);
  return static_cast<std::uint16_t>(x >> 16);
}

namespace {
template <typename T>
void widen(const std::byte* src, std::size_t n, float* dst) {
  for (std::size_t i = 0; i < n; ++i) {
    T v;
    std::memcpy(&v, src + i * sizeof(T), sizeof(T));
    dst[i] = static_cast<float>(v);
  }
}
}  // namespace

namespace {

constexpr std::size_t kConvertChunk = std::size_t{1} << 18;

// float16 → float32 for a span. With F16C, 8 at a time in hardware (exact, like the scalar
// function) unless a lane holds inf/NaN, whose payload handling is left to the scalar path.
void f16_span_to_f32(const std::byte* src, std::size_t n, float* dst) {
  std::size_t i = 0;
#ifdef __F16C__
  const __m128i exp_mask = _mm_set1_epi16(0x7c00);
  for (; i + 8 <= n; i += 8) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + 2 * i));
    if (_mm_movemask_epi8(_mm_cmpeq_epi16(_mm_and_si128(h, exp_mask), exp_mask)) != 0) {
      for (std::size_t k = i; k < i + 8; ++k) {
        std::uint16_t v;
        std::memcpy(&v, src + 2 * k, 2);
        dst[k] = f16_to_f32(v);
      }
      continue;
    }
    _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(h));
  }
#endif
  for (; i < n; ++i) {
    std::uint16_t h;
    std::memcpy(&h, src + 2 * i, 2);
    dst[i] = f16_to_f32(h);
  }
}

void bf16_span_to_f32(const std::byte* src, std::size_t n, float* dst) {
  for (std::size_t i = 0; i < n; ++i) {
    std::uint16_t h;
    std::memcpy(&h, src + 2 * i, 2);
    dst[i] = bf16_to_f32(h);
  }
}

// A 2-byte-element conversion in chunks over threads (per element: identical for any count).
void in_chunks(const std::byte* src, std::size_t n, float* dst, void (*convert)(const std::byte*, std::size_t, float*)) {
  const std::int64_t chunks = static_cast<std::int64_t>((n + kConvertChunk - 1) / kConvertChunk);
#pragma omp parallel for schedule(static) if (chunks > 1 && !omp_in_parallel())
  for (std::int64_t c = 0; c < chunks; ++c) {
    const std::size_t i0 = static_cast<std::size_t>(c) * kConvertChunk;
    convert(src + 2 * i0, std::min(kConvertChunk, n - i0), dst + i0);
  }
}

}  // namespace

void convert_span_to_f32(DType dtype, const std::byte* src, std::size_t n, float* dst) {
  switch (dtype) {
    case DType::F16: f16_span_to_f32(src, n, dst); return;
    case DType::BF16: bf16_span_to_f32(src, n, dst); return;
    default: convert_to_f32(dtype, src, n, dst); return;
  }
}

namespace {
// Index of the first element of src[0..n) (elements of U) whose exponent bits `exp` are all ones
// (NaN/±inf), or n: a branch-free test per 4096-element block (it vectorizes), then the exact
// index in the flagged block.
template <class U>
std::size_t first_all_ones(const std::byte* src, std::size_t n, U exp) {
  constexpr std::size_t kBlock = 4096;
  for (std::size_t b = 0; b < n; b += kBlock) {
    const std::size_t e = std::min(n, b + kBlock);
    unsigned bad = 0;
#pragma omp simd reduction(| : bad)
    for (std::size_t i = b; i < e; ++i) {
      U h;
      std::memcpy(&h, src + sizeof(U) * i, sizeof(U));
      bad |= (h & exp) == exp;
    }
    if (!bad) continue;
    for (std::size_t i = b; i < e; ++i) {
      U h;
      std::memcpy(&h, src + sizeof(U) * i, sizeof(U));
      if ((h & exp) == exp) return i;
    }
  }
  return n;
}
}  // namespace

std::size_t first_non_finite_16(DType dtype, const std::byte* src, std::size_t n) {
  if (dtype != DType::F16 && dtype != DType::BF16) fail<Error>("first_non_finite_16: {} is not a 16-bit float type", dtype_name(dtype));
  return first_all_ones<std::uint16_t>(src, n, dtype == DType::F16 ? 0x7c00 : 0x7f80);
}

std::size_t first_non_finite(const float* p, std::size_t n) {
  return first_all_ones<std::uint32_t>(reinterpret_cast<const std::byte*>(p), n, 0x7f800000u);
}

void convert_to_f32(DType dtype, const std::byte* src, std::size_t n, float* dst) {
  if (n == 0) return;  // an empty tensor's data may be a null pointer
  switch (dtype) {
    case DType::F32: std::memcpy(dst, src, n * 4); return;
    case DType::F16: in_chunks(src, n, dst, f16_span_to_f32); return;
    case DType::BF16: in_chunks(src, n, dst, bf16_span_to_f32); return;
    case DType::F64: widen<double>(src, n, dst); return;
    case DType::I64: widen<std::int64_t>(src, n, dst); return;
    case DType::I32: widen<std::int32_t>(src, n, dst); return;
    case DType::I16: widen<std::int16_t>(src, n, dst); return;
    case DType::I8: widen<std::int8_t>(src, n, dst); return;
    case DType::U8: widen<std::uint8_t>(src, n, dst); return;
    case DType::F8_E4M3:
      for (std::size_t i = 0; i < n; ++i) dst[i] = f8e4m3_to_f32(static_cast<std::uint8_t>(src[i]));
      return;
  }
}

void convert_from_f32(DType dtype, std::span<const float> src, std::byte* dst) {
  if (src.empty()) return;
  switch (dtype) {
    case DType::F32: std::memcpy(dst, src.data(), src.size() * 4); return;
    case DType::F16:
      for (std::size_t i = 0; i < src.size(); ++i) {
        const std::uint16_t h = f32_to_f16(src[i]);
        std::memcpy(dst + 2 * i, &h, 2);
      }
      return;
    case DType::BF16:
      for (std::size_t i = 0; i < src.size(); ++i) {
        const std::uint16_t h = f32_to_bf16(src[i]);
        std::memcpy(dst + 2 * i, &h, 2);
      }
      return;
    case DType::F64:
      for (std::size_t i = 0; i < src.size(); ++i) {
        const double d = src[i];
        std::memcpy(dst + 8 * i, &d, 8);
      }
      return;
    default:
      fail<Error>("convert_from_f32: cannot convert float to {}", dtype_name(dtype));
  }
}

}  // namespace quant
