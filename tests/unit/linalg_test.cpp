#include "quant/core/linalg.h"

#include <gtest/gtest.h>
#include <omp.h>

#include <Eigen/Cholesky>
#include <random>

namespace quant {
namespace {

// A random symmetric positive definite matrix: Xᵀ X / m + I with uneven column scales.
MatD spd(Eigen::Index n, unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<double> d(0.0, 1.0);
  MatD x(n + 7, n);
  for (Eigen::Index i = 0; i < x.size(); ++i) x.data()[i] = d(rng);
  for (Eigen::Index j = 0; j < n; j += 5) x.col(j) *= 20.0;
  MatD a = x.transpose() * x / static_cast<double>(x.rows());
  a.diagonal().array() += 1.0;
  return a;
}

class Linalg : public ::testing::TestWithParam<Eigen::Index> {};

// Sizes below, at and across the 128-wide panels, including a ragged last panel.
INSTANTIATE_TEST_SUITE_P(Sizes, Linalg, ::testing::Values(1, 5, 127, 128, 129, 300, 517));

TEST_P(Linalg, CholeskyMatchesEigenAndReconstructs) {
  const Eigen::Index n = GetParam();
  const MatD a = spd(n, 7);
  MatD l = a;
  l.triangularView<Eigen::StrictlyUpper>().setConstant(1e9);  // only the lower triangle is read
  ASSERT_TRUE(cholesky_lower(l));
  EXPECT_TRUE(l.triangularView<Eigen::StrictlyUpper>().toDenseMatrix().isZero(0.0));
  const MatD ref = a.llt().matrixL();
  EXPECT_LE((l - ref).cwiseAbs().maxCoeff(), 1e-10 * ref.cwiseAbs().maxCoeff());
  EXPECT_LE((l * l.transpose() - a).cwiseAbs().maxCoeff(), 1e-10 * a.cwiseAbs().maxCoeff());
}

TEST_P(Linalg, InverseOfLowerIsLowerAndExact) {
  const Eigen::Index n = GetParam();
  MatD l = spd(n, 11);
  ASSERT_TRUE(cholesky_lower(l));
  MatD junk = l;
  junk.triangularView<Eigen::StrictlyUpper>().setConstant(-3.0);  // the strict upper part is ignored
  const MatD x = invert_lower(junk);
  EXPECT_TRUE(x.triangularView<Eigen::StrictlyUpper>().toDenseMatrix().isZero(0.0));
  EXPECT_LE((x * l - MatD::Identity(n, n)).cwiseAbs().maxCoeff(), 1e-9);
  EXPECT_LE((l * x - MatD::Identity(n, n)).cwiseAbs().maxCoeff(), 1e-9);
}

TEST(Linalg, NotPositiveDefiniteIsReportedInEveryPanel) {
  for (Eigen::Index bad : {0, 130, 299}) {
    MatD a = spd(300, 3);
    a(bad, bad) = -1.0;  // a negative diagonal entry: no Cholesky factor exists
    EXPECT_FALSE(cholesky_lower(a)) << "negative pivot at " << bad;
  }
}

TEST(Linalg, BitIdenticalForAnyThreadCount) {
  const MatD a = spd(400, 5);
  const int saved = omp_get_max_threads();
  MatD l1 = a, l2 = a;
  omp_set_num_threads(1);
  ASSERT_TRUE(cholesky_lower(l1));
  const MatD x1 = invert_lower(l1);
  omp_set_num_threads(3);
  ASSERT_TRUE(cholesky_lower(l2));
  const MatD x2 = invert_lower(l2);
  omp_set_num_threads(saved);
  EXPECT_TRUE(l1 == l2);
  EXPECT_TRUE(x1 == x2);
}

}  // namespace
}  // namespace quant
