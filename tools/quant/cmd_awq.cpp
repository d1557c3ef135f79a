// quant awq MODEL: activation-aware weight quantization.
#include "commands.h"
#include "quant/formats/codec.h"
#include "quant/core/error.h"
#include "quant/core/log.h"
#include "quant/methods/awq.h"
#include "quantize_common.h"

namespace quant::cli {

void register_awq(CLI::App& app) {
  auto o = std::make_shared<QuantizeCliOptions>();
  auto c = std::make_shared<CalibCliOptions>();
  auto a = std::make_shared<AwqOptions>();
  auto no_duo = std::make_shared<bool>(false);
  auto no_clip = std::make_shared<bool>(false);
  auto* cmd = app.add_subcommand("awq", "AWQ: activation-aware scaling and clipping (arXiv:2306.00978)");
  add_quantize_options(cmd, *o, "awq", false);
  add_calib_options(cmd, *c, 512);
  cmd->get_option("--format")->description("output format: awq (default at 4 bits when every linear fits), gptq (any bits), compressed-tensors (4/8 bits), dense");
  cmd->add_option("--n-grid", a->n_grid, "scale ratios searched per mapping")->capture_default_str();
  cmd->add_flag("--no-duo-scaling", *no_duo, "scales from activations only (x_mean^r) instead of x_mean^r / w_mean^(1-r)");
  cmd->add_flag("--no-clip", *no_clip, "skip the clipping search");
  cmd->add_option("--search-tokens", a->search_tokens,
                  "score the MLP/linear scale candidates on about this many calibration tokens (every k-th; 0: all)")
      ->capture_default_str()->check(CLI::NonNegativeNumber);
  cmd->add_option("--search-windows", a->search_windows,
                  "score the attention scale candidates on at least this many whole calibration windows (0: all)")
      ->capture_default_str()->check(CLI::NonNegativeNumber);
  cmd->add_flag("--export-compatible", a->export_compatible,
                "apply the scales and clipping but keep float weights (a dense checkpoint for another quantizer, as AutoAWQ's export_compatible)");
  CLI::Option* format_opt = cmd->get_option("--format");
  cmd->callback([o, c, a, no_duo, no_clip, format_opt] {
    reuse_large_allocations();
    const QuantSpec spec = make_spec(*o);  // (a --scheme sets the format)
    a->duo_scaling = !*no_duo;
    a->clip = !*no_clip;
    RunOptions run = make_run_options(*o, "awq", spec, c.get());
    const Model model = formats::open_model(o->model);
    const auto samples = load_calib(model, *c);
    const Policy policy = make_policy(*o, spec, model, samples);
    const AwqMethod method(*a);
    if (a->export_compatible) {
      if (format_opt->count() > 0 && run.format != formats::Format::dense) fail<UsageError>("--export-compatible writes float weights: use --format dense or no --format");
      run.format = formats::Format::dense;
    }
    Plan plan;
    if (a->export_compatible || format_opt->count() > 0 || !o->scheme.empty()) {
      plan = make_plan(model, policy, method.traits(), run.format, run.skip_unsupported);
    } else {
      // What a user running `quant awq --bits 4 model/` wants: AutoAWQ's layout when it can hold
      // the model, else GPTQ's; linears neither can hold stay in the source dtype, named.
      std::vector<formats::Format> candidates = {formats::Format::gptq};
      if (spec.bits == 4) candidates.insert(candidates.begin(), formats::Format::awq);
      plan = make_plan_best_format(model, policy, method.traits(), candidates);
      run.format = plan.format;
      if (const auto left = plan.unsupported(); !left.empty()) {
        log::warn("{} linears cannot be stored in the {} layout (e.g. {}) and stay unquantized; --format dense quantizes all",
                  left.size(), formats::format_name(plan.format), left.front()->desc->prefix);
        run.skip_unsupported = true;
      }
    }
    plan_and_run(*o, model, plan, method, run, samples);
  });
}

}  // namespace quant::cli
