// quant eval MODEL --text FILE: perplexity (GPTQ-paper or llama.cpp protocol), KL divergence
// against a base model, and regression gates for CI.
#include <fmt/format.h>
#include <omp.h>

#include <cmath>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>

#include "commands.h"
#include "eval_cli.h"
#include "exit_codes.h"
#include "progress.h"
#include "quant/formats/codec.h"
#include "quant/core/error.h"
#include "quant/pipeline/eval.h"
#include "quant/io/hash.h"
#include "quant/pipeline/eval_presets.h"
#include "quantize_common.h"
#include "quant/io/io.h"
#include "quant/core/log.h"
#include "quant/model/tokenizer.h"

namespace quant::cli {
namespace {
// Which activation quantization the forward pass simulates ("none", or e.g. "int8 dynamic
// per-token on 35 of 35 linears"), as the checkpoint's compressed-tensors config declares it.
std::string activation_quant_summary(const Model& model) {
  std::map<std::string, int> n;
  int total = 0;
  for (const LinearDesc* l : model.linears()) {
    if (l->layer < 0) continue;
    ++total;
    ++n[model.act_quant(*l).label()];
  }
  std::string out;
  for (const auto& [a, count] : n) {
    if (a == "none") continue;
    out += fmt::format("{}{} on {} of {} linears", out.empty() ? "" : ", ", a, count, total);
  }
  if (out.empty()) return "none";
  log::info("simulating the checkpoint's activation quantization: {}", out);
  return out;
}

// The checkpoint's first file (a GGUF: the file itself).
std::string model_sha256(const Model& model) {
  const auto& files = model.store().files();
  return sha256_file(files.empty() ? model.store().source() : files.front().path());
}

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
  if (!o.task.empty()) {
    run_task_eval(o);
    return;
  }
  if (o.text.empty() == o.tokens.empty()) fail<UsageError>("pass exactly one of --text FILE or --tokens FILE");
  if (o.max_ppl_increase >= 0 && o.base.empty() && o.base_logits.empty()) fail<UsageError>("--max-ppl-increase needs --base MODEL or --base-logits FILE");
  if (!o.base.empty() && !o.base_logits.empty()) fail<UsageError>("pass --base MODEL or --base-logits FILE, not both");
  if (o.logits_k < 1) fail<UsageError>("--logits-k must be at least 1, got {}", o.logits_k);
  if (!o.save_logits.empty()) {
    check_output(o.save_logits, OutputKind::file, OutputPolicy{o.force, false, {o.model, o.base, o.text, o.tokens, o.tokenizer, o.base_logits}});
  }
  std::optional<BaseLogits> stored;
  if (!o.base_logits.empty()) stored.emplace(BaseLogits::load(o.base_logits));
  if (std::isnan(o.max_ppl_increase) || std::isinf(o.max_ppl_increase)) fail<UsageError>("--max-ppl-increase must be a finite percentage, got {}", o.max_ppl_increase);
  if (!(o.max_ppl >= 0) || std::isinf(o.max_ppl)) fail<UsageError>("--max-ppl must be a positive finite number, got {}", o.max_ppl);
  if (!(o.gate_sigmas >= 0) || std::isinf(o.gate_sigmas)) fail<UsageError>("--gate-sigmas must be a finite number ≥ 0, got {}", o.gate_sigmas);
  if (!o.junit.empty()) {  // before any work: never an input, never a foreign file
    check_output(o.junit, OutputKind::file, OutputPolicy{o.force, false, {o.model, o.base, o.text, o.tokens, o.tokenizer}});
  }
  reuse_large_allocations();  // streamed layers reuse the freed one's memory: no fresh page faults per layer
  const Model model = formats::open_model(o.model, true);
  const std::string act_quant = activation_quant_summary(model);
  std::optional<Model> base;
  if (!o.base.empty()) base.emplace(formats::open_model(o.base, true));

  // Memory: the model's (and base's) head and layers, a batch's activations (pipeline/eval.h).
  const std::int64_t ctx = o.ctx > 0 ? o.ctx : std::min<std::int64_t>(2048, model.config().max_position_embeddings);
  std::uint64_t estimate = eval_memory_estimate(model, ctx, omp_get_max_threads());
  if (base) estimate += eval_memory_estimate(*base, ctx, omp_get_max_threads());
  check_memory_estimate(estimate, "evaluating " + o.model + (base ? " against " + o.base : std::string()), !o.no_memory_check);

  EvalOptions opt;
  if (o.protocol == "gptq") opt.protocol = EvalProtocol::gptq;
  else if (o.protocol == "llamacpp") opt.protocol = EvalProtocol::llamacpp;
  else fail<UsageError>("--protocol must be gptq or llamacpp, got '{}'", o.protocol);
  opt.ctx = o.ctx;
  opt.max_windows = o.max_windows;
  if (!o.save_logits.empty()) opt.save_topk = std::min<int>(o.logits_k, static_cast<int>(model.config().vocab_size));

  std::unique_ptr<Tokenizer> tok;
  if (!o.tokenizer.empty()) tok = Tokenizer::load_file(o.tokenizer);
  std::vector<std::int32_t> ids;
  std::string input_hash;
  const EvalPreset preset = o.preset.empty() ? EvalPreset::none : parse_eval_preset(o.preset);
  if (preset != EvalPreset::none) {
    if (o.text.empty()) fail<UsageError>("--preset {} builds its text from --text FILE (docs/cli.md names the file each preset reads)", o.preset);
    if (opt.protocol != EvalProtocol::gptq) fail<UsageError>("--preset {} is the GPTQ papers' protocol; it cannot be combined with --protocol {}", o.preset, o.protocol);
    if (o.limit_bytes > 0) fail<UsageError>("--limit-bytes cannot be combined with --preset (use --max-windows)");
  }
  if (!o.text.empty()) {
    std::string text = read_text_file(o.text, true);
    if (o.limit_bytes > 0 && static_cast<std::size_t>(o.limit_bytes) < text.size()) text.resize(static_cast<std::size_t>(o.limit_bytes));
    if (text.empty()) fail("{}: the evaluation text is empty", o.text);
    input_hash = sha256_hex(text);
    if (!tok) tok = Tokenizer::load(o.model);
    const std::int64_t ctx = eval_window(model.config(), opt);
    if (preset == EvalPreset::c4 || preset == EvalPreset::c4_new) {
      const std::vector<std::string> docs = read_jsonl_texts(text, o.text);
      ids = preset == EvalPreset::c4 ? c4_windows(docs, *tok, ctx) : c4_new_tokens(docs, *tok, ctx);
    } else {
      if (preset != EvalPreset::none) text = preset_text(preset, text);
      ids = encode_needed(*tok, text, o.max_windows > 0 ? o.max_windows * ctx : 0);
    }
    log::info("tokenized {} bytes into {} tokens ({}{})", text.size(), ids.size(), tok->kind(),
              preset == EvalPreset::none ? "" : ", preset " + o.preset);
  } else {
    ids = read_token_ids(o.tokens);
    input_hash = sha256_file(o.tokens);
  }

  opt.bos_id = tok ? tok->bos_id() : static_cast<std::int32_t>(model.config().bos_token_id);

  std::unique_ptr<ProgressBar> pb;
  if (stored) {  // computed on the same text, windows and protocol, or refused
    const auto& h = stored->header;
    const std::int64_t ctx = eval_window(model.config(), opt);
    if (h.value("input_sha256", std::string()) != input_hash) {
      fail("{}: computed on a different text (sha256 {}), this evaluation reads {}", o.base_logits, h.value("input_sha256", std::string("?")), input_hash);
    }
    if (h.value("protocol", std::string()) != protocol_name(opt.protocol) || h.value("ctx", std::int64_t{0}) != ctx) {
      fail("{}: computed with protocol {} and ctx {}, this evaluation uses {} and {}", o.base_logits, h.value("protocol", std::string("?")),
           h.value("ctx", std::int64_t{0}), protocol_name(opt.protocol), ctx);
    }
    opt.base_logits = &*stored;
  }
  const EvalResult r = evaluate(model, ids, opt, base ? &*base : nullptr,
                                [&](std::int64_t done, std::int64_t total) {
                                  if (!pb) pb = std::make_unique<ProgressBar>("eval", total);
                                  pb->update(done);
                                });
  if (pb) pb->finish();
  if (!o.save_logits.empty()) {
    BaseLogits b;
    b.k = opt.save_topk;
    b.header = {{"model", o.model}, {"model_sha256", model_sha256(model)}, {"input_sha256", input_hash},
                {"protocol", protocol_name(opt.protocol)}, {"ctx", r.ctx}, {"windows", r.windows}, {"vocab_size", model.config().vocab_size}};
    b.positions = r.topk;
    b.save(o.save_logits, OutputPolicy{o.force, false, {o.model, o.text, o.tokens, o.tokenizer}});
    log::info("base logits (top {} of {} per position) → {}", b.k, model.config().vocab_size, o.save_logits);
  }

  nlohmann::ordered_json j;
  j["schema"] = "quant.eval/1";
  j["model"] = o.model;
  j["protocol"] = protocol_name(opt.protocol);
  if (preset != EvalPreset::none) j["preset"] = o.preset;
  j["ctx"] = r.ctx;
  j["windows"] = r.windows;
  j["tokens"] = r.tokens_scored;
  j["ppl"] = r.ppl;
  j["ppl_stderr"] = r.ppl_stderr;
  j["nll"] = r.nll;
  j["input_sha256"] = input_hash;
  j["model_sha256"] = model_sha256(model);
  j["activation_quant"] = act_quant;
  j["seconds"] = r.seconds;
  j["tokens_per_s"] = r.tokens_per_second;
  if (r.has_base) {
    j["base"] = stored ? "logits:" + o.base_logits : o.base;
    if (stored) {
      j["base_model_sha256"] = stored->header.value("model_sha256", std::string());
      j["base_logits_k"] = stored->k;
    }
    j["base_ppl"] = r.base_ppl;
    j["base_ppl_stderr"] = r.base_ppl_stderr;
    j["ppl_ratio"] = std::exp(r.log_ppl_ratio);
    j["ppl_ratio_stderr"] = std::exp(r.log_ppl_ratio) * r.log_ppl_ratio_stderr;
    j["kl_mean"] = r.kl_mean;
    j["kl_stderr"] = r.kl_stderr;
    j["kl_median"] = r.kl_median;
    j["kl_p90"] = r.kl_p90;
    j["kl_p99"] = r.kl_p99;
    j["kl_max"] = r.kl_max;
    j["top1_agreement"] = r.top1_agreement;
    j["top1_stderr"] = r.top1_stderr;
  }
  log::info("perplexity {:.4f} ± {:.4f} (nll {:.5f}) over {} tokens in {} windows of {} ({} protocol), {:.1f}s, {:.0f} tok/s",
            r.ppl, r.ppl_stderr, r.nll, r.tokens_scored, r.windows, r.ctx, protocol_name(opt.protocol), r.seconds, r.tokens_per_second);
  if (r.has_base) {
    log::info("base perplexity {:.4f} ± {:.4f}; ppl ratio {:.5f} ± {:.5f}; KL mean {:.6f} ± {:.6f} (median {:.6f}, p90 {:.6f}, "
              "p99 {:.6f}, max {:.6f}); top-1 agreement {:.4f} ± {:.4f}", r.base_ppl, r.base_ppl_stderr, std::exp(r.log_ppl_ratio),
              std::exp(r.log_ppl_ratio) * r.log_ppl_ratio_stderr, r.kl_mean, r.kl_stderr, r.kl_median, r.kl_p90, r.kl_p99,
              r.kl_max, r.top1_agreement, r.top1_stderr);
  }
  std::string gate;
  const bool gated = o.max_ppl > 0 || o.max_ppl_increase >= 0;
  std::string non_finite;
  if (!std::isfinite(r.ppl)) non_finite = fmt::format("perplexity is {}", r.ppl);
  else if (r.has_base && !std::isfinite(r.base_ppl)) non_finite = fmt::format("the base's perplexity is {}", r.base_ppl);
  else if (r.has_base && !std::isfinite(r.kl_mean)) non_finite = fmt::format("KL divergence is {}", r.kl_mean);
  // One entry per gate, for the JSON and JUnit reports: name, failure message (empty: passed).
  GateResults gates;
  if (o.max_ppl > 0) {
    gates.emplace_back("max-ppl", r.ppl > o.max_ppl ? fmt::format("perplexity {:.4f} exceeds --max-ppl {}", r.ppl, o.max_ppl) : "");
  }
  if (o.max_ppl_increase >= 0) {
    // ln(ppl/base) against ln(1 + limit): with --gate-sigmas K the excess must exceed K standard
    // errors of the per-token NLL difference before it fails.
    const double limit = std::log1p(o.max_ppl_increase / 100.0);
    const double se = r.log_ppl_ratio_stderr;
    const double pct = 100.0 * (std::exp(r.log_ppl_ratio) - 1.0), pct_se = 100.0 * std::exp(r.log_ppl_ratio) * se;
    std::string msg;
    if (r.log_ppl_ratio - o.gate_sigmas * se > limit) {
      msg = fmt::format("perplexity {:.4f} is {:.2f}% ± {:.2f}% above the base's {:.4f} (limit {}%{})", r.ppl, pct, pct_se,
                        r.base_ppl, o.max_ppl_increase,
                        o.gate_sigmas > 0 ? fmt::format(", exceeded by more than {} standard errors", o.gate_sigmas) : "");
    } else if (r.log_ppl_ratio > limit) {
      log::warn("perplexity is {:.2f}% ± {:.2f}% above the base's, over the {}% limit but within {} standard errors: passing", pct,
                pct_se, o.max_ppl_increase, o.gate_sigmas);
    }
    gates.emplace_back("max-ppl-increase", msg);
  }
  for (const auto& g : gates) {
    if (!g.second.empty()) gate = g.second;
  }
  if (!non_finite.empty()) {
    j["gate"] = gated ? "fail" : "none";
    j["non_finite"] = non_finite;
  } else {
    j["gate"] = !gated ? "none" : gate.empty() ? "pass" : "fail";
  }
  if (!gates.empty()) {
    nlohmann::ordered_json gj = nlohmann::ordered_json::array();
    for (const auto& [name, msg] : gates) gj.push_back({{"name", name}, {"pass", msg.empty() && non_finite.empty()}, {"message", non_finite.empty() ? msg : non_finite}});
    j["gates"] = gj;
  }
  if (!o.junit.empty()) write_junit(o, gates, non_finite, r);
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
  cmd->add_option("--preset", o->preset, "build the text from --text FILE as the papers' code does: wikitext2 (wiki.test.raw), ptb (ptb.test.txt), c4 or c4-new (C4 validation JSONL)");
  cmd->add_option("--protocol", o->protocol, "gptq (GPTQ/AWQ papers) or llamacpp (llama-perplexity)");
  cmd->add_option("--base", o->base, "base model: also report KL divergence and top-1 agreement against it");
  cmd->add_option("--max-windows", o->max_windows, "evaluate at most this many windows")->check(CLI::PositiveNumber);
  cmd->add_option("--limit-bytes", o->limit_bytes, "use only the first N bytes of --text")->check(CLI::PositiveNumber);
  cmd->add_option("--max-ppl", o->max_ppl, "exit with status 4 if perplexity exceeds this");
  cmd->add_option("--max-ppl-increase", o->max_ppl_increase, "exit with status 4 if perplexity exceeds the base's by more than PCT percent");
  cmd->add_option("--gate-sigmas", o->gate_sigmas, "--max-ppl-increase fails only when the increase exceeds the limit by more than K standard errors (default 0)");
  cmd->add_option("--junit", o->junit, "also write the gates as a JUnit XML report to FILE");
  cmd->add_option("--save-logits", o->save_logits, "write this model's top-k log-probabilities at every scored position to FILE (a cached base)");
  cmd->add_option("--logits-k", o->logits_k, "tokens kept per position by --save-logits (default 1024; see docs/cli.md for the error it adds)");
  cmd->add_option("--base-logits", o->base_logits, "compare against a base saved with --save-logits instead of loading it (KL, top-1, ppl ratio)");
  cmd->add_option("--task", o->task, "zero-shot multiple choice instead of perplexity: hellaswag FILE (llama.cpp's text format) or mc FILE (JSONL)")
      ->expected(2);
  cmd->add_option("--max-tasks", o->max_tasks, "score only the first N tasks")->check(CLI::PositiveNumber);
  cmd->add_option("--task-details", o->task_details, "write each task's tokens and log-likelihoods as JSON to FILE");
  cmd->add_option("--max-acc-drop", o->max_acc_drop, "with --task and --base: exit 4 when acc_norm falls more than POINTS below the base's");
  cmd->add_flag("-f,--force", o->force, "replace an existing --junit/--save-logits/--task-details file that quant wrote");
  cmd->add_flag("--json", o->json, "print the result as JSON on stdout");
  cmd->add_flag("--no-memory-check", o->no_memory_check, "start even when the estimated memory exceeds what is available");
  cmd->callback([o] { run_eval(*o); });
}

}  // namespace quant::cli
