// Perplexity and KL-divergence evaluation of a model on a token stream.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "quant/io/io.h"
#include "quant/model/forward.h"
#include "quant/model/model.h"

namespace quant {

enum class EvalProtocol {
  // GPTQ/AWQ papers: non-overlapping windows of ctx tokens over the whole stream (BOS once at
  // its start, if the tokenizer adds one); every token after the first of each window is
  // scored; the tail shorter than a window is dropped.
  gptq,
  // llama.cpp perplexity: windows of ctx tokens whose first token is replaced by BOS; only
  // the second half of each window is scored (tokens ctx/2+1 .. ctx-1).
  llamacpp,
};

// A base model's distribution at one scored position, compressed to its k most likely tokens
// (descending) and the exact log-probability of the target token.
struct TopK {
  float target_logp = 0;
  std::vector<std::int32_t> ids;
  std::vector<float> logp;
};

// `quant eval BASE --save-logits FILE`: the base's top-k log-probabilities at every scored
// position, with what they were computed on (header: base model and text hashes, protocol, ctx,
// windows, vocabulary, k). File: "QKLBASE1", u64 header length, the JSON header, then per
// position f32 target log-prob, k × i32 ids, k × f32 log-probs (little-endian).
struct BaseLogits {
  nlohmann::json header;
  int k = 0;
  std::vector<TopK> positions;  // window-major, in scoring order
  void save(const fs::path& path, const OutputPolicy& policy) const;
  static BaseLogits load(const fs::path& path);
};

struct EvalOptions {
  EvalProtocol protocol = EvalProtocol::gptq;
  std::int64_t ctx = 0;          // 0: min(2048, model context) for gptq, 512 for llamacpp
  std::int64_t max_windows = 0;  // 0: all
  std::int32_t bos_id = -1;      // llamacpp protocol: BOS placed at each window's start
  std::size_t windows_per_batch = 0;  // 0: automatic
  // Decoder layers stay resident when they all fit in this many bytes (as float32), else stream
  // (LayerCache): eval then holds about the checkpoint's head plus two layers, F16/BF16 as stored.
  std::size_t resident_layers_budget = kResidentLayersBudget;
  int save_topk = 0;                  // > 0: keep the evaluated model's top-k at each position (EvalResult::topk)
  const BaseLogits* base_logits = nullptr;  // compare against these instead of a base model
};

struct EvalResult {
  double ppl = 0;
  double nll = 0;  // mean negative log-likelihood per scored token (nats)
  std::int64_t tokens_scored = 0;
  std::int64_t windows = 0;
  std::int64_t ctx = 0;
  double seconds = 0;
  double tokens_per_second = 0;  // tokens processed (windows × ctx) per second
  // Against a base model (when given):
  bool has_base = false;
  double base_ppl = 0;
  double kl_mean = 0;  // mean KL(base ‖ model) per scored token, nats
  double kl_p99 = 0;
  double top1_agreement = 0;  // fraction of scored positions whose argmax matches
  // Uncertainties, as llama-perplexity computes them (examples/perplexity/perplexity.cpp): the
  // standard error of a mean over the N scored tokens, sqrt((mean x² − mean²)/(N − 1)).
  double ppl_stderr = 0;       // ppl · stderr(nll)
  double base_ppl_stderr = 0;
  double kl_stderr = 0;
  double kl_median = 0, kl_p90 = 0, kl_max = 0;
  double top1_stderr = 0;      // sqrt(p(1 − p)/(N − 1))
  // ln(ppl/base_ppl) is the mean per-token NLL difference; its standard error comes from the
  // per-token differences (the two models are scored on the same tokens, so they correlate).
  double log_ppl_ratio = 0;
  double log_ppl_ratio_stderr = 0;
  std::vector<TopK> topk;  // with EvalOptions::save_topk
};

using ProgressFn = std::function<void(std::int64_t done, std::int64_t total)>;

// Evaluates `model` (and optionally `base` on the same windows). Throws InputError when the
// token stream is shorter than one window or ctx exceeds a model's context.
// The window length evaluate() uses for `model` under `options`.
std::int64_t eval_window(const ModelConfig& config, const EvalOptions& options);

// Peak memory evaluate() needs for `model` with windows of `ctx` tokens on `threads` threads:
// the head (embedding, output) as float32, the decoder layers (all of them when they fit
// `resident_layers_budget`, else two streamed ones), a batch's hidden states (≤ 512 MB) and
// each thread's layer intermediates and window logits.
std::uint64_t eval_memory_estimate(const Model& model, std::int64_t ctx, int threads,
                                   std::size_t resident_layers_budget = kResidentLayersBudget);

EvalResult evaluate(const Model& model, const std::vector<std::int32_t>& tokens,
                    const EvalOptions& options, const Model* base = nullptr,
                    const ProgressFn& progress = {});

std::string protocol_name(EvalProtocol p);

}  // namespace quant
