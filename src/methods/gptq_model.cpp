// Layer-sequential GPTQ: capture a decoder layer's inputs for every calibration sample,
// quantize its linears sub-group by sub-group (true sequential: each sub-group sees the inputs
// produced by the already-quantized ones), then run the quantized layer to produce the next
// layer's inputs, as the reference implementation does.
#include <algorithm>
#include <map>

#include "quant/error.h"
#include "quant/log.h"
#include "quant/methods/gptq.h"
#include "quant/methods/sequential.h"
#include "quant/weights.h"

namespace quant {

namespace {

struct LinearJob {
  const LinearDesc& desc;
  const LinearPlan& plan;
  Mat& weight;  // replaced by the dequantized weight
  const Mat& H;
  const GptqHessian& prepared;
};

// tr(ΔW H ΔWᵀ) for the report from at most 256 evenly spaced rows, scaled to all rows (exact
// for up to 256 rows): the full product costs as much as the GPTQ solve on wide layers.
double report_loss(const Mat& dW, const Mat& H) {
  const Eigen::Index rows = dW.rows(), step = (rows + 255) / 256;
  if (step <= 1) return hessian_loss(dW, H);
  Mat sub((rows + step - 1) / step, dW.cols());
  for (Eigen::Index r = 0, i = 0; r < rows; r += step, ++i) sub.row(i) = dW.row(r);
  return hessian_loss(sub, H) * static_cast<double>(rows) / static_cast<double>(sub.rows());
}

void quantize_one(OutputSession& session, const LinearJob& j, const GptqOptions& o, DType dtype, PhaseTimer& timer) {
  const Mat W = j.weight;
  check_finite(W, j.desc.weight_name());
  GptqResult res = timer.time("gptq solve", [&] {
    try {
      return gptq_quantize(W, j.prepared, j.plan.spec, o);
    } catch (const InputError& e) {
      fail("{}: {}", j.desc.weight_name(), e.what());
    }
  });
  Mat deq = res.q.dequantize();
  nlohmann::json extra = timer.time("loss report", [&] {
    const Mat rtn = quantize_rtn(W, j.plan.spec).dequantize();
    return nlohmann::json{{"obs_loss", res.obs_loss},
                          {"gptq_loss", report_loss(W - deq, j.H)},
                          {"rtn_loss", report_loss(W - rtn, j.H)},
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
  r.fingerprint_extra = {{"block_size", o.block_size}, {"max_damp_retries", o.max_damp_retries}};
  OutputSession session(model, policy, r);
  PhaseTimer timer;
  const std::int64_t total = session.n_to_quantize();
  std::int64_t done = 0;
  const DType dtype = model.store().get(model.layout().embed).dtype;
  // Per input key (capture point or lm_head's): H of its inputs, and H prepared for GPTQ once
  // the first linear reading it needs it.
  std::map<int, Mat> hessians;
  std::map<int, GptqHessian> prepared;
  SequentialVisitor visitor;
  visitor.on_inputs = [&](int p, const std::vector<Mat>& xs) {
    hessians[p] = timer.time("hessian", [&] { return hessian(xs); });
    prepared.erase(p);
  };
  visitor.on_linear = [&](const LinearDesc& d, const LinearPlan& plan, Mat& w) {
    const int pt = input_key(d);
    const Mat& H = hessians.at(pt);
    if (!prepared.count(pt)) prepared.emplace(pt, timer.time("cholesky", [&] { return prepare_hessian(H, o, d.prefix); }));
    quantize_one(session, {d, plan, w, H, prepared.at(pt)}, o, dtype, timer);
    if (progress) progress(++done, total, d.prefix);
  };
  run_sequential(model, session, samples, o.true_sequential, visitor, timer);
  QuantizeReport report = timer.time("finish", [&] { return session.finish(); });
  log::info("gptq time:{}", timer.summary());
  return report;
}

}  // namespace quant
