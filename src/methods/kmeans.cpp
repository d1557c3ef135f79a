// Weighted 1-D k-means: the exact dynamic programme (SMAWK row minima per layer) and Lloyd's
// algorithm from a k-means++ start; and the per-row/per-group codebook quantizer built on them.
#include "quant/methods/kmeans.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <cstring>
#include <random>

#include "quant/core/dtype.h"
#include "quant/core/error.h"

namespace quant {

KmeansSolver parse_kmeans_solver(const std::string& s) {
  if (s == "exact") return KmeansSolver::exact;
  if (s == "lloyd") return KmeansSolver::lloyd;
  fail<UsageError>("unknown k-means solver '{}' (exact, lloyd)", s);
}

KmeansWeighting parse_kmeans_weighting(const std::string& s) {
  if (s == "none") return KmeansWeighting::none;
  if (s == "hessian") return KmeansWeighting::hessian;
  fail<UsageError>("unknown weighting '{}' (none, hessian)", s);
}

std::string kmeans_weighting_name(KmeansWeighting w) { return w == KmeansWeighting::none ? "none" : "hessian"; }

namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

// Distinct values (ascending) with their summed weights; zero-weight points dropped unless all
// are zero, in which case every point counts once.
struct Points {
  std::vector<double> x, w;
};

// Order-preserving map of a float to 32 bits (negative values reversed below positive ones).
std::uint32_t sortable_bits(float f) {
  std::uint32_t u;
  std::memcpy(&u, &f, 4);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

void distinct_points(const float* x, const float* w, std::int64_t n, std::vector<std::uint64_t>& keys, Points& p) {
  bool any = false;
  for (std::int64_t i = 0; i < n && w; ++i) any = any || w[i] > 0;
  const bool weighted = w && any;
  // Sort (value bits, index) keys: one integer sort, equal values adjacent.
  keys.clear();
  for (std::int64_t i = 0; i < n; ++i) {
    if (weighted && !(w[i] > 0)) continue;
    keys.push_back(static_cast<std::uint64_t>(sortable_bits(x[i])) << 32 | static_cast<std::uint64_t>(i));
  }
  std::sort(keys.begin(), keys.end());
  p.x.clear();
  p.w.clear();
  std::uint32_t last = 0;
  for (std::uint64_t key : keys) {
    const auto i = static_cast<std::size_t>(key & 0xFFFFFFFFu);
    const auto bits = static_cast<std::uint32_t>(key >> 32);
    const double wi = weighted ? static_cast<double>(w[i]) : 1.0;
    if (!p.x.empty() && bits == last) {
      p.w.back() += wi;
    } else {
      p.x.push_back(x[i]);
      p.w.push_back(wi);
      last = bits;
    }
  }
}

// Prefix sums of w, w·x, w·x² (x centred on the weighted mean, to keep the differences of
// the sums accurate) and the within-segment cost of points [a, b).
class SegmentCost {
 public:
  void build(const Points& p) {
    const std::size_t m = p.x.size();
    s0_.assign(m + 1, 0.0);
    s1_.assign(m + 1, 0.0);
    s2_.assign(m + 1, 0.0);
    double sw = 0, swx = 0;
    for (std::size_t i = 0; i < m; ++i) {
      sw += p.w[i];
      swx += p.w[i] * p.x[i];
    }
    const double mean = swx / sw;
    for (std::size_t i = 0; i < m; ++i) {
      const double d = p.x[i] - mean;
      s0_[i + 1] = s0_[i] + p.w[i];
      s1_[i + 1] = s1_[i] + p.w[i] * d;
      s2_[i + 1] = s2_[i] + p.w[i] * d * d;
    }
  }
  double operator()(std::size_t a, std::size_t b) const {
    const double w = s0_[b] - s0_[a], s = s1_[b] - s1_[a];
    return std::max(0.0, s2_[b] - s2_[a] - s * s / w);
  }
  // The best j in [a, b] of base[j] + cost(j, i) (leftmost on ties), and its value. Costs are
  // computed in an independent, vectorisable loop first.
  std::pair<std::size_t, double> argmin(std::size_t i, std::size_t a, std::size_t b, const double* base, double* scratch) const {
    const double w0 = s0_[i], w1 = s1_[i], w2 = s2_[i];
    const double* __restrict s0 = s0_.data() + a;
    const double* __restrict s1 = s1_.data() + a;
    const double* __restrict s2 = s2_.data() + a;
    const double* __restrict bs = base + a;
    const std::size_t n = b - a + 1;
    for (std::size_t t = 0; t < n; ++t) {
      const double w = w0 - s0[t], s = w1 - s1[t];
      scratch[t] = bs[t] + std::max(0.0, w2 - s2[t] - s * s / w);
    }
    std::size_t best = 0;
    for (std::size_t t = 1; t < n; ++t) best = scratch[t] < scratch[best] ? t : best;
    return {a + best, scratch[best]};
  }

 private:
  std::vector<double> s0_, s1_, s2_;
};

// One layer of the programme by divide and conquer over the rows: the best split of row i is
// nondecreasing in i (the cost is Monge) and not below the previous layer's split of row i
// (Knuth's bound, as Ckmeans.1d.dp uses), so each row scans only a narrow range.
struct LayerSolver {
  const SegmentCost& cost;
  const double* prev;          // previous layer's values
  const std::uint32_t* below;  // previous layer's splits (nullptr for the first)
  double* cur;
  std::uint32_t* split;
  double* scratch;

  std::size_t lower(std::size_t i, std::size_t jlo) const { return below ? std::max<std::size_t>(jlo, below[i]) : jlo; }

  void solve(std::size_t lo, std::size_t hi, std::size_t jlo, std::size_t jhi) {
    while (lo <= hi) {
      const std::size_t mid = lo + (hi - lo) / 2;
      const std::size_t b = std::min(jhi, mid - 1);
      std::size_t a = lower(mid, jlo);
      if (a > b) a = std::min(jlo, b);  // never narrower than the Monge range alone
      const auto [best, v] = cost.argmin(mid, a, b, prev, scratch);
      cur[mid] = v;
      split[mid] = static_cast<std::uint32_t>(best);
      solve(lo, mid - 1, jlo, best);
      lo = mid + 1;  // the upper half iteratively
      jlo = best;
    }
  }
};

// Per-thread buffers, reused across rows (no allocation in the steady state).
struct Workspace {
  std::vector<std::uint64_t> keys;
  Points points;
  SegmentCost cost;
  std::vector<double> prev, cur, scratch;
  std::vector<std::uint32_t> split;
};
thread_local Workspace tls_workspace;

double objective_of(const float* x, const float* w, std::int64_t n, const std::vector<double>& c) {
  bool any = false;
  for (std::int64_t i = 0; i < n && w; ++i) any = any || w[i] > 0;
  double e = 0;
  for (std::int64_t i = 0; i < n; ++i) {  // c ascending: the nearest is at the insertion point or before
    const double xi = x[i];
    const auto it = std::lower_bound(c.begin(), c.end(), xi);
    double best = kInf;
    if (it != c.end()) best = (*it - xi) * (*it - xi);
    if (it != c.begin()) best = std::min(best, (xi - *(it - 1)) * (xi - *(it - 1)));
    e += ((w && any) ? static_cast<double>(w[i]) : 1.0) * best;
  }
  return e;
}

// k centroids from fewer distinct values: the values, the last one repeated.
Kmeans1d trivial_solution(const Points& p, int k) {
  Kmeans1d r;
  r.centroids = p.x;
  if (r.centroids.empty()) r.centroids.push_back(0.0);
  while (static_cast<int>(r.centroids.size()) < k) r.centroids.push_back(r.centroids.back());
  return r;
}

}  // namespace

Kmeans1d kmeans_1d_exact(const float* x, const float* w, std::int64_t n, int k) {
  if (k < 1) fail<UsageError>("k-means needs at least one cluster");
  Workspace& ws = tls_workspace;
  distinct_points(x, w, n, ws.keys, ws.points);
  const Points& p = ws.points;
  const std::size_t m = p.x.size();
  if (m <= static_cast<std::size_t>(k)) return trivial_solution(p, k);
  ws.cost.build(p);
  const SegmentCost& cost = ws.cost;
  // D[c][i]: best cost of the first i points in c + 1 clusters; split[c·(m+1) + i]: where the
  // last cluster starts.
  ws.prev.resize(m + 1);
  ws.cur.assign(m + 1, kInf);
  ws.scratch.resize(m + 1);
  ws.split.assign(static_cast<std::size_t>(k) * (m + 1), 0);
  for (std::size_t i = 0; i <= m; ++i) ws.prev[i] = i == 0 ? 0.0 : cost(0, i);
  for (int c = 1; c < k; ++c) {
    const auto cu = static_cast<std::size_t>(c);
    // Rows i = c+1 … m−1 points (the final layer needs only i = m); the last cluster is
    // [j, i) with j ≥ c.
    const std::size_t lo = c == k - 1 ? m : cu + 1, hi = c == k - 1 ? m : m - 1;
    LayerSolver solver{cost, ws.prev.data(), c > 1 ? ws.split.data() + (cu - 1) * (m + 1) : nullptr, ws.cur.data(),
                       ws.split.data() + cu * (m + 1), ws.scratch.data()};
    solver.solve(lo, hi, cu, m - 1);
    std::swap(ws.prev, ws.cur);
  }
  // Backtrack the clusters of the m points into k clusters.
  Kmeans1d r;
  r.centroids.assign(static_cast<std::size_t>(k), 0.0);
  std::size_t end = m;
  for (int c = k - 1; c >= 0; --c) {
    const std::size_t start = c == 0 ? 0 : ws.split[static_cast<std::size_t>(c) * (m + 1) + end];
    double sw = 0, swx = 0;
    for (std::size_t i = start; i < end; ++i) {
      sw += p.w[i];
      swx += p.w[i] * p.x[i];
    }
    r.centroids[static_cast<std::size_t>(c)] = swx / sw;
    end = start;
  }
  r.objective = objective_of(x, w, n, r.centroids);
  return r;
}

Kmeans1d kmeans_1d_lloyd(const float* x, const float* w, std::int64_t n, int k, std::uint64_t seed, int max_iter) {
  if (k < 1) fail<UsageError>("k-means needs at least one cluster");
  std::vector<std::uint64_t> keys;
  Points p;
  distinct_points(x, w, n, keys, p);
  const std::size_t m = p.x.size();
  if (m <= static_cast<std::size_t>(k)) return trivial_solution(p, k);
  // k-means++: each next centre drawn with probability ∝ w · D², D the distance to the
  // nearest centre so far.
  std::mt19937_64 rng(seed);
  std::vector<double> c;
  std::vector<double> d2(m, kInf);
  {
    std::discrete_distribution<std::size_t> first(p.w.begin(), p.w.end());
    c.push_back(p.x[first(rng)]);
  }
  while (static_cast<int>(c.size()) < k) {
    std::vector<double> prob(m);
    double total = 0;
    for (std::size_t i = 0; i < m; ++i) {
      d2[i] = std::min(d2[i], (p.x[i] - c.back()) * (p.x[i] - c.back()));
      prob[i] = p.w[i] * d2[i];
      total += prob[i];
    }
    if (total <= 0) break;
    std::discrete_distribution<std::size_t> next(prob.begin(), prob.end());
    c.push_back(p.x[next(rng)]);
  }
  while (static_cast<int>(c.size()) < k) c.push_back(c.back());
  std::sort(c.begin(), c.end());
  // Lloyd: assign to the nearest centre, move centres to their clusters' weighted means.
  std::vector<double> sw(static_cast<std::size_t>(k)), swx(static_cast<std::size_t>(k));
  for (int it = 0; it < max_iter; ++it) {
    std::fill(sw.begin(), sw.end(), 0.0);
    std::fill(swx.begin(), swx.end(), 0.0);
    std::size_t a = 0;
    for (std::size_t i = 0; i < m; ++i) {  // points and centres are both sorted
      while (a + 1 < c.size() && std::abs(p.x[i] - c[a + 1]) < std::abs(p.x[i] - c[a])) ++a;
      sw[a] += p.w[i];
      swx[a] += p.w[i] * p.x[i];
    }
    bool moved = false;
    for (std::size_t j = 0; j < c.size(); ++j) {
      if (sw[j] <= 0) continue;  // an empty cluster keeps its centre
      const double nc = swx[j] / sw[j];
      moved = moved || nc != c[j];
      c[j] = nc;
    }
    std::sort(c.begin(), c.end());
    if (!moved) break;
  }
  Kmeans1d r;
  r.centroids = c;
  r.objective = objective_of(x, w, n, c);
  return r;
}

int nearest_centroid(const std::vector<float>& c, float x) {
  // First centroid ≥ x, then compare with its lower neighbour.
  const auto it = std::lower_bound(c.begin(), c.end(), x);
  if (it == c.begin()) return 0;
  if (it == c.end()) return static_cast<int>(c.size()) - 1;
  const auto hi = static_cast<int>(it - c.begin());
  return (x - c[static_cast<std::size_t>(hi - 1)]) <= (*it - x) ? hi - 1 : hi;
}

QuantizedMatrix kmeans_quantize(const Mat& w, const std::vector<float>& importance, const QuantSpec& spec,
                                const KmeansOptions& options) {
  spec.validate();
  QuantSpec s = spec;
  QuantizedMatrix m = QuantizedMatrix::empty(w.rows(), w.cols(), s);
  m.scales.clear();
  m.zeros.clear();
  const int K = m.n_centroids();
  m.lut.assign(static_cast<std::size_t>(m.out * m.n_groups * K), 0.0f);
  if (!importance.empty() && static_cast<std::int64_t>(importance.size()) != m.in) {
    fail<Error>("kmeans: {} importance values for {} inputs", importance.size(), m.in);
  }

  // Outliers: the largest-magnitude fraction of the whole matrix, kept exactly.
  std::vector<std::uint8_t> is_outlier;
  if (options.outliers > 0) {
    const auto n = static_cast<std::size_t>(w.size());
    const auto n_out = static_cast<std::size_t>(std::floor(options.outliers * static_cast<double>(n)));
    if (n_out > 0) {
      std::vector<float> mag(n);
      for (std::size_t i = 0; i < n; ++i) mag[i] = std::abs(w.data()[i]);
      std::vector<float> sorted = mag;
      std::nth_element(sorted.begin(), sorted.begin() + static_cast<std::ptrdiff_t>(n - n_out), sorted.end());
      const float threshold = sorted[n - n_out];
      is_outlier.assign(n, 0);
      std::size_t taken = 0;
      for (std::size_t i = 0; i < n && taken < n_out; ++i) {  // strictly above first, then ties in order
        if (mag[i] > threshold) is_outlier[i] = 1, ++taken;
      }
      for (std::size_t i = 0; i < n && taken < n_out; ++i) {
        if (mag[i] == threshold && !is_outlier[i]) is_outlier[i] = 1, ++taken;
      }
      m.outlier_rowptr.assign(static_cast<std::size_t>(m.out) + 1, 0);
      for (std::int64_t o = 0; o < m.out; ++o) {
        for (std::int64_t j = 0; j < m.in; ++j) {
          if (is_outlier[static_cast<std::size_t>(o * m.in + j)]) {
            m.outlier_cols.push_back(static_cast<std::int32_t>(j));
            m.outlier_vals.push_back(w(o, j));
          }
        }
        m.outlier_rowptr[static_cast<std::size_t>(o) + 1] = static_cast<std::int32_t>(m.outlier_cols.size());
      }
    }
  }

#pragma omp parallel for schedule(dynamic, 4)
  for (std::int64_t o = 0; o < m.out; ++o) {
    std::vector<float> xs, ws;
    for (std::int64_t g = 0; g < m.n_groups; ++g) {
      const std::int64_t j0 = g * m.group_size, j1 = std::min(m.in, j0 + m.group_size);
      xs.clear();
      ws.clear();
      for (std::int64_t j = j0; j < j1; ++j) {
        const bool outlier = !is_outlier.empty() && is_outlier[static_cast<std::size_t>(o * m.in + j)];
        xs.push_back(w(o, j));
        // An outlier is stored exactly: it must not pull the codebook.
        ws.push_back(outlier ? 0.0f : (importance.empty() ? 1.0f : importance[static_cast<std::size_t>(j)]));
      }
      // Rows made only of outliers (all weights zero) cluster unweighted: harmless either way.
      const auto n = static_cast<std::int64_t>(xs.size());
      const Kmeans1d km = options.solver == KmeansSolver::exact
                              ? kmeans_1d_exact(xs.data(), ws.data(), n, K)
                              : kmeans_1d_lloyd(xs.data(), ws.data(), n, K, options.seed + static_cast<std::uint64_t>(o * m.n_groups + g));
      std::vector<float> c(static_cast<std::size_t>(K));
      for (int i = 0; i < K; ++i) c[static_cast<std::size_t>(i)] = f16_to_f32(f32_to_f16(static_cast<float>(km.centroids[static_cast<std::size_t>(i)])));
      std::sort(c.begin(), c.end());
      std::copy(c.begin(), c.end(), m.lut.begin() + (o * m.n_groups + g) * K);
      for (std::int64_t j = j0; j < j1; ++j) {
        m.q[static_cast<std::size_t>(o * m.in + j)] = static_cast<std::uint8_t>(nearest_centroid(c, w(o, j)));
      }
    }
  }
  return m;
}

double weighted_error(const Mat& w, const Mat& w_hat, const std::vector<float>& importance) {
  double e = 0;
  for (Eigen::Index o = 0; o < w.rows(); ++o) {
    for (Eigen::Index j = 0; j < w.cols(); ++j) {
      const double d = static_cast<double>(w(o, j)) - static_cast<double>(w_hat(o, j));
      e += (importance.empty() ? 1.0 : static_cast<double>(importance[static_cast<std::size_t>(j)])) * d * d;
    }
  }
  return e;
}

}  // namespace quant

namespace quant {

KmeansMethod::KmeansMethod(KmeansOptions options, KmeansWeighting weighting) : options_(options), weighting_(weighting) {
  traits_.name = "kmeans";
  traits_.codebooks = true;
  if (weighting == KmeansWeighting::hessian) {
    traits_.statistic = Statistic::mean_square;
    traits_.calibrated = true;
    traits_.true_sequential = true;
  }
}

nlohmann::json KmeansMethod::config() const {
  return {{"weighting", kmeans_weighting_name(weighting_)},
          {"solver", options_.solver == KmeansSolver::exact ? "exact" : "lloyd"},
          {"outlier_fraction", options_.outliers}};
}

nlohmann::json KmeansMethod::fingerprint() const { return {{"seed", options_.seed}}; }

QuantizedLinear KmeansMethod::quantize(const LinearInput& in) const {
  static const std::vector<float> kUnweighted;
  const std::vector<float>& h = in.stats ? in.stats->mean_square : kUnweighted;
  QuantizedMatrix q = kmeans_quantize(in.weight, h, in.spec, options_);
  Mat deq = q.dequantize();
  nlohmann::json extra = {{"weighted_error", weighted_error(in.weight, deq, h)}, {"outliers", q.n_outliers()}};
  return {std::move(q), std::move(deq), std::move(extra)};
}

}  // namespace quant
