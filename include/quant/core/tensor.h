// Dense float matrices used for compute. Weights are [out, in] row-major, as stored in
// safetensors, so a linear layer is y = x Wᵀ with activations x [tokens, in] row-major.
#pragma once

#include <Eigen/Core>

namespace quant {

using Mat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using Vec = Eigen::VectorXf;
using MatD = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

}  // namespace quant
