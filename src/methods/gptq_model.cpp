// Layer-sequential GPTQ: capture a decoder layer's inputs for every calibration sample,
// quantize its linears sub-group by sub-group (true sequential: each sub-group sees the inputs
// produced by the already-quantized ones), then run the quantized layer to produce the next
// layer's inputs, as the reference implementation does.
#include <algorithm>
#include <chrono>
#include <map>

#include "quant/error.h"
#include "quant/log.h"
#include "quant/methods/gptq.h"
#include "quant/weights.h"

namespace quant {

namespace {

// Wall time per phase, for "where does the time go".
struct PhaseTimer {
  std::map<std::string, double> seconds;
  template <typename F>
  auto time(const std::string& phase, F&& f) {
    const auto t0 = std::chrono::steady_clock::now();
    if constexpr (std::is_void_v<decltype(f())>) {
      f();
      seconds[phase] += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    } else {
      auto r = f();
      seconds[phase] += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      return r;
    }
  }
};

// Rounds weights to the checkpoint's storage dtype, so calibration sees what inference will.
void round_to_dtype(Mat& w, DType dtype) {
  if (dtype == DType::F16) w = w.unaryExpr([](float x) { return f16_to_f32(f32_to_f16(x)); });
  if (dtype == DType::BF16) w = w.unaryExpr([](float x) { return bf16_to_f32(f32_to_bf16(x)); });
}

std::vector<std::vector<LinearKind>> sub_groups(bool true_sequential) {
  using K = LinearKind;
  if (!true_sequential) return {{K::q, K::k, K::v, K::o, K::gate, K::up, K::down}};
  return {{K::q, K::k, K::v}, {K::o}, {K::gate, K::up}, {K::down}};
}

struct LinearJob {
  const LinearDesc& desc;
  const LinearPlan& plan;
  Mat& weight;  // replaced by the dequantized weight
  const Mat& H;
  const GptqHessian& prepared;
};

void quantize_one(OutputSession& session, const LinearJob& j, const GptqOptions& o, DType dtype, PhaseTimer& timer) {
  const Mat W = j.weight;
  check_finite(W, j.desc.weight_name());
  GptqResult res = timer.time("gptq solve", [&] { return gptq_quantize(W, j.prepared, j.plan.spec, o); });
  Mat deq = res.q.dequantize();
  nlohmann::json extra = timer.time("loss report", [&] {
    const Mat rtn = quantize_rtn(W, j.plan.spec).dequantize();
    return nlohmann::json{{"obs_loss", res.obs_loss},
                          {"gptq_loss", hessian_loss(W - deq, j.H)},
                          {"rtn_loss", hessian_loss(W - rtn, j.H)},
                          {"damp", j.prepared.damp},
                          {"damp_retries", j.prepared.retries}};
  });
  log::debug("{}: H-loss gptq {:.5g} rtn {:.5g}", j.desc.prefix, extra["gptq_loss"].get<double>(), extra["rtn_loss"].get<double>());
  timer.time("pack + write", [&] { session.put_quantized(j.desc, res.q, W, std::move(extra)); });
  round_to_dtype(deq, dtype);
  j.weight = std::move(deq);
}

}  // namespace

QuantizeReport gptq_quantize_model(const Model& model, const Policy& policy, const RunOptions& run,
                                   const GptqOptions& o, const std::vector<std::vector<std::int32_t>>& samples,
                                   const StepProgress& progress) {
  if (run.format == formats::Format::awq && o.act_order) {
    fail<UsageError>("the awq format cannot store act-order (desc_act) permutations; use --format gptq or drop --act-order");
  }
  RunOptions r = run;
  r.method = "gptq";
  r.method_config = {{"desc_act", o.act_order}, {"static_groups", o.static_groups},
                     {"true_sequential", o.true_sequential}, {"damp_percent", o.damp}};
  OutputSession session(model, policy, r);
  PhaseTimer timer;
  LayerRunner runner = timer.time("embed", [&] { return LayerRunner(model, samples); });
  const std::int64_t total = session.n_to_quantize();
  std::int64_t done = 0;
  const DType dtype = model.store().get(model.layout().embed).dtype;

  for (const auto& layer : model.layout().layers) {
    LayerWeights lw = timer.time("load weights", [&] { return load_layer(model, layer.index); });
    for (const auto& group : sub_groups(o.true_sequential)) {
      std::vector<CapturePoint> points;
      for (LinearKind k : group) {
        const CapturePoint p = capture_point(k);
        if (session.plan_for(layer.linear(k)).quantize && std::find(points.begin(), points.end(), p) == points.end()) {
          points.push_back(p);
        }
      }
      if (points.empty()) continue;
      // Inputs with the layer's current weights: earlier sub-groups are already quantized.
      std::map<CapturePoint, Mat> hessians;
      for (CapturePoint p : points) {
        const auto& xs = timer.time("forward", [&]() -> const std::vector<Mat>& { return runner.stage(p, lw); });
        hessians.emplace(p, timer.time("hessian", [&] { return hessian(xs); }));
      }
      std::map<CapturePoint, GptqHessian> prepared;
      for (LinearKind k : group) {
        const LinearDesc& d = layer.linear(k);
        const LinearPlan& plan = session.plan_for(d);
        if (!plan.quantize) continue;
        const CapturePoint pt = capture_point(k);
        const Mat& H = hessians.at(pt);
        if (!prepared.count(pt)) prepared.emplace(pt, timer.time("cholesky", [&] { return prepare_hessian(H, o, d.prefix); }));
        quantize_one(session, {d, plan, lw.linear(k), H, prepared.at(pt)}, o, dtype, timer);
        if (progress) progress(++done, total, d.prefix);
      }
    }
    // True sequential: the cached stages already saw the quantized weights; otherwise every
    // input was captured with the float layer and the quantized layer runs afresh.
    timer.time("forward", [&] {
      if (o.true_sequential) runner.finish(lw);
      else runner.advance(lw);
    });
    log::debug("layer {} done", layer.index);
  }

  const LinearDesc& head = model.layout().lm_head;
  if (!model.layout().tied && session.plan_for(head).quantize) {
    // lm_head's inputs: the final norm of the last layer's outputs.
    const Vec norm = load_vector(model, model.layout().final_norm);
    Mat H = Mat::Zero(head.in, head.in);
    for (const Mat& h : runner.hidden()) {
      Mat x;
      rms_norm(h, norm, model.config().rms_norm_eps, x);
      accumulate_gram(H, x);
    }
    H *= 2.0f / static_cast<float>(runner.n_tokens());
    Mat w = load_linear(model, head);
    const GptqHessian prep = prepare_hessian(H, o, head.prefix);
    quantize_one(session, {head, session.plan_for(head), w, H, prep}, o, dtype, timer);
    if (progress) progress(++done, total, head.prefix);
  }
  QuantizeReport report = timer.time("finish", [&] { return session.finish(); });
  std::string breakdown;
  for (const auto& [phase, secs] : timer.seconds) breakdown += fmt::format(" {} {:.1f}s;", phase, secs);
  log::info("gptq time:{}", breakdown);
  return report;
}

}  // namespace quant
