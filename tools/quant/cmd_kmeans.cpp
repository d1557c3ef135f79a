// quant kmeans MODEL: non-uniform quantization with per-row (or per-group) k-means codebooks.
#include "commands.h"
#include "progress.h"
#include "quant/formats/codec.h"
#include "quant/core/error.h"
#include "quant/methods/kmeans.h"
#include "quantize_common.h"

namespace quant::cli {

void register_kmeans(CLI::App& app) {
  auto o = std::make_shared<QuantizeCliOptions>();
  auto c = std::make_shared<CalibCliOptions>();
  auto k = std::make_shared<KmeansOptions>();
  auto weighting = std::make_shared<std::string>();
  auto solver = std::make_shared<std::string>("exact");
  auto* cmd = app.add_subcommand("kmeans", "non-uniform quantization: per-row k-means codebooks (SqueezeLLM, arXiv:2306.07629)");
  o->group_size = -1;
  add_quantize_options(cmd, *o, "lut", false);
  add_calib_options(cmd, *c, 512);
  cmd->get_option("--format")->description("output format: lut (codes + fp16 codebooks, SqueezeLLM layout) or dense");
  cmd->get_option("--group-size")->description("inputs per codebook; -1 (default) for one codebook per output row");
  cmd->add_option("--weighting", *weighting, "none, or hessian: weigh each weight's error by mean x_j^2 of its input (default: hessian with --calib, else none)")
      ->check(CLI::IsMember({"none", "hessian"}));
  cmd->add_option("--solver", *solver, "exact (optimal 1-D k-means by dynamic programming) or lloyd (k-means++ then Lloyd)")
      ->capture_default_str()->check(CLI::IsMember({"exact", "lloyd"}));
  cmd->add_option("--outliers", k->outliers, "fraction of each linear's weights, largest magnitude first, kept exactly in a sparse side tensor")
      ->capture_default_str()->check(CLI::Range(0.0, 0.5));
  cmd->callback([o, c, k, weighting, solver] {
    const QuantSpec spec = make_spec(*o);
    k->solver = parse_kmeans_solver(*solver);
    const bool have_calib = !c->text.empty() || !c->tokens.empty();
    const KmeansWeighting w = weighting->empty() ? (have_calib ? KmeansWeighting::hessian : KmeansWeighting::none)
                                                 : parse_kmeans_weighting(*weighting);
    if (w == KmeansWeighting::none && have_calib) fail<UsageError>("--weighting none ignores calibration data; drop --calib or the --weighting");
    const RunOptions run = make_run_options(*o, "kmeans", spec, c.get());
    const Model model = formats::open_model(o->model);
    const auto samples = w == KmeansWeighting::hessian ? load_calib(model, *c) : std::vector<std::vector<std::int32_t>>{};
    const Policy policy = make_policy(*o, spec, model, samples);
    const KmeansMethod method(*k, w);
    const Plan plan = make_plan(model, policy, method.traits(), run.format, run.skip_unsupported);
    plan_and_run(*o, model, plan, method, run, samples);
  });
}

}  // namespace quant::cli
