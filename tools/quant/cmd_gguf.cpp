// quant gguf MODEL: export to a GGUF file for llama.cpp, optionally importance-weighted.
#include <omp.h>
#include <unistd.h>

#include <iostream>
#include <nlohmann/json.hpp>

#include "commands.h"
#include "quant/core/error.h"
#include "quant/formats/codec.h"
#include "quant/formats/gguf_export.h"
#include "quant/pipeline/estimate.h"
#include "quant/pipeline/gguf_job.h"
#include "quant/core/log.h"
#include "quantize_common.h"

namespace quant::cli {

namespace {

// --dry-run: each tensor's type, shape and size (llama-quantize's log lines), then the file size.
void print_gguf_plan(const gguf::ExportReport& r, const fs::path& out, const std::string& type, const JobEstimate& est, bool json) {
  if (json) {
    nlohmann::ordered_json j;
    j["output"] = out.string();
    j["type"] = type;
    j["bytes"] = r.bytes;
    j["estimate"] = est.to_json();
    j["tensors"] = nlohmann::json::array();
    for (const auto& t : r.tensors) {
      j["tensors"].push_back({{"name", t.name}, {"type", gguf::type_info(t.type).name}, {"shape", std::vector<std::int64_t>(t.ne.rbegin(), t.ne.rend())},
                              {"bytes", t.bytes}});
    }
    std::cout << j.dump(2) << "\n";
    return;
  }
  for (const auto& t : r.tensors) {
    std::cout << fmt::format("{:<32} {:<5} [{}] {} bytes\n", t.name, gguf::type_info(t.type).name,
                             fmt::join(std::vector<std::int64_t>(t.ne.rbegin(), t.ne.rend()), ", "), t.bytes);
  }
  std::cout << fmt::format("{} ({}): {} tensors, {} bytes ({:.2f} MiB); estimated peak memory {:.0f} MB, time {:.0f} s; nothing written\n",
                           out.string(), type, r.tensors.size(), r.bytes, static_cast<double>(r.bytes) / (1 << 20),
                           static_cast<double>(est.peak_rss_bytes) / 1e6, est.seconds);
}

}  // namespace

void register_gguf(CLI::App& app) {
  struct Options {
    std::string model, out, type = "q8_0", dense_out, imatrix, imatrix_out, output_tensor_type, token_embedding_type;
    std::vector<std::string> tensor_types;
    bool force = false, replace_foreign = false, json = false, from_awq = false, pure = false, leave_output = false, dry_run = false;
  };
  auto o = std::make_shared<Options>();
  auto c = std::make_shared<CalibCliOptions>();
  auto* cmd = app.add_subcommand("gguf", "export a GGUF file for llama.cpp (f16, q8_0, q4_0 … q6_k, q4_k_m, q5_k_m)");
  cmd->add_option("model", o->model, "model directory (config.json + safetensors + tokenizer.model)")->required();
  cmd->add_option("-o,--output", o->out, "output file (default: <model>-<type>.gguf beside the model); - for stdout; a device or FIFO is written in place");
  cmd->add_option("-t,--type", o->type, "f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1, q2_k, q2_k_s, q3_k_s, q3_k_m, q3_k_l, q4_k_s, q4_k_m, q5_k_s, q5_k_m, q6_k, iq4_nl, iq4_xs")->capture_default_str();
  cmd->add_flag("-f,--force", o->force, "replace an existing output file that quant wrote");
  cmd->add_flag("--replace-foreign", o->replace_foreign, "with --force: also replace an existing file quant did not write (never an input)");
  cmd->add_option("--dense-out", o->dense_out, "also write the GGUF's weights, dequantized, as a dense HF checkpoint (for quant eval)");
  cmd->add_option("--imatrix", o->imatrix, "importance from a llama.cpp imatrix file (llama-imatrix's GGUF output) instead of --calib");
  cmd->add_option("--imatrix-out", o->imatrix_out, "also write the importance computed from --calib as an imatrix file (.dat: legacy format, else GGUF)");
  cmd->add_flag("--from-awq", o->from_awq, "search AWQ scales and clipping for the type's bit width on the calibration text and apply them first");
  cmd->add_option("--tensor-type", o->tensor_types, "REGEX=TYPE: tensors whose llama.cpp name contains a match get TYPE (repeatable; the first match wins)");
  cmd->add_option("--output-tensor-type", o->output_tensor_type, "type of output.weight (and of token_embd when tied)");
  cmd->add_option("--token-embedding-type", o->token_embedding_type, "type of token_embd.weight");
  cmd->add_flag("--pure", o->pure, "no k-quant mixture rules: every quantized tensor gets the type's base type");
  cmd->add_flag("--leave-output-tensor", o->leave_output, "keep output.weight in the checkpoint's dtype (f32, f16 or bf16)");
  cmd->add_flag("--dry-run", o->dry_run, "print every tensor's type and the file size; write nothing");
  cmd->add_flag("--json", o->json, "print the summary as JSON on stdout");
  add_calib_options(cmd, *c, 512, false);
  c->bos_first = true;
  cmd->get_option("--calib")->description("calibration text: weight the scale searches by mean x^2 of each input column (imatrix)");
  cmd->callback([o, c] {
    reuse_large_allocations();
    gguf::ExportOptions e;
    e.type = gguf::parse_file_type(o->type);
    e.dense_out = o->dense_out;
    auto tensor_type = [](const std::string& name, const std::string& flag) {
      const auto t = gguf::parse_type(name);
      if (!t) fail<UsageError>("{} '{}': unknown type (f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1, q2_k, q3_k, q4_k, q5_k, q6_k, iq4_nl, iq4_xs)", flag, name);
      return *t;
    };
    for (const auto& spec : o->tensor_types) {
      const auto eq = spec.rfind('=');
      if (eq == std::string::npos || eq == 0) fail<UsageError>("--tensor-type '{}': expected REGEX=TYPE", spec);
      e.tensor_types.emplace_back(spec.substr(0, eq), tensor_type(spec.substr(eq + 1), "--tensor-type"));
    }
    if (!o->output_tensor_type.empty()) e.output_tensor_type = tensor_type(o->output_tensor_type, "--output-tensor-type");
    if (!o->token_embedding_type.empty()) e.token_embedding_type = tensor_type(o->token_embedding_type, "--token-embedding-type");
    e.pure = o->pure;
    e.leave_output = o->leave_output;
    e.dry_run = o->dry_run;
    e.job_id = run_job_id();
    fs::path out = o->out;
    if (out.empty()) {
      fs::path m = o->model;
      while (!m.empty() && !m.has_filename()) m = m.parent_path();
      out = m.string() + "-" + e.type.name + ".gguf";
    }
    // Checked before any work (and again when each output is staged).
    e.output = output_policy(o->force, o->replace_foreign, {o->model, o->imatrix, c->text, c->tokens});
    check_output(out, OutputKind::file, e.output);
    if (!o->dense_out.empty()) {
      check_output(o->dense_out, OutputKind::directory, e.output);
      check_distinct_outputs({out, o->dense_out}, "quant gguf");
    }
    if (!o->imatrix_out.empty()) {
      if (c->text.empty() && c->tokens.empty()) fail<UsageError>("--imatrix-out writes the importance computed from --calib; give --calib");
      check_output(o->imatrix_out, OutputKind::file, e.output);
      check_distinct_outputs({out, o->imatrix_out}, "quant gguf");
    }
    if (o->dry_run) {  // the plan only: no calibration, nothing written
      if (o->from_awq || !o->dense_out.empty()) fail<UsageError>("--dry-run plans the GGUF only; drop --from-awq/--dense-out");
      const Model model = formats::open_model(o->model);
      e.importance_planned = !o->imatrix.empty() || !c->text.empty() || !c->tokens.empty();
      const gguf::ExportReport r = gguf::export_gguf(model, out, e);
      const JobEstimate est = estimate_job(model.config(), model.n_params(), "gguf", 0, 0, omp_get_max_threads(), e.type.name.rfind("iq", 0) == 0);
      print_gguf_plan(r, out, e.type.name, est, o->json);
      return;
    }
    const bool to_stdout = out == "-";
    if (to_stdout && o->json) fail<UsageError>("-o - writes the GGUF to stdout; --json would mix with it");
    Model model = formats::open_model(o->model);
    // --from-awq: the AWQ-scaled float twin, in a directory beside the output (in the temporary
    // directory for a stream output) removed at the end.
    const fs::path scaled = is_stream_target(out) ? fs::temp_directory_path() / fmt::format("quant-awq-scaled-{}", ::getpid())
                                                  : fs::path(resolve_output_path(out).string() + ".awq-scaled");
    struct Cleanup {
      fs::path p;
      ~Cleanup() {
        std::error_code ec;
        if (!p.empty()) fs::remove_all(p, ec);
      }
    } cleanup;
    if (o->from_awq) {
      if (!o->imatrix.empty()) fail<UsageError>("--from-awq calibrates on --calib text; it cannot use an --imatrix file");
      cleanup.p = scaled;
      e.name = model.dir().filename().empty() ? model.dir().parent_path().filename().string() : model.dir().filename().string();
      OutputPolicy scratch = e.output;
      scratch.force = true;  // a leftover of a killed run (quant's own)
      gguf::write_awq_scaled(model, e.type, scaled, load_calib(model, *c), scratch);
      model = formats::open_model(scaled);
    }
    if (!o->imatrix.empty()) {
      if (!c->text.empty() || !c->tokens.empty()) fail<UsageError>("--imatrix and --calib/--calib-tokens are alternatives; give one");
      e.importance = gguf::read_imatrix(o->imatrix);
    } else if (!c->text.empty() || !c->tokens.empty()) {
      gguf::Imatrix m = gguf::compute_imatrix(model, load_calib(model, *c), true);
      if (!o->imatrix_out.empty()) {
        m.datasets.push_back(c->text.empty() ? c->tokens : c->text);
        m.write(o->imatrix_out, e.output);
        log::info("imatrix ({} tensors) → {}", m.entries.size(), o->imatrix_out);
      }
      e.importance = m.importance();
    }
    const gguf::ExportReport r = gguf::export_gguf_job(model, out, e);
    log::info("gguf → {} ({}): {:.1f} MB in {:.1f}s{}", r.output.string(), e.type.name, static_cast<double>(r.bytes) / 1e6, r.seconds,
              e.importance.empty() ? "" : ", importance-weighted");
    if (o->json) {
      std::cout << nlohmann::json{{"output", r.output.string()}, {"type", e.type.name}, {"bytes", r.bytes},
                                  {"seconds", r.seconds}, {"weighted", !e.importance.empty()}, {"tensor_types", r.tensor_types}}.dump(2)
                << "\n";
    } else if (!to_stdout) {
      std::cout << r.output.string() << "\n";
    }
  });
}

}  // namespace quant::cli
