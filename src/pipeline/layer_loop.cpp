#include "quant/pipeline/layer_loop.h"

#include <algorithm>

#include "quant/core/error.h"
#include "quant/core/log.h"
#include "quant/methods/rtn.h"
#include "quant/model/weights.h"

namespace quant {

std::string PhaseTimer::summary() const {
  std::string s;
  for (const auto& [phase, secs] : seconds) s += fmt::format(" {} {:.1f}s;", phase, secs);
  return s;
}

namespace {

// A sparse layer's groups hold only the attention: its experts follow (Loop::moe_mlp).
std::vector<std::vector<LinearKind>> sub_groups(bool true_sequential, bool moe) {
  using K = LinearKind;
  if (moe) return true_sequential ? std::vector<std::vector<K>>{{K::q, K::k, K::v}, {K::o}} : std::vector<std::vector<K>>{{K::q, K::k, K::v, K::o}};
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
  const RunOptions& run;
  RtnMethod rtn{};  // MoE experts with too few calibration tokens (Hessian methods)
  LayerWeights spare{};  // the last layer done: its buffers take the next one (no fresh pages)
  // The largest |x| of each capture point's inputs in the current layer, for linears planned
  // with a static activation scale (llm-compressor's FP8 preset: input_scale = max|x| / 448).
  std::map<CapturePoint, float> input_amax{};
  // Per-tensor fp8 weights of fused siblings (q/k/v, gate/up): the magnitude their one shared
  // scale covers, by linear prefix (QuantSpec::tensor_amax).
  std::map<std::string, float> shared_amax{};

  // Records the shared magnitude of `linear`'s fused siblings (fused_siblings) when they are all
  // planned with per-tensor fp8 weights; `weight(s)` gives each one's current float weight.
  void share_tensor_scale(const LayerDesc& layer, const LinearDesc& linear, const std::function<const Mat&(const LinearDesc&)>& weight) {
    const LinearPlan& own = session.plan_for(linear);
    if (!own.quantize || !own.spec.per_tensor || shared_amax.count(linear.prefix)) return;
    const std::vector<const LinearDesc*> set = fused_siblings(layer, linear);
    if (set.size() < 2) return;
    for (const LinearDesc* d : set) {
      const LinearPlan& p = session.plan_for(*d);
      if (!p.quantize || !p.spec.per_tensor) return;
    }
    float amax = 0.0f;
    for (const LinearDesc* d : set) {
      const Mat& w = weight(*d);
      if (w.size()) amax = std::max(amax, w.cwiseAbs().maxCoeff());
    }
    for (const LinearDesc* d : set) shared_amax[d->prefix] = amax;
  }

  // Quantizes and writes one planned linear whose (transformed) weight is `w`; when `keep` is
  // set, leaves in `w` the weight later stages compute with. `by`: the method (default: the run's).
  void linear(const LinearDesc& d, Mat& w, const Vec& bias, const InputStats* stats, const nlohmann::json& extra, bool keep,
              const Method* by = nullptr) {
    const LinearPlan& plan = session.plan_for(d);
    const Method& m = by ? *by : method;
    QuantSpec spec = plan.spec;
    if (const auto s = shared_amax.find(d.prefix); spec.per_tensor && s != shared_amax.end()) spec.tensor_amax = s->second;
    QuantizedLinear r = timer.time("quantize", [&] { return m.quantize({d, w, spec, stats}); });
    if (extra.is_object()) {
      for (auto it = extra.begin(); it != extra.end(); ++it) r.extra[it.key()] = it.value();
    }
    if (traits.float_output) {
      session.put_linear_float(d, r.weight, bias);
      w = std::move(r.weight);
    } else {
      const float input_scale = plan.spec.static_act ? input_scale_of(d) : 0.0f;
      timer.time("pack + write", [&] { session.put_quantized(d, r.q, w, std::move(r.extra), bias.size() ? &bias : nullptr, input_scale); });
      if (keep) {
        Mat next = r.weight.size() ? std::move(r.weight) : r.q.dequantize();
        if (traits.round_to_source_dtype) round_to_dtype(next, dtype);
        w = std::move(next);
      }
    }
    done(d);
  }

  float input_scale_of(const LinearDesc& d) const {
    const auto it = d.layer >= 0 && !d.in_expert() ? input_amax.find(capture_point(d.kind)) : input_amax.end();
    if (it == input_amax.end()) fail<Error>("'{}': no calibration inputs for its static activation scale", d.prefix);
    return quant::static_input_scale(session.plan_for(d).spec.act, it->second);
  }

  // Whether a quantized linear reading capture point `p` of `layer` has a static input scale.
  bool static_at(const LayerDesc& layer, CapturePoint p) const {
    for (const LinearDesc& d : layer.linears) {
      if (!d.in_expert() && capture_point(d.kind) == p && session.plan_for(d).quantize && session.plan_for(d).spec.static_act) return true;
    }
    return false;
  }

  static std::int64_t tokens_of(const std::vector<Mat>& xs) {
    std::int64_t n = 0;
    for (const Mat& x : xs) n += x.rows();
    return n;
  }

  // The group width every quantized linear reading capture point `p` uses (0: they differ).
  std::int64_t common_group(const LayerDesc& layer, CapturePoint p, std::int64_t in) const {
    std::int64_t g = -1;
    for (const LinearDesc& d : layer.linears) {
      if (d.kind >= LinearKind::gate && layer.moe) continue;  // experts: statistics of their own
      if (capture_point(d.kind) != p || !session.plan_for(d).quantize) continue;
      const std::int64_t e = session.plan_for(d).spec.effective_group(in);
      if (g >= 0 && e != g) return 0;
      g = e;
    }
    return std::max<std::int64_t>(g, 0);
  }

  void decoder_layer(const LayerDesc& layer, LayerRunner& runner) {
    // A sparse layer's experts stream one at a time unless a layer transform needs them all (AWQ).
    const bool stream = layer.moe && !traits.transforms_layer;
    LayerWeights lw = timer.time("load weights", [&] { return load_layer(model, layer.index, !stream, std::move(spare)); });
    const bool whole_layer = traits.transforms_layer || !traits.true_sequential;
    std::map<CapturePoint, InputStats> stats;
    input_amax.clear();
    bool shared = false;  // the fused sets' per-tensor fp8 scales, from the weights as transformed
    LayerTransform transform;
    for (const auto& group : sub_groups(!whole_layer, layer.moe)) {
      std::vector<CapturePoint> points;
      for (LinearKind k : group) {
        const CapturePoint p = capture_point(k);
        const bool wanted = traits.transforms_layer || session.plan_for(layer.linear(k)).quantize;
        if (wanted && std::find(points.begin(), points.end(), p) == points.end()) points.push_back(p);
      }
      if (layer.moe && traits.transforms_layer) points.push_back(CapturePoint::mlp_in);  // the experts' float inputs
      // Inputs with the layer's current weights: earlier sub-groups are already quantized.
      std::map<CapturePoint, std::vector<Mat>> inputs;
      for (CapturePoint p : points) {
        const auto& xs = timer.time("forward", [&]() -> const std::vector<Mat>& { return runner.stage(p, lw); });
        const std::int64_t block = xs.empty() ? 0 : method.hessian_block(p, xs[0].cols(), tokens_of(xs), common_group(layer, p, xs[0].cols()));
        stats[p] = timer.time("statistics", [&] { return measure_inputs(traits.statistic, xs, block); });
        if (static_at(layer, p)) {
          float amax = 0.0f;
          for (const Mat& x : xs) amax = std::max(amax, x.size() ? x.cwiseAbs().maxCoeff() : 0.0f);
          input_amax[p] = amax;
        }
        if (traits.transforms_layer) inputs[p] = xs;
      }
      if (traits.transforms_layer) {
        LayerContext ctx{model.config(), layer, runner.rope(), {}, {}, inputs};
        for (LinearKind k : kAllLinearKinds) {
          if (layer.moe && k >= LinearKind::gate) break;
          const LinearPlan& p = session.plan_for(layer.linear(k));
          ctx.planned[static_cast<int>(k)] = p.quantize;
          ctx.specs[static_cast<int>(k)] = p.spec;
        }
        for (const LinearDesc& d : layer.linears) {
          ctx.planned_all.push_back(session.plan_for(d).quantize);
          ctx.specs_all.push_back(session.plan_for(d).spec);
        }
        ctx.moe_min_tokens = run.moe_calibration == "all" ? 0 : run.moe_min_tokens;
        transform = timer.time("transform", [&] { return method.transform_layer(ctx, lw, stats); });
        for (const auto& [p, scale] : transform.input_scales) {  // static scales of the inputs as transformed: x / s
          if (!input_amax.count(p) || !inputs.count(p)) continue;
          const Eigen::RowVectorXf inv = scale.cwiseInverse().transpose();
          float amax = 0.0f;
          for (const Mat& x : inputs.at(p)) {
            for (Eigen::Index t = 0; t < x.rows(); ++t) amax = std::max(amax, x.row(t).cwiseProduct(inv).cwiseAbs().maxCoeff());
          }
          input_amax[p] = amax;
        }
      }
      if (!shared) {  // before the layer's first linear is quantized
        for (const LinearDesc& d : layer.linears) {
          if (!d.in_expert()) share_tensor_scale(layer, d, [&](const LinearDesc& s) -> const Mat& { return lw.linear(s.kind); });
        }
        shared = true;
      }
      for (LinearKind k : group) {
        const LinearDesc& d = layer.linear(k);
        if (!session.plan_for(d).quantize) continue;
        const auto e = transform.extra.find(k);
        linear(d, lw.linear(k), lw.b[static_cast<int>(k)], &stats.at(capture_point(k)),
               e == transform.extra.end() ? nlohmann::json() : e->second, true);
      }
    }
    std::vector<Mat> moe_out;
    if (layer.moe) {
      const auto scaled = transform.input_scales.find(CapturePoint::mlp_in);
      moe_out = moe_mlp(layer, lw, runner, scaled == transform.input_scales.end() ? nullptr : &scaled->second, transform.extra_by_prefix, stream);
    }
    for (const auto& [name, v] : transform.changed) session.put_float(name, v.data(), {static_cast<std::int64_t>(v.size())});
    for (const auto& [name, m] : transform.changed_matrices) session.put_float(name, m.data(), {m.rows(), m.cols()});
    // True sequential: the cached stages already saw the quantized weights; otherwise every
    // input was captured with the float layer and the quantized layer runs afresh.
    timer.time("forward", [&] {
      if (stream) runner.finish_with(lw, moe_out);
      else if (whole_layer) runner.advance(lw);
      else runner.finish(lw);
    });
    timer.time("checkpoint", [&] { session.checkpoint(layer.index, runner.hidden()); });
    spare = std::move(lw);
    log::debug("layer {} done", layer.index);
  }

  // A sparse layer's experts, after its attention: each expert's statistics from the tokens
  // routed to it (run.moe_calibration "all": from every token), gate/up then down in
  // true-sequential order; an expert under run.moe_min_tokens routed tokens is quantized without
  // statistics. Each expert's linears report its token count (`moe_tokens`).
  // `input_scale`: a layer transform divided the MLP's inputs by it (AWQ's folded norm) after
  // they were captured; `transform_extra`: its per-expert report entries.
  // `stream`: each expert's weights are loaded here and dropped once its share of the layer's
  // output (returned, one matrix per sample) is added, so one expert is resident at a time.
  std::vector<Mat> moe_mlp(const LayerDesc& layer, LayerWeights& lw, LayerRunner& runner, const Vec* input_scale,
                           const std::map<std::string, nlohmann::json>& transform_extra, bool stream) {
    const auto& captured = timer.time("forward", [&]() -> const std::vector<Mat>& { return runner.stage(CapturePoint::mlp_in, lw); });
    std::vector<Mat> rescaled;
    if (input_scale) {
      for (const Mat& x : captured) rescaled.push_back(x * input_scale->cwiseInverse().asDiagonal());
    }
    const std::vector<Mat>& xs = input_scale ? rescaled : captured;
    std::vector<Routing> routes(xs.size());
    timer.time("forward", [&] {
      for (std::size_t i = 0; i < xs.size(); ++i) routes[i] = route_tokens(model.config(), lw, xs[i]);
    });
    std::vector<std::int64_t> counts;
    int n_fallback = 0;
    std::vector<Mat> out;
    if (stream) {
      for (const Mat& x : xs) out.push_back(Mat::Zero(x.rows(), x.cols()));
    }
    for (int e = 0; e < layer.n_experts + (layer.has_shared_expert() ? 1 : 0); ++e) {
      const int id = e < layer.n_experts ? e : -1;  // -1: the shared expert, which sees every token
      std::int64_t routed = id < 0 ? runner.n_tokens() : 0;
      if (id >= 0) {
        for (const auto& r : routes) routed += static_cast<std::int64_t>(r.rows[static_cast<std::size_t>(id)].size());
        counts.push_back(routed);
      }
      ExpertWeights& ew = id < 0 ? lw.shared : lw.experts[static_cast<std::size_t>(id)];
      if (stream) {
        timer.time("load weights", [&] {
          for (LinearKind k : {LinearKind::gate, LinearKind::up, LinearKind::down}) ew.linear(k) = load_linear(model, layer.expert(id, k));
        });
      }
      bool planned = false;
      for (LinearKind k : {LinearKind::gate, LinearKind::up, LinearKind::down}) planned = planned || session.plan_for(layer.expert(id, k)).quantize;
      if (planned) quantize_expert(layer, ew, id, routed, xs, routes, transform_extra, n_fallback);
      if (stream) {
        timer.time("forward", [&] { add_expert_output(lw, ew, id, xs, routes, out); });
        ew = ExpertWeights{};
      }
    }
    if (!counts.empty()) {
      std::vector<std::int64_t> sorted = counts;
      std::sort(sorted.begin(), sorted.end());
      log::info("layer {}: calibration tokens per expert min {} median {} max {}{}", layer.index, sorted.front(), sorted[sorted.size() / 2],
                sorted.back(), n_fallback ? fmt::format("; {} expert(s) under --moe-min-tokens {} quantized without statistics", n_fallback, run.moe_min_tokens) : "");
    }
    return out;
  }

  // Adds expert `id`'s weighted output on its routed rows to `out` (the shared expert: every row,
  // times sigmoid of its gate), as moe_block does.
  static void add_expert_output(const LayerWeights& lw, const ExpertWeights& ew, int id, const std::vector<Mat>& xs,
                                const std::vector<Routing>& routes, std::vector<Mat>& out) {
    Mat y, g;
    for (std::size_t i = 0; i < xs.size(); ++i) {
      if (id < 0) {
        linear_forward(xs[i], lw.shared_gate, Vec(), g);
        linear_forward(expert_activation(ew, xs[i]), ew.down, Vec(), y);
        for (Eigen::Index t = 0; t < y.rows(); ++t) out[i].row(t) += y.row(t) * (1.0f / (1.0f + std::exp(-g(t, 0))));
        continue;
      }
      const auto& rows = routes[i].rows[static_cast<std::size_t>(id)];
      if (rows.empty()) continue;
      linear_forward(expert_activation(ew, gather_rows(xs[i], rows)), ew.down, Vec(), y);
      const auto& w = routes[i].weights[static_cast<std::size_t>(id)];
      for (std::size_t r = 0; r < rows.size(); ++r) out[i].row(rows[r]) += y.row(static_cast<Eigen::Index>(r)) * w[r];
    }
  }

  // Quantizes expert `id`'s planned linears: gate/up from the statistics of its inputs, then
  // down from its activation recomputed with the quantized gate/up.
  void quantize_expert(const LayerDesc& layer, ExpertWeights& ew, int id, std::int64_t routed, const std::vector<Mat>& xs,
                       const std::vector<Routing>& routes, const std::map<std::string, nlohmann::json>& transform_extra,
                       int& n_fallback) {
    const bool all = run.moe_calibration == "all";
    const Method& fallback = traits.statistic == Statistic::hessian ? static_cast<const Method&>(rtn) : method;
    const bool full = id < 0 || all;
    const bool few = !full && routed < run.moe_min_tokens;
    n_fallback += few ? 1 : 0;
    std::vector<Mat> routed_xs;
    if (!full && !few) {
      for (std::size_t i = 0; i < xs.size(); ++i) {
        if (!routes[i].rows[static_cast<std::size_t>(id)].empty()) routed_xs.push_back(gather_rows(xs[i], routes[i].rows[static_cast<std::size_t>(id)]));
      }
    }
    const std::vector<Mat>& in = full ? xs : routed_xs;
    share_tensor_scale(layer, layer.expert(id, LinearKind::gate), [&](const LinearDesc& s) -> const Mat& { return ew.linear(s.kind); });
    const nlohmann::json moe_extra = {{"moe_tokens", routed}, {"moe_statistics", few ? "none" : full ? "all tokens" : "routed tokens"}};
    const auto quantize = [&](LinearKind k, const std::vector<Mat>& inputs) {
      const LinearDesc& d = layer.expert(id, k);
      if (!session.plan_for(d).quantize) return;
      nlohmann::json extra = moe_extra;
      if (const auto t = transform_extra.find(d.prefix); t != transform_extra.end()) extra.update(t->second);
      if (few) return linear(d, ew.linear(k), Vec(), nullptr, extra, true, &fallback);
      const InputStats st = timer.time("statistics", [&] { return measure_inputs(traits.statistic, inputs); });
      linear(d, ew.linear(k), Vec(), &st, extra, true);
    };
    quantize(LinearKind::gate, in);
    quantize(LinearKind::up, in);
    std::vector<Mat> acts;
    if (!few) {
      timer.time("forward", [&] {
        for (const Mat& x : in) acts.push_back(expert_activation(ew, x));
      });
    }
    quantize(LinearKind::down, acts);
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

void check_moe_support(const Model& model, const MethodTraits& traits) {
  if (model.config().is_moe() && traits.transforms_layer && !traits.moe_layers) {
    fail<UsageError>("{}: {}'s layer transform (SmoothQuant, --smooth) does not support sparse (MoE) layers yet ({}); quantize without it",
                     model.dir().string(), traits.name, model.config().model_type);
  }
}

void observe_float_model(const Model& model, const std::vector<std::vector<std::int32_t>>& samples, bool head,
                         const FloatVisitor& visit) {
  LayerRunner runner(model, samples);
  for (const auto& layer : model.layout().layers) {
    const LayerWeights lw = load_layer(model, layer.index);
    for (CapturePoint p : {CapturePoint::attn_in, CapturePoint::o_in, CapturePoint::mlp_in, CapturePoint::down_in}) {
      if (p == CapturePoint::down_in && layer.moe) break;  // the experts' inputs depend on the routing
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
  Loop loop{model, session, method, method.traits(), timer, done, model.store().get(model.layout().embed).dtype, session.options()};
  check_moe_support(model, loop.traits);
  // A static activation scheme calibrates its input scales even under an uncalibrated method.
  const bool static_act = std::any_of(session.plan().linears.begin(), session.plan().linears.end(),
                                      [](const LinearPlan& p) { return p.quantize && p.spec.static_act; });
  if (!loop.traits.calibrated && !static_act) {
    for (const auto& p : session.plan().linears) {
      if (!p.quantize) continue;
      if (p.desc->layer >= 0) {  // per-tensor fp8: its fused siblings, read once for their largest weight
        std::map<std::string, Mat> ws;
        loop.share_tensor_scale(model.layout().layers.at(static_cast<std::size_t>(p.desc->layer)), *p.desc,
                                [&](const LinearDesc& s) -> const Mat& { return ws[s.prefix] = load_linear(model, s); });
      }
      Mat w = load_linear(model, *p.desc);
      loop.linear(*p.desc, w, Vec(), nullptr, nlohmann::json(), false);
    }
    return;
  }
  if (samples.empty()) {
    fail<UsageError>("{} needs calibration samples{}", loop.traits.name, loop.traits.calibrated ? "" : " for its static activation scales");
  }
  LayerRunner runner = timer.time("embed", [&] { return LayerRunner(model, samples); });
  const int layers_done = resume_layers(session, runner, samples);
  for (const auto& layer : model.layout().layers) {
    if (layer.index >= layers_done) loop.decoder_layer(layer, runner);
  }
  loop.spare = LayerWeights{};  // no layer follows
  loop.head(runner);
}

QuantizeReport quantize_model(const Model& model, const Plan& plan, const Method& method, RunOptions run,
                              const std::vector<std::vector<std::int32_t>>& samples, const StepProgress& progress) {
  const MethodTraits& t = method.traits();
  check_moe_support(model, t);
  if (model.config().is_moe() && t.calibrated) {
    if (run.moe_calibration != "routed" && run.moe_calibration != "all") {
      fail<UsageError>("--moe-calibration must be routed or all, got '{}'", run.moe_calibration);
    }
    if (run.moe_min_tokens < 0) fail<UsageError>("--moe-min-tokens must be 0 or more, got {}", run.moe_min_tokens);
  }
  run.method = t.name;
  run.method_config = method.config();
  run.fingerprint_extra = method.fingerprint();
  if (model.config().is_moe() && t.calibrated) {
    run.fingerprint_extra["moe_calibration"] = run.moe_calibration;
    run.fingerprint_extra["moe_min_tokens"] = run.moe_min_tokens;
  }
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
