#include "quant/methods/awq.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <optional>

#include "quant/core/error.h"
#include "quant/core/log.h"
#include "quant/methods/gptq.h"
#include "quant/model/calibration.h"
#include "quant/model/weights.h"

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

void fold_awq_scales(LayerWeights& L, AwqMapping mapping, const Vec& s, float norm_offset) {
  using K = LinearKind;
  const Vec inv = s.cwiseInverse();
  // The norm multiplies by (offset + w); dividing its output by s makes (offset + w)/s − offset
  // the new w (AutoAWQ's scale_ln_fcs for Gemma: w += 1; w /= s; w -= 1).
  auto scale_norm = [&](Vec& w) { w = ((w.array() + norm_offset) * inv.array() - norm_offset).matrix(); };
  auto scale_cols = [&](K k) { L.linear(k) = L.linear(k) * s.asDiagonal(); };
  auto scale_rows = [&](K k) {
    L.linear(k) = inv.asDiagonal() * L.linear(k);
    Vec& b = L.b[static_cast<int>(k)];
    if (b.size()) b = b.cwiseProduct(inv);
  };
  switch (mapping) {
    case AwqMapping::attn:
      scale_norm(L.attn_norm);
      for (K k : {K::q, K::k, K::v}) scale_cols(k);
      break;
    case AwqMapping::v_o:
      scale_rows(K::v);
      scale_cols(K::o);
      break;
    case AwqMapping::mlp:
      scale_norm(L.mlp_norm);
      for (K k : {K::gate, K::up}) scale_cols(k);
      break;
    case AwqMapping::up_down:
      scale_rows(K::up);
      scale_cols(K::down);
      break;
  }
}

namespace {
std::int64_t count_rows(const std::vector<Mat>& xs) {
  std::int64_t n = 0;
  for (const Mat& x : xs) n += x.rows();
  return n;
}

// A linear mapping is scored in its Hessian form (out·in² per candidate, every token) when that
// is no dearer than the token form (out·in·n on the n scored tokens). The one rule for both the
// search and the statistic the layer loop accumulates for it (hessian_block).
bool linear_scored_by_hessian(std::int64_t scored, std::int64_t in) { return scored >= in; }
}  // namespace

const std::vector<Mat>& search_windows(const std::vector<Mat>& xs, std::int64_t tokens, std::int64_t windows,
                                       std::vector<Mat>& storage) {
  const std::int64_t total = count_rows(xs), n = static_cast<std::int64_t>(xs.size());
  if (tokens <= 0 || windows <= 0 || xs.empty()) return xs;
  const std::int64_t pick = std::max(windows, (tokens * n + total - 1) / total);
  if (pick >= n) return xs;
  storage.clear();
  for (std::int64_t j = 0; j < pick; ++j) storage.push_back(xs[static_cast<std::size_t>(j * n / pick)]);
  return storage;
}

std::int64_t scored_tokens(std::int64_t total, std::int64_t budget) {
  if (budget <= 0 || total <= budget) return total;
  const std::int64_t stride = (total + budget - 1) / budget;
  return (total + stride - 1) / stride;
}

const std::vector<Mat>& search_tokens(const std::vector<Mat>& xs, std::int64_t tokens, std::vector<Mat>& storage) {
  const std::int64_t total = count_rows(xs);
  if (tokens <= 0 || total <= tokens || xs.empty()) return xs;
  // Every stride-th token of the whole set, stacked in chunks of up to kChunk rows (a few large
  // products rather than many small ones).
  constexpr std::int64_t kChunk = 512;
  const std::int64_t stride = (total + tokens - 1) / tokens, cols = xs[0].cols();
  std::int64_t left = scored_tokens(total, tokens), t = 0, filled = 0;
  storage.clear();
  Mat chunk(std::min(kChunk, left), cols);
  for (const Mat& x : xs) {
    for (Eigen::Index r = (stride - t % stride) % stride; r < x.rows(); r += stride) {
      chunk.row(filled++) = x.row(r);
      if (filled == chunk.rows()) {
        storage.push_back(std::move(chunk));
        left -= filled;
        filled = 0;
        chunk.resize(std::min(kChunk, left), cols);
      }
    }
    t += x.rows();
  }
  return storage;
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

namespace {

enum class Inspect { attention, mlp, linear };

struct Mapping {
  AwqMapping id;
  std::string name;
  CapturePoint input;
  std::vector<LinearKind> scaled;          // columns multiplied by s
  std::optional<LinearKind> prev_linear;   // rows divided by s; else the norm before `input`
  Inspect inspect;
};

// A sparse layer's MLP mappings are the experts' (search_moe).
std::vector<Mapping> llama_mappings(const ModelConfig& c, bool moe) {
  using K = LinearKind;
  std::vector<Mapping> m = {{AwqMapping::attn, "attn", CapturePoint::attn_in, {K::q, K::k, K::v}, std::nullopt, Inspect::attention}};
  if (c.n_kv_heads == c.n_heads) m.push_back({AwqMapping::v_o, "v_o", CapturePoint::o_in, {K::o}, K::v, Inspect::linear});
  if (moe) return m;
  m.push_back({AwqMapping::mlp, "mlp", CapturePoint::mlp_in, {K::gate, K::up}, std::nullopt, Inspect::mlp});
  m.push_back({AwqMapping::up_down, "up_down", CapturePoint::down_in, {K::down}, K::up, Inspect::linear});
  return m;
}

// Output of the inspected block for one sample.
Mat block_output(const ModelConfig& c, const LayerWeights& L, const RopeTable& rope, const Mat& x, Inspect what) {
  Mat y;
  if (what == Inspect::attention) {
    const Mat attn = attention_block(c, L, rope, x);
    linear_forward(attn, L.linear(LinearKind::o), L.b[static_cast<int>(LinearKind::o)], y);
  } else {
    const Mat act = mlp_activation(c, L, x);
    linear_forward(act, L.linear(LinearKind::down), L.b[static_cast<int>(LinearKind::down)], y);
  }
  return y;
}

// A copy of the layer without a sparse layer's experts, router and shared expert (what
// block_output reads: the attention, or a dense layer's MLP), so a Mixtral-sized layer is not
// copied whole for the attention search.
LayerWeights dense_part(const LayerWeights& L) {
  LayerWeights d;
  d.w = L.w;
  d.b = L.b;
  d.act = L.act;
  d.attn_norm = L.attn_norm;
  d.mlp_norm = L.mlp_norm;
  d.q_norm = L.q_norm;
  d.k_norm = L.k_norm;
  d.post_attn_norm = L.post_attn_norm;
  d.post_mlp_norm = L.post_mlp_norm;
  d.index = L.index;
  return d;
}

// The block-output loss of an attention or MLP mapping, against the float block's outputs.
class BlockLoss {
 public:
  BlockLoss(const ModelConfig& c, const RopeTable& rope, const LayerWeights& L, const Mapping& m,
            const std::vector<Mat>& xs, const std::map<LinearKind, QuantSpec>& specs)
      : c_(c), rope_(rope), L_(L), m_(m), xs_(xs), specs_(specs), cand_(dense_part(L)) {
    fp_.resize(xs.size());
    run_block(L_, fp_, nullptr);
  }

  // Mean squared output error of the block when the mapping's linears use Q(W·s)/s.
  double loss(const Vec& s) {
    // One working copy of the layer for all candidates: only the scaled linears change.
    for (LinearKind k : m_.scaled) cand_.linear(k) = awq_fake_quant(L_.linear(k), s, specs_.at(k));
    std::vector<double> errs(xs_.size());
    std::vector<Mat> dummy;
    run_block(cand_, dummy, &errs);
    double total = 0, n = 0;
    for (std::size_t i = 0; i < xs_.size(); ++i) {
      total += errs[i];
      n += static_cast<double>(xs_[i].rows() * fp_[i].cols());
    }
    return total / n;
  }

 private:
  void run_block(const LayerWeights& L, std::vector<Mat>& outs, std::vector<double>* errs) {
    const std::ptrdiff_t n = static_cast<std::ptrdiff_t>(xs_.size());
#pragma omp parallel for schedule(dynamic, 1)
    for (std::ptrdiff_t i = 0; i < n; ++i) {
      const auto s = static_cast<std::size_t>(i);
      Mat y = block_output(c_, L, rope_, xs_[s], m_.inspect);
      if (errs) (*errs)[s] = (y - fp_[s]).cast<double>().squaredNorm();
      else outs[s] = std::move(y);
    }
  }

  const ModelConfig& c_;
  const RopeTable& rope_;
  const LayerWeights& L_;
  const Mapping& m_;
  const std::vector<Mat>& xs_;
  const std::map<LinearKind, QuantSpec>& specs_;
  LayerWeights cand_;
  std::vector<Mat> fp_;
};

// A sparse layer's scales (docs/methods.md "Mixture of experts"): the MLP norm's s over every
// expert's gate/up (llm-compressor's Mixtral/Qwen-MoE mappings; the router's and the shared
// gate's columns take s too, exactly, as they stay in float), searched on the sparse block's
// output; and each expert's up → down on the activations of its routed tokens.
struct MoeScales {
  std::optional<Vec> mlp;
  std::vector<std::pair<int, Vec>> up_down;  // expert (-1: shared), s
};

MoeScales search_moe(const LayerContext& ctx, const LayerWeights& lw, const AwqOptions& o, LayerTransform& out) {
  using K = LinearKind;
  const LayerDesc& d = ctx.layer;
  const ModelConfig& c = ctx.config;
  auto at = [&](const LinearDesc& l) { return static_cast<std::size_t>(&l - d.linears.data()); };
  auto planned = [&](int e, K k) { return static_cast<bool>(ctx.planned_all.at(at(d.expert(e, k)))); };
  auto spec = [&](int e, K k) { return ctx.specs_all.at(at(d.expert(e, k))); };
  auto weights = [&](const LayerWeights& L, int e) -> const ExpertWeights& { return e < 0 ? L.shared : L.experts[static_cast<std::size_t>(e)]; };
  std::vector<int> ids;
  for (int e = 0; e < d.n_experts; ++e) ids.push_back(e);
  if (d.has_shared_expert()) ids.push_back(-1);
  const std::vector<Mat>& xs = ctx.inputs.at(CapturePoint::mlp_in);
  auto report = [&](int e, K k, const char* name, const AwqSearchResult& r) {
    out.extra_by_prefix[d.expert(e, k).prefix] = {{"awq_mapping", name}, {"awq_ratio", r.ratio}, {"awq_loss", r.loss}, {"rtn_loss", r.identity_loss}};
  };
  MoeScales found;
  const bool all_in = std::all_of(ids.begin(), ids.end(), [&](int e) { return planned(e, K::gate) && planned(e, K::up); });
  if (all_in) {
    std::vector<const Mat*> ws;
    for (int e : ids) {
      ws.push_back(&weights(lw, e).gate);
      ws.push_back(&weights(lw, e).up);
    }
    const auto n = static_cast<std::ptrdiff_t>(xs.size());
    std::vector<Mat> fp(xs.size());
#pragma omp parallel for schedule(dynamic, 1)
    for (std::ptrdiff_t i = 0; i < n; ++i) fp[static_cast<std::size_t>(i)] = moe_block(c, lw, xs[static_cast<std::size_t>(i)]);
    // The candidate layer: the float layer's router and downs, each candidate's gate/up.
    LayerWeights cand;
    cand.router = lw.router;
    cand.shared_gate = lw.shared_gate;
    cand.experts.resize(lw.experts.size());
    for (std::size_t e = 0; e < lw.experts.size(); ++e) cand.experts[e].down = lw.experts[e].down;
    cand.shared.down = lw.shared.down;
    const AwqSearchResult r = awq_search(mean_abs(xs), weight_mean(ws, spec(ids[0], K::gate).group_size), o, [&](const Vec& s) {
      for (int e : ids) {
        ExpertWeights& ce = e < 0 ? cand.shared : cand.experts[static_cast<std::size_t>(e)];
        ce.gate = awq_fake_quant(weights(lw, e).gate, s, spec(e, K::gate));
        ce.up = awq_fake_quant(weights(lw, e).up, s, spec(e, K::up));
      }
      std::vector<double> errs(xs.size());
#pragma omp parallel for schedule(dynamic, 1)
      for (std::ptrdiff_t i = 0; i < n; ++i) {
        const auto j = static_cast<std::size_t>(i);
        errs[j] = (moe_block(c, cand, xs[j]) - fp[j]).cast<double>().squaredNorm();
      }
      double total = 0, count = 0;
      for (std::size_t j = 0; j < xs.size(); ++j) {
        total += errs[j];
        count += static_cast<double>(xs[j].rows() * xs[j].cols());
      }
      return total / count;
    });
    found.mlp = r.scales;
    for (int e : ids) {
      report(e, K::gate, "mlp", r);
      report(e, K::up, "mlp", r);
    }
  }
  std::vector<Routing> routes;
  for (const Mat& x : xs) routes.push_back(route_tokens(c, lw, x));
  for (int e : ids) {
    if (!planned(e, K::up) || !planned(e, K::down)) continue;
    std::vector<Mat> acts;
    std::int64_t tokens = 0;
    for (std::size_t i = 0; i < xs.size(); ++i) {
      if (e >= 0 && routes[i].rows[static_cast<std::size_t>(e)].empty()) continue;
      acts.push_back(expert_activation(weights(lw, e), e < 0 ? xs[i] : gather_rows(xs[i], routes[i].rows[static_cast<std::size_t>(e)])));
      tokens += acts.back().rows();
    }
    if (e >= 0 && tokens < std::max<std::int64_t>(1, ctx.moe_min_tokens)) continue;  // too few tokens to weigh its channels
    const Mat& w = weights(lw, e).down;
    const AwqSearchResult r = tokens < w.cols() ? awq_search_linear_tokens(w, acts, mean_abs(acts), spec(e, K::down), o)
                                                : awq_search_linear(w, hessian(acts), mean_abs(acts), spec(e, K::down), o);
    found.up_down.emplace_back(e, r.scales);
    report(e, K::down, "up_down", r);
  }
  return found;
}

void fold_moe(const ModelConfig& c, LayerWeights& lw, const MoeScales& f) {
  if (f.mlp) {
    const Vec& s = *f.mlp;
    const Vec inv = s.cwiseInverse();
    lw.mlp_norm = ((lw.mlp_norm.array() + c.norm_offset) * inv.array() - c.norm_offset).matrix();
    for (ExpertWeights* e : [&] {
           std::vector<ExpertWeights*> v;
           for (auto& x : lw.experts) v.push_back(&x);
           if (lw.shared.gate.size()) v.push_back(&lw.shared);
           return v;
         }()) {
      e->gate = e->gate * s.asDiagonal();
      e->up = e->up * s.asDiagonal();
    }
    lw.router = lw.router * s.asDiagonal();
    if (lw.shared_gate.size()) lw.shared_gate = lw.shared_gate * s.asDiagonal();
  }
  for (const auto& [e, s] : f.up_down) {
    ExpertWeights& x = e < 0 ? lw.shared : lw.experts[static_cast<std::size_t>(e)];
    x.up = s.cwiseInverse().asDiagonal() * x.up;
    x.down = x.down * s.asDiagonal();
  }
}

// H of inputs divided per channel by s: D⁻¹ H D⁻¹.
Mat rescale_hessian(const Mat& H, const Vec& s) {
  const Vec inv = s.cwiseInverse();
  return inv.asDiagonal() * H * inv.asDiagonal();
}

}  // namespace

AwqMethod::AwqMethod(AwqOptions options) : options_(options) {
  if (options_.n_grid < 1) fail<UsageError>("AWQ n_grid must be at least 1, got {}", options_.n_grid);
  traits_.name = options_.export_compatible ? "awq-scaled" : "awq";
  traits_.statistic = Statistic::hessian;
  traits_.calibrated = true;
  traits_.static_activations = false;  // its folded scales are not reported per capture point
  traits_.true_sequential = false;
  traits_.transforms_layer = true;
  traits_.float_output = options_.export_compatible;
  traits_.round_to_source_dtype = false;
}

// The clipping search reads H's diagonal group blocks only; a linear mapping scored in the
// Hessian form (no fewer scored tokens than input columns) reads its input's whole H.
std::int64_t AwqMethod::hessian_block(CapturePoint p, std::int64_t in, std::int64_t tokens, std::int64_t group) const {
  const bool linear_mapping = p == CapturePoint::o_in || p == CapturePoint::down_in;
  if (linear_mapping && linear_scored_by_hessian(scored_tokens(tokens, options_.search_tokens), in)) return 0;
  if (!options_.clip) return 1;
  return group;
}

nlohmann::json AwqMethod::fingerprint() const {
  const AwqOptions& o = options_;
  return {{"n_grid", o.n_grid}, {"duo_scaling", o.duo_scaling}, {"clip", o.clip}, {"clip_grid", o.clip_grid},
          {"clip_max_shrink", o.clip_max_shrink}, {"export_compatible", o.export_compatible},
          {"search_tokens", o.search_tokens}, {"search_windows", o.search_windows}};
}

// Searches every mapping on the float layer, as AutoAWQ does, then folds the scales; the
// Hessians of the scaled inputs become D⁻¹ H D⁻¹ for the clipping search.
LayerTransform AwqMethod::transform_layer(const LayerContext& ctx, LayerWeights& lw,
                                          std::map<CapturePoint, InputStats>& stats) const {
  const AwqOptions& o = options_;
  auto planned = [&](LinearKind k) { return ctx.planned[static_cast<int>(k)]; };
  std::map<LinearKind, QuantSpec> specs;
  for (LinearKind k : kAllLinearKinds) specs[k] = ctx.specs[static_cast<int>(k)];
  LayerTransform out;
  std::vector<std::pair<const Mapping*, AwqSearchResult>> found;
  const auto mappings = llama_mappings(ctx.config, ctx.layer.moe);
  for (const auto& m : mappings) {
    const bool ok = std::all_of(m.scaled.begin(), m.scaled.end(), planned) && (!m.prev_linear || planned(*m.prev_linear));
    if (!ok) {
      log::debug("layer {}: mapping {} skipped (a linear is not quantized)", ctx.layer.index, m.name);
      continue;
    }
    const std::vector<Mat>& all = ctx.inputs.at(m.input);
    std::vector<const Mat*> ws;
    for (LinearKind k : m.scaled) ws.push_back(&lw.linear(k));
    const Vec x_mean = mean_abs(all);
    std::vector<Mat> subset;
    // Attention needs whole windows (causal); an MLP or a linear is per token.
    const std::vector<Mat>& xs = m.inspect == Inspect::attention ? search_windows(all, o.search_tokens, o.search_windows, subset)
                                                                 : search_tokens(all, o.search_tokens, subset);
    const std::int64_t n_tokens = count_rows(xs);
    AwqSearchResult res;
    if (m.inspect == Inspect::linear) {
      // Same objective, in whichever form is cheaper.
      const Mat& w = lw.linear(m.scaled[0]);
      res = linear_scored_by_hessian(n_tokens, w.cols())
                ? awq_search_linear(w, stats.at(m.input).hessian, x_mean, specs[m.scaled[0]], o)
                : awq_search_linear_tokens(w, xs, x_mean, specs[m.scaled[0]], o);
    } else {
      BlockLoss block(ctx.config, ctx.rope, lw, m, xs, specs);
      res = awq_search(x_mean, weight_mean(ws, specs[m.scaled[0]].group_size), o, [&](const Vec& s) { return block.loss(s); });
    }
    for (LinearKind k : m.scaled) {
      out.extra[k] = {{"awq_mapping", m.name}, {"awq_ratio", res.ratio}, {"awq_loss", res.loss}, {"rtn_loss", res.identity_loss},
                      {"awq_search_tokens", n_tokens}};
    }
    found.emplace_back(&m, std::move(res));
  }
  const MoeScales moe = ctx.layer.moe ? search_moe(ctx, lw, o, out) : MoeScales{};
  for (const auto& [m, res] : found) {
    fold_awq_scales(lw, m->id, res.scales, ctx.config.norm_offset);
    InputStats& st = stats.at(m->input);
    st.hessian = rescale_hessian(st.hessian, res.scales);
    st.derived.reset();
  }
  fold_moe(ctx.config, lw, moe);
  if (moe.mlp) {
    out.input_scales[CapturePoint::mlp_in] = *moe.mlp;
    out.changed.emplace_back(ctx.layer.mlp_norm, lw.mlp_norm);
    out.changed_matrices.emplace_back(ctx.layer.router, lw.router);
    if (lw.shared_gate.size()) out.changed_matrices.emplace_back(ctx.layer.shared_gate, lw.shared_gate);
    if (auto st = stats.find(CapturePoint::mlp_in); st != stats.end() && st->second.hessian.size()) {
      st->second.hessian = rescale_hessian(st->second.hessian, *moe.mlp);
      st->second.derived.reset();
    }
  }
  // Norms carry 1/s (biases of scaled previous linears go out with their weights).
  for (const auto& [m, res] : found) {
    if (m->id == AwqMapping::attn) out.changed.emplace_back(ctx.layer.attn_norm, lw.attn_norm);
  }
  for (const auto& [m, res] : found) {
    if (m->id == AwqMapping::mlp) out.changed.emplace_back(ctx.layer.mlp_norm, lw.mlp_norm);
  }
  return out;
}

QuantizedLinear AwqMethod::quantize(const LinearInput& in) const {
  if (in.desc.layer < 0) {
    return {quantize_rtn(in.weight, in.spec), Mat(), {{"note", "lm_head: RTN (AWQ scales only decoder linears)"}}};
  }
  const LinearKind k = in.desc.kind;
  Mat w = in.weight;
  nlohmann::json extra = nlohmann::json::object();
  if (options_.clip && k != LinearKind::q && k != LinearKind::k) {
    w = awq_clip(w, in.stats->hessian, in.spec, options_);
    extra["clipped"] = true;
  }
  // Export-compatible: the scaled, clipped float weight; the next layers see it unquantized.
  if (options_.export_compatible) return {QuantizedMatrix(), std::move(w), std::move(extra)};
  QuantizedMatrix q = quantize_rtn(w, in.spec);
  Mat deq = q.dequantize();
  return {std::move(q), std::move(deq), std::move(extra)};
}

}  // namespace quant
