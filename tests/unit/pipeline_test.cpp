// Library-level tests of the plan, the output session and the one layer loop (no CLI process):
// a recording Method checks what the loop hands to methods and in which order.
#include <gtest/gtest.h>

#include <set>

#include <fmt/format.h>

#include "fixtures.h"
#include "quant/core/error.h"
#include "quant/formats/codec.h"
#include "quant/io/io.h"
#include "quant/methods/gptq.h"
#include "quant/methods/rtn.h"
#include "quant/model/weights.h"
#include "quant/pipeline/layer_loop.h"
#include "quant/pipeline/plan.h"

namespace quant {
namespace {

using formats::Format;
using testing::TempDir;

std::vector<std::vector<std::int32_t>> samples(int n, int len, int vocab) {
  std::vector<std::vector<std::int32_t>> s(static_cast<std::size_t>(n));
  for (int i = 0; i < n; ++i)
    for (int t = 0; t < len; ++t) s[static_cast<std::size_t>(i)].push_back((7 * i + 3 * t + 1) % vocab);
  return s;
}

// Records every call the loop makes; quantizes by RTN.
class Recorder : public Method {
 public:
  explicit Recorder(MethodTraits t) : traits_(std::move(t)) {}
  const MethodTraits& traits() const override { return traits_; }
  LayerTransform transform_layer(const LayerContext& ctx, LayerWeights&, std::map<CapturePoint, InputStats>& stats) const override {
    calls.push_back(fmt::format("transform {} inputs {} stats {}", ctx.layer.index, ctx.inputs.size(), stats.size()));
    LayerTransform t;
    t.extra[LinearKind::q] = {{"seen_by_transform", true}};
    return t;
  }
  QuantizedLinear quantize(const LinearInput& in) const override {
    const bool has_h = in.stats && in.stats->hessian.rows() == in.desc.in;
    calls.push_back(fmt::format("{} stats={} h={}", in.desc.prefix, in.stats != nullptr, has_h));
    return {quantize_rtn(in.weight, in.spec), Mat(), nlohmann::json::object()};
  }
  mutable std::vector<std::string> calls;

 private:
  MethodTraits traits_;
};

struct Tiny {
  TempDir dir;
  Model model;
  explicit Tiny(testing::TinyModelSpec spec = {}) : model((testing::write_tiny_model(dir / "m", spec), formats::open_model(dir / "m"))) {}
};

TEST(Plan, FollowsPolicyAndModelOrder) {
  testing::TinyModelSpec spec;
  spec.tied = false;
  Tiny t(spec);
  const Policy p = Policy::standard(QuantSpec{4, 32, false}, false, {Rule::parse("layers\\.1\\.mlp\\.down=skip")});
  const Plan plan = make_plan(t.model, p, RtnMethod().traits(), Format::gptq, false);
  ASSERT_EQ(plan.linears.size(), 2u * 7 + 1);  // decoder linears, then the untied lm_head
  EXPECT_EQ(plan.linears.back().desc->prefix, "lm_head");
  EXPECT_FALSE(plan.linears.back().quantize);  // lm_head stays by default
  EXPECT_FALSE(plan.at(t.model.layout().layers[1].linear(LinearKind::down)).quantize);
  EXPECT_TRUE(plan.at(t.model.layout().layers[0].linear(LinearKind::down)).quantize);
  EXPECT_EQ(plan.n_to_quantize(), 13);
  EXPECT_NE(plan.at(t.model.layout().layers[1].linear(LinearKind::down)).note().find("skip"), std::string::npos);
}

TEST(Plan, RefusesOrKeepsWhatTheFormatCannotHold) {
  testing::TinyModelSpec spec;
  spec.intermediate = 40;  // down_proj's 40 inputs are no whole 32-bit words at 4 bits
  Tiny t(spec);
  const Policy p = Policy::standard(QuantSpec{4, -1, false}, false);
  try {
    make_plan(t.model, p, RtnMethod().traits(), Format::gptq, false);
    FAIL() << "expected a refusal";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("down_proj.weight"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("model.safetensors"), std::string::npos) << e.what();
  }
  const Plan kept = make_plan(t.model, p, RtnMethod().traits(), Format::gptq, true);
  EXPECT_EQ(kept.unsupported().size(), 2u);
  EXPECT_EQ(kept.n_to_quantize(), 12);
  // AWQ's choice: awq cannot hold 40-input down_proj rows (groups of 32), gptq cannot either;
  // dense holds all.
  const Plan best = make_plan_best_format(t.model, p, RtnMethod().traits(), {Format::gptq, Format::dense});
  EXPECT_EQ(best.format, Format::dense);
  EXPECT_TRUE(best.unsupported().empty());
}

TEST(Plan, FormatRefusesMethodsItCannotHold) {
  Tiny t;
  const Policy p = Policy::standard(QuantSpec{4, 32, false}, false);
  MethodTraits codebooks;
  codebooks.name = "kmeans";
  codebooks.codebooks = true;
  EXPECT_THROW(make_plan(t.model, p, codebooks, Format::gptq, false), UsageError);
  EXPECT_THROW(make_plan(t.model, p, RtnMethod().traits(), Format::lut, false), UsageError);
  GptqOptions act;
  act.act_order = true;
  EXPECT_THROW(make_plan(t.model, p, GptqMethod(act).traits(), Format::awq, false), UsageError);
  EXPECT_NO_THROW(make_plan(t.model, p, GptqMethod(act).traits(), Format::gptq, false));
}

TEST(LayerLoop, TrueSequentialHandsEachLinearItsInputsStatistic) {
  Tiny t;
  MethodTraits tr;
  tr.name = "recorder";
  tr.statistic = Statistic::hessian;
  tr.calibrated = true;
  tr.true_sequential = true;
  Recorder rec(tr);
  const Policy p = Policy::standard(QuantSpec{4, 32, false}, false);
  const Plan plan = make_plan(t.model, p, rec.traits(), Format::dense, false);
  RunOptions run;
  run.out = t.dir / "out";
  const QuantizeReport r = quantize_model(t.model, plan, rec, run, samples(2, 16, 96));
  ASSERT_EQ(rec.calls.size(), 14u);
  EXPECT_EQ(rec.calls[0], "model.layers.0.self_attn.q_proj stats=true h=true");
  EXPECT_EQ(rec.calls[13], "model.layers.1.mlp.down_proj stats=true h=true");
  EXPECT_EQ(r.n_quantized, 14);
  EXPECT_EQ(r.method, "recorder");
  EXPECT_TRUE(fs::exists(t.dir / "out" / "model.safetensors"));
  EXPECT_FALSE(fs::exists(t.dir / "out.resume"));  // the journal is removed when the run finishes
}

TEST(LayerLoop, TransformRunsOncePerLayerOnAllCapturePoints) {
  Tiny t;
  MethodTraits tr;
  tr.name = "recorder";
  tr.statistic = Statistic::hessian;
  tr.calibrated = true;
  tr.transforms_layer = true;
  Recorder rec(tr);
  // Layer 0's o_proj is kept: its capture point is still measured for the transform.
  const Policy p = Policy::standard(QuantSpec{4, 32, false}, false, {Rule::parse("layers\\.0\\.self_attn\\.o_proj=skip")});
  const Plan plan = make_plan(t.model, p, rec.traits(), Format::dense, false);
  RunOptions run;
  run.out = t.dir / "out";
  const QuantizeReport r = quantize_model(t.model, plan, rec, run, samples(2, 16, 96));
  ASSERT_EQ(rec.calls.size(), 2u + 13u);
  EXPECT_EQ(rec.calls[0], "transform 0 inputs 4 stats 4");
  EXPECT_EQ(rec.calls[7], "transform 1 inputs 4 stats 4");
  bool merged = false;
  for (const auto& rep : r.tensors) {
    if (rep.name == "model.layers.1.self_attn.q_proj") merged = rep.extra.value("seen_by_transform", false);
  }
  EXPECT_TRUE(merged);  // the transform's per-linear figures reach the report
}

TEST(LayerLoop, UncalibratedMethodsReadTheCheckpointOnly) {
  Tiny t;
  const RtnMethod rtn;
  const Policy p = Policy::standard(QuantSpec{4, 32, false}, false);
  const Plan plan = make_plan(t.model, p, rtn.traits(), Format::dense, false);
  RunOptions run;
  run.out = t.dir / "out";
  quantize_model(t.model, plan, rtn, run, {});
  // The dense output holds exactly RTN's reconstruction of each weight.
  const Model out = formats::open_model(t.dir / "out");
  const LinearDesc& d = t.model.layout().layers[1].linear(LinearKind::up);
  const Mat expect = quantize_rtn(load_linear(t.model, d), QuantSpec{4, 32, false}).dequantize();
  EXPECT_EQ((load_linear(out, d) - expect).cwiseAbs().maxCoeff(), 0.0f);
}

TEST(Session, WritesOnlyThroughThePlan) {
  Tiny t;
  const RtnMethod rtn;
  const Policy p = Policy::standard(QuantSpec{4, 32, false}, false, {Rule::parse("self_attn\\.[qkv]_proj=skip")});
  const Plan plan = make_plan(t.model, p, rtn.traits(), Format::gptq, false);
  RunOptions run;
  run.out = t.dir / "out";
  OutputSession s(t.model, plan, run);
  const LinearDesc& q = t.model.layout().layers[0].linear(LinearKind::q);
  const Mat w = load_linear(t.model, q);
  EXPECT_THROW(s.put_quantized(q, quantize_rtn(w, QuantSpec{4, 32, false}), w), Error);  // planned to be kept
  // Every planned linear but one written: finish refuses to publish a checkpoint whose config
  // would call a float tensor quantized.
  for (const LinearPlan& lp : plan.linears) {
    if (!lp.quantize || lp.desc->prefix == "model.layers.1.mlp.up_proj") continue;
    const Mat wl = load_linear(t.model, *lp.desc);
    s.put_quantized(*lp.desc, quantize_rtn(wl, lp.spec), wl);
  }
  EXPECT_FALSE(fs::exists(t.dir / "out"));  // nothing published before finish
  EXPECT_THROW(s.finish(), Error);
  EXPECT_FALSE(fs::exists(t.dir / "out"));
}

TEST(Session, PublishesPackedAndKeptLinearsWithTheirConfig) {
  Tiny t;
  const RtnMethod rtn;
  const Policy p = Policy::standard(QuantSpec{4, 32, false}, false, {Rule::parse("self_attn\\.[qkv]_proj=skip")});
  const Plan plan = make_plan(t.model, p, rtn.traits(), Format::gptq, false);
  RunOptions run;
  run.out = t.dir / "out";
  const QuantizeReport r = quantize_model(t.model, plan, rtn, run, {});
  EXPECT_EQ(r.n_quantized, 8);
  EXPECT_EQ(r.n_kept, 6);
  const Model out = formats::open_model(t.dir / "out");
  EXPECT_EQ(out.storage(t.model.layout().layers[0].linear(LinearKind::o)), LinearStorage::packed);
  EXPECT_EQ(out.storage(t.model.layout().layers[0].linear(LinearKind::q)), LinearStorage::dense);
  const auto& qc = out.config().quantization_config;
  EXPECT_EQ(qc.at("quant_method"), "gptq");
  EXPECT_EQ(qc.at("dynamic").size(), 2u);  // one key per layer's kept q/k/v group
  EXPECT_EQ(qc.at("true_sequential"), false);  // RTN's method config reaches the codec's block
  EXPECT_GT(qc.at("damp_percent").get<double>(), 0.0);  // loaders require 0 < damp_percent < 1
}

}  // namespace
}  // namespace quant

namespace quant {
namespace {

TEST(Rules, PerTensorMethodKeyIsRefused) {
  EXPECT_THROW(Rule::parse("down_proj=method:rtn"), UsageError);
  EXPECT_THROW(Rule::parse("down_proj=bits:3,method:gptq"), UsageError);
  EXPECT_EQ(Rule::parse("down_proj=bits:3,sym:true").to_string(), "down_proj=bits:3,sym:true");
}

}  // namespace
}  // namespace quant

namespace quant {
namespace {

using formats::Format;

struct Small {
  testing::TempDir dir;
  Model model;
  explicit Small(bool tied = true) : model((write(dir, tied), formats::open_model(dir / "m"))) {}
  static void write(const testing::TempDir& d, bool tied) {
    testing::TinyModelSpec spec;
    spec.tied = tied;
    testing::write_tiny_model(d / "m", spec);
  }
  std::string refusal(Format f, std::vector<std::string> rules, bool lm_head = false) const {
    std::vector<Rule> parsed;
    for (const auto& r : rules) parsed.push_back(Rule::parse(r));
    try {
      make_plan(model, Policy::standard(QuantSpec{4, 32, false}, lm_head, parsed), RtnMethod().traits(), f, false);
    } catch (const UsageError& e) {
      return e.what();
    }
    return {};
  }
};

TEST(LoaderRules, FusedSiblingsMustShareOneSpec) {
  const Small s;
  EXPECT_NE(s.refusal(Format::gptq, {"v_proj=bits:8"}).find("qkv_proj"), std::string::npos);
  EXPECT_NE(s.refusal(Format::gptq, {"layers\\.0\\.self_attn\\.q_proj=skip"}).find("kept unquantized"), std::string::npos);
  EXPECT_NE(s.refusal(Format::gptq, {"up_proj=group:64"}).find("gate_up_proj"), std::string::npos);
  EXPECT_EQ(s.refusal(Format::gptq, {"self_attn\\.[qkv]_proj=bits:8", "down_proj=bits:2"}), "");
  EXPECT_EQ(s.refusal(Format::dense, {"v_proj=bits:3"}), "");  // dense loads anywhere
}

TEST(LoaderRules, AwqHasOneSpecNoLayerSkipsAndNoLmHead) {
  const Small s(false);
  EXPECT_NE(s.refusal(Format::awq, {"down_proj=group:64"}).find("no per-module overrides"), std::string::npos);
  EXPECT_NE(s.refusal(Format::awq, {"layers\\.0\\.mlp\\.down_proj=skip"}).find("kept in 1 of 2 layers"), std::string::npos);
  EXPECT_NE(s.refusal(Format::awq, {}, true).find("lm_head"), std::string::npos);
  EXPECT_EQ(s.refusal(Format::awq, {"down_proj=skip"}), "");
  EXPECT_EQ(s.refusal(Format::gptq, {"layers\\.0\\.mlp\\.down_proj=skip"}), "");  // gptq has `dynamic`
}

TEST(LoaderRules, GptqTakesTheWidthsItsLoadersAccept) {
  const Small s;
  for (int bits : {5, 6, 7}) {
    QuantSpec spec{bits, 32, false};
    EXPECT_NE(formats::unsupported_reason(Format::gptq, 64, 64, spec), "") << bits;
    EXPECT_EQ(formats::unsupported_reason(Format::dense, 64, 64, spec), "") << bits;
  }
  for (int bits : {2, 3, 4, 8}) EXPECT_EQ(formats::unsupported_reason(Format::gptq, 64, 64, QuantSpec{bits, 32, false}), "") << bits;
}

TEST(LoaderRules, AwqNamesKeptModulesAsAutoAwqAndVllmMatchThem) {
  const Small s;
  const RtnMethod rtn;
  const Plan plan = make_plan(s.model, Policy::standard(QuantSpec{4, 32, false}, false, {Rule::parse("self_attn\\.[qkv]_proj=skip")}),
                              rtn.traits(), Format::awq, false);
  RunOptions run;
  run.out = s.dir / "out";
  quantize_model(s.model, plan, rtn, run, {});
  const auto qc = formats::open_model(s.dir / "out").config().quantization_config;
  const std::vector<std::string> names = qc.at("modules_to_not_convert");
  EXPECT_EQ(names, (std::vector<std::string>{"self_attn.q_proj", "self_attn.qkv_proj", "self_attn.k_proj", "self_attn.v_proj"}));
}

}  // namespace
}  // namespace quant
