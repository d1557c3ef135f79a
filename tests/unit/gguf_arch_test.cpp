// GGUF export beyond plain llama: qwen2 (q/k/v biases, NEOX RoPE so no q/k permutation) and RoPE
// scaling (linear: rope.scaling.* keys; llama3: rope_freqs.weight), as convert_hf_to_gguf.py
// writes them. tests/llamacpp/ checks the same files in llama.cpp itself where it is built.
#include <gtest/gtest.h>

#include <fmt/format.h>

#include <cmath>

#include "cli_helpers.h"
#include "fixtures.h"
#include "quant/core/error.h"
#include "quant/formats/codec.h"
#include "quant/formats/ggml_quants.h"
#include "quant/formats/gguf_export.h"
#include "quant/io/gguf.h"
#include "quant/io/io.h"
#include "quant/model/model.h"
#include "quant/model/weights.h"

namespace quant::gguf {
namespace {

using testing::TempDir;

void add_to_config(const fs::path& dir, const std::string& fields) {
  std::string cfg = read_text_file(dir / "config.json");
  cfg.insert(cfg.rfind('}'), ", " + fields);
  write_file_atomic(dir / "config.json", cfg);
}

TEST(GgufArch, Qwen2KeepsHfRowOrderAndWritesItsBiases) {
  TempDir dir;
  testing::TinyModelSpec spec;
  spec.model_type = "qwen2";
  testing::write_tiny_model(dir / "m", spec);
  testing::write_tiny_tokenizer(dir / "m", spec.vocab);
  const std::string out = (dir / "q.gguf").string();
  const auto r = testing::run_quant("gguf " + (dir / "m").string() + " -t f32 -o " + out);
  ASSERT_EQ(r.rc, 0) << r.err;
  const File g = File::open(out);
  EXPECT_EQ(g.find("general.architecture")->s, "qwen2");
  EXPECT_EQ(g.find("qwen2.block_count")->u, 2u);
  EXPECT_EQ(g.find("qwen2.attention.head_count_kv")->u, 2u);
  EXPECT_EQ(g.find("llama.block_count"), nullptr);
  const Model m = formats::open_model(dir / "m");
  const LinearDesc& q = m.layout().layers[1].linear(LinearKind::q);
  const Mat w = load_linear(m, q);
  const auto gw = dequantize_tensor(g, "blk.1.attn_q.weight");
  for (std::int64_t row = 0; row < w.rows(); ++row) {  // no RoPE permutation for qwen2
    for (std::int64_t c = 0; c < w.cols(); ++c) EXPECT_EQ(gw[static_cast<std::size_t>(row * w.cols() + c)], w(row, c));
  }
  for (const char* k : {"q", "k", "v"}) {
    const std::string name = fmt::format("blk.1.attn_{}.bias", k);
    const TensorInfo& t = g.tensor(name);
    EXPECT_EQ(t.type, GgmlType::F32) << name;
    const std::vector<float> hf = m.store().read_f32(fmt::format("model.layers.1.self_attn.{}_proj.bias", k));
    EXPECT_EQ(dequantize_tensor(g, name), hf) << name;
  }
  EXPECT_THROW(g.tensor("blk.1.attn_output.bias"), Error);
}

TEST(GgufArch, Llama3RopeFactorsByHand) {
  // head_dim 8, theta 10^4: frequencies 1, 0.1, 0.01, 0.001 → wavelengths 6.28, 62.8, 628, 6283.
  // original context 8192, low/high factors 1/4: wavelengths under 2048 keep factor 1, over 8192
  // take `factor` (8); 6283.19 lies between: smooth = (8192/6283.19 − 1)/3 = 0.1012658, factor
  // 1/((1 − smooth)/8 + smooth) = 4.681483.
  TempDir dir;
  testing::TinyModelSpec spec;
  testing::write_tiny_model(dir / "m", spec);
  testing::write_tiny_tokenizer(dir / "m", spec.vocab);
  add_to_config(dir / "m", R"("rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})");
  const std::string out = (dir / "r.gguf").string();
  const auto r = testing::run_quant("gguf " + (dir / "m").string() + " -t f16 -o " + out);
  ASSERT_EQ(r.rc, 0) << r.err;
  const File g = File::open(out);
  const TensorInfo& t = g.tensor("rope_freqs.weight");
  EXPECT_EQ(t.type, GgmlType::F32);
  const auto f = dequantize_tensor(g, "rope_freqs.weight");
  ASSERT_EQ(f.size(), 4u);
  EXPECT_EQ(f[0], 1.0f);
  EXPECT_EQ(f[1], 1.0f);
  EXPECT_EQ(f[2], 1.0f);
  EXPECT_NEAR(f[3], 4.681483f, 2e-5);
  EXPECT_EQ(g.find("llama.rope.scaling.type"), nullptr);
}

TEST(GgufArch, LinearRopeScalingKeysAndUnsupportedTypesRefused) {
  TempDir dir;
  testing::TinyModelSpec spec;
  testing::write_tiny_model(dir / "m", spec);
  testing::write_tiny_tokenizer(dir / "m", spec.vocab);
  const std::string cfg = read_text_file(dir / "m" / "config.json");
  add_to_config(dir / "m", R"("rope_scaling": {"rope_type": "linear", "factor": 2.0})");
  auto r = testing::run_quant("gguf " + (dir / "m").string() + " -t f16 -o " + (dir / "l.gguf").string());
  ASSERT_EQ(r.rc, 0) << r.err;
  const File g = File::open(dir / "l.gguf");
  EXPECT_EQ(g.find("llama.rope.scaling.type")->s, "linear");
  EXPECT_EQ(g.find("llama.rope.scaling.factor")->f, 2.0);
  EXPECT_THROW(g.tensor("rope_freqs.weight"), Error);
  write_file_atomic(dir / "m" / "config.json", cfg);
  // yarn: TextModel.set_gguf_parameters' keys.
  add_to_config(dir / "m", R"("rope_scaling": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32})");
  r = testing::run_quant("gguf " + (dir / "m").string() + " -t f16 -o " + (dir / "y.gguf").string());
  ASSERT_EQ(r.rc, 0) << r.err;
  const File y = File::open(dir / "y.gguf");
  EXPECT_EQ(y.find("llama.rope.scaling.type")->s, "yarn");
  EXPECT_EQ(y.find("llama.rope.scaling.factor")->f, 4.0);
  EXPECT_EQ(y.find("llama.rope.scaling.original_context_length")->u, 32u);
  // A yarn llama.cpp would run differently (it fixes beta_fast at 32) is refused, nothing written.
  write_file_atomic(dir / "m" / "config.json", cfg);
  add_to_config(dir / "m", R"("rope_scaling": {"rope_type": "yarn", "factor": 4.0, "beta_fast": 16})");
  r = testing::run_quant("gguf " + (dir / "m").string() + " -t f16 -o " + (dir / "y2.gguf").string());
  EXPECT_EQ(r.rc, 3) << r.err;
  EXPECT_NE(r.err.find("beta_fast 16"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(dir / "y2.gguf"));
  // dynamic NTK: refused when the config is read.
  write_file_atomic(dir / "m" / "config.json", cfg);
  add_to_config(dir / "m", R"("rope_scaling": {"rope_type": "dynamic", "factor": 2.0})");
  r = testing::run_quant("gguf " + (dir / "m").string() + " -t f16 -o " + (dir / "d.gguf").string());
  EXPECT_NE(r.rc, 0);
  EXPECT_NE(r.err.find("rope_scaling type 'dynamic' is not supported"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(dir / "d.gguf"));
}

// Gemma 3 as convert_hf_to_gguf.py's Gemma3Model writes it and llama.cpp's gemma3 reads it.
TEST(GgufArch, Gemma3KeysNormsAndRules) {
  TempDir dir;
  testing::TinyModelSpec spec;
  spec.model_type = "gemma3_text";
  spec.layers = 4;
  spec.head_dim = 16;
  spec.query_pre_attn_scalar = 16;
  testing::write_tiny_model(dir / "m", spec);
  testing::write_tiny_tokenizer(dir / "m", spec.vocab);
  const std::string cfg = read_text_file(dir / "m" / "config.json");
  auto r = testing::run_quant("gguf " + (dir / "m").string() + " -t f32 -o " + (dir / "g.gguf").string());
  ASSERT_EQ(r.rc, 0) << r.err;
  const File g = File::open(dir / "g.gguf");
  EXPECT_EQ(g.find("general.architecture")->s, "gemma3");
  EXPECT_EQ(g.find("gemma3.attention.sliding_window")->u, 6u);
  EXPECT_EQ(g.find("gemma3.attention.sliding_window_pattern")->u, 2u);  // layers 0, 2 slide
  EXPECT_EQ(g.find("gemma3.rope.freq_base_swa")->f, 100.0);
  EXPECT_EQ(g.find("gemma3.attention.key_length")->u, 16u);
  const Model m = Model::open(dir / "m");
  for (const char* n : {"blk.1.attn_q_norm.weight", "blk.1.post_ffw_norm.weight"}) {
    const std::vector<float> x = dequantize_tensor(g, n);
    const std::string hf = std::string(n).find("q_norm") != std::string::npos ? "model.layers.1.self_attn.q_norm.weight"
                                                                                : "model.layers.1.post_feedforward_layernorm.weight";
    const Vec w = load_vector(m, hf);
    ASSERT_EQ(x.size(), static_cast<std::size_t>(w.size()));
    for (Eigen::Index i = 0; i < w.size(); ++i) EXPECT_FLOAT_EQ(x[static_cast<std::size_t>(i)], w(i) + 1.0f) << n;
  }
  // llama.cpp scales q by 1/sqrt(head_dim): a query_pre_attn_scalar that disagrees is refused.
  nlohmann::json j = nlohmann::json::parse(cfg);
  j["query_pre_attn_scalar"] = 20;
  write_file_atomic(dir / "m" / "config.json", j.dump());
  r = testing::run_quant("gguf " + (dir / "m").string() + " -t f32 -o " + (dir / "s.gguf").string());
  EXPECT_EQ(r.rc, 3) << r.err;
  EXPECT_NE(r.err.find("llama.cpp's gemma3 uses"), std::string::npos) << r.err;
  // Sliding layers in no period are refused.
  write_file_atomic(dir / "m" / "config.json", cfg);
  add_to_config(dir / "m", R"("layer_types": ["sliding_attention", "full_attention", "full_attention", "sliding_attention"])");
  r = testing::run_quant("gguf " + (dir / "m").string() + " -t f32 -o " + (dir / "p.gguf").string());
  EXPECT_EQ(r.rc, 3) << r.err;
  EXPECT_NE(r.err.find("no period"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(dir / "s.gguf"));
  EXPECT_FALSE(fs::exists(dir / "p.gguf"));
}

// Phi-3 128k: longrope factors as tensors, the attention factor and partial RoPE dims as keys
// (convert_hf_to_gguf.py Phi3MiniModel).
TEST(GgufArch, Phi3LongropeFactorsAndPartialRotary) {
  TempDir dir;
  testing::TinyModelSpec spec;
  spec.model_type = "phi3";
  spec.hidden = 64;
  spec.heads = 4;
  spec.tied = false;
  spec.ctx = 256;
  spec.extra_config = {{"partial_rotary_factor", 0.5}, {"original_max_position_embeddings", 64},
                       {"rope_scaling", {{"type", "longrope"}, {"long_factor", {1.5, 2.0, 3.0, 7.0}}, {"short_factor", {1.1, 1.2, 1.5, 2.0}}}}};
  testing::write_tiny_model(dir / "m", spec);
  testing::write_tiny_tokenizer(dir / "m", spec.vocab);
  const auto r = testing::run_quant("gguf " + (dir / "m").string() + " -t f32 -o " + (dir / "p.gguf").string());
  ASSERT_EQ(r.rc, 0) << r.err;
  const File g = File::open(dir / "p.gguf");
  EXPECT_EQ(g.find("phi3.rope.dimension_count")->u, 8u);  // int(0.5 × 64) / 4
  EXPECT_EQ(g.find("phi3.rope.scaling.original_context_length")->u, 64u);
  EXPECT_NEAR(g.find("phi3.rope.scaling.attn_factor")->f, std::sqrt(1 + std::log(4.0) / std::log(64.0)), 1e-6);
  EXPECT_EQ(dequantize_tensor(g, "rope_factors_long.weight"), (std::vector<float>{1.5f, 2.0f, 3.0f, 7.0f}));
  EXPECT_EQ(dequantize_tensor(g, "rope_factors_short.weight"), (std::vector<float>{1.1f, 1.2f, 1.5f, 2.0f}));
}

}  // namespace
}  // namespace quant::gguf
