// The calibrated steps of a GGUF export: the importance statistic (imatrix) and AWQ's scaling.
#include "quant/pipeline/gguf_job.h"

#include "quant/core/log.h"
#include "quant/methods/awq.h"
#include "quant/model/calibration.h"
#include "quant/model/weights.h"
#include "quant/pipeline/layer_loop.h"
#include "quant/pipeline/plan.h"

namespace quant::gguf {

std::map<std::string, std::vector<float>> collect_importance(const Model& model,
                                                             const std::vector<std::vector<std::int32_t>>& samples) {
  std::map<std::string, std::vector<float>> imp;
  observe_float_model(model, samples, true, [&](const LayerDesc* layer, const LayerWeights*, CapturePoint p, const std::vector<Mat>& xs) {
    const std::vector<float> h = mean_square_inputs(xs);
    if (!layer) {
      imp[model.layout().tied ? "token_embd.weight" : "output.weight"] = h;
      return;
    }
    for (LinearKind k : kAllLinearKinds) {
      if (capture_point(k) == p) imp[gguf_linear_name(layer->linear(k))] = h;
    }
  });
  return imp;
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
