#include "quant/core/linalg.h"

#include <omp.h>

#include <Eigen/Cholesky>
#include <algorithm>

namespace quant {

namespace {
// Panel width: the unit of work of one thread, fixed so results do not depend on thread count.
constexpr Eigen::Index kPanel = 128;
}  // namespace

bool cholesky_lower(MatD& a) {
  const Eigen::Index n = a.rows();
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
    // L_ik = A_ik L_kkᵀ⁻¹, rows in independent chunks.
#pragma omp parallel for schedule(dynamic, 1) if (chunks > 1 && !omp_in_parallel())
    for (Eigen::Index c = 0; c < chunks; ++c) {
      const Eigen::Index r0 = k + b + c * kPanel, nr = std::min(kPanel, n - r0);
      auto panel = a.block(r0, k, nr, b);
      lkk.transpose().solveInPlace<Eigen::OnTheRight>(panel);
    }
    // A_ij -= L_ik L_jkᵀ on and below the diagonal, one column block at a time.
#pragma omp parallel for schedule(dynamic, 1) if (chunks > 1 && !omp_in_parallel())
    for (Eigen::Index c = 0; c < chunks; ++c) {
      const Eigen::Index j0 = k + b + c * kPanel, nj = std::min(kPanel, n - j0);
      a.block(j0, j0, n - j0, nj).noalias() -= a.block(j0, k, n - j0, b) * a.block(j0, k, nj, b).transpose();
    }
  }
  a.triangularView<Eigen::StrictlyUpper>().setZero();
  return true;
}

MatD invert_lower(const MatD& l) {
  const Eigen::Index n = l.rows();
  MatD x = MatD::Zero(n, n);
  const Eigen::Index panels = (n + kPanel - 1) / kPanel;
  // Column panel j of L⁻¹ solves L[j:, j:] X = I (rows above j are zero); panels are
  // independent, the widest first.
#pragma omp parallel for schedule(dynamic, 1) if (panels > 1 && !omp_in_parallel())
  for (Eigen::Index p = 0; p < panels; ++p) {
    const Eigen::Index j = p * kPanel, b = std::min(kPanel, n - j);
    auto xp = x.block(j, j, n - j, b);
    xp.topRows(b).setIdentity();
    l.block(j, j, n - j, n - j).triangularView<Eigen::Lower>().solveInPlace(xp);
  }
  return x;
}

}  // namespace quant
