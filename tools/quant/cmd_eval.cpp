// quant eval MODEL --text FILE: perplexity (GPTQ-paper or llama.cpp protocol), KL divergence
// against a base model, and regression gates for CI.
#include <fmt/format.h>

#include <cmath>
#include <iostream>
#include <nlohmann/json.hpp>

#include "commands.h"
#include "exit_codes.h"
#include "progress.h"
#include "quant/formats/codec.h"
#include "quant/core/error.h"
#include "quant/pipeline/eval.h"
#include "quant/io/hash.h"
#include "quant/io/io.h"
#include "quant/core/log.h"
#include "quant/model/tokenizer.h"

namespace quant::cli {
namespace {

struct EvalCliOptions {
  std::string model;
  std::string text;
  std::string tokens;
  std::string tokenizer;
  std::string base;
  std::string protocol = "gptq";
  std::int64_t ctx = 0;
  std::int64_t max_windows = 0;
  std::int64_t limit_bytes = 0;
  double max_ppl = 0;
  double max_ppl_increase = -1;
  bool json = false;
  bool no_memory_check = false;
};

// Tokenizes as much of `text` as `needed` tokens take (all of it when 0): with --max-windows a
// 50 MB text is not tokenized whole. Prefixes end at a line break, and hold 64 tokens more than
// needed, so the tokens used are those of the whole text.
std::vector<std::int32_t> encode_needed(const Tokenizer& tok, const std::string& text, std::int64_t needed) {
  if (needed > 0) {
    needed += 64;
    for (std::size_t bytes = static_cast<std::size_t>(needed) * 8; bytes < text.size(); bytes *= 4) {
      std::size_t cut = text.rfind('\n', bytes);
      if (cut == std::string::npos || cut < bytes / 2) cut = bytes;
      std::vector<std::int32_t> ids = tok.encode_for_model(std::string_view(text).substr(0, cut + 1));
      if (static_cast<std::int64_t>(ids.size()) >= needed) {
        log::info("--max-windows: tokenized the first {} of {} bytes", cut + 1, text.size());
        return ids;
      }
    }
  }
  return tok.encode_for_model(text);
}

void run_eval(const EvalCliOptions& o) {
  if (o.text.empty() == o.tokens.empty()) fail<UsageError>("pass exactly one of --text FILE or --tokens FILE");
  if (o.max_ppl_increase >= 0 && o.base.empty()) fail<UsageError>("--max-ppl-increase needs --base MODEL");
  if (std::isnan(o.max_ppl_increase) || std::isinf(o.max_ppl_increase)) fail<UsageError>("--max-ppl-increase must be a finite percentage, got {}", o.max_ppl_increase);
  if (!(o.max_ppl >= 0) || std::isinf(o.max_ppl)) fail<UsageError>("--max-ppl must be a positive finite number, got {}", o.max_ppl);
  const Model model = formats::open_model(o.model);
  std::optional<Model> base;
  if (!o.base.empty()) base.emplace(formats::open_model(o.base));

  // Memory: the layers held as float32 (model and base) and a window's logits.
  std::uint64_t estimate = 0;
  for (const Model* m : std::initializer_list<const Model*>{&model, base ? &*base : nullptr}) {
    if (!m) continue;
    for (const auto& f : m->store().files()) {
      for (const auto& t : f.tensors()) estimate += t.nbytes / dtype_size(t.dtype) * 4;
    }
  }
  check_memory_estimate(estimate, "evaluating " + o.model + (base ? " against " + o.base : std::string()), !o.no_memory_check);

  EvalOptions opt;
  if (o.protocol == "gptq") opt.protocol = EvalProtocol::gptq;
  else if (o.protocol == "llamacpp") opt.protocol = EvalProtocol::llamacpp;
  else fail<UsageError>("--protocol must be gptq or llamacpp, got '{}'", o.protocol);
  opt.ctx = o.ctx;
  opt.max_windows = o.max_windows;

  std::unique_ptr<Tokenizer> tok;
  if (!o.tokenizer.empty()) tok = Tokenizer::load_file(o.tokenizer);
  std::vector<std::int32_t> ids;
  std::string input_hash;
  if (!o.text.empty()) {
    std::string text = read_text_file(o.text, true);
    if (o.limit_bytes > 0 && static_cast<std::size_t>(o.limit_bytes) < text.size()) text.resize(static_cast<std::size_t>(o.limit_bytes));
    if (text.empty()) fail("{}: the evaluation text is empty", o.text);
    input_hash = sha256_hex(text);
    if (!tok) tok = Tokenizer::load(o.model);
    ids = encode_needed(*tok, text, o.max_windows > 0 ? o.max_windows * eval_window(model.config(), opt) : 0);
    log::info("tokenized {} bytes into {} tokens ({})", text.size(), ids.size(), tok->kind());
  } else {
    ids = read_token_ids(o.tokens);
    input_hash = sha256_file(o.tokens);
  }

  opt.bos_id = tok ? tok->bos_id() : static_cast<std::int32_t>(model.config().bos_token_id);

  std::unique_ptr<ProgressBar> pb;
  const EvalResult r = evaluate(model, ids, opt, base ? &*base : nullptr,
                                [&](std::int64_t done, std::int64_t total) {
                                  if (!pb) pb = std::make_unique<ProgressBar>("eval", total);
                                  pb->update(done);
                                });
  if (pb) pb->finish();

  nlohmann::ordered_json j;
  j["model"] = o.model;
  j["protocol"] = protocol_name(opt.protocol);
  j["ctx"] = r.ctx;
  j["windows"] = r.windows;
  j["tokens"] = r.tokens_scored;
  j["ppl"] = r.ppl;
  j["nll"] = r.nll;
  j["input_sha256"] = input_hash;
  j["model_sha256"] = sha256_file(model.store().files().front().path());
  j["seconds"] = r.seconds;
  j["tokens_per_s"] = r.tokens_per_second;
  if (r.has_base) {
    j["base"] = o.base;
    j["base_ppl"] = r.base_ppl;
    j["kl_mean"] = r.kl_mean;
    j["kl_p99"] = r.kl_p99;
    j["top1_agreement"] = r.top1_agreement;
  }
  log::info("perplexity {:.4f} (nll {:.5f}) over {} tokens in {} windows of {} ({} protocol), {:.1f}s, {:.0f} tok/s",
            r.ppl, r.nll, r.tokens_scored, r.windows, r.ctx, protocol_name(opt.protocol), r.seconds, r.tokens_per_second);
  if (r.has_base) {
    log::info("base perplexity {:.4f}; KL mean {:.6f} p99 {:.6f}; top-1 agreement {:.4f}", r.base_ppl,
              r.kl_mean, r.kl_p99, r.top1_agreement);
  }
  std::string gate;
  const bool gated = o.max_ppl > 0 || o.max_ppl_increase >= 0;
  std::string non_finite;
  if (!std::isfinite(r.ppl)) non_finite = fmt::format("perplexity is {}", r.ppl);
  else if (r.has_base && !std::isfinite(r.base_ppl)) non_finite = fmt::format("the base's perplexity is {}", r.base_ppl);
  else if (r.has_base && !std::isfinite(r.kl_mean)) non_finite = fmt::format("KL divergence is {}", r.kl_mean);
  if (o.max_ppl > 0 && r.ppl > o.max_ppl) gate = fmt::format("perplexity {:.4f} exceeds --max-ppl {}", r.ppl, o.max_ppl);
  if (o.max_ppl_increase >= 0 && r.ppl > r.base_ppl * (1.0 + o.max_ppl_increase / 100.0)) {
    gate = fmt::format("perplexity {:.4f} is {:.2f}% above the base's {:.4f} (limit {}%)", r.ppl,
                       100.0 * (r.ppl / r.base_ppl - 1.0), r.base_ppl, o.max_ppl_increase);
  }
  if (!non_finite.empty()) {
    j["gate"] = gated ? "fail" : "none";
    j["non_finite"] = non_finite;
  } else {
    j["gate"] = !gated ? "none" : gate.empty() ? "pass" : "fail";
  }
  if (o.json) std::cout << j.dump(2) << "\n";
  else fmt::print("ppl {:.4f}\n", r.ppl);
  if (!non_finite.empty()) {
    if (gated) throw NonFiniteMetric(fmt::format("{}: a non-finite metric fails every gate", non_finite));
    log::warn("{}: the model's outputs overflow or are NaN", non_finite);
  }
  if (!gate.empty()) throw RegressionError(gate);
}

}  // namespace

void register_eval(CLI::App& app) {
  auto o = std::make_shared<EvalCliOptions>();
  auto* cmd = app.add_subcommand("eval", "perplexity (and KL divergence against a base model)");
  cmd->add_option("model", o->model, "model directory (original or quantized)")->required();
  cmd->add_option("--text", o->text, "evaluation text file (tokenized with the model's tokenizer)");
  cmd->add_option("--tokens", o->tokens, "pre-tokenized input: token ids separated by whitespace or commas");
  cmd->add_option("--tokenizer", o->tokenizer, "tokenizer file to use instead of the model's (tokenizer.json or tokenizer.model)");
  cmd->add_option("--ctx", o->ctx, "window length in tokens (default: min(2048, model context); llamacpp: 512)")->check(CLI::NonNegativeNumber);
  cmd->add_option("--protocol", o->protocol, "gptq (GPTQ/AWQ papers) or llamacpp (llama-perplexity)");
  cmd->add_option("--base", o->base, "base model: also report KL divergence and top-1 agreement against it");
  cmd->add_option("--max-windows", o->max_windows, "evaluate at most this many windows")->check(CLI::PositiveNumber);
  cmd->add_option("--limit-bytes", o->limit_bytes, "use only the first N bytes of --text")->check(CLI::PositiveNumber);
  cmd->add_option("--max-ppl", o->max_ppl, "exit with status 4 if perplexity exceeds this");
  cmd->add_option("--max-ppl-increase", o->max_ppl_increase, "exit with status 4 if perplexity exceeds the base's by more than PCT percent");
  cmd->add_flag("--json", o->json, "print the result as JSON on stdout");
  cmd->add_flag("--no-memory-check", o->no_memory_check, "start even when the estimated memory exceeds what is available");
  cmd->callback([o] { run_eval(*o); });
}

}  // namespace quant::cli
