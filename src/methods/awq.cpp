#include "quant/methods/awq.h"

#include <omp.h>

#include <cmath>

#include "quant/error.h"
#include "quant/log.h"
#include "quant/methods/gptq.h"
#include "quant/weights.h"

namespace quant {

Vec mean_abs(const std::vector<Mat>& xs) {
  Eigen::VectorXd sum = Eigen::VectorXd::Zero(xs.at(0).cols());
  std::int64_t n = 0;
  for (const Mat& x : xs) {
    sum += x.cwiseAbs().colwise().sum().transpose().cast<double>();
    n += x.rows();
  }
  return (sum / static_cast<double>(n)).cast<float>();
}

Vec weight_mean(const std::vector<const Mat*>& ws, std::int64_t group_size) {
  const Eigen::Index in = ws.at(0)->cols();
  const std::int64_t g = group_size < 0 ? in : group_size;
  Eigen::VectorXd sum = Eigen::VectorXd::Zero(in);
  std::int64_t rows = 0;
  for (const Mat* w : ws) {
    for (Eigen::Index r = 0; r < w->rows(); ++r) {
      for (Eigen::Index c0 = 0; c0 < in; c0 += g) {
        const Eigen::Index n = std::min<Eigen::Index>(g, in - c0);
        const double mx = w->row(r).segment(c0, n).cwiseAbs().maxCoeff() + 1e-6;
        for (Eigen::Index c = c0; c < c0 + n; ++c) sum(c) += std::abs((*w)(r, c)) / mx;
      }
    }
    rows += w->rows();
  }
  return (sum / static_cast<double>(rows)).cast<float>();
}

Vec awq_scales(const Vec& x_mean, const Vec& w_mean, double ratio, bool duo) {
  Vec s(x_mean.size());
  for (Eigen::Index i = 0; i < s.size(); ++i) {
    double v = std::pow(static_cast<double>(x_mean(i)), ratio);
    if (duo) v /= std::pow(static_cast<double>(w_mean(i)), 1.0 - ratio) + 1e-4;
    v = std::max(v, 1e-4);
    s(i) = std::isfinite(v) ? static_cast<float>(v) : 1.0f;
  }
  const double norm = std::sqrt(static_cast<double>(s.maxCoeff()) * static_cast<double>(s.minCoeff()));
  return (s.cast<double>() / norm).cast<float>();
}


Mat awq_fake_quant(const Mat& w, const Vec& s, const QuantSpec& spec) {
  return quantize_rtn(w * s.asDiagonal(), spec).dequantize() * s.cwiseInverse().asDiagonal();
}

void fold_awq_scales(LayerWeights& L, AwqMapping mapping, const Vec& s) {
  using K = LinearKind;
  const Vec inv = s.cwiseInverse();
  auto scale_cols = [&](K k) { L.linear(k) = L.linear(k) * s.asDiagonal(); };
  auto scale_rows = [&](K k) {
    L.linear(k) = inv.asDiagonal() * L.linear(k);
    Vec& b = L.b[static_cast<int>(k)];
    if (b.size()) b = b.cwiseProduct(inv);
  };
  switch (mapping) {
    case AwqMapping::attn:
      L.attn_norm = L.attn_norm.cwiseProduct(inv);
      for (K k : {K::q, K::k, K::v}) scale_cols(k);
      break;
    case AwqMapping::v_o:
      scale_rows(K::v);
      scale_cols(K::o);
      break;
    case AwqMapping::mlp:
      L.mlp_norm = L.mlp_norm.cwiseProduct(inv);
      for (K k : {K::gate, K::up}) scale_cols(k);
      break;
    case AwqMapping::up_down:
      scale_rows(K::up);
      scale_cols(K::down);
      break;
  }
}

AwqSearchResult awq_search(const Vec& x_mean, const Vec& w_mean, const AwqOptions& o,
                           const std::function<double(const Vec&)>& loss) {
  AwqSearchResult r;
  r.scales = Vec::Ones(x_mean.size());
  r.identity_loss = r.loss = loss(r.scales);  // s = 1 is plain RTN: AWQ is never worse on this objective
  for (int i = 0; i < o.n_grid; ++i) {
    const double ratio = static_cast<double>(i) / o.n_grid;
    const Vec s = awq_scales(x_mean, w_mean, ratio, o.duo_scaling);
    const double l = loss(s);
    if (l < r.loss) {
      r.loss = l;
      r.ratio = ratio;
      r.scales = s;
    }
  }
  return r;
}

AwqSearchResult awq_search_linear(const Mat& w, const Mat& H, const Vec& x_mean, const QuantSpec& spec,
                                  const AwqOptions& o) {
  const Vec w_mean = weight_mean({&w}, spec.group_size);
  return awq_search(x_mean, w_mean, o, [&](const Vec& s) {
    return hessian_loss(w - awq_fake_quant(w, s, spec), H) / static_cast<double>(w.rows());
  });
}

AwqSearchResult awq_search_linear_tokens(const Mat& w, const std::vector<Mat>& xs, const Vec& x_mean,
                                         const QuantSpec& spec, const AwqOptions& o) {
  const Vec w_mean = weight_mean({&w}, spec.group_size);
  double n = 0;
  for (const Mat& x : xs) n += static_cast<double>(x.rows());
  return awq_search(x_mean, w_mean, o, [&](const Vec& s) {
    const Mat dw = w - awq_fake_quant(w, s, spec);
    double e = 0;
    Mat y;
    for (const Mat& x : xs) {
      linear_forward(x, dw, Vec(), y);
      e += y.cast<double>().squaredNorm();
    }
    return 2.0 * e / n / static_cast<double>(w.rows());
  });
}

Mat awq_clip(const Mat& w, const Mat& H, const QuantSpec& spec, const AwqOptions& o) {
  const Eigen::Index out = w.rows(), in = w.cols();
  const std::int64_t G = spec.effective_group(in);
  const int steps = std::max(1, static_cast<int>(o.clip_max_shrink * o.clip_grid));
  Mat clipped = w;
#pragma omp parallel for schedule(dynamic, 8) if (!omp_in_parallel())
  for (Eigen::Index r = 0; r < out; ++r) {
    for (Eigen::Index c0 = 0; c0 < in; c0 += G) {
      const Eigen::Index n = std::min<Eigen::Index>(G, in - c0);
      const Eigen::VectorXf wg = w.row(r).segment(c0, n).transpose();
      const auto Hg = H.block(c0, c0, n, n);
      const float org_max = wg.cwiseAbs().maxCoeff();
      float best_max = org_max;
      double best_err = INFINITY;
      Eigen::VectorXf cur(n), d(n);
      for (int i = 0; i < steps; ++i) {
        const float mx = org_max * (1.0f - static_cast<float>(i) / static_cast<float>(o.clip_grid));
        for (Eigen::Index k = 0; k < n; ++k) cur(k) = std::clamp(wg(k), -mx, mx);
        const GroupParams p = find_params(cur.data(), n, spec);
        for (Eigen::Index k = 0; k < n; ++k) d(k) = wg(k) - dequantize_code(quantize_code(cur(k), p, spec.maxq()), p);
        const double err = static_cast<double>(d.dot(Hg * d));
        if (err < best_err) {
          best_err = err;
          best_max = mx;
        }
      }
      for (Eigen::Index k = 0; k < n; ++k) clipped(r, c0 + k) = std::clamp(wg(k), -best_max, best_max);
    }
  }
  return clipped;
}

}  // namespace quant
