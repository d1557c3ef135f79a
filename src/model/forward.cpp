// Llama-family forward pass. Shapes: h [T, hidden]; q [T, n_heads·head_dim];
// k, v [T, n_kv_heads·head_dim]; weights [out, in].
#include "quant/model/forward.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <map>

#include "quant/core/error.h"
#include "quant/core/gemm.h"
#include "quant/model/weights.h"

namespace quant {

std::size_t LayerWeights::bytes() const {
  std::size_t n = static_cast<std::size_t>(attn_norm.size() + mlp_norm.size() + q_norm.size() + k_norm.size() +
                                           post_attn_norm.size() + post_mlp_norm.size());
  for (const auto& m : w) n += static_cast<std::size_t>(m.size());
  for (const auto& v : b) n += static_cast<std::size_t>(v.size());
  n += static_cast<std::size_t>(router.size() + shared_gate.size() + shared.gate.size() + shared.up.size() + shared.down.size());
  for (const auto& e : experts) n += static_cast<std::size_t>(e.gate.size() + e.up.size() + e.down.size());
  std::size_t raw_bytes = 0;
  for (const auto& r : raw) raw_bytes += r.bytes();
  return n * sizeof(float) + raw_bytes;
}

Mat& LayerWeights::weight(const LinearDesc& d) {
  if (d.expert >= 0) return experts.at(static_cast<std::size_t>(d.expert)).linear(d.kind);
  if (d.shared_expert) return shared.linear(d.kind);
  return linear(d.kind);
}

const Vec& LayerWeights::bias(const LinearDesc& d) const {
  static const Vec kNone;
  return d.in_expert() ? kNone : b[static_cast<int>(d.kind)];
}

namespace {
LayerWeights load_layer_reusing(const Model& model, int layer, bool experts, LayerWeights* recycled, bool stored_ok = false) {
  const LayerDesc& d = model.layout().layers.at(static_cast<std::size_t>(layer));
  LayerWeights lw;
  std::map<std::string, Mat> stored;  // Phi-3: each fused tensor read once, its parts sliced from it
  if (d.moe) {
    lw.router = load_matrix(model, d.router);
    lw.experts.resize(static_cast<std::size_t>(d.n_experts));
    if (d.has_shared_expert()) lw.shared_gate = load_matrix(model, d.shared_gate);
  }
  for (const auto& l : d.linears) {
    if (l.in_expert()) {
      if (experts) lw.weight(l) = load_linear(model, l);
      continue;
    }
    if (l.fused()) {
      auto it = stored.find(l.storage);
      if (it == stored.end()) it = stored.emplace(l.storage, load_linear(model, l.storage_desc())).first;
      lw.linear(l.kind) = it->second.middleRows(l.row_offset, l.out);
    } else if (stored_ok && model.storage(l) == LinearStorage::dense && loadable_raw(model, l.weight_name())) {
      RawMatrix& r = lw.raw[static_cast<int>(l.kind)];
      if (recycled) std::swap(r, recycled->raw[static_cast<int>(l.kind)]);
      load_raw_into(model, l.weight_name(), r);
    } else {
      if (recycled) lw.linear(l.kind).swap(recycled->linear(l.kind));
      load_linear_into(model, l, lw.linear(l.kind));
    }
    if (l.bias) lw.b[static_cast<int>(l.kind)] = load_vector(model, l.bias_name());
    lw.act[static_cast<int>(l.kind)] = model.act_quant(l);
  }
  for (const auto& l : d.linears) {  // static input scales of fused siblings: vLLM's fused kernel keeps the largest
    ActInput& a = lw.act[static_cast<int>(l.kind)];
    if (l.in_expert() || !a.is_static()) continue;
    for (const LinearDesc* s : fused_siblings(d, l)) a.scale = std::max(a.scale, lw.act[static_cast<int>(s->kind)].scale);
  }
  lw.attn_norm = load_vector(model, d.attn_norm);
  lw.mlp_norm = load_vector(model, d.mlp_norm);
  if (!d.q_norm.empty()) lw.q_norm = load_vector(model, d.q_norm);
  if (!d.k_norm.empty()) lw.k_norm = load_vector(model, d.k_norm);
  if (!d.post_attn_norm.empty()) lw.post_attn_norm = load_vector(model, d.post_attn_norm);
  if (!d.post_mlp_norm.empty()) lw.post_mlp_norm = load_vector(model, d.post_mlp_norm);
  lw.index = layer;
  if (recycled) *recycled = LayerWeights{};  // what was not reused (experts, norms) goes now, not with the next layer
  return lw;
}
}  // namespace

LayerWeights load_layer(const Model& model, int layer, bool experts) { return load_layer_reusing(model, layer, experts, nullptr); }

LayerWeights load_layer(const Model& model, int layer, bool experts, LayerWeights&& recycled) {
  return load_layer_reusing(model, layer, experts, &recycled);
}

LayerWeights load_layer_stored(const Model& model, int layer, LayerWeights* recycled) {
  return load_layer_reusing(model, layer, true, recycled, true);
}

HeadWeights load_head(const Model& model, bool stored) {
  HeadWeights h;
  const ModelLayout& L = model.layout();
  if (stored && loadable_raw(model, L.embed)) {
    load_raw_into(model, L.embed, h.embed_raw);
  } else {
    h.embed = load_matrix(model, L.embed);
  }
  h.embed_scale = model.config().embed_scale;
  h.final_norm = load_vector(model, L.final_norm);
  if (!L.tied) {
    if (stored && model.storage(L.lm_head) == LinearStorage::dense && loadable_raw(model, L.lm_head.weight_name())) {
      load_raw_into(model, L.lm_head.weight_name(), h.lm_head_raw);
    } else {
      h.lm_head = load_linear(model, L.lm_head);
    }
  }
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

namespace {

// YaRN's per-frequency blend (transformers' _compute_yarn_parameters; llama.cpp's
// ggml_rope_yarn_corr_dims and rope_yarn_ramp compute the same): frequencies whose wavelength
// fits many times in the original context keep their value, slow ones are divided by factor,
// with a linear ramp between the correction dims.
void yarn_blend(const RopeScaling& rs, double theta, std::int64_t dim, std::vector<double>& inv_freq) {
  const auto correction_dim = [&](double rotations) {
    return static_cast<double>(dim) * std::log(static_cast<double>(rs.original_max_position_embeddings) / (rotations * 2.0 * M_PI)) /
           (2.0 * std::log(theta));
  };
  double low = correction_dim(rs.beta_fast), high = correction_dim(rs.beta_slow);
  if (rs.truncate) {
    low = std::floor(low);
    high = std::ceil(high);
  }
  low = std::max(low, 0.0);
  high = std::min(high, static_cast<double>(dim - 1));
  if (low == high) high += 0.001;  // linear_ramp_factor's guard against a zero-width ramp
  for (std::size_t i = 0; i < inv_freq.size(); ++i) {
    // float32 as transformers' torch.arange(dim, dtype=float32) ramp
    const float ramp = std::clamp(static_cast<float>((static_cast<double>(i) - low) / (high - low)), 0.0f, 1.0f);
    const double extrapolation = 1.0 - ramp;
    inv_freq[i] = inv_freq[i] / rs.factor * (1.0 - extrapolation) + inv_freq[i] * extrapolation;
  }
}

// RoPE frequencies of the rotary dims for sequences of n_positions tokens (longrope picks its
// factors by length, as transformers' longrope_frequency_update does).
std::vector<double> rope_inv_freq(const ModelConfig& c, double theta, const RopeScaling& rs, std::int64_t n_positions) {
  const std::int64_t dim = c.rotary_dim > 0 ? c.rotary_dim : c.head_dim;
  const std::int64_t half = dim / 2;
  std::vector<double> inv_freq(static_cast<std::size_t>(half));
  for (std::int64_t i = 0; i < half; ++i) {
    inv_freq[i] = 1.0 / std::pow(theta, static_cast<double>(2 * i) / static_cast<double>(dim));
  }
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
  } else if (rs.type == "yarn") {
    yarn_blend(rs, theta, dim, inv_freq);
  } else if (rs.type == "longrope") {
    const auto& ext = n_positions > rs.original_max_position_embeddings ? rs.long_factor : rs.short_factor;
    if (ext.size() != inv_freq.size()) fail("RoPE longrope: {} factors given for {} frequencies", ext.size(), inv_freq.size());
    for (std::size_t i = 0; i < inv_freq.size(); ++i) inv_freq[i] /= ext[i];
  } else if (rs.type == "freq_factors") {
    if (rs.freq_factors.size() != inv_freq.size()) fail("RoPE frequency factors: {} given for {} frequencies", rs.freq_factors.size(), inv_freq.size());
    for (std::size_t i = 0; i < inv_freq.size(); ++i) inv_freq[i] /= rs.freq_factors[i];
  } else if (rs.type != "none") {
    fail("config.json: rope_scaling type '{}' is not supported (supported: linear, llama3, yarn, longrope)", rs.type);
  }
  return inv_freq;
}

// cos/sin of position × frequency; yarn and longrope scale both by attention_factor
// (transformers' attention_scaling, applied to cos and sin in float32).
void fill_rope(const std::vector<double>& inv_freq, std::int64_t n_positions, float scale, Mat& cos, Mat& sin) {
  const auto half = static_cast<Eigen::Index>(inv_freq.size());
  cos.resize(n_positions, half);
  sin.resize(n_positions, half);
  for (std::int64_t p = 0; p < n_positions; ++p) {
    for (Eigen::Index i = 0; i < half; ++i) {
      // As transformers: the angle is formed in float32 before cos/sin.
      const float angle = static_cast<float>(p) * static_cast<float>(inv_freq[static_cast<std::size_t>(i)]);
      cos(p, i) = std::cos(angle) * scale;
      sin(p, i) = std::sin(angle) * scale;
    }
  }
}

}  // namespace

RopeTable build_rope(const ModelConfig& c, std::int64_t n_positions) {
  RopeTable t;
  const RopeScaling& rs = c.rope_scaling;
  const bool scaled = rs.type == "yarn" || rs.type == "longrope";
  fill_rope(rope_inv_freq(c, c.rope_theta, rs, n_positions), n_positions, scaled ? static_cast<float>(rs.attention_factor) : 1.0f, t.cos, t.sin);
  // Gemma3TextModel.rotary_emb_local: rope_local_base_freq with the default (unscaled) RoPE.
  if (c.rope_local_theta > 0) {
    fill_rope(rope_inv_freq(c, c.rope_local_theta, RopeScaling{}, n_positions), n_positions, 1.0f, t.cos_local, t.sin_local);
  }
  return t;
}

void linear_forward(const Mat& x, const Mat& w, const Vec& b, Mat& y) {
  gemm_xwt(x, w, y);
  if (b.size()) y.rowwise() += b.transpose();
}

void linear_forward(const Mat& x, const RawMatrix& w, const Vec& b, Mat& y) {
  if (x.cols() != w.cols) fail<Error>("linear_forward: input has {} columns, the weight {}", x.cols(), w.cols);
  y.resize(x.rows(), w.rows);
  gemm_xwt_stored(x.data(), x.rows(), x.cols(), w.data.get(), w.dtype, w.rows, y.data(), y.cols());
  if (b.size()) y.rowwise() += b.transpose();
}

// linear_forward of layer L's linear `k`, its inputs first quantized as its kernel does (W8A8).
static void layer_linear(const Mat& x, const LayerWeights& L, LinearKind k, Mat& y) {
  const ActInput& a = L.act[static_cast<int>(k)];
  const RawMatrix& raw = L.raw[static_cast<int>(k)];
  const auto run = [&](const Mat& in) {
    if (raw.empty()) return linear_forward(in, L.linear(k), L.b[static_cast<int>(k)], y);
    linear_forward(in, raw, L.b[static_cast<int>(k)], y);
  };
  if (a.kind == ActQuant::none) return run(x);
  Mat xq = x;
  fake_quant_input(xq, a);
  run(xq);
}

void rms_norm(const Mat& x, const Vec& weight, double eps, Mat& out, float offset) {
  out.resize(x.rows(), x.cols());
  const Vec w = offset == 0.0f ? weight : (weight.array() + offset).matrix();
  for (Eigen::Index t = 0; t < x.rows(); ++t) {
    double ss = 0;
    for (Eigen::Index i = 0; i < x.cols(); ++i) ss += static_cast<double>(x(t, i)) * x(t, i);
    const float inv = static_cast<float>(1.0 / std::sqrt(ss / static_cast<double>(x.cols()) + eps));
    out.row(t) = (x.row(t) * inv).cwiseProduct(w.transpose());
  }
}

void apply_norm(const ModelConfig& c, const Mat& x, const Vec& weight, Mat& out) {
  rms_norm(x, weight, c.rms_norm_eps, out, c.norm_offset);
}

namespace {

// Rotates the first 2·cos.cols() dims of each head (all of it unless partial_rotary_factor < 1),
// pairing dim i with i + half (HF's rotate_half); the rest pass through.
void apply_rope(Mat& x, std::int64_t n_heads, std::int64_t head_dim, const Mat& cos, const Mat& sin) {
  const std::int64_t half = cos.cols();
  for (Eigen::Index t = 0; t < x.rows(); ++t) {
    float* row = x.row(t).data();
    const float* c = cos.row(t).data();
    const float* s = sin.row(t).data();
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

// RMSNorm over each head's head_dim slice (Qwen3Attention.q_norm / k_norm), in place.
void head_norm(const ModelConfig& c, Mat& x, std::int64_t n_heads, const Vec& weight) {
  const std::int64_t hd = c.head_dim;
  const Vec w = (weight.array() + c.norm_offset).matrix();
  for (Eigen::Index t = 0; t < x.rows(); ++t) {
    for (std::int64_t h = 0; h < n_heads; ++h) {
      auto seg = x.row(t).segment(h * hd, hd);
      double ss = 0;
      for (std::int64_t i = 0; i < hd; ++i) ss += static_cast<double>(seg(i)) * seg(i);
      const float inv = static_cast<float>(1.0 / std::sqrt(ss / static_cast<double>(hd) + c.rms_norm_eps));
      seg = (seg * inv).cwiseProduct(w.transpose());
    }
  }
}

// Causal grouped-query attention: out [T, n_heads·head_dim]. Query rows go in blocks of
// kQueryBlock against only the keys they can see (half the work of a full T×T product). A
// sliding layer's query at position p sees keys p−W+1..p (transformers' sliding-window causal
// mask, llama.cpp's n_swa); Gemma 2 soft-caps the scaled scores before the mask.
constexpr Eigen::Index kQueryBlock = 64;

void attention(const ModelConfig& c, bool sliding, const Mat& q, const Mat& k, const Mat& v, Mat& out) {
  const Eigen::Index T = q.rows();
  const std::int64_t hd = c.head_dim;
  const std::int64_t group = c.n_heads / c.n_kv_heads;
  const float scale = static_cast<float>(c.attn_scale);
  const float cap = static_cast<float>(c.attn_softcap);
  const Eigen::Index window = sliding ? static_cast<Eigen::Index>(c.sliding_window) : T + 1;
  out.resize(T, c.n_heads * hd);
#pragma omp parallel for schedule(dynamic, 1) if (c.n_heads > 1 && !omp_in_parallel())
  for (std::int64_t h = 0; h < c.n_heads; ++h) {
    const std::int64_t g = h / group;
    Mat scores;
    for (Eigen::Index r0 = 0; r0 < T; r0 += kQueryBlock) {
      const Eigen::Index nq = std::min(kQueryBlock, T - r0), nk = r0 + nq;
      scores.noalias() = (q.block(r0, h * hd, nq, hd) * scale) * k.block(0, g * hd, nk, hd).transpose();
      if (cap > 0) scores = scores.unaryExpr([cap](float x) { return cap * std::tanh(x / cap); });
      for (Eigen::Index i = 0; i < nq; ++i) {
        const Eigen::Index visible = r0 + i + 1;
        const Eigen::Index first = std::max<Eigen::Index>(0, visible - window);
        auto row = scores.row(i).segment(first, visible - first).array();
        row = (row - row.maxCoeff()).exp();
        row /= row.sum();
        scores.row(i).head(first).setZero();
        scores.row(i).tail(nk - visible).setZero();
      }
      out.block(r0, h * hd, nq, hd).noalias() = scores * v.block(0, g * hd, nk, hd);
    }
  }
}

}  // namespace

Mat attention_block(const ModelConfig& c, const LayerWeights& L, const RopeTable& rope, const Mat& x) {
  if (x.rows() > rope.positions()) {
    fail<Error>("attention_block: {} tokens but rope table has {} positions", x.rows(), rope.cos.rows());
  }
  Mat q, k, v, attn;
  layer_linear(x, L, LinearKind::q, q);
  layer_linear(x, L, LinearKind::k, k);
  layer_linear(x, L, LinearKind::v, v);
  if (c.qk_norm) {
    head_norm(c, q, c.n_heads, L.q_norm);
    head_norm(c, k, c.n_kv_heads, L.k_norm);
  }
  const bool sliding = c.is_sliding(L.index);
  const bool local = sliding && rope.cos_local.size() > 0;
  const Mat& cos = local ? rope.cos_local : rope.cos;
  const Mat& sin = local ? rope.sin_local : rope.sin;
  apply_rope(q, c.n_heads, c.head_dim, cos, sin);
  apply_rope(k, c.n_kv_heads, c.head_dim, cos, sin);
  attention(c, sliding, q, k, v, attn);
  return attn;
}

Mat mlp_activation(const ModelConfig& c, const LayerWeights& L, const Mat& x) {
  Mat gate, up;
  layer_linear(x, L, LinearKind::gate, gate);
  layer_linear(x, L, LinearKind::up, up);
  if (c.gelu_tanh) {  // gelu_pytorch_tanh(gate) ⊙ up (Gemma)
    constexpr float kC = 0.7978845608028654f;  // sqrt(2/π)
    return gate.unaryExpr([](float g) { return 0.5f * g * (1.0f + std::tanh(kC * (g + 0.044715f * g * g * g))); })
        .cwiseProduct(up);
  }
  // SwiGLU: silu(gate) ⊙ up
  return gate.unaryExpr([](float g) { return g / (1.0f + std::exp(-g)); }).cwiseProduct(up);
}

void add_block_output(const ModelConfig& c, const Mat& x, const LayerWeights& L, LinearKind kind, Mat& h) {
  Mat y;
  layer_linear(x, L, kind, y);
  const Vec& post = kind == LinearKind::o ? L.post_attn_norm : L.post_mlp_norm;
  if (post.size()) {
    Mat normed;
    apply_norm(c, y, post, normed);
    h += normed;
  } else {
    h += y;
  }
}

void decoder_layer_forward(const ModelConfig& c, const LayerWeights& L, const RopeTable& rope,
                           Mat& h, const LinearInputHook* hook) {
  Mat x;
  apply_norm(c, h, L.attn_norm, x);
  if (hook) (*hook)(CapturePoint::attn_in, x);
  const Mat attn = attention_block(c, L, rope, x);
  if (hook) (*hook)(CapturePoint::o_in, attn);
  add_block_output(c, attn, L, LinearKind::o, h);
  apply_norm(c, h, L.mlp_norm, x);
  if (hook) (*hook)(CapturePoint::mlp_in, x);
  if (L.moe()) {  // a sparse layer's experts see only their tokens: no down_in for the hook
    h += moe_block(c, L, x);
    return;
  }
  const Mat act = mlp_activation(c, L, x);
  if (hook) (*hook)(CapturePoint::down_in, act);
  add_block_output(c, act, L, LinearKind::down, h);
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
  const std::int64_t vocab = head.vocab(), hidden = head.hidden();
  Mat h(static_cast<Eigen::Index>(tokens.size()), hidden);
  for (std::size_t t = 0; t < tokens.size(); ++t) {
    if (tokens[t] < 0 || tokens[t] >= vocab) fail("token id {} at position {} is outside the vocabulary (size {})", tokens[t], t, vocab);
    if (head.embed_raw.empty()) {
      h.row(static_cast<Eigen::Index>(t)) = head.embed.row(tokens[t]);
    } else {
      const RawMatrix& e = head.embed_raw;
      convert_span_to_f32(e.dtype, e.data.get() + static_cast<std::size_t>(tokens[t] * hidden) * dtype_size(e.dtype),
                          static_cast<std::size_t>(hidden), h.row(static_cast<Eigen::Index>(t)).data());
    }
  }
  if (head.embed_scale != 1.0f) h *= head.embed_scale;
  return h;
}

Mat final_logits(const ModelConfig& c, const HeadWeights& head, const Mat& h) {
  Mat x, logits;
  apply_norm(c, h, head.final_norm, x);
  if (!head.lm_head_raw.empty()) {
    linear_forward(x, head.lm_head_raw, Vec(), logits);
  } else if (head.lm_head.size() == 0 && !head.embed_raw.empty()) {  // tied
    linear_forward(x, head.embed_raw, Vec(), logits);
  } else {
    linear_forward(x, head.head(), Vec(), logits);
  }
  if (c.final_softcap > 0) {  // Gemma2ForCausalLM: logits / cap → tanh → × cap
    const float cap = static_cast<float>(c.final_softcap);
    logits = logits.unaryExpr([cap](float v) { return cap * std::tanh(v / cap); });
  }
  return logits;
}

std::size_t layer_f32_bytes(const ModelConfig& c) {
  // The largest layer: a sparse one holds every expert (and the router), a dense one its MLP.
  const std::int64_t mlp = c.is_moe() ? (c.moe.n_experts * c.moe.expert_ffn + c.moe.shared_ffn) * 3 * c.hidden_size + (c.moe.n_experts + 1) * c.hidden_size
                                      : 3 * c.intermediate_size * c.hidden_size;
  const std::int64_t dense = c.is_moe() ? 3 * c.intermediate_size * c.hidden_size : 0;
  return static_cast<std::size_t>((c.n_heads + 2 * c.n_kv_heads) * c.head_dim * c.hidden_size + c.n_heads * c.head_dim * c.hidden_size +
                                  std::max(mlp, dense)) *
         sizeof(float);
}

LayerCache::LayerCache(const Model& model, std::size_t budget_bytes) : model_(model) {
  const auto& c = model.config();
  keep_all_ = layer_f32_bytes(c) * static_cast<std::size_t>(c.n_layers) <= budget_bytes;
  if (keep_all_) layers_.resize(static_cast<std::size_t>(c.n_layers));
}

LayerCache::~LayerCache() {
  if (next_.valid()) next_.wait();  // the background read uses model_; an error in it no longer matters
}

const LayerWeights& LayerCache::get(int layer) {
  const int n = static_cast<int>(model_.config().n_layers);
  if (layer < 0 || layer >= n) fail<Error>("LayerCache: layer {} of {}", layer, n);
  if (keep_all_) {
    auto& slot = layers_[static_cast<std::size_t>(layer)];
    if (!slot) slot = std::make_unique<LayerWeights>(load_layer_stored(model_, layer, nullptr));
    return *slot;
  }
  if (current_layer_ == layer) return *current_;
  std::unique_ptr<LayerWeights> spare = std::move(current_);  // its buffers take the layer after this one
  current_layer_ = -1;
  if (next_.valid() && next_layer_ == layer) {
    current_ = next_.get();
  } else {
    if (next_.valid()) next_.wait();
    next_ = {};
    current_ = std::make_unique<LayerWeights>(load_layer(model_, layer));
  }
  current_layer_ = layer;
  next_layer_ = (layer + 1) % n;
  const Model* m = &model_;
  const int l = next_layer_;
  next_ = std::async(std::launch::async, [m, l, spare = std::move(spare)]() mutable {
    return std::make_unique<LayerWeights>(load_layer_stored(*m, l, spare.get()));
  });
  return *current_;
}

}  // namespace quant
