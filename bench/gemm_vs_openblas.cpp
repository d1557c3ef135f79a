// Single-thread sgemm GFLOP/s, Eigen (as quant builds it) vs OpenBLAS, on the forward pass's
// shapes y = x·wᵀ (docs/performance.md "GEMM: Eigen or a BLAS"). Not part of the CMake build (it
// needs libopenblas-dev libopenblas0-serial, which quant does not use). Build and run:
//   g++ -O3 -march=x86-64-v3 -DEIGEN_DONT_PARALLELIZE -I/usr/include/eigen3 \
//     -I/usr/include/x86_64-linux-gnu/openblas-serial bench/gemm_vs_openblas.cpp -o /tmp/gemm \
//     -L/usr/lib/x86_64-linux-gnu/openblas-serial -lopenblas -Wl,-rpath,/usr/lib/x86_64-linux-gnu/openblas-serial && /tmp/gemm
#include <Eigen/Dense>
#include <cblas.h>
#include <chrono>
#include <cstdio>
using Mat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
int main() {
  const int shapes[][3] = {{512, 2048, 2048}, {512, 2048, 5632}, {512, 5632, 2048}, {128, 256, 768}};
  for (auto& s : shapes) {
    const int T = s[0], in = s[1], out = s[2];
    Mat x = Mat::Random(T, in), w = Mat::Random(out, in), y(T, out), y2(T, out);
    auto bench = [&](auto f) {
      f();
      int reps = 0;
      auto t0 = std::chrono::steady_clock::now();
      double el = 0;
      do { f(); ++reps; el = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(); } while (el < 1.0);
      return 2.0 * T * in * out * reps / el / 1e9;
    };
    double e = bench([&] { y.noalias() = x * w.transpose(); });
    double b = bench([&] { cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, out, in, 1.0f, x.data(), in, w.data(), in, 0.0f, y2.data(), out); });
    std::printf("%4d x %4d -> %4d: Eigen %6.1f GFLOP/s, OpenBLAS %6.1f GFLOP/s, ratio %.2f, max|diff| %.2e\n", T, in, out, e, b, b / e,
                (y - y2).cwiseAbs().maxCoeff());
  }
}
