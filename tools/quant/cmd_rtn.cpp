// quant rtn MODEL: round-to-nearest quantization (no calibration).
#include "commands.h"
#include "progress.h"
#include "quant/formats/codec.h"
#include "quant/core/error.h"
#include "quant/methods/rtn.h"
#include "quantize_common.h"

namespace quant::cli {

void register_rtn(CLI::App& app) {
  auto o = std::make_shared<QuantizeCliOptions>();
  auto mse = std::make_shared<bool>(false);
  auto c = std::make_shared<CalibCliOptions>();
  auto smooth = std::make_shared<SmoothCliOptions>();
  auto* cmd = app.add_subcommand("rtn", "round-to-nearest quantization (min/max ranges, no calibration)");
  add_quantize_options(cmd, *o, "gptq", true);
  cmd->add_flag("--mse", *mse, "search a clipping factor per group minimising squared error (never worse than min/max)");
  add_smooth_options(cmd, *smooth);
  add_calib_options(cmd, *c, 512);
  cmd->get_option("--calib")->description("calibration text, only for --target-bpw's sensitivity, --smooth's activation ranges and --scheme FP8's static input scales (RTN itself needs none)");
  cmd->callback([o, mse, c, smooth] {
    reuse_large_allocations();
    QuantSpec spec = make_spec(*o);
    spec.mse = *mse;
    const bool calib = !c->text.empty() || !c->tokens.empty();
    const bool smoothing = !smooth->alpha.empty();
    const bool calibrated = smoothing || spec.static_act;  // activation ranges or static input scales
    if (calib && o->target_bpw <= 0 && !calibrated) {
      fail<UsageError>("--calib is used only with --target-bpw, --smooth or --scheme FP8; RTN needs no calibration");
    }
    const RunOptions run = make_run_options(*o, "rtn", spec, c.get());
    const Model model = formats::open_model(o->model);
    const auto samples = calib || calibrated ? load_calib(model, *c) : std::vector<std::vector<std::int32_t>>{};
    const Policy policy = make_policy(*o, spec, model, samples);
    const auto method = maybe_smoothed(std::make_unique<RtnMethod>(), *smooth, spec);
    const Plan plan = make_plan(model, policy, method->traits(), run.format, run.skip_unsupported);
    plan_and_run(*o, model, plan, *method, run, calibrated ? samples : std::vector<std::vector<std::int32_t>>{});
  });
}

}  // namespace quant::cli
