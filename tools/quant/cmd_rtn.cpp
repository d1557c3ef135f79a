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
  auto* cmd = app.add_subcommand("rtn", "round-to-nearest quantization (min/max ranges, no calibration)");
  add_quantize_options(cmd, *o, "gptq", true);
  cmd->add_flag("--mse", *mse, "search a clipping factor per group minimising squared error (never worse than min/max)");
  add_calib_options(cmd, *c, 512);
  cmd->get_option("--calib")->description("calibration text, only for --target-bpw's sensitivity (RTN itself needs none)");
  cmd->callback([o, mse, c] {
    reuse_large_allocations();
    QuantSpec spec = make_spec(*o);
    spec.mse = *mse;
    const bool calib = !c->text.empty() || !c->tokens.empty();
    if (calib && o->target_bpw <= 0) fail<UsageError>("--calib is used only with --target-bpw; RTN needs no calibration");
    const RunOptions run = make_run_options(*o, "rtn", spec, c.get());
    const Model model = formats::open_model(o->model);
    const Policy policy = make_policy(*o, spec, model, calib ? load_calib(model, *c) : std::vector<std::vector<std::int32_t>>{});
    const RtnMethod method;
    const Plan plan = make_plan(model, policy, method.traits(), run.format, run.skip_unsupported);
    plan_and_run(*o, model, plan, method, run, {});
  });
}

}  // namespace quant::cli
