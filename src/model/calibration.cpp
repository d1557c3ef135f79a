#include "quant/model/calibration.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <random>

#include "quant/core/error.h"
#include "quant/core/gemm.h"
#include "quant/io/io.h"
#include "quant/core/log.h"
#include "quant/model/weights.h"

namespace quant {

std::uint64_t calibration_memory_estimate(const ModelConfig& c, std::int64_t nsamples, std::int64_t seqlen) {
  const double n = static_cast<double>(nsamples), t = static_cast<double>(seqlen);
  const double h = static_cast<double>(c.hidden_size), i = static_cast<double>(c.intermediate_size);
  const double heads = static_cast<double>(c.n_heads);
  const double hidden = 2 * n * t * h * 4;
  const double window = (3 * t * i + t * t * heads + 4 * t * h) * 4;
  const double ffn = c.is_moe() ? static_cast<double>(std::max({c.intermediate_size, c.moe.expert_ffn, c.moe.shared_ffn})) : i;
  const double layer = static_cast<double>(layer_f32_bytes(c)) + std::max(h, ffn) * std::max(h, ffn) * 8;
  return static_cast<std::uint64_t>(hidden + window + layer);
}

std::vector<std::vector<std::int32_t>> load_calibration(const Model& model, const CalibOptions& o,
                                                        const Tokenizer* tokenizer) {
  if (o.nsamples <= 0) fail<UsageError>("--nsamples must be positive, got {}", o.nsamples);
  if (o.seqlen < 2) fail<UsageError>("--seqlen must be at least 2, got {}", o.seqlen);
  const std::int64_t seqlen = std::min(o.seqlen, model.config().max_position_embeddings);
  if (seqlen < o.seqlen) log::info("calibration windows capped at the model context ({} tokens)", seqlen);
  check_memory_estimate(calibration_memory_estimate(model.config(), o.nsamples, seqlen),
                        fmt::format("calibration with --nsamples {} --seqlen {}", o.nsamples, seqlen), o.check_memory);
  std::vector<std::int32_t> ids;
  std::string source;
  if (!o.tokens.empty()) {
    ids = read_token_ids(o.tokens);
    source = o.tokens.string();
  } else {
    if (!tokenizer) fail<UsageError>("calibration text needs a tokenizer");
    const std::string text = read_text_file(o.text);
    if (text.empty()) fail("{}: the calibration text is empty", o.text.string());
    ids = tokenizer->encode(text);
    source = o.text.string();
  }
  for (std::size_t i = 0; i < ids.size(); ++i) {
    if (ids[i] < 0 || ids[i] >= model.config().vocab_size) {
      fail("{}: token id {} at position {} is outside the vocabulary (size {})", source, ids[i], i, model.config().vocab_size);
    }
  }
  if (static_cast<std::int64_t>(ids.size()) < seqlen) {
    fail("{}: {} tokens, shorter than one calibration window of {} (lower --seqlen)", source, ids.size(), seqlen);
  }
  // Random windows (GPTQ's sampling) while the text holds nsamples·seqlen tokens; a shorter text
  // is cut into its disjoint windows instead, so no token is drawn twice.
  const auto n_tokens = static_cast<std::int64_t>(ids.size());
  const std::int64_t fit = n_tokens / seqlen;
  std::vector<std::vector<std::int32_t>> samples;
  if (o.nsamples > fit) {
    log::warn("{}: {} tokens fill only {} windows of {} without repeating; using those {} disjoint windows instead of --nsamples {}",
              source, n_tokens, fit, seqlen, fit, o.nsamples);
    for (std::int64_t s = 0; s < fit; ++s) samples.emplace_back(ids.begin() + s * seqlen, ids.begin() + (s + 1) * seqlen);
  } else {
    std::mt19937_64 rng(o.seed);
    std::uniform_int_distribution<std::int64_t> start(0, n_tokens - seqlen);
    for (std::int64_t s = 0; s < o.nsamples; ++s) {
      const std::int64_t b = start(rng);
      samples.emplace_back(ids.begin() + b, ids.begin() + b + seqlen);
    }
  }
  if (o.bos_first && tokenizer && tokenizer->bos_id() >= 0) {
    for (auto& w : samples) w[0] = tokenizer->bos_id();
  }
  log::info("calibration: {} windows of {} tokens ({} tokens) from {} ({} tokens)", samples.size(), seqlen,
            static_cast<std::int64_t>(samples.size()) * seqlen, source, n_tokens);
  return samples;
}

LayerRunner::LayerRunner(const Model& model, const std::vector<std::vector<std::int32_t>>& samples) : model_(model) {
  if (samples.empty()) fail<Error>("LayerRunner: no calibration samples");
  std::size_t longest = 0;
  for (const auto& s : samples) longest = std::max(longest, s.size());
  rope_ = build_rope(model.config(), static_cast<std::int64_t>(longest));
  HeadWeights head;
  head.embed = load_matrix(model, model.layout().embed);
  head.embed_scale = model.config().embed_scale;
  for (const auto& s : samples) hidden_.push_back(embed_tokens(head, s));
}

void LayerRunner::set_hidden(std::vector<Mat> hidden, int layer) {
  if (hidden.size() != hidden_.size()) fail<Error>("LayerRunner: {} hidden states for {} samples", hidden.size(), hidden_.size());
  hidden_ = std::move(hidden);
  layer_ = layer;
  stage_ = -1;
  act_.clear();
  h_mid_.clear();
}

void LayerRunner::check_finite(const std::vector<Mat>& xs, int stage, bool layer_input) const {
  constexpr float kLimit = 1e18f;  // sqrt(FLT_MAX / 10^5): a norm's sum of squares still fits
  int bad = 0;
  for (const Mat& x : xs) {
    const float* p = x.data();
    const Eigen::Index n = x.size();
#pragma omp simd reduction(| : bad)
    for (Eigen::Index i = 0; i < n; ++i) bad |= !(std::fabs(p[i]) <= kLimit);  // NaN too
  }
  if (!bad) return;
  using K = LinearKind;
  static const std::vector<std::vector<K>> readers = {{K::q, K::k, K::v}, {K::o}, {K::gate, K::up}, {K::down}};
  std::string names;
  const auto& layers = model_.layout().layers;
  if (layer_ < static_cast<int>(layers.size()) && stage >= 2 && layers[static_cast<std::size_t>(layer_)].moe) {
    names = fmt::format("the router and experts of model.layers.{}", layer_);
  } else if (layer_ < static_cast<int>(layers.size())) {
    for (K k : readers[static_cast<std::size_t>(stage)]) names += (names.empty() ? "" : ", ") + layers[static_cast<std::size_t>(layer_)].linear(k).prefix;
  }
  if (layer_input) {
    fail("layer {}: the hidden states entering the layer (inputs of {}) are not finite or beyond ±1e18: the weights of "
         "the layers before overflow float32", layer_, names);
  }
  fail("layer {}: calibration activations into {} are not finite or beyond ±1e18: the layer's weights before them "
       "overflow float32", layer_, names);
}

void LayerRunner::compute(int stage, const LayerWeights& L) {
  check_interrupted();
  if (stage == 3 && L.moe()) fail<Error>("LayerRunner: layer {} is sparse: its experts' inputs come from the routing, not stage down_in", layer_);
  if (stage == 0) check_finite(hidden_, 0, true);
  const auto& c = model_.config();
  const std::ptrdiff_t n = static_cast<std::ptrdiff_t>(hidden_.size());
  if (stage == 2) h_mid_.resize(hidden_.size());
  std::vector<Mat> next(hidden_.size());
#pragma omp parallel for schedule(dynamic, 1)
  for (std::ptrdiff_t i = 0; i < n; ++i) {
    const auto s = static_cast<std::size_t>(i);
    switch (stage) {
      case 0: apply_norm(c, hidden_[s], L.attn_norm, next[s]); break;
      case 1: next[s] = attention_block(c, L, rope_, act_[s]); break;
      case 2:
        h_mid_[s] = hidden_[s];
        add_block_output(c, act_[s], L, LinearKind::o, h_mid_[s]);
        apply_norm(c, h_mid_[s], L.mlp_norm, next[s]);
        break;
      case 3: next[s] = L.moe() ? Mat() : mlp_activation(c, L, act_[s]); break;
      default: break;
    }
  }
  check_finite(next, stage, false);
  act_ = std::move(next);
  stage_ = stage;
}

const std::vector<Mat>& LayerRunner::stage(CapturePoint p, const LayerWeights& layer) {
  const int want = static_cast<int>(p);
  if (want < stage_) fail<Error>("LayerRunner: stage {} requested after stage {}", want, stage_);
  while (stage_ < want) compute(stage_ + 1, layer);
  return act_;
}

void LayerRunner::finish(const LayerWeights& layer) {
  const bool moe = layer.moe();
  stage(moe ? CapturePoint::mlp_in : CapturePoint::down_in, layer);
  const std::ptrdiff_t n = static_cast<std::ptrdiff_t>(hidden_.size());
#pragma omp parallel for schedule(dynamic, 1)
  for (std::ptrdiff_t i = 0; i < n; ++i) {
    const auto s = static_cast<std::size_t>(i);
    hidden_[s] = std::move(h_mid_[s]);
    if (moe) hidden_[s] += moe_block(model_.config(), layer, act_[s]);
    else add_block_output(model_.config(), act_[s], layer, LinearKind::down, hidden_[s]);
  }
  act_.clear();
  h_mid_.clear();
  stage_ = -1;
  ++layer_;
}

void LayerRunner::finish_with(const LayerWeights& layer, const std::vector<Mat>& mlp_out) {
  stage(CapturePoint::mlp_in, layer);
  if (mlp_out.size() != hidden_.size()) fail<Error>("LayerRunner: {} MLP outputs for {} samples", mlp_out.size(), hidden_.size());
  for (std::size_t s = 0; s < hidden_.size(); ++s) hidden_[s] = h_mid_[s] + mlp_out[s];
  act_.clear();
  h_mid_.clear();
  stage_ = -1;
  ++layer_;
}

void LayerRunner::advance(const LayerWeights& layer) {
  act_.clear();
  h_mid_.clear();
  stage_ = -1;
  if (layer_ < static_cast<int>(model_.layout().layers.size())) check_finite(hidden_, 0, true);
  decoder_layer_forward_batch(model_.config(), layer, rope_, hidden_);
  ++layer_;
}

std::int64_t LayerRunner::n_tokens() const {
  std::int64_t n = 0;
  for (const auto& h : hidden_) n += h.rows();
  return n;
}

namespace {

// H += a·aᵀ for a = [n × T] (input channels × tokens): rows i0 … i0+rb−1 of H against columns
// 0 … i0+rb−1, i.e. the lower triangle and the diagonal blocks' upper part; every entry continues
// its one chain over the tokens.
void accumulate_gram_channels(Mat& H, const Mat& a) {
  constexpr Eigen::Index kBlock = 256;
  const Eigen::Index n = a.rows(), T = a.cols();
  for (Eigen::Index i0 = 0; i0 < n; i0 += kBlock) {
    const Eigen::Index rb = std::min(kBlock, n - i0);
    gemm_xwt(a.data() + i0 * T, rb, T, a.data(), i0 + rb, H.data() + i0 * n, n, /*accumulate=*/true);
  }
}

}  // namespace

void accumulate_gram(Mat& H, const Mat& x) { accumulate_gram_channels(H, x.transpose()); }

void mirror_lower(Mat& H) {
  const Eigen::Index n = H.rows();
  for (Eigen::Index i = 0; i < n; ++i)
    for (Eigen::Index j = i + 1; j < n; ++j) H(i, j) = H(j, i);
}

Mat hessian(const std::vector<Mat>& xs, std::int64_t block) {
  if (xs.empty()) fail<Error>("hessian: no activations");
  const Eigen::Index cols = xs[0].cols();
  Mat H = Mat::Zero(cols, cols);
  std::int64_t n = 0;
  for (const Mat& x : xs) n += x.rows();
  if (block > 0 && block < cols) {
    const Eigen::Index n_blocks = (cols + block - 1) / block;
#pragma omp parallel for schedule(dynamic, 1) if (n_blocks > 1 && !omp_in_parallel())
    for (Eigen::Index b = 0; b < n_blocks; ++b) {
      const Eigen::Index c0 = b * block, cn = std::min<Eigen::Index>(block, cols - c0);
      for (const Mat& x : xs) H.block(c0, c0, cn, cn).noalias() += x.middleCols(c0, cn).transpose() * x.middleCols(c0, cn);
    }
    H *= 2.0f / static_cast<float>(n);
    return H;
  }
  // Windows gathered into chunks of up to 2048 tokens, so that H (up to n² floats) is swept once
  // per chunk rather than once per window; the chains run over the tokens in order either way.
  constexpr Eigen::Index kChunkTokens = 2048;
  Mat a;
  for (std::size_t i = 0; i < xs.size();) {
    std::size_t j = i;
    Eigen::Index t = 0;
    while (j < xs.size() && (t == 0 || t + xs[j].rows() <= kChunkTokens)) t += xs[j++].rows();
    a.resize(cols, t);
    for (Eigen::Index off = 0; i < j; off += xs[i].rows(), ++i) a.middleCols(off, xs[i].rows()) = xs[i].transpose();
    accumulate_gram_channels(H, a);
  }
  mirror_lower(H);
  H *= 2.0f / static_cast<float>(n);
  return H;
}

std::vector<double> sum_square_inputs(const std::vector<Mat>& xs, std::int64_t& rows) {
  const Eigen::Index in = xs.empty() ? 0 : xs[0].cols();
  std::vector<double> acc(static_cast<std::size_t>(in), 0.0);
  rows = 0;
  for (const Mat& x : xs) {
#pragma omp parallel for schedule(static)
    for (Eigen::Index j = 0; j < in; ++j) {
      double s = 0;
      for (Eigen::Index t = 0; t < x.rows(); ++t) s += static_cast<double>(x(t, j)) * x(t, j);
      acc[static_cast<std::size_t>(j)] += s;
    }
    rows += x.rows();
  }
  return acc;
}

std::vector<float> mean_square_inputs(const std::vector<Mat>& xs) {
  std::int64_t n = 0;
  const std::vector<double> acc = sum_square_inputs(xs, n);
  std::vector<float> h(acc.size());
  for (std::size_t j = 0; j < acc.size(); ++j) h[j] = static_cast<float>(acc[j] / static_cast<double>(std::max<std::int64_t>(n, 1)));
  return h;
}

}  // namespace quant
