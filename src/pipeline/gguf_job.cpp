// The calibrated steps of a GGUF export: the importance statistic (imatrix) and AWQ's scaling.
#include "quant/pipeline/gguf_job.h"

#include "quant/core/error.h"
#include "quant/core/log.h"
#include "quant/methods/awq.h"
#include "quant/model/calibration.h"
#include "quant/model/weights.h"
#include "quant/pipeline/layer_loop.h"
#include "quant/pipeline/plan.h"

namespace quant::gguf {

Imatrix compute_imatrix(const Model& model, const std::vector<std::vector<std::int32_t>>& chunks, bool process_output) {
  Imatrix m;
  m.chunk_count = static_cast<std::int64_t>(chunks.size());
  m.chunk_size = chunks.empty() ? 0 : static_cast<std::int64_t>(chunks.front().size());
  observe_float_model(model, chunks, process_output, [&](const LayerDesc* layer, const LayerWeights*, CapturePoint p, const std::vector<Mat>& xs) {
    ImatrixEntry e;
    std::int64_t rows = 0;
    for (double v : sum_square_inputs(xs, rows)) e.sum2.push_back(static_cast<float>(v));
    e.count = static_cast<double>(rows);
    if (!layer) {  // the head's input: llama-imatrix --process-output (a tied head is token_embd.weight)
      m.entries[model.layout().tied ? "token_embd.weight" : "output.weight"] = e;
      return;
    }
    for (const LinearDesc& l : layer->linears) {
      if (l.expert < 0 && capture_point(l.kind) == p) m.entries[gguf_linear_name(l.storage_desc())] = e;
    }
  });
  return m;
}

std::map<std::string, std::vector<float>> collect_importance(const Model& model,
                                                             const std::vector<std::vector<std::int32_t>>& samples) {
  return compute_imatrix(model, samples, true).importance();
}

std::vector<std::vector<std::int32_t>> imatrix_chunks(const std::vector<std::int32_t>& tokens, std::int64_t ctx, std::int64_t max_chunks,
                                                      std::int32_t bos) {
  if (ctx < 16) fail<UsageError>("imatrix chunks need at least 16 tokens (llama-imatrix ignores smaller batches), got {}", ctx);
  std::int64_t n = static_cast<std::int64_t>(tokens.size()) / ctx;
  if (max_chunks > 0) n = std::min(n, max_chunks);
  if (n == 0) fail("the calibration text has {} tokens, fewer than one chunk of {}", tokens.size(), ctx);
  std::vector<std::vector<std::int32_t>> chunks;
  for (std::int64_t i = 0; i < n; ++i) {
    chunks.emplace_back(tokens.begin() + i * ctx, tokens.begin() + (i + 1) * ctx);
    if (bos >= 0) chunks.back()[0] = bos;
  }
  return chunks;
}

void write_awq_scaled(const Model& model, const FileType& type, const fs::path& dir,
                      const std::vector<std::vector<std::int32_t>>& samples, const OutputPolicy& output) {
  const QuantSpec spec = awq_spec_for(type);
  std::vector<Rule> rules;
  for (const auto& layer : model.layout().layers) {
    for (const auto& l : layer.linears) {
      if (l.in % spec.group_size != 0) rules.push_back(Rule::parse("^" + regex_escape(l.prefix) + "$=group:-1"));
    }
  }
  RunOptions run;
  run.out = dir;
  run.format = formats::Format::dense;
  run.output = output;
  AwqOptions a;
  a.export_compatible = true;
  const AwqMethod method(a);
  log::info("--from-awq: AWQ search for {} ({}), weights kept in float", type.name, spec.label());
  const Plan plan = make_plan(model, Policy::standard(spec, false, std::move(rules)), method.traits(), run.format, false);
  quantize_model(model, plan, method, run, samples);
}

ExportReport export_gguf_job(const Model& model, const fs::path& out, ExportOptions options) {
  // The dense twin: every linear kept (a skip-all policy), the GGUF's weights put in place.
  std::unique_ptr<OutputSession> dense;
  if (!options.dense_out.empty()) {
    check_distinct_outputs({out, options.dense_out}, "gguf export");
    RunOptions r;
    r.out = options.dense_out;
    r.format = formats::Format::dense;
    r.output = options.output;
    r.method = "gguf-" + options.type.name;
    const Policy keep_all = Policy::standard(QuantSpec{}, false, {Rule::parse(".*=skip")});
    MethodTraits none;
    none.name = r.method;
    dense = std::make_unique<OutputSession>(model, make_plan(model, keep_all, none, r.format, false), r);
    options.dequantized = [&](const std::string& name, const std::vector<float>& y, std::vector<std::int64_t> shape) {
      dense->put_float(name, y.data(), std::move(shape));
    };
  }
  ExportReport rep = export_gguf(model, out, options);
  if (dense) dense->finish();
  return rep;
}

}  // namespace quant::gguf
