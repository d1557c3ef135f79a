// The float32 matrix product of the forward pass, y = x · wᵀ (also in double, for GPTQ's factorizations), with a kernel for the CPU it runs on
// (AVX-512 when the CPU has it, AVX2 + FMA otherwise, plain C++ elsewhere), chosen at run time.
// Every output is one fused multiply-add chain over k = 0 … K−1 in order, starting from zero, so
// the result is bit-identical on every kernel, every machine and for any thread count.
#pragma once

#include <cstdint>

#include "quant/core/dtype.h"
#include "quant/core/tensor.h"

namespace quant {

enum class GemmIsa { scalar, avx2, avx512 };

// The best kernel this CPU runs.
GemmIsa gemm_best_isa();
const char* gemm_isa_name(GemmIsa isa);

// y[t, j] = Σ_k x[t, k] · w[j, k]: x [T × K], w [N × K] and y [T × N] row-major; y's rows are `ldy`
// apart. `accumulate`: y[t, j] += …, the chain starting from y's value (so accumulating token
// blocks in order is one chain over all of them). Runs on OpenMP threads (on the calling thread
// alone inside a parallel region).
void gemm_xwt(const float* x, std::int64_t T, std::int64_t K, const float* w, std::int64_t N, float* y, std::int64_t ldy,
              GemmIsa isa, bool accumulate = false);
void gemm_xwt(const float* x, std::int64_t T, std::int64_t K, const float* w, std::int64_t N, float* y, std::int64_t ldy,
              bool accumulate = false);

// The general form, in float or double: y[t, j] (+)= Σ_k x[t·ldx + k] · w[j·ldw + k] for t < rows,
// j < N, k < K, y[t, j] at y[t·ldy + j], or at y[j·ldy + t] when y_transposed (the kernels' own
// layout: no transposes, the cheaper form when K is small); the same one-chain contract as above.
template <typename T>
struct GemmOperands {
  const T* x;
  std::int64_t ldx, rows, K;
  const T* w;
  std::int64_t ldw, N;
  T* y;
  std::int64_t ldy;
  bool y_transposed = false;
};
void gemm_xwt(const GemmOperands<float>& o, bool accumulate, GemmIsa isa = gemm_best_isa());
void gemm_xwt(const GemmOperands<double>& o, bool accumulate, GemmIsa isa = gemm_best_isa());

// y = x · wᵀ with w as a checkpoint stores it: N rows of K values of `w_dtype` (F32, F16 or BF16)
// at `w`, any alignment, read in place. Each kernel's tile of weights is converted to float as it
// is used (exactly), so y is bit for bit what gemm_xwt gives for the converted matrix, with no
// float copy of w.
void gemm_xwt_stored(const float* x, std::int64_t T, std::int64_t K, const std::byte* w, DType w_dtype, std::int64_t N, float* y,
                     std::int64_t ldy, GemmIsa isa = gemm_best_isa());

// y = x · wᵀ (resized to x.rows() × w.rows()).
void gemm_xwt(const Mat& x, const Mat& w, Mat& y);

}  // namespace quant
