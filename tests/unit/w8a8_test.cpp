// Activation-quantized outputs (compressed-tensors int-quantized W8A8, float-quantized FP8),
// float8 weights, the per-token activation fake-quant quant eval applies, and SmoothQuant.
// Tensors are checked by a reader written here from the compressed-tensors spec
// (NaiveQuantizationCompressor / FloatQuantizationCompressor: `weight` int8 or float8_e4m3fn
// [out, in], `weight_scale` [out, 1], ŵ = scale · q), against the dense weights quant writes for
// the same quantization.
#include <gtest/gtest.h>

#include <fmt/format.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>

#include "cli_helpers.h"
#include "fixtures.h"
#include "quant/core/error.h"
#include "quant/core/dtype.h"
#include "quant/core/quantizer.h"
#include "quant/formats/codec.h"
#include "quant/io/io.h"
#include "quant/io/safetensors.h"
#include "quant/methods/rtn.h"
#include "quant/methods/smoothquant.h"
#include "quant/model/calibration.h"
#include "quant/model/forward.h"
#include "quant/model/weights.h"

namespace quant {
namespace {

using nlohmann::json;
using testing::run_quant;
using testing::TempDir;

// The nearest finite e4m3 value by exhaustive search (ties: the even code).
std::uint8_t nearest_e4m3(float x) {
  std::uint8_t best = 0;
  float err = INFINITY;
  for (int c = 0; c < 256; ++c) {
    const float v = f8e4m3_to_f32(static_cast<std::uint8_t>(c));
    if (std::isnan(v) || (std::signbit(v) != std::signbit(x))) continue;
    const float e = std::abs(v - x);
    if (e < err || (e == err && (c & 1) == 0)) err = e, best = static_cast<std::uint8_t>(c);
  }
  return best;
}

TEST(Fp8Encode, RoundTripsEveryFiniteCode) {
  for (int c = 0; c < 256; ++c) {
    if ((c & 0x7f) == 0x7f) continue;  // NaN
    EXPECT_EQ(f32_to_f8e4m3(f8e4m3_to_f32(static_cast<std::uint8_t>(c))), c) << c;
  }
}

TEST(Fp8Encode, RoundsToNearestEvenAndSaturates) {
  EXPECT_EQ(f32_to_f8e4m3(1.0625f), 0x38);  // halfway 1.0 | 1.125: even mantissa (1.0)
  EXPECT_EQ(f32_to_f8e4m3(1.1875f), 0x3a);  // halfway 1.125 | 1.25: 1.25
  EXPECT_EQ(f32_to_f8e4m3(500.0f), 0x7e);   // saturates at 448
  EXPECT_EQ(f32_to_f8e4m3(-1e9f), 0xfe);
  EXPECT_EQ(f32_to_f8e4m3(std::ldexp(1.0f, -10)), 0x00);      // half the smallest subnormal: to 0
  EXPECT_EQ(f32_to_f8e4m3(3.0f * std::ldexp(1.0f, -10)), 0x02);  // 1.5 steps: to 2 (even)
  EXPECT_EQ(f32_to_f8e4m3(0.0146484375f), 0x08);  // 7.5 subnormal steps round up into the first normal
  EXPECT_EQ(f32_to_f8e4m3(NAN) & 0x7f, 0x7f);
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> u(-8.0f, 8.0f);
  for (int i = 0; i < 20000; ++i) {
    const float x = std::ldexp(u(rng), static_cast<int>(rng() % 14) - 9);
    ASSERT_EQ(f32_to_f8e4m3(x), nearest_e4m3(x)) << x;
    ASSERT_EQ(round_to_f8e4m3(x), f8e4m3_to_f32(nearest_e4m3(x))) << x;
  }
  for (float x : {448.0f, 460.0f, 1e6f, -0.0f, 0.0146484375f, 1.0625f, -1.1875f}) EXPECT_EQ(round_to_f8e4m3(x), f8e4m3_to_f32(f32_to_f8e4m3(x))) << x;
}

TEST(ActivationFakeQuant, Int8PerTokenByHand) {
  Mat x(2, 3);
  x << 1.27f, 0.004f, -0.635f, 0.0f, 0.0f, 0.0f;
  fake_quant_tokens(x, ActQuant::int8);  // scale 1.27 / 127 = 0.01
  EXPECT_NEAR(x(0, 0), 1.27f, 1e-6);
  EXPECT_EQ(x(0, 1), 0.0f);               // 0.4 steps
  EXPECT_NEAR(x(0, 2), -0.64f, 1e-6);     // −63.5 steps: ties to even, −64
  EXPECT_EQ(x(1, 0), 0.0f);               // an all-zero token stays zero
  Mat y(1, 3);
  y << 448.0f, 1.06f, -3.3f;
  fake_quant_tokens(y, ActQuant::fp8);  // scale 1
  EXPECT_EQ(y(0, 0), 448.0f);
  EXPECT_EQ(y(0, 1), 1.0f);
  EXPECT_EQ(y(0, 2), -3.25f);
  Mat z = y;
  fake_quant_tokens(z, ActQuant::none);
  EXPECT_EQ(z, y);
}

// A static scale: every value divided by the one calibrated scale, clamped to the type's range,
// rounded (e4m3 nearest / int8 to nearest even), multiplied back; scale 0 is the dynamic path.
TEST(ActivationFakeQuant, StaticPerTensorByHand) {
  Mat x(2, 3);
  x << 1.0f, -2.0f, 900.0f, 0.3f, 0.0f, -1000.0f;
  Mat f = x;
  fake_quant_input(f, {ActQuant::fp8, 2.0f});
  EXPECT_EQ(f(0, 0), 1.0f);
  EXPECT_EQ(f(0, 1), -2.0f);
  EXPECT_EQ(f(0, 2), 896.0f);    // 450 clamps to 448
  EXPECT_EQ(f(1, 0), 0.3125f);   // 0.15 → 0.15625, the nearest e4m3 (step 1/64 in [1/8, 1/4))
  EXPECT_EQ(f(1, 1), 0.0f);
  EXPECT_EQ(f(1, 2), -896.0f);
  Mat i = x;
  fake_quant_input(i, {ActQuant::int8, 2.0f});
  EXPECT_EQ(i(0, 0), 0.0f);      // 0.5 steps: ties to even
  EXPECT_EQ(i(0, 1), -2.0f);
  EXPECT_EQ(i(0, 2), 254.0f);    // 450 clamps to 127
  EXPECT_EQ(i(1, 0), 0.0f);
  EXPECT_EQ(i(1, 2), -256.0f);   // −500 clamps to −128
  Mat d = x, t = x;
  fake_quant_input(d, {ActQuant::fp8, 0.0f});
  fake_quant_tokens(t, ActQuant::fp8);
  EXPECT_EQ(d, t) << "scale 0: dynamic per token";
  EXPECT_EQ(static_input_scale(ActQuant::fp8, 448.0f), 1.0f);
  EXPECT_EQ(static_input_scale(ActQuant::fp8, 3.0f * 448.0f), 3.0f);
  EXPECT_EQ(static_input_scale(ActQuant::int8, 254.0f), 2.0f);
  EXPECT_EQ(static_input_scale(ActQuant::int8, 0.0f), 1.0f);
  const float s = static_input_scale(ActQuant::fp8, 1.0f);  // 1/448 is not a float16: the next one up
  EXPECT_GE(s * 448.0f, 1.0f);
  EXPECT_EQ(s, f16_to_f32(f32_to_f16(s)));
  EXPECT_LT(f16_to_f32(static_cast<std::uint16_t>(f32_to_f16(s) - 1)) * 448.0f, 1.0f);
  EXPECT_EQ((ActInput{ActQuant::fp8, 0.5f}).label(), "fp8 static per-tensor");
  EXPECT_EQ((ActInput{ActQuant::int8, 0.0f}).label(), "int8 dynamic per-token");
}

TEST(Fp8Weights, ScaleCoversEachRowAndCodesAreNearest) {
  std::mt19937 rng(11);
  std::normal_distribution<float> n(0.0f, 0.02f);
  Mat w(16, 40);
  for (Eigen::Index i = 0; i < w.size(); ++i) w.data()[i] = n(rng);
  w.row(3).setZero();
  QuantSpec spec;
  spec.bits = 8;
  spec.group_size = -1;
  spec.sym = true;
  spec.fp8 = true;
  const QuantizedMatrix m = quantize_rtn(w, spec);
  ASSERT_TRUE(m.fp8);
  ASSERT_EQ(m.n_groups, 1);
  const Mat d = m.dequantize();
  for (Eigen::Index o = 0; o < w.rows(); ++o) {
    const float s = m.scales[static_cast<std::size_t>(o)];
    EXPECT_EQ(f16_to_f32(f32_to_f16(s)), s) << "scale is float16-representable";
    EXPECT_GE(s * 448.0f, w.row(o).cwiseAbs().maxCoeff()) << "no weight saturates";
    for (Eigen::Index j = 0; j < w.cols(); ++j) {
      const std::uint8_t q = m.q[static_cast<std::size_t>(o * w.cols() + j)];
      ASSERT_EQ(q, f32_to_f8e4m3(w(o, j) / s)) << o << "," << j;
      ASSERT_EQ(d(o, j), s * f8e4m3_to_f32(q));
    }
  }
  EXPECT_EQ(d.row(3).cwiseAbs().maxCoeff(), 0.0f);
  // 3 mantissa bits: relative error at most 1/16 of each row's largest weight's binade.
  EXPECT_LT((d - w).norm() / w.norm(), 0.04);
}

TEST(SmoothQuant, ScalesByHand) {
  Mat x(2, 3);
  x << 1.0f, -2.0f, 0.0f, 3.0f, 0.5f, 0.0f;  // ranges 2, 2.5, 0
  Mat w1(1, 3), w2(1, 3);
  w1 << 0.5f, -1.0f, 0.3f;
  w2 << 0.25f, 2.0f, 0.0f;  // max |W| per channel 0.5, 2, 0.3 → ×2: 1, 4, 0.6
  const Vec s = smoothing_scales({x}, {&w1, &w2}, 0.5);
  EXPECT_NEAR(s(0), std::sqrt(2.0) / std::sqrt(1.0), 1e-6);
  EXPECT_NEAR(s(1), std::sqrt(2.5) / std::sqrt(4.0), 1e-6);
  EXPECT_EQ(s(2), 1.0f) << "a channel with no activation range is left alone";
  const Vec s8 = smoothing_scales({x}, {&w1, &w2}, 0.8);
  EXPECT_NEAR(s8(0), std::pow(2.0, 0.8) / std::pow(1.0, 0.2), 1e-5);
}

// The smoothed float layer computes the same function; its norms carry 1/s, and with the linear
// mappings v_proj (without GQA) and up_proj rows carry it for o_proj and down_proj.
TEST(SmoothQuant, TransformKeepsTheLayerFunction) {
  for (const bool linears : {false, true}) {
    SCOPED_TRACE(linears ? "norms and linears" : "norms");
    TempDir dir;
    testing::TinyModelSpec spec;
    spec.seed = 9;
    spec.kv_heads = linears ? spec.heads : 2;  // v → o needs v and o of one shape (no GQA)
    testing::write_tiny_model(dir / "m", spec);
    const Model model = Model::open(dir / "m");
    const ModelConfig& c = model.config();
    const LayerWeights lw = load_layer(model, 0);
    const RopeTable rope = build_rope(c, 16);
    std::mt19937 rng(2);
    std::normal_distribution<float> n(0.0f, 1.0f);
    Mat h(16, c.hidden_size);
    for (Eigen::Index i = 0; i < h.size(); ++i) h.data()[i] = n(rng);
    std::map<CapturePoint, std::vector<Mat>> inputs;
    const LinearInputHook hook = [&](CapturePoint p, const Mat& x) { inputs[p].push_back(x); };
    Mat ref = h;
    decoder_layer_forward(c, lw, rope, ref, &hook);
    std::map<CapturePoint, InputStats> stats;
    for (const auto& [p, xs] : inputs) stats[p] = measure_inputs(Statistic::hessian, xs);
    LayerContext ctx{c, model.layout().layers[0], rope, {}, {}, inputs};
    for (int k = 0; k < 7; ++k) {
      ctx.planned[static_cast<std::size_t>(k)] = true;
      ctx.specs[static_cast<std::size_t>(k)].act = ActQuant::int8;
    }
    const SmoothedMethod method(std::make_unique<RtnMethod>(), 0.5, linears);
    EXPECT_TRUE(method.traits().calibrated);
    EXPECT_TRUE(method.traits().transforms_layer);
    LayerWeights smoothed = lw;
    const Mat h_before = stats.at(CapturePoint::attn_in).hessian;
    const LayerTransform t = method.transform_layer(ctx, smoothed, stats);
    ASSERT_EQ(t.changed.size(), 2u) << "input_layernorm and post_attention_layernorm";
    EXPECT_GT((smoothed.attn_norm - lw.attn_norm).norm(), 1e-3);
    EXPECT_GT((smoothed.linear(LinearKind::gate) - lw.linear(LinearKind::gate)).norm(), 1e-3);
    EXPECT_EQ(smoothed.linear(LinearKind::o) != lw.linear(LinearKind::o), linears);
    EXPECT_EQ(smoothed.linear(LinearKind::down) != lw.linear(LinearKind::down), linears);
    EXPECT_GT((stats.at(CapturePoint::attn_in).hessian - h_before).norm(), 1e-6) << "the Hessian follows the inputs X / s";
    Mat out = h;
    decoder_layer_forward(c, smoothed, rope, out, nullptr);
    EXPECT_LT((out - ref).cwiseAbs().maxCoeff(), 1e-4 * (1.0f + ref.cwiseAbs().maxCoeff()));
  }
}

// --smooth auto: with an outlier channel in the inputs, the chosen strength smooths, and the
// quantized outputs err less than without smoothing (the objective it minimises, computed here).
TEST(SmoothQuant, AutoStrengthBeatsNoSmoothingOnOutliers) {
  TempDir dir;
  testing::TinyModelSpec spec;
  spec.seed = 4;
  testing::write_tiny_model(dir / "m", spec);
  const Model model = Model::open(dir / "m");
  const ModelConfig& c = model.config();
  const LayerWeights lw = load_layer(model, 0);
  const RopeTable rope = build_rope(c, 32);
  std::mt19937 rng(5);
  std::normal_distribution<float> n(0.0f, 1.0f);
  Mat h(32, c.hidden_size);
  for (Eigen::Index i = 0; i < h.size(); ++i) h.data()[i] = n(rng);
  std::map<CapturePoint, std::vector<Mat>> inputs;
  const LinearInputHook hook = [&](CapturePoint p, const Mat& x) { inputs[p].push_back(x); };
  decoder_layer_forward(c, lw, rope, h, &hook);
  inputs[CapturePoint::attn_in][0].col(3) *= 60.0f;  // an outlier channel, as LLM activations have
  std::map<CapturePoint, InputStats> stats;
  for (const auto& [p, xs] : inputs) stats[p] = measure_inputs(Statistic::none, xs);
  LayerContext ctx{c, model.layout().layers[0], rope, {}, {}, inputs};
  QuantSpec w8a8;
  w8a8.bits = 8;
  w8a8.group_size = -1;
  w8a8.sym = true;
  w8a8.act = ActQuant::int8;
  for (int k = 0; k < 7; ++k) {
    ctx.planned[static_cast<std::size_t>(k)] = true;
    ctx.specs[static_cast<std::size_t>(k)] = w8a8;
  }
  LayerWeights smoothed = lw;
  const LayerTransform t = SmoothedMethod(std::make_unique<RtnMethod>(), kAutoStrength).transform_layer(ctx, smoothed, stats);
  ASSERT_TRUE(t.extra.count(LinearKind::q));
  const double alpha = t.extra.at(LinearKind::q)["smoothquant_alpha"];
  EXPECT_GE(alpha, 0.0) << "an outlier channel is worth smoothing";
  const Vec s = lw.attn_norm.cwiseQuotient(smoothed.attn_norm);
  const Mat& x = inputs[CapturePoint::attn_in][0];
  auto error = [&](const Vec& scale) {
    Mat xq = x * scale.cwiseInverse().asDiagonal();
    fake_quant_tokens(xq, ActQuant::int8);
    double e = 0;
    for (LinearKind k : {LinearKind::q, LinearKind::k, LinearKind::v}) {
      const Mat& w = lw.linear(k);
      const Mat wq = quantize_rtn(w * scale.asDiagonal(), w8a8).dequantize();
      e += (x * w.transpose() - xq * wq.transpose()).cast<double>().squaredNorm();
    }
    return e;
  };
  EXPECT_LT(error(s), error(Vec::Ones(s.size())));
  EXPECT_LT(error(s), error(smoothing_scales({x}, {&lw.linear(LinearKind::q), &lw.linear(LinearKind::k), &lw.linear(LinearKind::v)}, 1.0)) + 1e-9);
}

struct Fixture {
  TempDir dir;
  fs::path m, calib;
  Fixture() {
    testing::TinyModelSpec spec;
    spec.hidden = 64;
    spec.intermediate = 128;
    spec.tied = false;
    spec.seed = 5;
    spec.dtype = DType::F16;
    spec.weight_scale = 0.3f;
    m = dir / "m";
    testing::write_tiny_model(m, spec);
    std::string text;
    std::uint32_t x = 7;
    for (int i = 0; i < 2048; ++i) {
      x = x * 1664525u + 1013904223u;
      text += std::to_string((x >> 9) % 96) + " ";
    }
    calib = dir / "calib.txt";
    write_file_atomic(calib, text);
  }
  std::string calib_args() const { return "--calib-tokens " + calib.string() + " --nsamples 8 --seqlen 64"; }
};

// ŵ = weight_scale[o] · q, as the spec's dequantize computes it, rounded to the model's float16.
// per_tensor: weight_scale is one value of shape [1] (compressed-tensors strategy "tensor").
std::vector<float> decode_naive(const TensorStore& s, const std::string& p, bool per_tensor) {
  const TensorInfo& t = s.get(p + ".weight");
  EXPECT_EQ(t.shape.size(), 2u);
  const std::int64_t out = t.shape[0], in = t.shape[1];
  EXPECT_EQ(s.get(p + ".weight_scale").shape, (per_tensor ? std::vector<std::int64_t>{1} : std::vector<std::int64_t>{out, 1})) << p;
  const std::vector<float> scale = s.read_f32(p + ".weight_scale");
  const auto bytes = s.bytes(p + ".weight");
  std::vector<float> w(static_cast<std::size_t>(out * in));
  for (std::int64_t i = 0; i < out * in; ++i) {
    const auto b = static_cast<std::uint8_t>(bytes[static_cast<std::size_t>(i)]);
    const float q = t.dtype == DType::I8 ? static_cast<float>(static_cast<std::int8_t>(b)) : f8e4m3_to_f32(b);
    w[static_cast<std::size_t>(i)] = f16_to_f32(f32_to_f16(scale[per_tensor ? 0 : static_cast<std::size_t>(i / in)] * q));
  }
  return w;
}

struct NaiveCase {
  std::string name, command, dense_command, format, scheme_class;
  DType dtype;
  ActQuant act;
  std::string strategy = "channel";  // of the weights
  bool static_act = false;           // input_activations static per tensor (an input_scale per linear)
};
void PrintTo(const NaiveCase& c, std::ostream* os) { *os << c.name; }

class NaiveQuantized : public ::testing::TestWithParam<NaiveCase> {};

TEST_P(NaiveQuantized, IndependentReaderEqualsDenseAndEvalSimulatesActivations) {
  const NaiveCase& k = GetParam();
  Fixture f;
  const std::string a = fmt::format(fmt::runtime(k.command), f.m.string(), f.calib_args());
  const auto r = run_quant(a + " -o " + (f.dir / "ct").string());
  ASSERT_EQ(r.rc, 0) << r.err;
  const auto d = run_quant(fmt::format(fmt::runtime(k.dense_command), f.m.string(), f.calib_args()) + " --format dense -o " + (f.dir / "dense").string());
  ASSERT_EQ(d.rc, 0) << d.err;
  const auto c = run_quant("check " + (f.dir / "ct").string() + " --for vllm");
  EXPECT_EQ(c.rc, 0) << c.out << c.err;
  EXPECT_NE(c.out.find(k.scheme_class), std::string::npos) << c.out;

  const json qc = read_json_file(f.dir / "ct" / "config.json")["quantization_config"];
  EXPECT_EQ(qc["format"], k.format);
  const json& g = qc["config_groups"].begin().value();
  EXPECT_EQ(g["weights"]["strategy"], k.strategy);
  EXPECT_EQ(g["weights"]["type"], k.dtype == DType::I8 ? "int" : "float");
  if (k.act == ActQuant::none) {
    EXPECT_TRUE(g["input_activations"].is_null());
  } else {
    EXPECT_EQ(g["input_activations"]["strategy"], k.static_act ? "tensor" : "token");
    EXPECT_EQ(g["input_activations"]["dynamic"], !k.static_act);
    EXPECT_EQ(g["input_activations"]["type"], k.act == ActQuant::int8 ? "int" : "float");
  }
  const TensorStore ct = TensorStore::open(f.dir / "ct"), dense = TensorStore::open(f.dir / "dense");
  int n = 0;
  const Model source = Model::open(f.m);
  for (const LinearDesc* l : source.linears()) {
    if (l->layer < 0) continue;
    ASSERT_EQ(ct.get(l->weight_name()).dtype, k.dtype) << l->prefix;
    EXPECT_FALSE(ct.contains(l->prefix + ".weight_shape")) << "naive formats store the weight unpacked";
    EXPECT_FALSE(ct.contains(l->prefix + ".weight_zero_point")) << "symmetric";
    EXPECT_EQ(ct.contains(l->prefix + ".input_scale"), k.static_act) << l->prefix;
    const std::vector<float> mine = decode_naive(ct, l->prefix, k.strategy == "tensor"), theirs = dense.read_f32(l->weight_name());
    ASSERT_EQ(mine.size(), theirs.size());
    for (std::size_t i = 0; i < mine.size(); ++i) ASSERT_EQ(mine[i], theirs[i]) << l->prefix << " element " << i;
    ++n;
  }
  EXPECT_EQ(n, 2 * 7);
  EXPECT_EQ(ct.get("lm_head.weight").dtype, DType::F16) << "lm_head stays in float (ignore)";

  // quant eval: the activation quantization is simulated (and said), and changes the result
  // against the same weights without it.
  const std::string eval = " --tokens " + f.calib.string() + " --ctx 64 --json";
  const auto e = run_quant("eval " + (f.dir / "ct").string() + eval);
  ASSERT_EQ(e.rc, 0) << e.err;
  const auto ed = run_quant("eval " + (f.dir / "dense").string() + eval);
  ASSERT_EQ(ed.rc, 0) << ed.err;
  const json je = json::parse(e.out), jd = json::parse(ed.out);
  EXPECT_EQ(jd["activation_quant"], "none");
  if (k.act == ActQuant::none) {
    EXPECT_EQ(je["activation_quant"], "none");
    EXPECT_NEAR(je["ppl"].get<double>(), jd["ppl"].get<double>(), 1e-3 * jd["ppl"].get<double>());
  } else {
    EXPECT_EQ(je["activation_quant"], fmt::format("{} {} on 14 of 14 linears", act_quant_name(k.act),
                                                  k.static_act ? "static per-tensor" : "dynamic per-token"));
    EXPECT_NE(je["ppl"].get<double>(), jd["ppl"].get<double>());
    EXPECT_NEAR(je["ppl"].get<double>(), jd["ppl"].get<double>(), 0.05 * jd["ppl"].get<double>()) << "8-bit activations are close";
  }
}

INSTANTIATE_TEST_SUITE_P(
    Schemes, NaiveQuantized,
    ::testing::Values(NaiveCase{"rtn_w8a8", "rtn {0} --scheme W8A8", "rtn {0} -b 8 -g -1 --sym", "int-quantized", "CompressedTensorsW8A8Int8",
                                DType::I8, ActQuant::int8},
                      NaiveCase{"gptq_w8a8", "gptq {0} --scheme w8a8 {1}", "gptq {0} -b 8 -g -1 --sym {1}", "int-quantized",
                                "CompressedTensorsW8A8Int8", DType::I8, ActQuant::int8},
                      NaiveCase{"rtn_fp8_dynamic", "rtn {0} --scheme FP8_DYNAMIC", "rtn {0} --scheme W8A16_FP8", "float-quantized",
                                "CompressedTensorsW8A8Fp8", DType::F8_E4M3, ActQuant::fp8},
                      NaiveCase{"rtn_fp8_weight_only", "rtn {0} --scheme W8A16_FP8", "rtn {0} --scheme W8A16_FP8", "float-quantized",
                                "CompressedTensorsW8A16Fp8", DType::F8_E4M3, ActQuant::none},
                      NaiveCase{"rtn_fp8_per_tensor", "rtn {0} --scheme FP8_DYNAMIC --fp8-weight-scale tensor",
                                "rtn {0} --scheme W8A16_FP8 --fp8-weight-scale tensor", "float-quantized", "CompressedTensorsW8A8Fp8",
                                DType::F8_E4M3, ActQuant::fp8, "tensor"},
                      NaiveCase{"rtn_w8a8_static", "rtn {0} --scheme W8A8 --static-activations {1}", "rtn {0} -b 8 -g -1 --sym",
                                "int-quantized", "CompressedTensorsW8A8Int8", DType::I8, ActQuant::int8, "channel", true},
                      NaiveCase{"gptq_w8a8_static", "gptq {0} --scheme W8A8 --static-activations {1}", "gptq {0} -b 8 -g -1 --sym {1}",
                                "int-quantized", "CompressedTensorsW8A8Int8", DType::I8, ActQuant::int8, "channel", true},
                      NaiveCase{"rtn_fp8_static", "rtn {0} --scheme FP8 {1}", "rtn {0} --scheme W8A16_FP8 --fp8-weight-scale tensor",
                                "float-quantized", "CompressedTensorsW8A8Fp8", DType::F8_E4M3, ActQuant::fp8, "tensor", true}),
    [](const ::testing::TestParamInfo<NaiveCase>& i) { return i.param.name; });

// One fp8 scale per tensor: every row shares it, it covers the tensor's largest weight, and a
// config that says otherwise (channel strategy over [1] scales) is refused by quant check; the
// option needs fp8 weights.
TEST(Fp8PerTensor, OneScaleCoversTheTensorAndTheCheckerHoldsTheConfigToIt) {
  Mat w(8, 24);
  std::mt19937 rng(3);
  std::normal_distribution<float> n(0.0f, 0.02f);
  for (Eigen::Index i = 0; i < w.size(); ++i) w.data()[i] = n(rng);
  w(5, 7) = 0.5f;  // the tensor's largest weight, in one row
  QuantSpec spec;
  spec.bits = 8;
  spec.group_size = -1;
  spec.sym = true;
  spec.fp8 = true;
  spec.per_tensor = true;
  EXPECT_EQ(spec.label(), "fp8t");
  const QuantizedMatrix m = quantize_rtn(w, spec);
  ASSERT_TRUE(m.per_tensor);
  const float s = m.scales[0];
  EXPECT_GE(s * 448.0f, 0.5f);
  EXPECT_LT(s * 448.0f * 0.99f, 0.5f) << "the smallest float16 scale that covers it";
  for (float x : m.scales) EXPECT_EQ(x, s);
  for (Eigen::Index o = 0; o < w.rows(); ++o) {
    for (Eigen::Index j = 0; j < w.cols(); ++j) ASSERT_EQ(m.q[static_cast<std::size_t>(o * w.cols() + j)], f32_to_f8e4m3(w(o, j) / s));
  }
  QuantSpec bad = spec;
  bad.fp8 = false;
  EXPECT_THROW(bad.validate(), UsageError);

  Fixture f;
  const auto u = run_quant("rtn " + f.m.string() + " --fp8-weight-scale tensor -o " + (f.dir / "int").string());
  EXPECT_NE(u.rc, 0);
  EXPECT_NE(u.err.find("--fp8-weight-scale is for float8 weights"), std::string::npos) << u.err;
  EXPECT_FALSE(fs::exists(f.dir / "int"));
  const auto r = run_quant("rtn " + f.m.string() + " --scheme W8A16_FP8 --fp8-weight-scale tensor -o " + (f.dir / "ct").string());
  ASSERT_EQ(r.rc, 0) << r.err;
  json cfg = read_json_file(f.dir / "ct" / "config.json");
  cfg["quantization_config"]["config_groups"]["group_0"]["weights"]["strategy"] = "channel";
  write_file_atomic(f.dir / "ct" / "config.json", cfg.dump(2));
  const auto c = run_quant("check " + (f.dir / "ct").string() + " --for vllm");
  EXPECT_NE(c.rc, 0) << c.out;
  EXPECT_NE((c.out + c.err).find("channel strategy needs shape ["), std::string::npos) << c.out << c.err;
}

// llm-compressor's FP8 preset: each linear's input_scale is the largest |x| its calibration
// inputs reach over 448 (rounded up to float16) — checked against layer 0's inputs computed here
// from the float model, which the layer loop sees unchanged — fused siblings share it, eval
// uses the stored value, and a missing or broken one is refused naming the tensor.
TEST(Fp8Static, InputScalesAreTheCalibrationMaximaAndEvalUsesThem) {
  Fixture f;
  const fs::path out = f.dir / "fp8";
  const auto r = run_quant("rtn " + f.m.string() + " --scheme FP8 " + f.calib_args() + " -o " + out.string());
  ASSERT_EQ(r.rc, 0) << r.err;
  const Model model = Model::open(f.m);
  CalibOptions co;
  co.tokens = f.calib;
  co.nsamples = 8;
  co.seqlen = 64;
  LayerRunner runner(model, load_calibration(model, co, nullptr));
  const LayerWeights lw = load_layer(model, 0);
  const TensorStore st = TensorStore::open(out);
  const auto scale_of = [&](const std::string& p) {
    const TensorInfo& t = st.get(p + ".input_scale");
    EXPECT_EQ(t.shape, std::vector<std::int64_t>{1}) << p;
    EXPECT_EQ(t.dtype, DType::F16) << p << ": the model's dtype";
    return st.read_f32(p + ".input_scale").at(0);
  };
  const std::string l0 = "model.layers.0.";
  const std::vector<std::pair<CapturePoint, std::vector<std::string>>> points = {
      {CapturePoint::attn_in, {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"}},
      {CapturePoint::o_in, {"self_attn.o_proj"}},
      {CapturePoint::mlp_in, {"mlp.gate_proj", "mlp.up_proj"}},
      {CapturePoint::down_in, {"mlp.down_proj"}}};
  for (const auto& [p, linears] : points) {
    float amax = 0.0f;
    for (const Mat& x : runner.stage(p, lw)) amax = std::max(amax, x.cwiseAbs().maxCoeff());
    ASSERT_GT(amax, 0.0f);
    for (const std::string& l : linears) EXPECT_EQ(scale_of(l0 + l), static_input_scale(ActQuant::fp8, amax)) << l;
  }
  const std::string l1 = "model.layers.1.";
  EXPECT_EQ(scale_of(l1 + "self_attn.q_proj"), scale_of(l1 + "self_attn.v_proj"));
  EXPECT_EQ(scale_of(l1 + "mlp.gate_proj"), scale_of(l1 + "mlp.up_proj"));
  // Per-tensor weight scales: fused siblings share one (the largest sibling's), so vLLM's
  // requantize_with_max_scale of qkv_proj / gate_up_proj is exact; each covers its tensor.
  const auto wscale = [](const TensorStore& t, const std::string& p) { return t.read_f32(p + ".weight_scale").at(0); };
  const auto amax_of = [&](const std::string& p) {
    for (const LinearDesc* d : model.linears()) {
      if (d->prefix == p) return load_linear(model, *d).cwiseAbs().maxCoeff();
    }
    ADD_FAILURE() << "no linear " << p;
    return 0.0f;
  };
  for (const std::string& l : {l0, l1}) {
    const float sq = wscale(st, l + "self_attn.q_proj"), sg = wscale(st, l + "mlp.gate_proj");
    EXPECT_EQ(wscale(st, l + "self_attn.k_proj"), sq);
    EXPECT_EQ(wscale(st, l + "self_attn.v_proj"), sq);
    EXPECT_EQ(wscale(st, l + "mlp.up_proj"), sg);
    const float m = std::max({amax_of(l + "self_attn.q_proj"), amax_of(l + "self_attn.k_proj"), amax_of(l + "self_attn.v_proj")});
    EXPECT_GE(sq * 448.0f, m);
    EXPECT_LT(f16_to_f32(static_cast<std::uint16_t>(f32_to_f16(sq) - 1)) * 448.0f, m) << "the smallest float16 scale covering the three";
    EXPECT_GE(wscale(st, l + "self_attn.o_proj") * 448.0f, amax_of(l + "self_attn.o_proj"));
  }
  {  // after SmoothQuant the scale is of the smoothed inputs x / s (s folded into the norm: new = old / s)
    const fs::path sm = f.dir / "fp8_smoothed";
    const auto rs = run_quant("rtn " + f.m.string() + " --scheme FP8 --smooth 0.5 " + f.calib_args() + " -o " + sm.string());
    ASSERT_EQ(rs.rc, 0) << rs.err;
    const TensorStore ss = TensorStore::open(sm);
    const std::vector<float> old_norm = TensorStore::open(f.m).read_f32(l0 + "input_layernorm.weight"),
                             new_norm = ss.read_f32(l0 + "input_layernorm.weight");
    float amax = 0.0f;
    LayerRunner fresh(model, load_calibration(model, co, nullptr));
    for (const Mat& x : fresh.stage(CapturePoint::attn_in, lw)) {
      for (Eigen::Index t = 0; t < x.rows(); ++t) {
        for (Eigen::Index j = 0; j < x.cols(); ++j) {
          amax = std::max(amax, std::abs(x(t, j) * new_norm[static_cast<std::size_t>(j)] / old_norm[static_cast<std::size_t>(j)]));
        }
      }
    }
    const float want = static_input_scale(ActQuant::fp8, amax), got = ss.read_f32(l0 + "self_attn.q_proj.input_scale").at(0);
    EXPECT_NEAR(got, want, 2e-3f * want) << "float16 norms round the folded 1/s";
    EXPECT_NE(got, scale_of(l0 + "self_attn.q_proj")) << "smoothing changed the inputs' range";
    const auto es = run_quant("eval " + sm.string() + " --tokens " + f.calib.string() + " --ctx 64 --json");
    ASSERT_EQ(es.rc, 0) << es.err;
    EXPECT_EQ(json::parse(es.out)["activation_quant"], "fp8 static per-tensor on 14 of 14 linears");
  }
  const json summary = read_json_file(out / "quant_summary.json");
  EXPECT_NE(summary.dump().find("\"input_scale\""), std::string::npos) << "the report names each scale";

  // eval reads the stored scales: a sixteenth of q/k/v's saturates their inputs, and the result
  // moves away from the float model's.
  const std::string eval = " --tokens " + f.calib.string() + " --ctx 64 --json";
  const std::string vs_float = eval + " --base " + f.m.string();
  const auto e = run_quant("eval " + out.string() + vs_float);
  ASSERT_EQ(e.rc, 0) << e.err;
  const fs::path tiny = f.dir / "tiny";
  fs::create_directory(tiny);
  for (const auto& entry : fs::directory_iterator(out)) fs::copy(entry.path(), tiny / entry.path().filename());
  {
    const fs::path file = tiny / "model.safetensors";
    const SafetensorsFile sf(file);
    std::uint64_t header = 0;
    {
      std::ifstream in(file, std::ios::binary);
      in.read(reinterpret_cast<char*>(&header), 8);
    }
    std::fstream io(file, std::ios::binary | std::ios::in | std::ios::out);
    for (const char* l : {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"}) {
      const std::string name = l0 + l + ".input_scale";
      const std::uint16_t h = f32_to_f16(st.read_f32(name).at(0) / 16.0f);
      io.seekp(static_cast<std::streamoff>(8 + header + sf.find(name)->offset));
      io.write(reinterpret_cast<const char*>(&h), 2);
    }
  }
  const auto et = run_quant("eval " + tiny.string() + vs_float);
  ASSERT_EQ(et.rc, 0) << et.err;
  EXPECT_GT(json::parse(et.out)["kl_mean"].get<double>(), 2 * json::parse(e.out)["kl_mean"].get<double>());

  json cfg = read_json_file(out / "config.json");  // a static scheme without its input_scale tensors
  cfg["quantization_config"]["config_groups"]["group_0"]["input_activations"]["strategy"] = "tensor";
  const fs::path dyn = f.dir / "dyn";
  ASSERT_EQ(run_quant("rtn " + f.m.string() + " --scheme FP8_DYNAMIC --fp8-weight-scale tensor -o " + dyn.string()).rc, 0);
  {
    const TensorStore ds = TensorStore::open(dyn);  // the uncalibrated path shares them too
    EXPECT_EQ(wscale(ds, l1 + "self_attn.k_proj"), wscale(ds, l1 + "self_attn.q_proj"));
    EXPECT_EQ(wscale(ds, l1 + "mlp.up_proj"), wscale(ds, l1 + "mlp.gate_proj"));
    EXPECT_EQ(wscale(ds, l1 + "self_attn.v_proj"), wscale(ds, l1 + "self_attn.q_proj"));
  }
  {  // and after SmoothQuant, from the smoothed weights
    const fs::path sm = f.dir / "smoothed";
    const auto rs = run_quant("rtn " + f.m.string() + " --scheme FP8_DYNAMIC --fp8-weight-scale tensor --smooth 0.5 " + f.calib_args() + " -o " + sm.string());
    ASSERT_EQ(rs.rc, 0) << rs.err;
    const TensorStore ss = TensorStore::open(sm);
    for (const std::string& l : {l0, l1}) {
      EXPECT_EQ(wscale(ss, l + "self_attn.k_proj"), wscale(ss, l + "self_attn.q_proj")) << l;
      EXPECT_EQ(wscale(ss, l + "self_attn.v_proj"), wscale(ss, l + "self_attn.q_proj")) << l;
      EXPECT_EQ(wscale(ss, l + "mlp.up_proj"), wscale(ss, l + "mlp.gate_proj")) << l;
    }
  }
  json dcfg = read_json_file(dyn / "config.json");
  dcfg["quantization_config"] = cfg["quantization_config"];
  write_file_atomic(dyn / "config.json", dcfg.dump(2));
  for (const std::string& cmd : {"eval " + dyn.string() + eval, "check " + dyn.string() + " --for vllm"}) {
    const auto b = run_quant(cmd);
    EXPECT_NE(b.rc, 0) << cmd;
    EXPECT_NE((b.out + b.err).find("model.layers.0.self_attn.q_proj.input_scale' is missing"), std::string::npos) << cmd << "\n" << b.out << b.err;
  }
}

// SmoothQuant writes the smoothed norms and weights; the result still loads for vLLM, the
// smoothing strength is recorded, and the float function is unchanged up to quantization.
TEST(SmoothQuantCli, WritesSmoothedNormsAndQuantizedWeights) {
  Fixture f;
  const auto r = run_quant("rtn " + f.m.string() + " --scheme W8A8 --smooth 0.5 " + f.calib_args() + " -o " + (f.dir / "sq").string());
  ASSERT_EQ(r.rc, 0) << r.err;
  const auto c = run_quant("check " + (f.dir / "sq").string() + " --for vllm");
  EXPECT_EQ(c.rc, 0) << c.out << c.err;
  const TensorStore src = TensorStore::open(f.m), sq = TensorStore::open(f.dir / "sq");
  const auto a = src.read_f32("model.layers.0.input_layernorm.weight"), b = sq.read_f32("model.layers.0.input_layernorm.weight");
  EXPECT_NE(a, b) << "input_layernorm carries 1/s";
  EXPECT_EQ(src.read_f32("model.norm.weight"), sq.read_f32("model.norm.weight"));
  const json qc = read_json_file(f.dir / "sq" / "config.json")["quantization_config"];
  EXPECT_EQ(qc["format"], "int-quantized");
  const auto e = run_quant("eval " + (f.dir / "sq").string() + " --tokens " + f.calib.string() + " --ctx 64 --json");
  ASSERT_EQ(e.rc, 0) << e.err;
  const auto e0 = run_quant("eval " + f.m.string() + " --tokens " + f.calib.string() + " --ctx 64 --json");
  ASSERT_EQ(e0.rc, 0) << e0.err;
  EXPECT_NEAR(json::parse(e.out)["ppl"].get<double>(), json::parse(e0.out)["ppl"].get<double>(),
              0.05 * json::parse(e0.out)["ppl"].get<double>());
}

// What vLLM cannot load, or what contradicts the scheme, is refused before any work.
TEST(SchemeCli, RefusesContradictionsBeforeWork) {
  Fixture f;
  const std::string m = f.m.string();
  struct Bad {
    std::string args, message;
  };
  const std::vector<Bad> bad = {
      {"rtn " + m + " --scheme W8A8 --format gptq", "drop --format gptq"},
      {"rtn " + m + " --scheme W8A8 --format dense", "drop --format dense"},
      {"rtn " + m + " --scheme W8A8 -b 4", "drop --bits 4"},
      {"rtn " + m + " --scheme W8A8 -g 128", "drop --group-size 128"},
      {"rtn " + m + " --scheme FP9 ", "unknown --scheme 'FP9'"},
      {"gptq " + m + " --scheme FP8 " + f.calib_args(), "does not write float8 weights"},
      {"rtn " + m + " --static-activations", "--static-activations is for activation quantization"},
      {"rtn " + m + " --scheme FP8 --static-activations " + f.calib_args(), "drop --static-activations"},
      {"awq " + m + " --scheme W8A8 --static-activations " + f.calib_args(), "awq does not calibrate static activation scales"},
      {"rtn " + m + " --scheme FP8 --fp8-weight-scale channel " + f.calib_args(), "drop --fp8-weight-scale channel"},
      {"gptq " + m + " --scheme FP8_DYNAMIC " + f.calib_args(), "does not write float8 weights"},
      {"rtn " + m + " --smooth 0.5 " + f.calib_args(), "add --scheme W8A8"},
      {"rtn " + m + " --scheme W8A8 --smooth 1.5 " + f.calib_args(), "smoothing strength must be in [0, 1] or auto"},
      {"awq " + m + " --scheme W8A8 --smooth 0.5 " + f.calib_args(), "--smooth"},
      {"rtn " + m + " --scheme W8A8 --quantize-lm-head", "lm_head with w8g-1a8 is not supported"},
      {"rtn " + m + " --scheme W8A8 --rule 'mlp\\.down_proj=bits:4'", "int8 activations (W8A8) need 8-bit symmetric per-channel weights"},
  };
  for (const Bad& b : bad) {
    const auto r = run_quant(b.args + " -o " + (f.dir / "o").string());
    EXPECT_NE(r.rc, 0) << b.args;
    EXPECT_NE(r.err.find(b.message), std::string::npos) << b.args << "\n" << r.err;
    EXPECT_FALSE(fs::exists(f.dir / "o")) << b.args;
  }
}

}  // namespace
}  // namespace quant
