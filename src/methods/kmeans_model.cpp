// k-means over the model: per-linear sensitivity from calibration inputs (diag of the layer
// Hessian, via the shared layer-sequential loop), or straight from the checkpoint unweighted.
#include <map>

#include "quant/log.h"
#include "quant/methods/kmeans.h"
#include "quant/methods/sequential.h"
#include "quant/weights.h"

namespace quant {

QuantizeReport kmeans_quantize_model(const Model& model, const Policy& policy, const RunOptions& run,
                                     const KmeansOptions& options, const std::vector<std::vector<std::int32_t>>& samples,
                                     const StepProgress& progress) {
  const KmeansWeighting weighting = samples.empty() ? KmeansWeighting::none : KmeansWeighting::hessian;
  RunOptions r = run;
  r.method = "kmeans";
  r.method_config = {{"weighting", kmeans_weighting_name(weighting)},
                     {"solver", options.solver == KmeansSolver::exact ? "exact" : "lloyd"},
                     {"outlier_fraction", options.outliers}};
  r.fingerprint_extra = {{"seed", options.seed}};
  OutputSession session(model, policy, r);
  const std::int64_t total = session.n_to_quantize();
  std::int64_t done = 0;
  const DType dtype = model.store().get(model.layout().embed).dtype;
  PhaseTimer timer;

  auto quantize = [&](const LinearDesc& d, const LinearPlan& plan, Mat& w, const std::vector<float>& h) {
    check_finite(w, d.weight_name());
    const QuantizedMatrix q = timer.time("cluster", [&] { return kmeans_quantize(w, h, plan.spec, options); });
    Mat deq = q.dequantize();
    nlohmann::json extra = {{"weighted_error", weighted_error(w, deq, h)}, {"outliers", q.n_outliers()}};
    timer.time("pack + write", [&] { session.put_quantized(d, q, w, std::move(extra)); });
    round_to_dtype(deq, dtype);
    w = std::move(deq);
    if (progress) progress(++done, total, d.prefix);
  };

  if (weighting == KmeansWeighting::none) {
    const std::vector<float> none;
    for (const auto& p : session.plan()) {
      if (!p.quantize) continue;
      Mat w = load_linear(model, *p.desc);
      quantize(*p.desc, p, w, none);
    }
  } else {
    std::map<int, std::vector<float>> energy;
    SequentialVisitor visitor;
    visitor.on_inputs = [&](int p, const std::vector<Mat>& xs) {
      energy[p] = timer.time("sensitivity", [&] { return mean_square_inputs(xs); });
    };
    visitor.on_linear = [&](const LinearDesc& d, const LinearPlan& plan, Mat& w) {
      quantize(d, plan, w, energy.at(input_key(d)));
    };
    run_sequential(model, session, samples, true, visitor, timer);
  }
  QuantizeReport report = timer.time("finish", [&] { return session.finish(); });
  log::info("kmeans time:{}", timer.summary());
  return report;
}

}  // namespace quant
