#include "quant/pipeline/eval.h"

#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>

#include "quant/core/error.h"
#include "quant/io/io.h"
#include "quant/model/forward.h"

namespace quant {

std::string protocol_name(EvalProtocol p) { return p == EvalProtocol::gptq ? "gptq" : "llamacpp"; }

namespace {

struct Window {
  std::vector<std::int32_t> tokens;
  std::int64_t first_scored = 0;  // logits at positions [first_scored, ctx-2] are scored
};

struct WindowStats {
  double nll = 0;
  double nll2 = 0;   // Σ nll² over the window's scored tokens
  double bnll2 = 0;  // the base's
  double d = 0;      // Σ (nll − base nll)
  double d2 = 0;     // Σ (nll − base nll)²
  double kl = 0;
  std::int64_t top1 = 0;
  std::vector<double> kl_tokens;
};

// Runs the decoder stack over a batch of windows; returns the final hidden states.
std::vector<Mat> run_layers(const Model& model, const HeadWeights& head, LayerCache& cache,
                            const RopeTable& rope, const std::vector<Window>& windows,
                            std::size_t begin, std::size_t end) {
  std::vector<Mat> hs;
  for (std::size_t w = begin; w < end; ++w) hs.push_back(embed_tokens(head, windows[w].tokens));
  for (int l = 0; l < model.config().n_layers; ++l) {
    decoder_layer_forward_batch(model.config(), cache.get(l), rope, hs);
  }
  return hs;
}

// Row-wise log-softmax of one logits row, in double.
void log_softmax(const float* row, Eigen::Index n, std::vector<double>& out) {
  out.resize(static_cast<std::size_t>(n));
  double mx = -INFINITY;
  for (Eigen::Index i = 0; i < n; ++i) mx = std::max(mx, static_cast<double>(row[i]));
  double sum = 0;
  for (Eigen::Index i = 0; i < n; ++i) sum += std::exp(row[i] - mx);
  const double lse = mx + std::log(sum);
  for (Eigen::Index i = 0; i < n; ++i) out[static_cast<std::size_t>(i)] = row[i] - lse;
}

// sqrt((mean x² − mean²)/(n − 1)) from Σx and Σx² (llama-perplexity's uncertainty).
double stderr_of_mean(double sum, double sum2, double n) {
  if (n < 2) return 0.0;
  const double mean = sum / n;
  const double var = sum2 / n - mean * mean;
  return var > 0 ? std::sqrt(var / (n - 1)) : 0.0;
}

// The k most likely tokens of one position (descending; ties by id) and the target's log-prob.
TopK top_k(const std::vector<double>& lp, std::int32_t target, int k) {
  std::vector<std::int32_t> idx(lp.size());
  for (std::size_t i = 0; i < idx.size(); ++i) idx[i] = static_cast<std::int32_t>(i);
  const auto kk = std::min<std::size_t>(static_cast<std::size_t>(k), idx.size());
  std::partial_sort(idx.begin(), idx.begin() + static_cast<std::ptrdiff_t>(kk), idx.end(), [&](std::int32_t a, std::int32_t b) {
    return lp[static_cast<std::size_t>(a)] > lp[static_cast<std::size_t>(b)] || (lp[static_cast<std::size_t>(a)] == lp[static_cast<std::size_t>(b)] && a < b);
  });
  TopK t;
  t.target_logp = static_cast<float>(lp[static_cast<std::size_t>(target)]);
  for (std::size_t i = 0; i < kk; ++i) {
    t.ids.push_back(idx[i]);
    t.logp.push_back(static_cast<float>(lp[static_cast<std::size_t>(idx[i])]));
  }
  return t;
}

// KL(base ‖ model) from the base's top k: the k terms exactly, the rest of the base's mass as one
// bucket against the rest of the model's (by the log-sum inequality a lower bound of the full
// KL, equal to it when k covers the vocabulary).
double topk_kl(const TopK& b, const std::vector<double>& lp) {
  double kl = 0, pb_top = 0, pq_top = 0;
  for (std::size_t j = 0; j < b.ids.size(); ++j) {
    const double lb = b.logp[j], pb = std::exp(lb);
    const double lq = lp[static_cast<std::size_t>(b.ids[j])];
    kl += pb * (lb - lq);
    pb_top += pb;
    pq_top += std::exp(lq);
  }
  const double rb = 1.0 - pb_top, rq = std::max(1.0 - pq_top, 1e-30);
  if (rb > 1e-12) kl += rb * (std::log(rb) - std::log(rq));
  return kl;
}

void check_base_logits(const BaseLogits& b, std::int64_t positions, std::int64_t vocab) {
  if (static_cast<std::int64_t>(b.positions.size()) != positions) {
    fail("--base-logits holds {} positions but this evaluation scores {} (different text, ctx or windows)", b.positions.size(), positions);
  }
  if (b.header.value("vocab_size", std::int64_t{0}) != vocab) {
    fail("--base-logits is for a vocabulary of {}, this model has {}", b.header.value("vocab_size", std::int64_t{0}), vocab);
  }
}

// The q-quantile of sorted values: the smallest value with at least q of them at or below it.
double quantile(const std::vector<double>& sorted, double q) {
  const std::size_t k = static_cast<std::size_t>(std::ceil(q * static_cast<double>(sorted.size())));
  return sorted[std::clamp<std::size_t>(k, 1, sorted.size()) - 1];
}

}  // namespace

std::int64_t eval_window(const ModelConfig& c, const EvalOptions& opt) {
  return opt.ctx != 0 ? opt.ctx : std::min<std::int64_t>(opt.protocol == EvalProtocol::gptq ? 2048 : 512, c.max_position_embeddings);
}

std::uint64_t eval_memory_estimate(const Model& model, std::int64_t ctx, int threads, std::size_t resident_layers_budget) {
  const ModelConfig& c = model.config();
  const double layer = static_cast<double>(layer_f32_bytes(c)), L = static_cast<double>(c.n_layers);
  const double layers = layer * L <= static_cast<double>(resident_layers_budget) ? layer * L : 2 * layer;
  double head = 0;
  for (const auto& name : model.store().names()) {
    if (name.find(".layers.") == std::string::npos) head += static_cast<double>(model.store().get(name).numel()) * 4;
  }
  const double T = static_cast<double>(ctx), H = static_cast<double>(c.hidden_size), I = static_cast<double>(c.intermediate_size);
  const double hidden = std::min(512.0 * (1 << 20), 64 * T * H * 4);
  const double per_thread = T * (3 * I + 6 * H) * 4 + T * static_cast<double>(c.vocab_size) * 4 * 2;
  return static_cast<std::uint64_t>(head + layers + hidden + std::max(1, threads) * per_thread + 64e6);
}

EvalResult evaluate(const Model& model, const std::vector<std::int32_t>& tokens,
                    const EvalOptions& opt, const Model* base, const ProgressFn& progress) {
  const auto& c = model.config();
  const std::int64_t ctx = eval_window(c, opt);
  if (ctx < 2) fail<UsageError>("--ctx must be at least 2, got {}", ctx);
  for (const Model* m : {&model, base}) {
    if (m && ctx > m->config().max_position_embeddings) {
      fail<UsageError>("window of {} tokens is larger than the context of {} ({} tokens)", ctx,
                       m->dir().string(), m->config().max_position_embeddings);
    }
  }
  if (base && base->config().vocab_size != c.vocab_size) {
    fail("{}: vocabulary size {} differs from the base model's {}", model.dir().string(), c.vocab_size,
         base->config().vocab_size);
  }
  if (tokens.empty()) fail("the evaluation text is empty (0 tokens)");
  std::int64_t n_windows = static_cast<std::int64_t>(tokens.size()) / ctx;
  if (n_windows == 0) {
    fail("the evaluation text has {} tokens, shorter than one window of {} (lower --ctx)", tokens.size(), ctx);
  }
  if (opt.max_windows > 0) n_windows = std::min(n_windows, opt.max_windows);

  std::vector<Window> windows(static_cast<std::size_t>(n_windows));
  for (std::int64_t w = 0; w < n_windows; ++w) {
    auto& win = windows[static_cast<std::size_t>(w)];
    win.tokens.assign(tokens.begin() + w * ctx, tokens.begin() + (w + 1) * ctx);
    if (opt.protocol == EvalProtocol::llamacpp) {
      if (opt.bos_id >= 0) win.tokens[0] = opt.bos_id;
      win.first_scored = ctx / 2;
    }
  }

  const auto t0 = std::chrono::steady_clock::now();
  const HeadWeights head = load_head(model, true);
  std::optional<HeadWeights> base_head;
  if (base) base_head = load_head(*base, true);
  LayerCache cache(model, opt.resident_layers_budget);
  std::optional<LayerCache> base_cache;
  if (base) base_cache.emplace(*base, opt.resident_layers_budget);
  const RopeTable rope = build_rope(c, ctx);
  std::optional<RopeTable> base_rope;
  if (base) base_rope = build_rope(base->config(), ctx);

  std::size_t batch = opt.windows_per_batch;
  if (batch == 0) {
    const std::size_t per_window = static_cast<std::size_t>(ctx * c.hidden_size) * sizeof(float) * (base ? 2 : 1);
    batch = std::clamp<std::size_t>((std::size_t{512} << 20) / per_window, 1, 64);
  }
  const std::int64_t per_window = ctx - 1 - windows[0].first_scored;  // scored positions per window
  const BaseLogits* stored = opt.base_logits;
  if (stored) check_base_logits(*stored, n_windows * per_window, c.vocab_size);
  std::vector<TopK> saved(opt.save_topk > 0 ? static_cast<std::size_t>(n_windows * per_window) : 0);
  std::vector<WindowStats> stats(windows.size());
  std::vector<double> base_nll(windows.size(), 0.0);
  for (std::size_t b0 = 0; b0 < windows.size(); b0 += batch) {
    check_interrupted();
    const std::size_t b1 = std::min(windows.size(), b0 + batch);
    std::vector<Mat> hs = run_layers(model, head, cache, rope, windows, b0, b1);
    std::vector<Mat> hb;
    if (base) hb = run_layers(*base, *base_head, *base_cache, *base_rope, windows, b0, b1);
#pragma omp parallel for schedule(dynamic, 1)
    for (std::size_t w = b0; w < b1; ++w) {
      const Window& win = windows[w];
      const Mat logits = final_logits(c, head, hs[w - b0]);
      Mat blogits;
      if (base) blogits = final_logits(base->config(), *base_head, hb[w - b0]);
      WindowStats& st = stats[w];
      std::vector<double> lp, blp;
      for (std::int64_t p = win.first_scored; p + 1 < ctx; ++p) {
        const std::int32_t target = win.tokens[static_cast<std::size_t>(p + 1)];
        log_softmax(logits.row(p).data(), logits.cols(), lp);
        const double tok_nll = -lp[static_cast<std::size_t>(target)];
        st.nll += tok_nll;
        st.nll2 += tok_nll * tok_nll;
        const std::size_t pos = w * static_cast<std::size_t>(per_window) + static_cast<std::size_t>(p - win.first_scored);
        if (opt.save_topk > 0) saved[pos] = top_k(lp, target, opt.save_topk);
        if (!base && !stored) continue;
        double tok_bnll = 0, kl = 0;
        bool same_top1 = false;
        const auto am = std::max_element(lp.begin(), lp.end()) - lp.begin();
        if (base) {
          log_softmax(blogits.row(p).data(), blogits.cols(), blp);
          tok_bnll = -blp[static_cast<std::size_t>(target)];
          for (std::size_t i = 0; i < lp.size(); ++i) kl += std::exp(blp[i]) * (blp[i] - lp[i]);
          same_top1 = am == std::max_element(blp.begin(), blp.end()) - blp.begin();
        } else {
          const TopK& b = stored->positions[pos];
          tok_bnll = -static_cast<double>(b.target_logp);
          kl = topk_kl(b, lp);
          same_top1 = am == b.ids[0];
        }
        base_nll[w] += tok_bnll;
        st.bnll2 += tok_bnll * tok_bnll;
        st.d += tok_nll - tok_bnll;
        st.d2 += (tok_nll - tok_bnll) * (tok_nll - tok_bnll);
        st.kl += kl;
        st.kl_tokens.push_back(kl);
        st.top1 += same_top1;
      }
    }
    if (progress) progress(static_cast<std::int64_t>(b1), n_windows);
  }

  EvalResult r;
  r.ctx = ctx;
  r.windows = n_windows;
  r.tokens_scored = n_windows * (ctx - 1 - windows[0].first_scored);
  double nll = 0, kl = 0, bnll = 0, nll2 = 0, bnll2 = 0, d = 0, d2 = 0;
  std::int64_t top1 = 0;
  std::vector<double> kls;
  for (std::size_t w = 0; w < stats.size(); ++w) {
    nll += stats[w].nll;
    nll2 += stats[w].nll2;
    bnll2 += stats[w].bnll2;
    d += stats[w].d;
    d2 += stats[w].d2;
    kl += stats[w].kl;
    bnll += base_nll[w];
    top1 += stats[w].top1;
    kls.insert(kls.end(), stats[w].kl_tokens.begin(), stats[w].kl_tokens.end());
  }
  const double n = static_cast<double>(r.tokens_scored);
  r.nll = nll / n;
  r.ppl = std::exp(r.nll);
  r.ppl_stderr = r.ppl * stderr_of_mean(nll, nll2, n);
  r.topk = std::move(saved);
  if (base || stored) {
    r.has_base = true;
    r.base_ppl = std::exp(bnll / n);
    r.base_ppl_stderr = r.base_ppl * stderr_of_mean(bnll, bnll2, n);
    r.kl_mean = kl / n;
    double kl2 = 0;
    for (double v : kls) kl2 += v * v;
    r.kl_stderr = stderr_of_mean(kl, kl2, n);
    r.top1_agreement = static_cast<double>(top1) / n;
    r.top1_stderr = n > 1 ? std::sqrt(r.top1_agreement * (1.0 - r.top1_agreement) / (n - 1)) : 0.0;
    r.log_ppl_ratio = d / n;
    r.log_ppl_ratio_stderr = stderr_of_mean(d, d2, n);
    std::sort(kls.begin(), kls.end());
    r.kl_median = quantile(kls, 0.5);
    r.kl_p90 = quantile(kls, 0.9);
    r.kl_p99 = quantile(kls, 0.99);
    r.kl_max = kls.back();
  }
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  r.tokens_per_second = static_cast<double>(n_windows * ctx) * (base ? 2 : 1) / r.seconds;
  return r;
}

}  // namespace quant
