// Llama-family forward pass. Shapes: h [T, hidden]; q [T, n_heads·head_dim];
// k, v [T, n_kv_heads·head_dim]; weights [out, in].
#include "quant/model/forward.h"

#include <omp.h>

#include <cmath>

#include "quant/core/error.h"
#include "quant/model/weights.h"

namespace quant {

namespace {
// Output rows per parallel work item of linear_forward. Fixed, so that the floating-point
// work of every block is the same whatever the thread count.
constexpr Eigen::Index kRowBlock = 64;
}  // namespace

std::size_t LayerWeights::bytes() const {
  std::size_t n = static_cast<std::size_t>(attn_norm.size() + mlp_norm.size());
  for (const auto& m : w) n += static_cast<std::size_t>(m.size());
  for (const auto& v : b) n += static_cast<std::size_t>(v.size());
  return n * sizeof(float);
}

LayerWeights load_layer(const Model& model, int layer) {
  const LayerDesc& d = model.layout().layers.at(static_cast<std::size_t>(layer));
  LayerWeights lw;
  for (const auto& l : d.linears) {
    lw.linear(l.kind) = load_linear(model, l);
    if (l.bias) lw.b[static_cast<int>(l.kind)] = load_vector(model, l.bias_name());
  }
  lw.attn_norm = load_vector(model, d.attn_norm);
  lw.mlp_norm = load_vector(model, d.mlp_norm);
  return lw;
}

HeadWeights load_head(const Model& model) {
  HeadWeights h;
  h.embed = load_matrix(model, model.layout().embed);
  h.final_norm = load_vector(model, model.layout().final_norm);
  if (!model.layout().tied) h.lm_head = load_linear(model, model.layout().lm_head);
  return h;
}

CapturePoint capture_point(LinearKind kind) {
  switch (kind) {
    case LinearKind::q: case LinearKind::k: case LinearKind::v: return CapturePoint::attn_in;
    case LinearKind::o: return CapturePoint::o_in;
    case LinearKind::gate: case LinearKind::up: return CapturePoint::mlp_in;
    case LinearKind::down: return CapturePoint::down_in;
  }
  return CapturePoint::attn_in;
}

RopeTable build_rope(const ModelConfig& c, std::int64_t n_positions) {
  const std::int64_t half = c.head_dim / 2;
  std::vector<double> inv_freq(static_cast<std::size_t>(half));
  for (std::int64_t i = 0; i < half; ++i) {
    inv_freq[i] = 1.0 / std::pow(c.rope_theta, static_cast<double>(2 * i) / static_cast<double>(c.head_dim));
  }
  const RopeScaling& rs = c.rope_scaling;
  if (rs.type == "linear") {
    for (auto& f : inv_freq) f /= rs.factor;
  } else if (rs.type == "llama3") {
    // Llama 3.1: long wavelengths are slowed by `factor`, short ones kept, and the band between
    // interpolated smoothly (transformers' _compute_llama3_parameters).
    const double old_ctx = static_cast<double>(rs.original_max_position_embeddings);
    const double low_wavelen = old_ctx / rs.low_freq_factor;
    const double high_wavelen = old_ctx / rs.high_freq_factor;
    for (auto& f : inv_freq) {
      const double wavelen = 2.0 * M_PI / f;
      if (wavelen < high_wavelen) continue;
      if (wavelen > low_wavelen) {
        f /= rs.factor;
      } else {
        const double smooth = (old_ctx / wavelen - rs.low_freq_factor) / (rs.high_freq_factor - rs.low_freq_factor);
        f = (1.0 - smooth) * f / rs.factor + smooth * f;
      }
    }
  } else if (rs.type != "none") {
    fail("config.json: rope_scaling type '{}' is not supported (supported: linear, llama3)", rs.type);
  }
  RopeTable t{Mat(n_positions, half), Mat(n_positions, half)};
  for (std::int64_t p = 0; p < n_positions; ++p) {
    for (std::int64_t i = 0; i < half; ++i) {
      // As transformers: the angle is formed in float32 before cos/sin.
      const float angle = static_cast<float>(p) * static_cast<float>(inv_freq[i]);
      t.cos(p, i) = std::cos(angle);
      t.sin(p, i) = std::sin(angle);
    }
  }
  return t;
}

void linear_forward(const Mat& x, const Mat& w, const Vec& b, Mat& y) {
  const Eigen::Index out = w.rows();
  y.resize(x.rows(), out);
  const Eigen::Index n_blocks = (out + kRowBlock - 1) / kRowBlock;
#pragma omp parallel for schedule(dynamic, 1) if (n_blocks > 1 && !omp_in_parallel())
  for (Eigen::Index blk = 0; blk < n_blocks; ++blk) {
    const Eigen::Index r0 = blk * kRowBlock;
    const Eigen::Index n = std::min(kRowBlock, out - r0);
    y.middleCols(r0, n).noalias() = x * w.middleRows(r0, n).transpose();
  }
  if (b.size()) y.rowwise() += b.transpose();
}

void rms_norm(const Mat& x, const Vec& weight, double eps, Mat& out) {
  out.resize(x.rows(), x.cols());
  for (Eigen::Index t = 0; t < x.rows(); ++t) {
    double ss = 0;
    for (Eigen::Index i = 0; i < x.cols(); ++i) ss += static_cast<double>(x(t, i)) * x(t, i);
    const float inv = static_cast<float>(1.0 / std::sqrt(ss / static_cast<double>(x.cols()) + eps));
    out.row(t) = (x.row(t) * inv).cwiseProduct(weight.transpose());
  }
}

namespace {

void apply_rope(Mat& x, std::int64_t n_heads, std::int64_t head_dim, const RopeTable& rope) {
  const std::int64_t half = head_dim / 2;
  for (Eigen::Index t = 0; t < x.rows(); ++t) {
    float* row = x.row(t).data();
    const float* c = rope.cos.row(t).data();
    const float* s = rope.sin.row(t).data();
    for (std::int64_t h = 0; h < n_heads; ++h) {
      float* v = row + h * head_dim;
      for (std::int64_t i = 0; i < half; ++i) {
        const float x1 = v[i], x2 = v[i + half];
        v[i] = x1 * c[i] - x2 * s[i];
        v[i + half] = x2 * c[i] + x1 * s[i];
      }
    }
  }
}

// Causal grouped-query attention: out [T, n_heads·head_dim]. Query rows go in blocks of
// kQueryBlock against only the keys they can see (half the work of a full T×T product).
constexpr Eigen::Index kQueryBlock = 64;

void attention(const ModelConfig& c, const Mat& q, const Mat& k, const Mat& v, Mat& out) {
  const Eigen::Index T = q.rows();
  const std::int64_t hd = c.head_dim;
  const std::int64_t group = c.n_heads / c.n_kv_heads;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  out.resize(T, c.n_heads * hd);
#pragma omp parallel for schedule(dynamic, 1) if (c.n_heads > 1 && !omp_in_parallel())
  for (std::int64_t h = 0; h < c.n_heads; ++h) {
    const std::int64_t g = h / group;
    Mat scores;
    for (Eigen::Index r0 = 0; r0 < T; r0 += kQueryBlock) {
      const Eigen::Index nq = std::min(kQueryBlock, T - r0), nk = r0 + nq;
      scores.noalias() = (q.block(r0, h * hd, nq, hd) * scale) * k.block(0, g * hd, nk, hd).transpose();
      for (Eigen::Index i = 0; i < nq; ++i) {
        const Eigen::Index visible = r0 + i + 1;
        auto row = scores.row(i).head(visible).array();
        row = (row - row.maxCoeff()).exp();
        row /= row.sum();
        scores.row(i).tail(nk - visible).setZero();
      }
      out.block(r0, h * hd, nq, hd).noalias() = scores * v.block(0, g * hd, nk, hd);
    }
  }
}

}  // namespace

Mat attention_block(const ModelConfig& c, const LayerWeights& L, const RopeTable& rope, const Mat& x) {
  if (x.rows() > rope.cos.rows()) {
    fail<Error>("attention_block: {} tokens but rope table has {} positions", x.rows(), rope.cos.rows());
  }
  auto B = [&](LinearKind k) -> const Vec& { return L.b[static_cast<int>(k)]; };
  Mat q, k, v, attn;
  linear_forward(x, L.linear(LinearKind::q), B(LinearKind::q), q);
  linear_forward(x, L.linear(LinearKind::k), B(LinearKind::k), k);
  linear_forward(x, L.linear(LinearKind::v), B(LinearKind::v), v);
  apply_rope(q, c.n_heads, c.head_dim, rope);
  apply_rope(k, c.n_kv_heads, c.head_dim, rope);
  attention(c, q, k, v, attn);
  return attn;
}

Mat mlp_activation(const LayerWeights& L, const Mat& x) {
  Mat gate, up;
  linear_forward(x, L.linear(LinearKind::gate), L.b[static_cast<int>(LinearKind::gate)], gate);
  linear_forward(x, L.linear(LinearKind::up), L.b[static_cast<int>(LinearKind::up)], up);
  // SwiGLU: silu(gate) ⊙ up
  return gate.unaryExpr([](float g) { return g / (1.0f + std::exp(-g)); }).cwiseProduct(up);
}

void add_linear(const Mat& x, const LayerWeights& L, LinearKind kind, Mat& h) {
  Mat y;
  linear_forward(x, L.linear(kind), L.b[static_cast<int>(kind)], y);
  h += y;
}

void decoder_layer_forward(const ModelConfig& c, const LayerWeights& L, const RopeTable& rope,
                           Mat& h, const LinearInputHook* hook) {
  Mat x;
  rms_norm(h, L.attn_norm, c.rms_norm_eps, x);
  if (hook) (*hook)(CapturePoint::attn_in, x);
  const Mat attn = attention_block(c, L, rope, x);
  if (hook) (*hook)(CapturePoint::o_in, attn);
  add_linear(attn, L, LinearKind::o, h);
  rms_norm(h, L.mlp_norm, c.rms_norm_eps, x);
  if (hook) (*hook)(CapturePoint::mlp_in, x);
  const Mat act = mlp_activation(L, x);
  if (hook) (*hook)(CapturePoint::down_in, act);
  add_linear(act, L, LinearKind::down, h);
}

void decoder_layer_forward_batch(const ModelConfig& c, const LayerWeights& L,
                                 const RopeTable& rope, std::vector<Mat>& hs) {
  const std::ptrdiff_t n = static_cast<std::ptrdiff_t>(hs.size());
  if (n == 1) {
    decoder_layer_forward(c, L, rope, hs[0]);
    return;
  }
#pragma omp parallel for schedule(dynamic, 1)
  for (std::ptrdiff_t i = 0; i < n; ++i) decoder_layer_forward(c, L, rope, hs[static_cast<std::size_t>(i)]);
}

Mat embed_tokens(const HeadWeights& head, std::span<const std::int32_t> tokens) {
  Mat h(static_cast<Eigen::Index>(tokens.size()), head.embed.cols());
  for (std::size_t t = 0; t < tokens.size(); ++t) {
    if (tokens[t] < 0 || tokens[t] >= head.embed.rows()) {
      fail("token id {} at position {} is outside the vocabulary (size {})", tokens[t], t, head.embed.rows());
    }
    h.row(static_cast<Eigen::Index>(t)) = head.embed.row(tokens[t]);
  }
  return h;
}

Mat final_logits(const ModelConfig& c, const HeadWeights& head, const Mat& h) {
  Mat x, logits;
  rms_norm(h, head.final_norm, c.rms_norm_eps, x);
  linear_forward(x, head.head(), Vec(), logits);
  return logits;
}

LayerCache::LayerCache(const Model& model, std::size_t budget_bytes) : model_(model) {
  const auto& c = model.config();
  const std::size_t per_layer = static_cast<std::size_t>(
      (c.n_heads + 2 * c.n_kv_heads) * c.head_dim * c.hidden_size +
      c.n_heads * c.head_dim * c.hidden_size + 3 * c.intermediate_size * c.hidden_size) * sizeof(float);
  keep_all_ = per_layer * static_cast<std::size_t>(c.n_layers) <= budget_bytes;
  layers_.resize(static_cast<std::size_t>(c.n_layers));
}

const LayerWeights& LayerCache::get(int layer) {
  auto& slot = layers_.at(static_cast<std::size_t>(layer));
  if (!slot) {
    if (!keep_all_) {
      for (auto& l : layers_) l.reset();
    }
    slot = std::make_unique<LayerWeights>(load_layer(model_, layer));
  }
  return *slot;
}

}  // namespace quant
