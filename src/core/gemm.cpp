// y = x · wᵀ with register-blocked micro-kernels (docs/performance.md, "GEMM").
//
// The activations x are packed once per call into panels of 32 tokens ([k][32] per panel, zero
// padded); the weights are read in place, a few output rows at a time, each weight broadcast
// against a panel's 32 tokens. A micro-kernel computes an R × 32 tile of yᵀ: R output rows, 32
// tokens, one accumulator lane per output. The work is split over threads in blocks of output rows; k runs in blocks of kKc (the accumulators are stored and reloaded between blocks,
// which does not round), so every output is the chain acc = fma(w[j,k], x[t,k], acc) over
// k = 0 … K−1 from acc = 0, on every kernel. Packing x instead of w: x is the small operand of
// the calibration forward (128–512 tokens against up to 14k output rows), and packing it costs
// O(T·K) against the product's O(T·K·N). Doubles (GPTQ's Cholesky and triangular inverse) run the
// same kernels with panels of 16 tokens, two zmm as for floats.
#include "quant/core/gemm.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "quant/core/error.h"

namespace quant {

namespace {

// Tokens per packed panel: two vector registers of the widest kernel (32 floats, 16 doubles).
template <typename T>
constexpr std::int64_t kTokenPanel = 128 / sizeof(T);
constexpr std::int64_t kKc = 256;        // k per block: a kernel's weight rows stay in L1
constexpr std::int64_t kTc = 8;          // panels per token block: their k-block stays in L2
constexpr std::int64_t kRowBlock = 256;  // output rows per work item at most (halved down to 32 to give every thread work)

// Panel p holds tokens P·p … P·p+P−1 as xp[p·K·P + k·P + i] (P = kTokenPanel<T>).
template <typename T>
void pack_x(const T* x, std::int64_t ldx, std::int64_t rows, std::int64_t K, T* xp, bool parallel) {
  constexpr std::int64_t P = kTokenPanel<T>;
  const std::int64_t panels = (rows + P - 1) / P;
#pragma omp parallel for schedule(static) if (parallel)
  for (std::int64_t p = 0; p < panels; ++p) {
    T* dst = xp + p * K * P;
    const std::int64_t n = std::min(P, rows - p * P);
    if (n < P) std::fill(dst, dst + K * P, T(0));
    for (std::int64_t i = 0; i < n; ++i) {
      const T* src = x + (p * P + i) * ldx;
      for (std::int64_t k = 0; k < K; ++k) dst[k * P + i] = src[k];
    }
  }
}

// c[r·ldc + i] (= y[token i, row r]) ← (first ? 0 : c) + Σ_k w[r·ldw + k] · p[k·P + i], r < R.
template <typename T, int R>
void kernel_scalar(const T* w, std::int64_t ldw, const T* p, std::int64_t kc, T* c, std::int64_t ldc, bool first) {
  constexpr std::int64_t P = kTokenPanel<T>;
  for (int r = 0; r < R; ++r) {
    for (std::int64_t i = 0; i < P; ++i) {
      T acc = first ? T(0) : c[r * ldc + i];
      for (std::int64_t k = 0; k < kc; ++k) acc = std::fma(w[r * ldw + k], p[k * P + i], acc);
      c[r * ldc + i] = acc;
    }
  }
}

#if defined(__x86_64__)
#define QUANT_AVX512 __attribute__((target("avx512f"), always_inline)) static inline
#define QUANT_AVX2 __attribute__((target("avx2,fma"), always_inline)) static inline
// The few vector operations the kernels use, per register width and scalar type.
template <typename T>
struct Zmm;
template <>
struct Zmm<float> {
  using V = __m512;
  QUANT_AVX512 V zero() { return _mm512_setzero_ps(); }
  QUANT_AVX512 V load(const float* p) { return _mm512_loadu_ps(p); }
  QUANT_AVX512 void store(float* p, V v) { _mm512_storeu_ps(p, v); }
  QUANT_AVX512 V set1(float a) { return _mm512_set1_ps(a); }
  QUANT_AVX512 V fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
};
template <>
struct Zmm<double> {
  using V = __m512d;
  QUANT_AVX512 V zero() { return _mm512_setzero_pd(); }
  QUANT_AVX512 V load(const double* p) { return _mm512_loadu_pd(p); }
  QUANT_AVX512 void store(double* p, V v) { _mm512_storeu_pd(p, v); }
  QUANT_AVX512 V set1(double a) { return _mm512_set1_pd(a); }
  QUANT_AVX512 V fma(V a, V b, V c) { return _mm512_fmadd_pd(a, b, c); }
};
template <typename T>
struct Ymm;
template <>
struct Ymm<float> {
  using V = __m256;
  QUANT_AVX2 V zero() { return _mm256_setzero_ps(); }
  QUANT_AVX2 V load(const float* p) { return _mm256_loadu_ps(p); }
  QUANT_AVX2 void store(float* p, V v) { _mm256_storeu_ps(p, v); }
  QUANT_AVX2 V set1(const float* a) { return _mm256_broadcast_ss(a); }
  QUANT_AVX2 V fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
};
template <>
struct Ymm<double> {
  using V = __m256d;
  QUANT_AVX2 V zero() { return _mm256_setzero_pd(); }
  QUANT_AVX2 V load(const double* p) { return _mm256_loadu_pd(p); }
  QUANT_AVX2 void store(double* p, V v) { _mm256_storeu_pd(p, v); }
  QUANT_AVX2 V set1(const double* a) { return _mm256_broadcast_sd(a); }
  QUANT_AVX2 V fma(V a, V b, V c) { return _mm256_fmadd_pd(a, b, c); }
};
#undef QUANT_AVX512
#undef QUANT_AVX2

// A panel is two zmm: R rows × 2 zmm accumulators.
template <typename T, int R>
__attribute__((target("avx512f"))) void kernel_avx512(const T* w, std::int64_t ldw, const T* p, std::int64_t kc, T* c, std::int64_t ldc,
                                                      bool first) {
  using Z = Zmm<T>;
  constexpr std::int64_t P = kTokenPanel<T>, H = P / 2;
  typename Z::V a0[R], a1[R];
  for (int r = 0; r < R; ++r) {
    a0[r] = first ? Z::zero() : Z::load(c + r * ldc);
    a1[r] = first ? Z::zero() : Z::load(c + r * ldc + H);
  }
  for (std::int64_t k = 0; k < kc; ++k) {
    const typename Z::V b0 = Z::load(p + k * P), b1 = Z::load(p + k * P + H);
    for (int r = 0; r < R; ++r) {
      const typename Z::V v = Z::set1(w[r * ldw + k]);
      a0[r] = Z::fma(v, b0, a0[r]);
      a1[r] = Z::fma(v, b1, a1[r]);
    }
  }
  for (int r = 0; r < R; ++r) {
    Z::store(c + r * ldc, a0[r]);
    Z::store(c + r * ldc + H, a1[r]);
  }
}

// Each half panel (2 ymm) in turn: 6 rows × 2 ymm = 12 accumulators of the 16 registers.
template <typename T, int R>
__attribute__((target("avx2,fma"))) void kernel_avx2(const T* w, std::int64_t ldw, const T* p, std::int64_t kc, T* c, std::int64_t ldc,
                                                     bool first) {
  using Y = Ymm<T>;
  constexpr std::int64_t P = kTokenPanel<T>, Q = P / 4;  // Q: lanes per ymm
  for (int h = 0; h < 2; ++h) {
    typename Y::V a0[R], a1[R];
    for (int r = 0; r < R; ++r) {
      a0[r] = first ? Y::zero() : Y::load(c + r * ldc + 2 * Q * h);
      a1[r] = first ? Y::zero() : Y::load(c + r * ldc + 2 * Q * h + Q);
    }
    for (std::int64_t k = 0; k < kc; ++k) {
      const typename Y::V b0 = Y::load(p + k * P + 2 * Q * h), b1 = Y::load(p + k * P + 2 * Q * h + Q);
      for (int r = 0; r < R; ++r) {
        const typename Y::V v = Y::set1(w + r * ldw + k);
        a0[r] = Y::fma(v, b0, a0[r]);
        a1[r] = Y::fma(v, b1, a1[r]);
      }
    }
    for (int r = 0; r < R; ++r) {
      Y::store(c + r * ldc + 2 * Q * h, a0[r]);
      Y::store(c + r * ldc + 2 * Q * h + Q, a1[r]);
    }
  }
}

#endif

template <typename T>
void transpose_scalar(const T* src, std::int64_t lds, std::int64_t rows, std::int64_t cols, T* dst, std::int64_t ldd) {
  for (std::int64_t c = 0; c < cols; ++c) {
    for (std::int64_t r = 0; r < rows; ++r) dst[c * ldd + r] = src[r * lds + c];
  }
}

#if defined(__x86_64__)
// One 8 × 8 float tile, transposed in registers: d[c·ldd + r] = s[r·lds + c].
__attribute__((target("avx2"), always_inline)) static inline void tile_avx2(const float* s, std::int64_t lds, float* d, std::int64_t ldd) {
  const __m256 a0 = _mm256_loadu_ps(s), a1 = _mm256_loadu_ps(s + lds), a2 = _mm256_loadu_ps(s + 2 * lds), a3 = _mm256_loadu_ps(s + 3 * lds),
               a4 = _mm256_loadu_ps(s + 4 * lds), a5 = _mm256_loadu_ps(s + 5 * lds), a6 = _mm256_loadu_ps(s + 6 * lds),
               a7 = _mm256_loadu_ps(s + 7 * lds);
  const __m256 b0 = _mm256_unpacklo_ps(a0, a1), b1 = _mm256_unpackhi_ps(a0, a1), b2 = _mm256_unpacklo_ps(a2, a3),
               b3 = _mm256_unpackhi_ps(a2, a3), b4 = _mm256_unpacklo_ps(a4, a5), b5 = _mm256_unpackhi_ps(a4, a5),
               b6 = _mm256_unpacklo_ps(a6, a7), b7 = _mm256_unpackhi_ps(a6, a7);
  const __m256 d0 = _mm256_shuffle_ps(b0, b2, 0x44), d1 = _mm256_shuffle_ps(b0, b2, 0xEE), d2 = _mm256_shuffle_ps(b1, b3, 0x44),
               d3 = _mm256_shuffle_ps(b1, b3, 0xEE), d4 = _mm256_shuffle_ps(b4, b6, 0x44), d5 = _mm256_shuffle_ps(b4, b6, 0xEE),
               d6 = _mm256_shuffle_ps(b5, b7, 0x44), d7 = _mm256_shuffle_ps(b5, b7, 0xEE);
  _mm256_storeu_ps(d, _mm256_permute2f128_ps(d0, d4, 0x20));
  _mm256_storeu_ps(d + ldd, _mm256_permute2f128_ps(d1, d5, 0x20));
  _mm256_storeu_ps(d + 2 * ldd, _mm256_permute2f128_ps(d2, d6, 0x20));
  _mm256_storeu_ps(d + 3 * ldd, _mm256_permute2f128_ps(d3, d7, 0x20));
  _mm256_storeu_ps(d + 4 * ldd, _mm256_permute2f128_ps(d0, d4, 0x31));
  _mm256_storeu_ps(d + 5 * ldd, _mm256_permute2f128_ps(d1, d5, 0x31));
  _mm256_storeu_ps(d + 6 * ldd, _mm256_permute2f128_ps(d2, d6, 0x31));
  _mm256_storeu_ps(d + 7 * ldd, _mm256_permute2f128_ps(d3, d7, 0x31));
}

// One 4 × 4 double tile.
__attribute__((target("avx2"), always_inline)) static inline void tile_avx2(const double* s, std::int64_t lds, double* d, std::int64_t ldd) {
  const __m256d a0 = _mm256_loadu_pd(s), a1 = _mm256_loadu_pd(s + lds), a2 = _mm256_loadu_pd(s + 2 * lds), a3 = _mm256_loadu_pd(s + 3 * lds);
  const __m256d b0 = _mm256_unpacklo_pd(a0, a1), b1 = _mm256_unpackhi_pd(a0, a1), b2 = _mm256_unpacklo_pd(a2, a3),
                b3 = _mm256_unpackhi_pd(a2, a3);
  _mm256_storeu_pd(d, _mm256_permute2f128_pd(b0, b2, 0x20));
  _mm256_storeu_pd(d + ldd, _mm256_permute2f128_pd(b1, b3, 0x20));
  _mm256_storeu_pd(d + 2 * ldd, _mm256_permute2f128_pd(b0, b2, 0x31));
  _mm256_storeu_pd(d + 3 * ldd, _mm256_permute2f128_pd(b1, b3, 0x31));
}

// dst[c·ldd + r] = src[r·lds + c] for r < rows, c < cols: whole tiles of one ymm per row (8 floats,
// 4 doubles) in registers, the ragged edges element by element.
template <typename T>
__attribute__((target("avx2"))) void transpose_avx2(const T* src, std::int64_t lds, std::int64_t rows, std::int64_t cols, T* dst,
                                                    std::int64_t ldd) {
  constexpr std::int64_t B = 32 / sizeof(T);
  const std::int64_t rb = rows / B * B, cb = cols / B * B;
  for (std::int64_t r = 0; r < rb; r += B) {
    for (std::int64_t c = 0; c < cb; c += B) tile_avx2(src + r * lds + c, lds, dst + c * ldd + r, ldd);
  }
  transpose_scalar(src + cb, lds, rb, cols - cb, dst + cb * ldd, ldd);  // the columns right of the whole tiles
  transpose_scalar(src + rb * lds, lds, rows - rb, cols, dst + rb, ldd);  // the rows below them
}
#endif

template <typename T>
using Kernel = void (*)(const T*, std::int64_t, const T*, std::int64_t, T*, std::int64_t, bool);

// by_rows[R] computes R output rows; max_rows: the largest R.
template <typename T>
struct Kernels {
  Kernel<T> by_rows[15] = {};
  int max_rows = 0;
  void (*transpose)(const T*, std::int64_t, std::int64_t, std::int64_t, T*, std::int64_t) = transpose_scalar<T>;
};

template <typename T>
Kernels<T> kernels_for(GemmIsa isa) {
  Kernels<T> k;
  switch (isa) {
#if defined(__x86_64__)
    case GemmIsa::avx512:
      // 14 rows × 2 zmm = 28 accumulators of the 32 registers.
      k = {{nullptr, kernel_avx512<T, 1>, kernel_avx512<T, 2>, kernel_avx512<T, 3>, kernel_avx512<T, 4>, kernel_avx512<T, 5>,
            kernel_avx512<T, 6>, kernel_avx512<T, 7>, kernel_avx512<T, 8>, kernel_avx512<T, 9>, kernel_avx512<T, 10>,
            kernel_avx512<T, 11>, kernel_avx512<T, 12>, kernel_avx512<T, 13>, kernel_avx512<T, 14>},
           14,
           transpose_avx2<T>};
      break;
    case GemmIsa::avx2:
      k = {{nullptr, kernel_avx2<T, 1>, kernel_avx2<T, 2>, kernel_avx2<T, 3>, kernel_avx2<T, 4>, kernel_avx2<T, 5>, kernel_avx2<T, 6>},
           6,
           transpose_avx2<T>};
      break;
#endif
    default:
      k = {{nullptr, kernel_scalar<T, 1>, kernel_scalar<T, 2>, kernel_scalar<T, 3>, kernel_scalar<T, 4>}, 4, transpose_scalar<T>};
      break;
  }
  return k;
}

// Weights stored in another type (gemm_xwt_stored): rows of o.ldw values of `dtype`.
struct StoredWeights {
  const std::byte* data = nullptr;
  DType dtype = DType::F32;
};

template <typename T>
void gemm_impl(const GemmOperands<T>& o, GemmIsa isa, bool accumulate, const StoredWeights* stored = nullptr) {
  const std::int64_t rows = o.rows, K = o.K, N = o.N;
  if (rows <= 0 || N <= 0) return;
  if (K <= 0) {
    if (accumulate) return;
    if (o.y_transposed) {
      for (std::int64_t j = 0; j < N; ++j) std::fill(o.y + j * o.ldy, o.y + j * o.ldy + rows, T(0));
    } else {
      for (std::int64_t t = 0; t < rows; ++t) std::fill(o.y + t * o.ldy, o.y + t * o.ldy + N, T(0));
    }
    return;
  }
  constexpr std::int64_t P = kTokenPanel<T>;
  const Kernels<T> kern = kernels_for<T>(isa);
  const std::int64_t panels = (rows + P - 1) / P, tpad = panels * P;
  const bool parallel = !omp_in_parallel();
  // The split never changes a result (each output is its own chain), only the speed: items of up
  // to 256 rows keep a token block's weights in L2; smaller ones give every thread two of them.
  const std::int64_t threads = parallel ? omp_get_max_threads() : 1;
  std::int64_t row_block = kRowBlock;
  while (row_block > 32 && (N + row_block - 1) / row_block < 2 * threads) row_block /= 2;
  const std::int64_t items = (N + row_block - 1) / row_block;
  // Stored weights come from memory, not cache, and are converted per tile: twice the token block
  // (its k-block of x, 512 KB, still in L2) halves both.
  const std::int64_t tc = stored ? 2 * kTc : kTc;
  // Buffers kept per thread: fresh pages cost more to touch here than a small product computes.
  thread_local std::vector<T> xp;
  xp.resize(std::max(xp.size(), static_cast<std::size_t>(tpad * K)));
  pack_x(o.x, o.ldx, rows, K, xp.data(), parallel && panels > 1);
  const T* packed = xp.data();
#pragma omp parallel if (parallel && items > 1)
  {
    thread_local std::vector<T> ct;  // yᵀ of one work item
    ct.resize(std::max(ct.size(), static_cast<std::size_t>(row_block * tpad)));
    thread_local std::vector<float> wt;  // a stored-weight tile as float
    if (stored) wt.resize(std::max(wt.size(), static_cast<std::size_t>(kern.max_rows * kKc)));
#pragma omp for schedule(dynamic, 1)
    for (std::int64_t item = 0; item < items; ++item) {
      const std::int64_t j0 = item * row_block, nj = std::min(row_block, N - j0);
      // The kernels compute yᵀ tiles: written straight into a transposed y whose token count
      // fills whole panels, else through ct (copied or transposed in and out).
      const bool direct = o.y_transposed && rows % P == 0;
      T* c = direct ? o.y + j0 * o.ldy : ct.data();
      const std::int64_t ldc = direct ? o.ldy : tpad;
      if (accumulate && !direct) {  // the chains start from y's values
        if (o.y_transposed) {
          for (std::int64_t j = 0; j < nj; ++j) std::copy(o.y + (j0 + j) * o.ldy, o.y + (j0 + j) * o.ldy + rows, ct.data() + j * tpad);
        } else {
          kern.transpose(o.y + j0, o.ldy, rows, nj, ct.data(), tpad);
        }
      }
      for (std::int64_t p0 = 0; p0 < panels; p0 += tc) {
        const std::int64_t p1 = std::min(panels, p0 + tc);
        for (std::int64_t k0 = 0; k0 < K; k0 += kKc) {
          const std::int64_t kc = std::min(kKc, K - k0);
          for (std::int64_t r0 = 0; r0 < nj; r0 += kern.max_rows) {
            const int R = static_cast<int>(std::min<std::int64_t>(kern.max_rows, nj - r0));
            const T* wr = stored ? nullptr : o.w + (j0 + r0) * o.ldw + k0;
            std::int64_t ldw = o.ldw;
            if constexpr (std::is_same_v<T, float>) {
              if (stored) {  // converted once per tile, used by all of the token block's panels
                const std::size_t esize = dtype_size(stored->dtype);
                for (int r = 0; r < R; ++r) {
                  const std::byte* src = stored->data + (static_cast<std::size_t>((j0 + r0 + r) * o.ldw + k0)) * esize;
                  convert_span_to_f32(stored->dtype, src, static_cast<std::size_t>(kc), wt.data() + r * kKc);
                }
                wr = wt.data();
                ldw = kKc;
                // The next tile's rows, into L2 while this one's panels run: short strided
                // segments the hardware prefetcher does not pick up.
                for (std::int64_t r = r0 + R; r < std::min(nj, r0 + 2 * R); ++r) {
                  const std::byte* src = stored->data + (static_cast<std::size_t>((j0 + r) * o.ldw + k0)) * esize;
                  for (std::size_t b = 0; b < static_cast<std::size_t>(kc) * esize; b += 64) __builtin_prefetch(src + b, 0, 2);
                }
              }
            }
            for (std::int64_t p = p0; p < p1; ++p) {
              kern.by_rows[R](wr, ldw, packed + p * K * P + k0 * P, kc, c + r0 * ldc + p * P, ldc, k0 == 0 && !accumulate);
            }
          }
        }
      }
      if (o.y_transposed && !direct) {
        for (std::int64_t j = 0; j < nj; ++j) std::copy(ct.data() + j * tpad, ct.data() + j * tpad + rows, o.y + (j0 + j) * o.ldy);
      } else if (!direct) {
        kern.transpose(ct.data(), tpad, nj, rows, o.y + j0, o.ldy);
      }
    }
  }
}

}  // namespace

GemmIsa gemm_best_isa() {
#if defined(__x86_64__)
  static const GemmIsa best = __builtin_cpu_supports("avx512f")                                     ? GemmIsa::avx512
                              : __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") ? GemmIsa::avx2
                                                                                                : GemmIsa::scalar;
  return best;
#else
  return GemmIsa::scalar;
#endif
}

const char* gemm_isa_name(GemmIsa isa) {
  switch (isa) {
    case GemmIsa::avx512: return "avx512";
    case GemmIsa::avx2: return "avx2";
    default: return "scalar";
  }
}

void gemm_xwt(const float* x, std::int64_t T, std::int64_t K, const float* w, std::int64_t N, float* y, std::int64_t ldy,
              GemmIsa isa, bool accumulate) {
  gemm_impl(GemmOperands<float>{x, K, T, K, w, K, N, y, ldy}, isa, accumulate);
}

void gemm_xwt(const float* x, std::int64_t T, std::int64_t K, const float* w, std::int64_t N, float* y, std::int64_t ldy,
              bool accumulate) {
  gemm_impl(GemmOperands<float>{x, K, T, K, w, K, N, y, ldy}, gemm_best_isa(), accumulate);
}

void gemm_xwt(const GemmOperands<float>& o, bool accumulate, GemmIsa isa) { gemm_impl(o, isa, accumulate); }
void gemm_xwt(const GemmOperands<double>& o, bool accumulate, GemmIsa isa) { gemm_impl(o, isa, accumulate); }

void gemm_xwt_stored(const float* x, std::int64_t T, std::int64_t K, const std::byte* w, DType w_dtype, std::int64_t N, float* y,
                     std::int64_t ldy, GemmIsa isa) {
  if (w_dtype != DType::F32 && w_dtype != DType::F16 && w_dtype != DType::BF16) {
    fail<Error>("gemm_xwt_stored: weights of type {} (F32, F16 or BF16 only)", dtype_name(w_dtype));
  }
  const StoredWeights stored{w, w_dtype};
  gemm_impl(GemmOperands<float>{x, K, T, K, nullptr, K, N, y, ldy}, isa, false, &stored);
}

void gemm_xwt(const Mat& x, const Mat& w, Mat& y) {
  if (x.cols() != w.cols()) fail<Error>("gemm: x has {} columns, w {}", x.cols(), w.cols());
  y.resize(x.rows(), w.rows());
  gemm_xwt(x.data(), x.rows(), x.cols(), w.data(), w.rows(), y.data(), w.rows());
}

}  // namespace quant
