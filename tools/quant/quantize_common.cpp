#include "quantize_common.h"

#include <fmt/format.h>

#include <iostream>

#include "quant/error.h"
#include "quant/log.h"

namespace quant::cli {

void add_quantize_options(CLI::App* cmd, QuantizeCliOptions& o, const std::string& default_format) {
  o.format = default_format;
  cmd->add_option("model", o.model, "model directory (config.json + safetensors)")->required();
  cmd->add_option("-o,--output", o.out, "output directory (default: <model>-<method>-w<bits>g<group> beside the model)");
  cmd->add_option("--format", o.format, "output format: gptq, awq or dense (dequantized weights in the source dtype)")
      ->capture_default_str();
  cmd->add_option("-b,--bits", o.bits, "bits per weight (2-8)")->capture_default_str();
  cmd->add_option("-g,--group-size", o.group_size, "inputs per quantization group; -1 for one group per output channel")->capture_default_str();
  cmd->add_flag("--sym", o.sym, "symmetric quantization (zero point fixed at the middle)");
  cmd->add_option("--rule", o.rules, "per-tensor rule REGEX=skip or REGEX=bits:N,group:N,sym:BOOL (first match wins; repeatable)");
  cmd->add_flag("--quantize-lm-head", o.quantize_lm_head, "quantize lm_head too (kept in the source dtype by default)");
  cmd->add_flag("--skip-unsupported", o.skip_unsupported, "keep linears the format cannot hold in the source dtype instead of failing");
  cmd->add_flag("-f,--force", o.force, "replace an existing output directory");
  cmd->add_option("--shard-size", o.shard_size, "maximum safetensors shard size")->capture_default_str();
  cmd->add_flag("--json", o.json, "print the summary as JSON on stdout");
}

void add_calib_options(CLI::App* cmd, CalibCliOptions& o, std::int64_t default_seqlen) {
  o.seqlen = default_seqlen;
  cmd->add_option("--calib", o.text, "calibration text (tokenized with the model's tokenizer)");
  cmd->add_option("--calib-tokens", o.tokens, "pre-tokenized calibration ids instead of --calib");
  cmd->add_option("--nsamples", o.nsamples, "calibration windows")->capture_default_str();
  cmd->add_option("--seqlen", o.seqlen, "tokens per calibration window (capped by the model context)")->capture_default_str();
  cmd->add_option("--seed", o.seed, "seed for picking the windows")->capture_default_str();
}

std::vector<std::vector<std::int32_t>> load_calib(const Model& model, const CalibCliOptions& o) {
  CalibOptions c;
  c.text = o.text;
  c.tokens = o.tokens;
  c.nsamples = o.nsamples;
  c.seqlen = o.seqlen;
  c.seed = o.seed;
  c.bos_first = o.bos_first;
  if (!o.text.empty() && !o.tokens.empty()) fail<UsageError>("pass --calib or --calib-tokens, not both");
  if (o.text.empty() && o.tokens.empty()) {
    const fs::path fallback = "/usr/share/common-licenses/Apache-2.0";
    if (!fs::exists(fallback)) {
      fail<UsageError>("no calibration data: pass --calib FILE with text like the model's training data (e.g. C4 or WikiText samples)");
    }
    log::warn("no --calib given: calibrating on {} (licence text is a poor sample of most models' data; pass --calib for better results)", fallback.string());
    c.text = fallback;
  }
  std::unique_ptr<Tokenizer> tok;
  if (c.tokens.empty()) tok = Tokenizer::load(model.dir());
  return load_calibration(model, c, tok.get());
}

std::uint64_t parse_size(const std::string& s) {
  std::size_t i = 0;
  while (i < s.size() && (std::isdigit(static_cast<unsigned char>(s[i])) || s[i] == '.')) ++i;
  if (i == 0) fail<UsageError>("size '{}' must start with a number", s);
  const double v = std::stod(s.substr(0, i));
  std::string unit = s.substr(i);
  for (auto& c : unit) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  double mult = 1;
  if (unit == "" || unit == "B") mult = 1;
  else if (unit == "KB") mult = 1e3;
  else if (unit == "MB") mult = 1e6;
  else if (unit == "GB") mult = 1e9;
  else if (unit == "KIB") mult = 1024.0;
  else if (unit == "MIB") mult = 1024.0 * 1024;
  else if (unit == "GIB") mult = 1024.0 * 1024 * 1024;
  else fail<UsageError>("size '{}': unknown unit '{}' (B, KB, MB, GB, KiB, MiB, GiB)", s, unit);
  return static_cast<std::uint64_t>(v * mult);
}

QuantSpec make_spec(const QuantizeCliOptions& o) {
  QuantSpec s;
  s.bits = o.bits;
  s.group_size = o.group_size;
  s.sym = o.sym;
  s.validate();
  return s;
}

Policy make_policy(const QuantizeCliOptions& o, const QuantSpec& defaults) {
  std::vector<Rule> rules;
  for (const auto& r : o.rules) rules.push_back(Rule::parse(r));
  return Policy::standard(defaults, o.quantize_lm_head, std::move(rules));
}

RunOptions make_run_options(const QuantizeCliOptions& o, const std::string& method, const QuantSpec& defaults) {
  RunOptions r;
  r.method = method;
  r.format = formats::parse_format(o.format);
  r.force = o.force;
  r.skip_unsupported = o.skip_unsupported;
  r.max_shard_bytes = parse_size(o.shard_size);
  if (o.out.empty()) {
    fs::path m = o.model;
    while (!m.empty() && !m.has_filename()) m = m.parent_path();
    r.out = m.string() + "-" + method + "-" + defaults.label();
  } else {
    r.out = o.out;
  }
  return r;
}

void print_report(const QuantizeReport& r, bool json) {
  for (const auto& t : r.tensors) {
    if (t.quantized) {
      log::debug("{:<44} w{} g{:<4} bpw {:.3f} rel.err {:.5f}", t.name, t.spec.bits, t.spec.group_size, t.bpw, t.rel_error);
    } else {
      log::info("{:<44} kept ({})", t.name, t.note);
    }
  }
  log::info("{} → {} ({}): {} linears quantized, {} kept; {:.3f} bits/weight over quantized linears; {:.1f} MB → {:.1f} MB in {:.1f}s",
            r.method, r.output.string(), r.format, r.n_quantized, r.n_kept, r.bpw_quantized,
            static_cast<double>(r.bytes_in) / 1e6, static_cast<double>(r.bytes_out) / 1e6, r.seconds);
  if (json) std::cout << r.to_json().dump(2) << "\n";
  else std::cout << r.output.string() << "\n";
}

}  // namespace quant::cli
