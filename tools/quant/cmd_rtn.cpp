// quant rtn MODEL: round-to-nearest quantization (no calibration).
#include "commands.h"
#include "progress.h"
#include "quant/methods/rtn.h"
#include "quantize_common.h"

namespace quant::cli {

void register_rtn(CLI::App& app) {
  auto o = std::make_shared<QuantizeCliOptions>();
  auto mse = std::make_shared<bool>(false);
  auto* cmd = app.add_subcommand("rtn", "round-to-nearest quantization (min/max ranges, no calibration)");
  add_quantize_options(cmd, *o, "gptq");
  cmd->add_flag("--mse", *mse, "search a clipping factor per group minimising squared error (never worse than min/max)");
  cmd->callback([o, mse] {
    QuantSpec spec = make_spec(*o);
    spec.mse = *mse;
    const Model model = Model::open(o->model);
    const Policy policy = make_policy(*o, spec);
    RunOptions run = make_run_options(*o, "rtn", spec);
    run.method_config = {{"damp_percent", 0.0}, {"true_sequential", false}};
    LazyProgress bar("rtn");
    const QuantizeReport r = rtn_quantize_model(model, policy, run, bar.callback());
    bar.finish();
    print_report(r, o->json);
  });
}

}  // namespace quant::cli
