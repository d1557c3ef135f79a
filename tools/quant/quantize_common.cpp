#include "quantize_common.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <malloc.h>
#include <omp.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdlib>
#include <iostream>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>

#include "commands.h"
#include "progress.h"
#include "quant/pipeline/allocate.h"
#include "quant/pipeline/estimate.h"
#include "quant/core/error.h"
#include "quant/core/log.h"
#include "quant/methods/smoothquant.h"

namespace quant::cli {

void reuse_large_allocations() {
  mallopt(M_MMAP_MAX, 0);
  mallopt(M_TRIM_THRESHOLD, std::numeric_limits<int>::max());
}

GlobalOptions& global_options() {
  static GlobalOptions options;
  return options;
}

std::string run_job_id() {
  const char* id = std::getenv(kRunJobIdEnv);
  return id ? id : "";
}

using nlohmann::json;

void add_quantize_options(CLI::App* cmd, QuantizeCliOptions& o, const std::string& default_format, bool default_sym) {
  o.format = default_format;
  o.sym = default_sym;
  cmd->add_option("model", o.model, "model directory (config.json + safetensors)")->required();
  cmd->add_option("-o,--output", o.out, "output directory (default: <model>-<method>-w<bits>g<group> beside the model)");
  o.format_opt = cmd->add_option("--format", o.format, "output format: gptq, awq, compressed-tensors (vLLM's pack-/int-/float-quantized) or dense (dequantized weights in the source dtype)")
      ->capture_default_str();
  o.bits_opt = cmd->add_option("-b,--bits", o.bits, "bits per weight (2-8)")->capture_default_str()->check(CLI::Range(2, 8));
  o.group_opt = cmd->add_option("-g,--group-size", o.group_size, "inputs per quantization group; -1 for one group per output channel")
      ->capture_default_str()
      ->check(CLI::Validator([](std::string& s) { return s == "-1" || std::atoll(s.c_str()) >= 1 ? std::string() : "must be -1 or positive"; },
                             "-1|N>0"));
  o.sym_opt = cmd->add_flag("--sym,!--no-sym", o.sym, std::string("symmetric quantization (zero point fixed at the middle); --no-sym: asymmetric (default: ") +
                                          (default_sym ? "symmetric)" : "asymmetric)"));
  cmd->add_option("--scheme", o.scheme,
                  "compressed-tensors preset (implies --format compressed-tensors): W4A16, W8A16 (weight-only int), W8A8 (int8 "
                  "per-channel weights, int8 dynamic per-token activations), FP8_DYNAMIC (fp8 e4m3 per-channel weights and "
                  "per-token activations; rtn only), FP8 (fp8 per-tensor weights, fp8 activations with a static per-tensor scale "
                  "calibrated from --calib; rtn only), W8A16_FP8 (fp8 weights only; rtn only)");
  cmd->add_flag("--static-activations", o.static_activations,
                "with --scheme W8A8 or FP8_DYNAMIC: one static activation scale per linear (input_scale, max|x| over the "
                "calibration inputs / 127 or 448) instead of dynamic per-token scales (rtn and gptq; needs --calib)");
  o.fp8_scale_opt = cmd->add_option("--fp8-weight-scale", o.fp8_weight_scale,
                                    "with an fp8 scheme: channel (one weight scale per output channel, as FP8_DYNAMIC) or tensor (one "
                                    "per tensor, compressed-tensors strategy \"tensor\")")
                        ->capture_default_str()
                        ->check(CLI::IsMember({"channel", "tensor"}));
  cmd->add_option("--rule", o.rules, "per-tensor rule REGEX=skip or REGEX=bits:N,group:N,sym:BOOL (first match wins; repeatable)");
  cmd->add_flag("--quantize-lm-head", o.quantize_lm_head, "quantize lm_head too (kept in the source dtype by default)");
  cmd->add_flag("--skip-unsupported", o.skip_unsupported, "keep linears the format cannot hold in the source dtype instead of failing");
  cmd->add_flag("-f,--force", o.force, "replace an existing output directory that quant wrote");
  cmd->add_flag("--replace-foreign", o.replace_foreign, "with --force: also replace an existing directory quant did not write (never an input)");
  cmd->add_option("--shard-size", o.shard_size, "maximum safetensors shard size")->capture_default_str();
  cmd->add_flag("--json", o.json, "print the summary as JSON on stdout");
  cmd->add_option("--target-bpw", o.target_bpw,
                  "mixed precision: choose each linear's bits by sensitivity to fit this bits-per-weight budget (codes + scales)");
  cmd->add_option("--candidate-bits", o.candidate_bits, "bit widths --target-bpw chooses from")->delimiter(',')->capture_default_str();
  cmd->add_option("--sensitivity", o.sensitivity, "--target-bpw sensitivity: auto, hessian (layer output error) or kl (end-to-end KL to the float model); auto: kl with calibration data on models under 200M parameters, else hessian")
      ->capture_default_str();
  cmd->add_flag("--no-resume", o.no_resume, "ignore and delete the journal of an interrupted run (<output>.resume) instead of continuing it");
  cmd->add_option("--journal-limit", o.journal_limit, "do not journal (for resuming) when the journal would exceed this size, e.g. 2GB (default: no limit)");
  cmd->add_flag("--dry-run", o.dry_run, "print the plan (tensors, bits, estimated size) and stop");
}

void add_calib_options(CLI::App* cmd, CalibCliOptions& o, std::int64_t default_seqlen, bool moe_options) {
  o.seqlen = default_seqlen;
  cmd->add_option("--calib", o.text, "calibration text (tokenized with the model's tokenizer)");
  cmd->add_option("--calib-tokens", o.tokens, "pre-tokenized calibration ids instead of --calib");
  cmd->add_option("--nsamples", o.nsamples, "calibration windows")->capture_default_str();
  cmd->add_option("--seqlen", o.seqlen, "tokens per calibration window (capped by the model context)")->capture_default_str();
  cmd->add_option("--seed", o.seed, "seed for picking the windows")->capture_default_str();
  cmd->add_flag("--no-memory-check", o.no_memory_check, "start even when the calibration's estimated memory exceeds what is available");
  if (!moe_options) return;
  cmd->add_option("--moe-calibration", o.moe_calibration,
                  "MoE models: each expert's statistics from the calibration tokens routed to it (routed) or from every token (all)")
      ->check(CLI::IsMember({"routed", "all"}))
      ->capture_default_str();
  cmd->add_option("--moe-min-tokens", o.moe_min_tokens,
                  "MoE models, --moe-calibration routed: an expert routed fewer tokens is quantized without statistics (RTN)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
}

std::vector<std::vector<std::int32_t>> load_calib(const Model& model, const CalibCliOptions& o) {
  CalibOptions c;
  c.text = o.text;
  c.tokens = o.tokens;
  c.nsamples = o.nsamples;
  c.seqlen = o.seqlen;
  c.seed = o.seed;
  c.bos_first = o.bos_first;
  c.check_memory = !o.no_memory_check;
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

std::int64_t l_out(const json& e) { return e["shape"][0].get<std::int64_t>(); }
std::int64_t l_in(const json& e) { return e["shape"][1].get<std::int64_t>(); }

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

namespace {
// llm-compressor's preset schemes (compressed_tensors/quantization/quant_scheme.py).
struct Scheme {
  const char* name;
  int bits;
  std::int64_t group;
  bool fp8;
  ActQuant act;
  bool per_tensor = false;  // one weight scale per tensor (strategy "tensor")
  bool static_act = false;  // one calibrated input scale per tensor
};
constexpr Scheme kSchemes[] = {{"W4A16", 4, 128, false, ActQuant::none},  {"W8A16", 8, -1, false, ActQuant::none},
                               {"W8A8", 8, -1, false, ActQuant::int8},    {"FP8_DYNAMIC", 8, -1, true, ActQuant::fp8},
                               {"W8A16_FP8", 8, -1, true, ActQuant::none},  {"FP8", 8, -1, true, ActQuant::fp8, true, true}};
}  // namespace

QuantSpec make_spec(QuantizeCliOptions& o) {
  QuantSpec s;
  s.bits = o.bits;
  s.group_size = o.group_size;
  s.sym = o.sym;
  if (!o.scheme.empty()) {
    std::string up = o.scheme;
    std::transform(up.begin(), up.end(), up.begin(), [](unsigned char c) { return static_cast<char>(std::toupper(c)); });
    const Scheme* k = nullptr;
    std::string names;
    for (const Scheme& x : kSchemes) {
      if (up == x.name) k = &x;
      names += (names.empty() ? "" : ", ") + std::string(x.name);
    }
    if (!k) fail<UsageError>("unknown --scheme '{}' ({})", o.scheme, names);
    auto given = [](const CLI::Option* opt) { return opt && opt->count() > 0; };
    if (given(o.bits_opt) && o.bits != k->bits) fail<UsageError>("--scheme {} is {}-bit; drop --bits {}", k->name, k->bits, o.bits);
    if (given(o.group_opt) && o.group_size != k->group) {
      fail<UsageError>("--scheme {} has group size {}; drop --group-size {}", k->name, k->group, o.group_size);
    }
    if (given(o.sym_opt) && !o.sym) fail<UsageError>("--scheme {} is symmetric; drop --no-sym", k->name);
    // --format dense keeps the scheme's weights as float (fake quant), which cannot carry activations.
    if (given(o.format_opt) && o.format != "compressed-tensors" && (o.format != "dense" || k->act != ActQuant::none)) {
      fail<UsageError>("--scheme {} is a compressed-tensors scheme; drop --format {}", k->name, o.format);
    }
    if (!given(o.format_opt)) o.format = "compressed-tensors";
    s.bits = k->bits;
    s.group_size = k->group;
    s.sym = true;
    s.fp8 = k->fp8;
    s.act = k->act;
    s.per_tensor = k->per_tensor;
    s.static_act = k->static_act;
  }
  if (o.fp8_scale_opt && o.fp8_scale_opt->count() > 0) {
    if (!s.fp8) fail<UsageError>("--fp8-weight-scale is for float8 weights; add --scheme FP8_DYNAMIC or W8A16_FP8");
    if (s.per_tensor && o.fp8_weight_scale != "tensor") fail<UsageError>("--scheme FP8 has one weight scale per tensor; drop --fp8-weight-scale {}", o.fp8_weight_scale);
    s.per_tensor = o.fp8_weight_scale == "tensor";
  }
  if (o.static_activations) {
    if (s.act == ActQuant::none) fail<UsageError>("--static-activations is for activation quantization; add --scheme W8A8 or FP8_DYNAMIC");
    if (s.static_act) fail<UsageError>("--scheme FP8 has static activations already; drop --static-activations");
    s.static_act = true;
  }
  s.validate();
  return s;
}

void add_smooth_options(CLI::App* cmd, SmoothCliOptions& o) {
  cmd->add_option("--smooth", o.alpha,
                  "SmoothQuant before quantizing, with this smoothing strength (0.5 is llm-compressor's default; 0.8 the paper's "
                  "for Llama) or auto (per mapping, the strength whose quantized outputs err least): migrates activation "
                  "outliers into the weights; needs --scheme W8A8 or FP8_DYNAMIC");
  cmd->add_option("--smooth-mappings", o.mappings,
                  "norms: the norm-fed inputs only (llm-compressor's default mappings: q/k/v, gate/up); all: also the inputs of "
                  "down_proj (absorbed by up_proj) and o_proj (by v_proj, without GQA)")
      ->capture_default_str()
      ->check(CLI::IsMember({"norms", "all"}));
}

std::unique_ptr<Method> maybe_smoothed(std::unique_ptr<Method> method, const SmoothCliOptions& o, const QuantSpec& spec) {
  if (o.alpha.empty()) return method;
  if (spec.act == ActQuant::none) fail<UsageError>("--smooth smooths activations for activation quantization; add --scheme W8A8 (or FP8_DYNAMIC)");
  double alpha = kAutoStrength;
  if (o.alpha != "auto") {
    char* end = nullptr;
    alpha = std::strtod(o.alpha.c_str(), &end);
    if (end == o.alpha.c_str() || *end != '\0' || !(alpha >= 0 && alpha <= 1)) {
      fail<UsageError>("--smooth: the smoothing strength must be in [0, 1] or auto, got '{}'", o.alpha);
    }
  }
  return std::make_unique<SmoothedMethod>(std::move(method), alpha, o.mappings == "all");
}

Policy make_policy(const QuantizeCliOptions& o, const QuantSpec& defaults, const Model& model,
                   const std::vector<std::vector<std::int32_t>>& samples) {
  std::vector<Rule> rules;
  for (const auto& r : o.rules) rules.push_back(Rule::parse(r));
  Policy p = Policy::standard(defaults, o.quantize_lm_head, rules);
  if (!(o.target_bpw >= 0) || std::isinf(o.target_bpw)) fail<UsageError>("--target-bpw must be a positive number of bits per weight, got {}", o.target_bpw);
  if (o.target_bpw <= 0) return p;
  if (const auto& accepted = formats::codec(formats::parse_format(o.format)).bits; !accepted.empty()) {
    for (int b : o.candidate_bits) {
      if (std::find(accepted.begin(), accepted.end(), b) == accepted.end()) {
        fail<UsageError>("--candidate-bits {}: the {} format's loaders accept {} bits; drop it or use --format dense", b, o.format,
                         fmt::join(accepted, ", "));
      }
    }
  }
  if (samples.empty()) log::info("--target-bpw without calibration: sensitivity is the plain squared weight error");
  std::string kind = o.sensitivity;
  if (kind == "auto") {
    double params = 0;
    for (const LinearDesc* l : model.linears()) {
      if (l->layer >= 0) params += static_cast<double>(l->out * l->in);
    }
    kind = !samples.empty() && params < 2e8 ? "kl" : "hessian";
    log::info("--target-bpw: sensitivity {}", kind);
  }
  const std::vector<int>& expert_bits = formats::codec(formats::parse_format(o.format)).expert_bits;
  std::vector<Rule> all = allocate_bits(model, p, o.target_bpw, o.candidate_bits, samples, parse_sensitivity(kind), expert_bits).rules();
  all.insert(all.end(), rules.begin(), rules.end());
  return Policy::standard(defaults, o.quantize_lm_head, std::move(all));
}

bool dry_run(const QuantizeCliOptions& o, const Model& model, const Plan& plan, const RunOptions& run,
             const std::vector<std::vector<std::int32_t>>& samples) {
  if (!o.dry_run) return false;
  json linears = json::array();
  std::uint64_t bytes = 0;
  std::set<std::string> planned;
  for (const LinearPlan& p : plan.linears) {
    const LinearDesc& l = *p.desc;
    json e = {{"name", l.prefix}, {"shape", {l.out, l.in}}, {"quantize", p.quantize}};
    if (p.quantize) {
      const std::int64_t g = p.spec.effective_group(l.in);
      const double bpw = p.spec.bits + static_cast<double>((l.in + g - 1) / g) * (16.0 + (p.spec.sym ? 0.0 : p.spec.bits)) / static_cast<double>(l.in);
      e["bits"] = p.spec.bits;
      e["group_size"] = p.spec.group_size;
      e["sym"] = p.spec.sym;
      e["bpw"] = bpw;
      bytes += static_cast<std::uint64_t>(bpw * static_cast<double>(l.out * l.in) / 8.0);
      planned.insert(l.weight_name());
    } else {
      e["reason"] = p.unsupported.empty() ? p.reason : p.unsupported;
    }
    linears.push_back(e);
  }
  for (const auto& name : model.store().names()) {
    if (!planned.count(name)) bytes += model.store().get(name).nbytes;
  }
  std::int64_t tokens = 0, seqlen = 0;
  for (const auto& s : samples) {
    tokens += static_cast<std::int64_t>(s.size());
    seqlen = std::max(seqlen, static_cast<std::int64_t>(s.size()));
  }
  const JobEstimate est = estimate_job(model.config(), model.n_params(), run.method, tokens, seqlen, omp_get_max_threads());
  const json out = {{"model", model.dir().string()}, {"output", run.out.string()}, {"format", formats::format_name(plan.format)},
                    {"method", run.method}, {"estimated_bytes", bytes}, {"estimate", est.to_json()}, {"linears", linears}};
  if (o.json) {
    std::cout << out.dump(2) << "\n";
  } else {
    for (const auto& e : linears) {
      if (e["quantize"]) {
        std::cout << fmt::format("{:<48} {:>6}x{:<6} w{} g{:<4} {:.3f} bpw\n", e["name"].get<std::string>(), l_out(e), l_in(e),
                                 e["bits"].get<int>(), e["group_size"].get<std::int64_t>(), e["bpw"].get<double>());
      } else {
        std::cout << fmt::format("{:<48} {:>6}x{:<6} kept ({})\n", e["name"].get<std::string>(), l_out(e), l_in(e), e["reason"].get<std::string>());
      }
    }
    std::cout << fmt::format("{} → {} ({}): about {:.1f} MB; estimated peak memory {:.0f} MB, time {:.0f} s\n", run.method, run.out.string(),
                             formats::format_name(plan.format), static_cast<double>(bytes) / 1e6, static_cast<double>(est.peak_rss_bytes) / 1e6,
                             est.seconds);
  }
  return true;
}

void plan_and_run(const QuantizeCliOptions& o, const Model& model, const Plan& plan, const Method& method, const RunOptions& run,
                  const std::vector<std::vector<std::int32_t>>& samples) {
  if (dry_run(o, model, plan, run, samples)) return;
  LazyProgress bar(run.method);
  const QuantizeReport r = quantize_model(model, plan, method, run, samples, bar.callback());
  bar.finish();
  print_report(r, o.json);
}

OutputPolicy output_policy(bool force, bool replace_foreign, std::vector<fs::path> inputs) {
  if (replace_foreign && !force) fail<UsageError>("--replace-foreign only applies with --force");
  OutputPolicy p;
  p.force = force;
  p.replace_foreign = replace_foreign;
  p.inputs = std::move(inputs);
  return p;
}

RunOptions make_run_options(const QuantizeCliOptions& o, const std::string& method, const QuantSpec& defaults,
                            const CalibCliOptions* calib) {
  RunOptions r;
  r.method = method;
  r.format = formats::parse_format(o.format);
  r.output = output_policy(o.force, o.replace_foreign, {o.model});
  if (calib) {
    r.output.inputs.emplace_back(calib->text);
    r.output.inputs.emplace_back(calib->tokens);
    r.moe_calibration = calib->moe_calibration;
    r.moe_min_tokens = calib->moe_min_tokens;
  }
  r.skip_unsupported = o.skip_unsupported;
  r.resume = !o.no_resume;
  r.job_id = run_job_id();
  r.max_shard_bytes = parse_size(o.shard_size);
  if (!o.journal_limit.empty()) {
    r.journal_limit = parse_size(o.journal_limit);
    if (r.journal_limit == 0) fail<UsageError>("--journal-limit must be positive; --no-resume turns journaling off");
  }
  if (o.out.empty()) {
    fs::path m = o.model;
    while (!m.empty() && !m.has_filename()) m = m.parent_path();
    r.out = m.string() + "-" + method + "-" + defaults.label();
  } else {
    r.out = o.out;
  }
  if (o.dry_run) {  // writes nothing: only what the real run would refuse about the inputs
    check_output_inputs(r.out, r.output.inputs);
    if (fs::exists(r.out) && !o.force) log::warn("{} exists: the real run needs --force", r.out.string());
  } else {
    check_output(r.out, OutputKind::directory, r.output);  // before any work; checked again when staged
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
  log::info("{} → {} ({}): {} linears quantized, {} kept; {:.3f} bits/weight over quantized linears; {:.1f} MB → {:.1f} MB in {:.1f}s, peak RSS {:.0f} MB",
            r.method, r.output.string(), r.format, r.n_quantized, r.n_kept, r.bpw_quantized,
            static_cast<double>(r.bytes_in) / 1e6, static_cast<double>(r.bytes_out) / 1e6, r.seconds,
            static_cast<double>(r.peak_rss_bytes) / 1e6);
  if (r.format != "dense") {
    log::info("fast kernels this output qualifies for: {}", r.kernels.empty() ? std::string("none (reference kernels only)") : fmt::format("{}", fmt::join(r.kernels, ", ")));
  }
  if (json) std::cout << r.to_json().dump(2) << "\n";
  else std::cout << r.output.string() << "\n";
}

}  // namespace quant::cli
