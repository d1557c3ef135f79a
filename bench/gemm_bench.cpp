// quant's GEMM (src/core/gemm.cpp) against Eigen as linear_forward called it before (64-row
// blocks of outputs over OpenMP threads, Eigen single-threaded per block), side by side in one
// process, for the forward pass's shapes on the 1.1B-shaped model: eval windows (512, 2048
// tokens) and calibration windows (128 tokens). Prints GFLOP/s of each kernel this CPU runs and
// the ratio to Eigen. Usage: OMP_NUM_THREADS=2 build/bench/quant_gemm_bench [REPEATS=3]
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "quant/core/gemm.h"

using quant::GemmIsa;
using quant::Mat;

namespace {

double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

void eigen_blocks(const Mat& x, const Mat& w, Mat& y) {
  const long n = w.rows(), blocks = (n + 63) / 64;
  y.resize(x.rows(), n);
#pragma omp parallel for schedule(dynamic, 1)
  for (long b = 0; b < blocks; ++b) {
    const long r = std::min(64L, n - b * 64);
    y.middleCols(b * 64, r).noalias() = x * w.middleRows(b * 64, r).transpose();
  }
}

}  // namespace

int main(int argc, char** argv) {
  const int reps = argc > 1 ? std::max(1, std::atoi(argv[1])) : 3;
  const long shapes[][3] = {{2048, 2048, 5632}, {2048, 5632, 2048}, {512, 2048, 2048}, {512, 2048, 5632},
                            {512, 5632, 2048},  {128, 2048, 5632},  {128, 5632, 2048}, {128, 2048, 256}};
  std::vector<GemmIsa> isas{GemmIsa::avx2};
  if (quant::gemm_best_isa() == GemmIsa::avx512) isas.insert(isas.begin(), GemmIsa::avx512);
  if (quant::gemm_best_isa() == GemmIsa::scalar) isas = {GemmIsa::scalar};
  std::printf("%d threads, best kernel %s; GFLOP/s, best of %d\n", omp_get_max_threads(),
              quant::gemm_isa_name(quant::gemm_best_isa()), reps);
  std::printf("%-22s %8s", "tokens x in -> out", "Eigen");
  for (GemmIsa i : isas) std::printf(" %8s %6s", quant::gemm_isa_name(i), "ratio");
  std::printf("\n");
  for (const auto& s : shapes) {
    const long T = s[0], K = s[1], N = s[2];
    const Mat x = Mat::Random(T, K), w = Mat::Random(N, K);
    Mat y(T, N);
    const double flop = 2.0 * static_cast<double>(T * K * N);
    auto best = [&](auto&& f) {
      f();  // warm-up
      double b = 1e30;
      for (int r = 0; r < reps; ++r) {
        const double t0 = now();
        f();
        b = std::min(b, now() - t0);
      }
      return flop / b / 1e9;
    };
    const double eigen = best([&] { eigen_blocks(x, w, y); });
    std::printf("%5ld x %5ld -> %5ld %8.1f", T, K, N, eigen);
    for (GemmIsa i : isas) {
      const double g = best([&] { quant::gemm_xwt(x.data(), T, K, w.data(), N, y.data(), N, i); });
      std::printf(" %8.1f %6.2f", g, g / eigen);
    }
    std::printf("\n");
  }
}
