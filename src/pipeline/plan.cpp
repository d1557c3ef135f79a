#include "quant/pipeline/plan.h"

#include <optional>

#include "quant/core/error.h"
#include "quant/core/log.h"

namespace quant {

std::string LinearPlan::note() const {
  if (!unsupported.empty()) return "kept in source dtype: " + unsupported;
  return reason == "defaults" ? "" : reason;
}

const LinearPlan& Plan::at(const LinearDesc& linear) const {
  const auto it = index_.find(linear.prefix);
  if (it == index_.end()) fail<Error>("no plan for linear '{}'", linear.prefix);
  return linears[it->second];
}

std::int64_t Plan::n_to_quantize() const {
  std::int64_t n = 0;
  for (const auto& p : linears) n += p.quantize;
  return n;
}

void Plan::add(LinearPlan p) {
  index_.emplace(p.desc->prefix, linears.size());
  linears.push_back(std::move(p));
}

std::vector<const LinearPlan*> Plan::unsupported() const {
  std::vector<const LinearPlan*> out;
  for (const auto& p : linears) {
    if (!p.unsupported.empty()) out.push_back(&p);
  }
  return out;
}

namespace {

formats::MethodOutput output_of(const MethodTraits& m) {
  formats::MethodOutput o;
  o.method = m.name;
  o.codebooks = m.codebooks;
  o.act_order = m.act_order;
  o.float_weights = m.float_output;
  return o;
}

// Plans without refusing unsupported linears.
Plan plan_linears(const Model& model, const Policy& policy, const MethodTraits& method, formats::Format format, bool warn = true) {
  const formats::Codec& codec = formats::codec(format);
  Plan plan;
  plan.format = format;
  plan.output = output_of(method);
  if (const std::string why = codec.refuses(plan.output); !why.empty()) fail<UsageError>("{}", why);
  if (warn && model.layout().tied && policy.decide("lm_head").quantize) log::warn("lm_head is tied to the embedding and stays unquantized");
  for (const LinearDesc* l : model.linears()) {
    LinearPlan p;
    p.desc = l;
    // Stored-fused linears (Phi-3) are one tensor: rules address it by its own name, and every
    // part gets the same decision.
    const Decision d = policy.decide(l->tensor_prefix());
    p.quantize = d.quantize;
    p.spec = d.spec;
    p.reason = d.reason;
    if (p.quantize) {
      p.spec.validate();
      if (p.spec.fp8 && !method.fp8_weights) {
        fail<UsageError>("{} does not write float8 weights (--scheme FP8_DYNAMIC / W8A16_FP8 are round-to-nearest: use quant rtn)", method.name);
      }
      if (p.spec.per_tensor && l->fused()) {  // its parts are quantized one by one, each with its own scale
        fail<UsageError>("'{}' is stored fused ({}): one fp8 scale per tensor cannot cover its parts; use --fp8-weight-scale channel",
                         l->prefix, l->tensor_prefix());
      }
      if (p.spec.static_act && !method.static_activations) {
        fail<UsageError>("{} does not calibrate static activation scales yet; use rtn or gptq, or dynamic activations", method.name);
      }
      if (p.spec.static_act && l->in_expert()) {  // the layer loop calibrates the dense capture points only
        fail<UsageError>("'{}': static activation scales (--scheme FP8, --static-activations) are not supported for MoE experts yet; use "
                         "dynamic activations (--scheme W8A8 or FP8_DYNAMIC)", l->prefix);
      }
      if (model.storage(*l) == LinearStorage::packed) {
        fail("{}: '{}' is already quantized; quantize the original checkpoint", model.dir().string(), l->prefix);
      }
      p.unsupported = formats::unsupported_reason(codec.format, l->fused() ? l->storage_rows : l->out, l->in, p.spec);
      if (!p.unsupported.empty()) p.quantize = false;
    }
    plan.add(std::move(p));
  }
  return plan;
}

// The loaders' rules over the whole plan (formats::plan_refusal), refused before any work.
void check_loader_rules(const Plan& plan) {
  std::vector<formats::PlannedLinear> linears;
  for (const auto& p : plan.linears) linears.push_back({p.desc, p.quantize, p.spec});
  if (const std::string why = formats::plan_refusal(formats::codec(plan.format), linears); !why.empty()) {
    fail<UsageError>("{} format: {}", formats::format_name(plan.format), why);
  }
}

}  // namespace

Plan make_plan(const Model& model, const Policy& policy, const MethodTraits& method, formats::Format format,
               bool skip_unsupported) {
  Plan plan = plan_linears(model, policy, method, format);
  const auto left = plan.unsupported();
  if (!left.empty() && !skip_unsupported) {
    auto what = [](const LinearPlan* p) { return fmt::format("tensor '{}': {}", p->desc->weight_name(), p->unsupported); };
    std::string more;
    if (left.size() > 1) {
      more = fmt::format(" (and {} more tensors the {} format cannot hold, e.g. {})", left.size() - 1, formats::format_name(format),
                         what(left.back()));
    }
    fail("{}: {}{}; pass --skip-unsupported to keep such tensors unquantized, or use --format dense",
         model.store().file_of(plan.linears.front().desc->weight_name()).string(), what(left.front()), more);
  }
  check_loader_rules(plan);
  return plan;
}

Plan make_plan_best_format(const Model& model, const Policy& policy, const MethodTraits& method,
                           const std::vector<formats::Format>& candidates) {
  if (candidates.empty()) fail<Error>("make_plan_best_format: no candidate formats");
  // Among the formats whose loaders take the plan, the one that holds the most linears.
  std::optional<formats::Format> best;
  std::size_t fewest = 0;
  for (formats::Format f : candidates) {
    const Plan p = plan_linears(model, policy, method, f, false);
    try {
      check_loader_rules(p);
    } catch (const UsageError& e) {
      log::debug("{}", e.what());
      continue;
    }
    if (!best || p.unsupported().size() < fewest) {
      fewest = p.unsupported().size();
      best = f;
    }
  }
  Plan plan = plan_linears(model, policy, method, best.value_or(candidates.front()));
  check_loader_rules(plan);
  return plan;
}

}  // namespace quant
