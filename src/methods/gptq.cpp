#include "quant/methods/gptq.h"

#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <numeric>

#include "quant/core/error.h"
#include "quant/core/linalg.h"
#include "quant/core/log.h"

namespace quant {

namespace {
// Output rows per parallel work item: rows are independent in GPTQ given U.
constexpr std::int64_t kRowBlock = 64;
}  // namespace

GptqHessian prepare_hessian(const Mat& H, const GptqOptions& o, const std::string& what) {
  const Eigen::Index n = H.rows();
  GptqHessian g;
  g.dead.assign(static_cast<std::size_t>(n), false);
  std::vector<double> diag(static_cast<std::size_t>(n));
  for (Eigen::Index i = 0; i < n; ++i) {
    if (!std::isfinite(H(i, i))) fail("{}: calibration activations contain non-finite values", what);
    g.dead[static_cast<std::size_t>(i)] = H(i, i) == 0.0f;
    diag[static_cast<std::size_t>(i)] = g.dead[static_cast<std::size_t>(i)] ? 1.0 : H(i, i);
  }
  g.perm.resize(static_cast<std::size_t>(n));
  std::iota(g.perm.begin(), g.perm.end(), 0);
  if (o.act_order) {
    std::stable_sort(g.perm.begin(), g.perm.end(), [&](std::int64_t a, std::int64_t b) { return diag[a] > diag[b]; });
  }
  double damp = o.damp * std::accumulate(diag.begin(), diag.end(), 0.0) / static_cast<double>(std::max<Eigen::Index>(n, 1));
  // U = J · chol(J A J)⁻¹ · J with A = P H Pᵀ + λI (P the act-order permutation, J the exchange
  // matrix): then Uᵀ U = A⁻¹ and U is upper triangular with a positive diagonal, i.e. the upper
  // Cholesky factor of A⁻¹ (one factorisation and one triangular inverse instead of chol,
  // chol_inverse, chol). One n × n double buffer: r = J A J (lower triangle) is factorised in
  // place, and the transposed inverse M = chol(J A J)⁻ᵀ fills its upper triangle; U = J Mᵀ J.
  MatD r(n, n);
  std::vector<double> minv;
  for (int attempt = 0;; ++attempt) {
#pragma omp parallel for schedule(dynamic, 64) if (!omp_in_parallel())
    for (Eigen::Index i = 0; i < n; ++i) {
      const std::int64_t pi = g.perm[static_cast<std::size_t>(n - 1 - i)];
      double* dst = r.row(i).data();
      for (Eigen::Index j = 0; j < i; ++j) dst[j] = H(pi, g.perm[static_cast<std::size_t>(n - 1 - j)]);
      dst[i] = diag[static_cast<std::size_t>(pi)] + damp;
    }
    double max_diag = 0;
    for (Eigen::Index i = 0; i < n; ++i) max_diag = std::max(max_diag, r(i, i));
    bool ok = cholesky_and_inverse(r, minv);
    if (ok) {
      // A pivot that is tiny relative to the diagonal means "numerically singular": the
      // factor would amplify rounding errors enormously, so treat it as a failure too.
      double min_pivot = max_diag;
      for (Eigen::Index i = 0; i < n; ++i) min_pivot = std::min(min_pivot, r(i, i) * r(i, i));
      ok = min_pivot > 1e-10 * max_diag;
    }
    if (ok) {
      // U(i, j) = M(n−1−j, n−1−i) for j > i: r's upper triangle reversed and transposed, in
      // tiles that stay in cache.
      constexpr Eigen::Index kTile = 64;
      g.U.resize(n, n);
      std::atomic<bool> finite = true;
#pragma omp parallel for schedule(dynamic, 1) if (!omp_in_parallel())
      for (Eigen::Index i0 = 0; i0 < n; i0 += kTile) {
        const Eigen::Index i1 = std::min(n, i0 + kTile);
        bool tile_finite = true;
        for (Eigen::Index i = i0; i < i1; ++i) {
          float* dst = g.U.row(i).data();
          std::fill(dst, dst + i, 0.0f);
          dst[i] = static_cast<float>(minv[static_cast<std::size_t>(n - 1 - i)]);
          tile_finite &= std::isfinite(dst[i]);
        }
        for (Eigen::Index j0 = i0; j0 < n; j0 += kTile) {
          const Eigen::Index j1 = std::min(n, j0 + kTile);
          for (Eigen::Index i = i0; i < i1; ++i) {
            float* dst = g.U.row(i).data();
            for (Eigen::Index j = std::max(j0, i + 1); j < j1; ++j) {
              dst[j] = static_cast<float>(r(n - 1 - j, n - 1 - i));
              tile_finite &= std::isfinite(dst[j]);
            }
          }
        }
        if (!tile_finite) finite.store(false, std::memory_order_relaxed);
      }
      ok = finite.load();
    }
    if (ok) {
      g.damp = damp;
      g.retries = attempt;
      return g;
    }
    if (attempt >= o.max_damp_retries) {
      fail("{}: the Hessian is not positive definite even with damping {:.3g} (more calibration data, or a larger --damp)", what, damp);
    }
    log::warn("{}: Cholesky failed with damping {:.3g}; retrying with {:.3g}", what, damp, damp * 10);
    damp *= 10;
  }
}

GptqResult gptq_quantize(const Mat& W, const GptqHessian& hs, const QuantSpec& spec, const GptqOptions& o) {
  spec.validate();
  const std::int64_t rows = W.rows(), n = W.cols();
  if (hs.U.rows() != n) fail<Error>("gptq_quantize: H is {}x{} for {} columns", hs.U.rows(), hs.U.cols(), n);
  const std::int64_t G = spec.effective_group(n);
  const bool grouped = spec.group_size > 0 && G < n;
  // Blocks aligned to groups, so group parameters are always computed from current weights.
  std::int64_t B = std::max<std::int64_t>(1, o.block_size);
  if (grouped && !o.static_groups && B % G != 0 && G % B != 0) B = G;

  GptqResult res;
  QuantizedMatrix& m = res.q;
  m = QuantizedMatrix::empty(rows, n, spec);
  // g_idx: position-order groups with act-order (non-static); original groups otherwise.
  if (grouped && o.act_order && !o.static_groups) {
    for (std::int64_t p = 0; p < n; ++p) m.g_idx[static_cast<std::size_t>(hs.perm[p])] = static_cast<std::int32_t>(p / G);
  }
  const int maxq = spec.maxq();
  const std::int64_t n_row_blocks = (rows + kRowBlock - 1) / kRowBlock;
  std::vector<double> losses(static_cast<std::size_t>(n_row_blocks), 0.0);
  std::atomic<bool> overflow = false;

#pragma omp parallel for schedule(dynamic, 1) if (n_row_blocks > 1 && !omp_in_parallel())
  for (std::int64_t rb = 0; rb < n_row_blocks; ++rb) {
    const std::int64_t r0 = rb * kRowBlock, nr = std::min(kRowBlock, rows - r0);
    Mat w(nr, n);  // permuted columns; dead columns zeroed
    for (std::int64_t p = 0; p < n; ++p) {
      const std::int64_t c = hs.perm[static_cast<std::size_t>(p)];
      if (hs.dead[static_cast<std::size_t>(c)]) w.col(p).setZero();
      else w.col(p) = W.block(r0, c, nr, 1);
    }
    // Parameters fixed before the sweep: per channel, or static groups from the original W.
    auto set_params = [&](std::int64_t row, std::int64_t g, const GroupParams& p) {
      m.scales[static_cast<std::size_t>((r0 + row) * m.n_groups + g)] = p.scale;
      m.zeros[static_cast<std::size_t>((r0 + row) * m.n_groups + g)] = p.zero;
    };
    if (!grouped || o.static_groups) {
      std::vector<float> buf(static_cast<std::size_t>(n));
      for (std::int64_t r = 0; r < nr; ++r) {
        for (std::int64_t c = 0; c < n; ++c) buf[c] = hs.dead[c] ? 0.0f : W(r0 + r, c);
        for (std::int64_t g = 0; g < m.n_groups; ++g) {
          const std::int64_t c0 = g * G, c1 = std::min(n, c0 + G);
          set_params(r, g, find_params(buf.data() + c0, c1 - c0, spec));
        }
      }
    }
    std::vector<std::int32_t> group_of(static_cast<std::size_t>(n));  // position -> group
    for (std::int64_t p = 0; p < n; ++p) {
      group_of[p] = !grouped ? 0 : (o.static_groups || !o.act_order) ? static_cast<std::int32_t>(hs.perm[p] / G)
                                                                     : static_cast<std::int32_t>(p / G);
    }
    std::vector<float> gbuf(static_cast<std::size_t>(G));
    double loss = 0;
    Mat err(nr, B);
    for (std::int64_t i1 = 0; i1 < n; i1 += B) {
      const std::int64_t i2 = std::min(i1 + B, n), count = i2 - i1;
      for (std::int64_t p = i1; p < i2; ++p) {
        if (grouped && !o.static_groups && p % G == 0) {  // a group starts: params from current weights
          const std::int64_t pe = std::min(n, p + G);
          for (std::int64_t r = 0; r < nr; ++r) {
            for (std::int64_t k = p; k < pe; ++k) gbuf[k - p] = w(r, k);
            set_params(r, group_of[p], find_params(gbuf.data(), pe - p, spec));
          }
        }
        const float d = hs.U(p, p);
        const std::int64_t col = hs.perm[p];
        for (std::int64_t r = 0; r < nr; ++r) {
          const GroupParams gp = m.params(r0 + r, group_of[p]);
          if (!std::isfinite(w(r, p))) {  // the compensation overflowed: reported after the sweep
            overflow.store(true, std::memory_order_relaxed);
            w(r, p) = 0.0f;
          }
          const float q = quantize_code(w(r, p), gp, maxq);
          m.q[static_cast<std::size_t>((r0 + r) * n + col)] = static_cast<std::uint8_t>(q);
          const float e = (w(r, p) - dequantize_code(q, gp)) / d;
          loss += 0.5 * static_cast<double>(e) * e;
          err(r, p - i1) = e;
        }
        // Spread this column's error over the rest of the block (Algorithm 1, line 8).
        if (p + 1 < i2) {
          w.block(0, p + 1, nr, i2 - p - 1).noalias() -= err.col(p - i1) * hs.U.block(p, p + 1, 1, i2 - p - 1);
        }
      }
      // Lazy batch update of everything after the block.
      if (i2 < n) w.rightCols(n - i2).noalias() -= err.leftCols(count) * hs.U.block(i1, i2, count, n - i2);
    }
    losses[static_cast<std::size_t>(rb)] = loss;
  }
  if (overflow.load()) {
    fail("GPTQ's error compensation overflowed float32 (weights up to {:g}); use RTN or keep the tensor with a rule",
         W.cwiseAbs().maxCoeff());
  }
  for (double l : losses) res.obs_loss += l;
  return res;
}

double hessian_loss(const Mat& dW, const Mat& H) {
  Mat dWH;
  linear_forward(dW, H, Vec(), dWH);  // ΔW Hᵀ = ΔW H
  return (dWH.cast<double>().array() * dW.cast<double>().array()).sum();
}

}  // namespace quant

namespace quant {

namespace {
// tr(ΔW H ΔWᵀ) for the report from at most 256 evenly spaced rows, scaled to all rows (exact
// for up to 256 rows): the full product costs as much as the GPTQ solve on wide layers.
double report_loss(const Mat& dW, const Mat& H) {
  const Eigen::Index rows = dW.rows(), step = (rows + 255) / 256;
  if (step <= 1) return hessian_loss(dW, H);
  Mat sub((rows + step - 1) / step, dW.cols());
  for (Eigen::Index r = 0, i = 0; r < rows; r += step, ++i) sub.row(i) = dW.row(r);
  return hessian_loss(sub, H) * static_cast<double>(rows) / static_cast<double>(sub.rows());
}
}  // namespace

GptqMethod::GptqMethod(GptqOptions options) : options_(options) {
  if (!(options_.damp >= 0)) fail<UsageError>("GPTQ damp must be a non-negative number, got {}", options_.damp);
  if (options_.block_size < 1) fail<UsageError>("GPTQ block size must be positive, got {}", options_.block_size);
  traits_.name = "gptq";
  traits_.statistic = Statistic::hessian;
  traits_.calibrated = true;
  traits_.true_sequential = options_.true_sequential;
  traits_.act_order = options_.act_order;
}

nlohmann::json GptqMethod::config() const {
  return {{"desc_act", options_.act_order}, {"static_groups", options_.static_groups},
          {"true_sequential", options_.true_sequential}, {"damp_percent", options_.damp}};
}

nlohmann::json GptqMethod::fingerprint() const {
  return {{"block_size", options_.block_size}, {"max_damp_retries", options_.max_damp_retries}};
}

QuantizedLinear GptqMethod::quantize(const LinearInput& in) const {
  const Mat& H = in.stats->hessian;
  if (!in.stats->derived.has_value()) in.stats->derived = prepare_hessian(H, options_, in.desc.prefix);
  const auto& prepared = std::any_cast<const GptqHessian&>(in.stats->derived);
  const Mat& W = in.weight;
  GptqResult res;
  try {
    res = gptq_quantize(W, prepared, in.spec, options_);
  } catch (const InputError& e) {
    fail("{}: {}", in.desc.weight_name(), e.what());
  }
  Mat deq = res.q.dequantize();
  const Mat rtn = quantize_rtn(W, in.spec).dequantize();
  nlohmann::json extra = {{"obs_loss", res.obs_loss},
                          {"gptq_loss", report_loss(W - deq, H)},
                          {"rtn_loss", report_loss(W - rtn, H)},
                          {"damp", prepared.damp},
                          {"damp_retries", prepared.retries}};
  log::debug("{}: H-loss gptq {:.5g} rtn {:.5g}", in.desc.prefix, extra["gptq_loss"].get<double>(), extra["rtn_loss"].get<double>());
  return {std::move(res.q), std::move(deq), std::move(extra)};
}

}  // namespace quant
