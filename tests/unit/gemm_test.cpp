#include "quant/core/gemm.h"
#include "quant/core/error.h"
#include "quant/model/calibration.h"

#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <cstring>
#include <random>
#include <span>
#include <tuple>
#include <vector>

namespace quant {
namespace {

Mat random_mat(Eigen::Index rows, Eigen::Index cols, unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, 1.0f);
  Mat m(rows, cols);
  for (Eigen::Index i = 0; i < m.size(); ++i) m.data()[i] = d(rng);
  return m;
}

// The documented contract, written out: one fma chain over k in order from 0.
Mat chain_reference(const Mat& x, const Mat& w) {
  Mat y(x.rows(), w.rows());
  for (Eigen::Index t = 0; t < x.rows(); ++t) {
    for (Eigen::Index j = 0; j < w.rows(); ++j) {
      float acc = 0.0f;
      for (Eigen::Index k = 0; k < x.cols(); ++k) acc = std::fma(w(j, k), x(t, k), acc);
      y(t, j) = acc;
    }
  }
  return y;
}

std::vector<GemmIsa> runnable_isas() {
  std::vector<GemmIsa> isas{GemmIsa::scalar};
  if (gemm_best_isa() != GemmIsa::scalar) isas.push_back(GemmIsa::avx2);
  if (gemm_best_isa() == GemmIsa::avx512) isas.push_back(GemmIsa::avx512);
  return isas;
}

bool bit_equal(const Mat& a, const Mat& b) {
  return a.rows() == b.rows() && a.cols() == b.cols() &&
         std::memcmp(a.data(), b.data(), sizeof(float) * static_cast<std::size_t>(a.size())) == 0;
}

using Shape = std::tuple<int, int, int>;  // T, K, N
class Gemm : public ::testing::TestWithParam<Shape> {};

// Token counts across the 32-token panels and 8-panel blocks, k across the 256-deep blocks,
// output rows across the kernels' row counts (14, 3, 4) and the 64-row work items.
INSTANTIATE_TEST_SUITE_P(Shapes, Gemm,
                         ::testing::Values(Shape{1, 1, 1}, Shape{1, 7, 5}, Shape{31, 256, 64}, Shape{33, 257, 65},
                                           Shape{5, 600, 130}, Shape{260, 513, 29}, Shape{64, 1000, 200},
                                           Shape{600, 300, 31}));

TEST_P(Gemm, EveryKernelIsTheOrderedFmaChain) {
  const auto [T, K, N] = GetParam();
  const Mat x = random_mat(T, K, 1), w = random_mat(N, K, 2);
  const Mat ref = chain_reference(x, w);
  for (GemmIsa isa : runnable_isas()) {
    Mat y(T, N);
    gemm_xwt(x.data(), T, K, w.data(), N, y.data(), N, isa);
    EXPECT_TRUE(bit_equal(y, ref)) << gemm_isa_name(isa) << ": max |diff| " << (y - ref).cwiseAbs().maxCoeff();
  }
}

TEST_P(Gemm, AgreesWithADoublePrecisionProduct) {
  const auto [T, K, N] = GetParam();
  const Mat x = random_mat(T, K, 3), w = random_mat(N, K, 4);
  Mat y;
  gemm_xwt(x, w, y);
  const MatD ref = x.cast<double>() * w.cast<double>().transpose();
  // Each output sums K products of N(0,1)·N(0,1): error ≲ K·2⁻²⁴·√K·few.
  EXPECT_LE((y.cast<double>() - ref).cwiseAbs().maxCoeff(), 1e-6 * K * std::sqrt(static_cast<double>(K)) + 1e-6);
}

// Weights read as stored (F16, BF16, F32; at an odd address): bit for bit the product with the
// converted float matrix, on every kernel.
TEST_P(Gemm, StoredWeightsGiveTheConvertedMatrixProduct) {
  const auto [T, K, N] = GetParam();
  const Mat x = random_mat(T, K, 5), w = random_mat(N, K, 6);
  for (const DType dt : {DType::F16, DType::BF16, DType::F32}) {
    const std::size_t esize = dtype_size(dt);
    std::vector<std::byte> buf(1 + static_cast<std::size_t>(N * K) * esize);
    convert_from_f32(dt, std::span<const float>(w.data(), static_cast<std::size_t>(w.size())), buf.data() + 1);
    Mat wf(N, K);
    convert_to_f32(dt, buf.data() + 1, static_cast<std::size_t>(w.size()), wf.data());
    for (const GemmIsa isa : runnable_isas()) {
      Mat want(T, N), got(T, N);
      gemm_xwt(x.data(), T, K, wf.data(), N, want.data(), N, isa);
      gemm_xwt_stored(x.data(), T, K, buf.data() + 1, dt, N, got.data(), N, isa);
      EXPECT_TRUE(bit_equal(want, got)) << dtype_name(dt) << " on " << gemm_isa_name(isa);
    }
  }
}

TEST(GemmThreads, StoredWeightsOfAnotherTypeAreRefused) {
  const float x = 1.0f;
  std::byte w[4] = {};
  float y = 0;
  EXPECT_THROW(gemm_xwt_stored(&x, 1, 1, w, DType::I32, 1, &y, 1), Error);
}

TEST(GemmThreads, BitIdenticalForAnyThreadCountAndOutputStride) {
  const Mat x = random_mat(100, 300, 5), w = random_mat(333, 300, 6);
  const int saved = omp_get_max_threads();
  omp_set_num_threads(1);
  Mat y1;
  gemm_xwt(x, w, y1);
  omp_set_num_threads(3);
  Mat y3;
  gemm_xwt(x, w, y3);
  omp_set_num_threads(saved);
  EXPECT_TRUE(bit_equal(y1, y3));
  // Writing into the middle columns of a wider output leaves the others alone.
  Mat wide = Mat::Constant(100, 340, 7.0f);
  gemm_xwt(x.data(), 100, 300, w.data(), 333, wide.data() + 3, 340);
  EXPECT_TRUE(bit_equal(Mat(wide.middleCols(3, 333)), y1));
  EXPECT_EQ(wide.leftCols(3).minCoeff(), 7.0f);
  EXPECT_EQ(wide.rightCols(4).maxCoeff(), 7.0f);
}

TEST(GemmThreads, AccumulatingInKBlocksIsOneChain) {
  // y = x·wᵀ over k = 0…299 equals y over k = 0…99, then accumulated over k = 100…299 with the
  // same rows as separate (contiguous) operands.
  const Mat x = random_mat(40, 300, 7), w = random_mat(70, 300, 8);
  const Mat ref = chain_reference(x, w);
  for (GemmIsa isa : runnable_isas()) {
    const Mat xa = x.leftCols(100), xb = x.rightCols(200), wa = w.leftCols(100), wb = w.rightCols(200);
    Mat y(40, 70);
    gemm_xwt(xa.data(), 40, 100, wa.data(), 70, y.data(), 70, isa);
    gemm_xwt(xb.data(), 40, 200, wb.data(), 70, y.data(), 70, isa, /*accumulate=*/true);
    EXPECT_TRUE(bit_equal(y, ref)) << gemm_isa_name(isa);
  }
}

TEST(GemmThreads, GramAccumulationIsTheChainOverAllTokens) {
  // H = Σ over two windows of xᵀx (lower triangle, mirrored) is the chain over all 300 tokens in order.
  const Mat x1 = random_mat(120, 520, 9), x2 = random_mat(180, 520, 10);
  Mat H = Mat::Zero(520, 520);
  accumulate_gram(H, x1);
  accumulate_gram(H, x2);
  mirror_lower(H);
  Mat all(300, 520);
  all << x1, x2;
  const Mat at = all.transpose();
  const Mat ref = chain_reference(at, at);
  for (Eigen::Index i = 0; i < 520; ++i)
    for (Eigen::Index j = 0; j <= i; ++j) ASSERT_EQ(H(i, j), ref(i, j)) << i << "," << j;
  EXPECT_TRUE(bit_equal(H, Mat(H.transpose())));
}

// Doubles and strided operands (GPTQ's factorizations read blocks of n × n matrices in place):
// every kernel is the same ordered chain, in double, starting from y's values when accumulating.
TEST(GemmDouble, StridedBlocksAreTheOrderedFmaChainOnEveryKernel) {
  for (const auto& [T, K, N] : {Shape{1, 1, 1}, Shape{17, 129, 15}, Shape{33, 300, 70}, Shape{128, 128, 128}}) {
    const Mat xf = random_mat(T + 3, K + 5, 11), wf = random_mat(N + 2, K + 9, 12), yf = random_mat(T + 1, N + 4, 13);
    const MatD x = xf.cast<double>(), w = wf.cast<double>(), y0 = yf.cast<double>();
    // The blocks x[3:, 5:], w[2:, 9:], y[1:, 4:], each row of its full matrix.
    MatD ref = y0;
    for (int t = 0; t < T; ++t) {
      for (int j = 0; j < N; ++j) {
        double acc = y0(1 + t, 4 + j);
        for (int k = 0; k < K; ++k) acc = std::fma(w(2 + j, 9 + k), x(3 + t, 5 + k), acc);
        ref(1 + t, 4 + j) = acc;
      }
    }
    for (GemmIsa isa : runnable_isas()) {
      MatD y = y0;
      gemm_xwt(GemmOperands<double>{x.data() + 3 * x.cols() + 5, x.cols(), T, K, w.data() + 2 * w.cols() + 9, w.cols(), N,
                                    y.data() + 1 * y.cols() + 4, y.cols()},
               /*accumulate=*/true, isa);
      EXPECT_TRUE(y == ref) << gemm_isa_name(isa) << " " << T << "x" << K << "x" << N << ": max |diff| "
                            << (y - ref).cwiseAbs().maxCoeff();
      // The float form with the same strides, from zero.
      Mat yfl = yf;
      gemm_xwt(GemmOperands<float>{xf.data() + 3 * xf.cols() + 5, xf.cols(), T, K, wf.data() + 2 * wf.cols() + 9, wf.cols(), N,
                                   yfl.data() + 1 * yfl.cols() + 4, yfl.cols()},
               /*accumulate=*/false, isa);
      const Mat reff = chain_reference(Mat(xf.block(3, 5, T, K)), Mat(wf.block(2, 9, N, K)));
      EXPECT_TRUE(bit_equal(Mat(yfl.block(1, 4, T, N)), reff)) << gemm_isa_name(isa);
      EXPECT_EQ(yfl(0, 0), yf(0, 0));
    }
  }
}

// A transposed output (y[t, j] at y[j·ldy + t]): written in place when the token count fills
// whole panels (16 doubles, 32 floats), through a copy otherwise; the same chains either way.
TEST(GemmDouble, TransposedOutputIsTheSameChain) {
  for (int T : {16, 48, 7, 33}) {
    for (bool accumulate : {false, true}) {
      const int K = 70, N = 45;
      const MatD x = random_mat(T, K, 21).cast<double>(), w = random_mat(N, K, 22).cast<double>();
      const MatD y0 = random_mat(N, T + 3, 23).cast<double>();
      MatD ref = y0;
      for (int t = 0; t < T; ++t) {
        for (int j = 0; j < N; ++j) {
          double acc = accumulate ? y0(j, t) : 0.0;
          for (int k = 0; k < K; ++k) acc = std::fma(w(j, k), x(t, k), acc);
          ref(j, t) = acc;
        }
      }
      for (GemmIsa isa : runnable_isas()) {
        MatD y = y0;
        gemm_xwt(GemmOperands<double>{x.data(), K, T, K, w.data(), K, N, y.data(), T + 3, /*y_transposed=*/true}, accumulate, isa);
        EXPECT_TRUE(y == ref) << gemm_isa_name(isa) << " T " << T << " accumulate " << accumulate;
      }
      const Mat xf = x.cast<float>(), wf = w.cast<float>();
      Mat yf(N, T);
      gemm_xwt(GemmOperands<float>{xf.data(), K, T, K, wf.data(), K, N, yf.data(), T, /*y_transposed=*/true}, /*accumulate=*/false);
      EXPECT_TRUE(bit_equal(yf, Mat(chain_reference(xf, wf).transpose()))) << "float T " << T;
    }
  }
}

TEST(GemmThreads, EmptyInnerDimensionGivesZeros) {
  Mat x(4, 0), w(3, 0), y;
  gemm_xwt(x, w, y);
  ASSERT_EQ(y.rows(), 4);
  ASSERT_EQ(y.cols(), 3);
  EXPECT_TRUE(y.isZero(0.0f));
}

}  // namespace
}  // namespace quant
