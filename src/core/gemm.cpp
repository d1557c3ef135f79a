// y = x · wᵀ with register-blocked micro-kernels (docs/performance.md, "GEMM").
//
// The activations x are packed once per call into panels of 32 tokens ([k][32] per panel, zero
// padded); the weights are read in place, a few output rows at a time, each weight broadcast
// against a panel's 32 tokens. A micro-kernel computes an R × 32 tile of yᵀ: R output rows, 32
// tokens, one accumulator lane per output. The work is split over threads in blocks of output rows; k runs in blocks of kKc (the accumulators are stored and reloaded between blocks,
// which does not round), so every output is the chain acc = fma(w[j,k], x[t,k], acc) over
// k = 0 … K−1 from acc = 0, on every kernel. Packing x instead of w: x is the small operand of
// the calibration forward (128–512 tokens against up to 14k output rows), and packing it costs
// O(T·K) against the product's O(T·K·N).
#include "quant/core/gemm.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "quant/core/error.h"

namespace quant {

namespace {

constexpr std::int64_t kTokenPanel = 32;     // tokens per packed panel (2 zmm / 4 ymm)
constexpr std::int64_t kKc = 256;       // k per block: a kernel's weight rows stay in L1
constexpr std::int64_t kTc = 8;         // panels per token block: their k-block stays in L2
constexpr std::int64_t kRowBlock = 256;  // output rows per work item at most (halved down to 32 to give every thread work)

// Panel p holds tokens 32p … 32p+31 as xp[p·K·32 + k·32 + i].
void pack_x(const float* x, std::int64_t T, std::int64_t K, float* xp, bool parallel) {
  const std::int64_t panels = (T + kTokenPanel - 1) / kTokenPanel;
#pragma omp parallel for schedule(static) if (parallel)
  for (std::int64_t p = 0; p < panels; ++p) {
    float* dst = xp + p * K * kTokenPanel;
    const std::int64_t n = std::min(kTokenPanel, T - p * kTokenPanel);
    if (n < kTokenPanel) std::fill(dst, dst + K * kTokenPanel, 0.0f);
    for (std::int64_t i = 0; i < n; ++i) {
      const float* src = x + (p * kTokenPanel + i) * K;
      for (std::int64_t k = 0; k < K; ++k) dst[k * kTokenPanel + i] = src[k];
    }
  }
}

// c[r·ldc + i] (= y[token i, row r]) ← (first ? 0 : c) + Σ_k w[r·ldw + k] · p[k·32 + i], r < R.
template <int R>
void kernel_scalar(const float* w, std::int64_t ldw, const float* p, std::int64_t kc, float* c, std::int64_t ldc, bool first) {
  for (int r = 0; r < R; ++r) {
    for (std::int64_t i = 0; i < kTokenPanel; ++i) {
      float acc = first ? 0.0f : c[r * ldc + i];
      for (std::int64_t k = 0; k < kc; ++k) acc = std::fma(w[r * ldw + k], p[k * kTokenPanel + i], acc);
      c[r * ldc + i] = acc;
    }
  }
}

#if defined(__x86_64__)
template <int R>
__attribute__((target("avx512f"))) void kernel_avx512(const float* w, std::int64_t ldw, const float* p, std::int64_t kc, float* c,
                                                      std::int64_t ldc, bool first) {
  __m512 a0[R], a1[R];
  for (int r = 0; r < R; ++r) {
    a0[r] = first ? _mm512_setzero_ps() : _mm512_loadu_ps(c + r * ldc);
    a1[r] = first ? _mm512_setzero_ps() : _mm512_loadu_ps(c + r * ldc + 16);
  }
  for (std::int64_t k = 0; k < kc; ++k) {
    const __m512 b0 = _mm512_loadu_ps(p + k * kTokenPanel), b1 = _mm512_loadu_ps(p + k * kTokenPanel + 16);
    for (int r = 0; r < R; ++r) {
      const __m512 v = _mm512_set1_ps(w[r * ldw + k]);
      a0[r] = _mm512_fmadd_ps(v, b0, a0[r]);
      a1[r] = _mm512_fmadd_ps(v, b1, a1[r]);
    }
  }
  for (int r = 0; r < R; ++r) {
    _mm512_storeu_ps(c + r * ldc, a0[r]);
    _mm512_storeu_ps(c + r * ldc + 16, a1[r]);
  }
}

// Each half panel (16 tokens, 2 ymm) in turn: 6 rows × 2 ymm = 12 accumulators of the 16 registers.
template <int R>
__attribute__((target("avx2,fma"))) void kernel_avx2(const float* w, std::int64_t ldw, const float* p, std::int64_t kc, float* c,
                                                     std::int64_t ldc, bool first) {
  for (int h = 0; h < 2; ++h) {
    __m256 a0[R], a1[R];
    for (int r = 0; r < R; ++r) {
      a0[r] = first ? _mm256_setzero_ps() : _mm256_loadu_ps(c + r * ldc + 16 * h);
      a1[r] = first ? _mm256_setzero_ps() : _mm256_loadu_ps(c + r * ldc + 16 * h + 8);
    }
    for (std::int64_t k = 0; k < kc; ++k) {
      const __m256 b0 = _mm256_loadu_ps(p + k * kTokenPanel + 16 * h), b1 = _mm256_loadu_ps(p + k * kTokenPanel + 16 * h + 8);
      for (int r = 0; r < R; ++r) {
        const __m256 v = _mm256_broadcast_ss(w + r * ldw + k);
        a0[r] = _mm256_fmadd_ps(v, b0, a0[r]);
        a1[r] = _mm256_fmadd_ps(v, b1, a1[r]);
      }
    }
    for (int r = 0; r < R; ++r) {
      _mm256_storeu_ps(c + r * ldc + 16 * h, a0[r]);
      _mm256_storeu_ps(c + r * ldc + 16 * h + 8, a1[r]);
    }
  }
}

// dst[c·ldd + r] = src[r·lds + c] for r < rows, c < cols, in 8 × 8 tiles transposed in registers.
__attribute__((target("avx2"))) void transpose_avx2(const float* src, std::int64_t lds, std::int64_t rows, std::int64_t cols, float* dst,
                                                    std::int64_t ldd) {
  const std::int64_t r8 = rows / 8 * 8, c8 = cols / 8 * 8;
  for (std::int64_t r = 0; r < r8; r += 8) {
    for (std::int64_t c = 0; c < c8; c += 8) {
      const float* s = src + r * lds + c;
      const __m256 a0 = _mm256_loadu_ps(s), a1 = _mm256_loadu_ps(s + lds), a2 = _mm256_loadu_ps(s + 2 * lds),
                   a3 = _mm256_loadu_ps(s + 3 * lds), a4 = _mm256_loadu_ps(s + 4 * lds), a5 = _mm256_loadu_ps(s + 5 * lds),
                   a6 = _mm256_loadu_ps(s + 6 * lds), a7 = _mm256_loadu_ps(s + 7 * lds);
      const __m256 b0 = _mm256_unpacklo_ps(a0, a1), b1 = _mm256_unpackhi_ps(a0, a1), b2 = _mm256_unpacklo_ps(a2, a3),
                   b3 = _mm256_unpackhi_ps(a2, a3), b4 = _mm256_unpacklo_ps(a4, a5), b5 = _mm256_unpackhi_ps(a4, a5),
                   b6 = _mm256_unpacklo_ps(a6, a7), b7 = _mm256_unpackhi_ps(a6, a7);
      const __m256 d0 = _mm256_shuffle_ps(b0, b2, 0x44), d1 = _mm256_shuffle_ps(b0, b2, 0xEE), d2 = _mm256_shuffle_ps(b1, b3, 0x44),
                   d3 = _mm256_shuffle_ps(b1, b3, 0xEE), d4 = _mm256_shuffle_ps(b4, b6, 0x44), d5 = _mm256_shuffle_ps(b4, b6, 0xEE),
                   d6 = _mm256_shuffle_ps(b5, b7, 0x44), d7 = _mm256_shuffle_ps(b5, b7, 0xEE);
      float* d = dst + c * ldd + r;
      _mm256_storeu_ps(d, _mm256_permute2f128_ps(d0, d4, 0x20));
      _mm256_storeu_ps(d + ldd, _mm256_permute2f128_ps(d1, d5, 0x20));
      _mm256_storeu_ps(d + 2 * ldd, _mm256_permute2f128_ps(d2, d6, 0x20));
      _mm256_storeu_ps(d + 3 * ldd, _mm256_permute2f128_ps(d3, d7, 0x20));
      _mm256_storeu_ps(d + 4 * ldd, _mm256_permute2f128_ps(d0, d4, 0x31));
      _mm256_storeu_ps(d + 5 * ldd, _mm256_permute2f128_ps(d1, d5, 0x31));
      _mm256_storeu_ps(d + 6 * ldd, _mm256_permute2f128_ps(d2, d6, 0x31));
      _mm256_storeu_ps(d + 7 * ldd, _mm256_permute2f128_ps(d3, d7, 0x31));
    }
    for (std::int64_t c = c8; c < cols; ++c) {
      for (std::int64_t i = r; i < r + 8; ++i) dst[c * ldd + i] = src[i * lds + c];
    }
  }
  for (std::int64_t r = r8; r < rows; ++r) {
    for (std::int64_t c = 0; c < cols; ++c) dst[c * ldd + r] = src[r * lds + c];
  }
}
#endif

void transpose_scalar(const float* src, std::int64_t lds, std::int64_t rows, std::int64_t cols, float* dst, std::int64_t ldd) {
  for (std::int64_t c = 0; c < cols; ++c) {
    for (std::int64_t r = 0; r < rows; ++r) dst[c * ldd + r] = src[r * lds + c];
  }
}

using Kernel = void (*)(const float*, std::int64_t, const float*, std::int64_t, float*, std::int64_t, bool);

// by_rows[R] computes R output rows; max_rows: the largest R.
struct Kernels {
  Kernel by_rows[15] = {};
  int max_rows = 0;
  void (*transpose)(const float*, std::int64_t, std::int64_t, std::int64_t, float*, std::int64_t) = transpose_scalar;
};

Kernels kernels_for(GemmIsa isa) {
  Kernels k;
  switch (isa) {
#if defined(__x86_64__)
    case GemmIsa::avx512:
      // 14 rows × 2 zmm = 28 accumulators of the 32 registers.
      k = {{nullptr, kernel_avx512<1>, kernel_avx512<2>, kernel_avx512<3>, kernel_avx512<4>, kernel_avx512<5>, kernel_avx512<6>,
            kernel_avx512<7>, kernel_avx512<8>, kernel_avx512<9>, kernel_avx512<10>, kernel_avx512<11>, kernel_avx512<12>,
            kernel_avx512<13>, kernel_avx512<14>},
           14,
           transpose_avx2};
      break;
    case GemmIsa::avx2:
      k = {{nullptr, kernel_avx2<1>, kernel_avx2<2>, kernel_avx2<3>, kernel_avx2<4>, kernel_avx2<5>, kernel_avx2<6>}, 6, transpose_avx2};
      break;
#endif
    default:
      k = {{nullptr, kernel_scalar<1>, kernel_scalar<2>, kernel_scalar<3>, kernel_scalar<4>}, 4, transpose_scalar};
      break;
  }
  return k;
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
  if (T <= 0 || N <= 0) return;
  if (K <= 0) {
    if (accumulate) return;
    for (std::int64_t t = 0; t < T; ++t) std::fill(y + t * ldy, y + t * ldy + N, 0.0f);
    return;
  }
  const Kernels kern = kernels_for(isa);
  const std::int64_t panels = (T + kTokenPanel - 1) / kTokenPanel, tpad = panels * kTokenPanel;
  const bool parallel = !omp_in_parallel();
  // The split never changes a result (each output is its own chain), only the speed: items of up
  // to 256 rows keep a token block's weights in L2; smaller ones give every thread two of them.
  const std::int64_t threads = parallel ? omp_get_max_threads() : 1;
  std::int64_t row_block = kRowBlock;
  while (row_block > 32 && (N + row_block - 1) / row_block < 2 * threads) row_block /= 2;
  const std::int64_t items = (N + row_block - 1) / row_block;
  // Buffers kept per thread: fresh pages cost more to touch here than a small product computes.
  thread_local std::vector<float> xp;
  xp.resize(std::max(xp.size(), static_cast<std::size_t>(tpad * K)));
  pack_x(x, T, K, xp.data(), parallel && panels > 1);
  const float* packed = xp.data();
#pragma omp parallel if (parallel && items > 1)
  {
    thread_local std::vector<float> ct;  // yᵀ of one work item
    ct.resize(std::max(ct.size(), static_cast<std::size_t>(row_block * tpad)));
#pragma omp for schedule(dynamic, 1)
    for (std::int64_t item = 0; item < items; ++item) {
      const std::int64_t j0 = item * row_block, rows = std::min(row_block, N - j0);
      if (accumulate) kern.transpose(y + j0, ldy, T, rows, ct.data(), tpad);  // the chains start from y's values
      for (std::int64_t p0 = 0; p0 < panels; p0 += kTc) {
        const std::int64_t p1 = std::min(panels, p0 + kTc);
        for (std::int64_t k0 = 0; k0 < K; k0 += kKc) {
          const std::int64_t kc = std::min(kKc, K - k0);
          for (std::int64_t r0 = 0; r0 < rows; r0 += kern.max_rows) {
            const int R = static_cast<int>(std::min<std::int64_t>(kern.max_rows, rows - r0));
            const float* wr = w + (j0 + r0) * K + k0;
            for (std::int64_t p = p0; p < p1; ++p) {
              kern.by_rows[R](wr, K, packed + p * K * kTokenPanel + k0 * kTokenPanel, kc, ct.data() + r0 * tpad + p * kTokenPanel, tpad,
                               k0 == 0 && !accumulate);
            }
          }
        }
      }
      kern.transpose(ct.data(), tpad, rows, T, y + j0, ldy);
    }
  }
}

void gemm_xwt(const float* x, std::int64_t T, std::int64_t K, const float* w, std::int64_t N, float* y, std::int64_t ldy,
              bool accumulate) {
  gemm_xwt(x, T, K, w, N, y, ldy, gemm_best_isa(), accumulate);
}

void gemm_xwt(const Mat& x, const Mat& w, Mat& y) {
  if (x.cols() != w.cols()) fail<Error>("gemm: x has {} columns, w {}", x.cols(), w.cols());
  y.resize(x.rows(), w.rows());
  gemm_xwt(x.data(), x.rows(), x.cols(), w.data(), w.rows(), y.data(), w.rows());
}

}  // namespace quant
