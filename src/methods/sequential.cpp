#include "quant/methods/sequential.h"

#include <algorithm>

#include "quant/log.h"
#include "quant/weights.h"

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

}  // namespace

int resume_layers(OutputSession& session, LayerRunner& runner, const std::vector<std::vector<std::int32_t>>& samples) {
  session.enable_resume(samples);
  std::vector<Mat> hidden;
  const int done = session.resume(hidden);
  if (done > 0) runner.set_hidden(std::move(hidden), done);
  return done;
}

void run_sequential(const Model& model, OutputSession& session, const std::vector<std::vector<std::int32_t>>& samples,
                    bool true_sequential, const SequentialVisitor& visitor, PhaseTimer& timer) {
  LayerRunner runner = timer.time("embed", [&] { return LayerRunner(model, samples); });
  const int done = resume_layers(session, runner, samples);
  for (const auto& layer : model.layout().layers) {
    if (layer.index < done) continue;
    LayerWeights lw = timer.time("load weights", [&] { return load_layer(model, layer.index); });
    for (const auto& group : sub_groups(true_sequential)) {
      std::vector<CapturePoint> points;
      for (LinearKind k : group) {
        const CapturePoint p = capture_point(k);
        if (session.plan_for(layer.linear(k)).quantize && std::find(points.begin(), points.end(), p) == points.end()) {
          points.push_back(p);
        }
      }
      // Inputs with the layer's current weights: earlier sub-groups are already quantized.
      for (CapturePoint p : points) {
        const auto& xs = timer.time("forward", [&]() -> const std::vector<Mat>& { return runner.stage(p, lw); });
        visitor.on_inputs(static_cast<int>(p), xs);
      }
      for (LinearKind k : group) {
        const LinearDesc& d = layer.linear(k);
        const LinearPlan& plan = session.plan_for(d);
        if (plan.quantize) visitor.on_linear(d, plan, lw.linear(k));
      }
    }
    // True sequential: the cached stages already saw the quantized weights; otherwise every
    // input was captured with the float layer and the quantized layer runs afresh.
    timer.time("forward", [&] {
      if (true_sequential) runner.finish(lw);
      else runner.advance(lw);
    });
    timer.time("checkpoint", [&] { session.checkpoint(layer.index, runner.hidden()); });
    log::debug("layer {} done", layer.index);
  }

  const LinearDesc& head = model.layout().lm_head;
  if (!model.layout().tied && session.plan_for(head).quantize) {
    const Vec norm = load_vector(model, model.layout().final_norm);
    std::vector<Mat> xs(runner.hidden().size());
    for (std::size_t i = 0; i < xs.size(); ++i) rms_norm(runner.hidden()[i], norm, model.config().rms_norm_eps, xs[i]);
    visitor.on_inputs(kHeadInputs, xs);
    Mat w = load_linear(model, head);
    visitor.on_linear(head, session.plan_for(head), w);
  }
}

}  // namespace quant
