// Layer-by-layer AWQ over a Llama-family model with the standard mappings (AutoAWQ's
// LlamaAWQForCausalLM.get_layers_for_scaling):
//   input_layernorm → [q, k, v]          inspect the attention block output (after o_proj)
//   v_proj → [o_proj]                    only when v and o have the same shape (no GQA)
//   post_attention_layernorm → [gate, up] inspect the MLP output
//   up_proj → [down_proj]                inspect down_proj's output
#include <algorithm>
#include <map>
#include <optional>

#include "quant/error.h"
#include "quant/log.h"
#include "quant/methods/awq.h"
#include "quant/methods/gptq.h"
#include "quant/methods/sequential.h"
#include "quant/weights.h"

namespace quant {

namespace {

enum class Inspect { attention, mlp, linear };

struct Mapping {
  AwqMapping id;
  std::string name;
  CapturePoint input;
  std::vector<LinearKind> scaled;          // columns multiplied by s
  std::optional<LinearKind> prev_linear;   // rows divided by s; else the norm before `input`
  Inspect inspect;
};

std::vector<Mapping> llama_mappings(const ModelConfig& c) {
  using K = LinearKind;
  std::vector<Mapping> m = {{AwqMapping::attn, "attn", CapturePoint::attn_in, {K::q, K::k, K::v}, std::nullopt, Inspect::attention}};
  if (c.n_kv_heads == c.n_heads) m.push_back({AwqMapping::v_o, "v_o", CapturePoint::o_in, {K::o}, K::v, Inspect::linear});
  m.push_back({AwqMapping::mlp, "mlp", CapturePoint::mlp_in, {K::gate, K::up}, std::nullopt, Inspect::mlp});
  m.push_back({AwqMapping::up_down, "up_down", CapturePoint::down_in, {K::down}, K::up, Inspect::linear});
  return m;
}

// Output of the inspected block for one sample.
Mat block_output(const ModelConfig& c, const LayerWeights& L, const RopeTable& rope, const Mat& x, Inspect what) {
  Mat y;
  if (what == Inspect::attention) {
    const Mat attn = attention_block(c, L, rope, x);
    linear_forward(attn, L.linear(LinearKind::o), L.b[static_cast<int>(LinearKind::o)], y);
  } else {
    const Mat act = mlp_activation(L, x);
    linear_forward(act, L.linear(LinearKind::down), L.b[static_cast<int>(LinearKind::down)], y);
  }
  return y;
}

// The block-output loss of an attention or MLP mapping, against the float block's outputs.
class BlockLoss {
 public:
  BlockLoss(const ModelConfig& c, const RopeTable& rope, const LayerWeights& L, const Mapping& m,
            const std::vector<Mat>& xs, const std::map<LinearKind, QuantSpec>& specs)
      : c_(c), rope_(rope), L_(L), m_(m), xs_(xs), specs_(specs), cand_(L) {
    fp_.resize(xs.size());
    run_block(L_, fp_, nullptr);
  }

  // Mean squared output error of the block when the mapping's linears use Q(W·s)/s.
  double loss(const Vec& s) {
    // One working copy of the layer for all candidates: only the scaled linears change.
    for (LinearKind k : m_.scaled) cand_.linear(k) = awq_fake_quant(L_.linear(k), s, specs_.at(k));
    std::vector<double> errs(xs_.size());
    std::vector<Mat> dummy;
    run_block(cand_, dummy, &errs);
    double total = 0, n = 0;
    for (std::size_t i = 0; i < xs_.size(); ++i) {
      total += errs[i];
      n += static_cast<double>(xs_[i].rows() * fp_[i].cols());
    }
    return total / n;
  }

 private:
  void run_block(const LayerWeights& L, std::vector<Mat>& outs, std::vector<double>* errs) {
    const std::ptrdiff_t n = static_cast<std::ptrdiff_t>(xs_.size());
#pragma omp parallel for schedule(dynamic, 1)
    for (std::ptrdiff_t i = 0; i < n; ++i) {
      const auto s = static_cast<std::size_t>(i);
      Mat y = block_output(c_, L, rope_, xs_[s], m_.inspect);
      if (errs) (*errs)[s] = (y - fp_[s]).cast<double>().squaredNorm();
      else outs[s] = std::move(y);
    }
  }

  const ModelConfig& c_;
  const RopeTable& rope_;
  const LayerWeights& L_;
  const Mapping& m_;
  const std::vector<Mat>& xs_;
  const std::map<LinearKind, QuantSpec>& specs_;
  LayerWeights cand_;
  std::vector<Mat> fp_;
};

// H of inputs divided per channel by s: D⁻¹ H D⁻¹.
Mat rescale_hessian(const Mat& H, const Vec& s) {
  const Vec inv = s.cwiseInverse();
  return inv.asDiagonal() * H * inv.asDiagonal();
}

}  // namespace

QuantizeReport awq_quantize_model(const Model& model, const Policy& policy, const RunOptions& run,
                                  const AwqOptions& o, const std::vector<std::vector<std::int32_t>>& samples,
                                  const StepProgress& progress) {
  if (o.n_grid < 1) fail<UsageError>("--n-grid must be at least 1, got {}", o.n_grid);
  RunOptions r = run;
  r.method = o.export_compatible ? "awq-scaled" : "awq";
  if (o.export_compatible && r.format != formats::Format::dense) {
    fail<UsageError>("AWQ's export-compatible mode writes float weights: it needs the dense format");
  }
  r.fingerprint_extra = {{"n_grid", o.n_grid}, {"duo_scaling", o.duo_scaling}, {"clip", o.clip}, {"clip_grid", o.clip_grid},
                         {"clip_max_shrink", o.clip_max_shrink}, {"export_compatible", o.export_compatible}};
  OutputSession session(model, policy, r);
  LayerRunner runner(model, samples);
  const auto& c = model.config();
  const std::int64_t total = session.n_to_quantize();
  std::int64_t done = 0;
  const int layers_done = resume_layers(session, runner, samples);

  for (const auto& layer : model.layout().layers) {
    if (layer.index < layers_done) continue;
    LayerWeights lw = load_layer(model, layer.index);
    for (const auto& w : lw.w) check_finite(w, fmt::format("layer {} weights", layer.index));
    // Inputs of every linear from the float layer (hidden states from the quantized layers).
    std::map<CapturePoint, std::vector<Mat>> feats;
    std::map<CapturePoint, Mat> hess;
    for (CapturePoint p : {CapturePoint::attn_in, CapturePoint::o_in, CapturePoint::mlp_in, CapturePoint::down_in}) {
      feats[p] = runner.stage(p, lw);
      hess[p] = hessian(feats[p]);
    }
    auto planned = [&](LinearKind k) { return session.plan_for(layer.linear(k)).quantize; };
    std::map<LinearKind, QuantSpec> specs;
    for (LinearKind k : kAllLinearKinds) specs[k] = session.plan_for(layer.linear(k)).spec;
    std::map<LinearKind, nlohmann::json> extra;
    std::map<CapturePoint, Vec> input_scale;  // inputs of a capture point are divided by this

    // 1. Search every mapping on the float layer, as AutoAWQ does, then fold the scales.
    std::vector<std::pair<const Mapping*, AwqSearchResult>> found;
    const auto mappings = llama_mappings(c);
    for (const auto& m : mappings) {
      bool ok = std::all_of(m.scaled.begin(), m.scaled.end(), planned) && (!m.prev_linear || planned(*m.prev_linear));
      if (!ok) {
        log::debug("layer {}: mapping {} skipped (a linear is not quantized)", layer.index, m.name);
        continue;
      }
      std::vector<const Mat*> ws;
      for (LinearKind k : m.scaled) ws.push_back(&lw.linear(k));
      const Vec x_mean = mean_abs(feats[m.input]);
      AwqSearchResult res;
      if (m.inspect == Inspect::linear) {
        // Same objective; the Hessian form costs out·in² per candidate, the token form out·in·n.
        const Mat& w = lw.linear(m.scaled[0]);
        std::int64_t n_tokens = 0;
        for (const Mat& x : feats[m.input]) n_tokens += x.rows();
        res = n_tokens < w.cols() ? awq_search_linear_tokens(w, feats[m.input], x_mean, specs[m.scaled[0]], o)
                                  : awq_search_linear(w, hess[m.input], x_mean, specs[m.scaled[0]], o);
      } else {
        BlockLoss block(c, runner.rope(), lw, m, feats[m.input], specs);
        res = awq_search(x_mean, weight_mean(ws, specs[m.scaled[0]].group_size), o, [&](const Vec& s) { return block.loss(s); });
      }
      for (LinearKind k : m.scaled) {
        extra[k] = {{"awq_mapping", m.name}, {"awq_ratio", res.ratio}, {"awq_loss", res.loss}, {"rtn_loss", res.identity_loss}};
      }
      found.emplace_back(&m, std::move(res));
    }
    for (const auto& [m, res] : found) {
      fold_awq_scales(lw, m->id, res.scales);
      input_scale[m->input] = res.scales;
    }

    // 2. Clip (not q/k) and quantize the scaled weights.
    for (LinearKind k : kAllLinearKinds) {
      if (!planned(k)) continue;
      const LinearDesc& d = layer.linear(k);
      const CapturePoint pt = capture_point(k);
      const Mat original = lw.linear(k);
      Mat w = original;
      if (o.clip && k != LinearKind::q && k != LinearKind::k) {
        const Mat H = input_scale.count(pt) ? rescale_hessian(hess[pt], input_scale[pt]) : hess[pt];
        w = awq_clip(w, H, specs[k], o);
        extra[k]["clipped"] = true;
      }
      if (o.export_compatible) {
        // The scaled, clipped float weight; the next layers see it unquantized, as AutoAWQ.
        lw.linear(k) = w;
        session.put_float(d.weight_name(), w.data(), {d.out, d.in});
        const Vec& b = lw.b[static_cast<int>(k)];
        if (d.bias && b.size()) session.put_float(d.bias_name(), b.data(), {d.out});
        if (progress) progress(++done, total, d.prefix);
        continue;
      }
      const QuantizedMatrix qm = quantize_rtn(w, specs[k]);
      lw.linear(k) = qm.dequantize();
      const Vec& bias = lw.b[static_cast<int>(k)];
      session.put_quantized(d, qm, original, extra[k], bias.size() ? &bias : nullptr);
      if (progress) progress(++done, total, d.prefix);
    }
    // Norms carry 1/s (biases of scaled previous linears went out with their weights).
    if (input_scale.count(CapturePoint::attn_in)) session.put_float(layer.attn_norm, lw.attn_norm.data(), {c.hidden_size});
    if (input_scale.count(CapturePoint::mlp_in)) session.put_float(layer.mlp_norm, lw.mlp_norm.data(), {c.hidden_size});
    runner.advance(lw);
    session.checkpoint(layer.index, runner.hidden());
  }

  const LinearDesc& head = model.layout().lm_head;
  if (!model.layout().tied && session.plan_for(head).quantize && !o.export_compatible) {
    const Mat w = load_linear(model, head);
    session.put_quantized(head, quantize_rtn(w, session.plan_for(head).spec), w, {{"note", "lm_head: RTN (AWQ scales only decoder linears)"}});
    if (progress) progress(++done, total, head.prefix);
  }
  return session.finish();
}

}  // namespace quant
