// k-means: the exact 1-D solver against brute force and Lloyd, the codebook quantizer, and
// the lut format's pack/unpack.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>
#include <set>

#include "quant/core/dtype.h"
#include "quant/formats/formats.h"
#include "quant/methods/kmeans.h"

namespace quant {
namespace {

double objective(const std::vector<float>& x, const std::vector<float>& w, const std::vector<double>& c) {
  double e = 0;
  bool any = false;
  for (float wi : w) any = any || wi > 0;
  for (std::size_t i = 0; i < x.size(); ++i) {
    double best = std::numeric_limits<double>::infinity();
    for (double ci : c) best = std::min(best, (x[i] - ci) * (x[i] - ci));
    e += (any ? w[i] : 1.0) * best;
  }
  return e;
}

// Every assignment of n points to k labels (k^n): the best weighted within-cluster cost.
double brute_force(const std::vector<float>& x, const std::vector<float>& w, int k) {
  const std::size_t n = x.size();
  std::vector<int> label(n, 0);
  double best = std::numeric_limits<double>::infinity();
  while (true) {
    std::vector<double> sw(static_cast<std::size_t>(k), 0), swx(static_cast<std::size_t>(k), 0);
    for (std::size_t i = 0; i < n; ++i) {
      sw[static_cast<std::size_t>(label[i])] += w[i];
      swx[static_cast<std::size_t>(label[i])] += w[i] * x[i];
    }
    double e = 0;
    for (std::size_t i = 0; i < n; ++i) {
      const auto l = static_cast<std::size_t>(label[i]);
      if (sw[l] <= 0) continue;
      const double c = swx[l] / sw[l];
      e += w[i] * (x[i] - c) * (x[i] - c);
    }
    best = std::min(best, e);
    std::size_t i = 0;
    while (i < n && ++label[i] == k) label[i++] = 0;
    if (i == n) break;
  }
  return best;
}

// The textbook O(k·n²) programme over sorted distinct values, as a second reference.
double quadratic_dp(std::vector<float> x, std::vector<float> w, int k) {
  std::vector<std::size_t> idx(x.size());
  for (std::size_t i = 0; i < idx.size(); ++i) idx[i] = i;
  std::sort(idx.begin(), idx.end(), [&](auto a, auto b) { return x[a] < x[b]; });
  const std::size_t n = x.size();
  auto cost = [&](std::size_t a, std::size_t b) {  // sorted positions [a, b)
    double sw = 0, swx = 0, swxx = 0;
    for (std::size_t i = a; i < b; ++i) {
      const double xi = x[idx[i]], wi = w[idx[i]];
      sw += wi, swx += wi * xi, swxx += wi * xi * xi;
    }
    return sw > 0 ? std::max(0.0, swxx - swx * swx / sw) : 0.0;
  };
  const double inf = std::numeric_limits<double>::infinity();
  std::vector<double> prev(n + 1, inf), cur(n + 1, inf);
  prev[0] = 0;
  for (int c = 0; c < k; ++c) {
    std::fill(cur.begin(), cur.end(), inf);
    cur[0] = 0;
    for (std::size_t i = 1; i <= n; ++i)
      for (std::size_t j = 0; j < i; ++j) cur[i] = std::min(cur[i], prev[j] + cost(j, i));
    std::swap(prev, cur);
  }
  return prev[n];
}

std::vector<float> random_values(std::mt19937& rng, std::size_t n, bool few_distinct = false) {
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> x(n);
  for (auto& v : x) v = few_distinct ? std::round(nd(rng) * 2.0f) / 2.0f : nd(rng);
  return x;
}

TEST(Kmeans1d, ExactMatchesBruteForceOnSmallCases) {
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> uw(0.1f, 3.0f);
  for (int trial = 0; trial < 60; ++trial) {
    const std::size_t n = 3 + trial % 6;  // 3..8 points
    const int k = 1 + trial % 4;           // 1..4 clusters
    const auto x = random_values(rng, n, trial % 5 == 0);
    std::vector<float> w(n);
    for (auto& v : w) v = uw(rng);
    const Kmeans1d r = kmeans_1d_exact(x.data(), w.data(), static_cast<std::int64_t>(n), k);
    const double bf = brute_force(x, w, k);
    EXPECT_NEAR(r.objective, bf, 1e-9 * (1 + bf)) << "trial " << trial;
    EXPECT_NEAR(objective(x, w, r.centroids), r.objective, 1e-9 * (1 + bf));
    EXPECT_TRUE(std::is_sorted(r.centroids.begin(), r.centroids.end()));
    EXPECT_EQ(r.centroids.size(), static_cast<std::size_t>(k));
  }
}

TEST(Kmeans1d, ExactMatchesQuadraticProgrammeOnLargerCases) {
  std::mt19937 rng(11);
  std::uniform_real_distribution<float> uw(0.0f, 2.0f);
  for (int trial = 0; trial < 40; ++trial) {
    const std::size_t n = 20 + 13 * static_cast<std::size_t>(trial);
    const int k = 2 + trial % 15;
    const auto x = random_values(rng, n, trial % 4 == 0);
    std::vector<float> w(n);
    for (auto& v : w) v = uw(rng);
    const Kmeans1d r = kmeans_1d_exact(x.data(), w.data(), static_cast<std::int64_t>(n), k);
    const double ref = quadratic_dp(x, w, k);
    EXPECT_NEAR(r.objective, ref, 1e-9 * (1 + ref)) << "trial " << trial << " n " << n << " k " << k;
  }
}

TEST(Kmeans1d, ExactNeverWorseThanLloyd) {
  std::mt19937 rng(3);
  std::exponential_distribution<float> ew(1.0f);
  for (int trial = 0; trial < 50; ++trial) {
    const std::size_t n = 64 + 50 * static_cast<std::size_t>(trial % 10);
    const int k = 1 << (2 + trial % 3);  // 4, 8, 16
    const auto x = random_values(rng, n);
    std::vector<float> w(n);
    for (auto& v : w) v = ew(rng);
    const double exact = kmeans_1d_exact(x.data(), w.data(), static_cast<std::int64_t>(n), k).objective;
    for (std::uint64_t seed = 0; seed < 3; ++seed) {
      const double lloyd = kmeans_1d_lloyd(x.data(), w.data(), static_cast<std::int64_t>(n), k, seed).objective;
      EXPECT_LE(exact, lloyd * (1 + 1e-12) + 1e-15) << "trial " << trial;
    }
  }
}

TEST(Kmeans1d, ZeroWeightsAreIgnored) {
  // Points of weight 0 must not move the centroids, whatever their values.
  const std::vector<float> x = {-1.0f, -0.9f, 0.9f, 1.0f, 50.0f, -70.0f};
  const std::vector<float> w = {1, 1, 1, 1, 0, 0};
  const Kmeans1d r = kmeans_1d_exact(x.data(), w.data(), 6, 2);
  ASSERT_EQ(r.centroids.size(), 2u);
  EXPECT_NEAR(r.centroids[0], -0.95, 1e-6);
  EXPECT_NEAR(r.centroids[1], 0.95, 1e-6);
  EXPECT_NEAR(r.objective, 4 * 0.05 * 0.05, 1e-7);
  const Kmeans1d l = kmeans_1d_lloyd(x.data(), w.data(), 6, 2);
  EXPECT_NEAR(l.centroids[0], -0.95, 1e-6);
  EXPECT_NEAR(l.centroids[1], 0.95, 1e-6);
  // All weights zero: clustered unweighted rather than left undefined.
  const std::vector<float> z(6, 0.0f);
  const Kmeans1d u = kmeans_1d_exact(x.data(), z.data(), 6, 6);
  EXPECT_EQ(u.objective, 0.0);
}

TEST(Kmeans1d, FewerDistinctValuesThanClustersGivesZeroError) {
  const std::vector<float> x = {0.5f, -0.25f, 0.5f, 0.125f, -0.25f, 0.5f, 0.125f};
  const std::vector<float> w = {1, 2, 3, 4, 5, 6, 7};
  for (int k : {3, 4, 8, 16}) {
    const Kmeans1d r = kmeans_1d_exact(x.data(), w.data(), 7, k);
    EXPECT_EQ(r.objective, 0.0) << k;
    EXPECT_EQ(r.centroids.size(), static_cast<std::size_t>(k));
    EXPECT_EQ(kmeans_1d_lloyd(x.data(), w.data(), 7, k).objective, 0.0) << k;
  }
  // Through the matrix quantizer: a row of 3 distinct fp16 values at 2 bits is exact.
  Mat m(2, 8);
  m << 0.5f, 0.5f, -1.0f, 0.25f, 0.25f, -1.0f, 0.5f, 0.5f,  //
      1, 1, 1, 1, 1, 1, 1, 1;
  QuantSpec spec;
  spec.bits = 2;
  spec.group_size = -1;
  const QuantizedMatrix q = kmeans_quantize(m, {}, spec, {});
  EXPECT_EQ((q.dequantize() - m).cwiseAbs().maxCoeff(), 0.0f);
}

TEST(Kmeans1d, HandWorkedCase) {
  // {0, 1, 10, 11, 12} in 2 clusters: {0,1} at 0.5 and {10,11,12} at 11; cost 0.5 + 2 = 2.5.
  const std::vector<float> x = {12, 0, 11, 1, 10};
  const Kmeans1d r = kmeans_1d_exact(x.data(), nullptr, 5, 2);
  EXPECT_DOUBLE_EQ(r.centroids[0], 0.5);
  EXPECT_DOUBLE_EQ(r.centroids[1], 11.0);
  EXPECT_DOUBLE_EQ(r.objective, 2.5);
  // Weighting 10 pulls the first centroid to the heavy point: {0 (w 10), 1} → 1/11.
  const std::vector<float> w = {1, 10, 1, 1, 1};
  const Kmeans1d rw = kmeans_1d_exact(x.data(), w.data(), 5, 2);
  EXPECT_NEAR(rw.centroids[0], 1.0 / 11.0, 1e-12);
}

TEST(KmeansQuantize, CodebooksPerRowAndGroupWithMoreBitsNeverWorse) {
  std::mt19937 rng(5);
  std::normal_distribution<float> nd(0.0f, 0.05f);
  Mat w(16, 96);
  for (Eigen::Index i = 0; i < w.size(); ++i) w.data()[i] = nd(rng);
  std::vector<float> h(96);
  for (auto& v : h) v = std::exp(nd(rng) * 20);
  double last = std::numeric_limits<double>::infinity();
  for (int bits = 2; bits <= 8; ++bits) {
    QuantSpec spec;
    spec.bits = bits;
    spec.group_size = -1;
    const QuantizedMatrix q = kmeans_quantize(w, h, spec, {});
    ASSERT_TRUE(q.non_uniform());
    EXPECT_EQ(q.lut.size(), static_cast<std::size_t>(16 << bits));
    const double e = weighted_error(w, q.dequantize(), h);
    EXPECT_LE(e, last * (1 + 1e-6)) << bits;
    last = e;
    // Each code decodes to its row's nearest centroid.
    for (std::int64_t o = 0; o < 16; ++o) {
      std::vector<float> c(q.lut.begin() + o * (1 << bits), q.lut.begin() + (o + 1) * (1 << bits));
      for (std::int64_t j = 0; j < 96; ++j) EXPECT_EQ(q.q[static_cast<std::size_t>(o * 96 + j)], nearest_centroid(c, w(o, j)));
    }
  }
  // Per-group codebooks (3 groups of 32) fit better than one per row.
  QuantSpec row, grp;
  row.bits = grp.bits = 3;
  row.group_size = -1;
  grp.group_size = 32;
  const double e_row = weighted_error(w, kmeans_quantize(w, h, row, {}).dequantize(), h);
  const QuantizedMatrix qg = kmeans_quantize(w, h, grp, {});
  EXPECT_EQ(qg.n_groups, 3);
  EXPECT_LT(weighted_error(w, qg.dequantize(), h), e_row);
  // Hessian weighting lowers the weighted error against unweighted clustering.
  EXPECT_LE(e_row, weighted_error(w, kmeans_quantize(w, {}, row, {}).dequantize(), h));
}

TEST(KmeansQuantize, OutliersAreKeptExactly) {
  std::mt19937 rng(9);
  std::normal_distribution<float> nd(0.0f, 0.05f);
  Mat w(8, 64);
  for (Eigen::Index i = 0; i < w.size(); ++i) w.data()[i] = nd(rng);
  w(3, 7) = 2.0f;
  w(5, 60) = -3.0f;
  QuantSpec spec;
  spec.bits = 3;
  spec.group_size = -1;
  KmeansOptions opt;
  opt.outliers = 0.01;  // 5 of 512
  const QuantizedMatrix q = kmeans_quantize(w, {}, spec, opt);
  EXPECT_EQ(q.n_outliers(), 5);
  const Mat d = q.dequantize();
  EXPECT_EQ(d(3, 7), 2.0f);
  EXPECT_EQ(d(5, 60), -3.0f);
  for (std::size_t i = 0; i < q.outlier_vals.size(); ++i) EXPECT_GE(std::abs(q.outlier_vals[i]), 0.1f);
  const QuantizedMatrix plain = kmeans_quantize(w, {}, spec, {});
  EXPECT_LT(squared_error(w, d), squared_error(w, plain.dequantize()));
  // bpw counts the outliers: 5 × (32 + 16) + 9 × 32 bits more.
  EXPECT_NEAR(q.bits_per_weight(16) - plain.bits_per_weight(16), (5.0 * 48 + 9 * 32) / 512.0, 1e-12);
}

TEST(LutFormat, PackUnpackRoundTripEveryWidth) {
  std::mt19937 rng(13);
  for (int bits = 2; bits <= 8; ++bits) {
    for (std::int64_t in : {32, 44, 172}) {
      QuantSpec spec;
      spec.bits = bits;
      spec.group_size = in == 44 ? 11 : -1;
      QuantizedMatrix m = QuantizedMatrix::empty(5, in, spec);
      m.scales.clear();
      m.zeros.clear();
      std::uniform_int_distribution<int> code(0, (1 << bits) - 1);
      for (auto& c : m.q) c = static_cast<std::uint8_t>(code(rng));
      m.lut.resize(static_cast<std::size_t>(5 * m.n_groups * (1 << bits)));
      for (std::size_t i = 0; i < m.lut.size(); ++i) m.lut[i] = f16_to_f32(f32_to_f16(static_cast<float>(i) / 64.0f - 3.0f));
      m.outlier_rowptr = {0, 1, 1, 3, 3, 3};
      m.outlier_cols = {4, 0, 9};
      m.outlier_vals = {1.5f, -2.0f, 7.0f};
      const formats::LutTensors t = formats::pack_lut(m);
      EXPECT_EQ(static_cast<std::int64_t>(t.qweight.size()), formats::code_rows(in, bits) * 5);
      const QuantizedMatrix u = formats::unpack_lut(t, 5, in, bits, m.n_groups);
      EXPECT_EQ(u.q, m.q) << bits << " " << in;
      EXPECT_EQ(u.lut, m.lut);
      EXPECT_EQ(u.dequantize(), m.dequantize());
    }
  }
}

TEST(LutFormat, GoldenWords) {
  // 1 row × 8 inputs at 4 bits: codes 0..7 in one word, LSB first; 3 bits: 24 bits of codes.
  QuantSpec spec;
  spec.bits = 4;
  spec.group_size = -1;
  QuantizedMatrix m = QuantizedMatrix::empty(1, 8, spec);
  for (int j = 0; j < 8; ++j) m.q[static_cast<std::size_t>(j)] = static_cast<std::uint8_t>(j);
  m.lut.assign(16, 0.5f);
  EXPECT_EQ(static_cast<std::uint32_t>(formats::pack_lut(m).qweight.at(0)), 0x76543210u);
  EXPECT_EQ(formats::pack_lut(m).lookup_table.at(0), 0x3800);  // fp16 0.5
  spec.bits = 3;
  QuantizedMatrix m3 = QuantizedMatrix::empty(1, 8, spec);
  for (int j = 0; j < 8; ++j) m3.q[static_cast<std::size_t>(j)] = static_cast<std::uint8_t>(7 - j);
  m3.lut.assign(8, 0.0f);
  // codes 7,6,5,4,3,2,1,0 → bits 111 110 101 100 011 010 001 000 read from the LSB: 0x0053977.
  const auto t = formats::pack_lut(m3);
  ASSERT_EQ(t.qweight.size(), 1u);
  EXPECT_EQ(static_cast<std::uint32_t>(t.qweight[0]), 0x00053977u);
}

TEST(Kmeans1d, SolverSpeedSanityOnWideRows) {
  // Not a benchmark (see bench/): a 11008-wide row at 8 bits stays tractable and exact ≤ Lloyd.
  std::mt19937 rng(17);
  const auto x = random_values(rng, 11008);
  const double exact = kmeans_1d_exact(x.data(), nullptr, 11008, 256).objective;
  const double lloyd = kmeans_1d_lloyd(x.data(), nullptr, 11008, 256).objective;
  EXPECT_LE(exact, lloyd * (1 + 1e-12));
}

}  // namespace
}  // namespace quant
