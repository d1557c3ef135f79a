#include "quant/pipeline/layer_loop.h"

#include <algorithm>

#include "quant/core/error.h"
#include "quant/core/log.h"
#include "quant/model/weights.h"

namespace quant {

std::string PhaseTimer::summary() const {
  std::string s;
  for (const auto& [phase, secs] : seconds) s += fmt::format(" {} {:.1f}s;", phase, secs);
  return s;
}

namespace {

std::vector<std::vector<LinearKind>> sub_groups(bool true_sequential) {
  using K = LinearKind;
  if (!true_sequential) return {{K::q, K::k, K::v, K::o, K::gate, K::up, K::down}};
  return {{K::q, K::k, K::v}, {K::o}, {K::gate, K::up}, {K::down}};
}

struct Loop {
  const Model& model;
  OutputSession& session;
  const Method& method;
  const MethodTraits& traits;
  PhaseTimer& timer;
  const std::function<void(const LinearDesc&)>& done;
  DType dtype;  // the checkpoint's weight dtype (inference computes in it)

  // Quantizes and writes one planned linear whose (transformed) weight is `w`; when `keep` is
  // set, leaves in `w` the weight later stages compute with.
  void linear(const LinearDesc& d, Mat& w, const Vec& bias, const InputStats* stats, const nlohmann::json& extra, bool keep) {
    const LinearPlan& plan = session.plan_for(d);
    QuantizedLinear r = timer.time("quantize", [&] { return method.quantize({d, w, plan.spec, stats}); });
    if (extra.is_object()) {
      for (auto it = extra.begin(); it != extra.end(); ++it) r.extra[it.key()] = it.value();
    }
    if (traits.float_output) {
      session.put_linear_float(d, r.weight, bias);
      w = std::move(r.weight);
    } else {
      timer.time("pack + write", [&] { session.put_quantized(d, r.q, w, std::move(r.extra), bias.size() ? &bias : nullptr); });
      if (keep) {
        Mat next = r.weight.size() ? std::move(r.weight) : r.q.dequantize();
        if (traits.round_to_source_dtype) round_to_dtype(next, dtype);
        w = std::move(next);
      }
    }
    done(d);
  }

  void decoder_layer(const LayerDesc& layer, LayerRunner& runner) {
    LayerWeights lw = timer.time("load weights", [&] { return load_layer(model, layer.index); });
    const bool whole_layer = traits.transforms_layer || !traits.true_sequential;
    std::map<CapturePoint, InputStats> stats;
    LayerTransform transform;
    for (const auto& group : sub_groups(!whole_layer)) {
      std::vector<CapturePoint> points;
      for (LinearKind k : group) {
        const CapturePoint p = capture_point(k);
        const bool wanted = traits.transforms_layer || session.plan_for(layer.linear(k)).quantize;
        if (wanted && std::find(points.begin(), points.end(), p) == points.end()) points.push_back(p);
      }
      // Inputs with the layer's current weights: earlier sub-groups are already quantized.
      std::map<CapturePoint, std::vector<Mat>> inputs;
      for (CapturePoint p : points) {
        const auto& xs = timer.time("forward", [&]() -> const std::vector<Mat>& { return runner.stage(p, lw); });
        stats[p] = timer.time("statistics", [&] { return measure_inputs(traits.statistic, xs); });
        if (traits.transforms_layer) inputs[p] = xs;
      }
      if (traits.transforms_layer) {
        LayerContext ctx{model.config(), layer, runner.rope(), {}, {}, inputs};
        for (LinearKind k : kAllLinearKinds) {
          const LinearPlan& p = session.plan_for(layer.linear(k));
          ctx.planned[static_cast<int>(k)] = p.quantize;
          ctx.specs[static_cast<int>(k)] = p.spec;
        }
        transform = timer.time("transform", [&] { return method.transform_layer(ctx, lw, stats); });
      }
      for (LinearKind k : group) {
        const LinearDesc& d = layer.linear(k);
        if (!session.plan_for(d).quantize) continue;
        const auto e = transform.extra.find(k);
        linear(d, lw.linear(k), lw.b[static_cast<int>(k)], &stats.at(capture_point(k)),
               e == transform.extra.end() ? nlohmann::json() : e->second, true);
      }
    }
    for (const auto& [name, v] : transform.changed) session.put_float(name, v.data(), {static_cast<std::int64_t>(v.size())});
    // True sequential: the cached stages already saw the quantized weights; otherwise every
    // input was captured with the float layer and the quantized layer runs afresh.
    timer.time("forward", [&] {
      if (whole_layer) runner.advance(lw);
      else runner.finish(lw);
    });
    timer.time("checkpoint", [&] { session.checkpoint(layer.index, runner.hidden()); });
    log::debug("layer {} done", layer.index);
  }

  void head(const LayerRunner& runner) {
    const LinearDesc& d = model.layout().lm_head;
    if (model.layout().tied || !session.plan_for(d).quantize || traits.float_output) return;
    const Vec norm = load_vector(model, model.layout().final_norm);
    std::vector<Mat> xs(runner.hidden().size());
    for (std::size_t i = 0; i < xs.size(); ++i) apply_norm(model.config(), runner.hidden()[i], norm, xs[i]);
    const InputStats st = measure_inputs(traits.statistic, xs);
    Mat w = load_linear(model, d);
    linear(d, w, Vec(), &st, nlohmann::json(), false);
  }
};

}  // namespace

void observe_float_model(const Model& model, const std::vector<std::vector<std::int32_t>>& samples, bool head,
                         const FloatVisitor& visit) {
  LayerRunner runner(model, samples);
  for (const auto& layer : model.layout().layers) {
    const LayerWeights lw = load_layer(model, layer.index);
    for (CapturePoint p : {CapturePoint::attn_in, CapturePoint::o_in, CapturePoint::mlp_in, CapturePoint::down_in}) {
      visit(&layer, &lw, p, runner.stage(p, lw));
    }
    runner.finish(lw);
  }
  if (!head) return;
  const Vec norm = load_vector(model, model.layout().final_norm);
  std::vector<Mat> xs(runner.hidden().size());
  for (std::size_t i = 0; i < xs.size(); ++i) apply_norm(model.config(), runner.hidden()[i], norm, xs[i]);
  visit(nullptr, nullptr, CapturePoint::attn_in, xs);
}

int resume_layers(OutputSession& session, LayerRunner& runner, const std::vector<std::vector<std::int32_t>>& samples) {
  session.enable_resume(samples);
  std::vector<Mat> hidden;
  const int done = session.resume(hidden);
  if (done > 0) runner.set_hidden(std::move(hidden), done);
  return done;
}

void run_layer_loop(const Model& model, OutputSession& session, const Method& method,
                    const std::vector<std::vector<std::int32_t>>& samples,
                    const std::function<void(const LinearDesc&)>& done, PhaseTimer& timer) {
  Loop loop{model, session, method, method.traits(), timer, done, model.store().get(model.layout().embed).dtype};
  if (!loop.traits.calibrated) {
    for (const auto& p : session.plan().linears) {
      if (!p.quantize) continue;
      Mat w = load_linear(model, *p.desc);
      loop.linear(*p.desc, w, Vec(), nullptr, nlohmann::json(), false);
    }
    return;
  }
  if (samples.empty()) fail<UsageError>("{} needs calibration samples", loop.traits.name);
  LayerRunner runner = timer.time("embed", [&] { return LayerRunner(model, samples); });
  const int layers_done = resume_layers(session, runner, samples);
  for (const auto& layer : model.layout().layers) {
    if (layer.index >= layers_done) loop.decoder_layer(layer, runner);
  }
  loop.head(runner);
}

QuantizeReport quantize_model(const Model& model, const Plan& plan, const Method& method, RunOptions run,
                              const std::vector<std::vector<std::int32_t>>& samples, const StepProgress& progress) {
  const MethodTraits& t = method.traits();
  run.method = t.name;
  run.method_config = method.config();
  run.fingerprint_extra = method.fingerprint();
  OutputSession session(model, plan, run);
  PhaseTimer timer;
  const std::int64_t total = session.n_to_quantize();
  std::int64_t n = 0;
  run_layer_loop(model, session, method, samples, [&](const LinearDesc& d) {
    if (progress) progress(++n, total, d.prefix);
  }, timer);
  QuantizeReport report = timer.time("finish", [&] { return session.finish(); });
  log::info("{} time:{}", t.name, timer.summary());
  return report;
}

}  // namespace quant
