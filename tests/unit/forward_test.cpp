// The forward pass against a straightforward reference written here: naive loops in double
// precision, following the HF Llama modeling code line by line.
#include "quant/formats/codec.h"
#include "quant/model/forward.h"

#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <random>

#include "fixtures.h"
#include "quant/core/error.h"
#include "quant/io/safetensors.h"
#include "quant/model/weights.h"

namespace quant {
namespace {

namespace fs = std::filesystem;

using Matd = std::vector<std::vector<double>>;


// y[t][o] = sum_i x[t][i] w[o][i] + b[o]
Matd lin(const Matd& x, const Mat& w, const Vec& b) {
  Matd y(x.size(), std::vector<double>(static_cast<std::size_t>(w.rows()), 0.0));
  for (std::size_t t = 0; t < x.size(); ++t)
    for (Eigen::Index o = 0; o < w.rows(); ++o) {
      double s = b.size() ? b(o) : 0.0;
      for (Eigen::Index i = 0; i < w.cols(); ++i) s += x[t][i] * w(o, i);
      y[t][o] = s;
    }
  return y;
}

Matd norm(const Matd& x, const Vec& w, double eps) {
  Matd y = x;
  for (auto& row : y) {
    double ss = 0;
    for (double v : row) ss += v * v;
    const double inv = 1.0 / std::sqrt(ss / row.size() + eps);
    for (std::size_t i = 0; i < row.size(); ++i) row[i] = row[i] * inv * w(i);
  }
  return y;
}

void rope(Matd& x, int n_heads, int hd, double theta) {
  for (std::size_t t = 0; t < x.size(); ++t)
    for (int h = 0; h < n_heads; ++h)
      for (int i = 0; i < hd / 2; ++i) {
        const double f = 1.0 / std::pow(theta, 2.0 * i / hd);
        const double a = t * f, c = std::cos(a), s = std::sin(a);
        double& x1 = x[t][h * hd + i];
        double& x2 = x[t][h * hd + i + hd / 2];
        const double r1 = x1 * c - x2 * s, r2 = x2 * c + x1 * s;
        x1 = r1;
        x2 = r2;
      }
}

Matd reference_logits(const Model& model, const std::vector<std::int32_t>& tokens) {
  const auto& c = model.config();
  const HeadWeights head = load_head(model);
  const int T = static_cast<int>(tokens.size()), hd = static_cast<int>(c.head_dim);
  Matd h(T, std::vector<double>(c.hidden_size));
  for (int t = 0; t < T; ++t)
    for (int i = 0; i < c.hidden_size; ++i) h[t][i] = head.embed(tokens[t], i);
  for (int l = 0; l < c.n_layers; ++l) {
    const LayerWeights L = load_layer(model, l);
    auto B = [&](LinearKind k) { return L.b[static_cast<int>(k)]; };
    Matd x = norm(h, L.attn_norm, c.rms_norm_eps);
    Matd q = lin(x, L.linear(LinearKind::q), B(LinearKind::q));
    Matd k = lin(x, L.linear(LinearKind::k), B(LinearKind::k));
    Matd v = lin(x, L.linear(LinearKind::v), B(LinearKind::v));
    rope(q, c.n_heads, hd, c.rope_theta);
    rope(k, c.n_kv_heads, hd, c.rope_theta);
    Matd att(T, std::vector<double>(c.n_heads * hd, 0.0));
    const int rep = c.n_heads / c.n_kv_heads;
    for (int hh = 0; hh < c.n_heads; ++hh) {
      const int g = hh / rep;
      for (int t = 0; t < T; ++t) {
        std::vector<double> s(t + 1);
        double mx = -1e300;
        for (int j = 0; j <= t; ++j) {
          double d = 0;
          for (int i = 0; i < hd; ++i) d += q[t][hh * hd + i] * k[j][g * hd + i];
          s[j] = d / std::sqrt(hd);
          mx = std::max(mx, s[j]);
        }
        double z = 0;
        for (auto& e : s) z += (e = std::exp(e - mx));
        for (int j = 0; j <= t; ++j)
          for (int i = 0; i < hd; ++i) att[t][hh * hd + i] += s[j] / z * v[j][g * hd + i];
      }
    }
    Matd o = lin(att, L.linear(LinearKind::o), B(LinearKind::o));
    for (int t = 0; t < T; ++t)
      for (int i = 0; i < c.hidden_size; ++i) h[t][i] += o[t][i];
    x = norm(h, L.mlp_norm, c.rms_norm_eps);
    Matd g = lin(x, L.linear(LinearKind::gate), B(LinearKind::gate));
    Matd u = lin(x, L.linear(LinearKind::up), B(LinearKind::up));
    for (int t = 0; t < T; ++t)
      for (std::size_t i = 0; i < g[t].size(); ++i) g[t][i] = g[t][i] / (1 + std::exp(-g[t][i])) * u[t][i];
    Matd d = lin(g, L.linear(LinearKind::down), B(LinearKind::down));
    for (int t = 0; t < T; ++t)
      for (int i = 0; i < c.hidden_size; ++i) h[t][i] += d[t][i];
  }
  return lin(norm(h, head.final_norm, c.rms_norm_eps), head.head(), Vec());
}

Mat fast_logits(const Model& model, const std::vector<std::int32_t>& tokens) {
  const HeadWeights head = load_head(model);
  const RopeTable rope = build_rope(model.config(), static_cast<std::int64_t>(tokens.size()));
  Mat h = embed_tokens(head, tokens);
  for (int l = 0; l < model.config().n_layers; ++l) {
    decoder_layer_forward(model.config(), load_layer(model, l), rope, h);
  }
  return final_logits(model.config(), head, h);
}

void expect_close(const Model& model, const std::vector<std::int32_t>& tokens) {
  const Matd ref = reference_logits(model, tokens);
  const Mat got = fast_logits(model, tokens);
  double max_rel = 0, scale = 0;
  for (const auto& row : ref)
    for (double v : row) scale = std::max(scale, std::abs(v));
  for (std::size_t t = 0; t < ref.size(); ++t)
    for (std::size_t i = 0; i < ref[t].size(); ++i)
      max_rel = std::max(max_rel, std::abs(ref[t][i] - got(t, i)) / scale);
  EXPECT_LT(max_rel, 1e-4) << "max error relative to the largest logit";
}

std::vector<std::int32_t> random_tokens(int n, int vocab, unsigned seed) {
  std::mt19937 rng(seed);
  std::vector<std::int32_t> t(n);
  for (auto& x : t) x = static_cast<std::int32_t>(rng() % vocab);
  return t;
}

TEST(Forward, MatchesNaiveReferenceOnStories260K) {
  QUANT_REQUIRE_SHARED();
  const Model m = formats::open_model(testing::shared_dir() / "models/stories260K");
  expect_close(m, random_tokens(64, 512, 3));
}

TEST(Forward, MatchesNaiveReferenceWithBiasesGqaAndUntiedHead) {
  testing::TempDir dir;
  testing::TinyModelSpec spec;
  spec.model_type = "qwen2";
  spec.attention_bias = true;
  spec.tied = false;
  spec.heads = 8;
  spec.kv_heads = 2;
  spec.hidden = 64;
  testing::write_tiny_model(dir.path(), spec);
  const Model m = formats::open_model(dir.path());
  EXPECT_TRUE(m.config().qkv_bias);
  expect_close(m, random_tokens(40, spec.vocab, 5));
}

TEST(Forward, LlamaWithAllBiases) {
  testing::TempDir dir;
  testing::TinyModelSpec spec;
  spec.attention_bias = true;
  spec.tied = false;
  testing::write_tiny_model(dir.path(), spec);
  expect_close(formats::open_model(dir.path()), random_tokens(33, spec.vocab, 9));
}

TEST(Forward, BitIdenticalForAnyThreadCount) {
  testing::TempDir dir;
  testing::TinyModelSpec spec;
  spec.hidden = 128;
  spec.intermediate = 320;
  spec.heads = 4;
  testing::write_tiny_model(dir.path(), spec);
  const Model m = formats::open_model(dir.path());
  const auto tokens = random_tokens(100, spec.vocab, 1);
  omp_set_num_threads(1);
  const Mat a = fast_logits(m, tokens);
  omp_set_num_threads(2);
  const Mat b = fast_logits(m, tokens);
  omp_set_num_threads(3);
  const Mat c = fast_logits(m, tokens);
  EXPECT_TRUE(a == b);
  EXPECT_TRUE(a == c);
}

// Evaluation's layers and head held as stored (F16/BF16, read in place by the GEMM) give the
// float-loaded logits bit for bit; the next layer reuses a recycled layer's buffers.
TEST(Forward, StoredWeightsGiveTheFloatLogitsBitForBit) {
  for (const DType dt : {DType::F16, DType::BF16}) {
    for (const bool tied : {true, false}) {
      testing::TempDir dir;
      testing::TinyModelSpec spec;
      spec.dtype = dt;
      spec.tied = tied;
      spec.attention_bias = true;
      spec.hidden = 64;
      spec.intermediate = 96;
      testing::write_tiny_model(dir.path(), spec);
      const Model m = formats::open_model(dir.path());
      const auto tokens = random_tokens(70, spec.vocab, 4);
      const HeadWeights head = load_head(m, true);
      ASSERT_FALSE(head.embed_raw.empty());
      EXPECT_EQ(head.embed.size(), 0);
      EXPECT_EQ(head.lm_head_raw.empty(), tied);
      const RopeTable rope = build_rope(m.config(), static_cast<std::int64_t>(tokens.size()));
      Mat h = embed_tokens(head, tokens);
      LayerWeights prev;
      for (int l = 0; l < m.config().n_layers; ++l) {
        const std::byte* reused = prev.raw[static_cast<int>(LinearKind::down)].data.get();
        LayerWeights L = load_layer_stored(m, l, l > 0 ? &prev : nullptr);
        for (const LinearKind k : {LinearKind::q, LinearKind::o, LinearKind::down}) {
          EXPECT_FALSE(L.raw[static_cast<int>(k)].empty());
          EXPECT_EQ(L.linear(k).size(), 0);
        }
        if (l > 0) EXPECT_EQ(L.raw[static_cast<int>(LinearKind::down)].data.get(), reused) << "layer " << l << " reuses the buffer";
        decoder_layer_forward(m.config(), L, rope, h);
        prev = std::move(L);
      }
      const Mat stored = final_logits(m.config(), head, h);
      EXPECT_TRUE(stored == fast_logits(m, tokens)) << dtype_name(dt) << (tied ? " tied" : " untied");
    }
  }
}

// A non-finite stored weight is refused when the layer is read, naming the tensor, as the float
// loaders do.
TEST(Forward, StoredWeightWithANanIsRefusedNamingTheTensor) {
  testing::TempDir dir;
  testing::TinyModelSpec spec;
  spec.dtype = DType::F16;
  testing::write_tiny_model(dir.path(), spec);
  {
    const TensorStore store = TensorStore::open(dir.path());
    testing::TempDir out;
    SafetensorsWriter w(out.path());
    for (const auto& name : store.names()) {
      std::vector<float> v = store.read_f32(name);
      if (name == "model.layers.1.mlp.up_proj.weight") v[10] = std::nanf("");
      w.add_f32(name, store.get(name).dtype, store.get(name).shape, v);
    }
    w.finish();
    fs::copy_file(out / "model.safetensors", dir / "model.safetensors", fs::copy_options::overwrite_existing);
  }
  const Model m = formats::open_model(dir.path());
  EXPECT_NO_THROW(load_layer_stored(m, 0, nullptr));
  try {
    load_layer_stored(m, 1, nullptr);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("'model.layers.1.mlp.up_proj.weight' contains a non-finite value (nan) at flat index 10"),
              std::string::npos)
        << e.what();
  }
}

}  // namespace
}  // namespace quant
