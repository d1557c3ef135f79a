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

// Windows whose rows are their global token index, so a subsample shows which tokens it took.
std::vector<Mat> numbered_windows(int n, int rows) {
  std::vector<Mat> xs;
  for (int w = 0; w < n; ++w) {
    Mat x(rows, 3);
    for (int r = 0; r < rows; ++r) x.row(r).setConstant(static_cast<float>(w * rows + r));
    xs.push_back(x);
  }
  return xs;
}

TEST(Awq, SearchTokensTakesEveryKthTokenInChunks) {
  const auto xs = numbered_windows(10, 100);  // 1000 tokens
  std::vector<Mat> storage;
  // 250 tokens of 1000: every 4th, starting at token 0, across window borders.
  const auto& sub = search_tokens(xs, 250, storage);
  ASSERT_EQ(&sub, &storage);
  std::vector<float> got;
  for (const Mat& x : sub) {
    EXPECT_LE(x.rows(), 512);
    for (Eigen::Index r = 0; r < x.rows(); ++r) got.push_back(x(r, 0));
  }
  ASSERT_EQ(got.size(), 250u);
  for (std::size_t i = 0; i < got.size(); ++i) EXPECT_EQ(got[i], 4.0f * static_cast<float>(i));
  // 1000 tokens at stride 1 exceed one 512-row chunk; budgets of 0 or ≥ the set return it whole.
  EXPECT_EQ(&search_tokens(xs, 0, storage), &xs);
  EXPECT_EQ(&search_tokens(xs, 1000, storage), &xs);
  const auto big = numbered_windows(20, 100);
  const auto& two = search_tokens(big, 1000, storage);  // stride 2: 1000 rows in chunks of 512 + 488
  ASSERT_EQ(two.size(), 2u);
  EXPECT_EQ(two[0].rows(), 512);
  EXPECT_EQ(two[1].rows(), 488);
  EXPECT_EQ(two[1](487, 0), 1998.0f);
}

TEST(Awq, SearchWindowsAreEvenlySpacedWholeWindows) {
  const auto xs = numbered_windows(32, 128);
  std::vector<Mat> storage;
  // At least 8 windows; 512 tokens would be only 4.
  const auto& sub = search_windows(xs, 512, 8, storage);
  ASSERT_EQ(sub.size(), 8u);
  for (std::size_t j = 0; j < sub.size(); ++j) {
    EXPECT_EQ(sub[j].rows(), 128);
    EXPECT_EQ(sub[j](0, 0), static_cast<float>(4 * j * 128)) << "window " << 4 * j;
  }
  // The token budget wins when it needs more windows than the minimum.
  EXPECT_EQ(search_windows(xs, 2048, 8, storage).size(), 16u);
  EXPECT_EQ(&search_windows(xs, 0, 8, storage), &xs);
  EXPECT_EQ(&search_windows(xs, 512, 32, storage), &xs);
}

TEST(Awq, BlockDiagonalHessianHasTheFullOnesBlocks) {
  const std::vector<Mat> xs = {randn(40, 70, 1), randn(25, 70, 2)};
  const Mat full = hessian(xs), blocks = hessian(xs, 32);  // blocks of 32, 32 and a ragged 6
  for (Eigen::Index i = 0; i < 70; ++i) {
    for (Eigen::Index j = 0; j < 70; ++j) {
      if (i / 32 == j / 32) EXPECT_NEAR(blocks(i, j), full(i, j), 1e-5f * std::abs(full(i, i))) << i << "," << j;
      else EXPECT_EQ(blocks(i, j), 0.0f) << i << "," << j;
    }
  }
  EXPECT_TRUE(hessian(xs, 70) == full);  // a block as wide as H: the whole H
}

TEST(Awq, HessianBlockIsWhatTheSearchAndClipRead) {
  AwqOptions o;  // search_tokens 512
  const AwqMethod awq(o);
  // Clipping reads only the group blocks.
  EXPECT_EQ(awq.hessian_block(CapturePoint::attn_in, 2048, 16384, 128), 128);
  EXPECT_EQ(awq.hessian_block(CapturePoint::attn_in, 2048, 16384, 0), 0);  // groups differ: whole H
  // up → down scored on 512 tokens of 5632 columns: the token form, so blocks suffice ...
  EXPECT_EQ(awq.hessian_block(CapturePoint::down_in, 5632, 16384, 128), 128);
  // ... but with as many scored tokens as columns the Hessian form reads the whole H.
  EXPECT_EQ(awq.hessian_block(CapturePoint::down_in, 172, 8192, 32), 0);
  EXPECT_EQ(awq.hessian_block(CapturePoint::o_in, 256, 300, 32), 0);
  o.clip = false;
  EXPECT_EQ(AwqMethod(o).hessian_block(CapturePoint::mlp_in, 2048, 16384, 128), 1);  // nothing read
  EXPECT_EQ(scored_tokens(16384, 512), 512);
  EXPECT_EQ(scored_tokens(1000, 300), 250);  // every 4th
  EXPECT_EQ(scored_tokens(200, 512), 200);
  EXPECT_EQ(scored_tokens(200, 0), 200);
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
  // The candidates' scoring set: 64 of the 256 calibration tokens, reported per linear; a
  // budget as large as the set scores on all of it, as --search-tokens 0 does.
  const auto summary = [&](const std::string& out) {
    return nlohmann::json::parse(read_text_file(dir / out / "quant_summary.json"));
  };
  const auto tokens_of = [](const nlohmann::json& sm, const std::string& suffix) {
    for (const auto& t : sm["tensors"]) {
      const std::string name = t["name"];
      if (name.size() >= suffix.size() && name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0) {
        return t["extra"]["awq_search_tokens"].get<std::int64_t>();
      }
    }
    return std::int64_t{-1};
  };
  const std::string calib = " --calib-tokens " + (dir / "c.txt").string() + " --nsamples 4 --seqlen 64 --group-size 32 --format dense";
  ASSERT_EQ(testing::run_quant("awq " + m + calib + " --search-tokens 64 --search-windows 1 -o " + (dir / "s").string()).rc, 0);
  EXPECT_EQ(tokens_of(summary("s"), "layers.0.mlp.up_proj"), 64);
  EXPECT_EQ(tokens_of(summary("s"), "layers.0.self_attn.q_proj"), 64);  // one whole window
  ASSERT_EQ(testing::run_quant("awq " + m + calib + " --search-tokens 0 -o " + (dir / "all").string()).rc, 0);
  ASSERT_EQ(testing::run_quant("awq " + m + calib + " --search-tokens 256 --search-windows 4 -o " + (dir / "same").string()).rc, 0);
  EXPECT_EQ(tokens_of(summary("all"), "layers.0.mlp.up_proj"), 256);
  const auto x = TensorStore::open(dir / "all"), y = TensorStore::open(dir / "same");
  for (const auto& n : x.names()) {
    const auto bx = x.bytes(n), by = y.bytes(n);
    EXPECT_TRUE(bx.size() == by.size() && std::equal(bx.begin(), bx.end(), by.begin())) << n;
  }
}

}  // namespace
}  // namespace quant
