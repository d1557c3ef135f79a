#include "quant/pipeline/allocate.h"

#include <fmt/ranges.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <regex>

#include "quant/model/calibration.h"
#include "quant/core/error.h"
#include "quant/model/forward.h"
#include "quant/core/log.h"
#include "quant/core/quantizer.h"
#include "quant/model/weights.h"
#include "quant/pipeline/layer_loop.h"

namespace quant {

namespace {

// Storage bits per weight of RTN codes at `spec` on [out, in], as the reports count them.
double cost(const QuantSpec& spec, std::int64_t in) {
  const std::int64_t g = spec.effective_group(in);
  const double groups = static_cast<double>((in + g - 1) / g);
  return spec.bits + groups * (16.0 + (spec.sym ? 0.0 : spec.bits)) / static_cast<double>(in);
}

BitChoice measure(const LinearDesc& l, const Mat& w, const Mat* H, QuantSpec spec, const std::vector<int>& candidates) {
  BitChoice c;
  c.linear = l.prefix;
  c.n_params = l.out * l.in;
  auto energy = [&](const Mat& m) { return H ? static_cast<double>((m * *H).cwiseProduct(m).sum()) : static_cast<double>(m.squaredNorm()); };
  const double ref = std::max(energy(w), 1e-30);
  for (int b : candidates) {
    spec.bits = b;
    const Mat d = w - quantize_rtn(w, spec).dequantize();
    const double loss = static_cast<double>(c.n_params) * energy(d) / ref;
    c.bits.push_back(b);
    c.loss.push_back(loss);
    c.bpw.push_back(cost(spec, l.in));
  }
  return c;
}

// Mean KL(p_float ‖ p) of the next-token distributions over the probe tokens, running from the
// hidden states entering layer `from` with `replaced` standing in for that layer. The float
// log-probabilities are kept, so the probe takes at most ~32M of them (windows × tokens × vocab).
class KlProbe {
 public:
  KlProbe(const Model& model, const std::vector<std::vector<std::int32_t>>& samples) : model_(model) {
    const std::int64_t vocab = model.config().vocab_size;
    std::int64_t budget = std::max<std::int64_t>(32'000'000 / vocab, 64);
    for (std::size_t i = 0; i < std::min<std::size_t>(samples.size(), 16) && budget > 0; ++i) {
      const auto take = std::min<std::int64_t>(budget, static_cast<std::int64_t>(samples[i].size()));
      if (take < 2) break;
      samples_.emplace_back(samples[i].begin(), samples[i].begin() + take);
      budget -= take;
    }
    std::size_t longest = 0;
    for (const auto& s : samples_) longest = std::max(longest, s.size());
    rope_ = build_rope(model.config(), static_cast<std::int64_t>(longest));
    head_ = load_head(model);
    std::vector<Mat> h;
    for (const auto& s : samples_) h.push_back(embed_tokens(head_, s));
    for (const auto& layer : model.layout().layers) {
      layers_.push_back(load_layer(model, layer.index));
      inputs_.push_back(h);
      decoder_layer_forward_batch(model.config(), layers_.back(), rope_, h);
    }
    for (const Mat& x : h) ref_.push_back(log_probs(final_logits(model.config(), head_, x)));
    inputs_.push_back(std::move(h));
  }
  const LayerWeights& layer(int i) const { return layers_[static_cast<std::size_t>(i)]; }
  double nll(int from, const LayerWeights* replaced) const {
    std::vector<Mat> h = inputs_[static_cast<std::size_t>(from)];
    for (std::size_t l = static_cast<std::size_t>(from); l < layers_.size(); ++l) {
      decoder_layer_forward_batch(model_.config(), replaced && l == static_cast<std::size_t>(from) ? *replaced : layers_[l], rope_, h);
    }
    double sum = 0;
    std::int64_t n = 0;
    for (std::size_t i = 0; i < h.size(); ++i) {
      const Mat lp = log_probs(final_logits(model_.config(), head_, h[i]));
      const Mat& r = ref_[i];
      sum += static_cast<double>((r.array().exp() * (r - lp).array()).sum());
      n += lp.rows();
    }
    return sum / static_cast<double>(n);
  }

  static Mat log_probs(const Mat& logits) {
    Mat out(logits.rows(), logits.cols());
    for (Eigen::Index t = 0; t < logits.rows(); ++t) {
      const float m = logits.row(t).maxCoeff();
      const float lse = m + std::log((logits.row(t).array() - m).exp().sum());
      out.row(t) = logits.row(t).array() - lse;
    }
    return out;
  }

 private:
  const Model& model_;
  std::vector<std::vector<std::int32_t>> samples_;
  RopeTable rope_;
  HeadWeights head_;
  std::vector<LayerWeights> layers_;
  std::vector<std::vector<Mat>> inputs_;
  std::vector<Mat> ref_;
};

// One choice per fused layer: losses add, costs average by parameters.
std::vector<BitChoice> merge_fused(std::vector<BitChoice> in, const Model& model) {
  std::map<std::string, std::string> fused_of;
  for (const LinearDesc* l : model.linears()) fused_of[l->prefix] = fused_prefix(*l);
  std::vector<BitChoice> out;
  std::map<std::string, std::size_t> at;
  for (BitChoice& c : in) {
    const std::string key = fused_of.at(c.linear);
    const auto it = at.find(key);
    if (it == at.end()) {
      at[key] = out.size();
      c.members = {c.linear};
      c.linear = key;
      out.push_back(std::move(c));
      continue;
    }
    BitChoice& m = out[it->second];
    const double na = static_cast<double>(m.n_params), nb = static_cast<double>(c.n_params);
    for (std::size_t j = 0; j < m.bits.size(); ++j) {
      m.loss[j] += c.loss[j];
      m.bpw[j] = (m.bpw[j] * na + c.bpw[j] * nb) / (na + nb);
    }
    m.n_params += c.n_params;
    m.members.push_back(c.linear);
  }
  return out;
}

}  // namespace

Sensitivity parse_sensitivity(const std::string& name) {
  if (name == "hessian") return Sensitivity::hessian;
  if (name == "kl") return Sensitivity::kl;
  fail<UsageError>("unknown sensitivity '{}' (hessian or kl)", name);
}

std::vector<Rule> Allocation::rules() const {
  std::vector<Rule> r;
  for (const auto& c : linears) {
    const std::string bits = std::to_string(c.bits[static_cast<std::size_t>(c.chosen)]);
    for (const auto& m : c.members) r.push_back(Rule::parse("^" + regex_escape(m) + "$=bits:" + bits));
    // Stored-fused linears (Phi-3) are planned by their tensor's name, which is the group key.
    if (std::find(c.members.begin(), c.members.end(), c.linear) == c.members.end()) {
      r.push_back(Rule::parse("^" + regex_escape(c.linear) + "$=bits:" + bits));
    }
  }
  return r;
}

Allocation allocate_bits(const Model& model, const Policy& policy, double target_bpw, std::vector<int> candidates,
                         const std::vector<std::vector<std::int32_t>>& samples, Sensitivity kind, const std::vector<int>& expert_bits) {
  std::sort(candidates.begin(), candidates.end());
  candidates.erase(std::unique(candidates.begin(), candidates.end()), candidates.end());
  if (candidates.empty()) fail<UsageError>("--target-bpw needs candidate bit widths");
  for (int b : candidates) {
    if (b < 2 || b > 8) fail<UsageError>("candidate bit width {} is outside 2..8", b);
  }
  Allocation a;
  a.target_bpw = target_bpw;
  std::unique_ptr<KlProbe> probe;
  if (kind == Sensitivity::kl) {
    if (samples.empty()) fail<UsageError>("--sensitivity kl needs calibration data");
    probe = std::make_unique<KlProbe>(model, samples);
  }
  const double base_nll = 0.0;  // KL of the float model to itself
  auto measure_layer = [&](const LayerDesc& layer, const LayerWeights& lw, const std::map<CapturePoint, Mat>* hess) {
    for (const LinearDesc& l : layer.linears) {
      const Decision d = policy.decide(l.tensor_prefix());
      if (!d.quantize) continue;
      const Mat& w = lw.weight(l);
      check_finite(w, l.weight_name());
      if (probe) {
        BitChoice c = measure(l, w, nullptr, d.spec, candidates);
        LayerWeights q = probe->layer(layer.index);
        for (std::size_t j = 0; j < candidates.size(); ++j) {
          QuantSpec s = d.spec;
          s.bits = candidates[j];
          q.weight(l) = quantize_rtn(w, s).dequantize();
          c.loss[j] = std::max(0.0, probe->nll(layer.index, &q) - base_nll);
        }
        // More bits never cost more loss (measurement noise aside).
        for (std::size_t j = c.loss.size() - 1; j-- > 0;) c.loss[j] = std::max(c.loss[j], c.loss[j + 1]);
        log::debug("{}: nll increase {}", l.prefix, fmt::join(c.loss, " "));
        a.linears.push_back(std::move(c));
      } else {
        // A sparse layer's experts: gate/up weighted by every token's inputs (not only the
        // routed ones), down by none (its inputs depend on the routing).
        const Mat* h = nullptr;
        if (hess && !(l.in_expert() && l.kind == LinearKind::down)) h = &hess->at(capture_point(l.kind));
        a.linears.push_back(measure(l, w, h, d.spec, candidates));
      }
    }
  };
  if (!probe && !samples.empty()) {
    // H of each capture point's inputs from the float model (the one walk shared with imatrix).
    std::map<CapturePoint, Mat> hess;
    observe_float_model(model, samples, false, [&](const LayerDesc* layer, const LayerWeights* lw, CapturePoint p, const std::vector<Mat>& xs) {
      hess[p] = hessian(xs);
      if (p == (layer->moe ? CapturePoint::mlp_in : CapturePoint::down_in)) measure_layer(*layer, *lw, &hess);
    });
  } else {
    for (const auto& layer : model.layout().layers) measure_layer(layer, load_layer(model, layer.index), nullptr);
  }
  if (a.linears.empty()) fail<UsageError>("--target-bpw: no linear is quantized under the rules");
  a.linears = merge_fused(std::move(a.linears), model);
  if (!expert_bits.empty()) {  // a layer's routed experts (one FusedMoE group): only the bit widths its loaders take
    for (BitChoice& c : a.linears) {
      if (!c.linear.ends_with(".experts")) continue;
      BitChoice kept = c;
      kept.bits.clear(), kept.loss.clear(), kept.bpw.clear();
      for (std::size_t j = 0; j < c.bits.size(); ++j) {
        if (std::find(expert_bits.begin(), expert_bits.end(), c.bits[j]) == expert_bits.end()) continue;
        kept.bits.push_back(c.bits[j]), kept.loss.push_back(c.loss[j]), kept.bpw.push_back(c.bpw[j]);
      }
      if (kept.bits.empty()) {
        fail<UsageError>("--target-bpw: the experts of '{}' can only be {} bits for this format's loaders, and --candidate-bits has none of them",
                         c.linear, fmt::join(expert_bits, " or "));
      }
      c = std::move(kept);
    }
  }
  double params = 0, bits = 0;
  for (const auto& c : a.linears) {
    params += static_cast<double>(c.n_params);
    bits += static_cast<double>(c.n_params) * c.bpw[0];
  }
  const double budget = target_bpw * params;
  if (bits > budget * (1 + 1e-12)) {
    fail<UsageError>("--target-bpw {} is below the smallest allocation: every linear at {} bits is {:.3f} bpw", target_bpw,
                     candidates.front(), bits / params);
  }
  // Each step takes the move (one linear to any higher candidate) with the largest loss
  // decrease per added bit that fits; jumping past a plateau counts as one move.
  for (;;) {
    int best = -1, best_to = -1;
    double best_gain = 0;
    for (std::size_t i = 0; i < a.linears.size(); ++i) {
      const BitChoice& c = a.linears[i];
      const auto j = static_cast<std::size_t>(c.chosen);
      for (std::size_t t = j + 1; t < c.bits.size(); ++t) {
        const double extra = static_cast<double>(c.n_params) * (c.bpw[t] - c.bpw[j]);
        if (bits + extra > budget) break;
        const double gain = (c.loss[j] - c.loss[t]) / extra;
        if (gain > best_gain) {
          best_gain = gain;
          best = static_cast<int>(i);
          best_to = static_cast<int>(t);
        }
      }
    }
    if (best < 0) break;
    BitChoice& c = a.linears[static_cast<std::size_t>(best)];
    bits += static_cast<double>(c.n_params) * (c.bpw[static_cast<std::size_t>(best_to)] - c.bpw[static_cast<std::size_t>(c.chosen)]);
    c.chosen = best_to;
  }
  a.bpw = bits / params;
  std::map<int, int> hist;
  for (const auto& c : a.linears) ++hist[c.bits[static_cast<std::size_t>(c.chosen)]];
  std::string h;
  for (const auto& [b, n] : hist) h += fmt::format(" {}-bit: {}", b, n);
  log::info("bit allocation for {:.3f} bpw: {:.4f} bpw achieved;{}", target_bpw, a.bpw, h);
  return a;
}

}  // namespace quant
