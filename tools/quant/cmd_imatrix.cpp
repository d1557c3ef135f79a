// quant imatrix: llama-imatrix's importance matrix from a calibration text, in its GGUF or
// legacy .dat format; or an existing imatrix converted between the two (--in-file).
#include <iostream>
#include <nlohmann/json.hpp>

#include "commands.h"
#include "quant/core/error.h"
#include "quant/core/log.h"
#include "quant/formats/codec.h"
#include "quant/io/io.h"
#include "quant/model/tokenizer.h"
#include "quant/pipeline/gguf_job.h"
#include "quantize_common.h"

namespace quant::cli {

void register_imatrix(CLI::App& app) {
  struct Options {
    std::string model, calib, calib_tokens, in_file, out;
    std::int64_t ctx = 512, chunks = 0;
    bool process_output = false, force = false, replace_foreign = false, json = false;
  };
  auto o = std::make_shared<Options>();
  auto* cmd = app.add_subcommand("imatrix", "importance matrix for GGUF quantization, as llama-imatrix computes it (GGUF or .dat)");
  cmd->add_option("model", o->model, "model directory (HF checkpoint)");
  cmd->add_option("--calib", o->calib, "calibration text: tokenized whole (with BOS), cut into --ctx chunks, each starting with BOS");
  cmd->add_option("--calib-tokens", o->calib_tokens, "pre-tokenized calibration input instead of --calib");
  cmd->add_option("--in-file", o->in_file, "convert this imatrix (GGUF or .dat) instead of computing one");
  cmd->add_option("-o,--output", o->out, "output file: .dat writes the legacy format, anything else GGUF")->required();
  cmd->add_option("--ctx", o->ctx, "chunk length in tokens (llama-imatrix -c)")->capture_default_str()->check(CLI::PositiveNumber);
  cmd->add_option("--chunks", o->chunks, "at most this many chunks (default: all)")->check(CLI::PositiveNumber);
  cmd->add_flag("--process-output", o->process_output, "also collect output.weight's input (llama-imatrix --process-output)");
  cmd->add_flag("-f,--force", o->force, "replace an existing imatrix that quant wrote");
  cmd->add_flag("--replace-foreign", o->replace_foreign, "with --force: also replace a file quant did not write (never an input)");
  cmd->add_flag("--json", o->json, "print a summary as JSON on stdout");
  cmd->callback([o] {
    const OutputPolicy policy = output_policy(o->force, o->replace_foreign, {o->model, o->calib, o->calib_tokens, o->in_file});
    check_output(o->out, OutputKind::file, policy);
    gguf::Imatrix m;
    if (!o->in_file.empty()) {
      if (!o->model.empty() || !o->calib.empty() || !o->calib_tokens.empty()) fail<UsageError>("--in-file converts a file; it takes no model or calibration");
      m = gguf::read_imatrix_file(o->in_file);
      m.to_token_sums(o->ctx);  // a legacy file does not record its chunk size: --ctx, as llama-imatrix assumes
    } else {
      if (o->model.empty()) fail<UsageError>("give a MODEL (or --in-file to convert an imatrix)");
      if (o->calib.empty() == o->calib_tokens.empty()) fail<UsageError>("pass exactly one of --calib FILE or --calib-tokens FILE");
      const Model model = formats::open_model(o->model);
      std::vector<std::int32_t> tokens;
      std::int32_t bos = -1;
      if (!o->calib.empty()) {
        const std::unique_ptr<Tokenizer> tok = Tokenizer::load(model.dir());
        tokens = tok->encode_for_model(read_text_file(o->calib, true));
        if (tok->add_bos()) bos = tok->bos_id();
      } else {
        tokens = read_token_ids(o->calib_tokens);
      }
      for (std::int32_t t : tokens) {
        if (t < 0 || t >= model.config().vocab_size) fail("{}: token id {} is outside the vocabulary ({})", o->calib.empty() ? o->calib_tokens : o->calib, t, model.config().vocab_size);
      }
      const auto chunks = gguf::imatrix_chunks(tokens, o->ctx, o->chunks, bos);
      log::info("imatrix: {} chunks of {} tokens ({} tokens in the text)", chunks.size(), o->ctx, tokens.size());
      m = gguf::compute_imatrix(model, chunks, o->process_output);
      m.datasets.push_back(o->calib.empty() ? o->calib_tokens : o->calib);
    }
    m.write(o->out, policy);
    log::info("imatrix: {} tensors, {} chunks of {} → {}", m.entries.size(), m.chunk_count, m.chunk_size, o->out);
    if (o->json) {
      std::cout << nlohmann::json{{"output", o->out}, {"format", fs::path(o->out).extension() == ".dat" ? "dat" : "gguf"}, {"tensors", m.entries.size()},
                                  {"chunks", m.chunk_count}, {"chunk_size", m.chunk_size}}.dump(2)
                << "\n";
    }
  });
}

}  // namespace quant::cli
