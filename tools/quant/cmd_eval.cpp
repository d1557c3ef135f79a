// quant eval MODEL --text FILE: perplexity (GPTQ-paper or llama.cpp protocol), KL divergence
// against a base model, and regression gates for CI.
#include <fmt/format.h>

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
};

void run_eval(const EvalCliOptions& o) {
  if (o.text.empty() == o.tokens.empty()) fail<UsageError>("pass exactly one of --text FILE or --tokens FILE");
  if (o.max_ppl_increase >= 0 && o.base.empty()) fail<UsageError>("--max-ppl-increase needs --base MODEL");
  const Model model = formats::open_model(o.model);
  std::optional<Model> base;
  if (!o.base.empty()) base.emplace(formats::open_model(o.base));

  std::unique_ptr<Tokenizer> tok;
  if (!o.tokenizer.empty()) tok = Tokenizer::load_file(o.tokenizer);
  std::vector<std::int32_t> ids;
  std::string input_hash;
  if (!o.text.empty()) {
    std::string text = read_text_file(o.text);
    if (o.limit_bytes > 0 && static_cast<std::size_t>(o.limit_bytes) < text.size()) text.resize(static_cast<std::size_t>(o.limit_bytes));
    if (text.empty()) fail("{}: the evaluation text is empty", o.text);
    input_hash = sha256_hex(text);
    if (!tok) tok = Tokenizer::load(o.model);
    ids = tok->encode_for_model(text);
    log::info("tokenized {} bytes into {} tokens ({})", text.size(), ids.size(), tok->kind());
  } else {
    ids = read_token_ids(o.tokens);
    input_hash = sha256_file(o.tokens);
  }

  EvalOptions opt;
  if (o.protocol == "gptq") opt.protocol = EvalProtocol::gptq;
  else if (o.protocol == "llamacpp") opt.protocol = EvalProtocol::llamacpp;
  else fail<UsageError>("--protocol must be gptq or llamacpp, got '{}'", o.protocol);
  opt.ctx = o.ctx;
  opt.max_windows = o.max_windows;
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
  if (o.max_ppl > 0 && r.ppl > o.max_ppl) gate = fmt::format("perplexity {:.4f} exceeds --max-ppl {}", r.ppl, o.max_ppl);
  if (o.max_ppl_increase >= 0 && r.ppl > r.base_ppl * (1.0 + o.max_ppl_increase / 100.0)) {
    gate = fmt::format("perplexity {:.4f} is {:.2f}% above the base's {:.4f} (limit {}%)", r.ppl,
                       100.0 * (r.ppl / r.base_ppl - 1.0), r.base_ppl, o.max_ppl_increase);
  }
  j["gate"] = gate.empty() ? "pass" : "fail";
  if (o.json) std::cout << j.dump(2) << "\n";
  else fmt::print("ppl {:.4f}\n", r.ppl);
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
  cmd->add_option("--max-windows", o->max_windows, "evaluate at most this many windows")->check(CLI::NonNegativeNumber);
  cmd->add_option("--limit-bytes", o->limit_bytes, "use only the first N bytes of --text")->check(CLI::NonNegativeNumber);
  cmd->add_option("--max-ppl", o->max_ppl, "exit with status 4 if perplexity exceeds this");
  cmd->add_option("--max-ppl-increase", o->max_ppl_increase, "exit with status 4 if perplexity exceeds the base's by more than PCT percent");
  cmd->add_flag("--json", o->json, "print the result as JSON on stdout");
  cmd->callback([o] { run_eval(*o); });
}

}  // namespace quant::cli
