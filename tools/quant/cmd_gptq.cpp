// quant gptq MODEL: calibrated, layer-sequential GPTQ.
#include "commands.h"
#include "progress.h"
#include "quant/formats/codec.h"
#include "quant/methods/gptq.h"
#include "quantize_common.h"

#include "quant/core/error.h"

namespace quant::cli {

void register_gptq(CLI::App& app) {
  auto o = std::make_shared<QuantizeCliOptions>();
  auto c = std::make_shared<CalibCliOptions>();
  auto g = std::make_shared<GptqOptions>();
  auto no_true_seq = std::make_shared<bool>(false);
  auto mse = std::make_shared<bool>(false);
  auto smooth = std::make_shared<SmoothCliOptions>();
  auto* cmd = app.add_subcommand("gptq", "GPTQ: calibrated, error-compensating quantization (arXiv:2210.17323)");
  add_quantize_options(cmd, *o, "gptq", true);
  add_calib_options(cmd, *c, 2048);
  cmd->add_option("--damp", g->damp, "dampening: fraction of mean(diag H) added to the diagonal")->capture_default_str();
  cmd->add_option("--block-size", g->block_size, "columns per lazy-batch block")->capture_default_str()->check(CLI::PositiveNumber);
  cmd->add_flag("--act-order,--desc-act", g->act_order, "quantize columns in order of decreasing diag H (desc_act)");
  cmd->add_flag("--static-groups", g->static_groups, "group parameters from the original weights (with --act-order: g_idx stays j/group)");
  cmd->add_flag("--no-true-sequential", *no_true_seq, "capture all of a layer's inputs once instead of sub-group by sub-group");
  cmd->add_flag("--mse", *mse, "search a clipping factor for each group's range");
  add_smooth_options(cmd, *smooth);
  cmd->callback([o, c, g, no_true_seq, mse, smooth] {
    reuse_large_allocations();
    QuantSpec spec = make_spec(*o);
    spec.mse = *mse;
    // transformers/optimum/GPTQModel accept 0 < damp_percent < 1; 0 is allowed here (plain H).
    if (!(g->damp >= 0 && g->damp < 1)) fail<UsageError>("--damp must be in [0, 1), got {}", g->damp);
    g->true_sequential = !*no_true_seq;
    const RunOptions run = make_run_options(*o, "gptq", spec, c.get());
    const Model model = formats::open_model(o->model);
    const auto samples = load_calib(model, *c);
    const Policy policy = make_policy(*o, spec, model, samples);
    const auto method = maybe_smoothed(std::make_unique<GptqMethod>(*g), *smooth, spec);
    const Plan plan = make_plan(model, policy, method->traits(), run.format, run.skip_unsupported);
    plan_and_run(*o, model, plan, *method, run, samples);
  });
}

}  // namespace quant::cli
