#include "quant/model/calibration.h"
#include "quant/methods/gptq.h"

#include <gtest/gtest.h>

#include <Eigen/LU>

#include <random>

#include "quant/core/error.h"

namespace quant {
namespace {

Mat randn(Eigen::Index r, Eigen::Index c, unsigned seed, float s = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> n(0.0f, s);
  Mat m(r, c);
  for (Eigen::Index i = 0; i < m.size(); ++i) m.data()[i] = n(rng);
  return m;
}

// Correlated calibration inputs with uneven channel scales, as real activations have.
Mat hessian_of(const Mat& x) {
  Mat H = Mat::Zero(x.cols(), x.cols());
  accumulate_gram(H, x);
  mirror_lower(H);
  return H * (2.0f / static_cast<float>(x.rows()));
}

Mat correlated_inputs(Eigen::Index tokens, Eigen::Index in, unsigned seed) {
  Mat mix = randn(in, in, seed + 100, 0.3f);
  mix.diagonal().array() += 1.0f;
  Mat x = randn(tokens, in, seed) * mix;
  for (Eigen::Index j = 0; j < in; ++j) x.col(j) *= 0.2f + 3.0f * static_cast<float>((j * 7) % 11) / 11.0f;
  return x;
}

TEST(Gptq, UpperFactorOfTheDampedInverse) {
  // One panel and several (the factorization and inverse run in 128-wide panels), a dead input
  // channel, with and without act-order.
  for (Eigen::Index n : {48, 300}) {
    Mat x = correlated_inputs(2 * n, n, 1);
    x.col(n / 3).setZero();
    const Mat H = hessian_of(x);
    for (bool act_order : {false, true}) {
      GptqOptions o;
      o.act_order = act_order;
      const GptqHessian g = prepare_hessian(H, o, "test");
      ASSERT_TRUE(g.dead[static_cast<std::size_t>(n / 3)]);
      MatD a(n, n);
      for (Eigen::Index i = 0; i < n; ++i)
        for (Eigen::Index j = 0; j < n; ++j) a(i, j) = H(g.perm[i], g.perm[j]);
      for (Eigen::Index i = 0; i < n; ++i) a(i, i) = (g.dead[g.perm[i]] ? 1.0 : a(i, i)) + g.damp;
      if (act_order) {
        // Descending diagonal, a dead channel's counted as 1 (as its damped diagonal is built).
        const auto key = [&](Eigen::Index i) { return g.dead[g.perm[i]] ? 1.0f : H(g.perm[i], g.perm[i]); };
        for (Eigen::Index i = 1; i < n; ++i) EXPECT_GE(key(i - 1), key(i));
      }
      const MatD inv = a.inverse();
      const MatD u = g.U.cast<double>();
      EXPECT_LT((u.transpose() * u - inv).norm() / inv.norm(), 1e-5) << n << " " << act_order;
      EXPECT_TRUE(u.isUpperTriangular(0.0));
      for (Eigen::Index i = 0; i < u.rows(); ++i) EXPECT_GT(u(i, i), 0.0);
      EXPECT_NEAR(g.damp, 0.01 * a.diagonal().mean() / 1.01, 1e-6 * g.damp);
    }
  }
}

TEST(Gptq, LayerLossNeverAboveRtnOnRandomProblems) {
  for (unsigned seed = 1; seed <= 4; ++seed) {
    const Mat x = correlated_inputs(512, 96, seed);
    const Mat H = hessian_of(x);
    const Mat W = randn(40, 96, seed + 10, 0.1f);
    for (bool act_order : {false, true}) {
      for (int bits : {2, 3, 4}) {
        for (std::int64_t group : {32, -1}) {
          QuantSpec s;
          s.bits = bits;
          s.group_size = group;
          GptqOptions o;
          o.act_order = act_order;
          const auto g = prepare_hessian(H, o, "w");
          const Mat q = gptq_quantize(W, g, s, o).q.dequantize();
          const Mat r = quantize_rtn(W, s).dequantize();
          EXPECT_LT(hessian_loss(W - q, H), hessian_loss(W - r, H))
              << "seed " << seed << " act_order " << act_order << " bits " << bits << " group " << group;
        }
      }
    }
  }
}

TEST(Gptq, IdentityHessianEqualsRtn) {
  const Mat W = randn(24, 64, 3, 0.2f);
  const Mat H = Mat::Identity(64, 64);
  for (std::int64_t group : {16, -1}) {
    QuantSpec s;
    s.bits = 3;
    s.group_size = group;
    GptqOptions o;
    const auto g = gptq_quantize(W, prepare_hessian(H, o, "w"), s, o).q;
    const auto r = quantize_rtn(W, s);
    EXPECT_EQ(g.q, r.q);
    EXPECT_EQ(g.scales, r.scales);
    EXPECT_EQ(g.zeros, r.zeros);
  }
}

TEST(Gptq, ActOrderWithStaticGroupsKeepsOriginalGroups) {
  const Mat x = correlated_inputs(256, 64, 5);
  const Mat H = hessian_of(x);
  const Mat W = randn(16, 64, 6, 0.1f);
  QuantSpec s;
  s.group_size = 16;
  GptqOptions o;
  o.act_order = true;
  o.static_groups = true;
  const auto g = prepare_hessian(H, o, "w");
  bool permuted = false;
  for (std::size_t i = 0; i < g.perm.size(); ++i) permuted |= g.perm[i] != static_cast<std::int64_t>(i);
  EXPECT_TRUE(permuted);
  const auto q = gptq_quantize(W, g, s, o).q;
  for (std::int64_t j = 0; j < 64; ++j) EXPECT_EQ(q.g_idx[j], j / 16);
  // Without static groups, g_idx follows the permuted order instead.
  o.static_groups = false;
  const auto q2 = gptq_quantize(W, g, s, o).q;
  EXPECT_FALSE(q2.trivial_g_idx());
  for (std::int64_t p = 0; p < 64; ++p) EXPECT_EQ(q2.g_idx[g.perm[p]], p / 16);
}

TEST(Gptq, NotPositiveDefiniteTakesTheDampingRetryPath) {
  Mat H(2, 2);
  H << 1, 2, 2, 1;  // eigenvalues 3 and −1
  GptqOptions o;
  const auto g = prepare_hessian(H, o, "layer 7 q_proj");
  EXPECT_GT(g.retries, 0);
  EXPECT_GT(g.damp, 1.0);
  o.max_damp_retries = 1;
  try {
    prepare_hessian(H, o, "layer 7 q_proj");
    FAIL();
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("layer 7 q_proj"), std::string::npos) << e.what();
  }
}

TEST(Gptq, DeadColumnsQuantizeToZero) {
  Mat x = correlated_inputs(128, 32, 9);
  x.col(5).setZero();
  const Mat H = hessian_of(x);
  const Mat W = randn(8, 32, 2, 0.1f);
  GptqOptions o;
  QuantSpec s;
  s.group_size = 16;
  const auto g = prepare_hessian(H, o, "w");
  EXPECT_TRUE(g.dead[5]);
  const Mat q = gptq_quantize(W, g, s, o).q.dequantize();
  for (int r = 0; r < 8; ++r) EXPECT_EQ(q(r, 5), 0.0f);
}

TEST(Gptq, NonFiniteActivationsAreAnError) {
  Mat H = Mat::Identity(4, 4);
  H(2, 2) = NAN;
  EXPECT_THROW(prepare_hessian(H, GptqOptions{}, "w"), InputError);
}

}  // namespace
}  // namespace quant

namespace quant {
namespace {

// A fused tensor (Phi-3's qkv_proj) quantized by GPTQ as one matrix equals its parts quantized
// with the same Hessian and stacked: GPTQ's updates act row by row, and act-order comes from H
// alone. quant quantizes the parts (its forward needs q, k, v apart) and stores the stack.
TEST(Gptq, FusedTensorEqualsStackedParts) {
  const Mat H = hessian_of(correlated_inputs(384, 64, 5));
  const Mat W = randn(56, 64, 6, 0.1f);
  for (bool act_order : {false, true}) {
    QuantSpec s;
    s.group_size = 16;
    GptqOptions o;
    o.act_order = act_order;
    const GptqHessian g = prepare_hessian(H, o, "qkv");
    const QuantizedMatrix whole = gptq_quantize(W, g, s, o).q;
    const QuantizedMatrix q = gptq_quantize(W.topRows(32), g, s, o).q, k = gptq_quantize(W.middleRows(32, 8), g, s, o).q,
                          v = gptq_quantize(W.bottomRows(16), g, s, o).q;
    const QuantizedMatrix stacked = QuantizedMatrix::stack_rows({&q, &k, &v});
    EXPECT_EQ(stacked.out, whole.out);
    EXPECT_EQ(stacked.q, whole.q) << "act_order " << act_order;
    EXPECT_EQ(stacked.scales, whole.scales);
    EXPECT_EQ(stacked.zeros, whole.zeros);
    EXPECT_EQ(stacked.g_idx, whole.g_idx);
  }
}

}  // namespace
}  // namespace quant
