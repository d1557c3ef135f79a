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
  add_to_config(dir / "m", R"("rope_scaling": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64})");
  r = testing::run_quant("gguf " + (dir / "m").string() + " -t f16 -o " + (dir / "y.gguf").string());
  EXPECT_EQ(r.rc, 3) << r.err;
  EXPECT_NE(r.err.find("rope_scaling type 'yarn' cannot be exported"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(dir / "y.gguf"));
}

}  // namespace
}  // namespace quant::gguf
