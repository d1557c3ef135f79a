// quant gguf MODEL: export to a GGUF file for llama.cpp, optionally importance-weighted.
#include <unistd.h>

#include <iostream>
#include <nlohmann/json.hpp>

#include "commands.h"
#include "quant/core/error.h"
#include "quant/formats/codec.h"
#include "quant/formats/gguf_export.h"
#include "quant/pipeline/gguf_job.h"
#include "quant/core/log.h"
#include "quantize_common.h"

namespace quant::cli {

void register_gguf(CLI::App& app) {
  struct Options {
    std::string model, out, type = "q8_0", dense_out, imatrix;
    bool force = false, replace_foreign = false, json = false, from_awq = false;
  };
  auto o = std::make_shared<Options>();
  auto c = std::make_shared<CalibCliOptions>();
  auto* cmd = app.add_subcommand("gguf", "export a GGUF file for llama.cpp (f16, q8_0, q4_0 … q6_k, q4_k_m, q5_k_m)");
  cmd->add_option("model", o->model, "model directory (config.json + safetensors + tokenizer.model)")->required();
  cmd->add_option("-o,--output", o->out, "output file (default: <model>-<type>.gguf beside the model); - for stdout; a device or FIFO is written in place");
  cmd->add_option("-t,--type", o->type, "f32, f16, q8_0, q4_0, q4_1, q5_0, q5_1, q4_k_s, q4_k_m, q5_k_s, q5_k_m, q6_k")->capture_default_str();
  cmd->add_flag("-f,--force", o->force, "replace an existing output file that quant wrote");
  cmd->add_flag("--replace-foreign", o->replace_foreign, "with --force: also replace an existing file quant did not write (never an input)");
  cmd->add_option("--dense-out", o->dense_out, "also write the GGUF's weights, dequantized, as a dense HF checkpoint (for quant eval)");
  cmd->add_option("--imatrix", o->imatrix, "importance from a llama.cpp imatrix file (llama-imatrix's GGUF output) instead of --calib");
  cmd->add_flag("--from-awq", o->from_awq, "search AWQ scales and clipping for the type's bit width on the calibration text and apply them first");
  cmd->add_flag("--json", o->json, "print the summary as JSON on stdout");
  add_calib_options(cmd, *c, 512);
  c->bos_first = true;
  cmd->get_option("--calib")->description("calibration text: weight the scale searches by mean x^2 of each input column (imatrix)");
  cmd->callback([o, c] {
    reuse_large_allocations();
    gguf::ExportOptions e;
    e.type = gguf::parse_file_type(o->type);
    e.dense_out = o->dense_out;
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
    } else if (!c->text.empty() || !c->tokens.empty()) e.importance = gguf::collect_importance(model, load_calib(model, *c));
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
