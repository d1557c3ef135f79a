#include "quant/core/quantizer.h"

#include <gtest/gtest.h>

#include <random>

#include "quant/core/dtype.h"
#include "quant/core/error.h"
#include "quant/pipeline/policy.h"

namespace quant {
namespace {

float f16_round(float x) { return f16_to_f32(f32_to_f16(x)); }

Mat random_matrix(int rows, int cols, unsigned seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> n(0.0f, scale);
  Mat m(rows, cols);
  for (Eigen::Index i = 0; i < m.size(); ++i) m.data()[i] = n(rng);
  return m;
}

TEST(Rtn, HandComputedTwoBitRow) {
  // Row [-1, 0, 0.5, 1], 2 bits asymmetric, one group: range [-1, 1], scale 2/3 -> fp16
  // 0.66650390625, zero round(1 / 0.6665) = 2. Codes: -1 -> 0, 0 -> 2, 0.5 -> round(0.750)+2 = 3,
  // 1 -> round(1.500)+2 = 4, clamped to 3.
  Mat w(1, 4);
  w << -1.0f, 0.0f, 0.5f, 1.0f;
  QuantSpec spec;
  spec.bits = 2;
  spec.group_size = -1;
  const auto q = quantize_rtn(w, spec);
  EXPECT_EQ(q.scales[0], 0.66650390625f);
  EXPECT_EQ(q.zeros[0], 2.0f);
  EXPECT_EQ(q.q, (std::vector<std::uint8_t>{0, 2, 3, 3}));
  const Mat d = q.dequantize();
  EXPECT_FLOAT_EQ(d(0, 0), -2 * 0.66650390625f);
  EXPECT_FLOAT_EQ(d(0, 1), 0.0f);
  EXPECT_FLOAT_EQ(d(0, 3), 0.66650390625f);
}

TEST(Rtn, SymmetricZeroIsTheMidpoint) {
  Mat w(1, 4);
  w << -0.7f, 0.1f, 0.2f, 0.35f;
  QuantSpec spec;
  spec.bits = 4;
  spec.group_size = 4;
  spec.sym = true;
  const auto q = quantize_rtn(w, spec);
  EXPECT_EQ(q.zeros[0], 8.0f);
  EXPECT_EQ(q.scales[0], f16_round(1.4f / 15.0f));
}

TEST(Rtn, MoreBitsNeverIncreaseTheError) {
  const Mat w = random_matrix(48, 256, 7);
  for (std::int64_t g : {32, 128, -1}) {
    for (bool sym : {false, true}) {
      double prev = 1e30;
      for (int bits : {2, 3, 4, 5, 6, 8}) {
        QuantSpec s;
        s.bits = bits;
        s.group_size = g;
        s.sym = sym;
        const double e = squared_error(w, quantize_rtn(w, s).dequantize());
        EXPECT_LE(e, prev) << "bits " << bits << " group " << g << " sym " << sym;
        prev = e;
      }
    }
  }
}

TEST(Rtn, MseSearchNeverIncreasesTheError) {
  for (unsigned seed = 1; seed <= 5; ++seed) {
    Mat w = random_matrix(16, 128, seed);
    w(3, 5) = 9.0f;  // an outlier makes clipping pay off
    for (int bits : {2, 3, 4}) {
      QuantSpec s;
      s.bits = bits;
      s.group_size = 32;
      const double plain = squared_error(w, quantize_rtn(w, s).dequantize());
      s.mse = true;
      const double mse = squared_error(w, quantize_rtn(w, s).dequantize());
      EXPECT_LE(mse, plain) << "seed " << seed << " bits " << bits;
      if (bits == 2) {
        EXPECT_LT(mse, plain);
      }
    }
  }
}

TEST(Rtn, ZeroAndConstantGroupsAreExact) {
  Mat w = Mat::Zero(4, 64);
  w.row(1).setConstant(0.25f);   // positive constant: widened range keeps it exact
  w.row(2).setConstant(-0.375f);
  w.row(3).head(32).setConstant(1e-3f);
  for (int bits : {2, 3, 4, 8}) {
    for (bool sym : {false, true}) {
      QuantSpec s;
      s.bits = bits;
      s.group_size = 32;
      s.sym = sym;
      const auto q = quantize_rtn(w, s);
      const Mat d = q.dequantize();
      EXPECT_EQ(d.row(0), w.row(0)) << bits;
      for (int r = 1; r < 4; ++r) {
        for (int j = 0; j < 64; ++j) {
          // Asymmetric ranges reconstruct constants up to the fp16 rounding of the scale; the
          // symmetric grid [−(maxq+1)/2, (maxq−1)/2]·scale, scale = 2·max|w|/maxq (the GPTQ
          // reference), is within one step.
          const double tol = sym ? q.params(r, j / 32).scale : 2e-3 * std::abs(w(r, j)) + 1e-9;
          ASSERT_NEAR(d(r, j), w(r, j), tol) << r << " " << j << " bits " << bits << " sym " << sym;
        }
      }
    }
  }
}

TEST(Rtn, AsymmetricZeroIsNeverBelowOne) {
  const Mat w = random_matrix(32, 64, 3).cwiseAbs();  // all positive: ideal zero would be 0
  QuantSpec s;
  s.group_size = 16;
  const auto q = quantize_rtn(w, s);
  for (float z : q.zeros) EXPECT_GE(z, 1.0f);
}

TEST(Rtn, PartialLastGroup) {
  const Mat w = random_matrix(3, 172, 4);
  QuantSpec s;
  s.group_size = 32;
  const auto q = quantize_rtn(w, s);
  EXPECT_EQ(q.n_groups, 6);
  EXPECT_EQ(q.g_idx[171], 5);
  EXPECT_LT(squared_error(w, q.dequantize()) / w.squaredNorm(), 0.01);
}

TEST(QuantSpec, ValidatesBitsAndGroups) {
  QuantSpec s;
  s.bits = 9;
  EXPECT_THROW(s.validate(), UsageError);
  s.bits = 1;
  EXPECT_THROW(s.validate(), UsageError);
  s.bits = 4;
  s.group_size = 0;
  EXPECT_THROW(s.validate(), UsageError);
  s.group_size = -2;
  EXPECT_THROW(s.validate(), UsageError);
  EXPECT_EQ(QuantSpec{}.label(), "w4g128");
}

TEST(Policy, FirstMatchingRuleWins) {
  QuantSpec d;
  const Policy p = Policy::standard(d, false, {Rule::parse("down_proj=bits:8,group:64"), Rule::parse("layers\\.0\\.=skip"),
                                               Rule::parse("q_proj=sym:true")});
  auto a = p.decide("model.layers.0.mlp.down_proj");
  EXPECT_TRUE(a.quantize);
  EXPECT_EQ(a.spec.bits, 8);
  EXPECT_EQ(a.spec.group_size, 64);
  EXPECT_FALSE(p.decide("model.layers.0.self_attn.q_proj").quantize);
  EXPECT_TRUE(p.decide("model.layers.1.self_attn.q_proj").spec.sym);
  EXPECT_FALSE(p.decide("lm_head").quantize);
  EXPECT_TRUE(Policy::standard(d, true).decide("lm_head").quantize);
  EXPECT_EQ(p.decide("model.layers.1.mlp.up_proj").spec.bits, 4);
}

TEST(Policy, BadRulesAreUsageErrors) {
  EXPECT_THROW(Rule::parse("nothing"), UsageError);
  EXPECT_THROW(Rule::parse("x=bits:9"), UsageError);
  EXPECT_THROW(Rule::parse("x=bits:four"), UsageError);
  EXPECT_THROW(Rule::parse("x=colour:red"), UsageError);
  EXPECT_THROW(Rule::parse("([=skip"), UsageError);
  EXPECT_EQ(Rule::parse("a.b=bits:3,group:-1").to_string(), "a.b=bits:3,group:-1");
}

}  // namespace
}  // namespace quant
