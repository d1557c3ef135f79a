#include "quant/core/quantizer.h"

#include <algorithm>
#include <cmath>

#include <omp.h>

#include "quant/core/dtype.h"
#include "quant/core/error.h"

namespace quant {

namespace {
float to_fp16(float x) { return f16_to_f32(f32_to_f16(x)); }
}  // namespace

const char* act_quant_name(ActQuant a) {
  switch (a) {
    case ActQuant::int8: return "int8";
    case ActQuant::fp8: return "fp8";
    case ActQuant::none: break;
  }
  return "none";
}

std::string ActInput::label() const {
  if (kind == ActQuant::none) return "none";
  return fmt::format("{} {}", act_quant_name(kind), is_static() ? "static per-tensor" : "dynamic per-token");
}

std::string QuantSpec::label() const {
  const std::string w = fp8 ? std::string(per_tensor ? "fp8t" : "fp8") : fmt::format("w{}g{}", bits, group_size < 0 ? std::string("-1") : std::to_string(group_size));
  return act == ActQuant::none ? w : w + (static_act ? "a8s" : "a8");
}

void QuantSpec::validate() const {
  if (bits < 2 || bits > 8) fail<UsageError>("bits must be between 2 and 8, got {}", bits);
  if (group_size == 0 || group_size < -1) fail<UsageError>("group size must be positive or -1 (per output channel), got {}", group_size);
  if (fp8 && (bits != 8 || group_size != -1 || !sym)) {
    fail<UsageError>("float8 weights are 8-bit, symmetric, one scale per output channel (bits 8, group -1, sym); got {} bits, group {}, {}",
                     bits, group_size, sym ? "symmetric" : "asymmetric");
  }
  if (per_tensor && !fp8) fail<UsageError>("one scale per tensor is for float8 weights only");
  if (static_act && act == ActQuant::none) fail<UsageError>("static activation scales need activation quantization");
}

GroupParams minmax_params(float xmin, float xmax, int bits, bool sym) {
  const int maxq = (1 << bits) - 1;
  xmin = std::min(xmin, 0.0f);
  xmax = std::max(xmax, 0.0f);
  if (sym) {
    xmax = std::max(std::abs(xmin), xmax);
    if (xmin < 0) xmin = -xmax;
  }
  if (xmin == 0.0f && xmax == 0.0f) {
    xmin = -1.0f;
    xmax = 1.0f;
  }
  GroupParams p;
  if (sym) {
    // Symmetric: the full range [−xmax, xmax] spans maxq steps around the midpoint zero.
    p.scale = to_fp16((xmax - xmin) / static_cast<float>(maxq));
    if (xmin == 0.0f) p.scale = to_fp16(2.0f * xmax / static_cast<float>(maxq));
    p.zero = static_cast<float>((maxq + 1) / 2);
  } else {
    p.scale = to_fp16((xmax - xmin) / static_cast<float>(maxq));
    p.zero = std::nearbyint(-xmin / p.scale);
    if (p.zero < 1.0f) {  // keep zero ≥ 1 (see header); widen the range by one step
      p.zero = 1.0f;
      p.scale = to_fp16(xmax / static_cast<float>(maxq - 1));
    }
    p.zero = std::min(p.zero, static_cast<float>(maxq));
  }
  if (!(p.scale > 0.0f)) p.scale = to_fp16(std::max(std::abs(xmin), std::abs(xmax)) / static_cast<float>(maxq));
  if (!(p.scale > 0.0f)) p.scale = 6.103515625e-05f;  // tiny ranges: smallest normal fp16
  return p;
}

GroupParams find_params(const float* x, std::int64_t n, const QuantSpec& spec, const float* weights) {
  // Vectorized reductions (weights were checked finite on loading); the range includes 0.
  const Eigen::Map<const Eigen::ArrayXf> xs(x, static_cast<Eigen::Index>(n));
  const float xmin = n > 0 ? std::min(0.0f, xs.minCoeff()) : 0.0f;
  const float xmax = n > 0 ? std::max(0.0f, xs.maxCoeff()) : 0.0f;
  GroupParams best = minmax_params(xmin, xmax, spec.bits, spec.sym);
  if (!spec.mse) return best;
  const int maxq = spec.maxq();
  auto err_of = [&](const GroupParams& p) {
    double e = 0;
    for (std::int64_t i = 0; i < n; ++i) {
      const double d = dequantize_code(quantize_code(x[i], p, maxq), p) - x[i];
      e += (weights ? weights[i] : 1.0) * d * d;
    }
    return e;
  };
  double best_err = err_of(best);
  constexpr int kGrid = 100;
  constexpr double kMaxShrink = 0.8;
  for (int i = 1; i < static_cast<int>(kMaxShrink * kGrid); ++i) {
    const float shrink = 1.0f - static_cast<float>(i) / kGrid;
    const GroupParams p = minmax_params(shrink * xmin, shrink * xmax, spec.bits, spec.sym);
    const double e = err_of(p);
    if (e < best_err) {
      best_err = e;
      best = p;
    }
  }
  return best;
}

QuantizedMatrix QuantizedMatrix::stack_rows(const std::vector<const QuantizedMatrix*>& parts) {
  if (parts.empty()) fail<Error>("stack_rows: no parts");
  QuantizedMatrix r = *parts.front();
  for (std::size_t i = 1; i < parts.size(); ++i) {
    const QuantizedMatrix& p = *parts[i];
    if (p.bits != r.bits || p.sym != r.sym || p.in != r.in || p.n_groups != r.n_groups || p.group_size != r.group_size ||
        p.g_idx != r.g_idx || p.non_uniform() != r.non_uniform() || p.fp8 != r.fp8 ||
        p.per_tensor != r.per_tensor || (p.per_tensor && p.scales.front() != r.scales.front())) {
      fail<Error>("stack_rows: part {} does not share the first part's quantization (bits, groups, act-order or per-tensor scale)", i);
    }
    const bool had_outliers = !r.outlier_rowptr.empty() || !p.outlier_rowptr.empty();
    if (had_outliers) {
      if (r.outlier_rowptr.empty()) r.outlier_rowptr.assign(static_cast<std::size_t>(r.out + 1), 0);
      std::vector<std::int32_t> pr = p.outlier_rowptr;
      if (pr.empty()) pr.assign(static_cast<std::size_t>(p.out + 1), 0);
      const std::int32_t base = r.outlier_rowptr.back();
      for (std::size_t k = 1; k < pr.size(); ++k) r.outlier_rowptr.push_back(base + pr[k]);
      r.outlier_cols.insert(r.outlier_cols.end(), p.outlier_cols.begin(), p.outlier_cols.end());
      r.outlier_vals.insert(r.outlier_vals.end(), p.outlier_vals.begin(), p.outlier_vals.end());
    }
    r.q.insert(r.q.end(), p.q.begin(), p.q.end());
    r.scales.insert(r.scales.end(), p.scales.begin(), p.scales.end());
    r.zeros.insert(r.zeros.end(), p.zeros.begin(), p.zeros.end());
    r.lut.insert(r.lut.end(), p.lut.begin(), p.lut.end());
    r.out += p.out;
  }
  return r;
}

QuantizedMatrix QuantizedMatrix::empty(std::int64_t out, std::int64_t in, const QuantSpec& spec) {
  QuantizedMatrix m;
  m.bits = spec.bits;
  m.sym = spec.sym;
  m.fp8 = spec.fp8;
  m.per_tensor = spec.per_tensor;
  m.out = out;
  m.in = in;
  m.group_size = spec.effective_group(in);
  m.n_groups = (in + m.group_size - 1) / m.group_size;
  m.q.assign(static_cast<std::size_t>(out * in), 0);
  m.scales.assign(static_cast<std::size_t>(out * m.n_groups), 1.0f);
  m.zeros.assign(static_cast<std::size_t>(out * m.n_groups), 0.0f);
  m.g_idx.resize(static_cast<std::size_t>(in));
  for (std::int64_t j = 0; j < in; ++j) m.g_idx[static_cast<std::size_t>(j)] = static_cast<std::int32_t>(j / m.group_size);
  return m;
}

namespace {

// Row `o` of m.dequantize() into `y`; `contiguous`: column j is in group j / group_size.
void dequantize_row(const QuantizedMatrix& m, std::int64_t o, float* y, bool contiguous) {
  const std::int64_t in = m.in, n_groups = m.n_groups, group_size = m.group_size;
  const auto& g_idx = m.g_idx;
  const auto& lut = m.lut;
  const auto& outlier_rowptr = m.outlier_rowptr;
  const std::uint8_t* codes = m.q.data() + static_cast<std::size_t>(o * in);
  if (m.non_uniform()) {
    const std::int64_t K = m.n_centroids();
    for (std::int64_t j = 0; j < in; ++j) {
      const std::int64_t g = g_idx[static_cast<std::size_t>(j)];
      y[j] = lut[static_cast<std::size_t>((o * n_groups + g) * K + codes[j])];
    }
  } else if (m.fp8) {
    for (std::int64_t j = 0; j < in; ++j) y[j] = m.scales[static_cast<std::size_t>(o * n_groups + g_idx[static_cast<std::size_t>(j)])] * f8e4m3_to_f32(codes[j]);
  } else if (contiguous) {
    for (std::int64_t g = 0; g < n_groups; ++g) {
      const GroupParams p = m.params(o, g);
      const std::int64_t j0 = g * group_size, j1 = std::min(in, j0 + group_size);
      for (std::int64_t j = j0; j < j1; ++j) y[j] = dequantize_code(codes[j], p);
    }
  } else {
    for (std::int64_t j = 0; j < in; ++j) y[j] = dequantize_code(codes[j], m.params(o, g_idx[static_cast<std::size_t>(j)]));
  }
  if (!outlier_rowptr.empty()) {
    for (std::int32_t i = outlier_rowptr[static_cast<std::size_t>(o)]; i < outlier_rowptr[static_cast<std::size_t>(o) + 1]; ++i) {
      y[m.outlier_cols[static_cast<std::size_t>(i)]] = m.outlier_vals[static_cast<std::size_t>(i)];
    }
  }
}

}  // namespace

Mat QuantizedMatrix::dequantize() const {
  Mat w(out, in);
  const bool contiguous = !non_uniform() && trivial_g_idx();
#pragma omp parallel for schedule(static)
  for (std::int64_t o = 0; o < out; ++o) dequantize_row(*this, o, w.row(o).data(), contiguous);
  return w;
}

std::pair<double, double> QuantizedMatrix::error_and_norm(const Mat& w) const {
  const bool contiguous = !non_uniform() && trivial_g_idx();
  std::vector<double> err(static_cast<std::size_t>(out)), norm(static_cast<std::size_t>(out));
#pragma omp parallel
  {
    std::vector<float> y(static_cast<std::size_t>(in));
#pragma omp for schedule(static)
    for (std::int64_t o = 0; o < out; ++o) {
      dequantize_row(*this, o, y.data(), contiguous);
      const float* x = w.row(o).data();
      double e = 0, n2 = 0;
#pragma omp simd reduction(+ : e, n2)
      for (std::int64_t j = 0; j < in; ++j) {
        const double d = static_cast<double>(x[j]) - static_cast<double>(y[static_cast<std::size_t>(j)]);
        e += d * d;
        n2 += static_cast<double>(x[j]) * static_cast<double>(x[j]);
      }
      err[static_cast<std::size_t>(o)] = e;
      norm[static_cast<std::size_t>(o)] = n2;
    }
  }
  double e = 0, n2 = 0;
  for (std::int64_t o = 0; o < out; ++o) e += err[static_cast<std::size_t>(o)], n2 += norm[static_cast<std::size_t>(o)];
  return {e, n2};
}

double QuantizedMatrix::bits_per_weight(int outlier_value_bits) const {
  const double n = static_cast<double>(out * in);
  double side = 0;
  if (non_uniform()) side = static_cast<double>(out * n_groups * n_centroids()) * 16.0;
  else side = static_cast<double>(out * n_groups) * (16.0 + (sym ? 0.0 : bits));
  if (!outlier_rowptr.empty()) {
    side += static_cast<double>(n_outliers()) * (32.0 + outlier_value_bits) + static_cast<double>(out + 1) * 32.0;
  }
  return bits + side / n;
}

bool QuantizedMatrix::trivial_g_idx() const {
  for (std::int64_t j = 0; j < in; ++j) {
    if (g_idx[static_cast<std::size_t>(j)] != j / group_size) return false;
  }
  return true;
}

namespace {
// Scale = max|w|/448 rounded up to float16 (so w/scale never passes 448), e4m3 codes; max over
// each row, or with spec.per_tensor over the whole tensor (every row then has the same scale).
// The smallest float16 scale s with s·qmax ≥ amax (1 for amax 0).
float scale_covering(float amax, float qmax) {
  float s = amax > 0.0f ? to_fp16(amax / qmax) : 1.0f;
  if (s * qmax < amax) s = f16_to_f32(static_cast<std::uint16_t>(f32_to_f16(s) + 1));  // next float16 up
  return s;
}
float fp8_scale(float amax) { return scale_covering(amax, 448.0f); }

QuantizedMatrix quantize_fp8(const Mat& w, const QuantSpec& spec) {
  QuantizedMatrix m = QuantizedMatrix::empty(w.rows(), w.cols(), spec);
  const float tensor_scale = spec.per_tensor ? fp8_scale(std::max(spec.tensor_amax, w.size() > 0 ? w.cwiseAbs().maxCoeff() : 0.0f)) : 0.0f;
#pragma omp parallel for schedule(static)
  for (std::int64_t o = 0; o < m.out; ++o) {
    const float s = spec.per_tensor ? tensor_scale : fp8_scale(w.row(o).cwiseAbs().maxCoeff());
    m.scales[static_cast<std::size_t>(o)] = s;
    std::uint8_t* codes = m.q.data() + static_cast<std::size_t>(o * m.in);
    for (std::int64_t j = 0; j < m.in; ++j) codes[j] = f32_to_f8e4m3(w(o, j) / s);
  }
  return m;
}
}  // namespace

void fake_quant_tokens(Mat& x, ActQuant act) {
  if (act == ActQuant::none) return;
#pragma omp parallel for schedule(static) if (x.rows() > 1 && !omp_in_parallel())
  for (Eigen::Index t = 0; t < x.rows(); ++t) {
    auto row = x.row(t);
    const float amax = row.cwiseAbs().maxCoeff();
    if (!(amax > 0.0f)) continue;
    if (act == ActQuant::int8) {
      const float s = amax / 127.0f;
      for (Eigen::Index j = 0; j < row.size(); ++j) row(j) = std::clamp(std::nearbyint(row(j) / s), -128.0f, 127.0f) * s;
    } else {
      const float s = amax / 448.0f;
      for (Eigen::Index j = 0; j < row.size(); ++j) row(j) = round_to_f8e4m3(row(j) / s) * s;
    }
  }
}

void fake_quant_input(Mat& x, const ActInput& act) {
  if (!act.is_static()) return fake_quant_tokens(x, act.kind);
  const float s = act.scale;
  float* p = x.data();
  const Eigen::Index n = x.size();
  if (act.kind == ActQuant::int8) {
#pragma omp parallel for schedule(static) if (n > 65536 && !omp_in_parallel())
    for (Eigen::Index i = 0; i < n; ++i) p[i] = std::clamp(std::nearbyint(p[i] / s), -128.0f, 127.0f) * s;
  } else {
#pragma omp parallel for schedule(static) if (n > 65536 && !omp_in_parallel())
    for (Eigen::Index i = 0; i < n; ++i) p[i] = round_to_f8e4m3(std::clamp(p[i] / s, -448.0f, 448.0f)) * s;
  }
}

float static_input_scale(ActQuant act, float amax) {
  if (act == ActQuant::none) fail<Error>("static_input_scale: no activation quantization");
  return scale_covering(amax, act == ActQuant::fp8 ? 448.0f : 127.0f);
}

QuantizedMatrix quantize_rtn(const Mat& w, const QuantSpec& spec) {
  spec.validate();
  if (spec.fp8) return quantize_fp8(w, spec);
  QuantizedMatrix m = QuantizedMatrix::empty(w.rows(), w.cols(), spec);
  const int maxq = spec.maxq();
#pragma omp parallel for schedule(static)
  for (std::int64_t o = 0; o < m.out; ++o) {
    const float* row = w.row(o).data();
    for (std::int64_t g = 0; g < m.n_groups; ++g) {
      const std::int64_t j0 = g * m.group_size, j1 = std::min(m.in, j0 + m.group_size);
      const GroupParams p = find_params(row + j0, j1 - j0, spec);
      m.scales[static_cast<std::size_t>(o * m.n_groups + g)] = p.scale;
      m.zeros[static_cast<std::size_t>(o * m.n_groups + g)] = p.zero;
      std::uint8_t* codes = m.q.data() + static_cast<std::size_t>(o * m.in);
      for (std::int64_t j = j0; j < j1; ++j) {
        // quantize_code, written so that it vectorizes (same operations, same results).
        const float q = std::nearbyint(row[j] / p.scale) + p.zero;
        codes[j] = static_cast<std::uint8_t>(static_cast<int>(std::clamp(q, 0.0f, static_cast<float>(maxq))));
      }
    }
  }
  return m;
}

double squared_error(const Mat& w, const Mat& w_hat) {
  return (w.cast<double>() - w_hat.cast<double>()).squaredNorm();
}

}  // namespace quant
