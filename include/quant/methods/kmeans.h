// Non-uniform (k-means) quantization, after SqueezeLLM (Kim et al., "SqueezeLLM: Dense-and-Sparse
// Quantization", arXiv:2306.07629): every output row (or group) gets its own codebook of 2^bits
// centroids, found by sensitivity-weighted 1-D k-means on that row's weights. The weighted
// objective Σ h_j (w_j − c(w_j))² uses h_j = mean x_j² over calibration tokens (the diagonal of
// the layer Hessian, the imatrix statistic), or h_j = 1 without calibration.
//
// 1-D k-means is solved exactly: optimal clusters are contiguous runs of the sorted values, so a
// dynamic programme over prefix sums finds them; each layer of the programme is a row-minima
// search in a Monge matrix, done by divide and conquer in O(n log n) (O(k·n log n) in all),
// with Knuth's bound from the previous layer narrowing every scan.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "quant/core/quantizer.h"
#include "quant/methods/method.h"

namespace quant {

enum class KmeansSolver { exact, lloyd };
enum class KmeansWeighting { none, hessian };
KmeansSolver parse_kmeans_solver(const std::string& s);        // throws UsageError
KmeansWeighting parse_kmeans_weighting(const std::string& s);  // throws UsageError
std::string kmeans_weighting_name(KmeansWeighting w);

struct Kmeans1d {
  std::vector<double> centroids;  // ascending, k of them (repeated when fewer distinct values)
  double objective = 0;           // Σ w_i (x_i − nearest centroid)²
};

// Exact weighted 1-D k-means of n values. Points of weight 0 do not move centroids; when every
// weight is 0 the values are clustered unweighted. With at most k distinct (weighted) values
// the centroids are those values and the objective is 0.
Kmeans1d kmeans_1d_exact(const float* x, const float* w, std::int64_t n, int k);
// Lloyd iterations from a k-means++ initialisation (seeded, deterministic), for comparison.
Kmeans1d kmeans_1d_lloyd(const float* x, const float* w, std::int64_t n, int k, std::uint64_t seed = 0,
                         int max_iter = 100);
// Index of the centroid nearest x (ties to the lower one); centroids ascending.
int nearest_centroid(const std::vector<float>& centroids, float x);

struct KmeansOptions {
  KmeansSolver solver = KmeansSolver::exact;
  double outliers = 0;  // fraction of each linear's weights, by magnitude, kept exactly (sparse)
  std::uint64_t seed = 0;
};

// Quantizes w [out, in] with per-row (or per-group) codebooks; `importance` is h_j per input
// column (size in), or empty for unweighted. Centroids are rounded to fp16 and codes assigned
// to the nearest rounded centroid.
QuantizedMatrix kmeans_quantize(const Mat& w, const std::vector<float>& importance, const QuantSpec& spec,
                                const KmeansOptions& options);

// Σ_j h_j Σ_o (w − ŵ)²: the weighted objective (h = 1 when `importance` is empty).
double weighted_error(const Mat& w, const Mat& w_hat, const std::vector<float>& importance);

// k-means as a Method. Weighting hessian: h_j = mean x_j² of each linear's calibration inputs
// (Statistic::mean_square, layer by layer with the previous layers quantized); none: every
// linear straight from the checkpoint, h = 1.
class KmeansMethod : public Method {
 public:
  KmeansMethod(KmeansOptions options, KmeansWeighting weighting);
  const MethodTraits& traits() const override { return traits_; }
  nlohmann::json config() const override;
  nlohmann::json fingerprint() const override;
  QuantizedLinear quantize(const LinearInput& input) const override;

 private:
  KmeansOptions options_;
  KmeansWeighting weighting_;
  MethodTraits traits_;
};

}  // namespace quant
