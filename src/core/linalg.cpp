#include "quant/core/linalg.h"

#include <omp.h>

#include <Eigen/Cholesky>
#include <algorithm>

#include "quant/core/gemm.h"

namespace quant {

namespace {
// Panel width: the unit of work of one thread, fixed so results do not depend on thread count.
constexpr Eigen::Index kPanel = 128;

// cholesky_lower without clearing the strict upper triangle (some of it holds partial updates).
bool cholesky_lower_keep_upper(MatD& a) {
  const Eigen::Index n = a.rows();
  std::vector<double> panel;  // −L[k+b:, k:k+b], rows contiguous
  // Right-looking blocked factorization: factor a diagonal block, solve the panel below it,
  // update the trailing lower triangle with the panel's outer product.
  for (Eigen::Index k = 0; k < n; k += kPanel) {
    const Eigen::Index b = std::min(kPanel, n - k), rest = n - k - b;
    auto d = a.block(k, k, b, b);
    Eigen::LLT<Eigen::Ref<MatD>> llt(d);  // in place: the lower triangle of d becomes L_kk
    if (llt.info() != Eigen::Success) return false;
    if (rest == 0) break;
    const auto lkk = a.block(k, k, b, b).triangularView<Eigen::Lower>();
    const Eigen::Index chunks = (rest + kPanel - 1) / kPanel;
    panel.resize(static_cast<std::size_t>(rest * b));
    // L_ik = A_ik L_kkᵀ⁻¹, rows in independent chunks.
#pragma omp parallel for schedule(dynamic, 1) if (chunks > 1 && !omp_in_parallel())
    for (Eigen::Index c = 0; c < chunks; ++c) {
      const Eigen::Index r0 = k + b + c * kPanel, nr = std::min(kPanel, n - r0);
      auto rows = a.block(r0, k, nr, b);
      lkk.transpose().solveInPlace<Eigen::OnTheRight>(rows);
      for (Eigen::Index r = 0; r < nr; ++r) {
        double* dst = panel.data() + (r0 - k - b + r) * b;
        for (Eigen::Index j = 0; j < b; ++j) dst[j] = -rows(r, j);
      }
    }
    // A_ij −= L_ik L_jkᵀ on and below the diagonal, one column block at a time (the diagonal
    // blocks' upper parts are updated too): y = A[j0:, j0:j0+nj]ᵀ as the product's transposed
    // output, the block's columns as its "tokens".
#pragma omp parallel for schedule(dynamic, 1) if (chunks > 1 && !omp_in_parallel())
    for (Eigen::Index c = 0; c < chunks; ++c) {
      const Eigen::Index j0 = k + b + c * kPanel, nj = std::min(kPanel, n - j0);
      const double* pj = panel.data() + (j0 - k - b) * b;
      gemm_xwt(GemmOperands<double>{pj, b, nj, b, a.data() + j0 * n + k, n, n - j0, a.data() + j0 * n + j0, n, /*y_transposed=*/true},
               /*accumulate=*/true);
    }
  }
  return true;
}

}  // namespace

bool cholesky_lower(MatD& a) {
  if (!cholesky_lower_keep_upper(a)) return false;
  a.triangularView<Eigen::StrictlyUpper>().setZero();
  return true;
}

void invert_lower_to_upper(MatD& a, std::vector<double>& diag) {
  const Eigen::Index n = a.rows(), panels = (n + kPanel - 1) / kPanel;
  diag.assign(static_cast<std::size_t>(n), 0.0);
  // Column panel J of X = L⁻¹: X_JJ = L_JJ⁻¹, then block rows I > J in order,
  // X_IJ = −L_II⁻¹ (L_IJ X_JJ + Σ_{J<K<I} L_IK X_KJ), stored transposed as M_JI in the upper
  // triangle (row J of M is column J of X, so the sum is a product of rows). Panels are
  // independent, the widest first.
#pragma omp parallel for schedule(dynamic, 1) if (panels > 1 && !omp_in_parallel())
  for (Eigen::Index J = 0; J < panels; ++J) {
    const Eigen::Index j0 = J * kPanel, bj = std::min(kPanel, n - j0);
    const MatD xjj = a.block(j0, j0, bj, bj).triangularView<Eigen::Lower>().solve(MatD::Identity(bj, bj));
    for (Eigen::Index r = 0; r < bj; ++r) {
      diag[static_cast<std::size_t>(j0 + r)] = xjj(r, r);
      for (Eigen::Index c = r + 1; c < bj; ++c) a(j0 + r, j0 + c) = xjj(c, r);
    }
    MatD st;  // Sᵀ, the product's transposed output: M_JI = −(L_II⁻¹ S)ᵀ = −Sᵀ L_II⁻ᵀ
    for (Eigen::Index i0 = j0 + bj; i0 < n; i0 += kPanel) {
      const Eigen::Index bi = std::min(kPanel, n - i0), mid = i0 - j0 - bj;
      st.noalias() = xjj.transpose() * a.block(i0, j0, bi, bj).transpose();
      if (mid > 0) {
        gemm_xwt(GemmOperands<double>{a.data() + i0 * n + j0 + bj, n, bi, mid, a.data() + j0 * n + j0 + bj, n, bj, st.data(), bi,
                                      /*y_transposed=*/true},
                 /*accumulate=*/true);
      }
      a.block(i0, i0, bi, bi).triangularView<Eigen::Lower>().transpose().solveInPlace<Eigen::OnTheRight>(st);
      a.block(j0, i0, bj, bi) = -st;
    }
  }
}

bool cholesky_and_inverse(MatD& a, std::vector<double>& diag) {
  if (!cholesky_lower_keep_upper(a)) return false;
  invert_lower_to_upper(a, diag);
  return true;
}

MatD invert_lower(const MatD& l) {
  const Eigen::Index n = l.rows();
  MatD a = l;
  std::vector<double> diag;
  invert_lower_to_upper(a, diag);
  MatD x = MatD::Zero(n, n);
  for (Eigen::Index i = 0; i < n; ++i) {
    for (Eigen::Index j = 0; j < i; ++j) x(i, j) = a(j, i);
    x(i, i) = diag[static_cast<std::size_t>(i)];
  }
  return x;
}

}  // namespace quant
