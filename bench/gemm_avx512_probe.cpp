// Probe for issue 25 (items 2 and 4): how far is Eigen's GEMM, as quant calls it, from what this
// CPU's AVX-512 units do with a plain register-blocked kernel? Not part of quant or its CMake
// build: a 14 × 32 micro-kernel (28 zmm accumulators, one broadcast per row and k) over weight
// panels packed 32 outputs wide and 384 deep, threads over 32-wide output panels; every output is
// one FMA chain over k in order (so an AVX2 twin of it would round identically). Eigen runs as
// quant's linear_forward does (256-wide output blocks, single-threaded per block). Build and run
// (one line):
//   g++ -O3 -march=x86-64-v3 -fopenmp -DEIGEN_DONT_PARALLELIZE -I/usr/include/eigen3
//     bench/gemm_avx512_probe.cpp -o /tmp/gemm_probe && OMP_NUM_THREADS=2 /tmp/gemm_probe
#include <immintrin.h>
#include <omp.h>

#include <Eigen/Dense>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>

using Mat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

namespace {

constexpr long kNr = 32, kKc = 384;

double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

// c[R × 32] = (first ? 0 : c) + a[R × kc] · p[kc × 32]; only the first `ncols` columns are stored.
template <int R>
__attribute__((target("avx512f"))) void kernel(const float* a, long lda, const float* p, long kc, float* c, long ldc,
                                               long ncols, bool first) {
  __m512 acc0[R], acc1[R];
  const auto mask = [](long n) { return n >= 16 ? __mmask16(0xFFFF) : n <= 0 ? __mmask16(0) : __mmask16((1u << n) - 1); };
  const __mmask16 m0 = mask(ncols), m1 = mask(ncols - 16);
  for (int r = 0; r < R; ++r) {
    acc0[r] = first ? _mm512_setzero_ps() : _mm512_maskz_loadu_ps(m0, c + r * ldc);
    acc1[r] = first ? _mm512_setzero_ps() : _mm512_maskz_loadu_ps(m1, c + r * ldc + 16);
  }
  for (long k = 0; k < kc; ++k) {
    const __m512 b0 = _mm512_load_ps(p + k * kNr), b1 = _mm512_load_ps(p + k * kNr + 16);
    for (int r = 0; r < R; ++r) {
      const __m512 x = _mm512_set1_ps(a[r * lda + k]);
      acc0[r] = _mm512_fmadd_ps(x, b0, acc0[r]);
      acc1[r] = _mm512_fmadd_ps(x, b1, acc1[r]);
    }
  }
  for (int r = 0; r < R; ++r) {
    _mm512_mask_storeu_ps(c + r * ldc, m0, acc0[r]);
    _mm512_mask_storeu_ps(c + r * ldc + 16, m1, acc1[r]);
  }
}

// y = x · wᵀ, x [T × K], w [N × K], all row-major.
void probe_gemm(const Mat& x, const Mat& w, Mat& y) {
  const long T = x.rows(), K = x.cols(), N = w.rows(), panels = (N + kNr - 1) / kNr;
  y.resize(T, N);
#pragma omp parallel
  {
    auto* p = static_cast<float*>(std::aligned_alloc(64, sizeof(float) * kKc * kNr));
#pragma omp for schedule(dynamic, 1)
    for (long b = 0; b < panels; ++b) {
      const long j0 = b * kNr, nc = std::min(kNr, N - j0);
      for (long k0 = 0; k0 < K; k0 += kKc) {
        const long kc = std::min(kKc, K - k0);
        for (long j = 0; j < kNr; ++j)
          for (long k = 0; k < kc; ++k) p[k * kNr + j] = j < nc ? w(j0 + j, k0 + k) : 0.0f;
        long i = 0;
        for (; i + 14 <= T; i += 14) kernel<14>(x.data() + i * K + k0, K, p, kc, y.data() + i * N + j0, N, nc, k0 == 0);
        for (; i < T; ++i) kernel<1>(x.data() + i * K + k0, K, p, kc, y.data() + i * N + j0, N, nc, k0 == 0);
      }
    }
    std::free(p);
  }
}

void eigen_gemm(const Mat& x, const Mat& w, Mat& y) {
  const long N = w.rows(), blocks = (N + 255) / 256;
  y.resize(x.rows(), N);
#pragma omp parallel for schedule(dynamic, 1)
  for (long b = 0; b < blocks; ++b) {
    const long n = std::min(256L, N - b * 256);
    y.middleCols(b * 256, n).noalias() = x * w.middleRows(b * 256, n).transpose();
  }
}

}  // namespace

int main() {
  if (!__builtin_cpu_supports("avx512f")) {
    std::puts("this CPU has no AVX-512F");
    return 0;
  }
  const long shapes[][3] = {{2048, 2048, 5632}, {2048, 5632, 2048}, {512, 2048, 2048}, {128, 2048, 5632}};
  std::printf("%d threads\n", omp_get_max_threads());
  for (const auto& s : shapes) {
    const long T = s[0], K = s[1], N = s[2];
    Mat x = Mat::Random(T, K), w = Mat::Random(N, K), y1, y2;
    probe_gemm(x, w, y1);
    eigen_gemm(x, w, y2);
    const double flop = 2.0 * T * K * N * 3;
    double t0 = now();
    for (int r = 0; r < 3; ++r) probe_gemm(x, w, y1);
    double t1 = now();
    for (int r = 0; r < 3; ++r) eigen_gemm(x, w, y2);
    double t2 = now();
    std::printf("%5ld x %4ld -> %4ld: probe %6.1f GFLOP/s, Eigen %6.1f GFLOP/s, ratio %.2f, max |diff| %.2g\n", T, K, N,
                flop / (t1 - t0) / 1e9, flop / (t2 - t1) / 1e9, (t2 - t1) / (t1 - t0), (y1 - y2).cwiseAbs().maxCoeff());
  }
}
