#include "quant/methods/smoothquant.h"

#include <algorithm>
#include <cmath>
#include <optional>

#include "quant/core/error.h"
#include "quant/core/log.h"
#include "quant/methods/awq.h"

namespace quant {

namespace {
constexpr double kMinScale = 1e-5;  // llm-compressor MINIMUM_SMOOTHING_SCALE
constexpr Eigen::Index kAutoTokens = 2048;  // tokens the automatic strength is scored on

// Every k-th row of the stacked inputs, at most kAutoTokens rows.
Mat token_subsample(const std::vector<Mat>& xs) {
  Eigen::Index n = 0;
  for (const Mat& x : xs) n += x.rows();
  const Eigen::Index step = std::max<Eigen::Index>(1, (n + kAutoTokens - 1) / kAutoTokens);
  Mat out((n + step - 1) / step, xs.front().cols());
  Eigen::Index i = 0, r = 0;
  for (const Mat& x : xs) {
    for (Eigen::Index t = 0; t < x.rows(); ++t, ++i) {
      if (i % step == 0) out.row(r++) = x.row(t);
    }
  }
  return out.topRows(r);
}

// Σ_k ‖X W_kᵀ − A(X/s) Q_k(W_k·diag s)ᵀ‖²: the error the balance linears' outputs get from weight
// quantization (RTN with each one's spec) and the kernel's activation quantization A.
double smoothed_error(const Mat& x, const std::vector<const Mat*>& ws, const std::vector<QuantSpec>& specs,
                      const std::vector<Mat>& ref, const Vec& s) {
  Mat xs = x * s.cwiseInverse().asDiagonal();
  fake_quant_tokens(xs, specs.front().act);
  double e = 0;
  for (std::size_t k = 0; k < ws.size(); ++k) {
    const Mat wq = quantize_rtn(*ws[k] * s.asDiagonal(), specs[k]).dequantize();
    e += (ref[k] - xs * wq.transpose()).cast<double>().squaredNorm();
  }
  return e;
}
}  // namespace

Vec smoothing_scales(const std::vector<Mat>& xs, const std::vector<const Mat*>& ws, double alpha) {
  if (ws.empty() || xs.empty()) fail<Error>("smoothing_scales: no linears or no activations");
  const Eigen::Index in = ws.front()->cols();
  Vec lo = Vec::Constant(in, std::numeric_limits<float>::infinity()), hi = Vec::Constant(in, -std::numeric_limits<float>::infinity());
  for (const Mat& x : xs) {
    if (x.cols() != in) fail<Error>("smoothing_scales: activations have {} channels, the linears {}", x.cols(), in);
    if (x.rows() == 0) continue;
    lo = lo.cwiseMin(x.colwise().minCoeff().transpose());
    hi = hi.cwiseMax(x.colwise().maxCoeff().transpose());
  }
  Vec wmax = Vec::Zero(in);
  for (const Mat* w : ws) wmax = wmax.cwiseMax(w->cwiseAbs().colwise().maxCoeff().transpose());
  Vec s(in);
  for (Eigen::Index j = 0; j < in; ++j) {
    const double range = static_cast<double>(hi(j)) - static_cast<double>(lo(j));
    const double wscale = 2.0 * static_cast<double>(wmax(j));
    if (!(range > 0.0) || !(wscale > 0.0)) {
      s(j) = 1.0f;
      continue;
    }
    s(j) = static_cast<float>(std::max(std::pow(range, alpha) / std::pow(wscale, 1.0 - alpha), kMinScale));
  }
  return s;
}

SmoothedMethod::SmoothedMethod(std::unique_ptr<Method> inner, double alpha, bool linear_mappings)
    : inner_(std::move(inner)), alpha_(alpha), linear_mappings_(linear_mappings) {
  if (!(alpha >= 0.0 && alpha <= 1.0) && alpha != kAutoStrength) {
    fail<UsageError>("--smooth: the smoothing strength must be in [0, 1] or auto, got {}", alpha);
  }
  traits_ = inner_->traits();
  if (traits_.transforms_layer) fail<UsageError>("--smooth cannot be combined with {} (it transforms the layer itself)", traits_.name);
  if (traits_.float_output || traits_.codebooks) fail<UsageError>("--smooth needs a method that writes integer or fp8 weights, not {}", traits_.name);
  traits_.calibrated = true;
  traits_.transforms_layer = true;
  traits_.moe_layers = false;
}

nlohmann::json SmoothedMethod::config() const {
  nlohmann::json c = inner_->config();
  c["smoothquant"] = {{"smoothing_strength", alpha_ >= 0 ? nlohmann::json(alpha_) : nlohmann::json("auto")}, {"mappings", linear_mappings_ ? "norms+linears" : "norms"}};
  return c;
}

nlohmann::json SmoothedMethod::fingerprint() const {
  nlohmann::json f = inner_->fingerprint();
  f["smoothing_strength"] = alpha_;
  f["smoothing_linear_mappings"] = linear_mappings_;
  return f;
}

LayerTransform SmoothedMethod::transform_layer(const LayerContext& ctx, LayerWeights& lw,
                                               std::map<CapturePoint, InputStats>& stats) const {
  using K = LinearKind;
  struct Mapping {
    AwqMapping id;
    CapturePoint input;
    std::vector<K> balance;
    std::optional<K> prev;  // the linear whose rows absorb 1/s (none: the norm)
  };
  std::vector<Mapping> mappings = {{AwqMapping::attn, CapturePoint::attn_in, {K::q, K::k, K::v}, std::nullopt}};
  if (linear_mappings_ && ctx.config.n_kv_heads == ctx.config.n_heads) mappings.push_back({AwqMapping::v_o, CapturePoint::o_in, {K::o}, K::v});
  mappings.push_back({AwqMapping::mlp, CapturePoint::mlp_in, {K::gate, K::up}, std::nullopt});
  if (linear_mappings_) mappings.push_back({AwqMapping::up_down, CapturePoint::down_in, {K::down}, K::up});
  LayerTransform out;
  for (const Mapping& m : mappings) {
    const bool smooth = std::all_of(m.balance.begin(), m.balance.end(), [&](K k) {
      const int i = static_cast<int>(k);
      return ctx.planned[i] && ctx.specs[i].act != ActQuant::none;
    }) && (!m.prev || ctx.planned[static_cast<int>(*m.prev)]);
    if (!smooth) {
      log::debug("layer {}: mapping {} not smoothed (a linear is kept or has no activation quantization)", ctx.layer.index,
                 static_cast<int>(m.id));
      continue;
    }
    std::vector<const Mat*> ws;
    std::vector<QuantSpec> specs;
    for (K k : m.balance) ws.push_back(&lw.linear(k)), specs.push_back(ctx.specs[static_cast<int>(k)]);
    const std::vector<Mat>& xs = ctx.inputs.at(m.input);
    double alpha = alpha_;
    Vec s;
    if (alpha_ >= 0) {
      s = smoothing_scales(xs, ws, alpha_);
    } else {  // automatic: the strength of a grid whose smoothed outputs err least (s = 1 included)
      const Mat x = token_subsample(xs);
      std::vector<Mat> ref;
      for (const Mat* w : ws) ref.push_back(x * w->transpose());
      s = Vec::Ones(x.cols());
      double best = smoothed_error(x, ws, specs, ref, s);
      alpha = -1;  // −1: no smoothing won
      for (int i = 0; i <= kAutoGrid; ++i) {
        const double a = static_cast<double>(i) / kAutoGrid;
        const Vec cand = smoothing_scales(xs, ws, a);
        const double e = smoothed_error(x, ws, specs, ref, cand);
        if (e < best) best = e, s = cand, alpha = a;
      }
      if (alpha < 0) continue;
    }
    fold_awq_scales(lw, m.id, s, ctx.config.norm_offset);
    InputStats& st = stats.at(m.input);  // the inputs are now X / s
    const Vec inv = s.cwiseInverse();
    if (st.hessian.size()) st.hessian = inv.asDiagonal() * st.hessian * inv.asDiagonal();
    for (std::size_t j = 0; j < st.mean_square.size(); ++j) st.mean_square[j] *= inv(static_cast<Eigen::Index>(j)) * inv(static_cast<Eigen::Index>(j));
    st.derived.reset();
    out.input_scales[m.input] = s;
    for (K k : m.balance) {
      out.extra[k] = {{"smoothquant_alpha", alpha}, {"smoothquant_max_scale", s.maxCoeff()}, {"smoothquant_min_scale", s.minCoeff()}};
    }
    if (m.id == AwqMapping::attn) out.changed.emplace_back(ctx.layer.attn_norm, lw.attn_norm);
    if (m.id == AwqMapping::mlp) out.changed.emplace_back(ctx.layer.mlp_norm, lw.mlp_norm);
  }
  return out;
}

}  // namespace quant
