// Dense double-precision factorizations for GPTQ's inverse Hessian, blocked so that their
// O(n³) work runs as quant's matrix products (gemm.h, double kernels) split over threads in
// fixed-size panels: results are bit-identical for any thread count.
#pragma once

#include <vector>

#include "quant/core/tensor.h"

namespace quant {

// In place: the lower triangle of `a` (symmetric; only the lower triangle is read) becomes the
// Cholesky factor L with a = L Lᵀ; the strict upper triangle is set to zero. False when a pivot
// is not positive (a is not positive definite); `a` is then unspecified.
bool cholesky_lower(MatD& a);

// The inverse of the lower-triangular `l` (its strict upper triangle is ignored), also lower
// triangular.
MatD invert_lower(const MatD& l);

// In place, for a lower-triangular L in `a` (its strict upper triangle is overwritten): the strict
// upper triangle of `a` becomes that of M = L⁻ᵀ (upper triangular) and `diag` M's diagonal
// (1 / L_ii); the lower triangle keeps L. One n × n buffer instead of two.
void invert_lower_to_upper(MatD& a, std::vector<double>& diag);

// cholesky_lower, then invert_lower_to_upper, in one buffer: false (a unspecified) when `a` is not
// positive definite.
bool cholesky_and_inverse(MatD& a, std::vector<double>& diag);

}  // namespace quant
