// Dense double-precision factorizations for GPTQ's inverse Hessian, blocked so that their
// O(n³) work runs as matrix products split over threads in fixed-size panels (results are
// bit-identical for any thread count; Eigen's own LLT and triangular solves run on one thread).
#pragma once

#include "quant/core/tensor.h"

namespace quant {

// In place: the lower triangle of `a` (symmetric; only the lower triangle is read) becomes the
// Cholesky factor L with a = L Lᵀ; the strict upper triangle is set to zero. False when a pivot
// is not positive (a is not positive definite); `a` is then unspecified.
bool cholesky_lower(MatD& a);

// The inverse of the lower-triangular `l` (its strict upper triangle is ignored), also lower
// triangular.
MatD invert_lower(const MatD& l);

}  // namespace quant
