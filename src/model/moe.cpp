// The sparse (mixture-of-experts) MLP block of Mixtral, Qwen2-MoE and Qwen3-MoE, as transformers'
// MixtralSparseMoeBlock / Qwen2MoeSparseMoeBlock / Qwen3MoeSparseMoeBlock compute it.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <numeric>

#include "quant/core/error.h"
#include "quant/model/forward.h"

namespace quant {

Routing route_tokens(const ModelConfig& c, const LayerWeights& L, const Mat& x) {
  const auto E = static_cast<Eigen::Index>(L.experts.size());
  const auto k = static_cast<Eigen::Index>(c.moe.top_k);
  if (E == 0 || L.router.rows() != E) fail<Error>("layer {}: router for {} experts, layer has {}", L.index, L.router.rows(), E);
  Mat logits;
  linear_forward(x, L.router, Vec(), logits);
  Routing r;
  r.rows.resize(static_cast<std::size_t>(E));
  r.weights.resize(static_cast<std::size_t>(E));
  std::vector<float> p(static_cast<std::size_t>(E));
  std::vector<int> order(static_cast<std::size_t>(E));
  for (Eigen::Index t = 0; t < x.rows(); ++t) {
    // F.softmax(router_logits, dim=1, dtype=torch.float)
    const float mx = logits.row(t).maxCoeff();
    float sum = 0;
    for (Eigen::Index e = 0; e < E; ++e) sum += p[static_cast<std::size_t>(e)] = std::exp(logits(t, e) - mx);
    for (auto& v : p) v /= sum;
    // torch.topk(routing_weights, top_k): the largest, ties to the lower index.
    std::iota(order.begin(), order.end(), 0);
    std::partial_sort(order.begin(), order.begin() + k, order.end(), [&](int a, int b) {
      return p[static_cast<std::size_t>(a)] > p[static_cast<std::size_t>(b)] || (p[static_cast<std::size_t>(a)] == p[static_cast<std::size_t>(b)] && a < b);
    });
    float top = 0;
    for (Eigen::Index i = 0; i < k; ++i) top += p[static_cast<std::size_t>(order[static_cast<std::size_t>(i)])];
    for (Eigen::Index i = 0; i < k; ++i) {
      const auto e = static_cast<std::size_t>(order[static_cast<std::size_t>(i)]);
      r.rows[e].push_back(t);
      r.weights[e].push_back(c.moe.norm_topk_prob ? p[e] / top : p[e]);
    }
  }
  return r;
}

Mat gather_rows(const Mat& x, const std::vector<Eigen::Index>& rows) {
  Mat out(static_cast<Eigen::Index>(rows.size()), x.cols());
  for (std::size_t i = 0; i < rows.size(); ++i) out.row(static_cast<Eigen::Index>(i)) = x.row(rows[i]);
  return out;
}

Mat expert_activation(const ExpertWeights& e, const Mat& x) {
  Mat gate, up;
  linear_forward(x, e.gate, Vec(), gate);
  linear_forward(x, e.up, Vec(), up);
  return gate.unaryExpr([](float g) { return g / (1.0f + std::exp(-g)); }).cwiseProduct(up);
}

Mat moe_block(const ModelConfig& c, const LayerWeights& L, const Mat& x) {
  const Routing r = route_tokens(c, L, x);
  Mat out = Mat::Zero(x.rows(), x.cols());
  Mat y;
  // Experts in index order, each adding its weighted output to its rows (index_add_).
  for (std::size_t e = 0; e < L.experts.size(); ++e) {
    if (r.rows[e].empty()) continue;
    linear_forward(expert_activation(L.experts[e], gather_rows(x, r.rows[e])), L.experts[e].down, Vec(), y);
    for (std::size_t i = 0; i < r.rows[e].size(); ++i) out.row(r.rows[e][i]) += y.row(static_cast<Eigen::Index>(i)) * r.weights[e][i];
  }
  if (L.shared_gate.size()) {  // Qwen2MoeSparseMoeBlock: + sigmoid(shared_expert_gate(x)) · shared_expert(x)
    Mat g;
    linear_forward(x, L.shared_gate, Vec(), g);
    linear_forward(expert_activation(L.shared, x), L.shared.down, Vec(), y);
    for (Eigen::Index t = 0; t < x.rows(); ++t) out.row(t) += y.row(t) * (1.0f / (1.0f + std::exp(-g(t, 0))));
  }
  return out;
}

}  // namespace quant
