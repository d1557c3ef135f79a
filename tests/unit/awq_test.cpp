#include "quant/model/calibration.h"
#include "quant/formats/codec.h"
#include "quant/methods/awq.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <random>

#include "cli_helpers.h"
#include "fixtures.h"
#include "quant/io/io.h"
#include "quant/methods/gptq.h"
#include "quant/io/safetensors.h"

namespace quant {
namespace {

Mat randn(Eigen::Index r, Eigen::Index c, unsigned seed, float s = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> n(0.0f, s);
  Mat m(r, c);
  for (Eigen::Index i = 0; i < m.size(); ++i) m.data()[i] = n(rng);
  return m;
}

Vec positive(Eigen::Index n, unsigned seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(0.3f, 3.0f);
  Vec v(n);
  for (auto& x : v) x = u(rng);
  return v;
}

TEST(Awq, FoldedScalesLeaveTheFloatLayerUnchanged) {
  testing::TempDir dir;
  testing::TinyModelSpec spec;
  spec.kv_heads = 4;  // no GQA: the v→o mapping applies
  spec.attention_bias = true;
  spec.tied = false;
  testing::write_tiny_model(dir.path(), spec);
  const Model m = formats::open_model(dir.path());
  const LayerWeights L = load_layer(m, 0);
  const RopeTable rope = build_rope(m.config(), 40);
  const Mat h0 = randn(40, spec.hidden, 3);
  Mat ref = h0;
  decoder_layer_forward(m.config(), L, rope, ref);
  LayerWeights folded = L;
  fold_awq_scales(folded, AwqMapping::attn, positive(spec.hidden, 1));
  fold_awq_scales(folded, AwqMapping::v_o, positive(spec.hidden, 2));
  fold_awq_scales(folded, AwqMapping::mlp, positive(spec.hidden, 3));
  fold_awq_scales(folded, AwqMapping::up_down, positive(spec.intermediate, 4));
  EXPECT_NE(folded.linear(LinearKind::v), L.linear(LinearKind::v));
  Mat out = h0;
  decoder_layer_forward(m.config(), folded, rope, out);
  EXPECT_LT((out - ref).cwiseAbs().maxCoeff() / ref.cwiseAbs().maxCoeff(), 1e-5);
}

TEST(Awq, DominantActivationChannelIsProtected) {
  // Inputs whose channel 5 is 40× larger than the rest: its weights matter most for the output.
  Mat x = randn(2048, 64, 7);
  x.col(5) *= 40.0f;
  const std::vector<Mat> xs = {x};
  const Mat H = hessian(xs);
  const Mat w = randn(32, 64, 8, 0.1f);
  QuantSpec spec;
  spec.bits = 3;
  spec.group_size = 64;
  AwqOptions o;
  const AwqSearchResult r = awq_search_linear(w, H, mean_abs(xs), spec, o);
  EXPECT_GT(r.ratio, 0.0);
  EXPECT_LT(r.loss, r.identity_loss);
  Eigen::Index top = 0;
  r.scales.maxCoeff(&top);
  EXPECT_EQ(top, 5);  // the dominant channel gets the largest scale
  // Its weights come out closer to the originals than with plain RTN.
  const Mat awq = awq_fake_quant(w, r.scales, spec), rtn = quantize_rtn(w, spec).dequantize();
  EXPECT_LT((awq.col(5) - w.col(5)).squaredNorm(), (rtn.col(5) - w.col(5)).squaredNorm());
}

TEST(Awq, TokenAndHessianFormsOfTheLinearObjectiveAgree) {
  // Two samples, 48 tokens for 64 inputs: the token form is the cheaper one here.
  Mat x1 = randn(30, 64, 11), x2 = randn(18, 64, 12);
  x1.col(9) *= 20.0f;
  x2.col(9) *= 20.0f;
  const std::vector<Mat> xs = {x1, x2};
  const Mat w = randn(16, 64, 13, 0.1f);
  QuantSpec spec;
  spec.bits = 3;
  spec.group_size = 32;
  AwqOptions o;
  const AwqSearchResult h = awq_search_linear(w, hessian(xs), mean_abs(xs), spec, o);
  const AwqSearchResult t = awq_search_linear_tokens(w, xs, mean_abs(xs), spec, o);
  EXPECT_EQ(t.ratio, h.ratio);
  EXPECT_NEAR(t.loss, h.loss, 1e-4 * h.loss);
  EXPECT_NEAR(t.identity_loss, h.identity_loss, 1e-4 * h.identity_loss);
  EXPECT_LT(t.loss, t.identity_loss);
}

TEST(Awq, SearchNeverWorseThanRtnAndScalesAreNormalised) {
  const Vec xm = positive(32, 3), wm = positive(32, 4);
  for (double r : {0.0, 0.35, 0.9}) {
    const Vec s = awq_scales(xm, wm, r, true);
    EXPECT_NEAR(static_cast<double>(s.maxCoeff()) * s.minCoeff(), 1.0, 1e-5);
  }
  EXPECT_TRUE(awq_scales(xm, wm, 0.0, false).isOnes(1e-6));  // x_mean^0 = 1
  AwqOptions o;
  int calls = 0;
  const auto r = awq_search(xm, wm, o, [&](const Vec& s) {
    ++calls;
    return (s - Vec::Ones(32)).squaredNorm() + 1.0;  // identity is optimal
  });
  EXPECT_EQ(calls, o.n_grid + 1);
  EXPECT_EQ(r.ratio, -1);
  EXPECT_TRUE(r.scales.isOnes());
}

TEST(Awq, ClipNeverIncreasesTheGroupOutputError) {
  Mat w = randn(16, 128, 9, 0.1f);
  w(2, 7) = 1.5f;  // an outlier weight
  const Mat H = hessian({randn(512, 128, 10)});
  QuantSpec spec;
  spec.bits = 3;
  spec.group_size = 32;
  const Mat clipped = awq_clip(w, H, spec, AwqOptions{});
  const double plain = hessian_loss(w - quantize_rtn(w, spec).dequantize(), H);
  const double clip = hessian_loss(w - quantize_rtn(clipped, spec).dequantize(), H);
  EXPECT_LE(clip, plain * (1 + 1e-9));
  EXPECT_LT(std::abs(clipped(2, 7)), 1.5f);
}

TEST(AwqCli, OneGridPointWithoutClipEqualsRtn) {
  testing::TempDir dir;
  testing::TinyModelSpec spec;
  spec.kv_heads = 4;
  spec.dtype = DType::F16;
  testing::write_tiny_model(dir / "m", spec);
  std::string ids;
  for (int i = 0; i < 2000; ++i) ids += std::to_string((i * 17 + 3) % 96) + " ";
  write_file_atomic(dir / "c.txt", ids);
  const std::string m = (dir / "m").string();
  auto a = testing::run_quant("awq " + m + " --calib-tokens " + (dir / "c.txt").string() +
                              " --nsamples 4 --seqlen 64 --n-grid 1 --no-clip --no-duo-scaling --group-size 32 --format dense -o " + (dir / "a").string());
  ASSERT_EQ(a.rc, 0) << a.err;
  auto r = testing::run_quant("rtn " + m + " --group-size 32 --no-sym --format dense -o " + (dir / "r").string());
  ASSERT_EQ(r.rc, 0) << r.err;
  const auto sa = TensorStore::open(dir / "a"), sr = TensorStore::open(dir / "r");
  ASSERT_EQ(sa.names(), sr.names());
  for (const auto& n : sa.names()) {
    const auto x = sa.bytes(n), y = sr.bytes(n);
    ASSERT_EQ(x.size(), y.size()) << n;
    EXPECT_TRUE(std::equal(x.begin(), x.end(), y.begin())) << n;
  }
  // The default run (duo scaling, clipping) writes AutoAWQ's layout and loads back.
  a = testing::run_quant("awq " + m + " --calib-tokens " + (dir / "c.txt").string() +
                         " --nsamples 4 --seqlen 64 --group-size 32 -o " + (dir / "d").string() + " --json");
  ASSERT_EQ(a.rc, 0) << a.err;
  EXPECT_EQ(nlohmann::json::parse(a.out)["format"], "awq");
  const auto cfg = nlohmann::json::parse(read_text_file(dir / "d" / "config.json"));
  EXPECT_EQ(cfg["quantization_config"]["quant_method"], "awq");
  EXPECT_EQ(cfg["quantization_config"]["version"], "gemm");
  EXPECT_EQ(testing::run_quant("eval " + (dir / "d").string() + " --tokens " + (dir / "c.txt").string() + " --ctx 64").rc, 0);
}

}  // namespace
}  // namespace quant
