#include "quant/formats/codec.h"
#include "quant/model/model.h"

#include <gtest/gtest.h>

#include <fstream>

#include "fixtures.h"
#include "quant/core/error.h"

namespace quant {
namespace {

using testing::TempDir;

TEST(Model, SharedModelsHaveTheDocumentedParameterCounts) {
  QUANT_REQUIRE_SHARED();
  const auto shared = testing::shared_dir();
  const Model a = Model::open(shared / "models/stories260K");
  EXPECT_EQ(a.n_params(), 260032);
  EXPECT_EQ(a.config().head_dim, 8);
  EXPECT_EQ(a.layout().layers.size(), 5u);
  EXPECT_EQ(a.layout().layers[0].linear(LinearKind::down).in, 172);
  const Model b = Model::open(shared / "models/wiki-llama-5m");
  EXPECT_EQ(b.n_params(), 5246208);
  EXPECT_EQ(b.layout().layers[2].linear(LinearKind::k).out, 128);
  EXPECT_TRUE(b.unused_tensors(formats::all_linear_suffixes()).empty());
}

TEST(Model, GeneratedModelOpensAndCountsParameters) {
  TempDir dir;
  testing::TinyModelSpec spec;
  spec.tied = false;
  spec.attention_bias = true;
  testing::write_tiny_model(dir.path(), spec);
  const Model m = Model::open(dir.path());
  // embed 96*32 + norm 32 + lm_head 96*32 + 2 layers × (q 32*32+32, k 16*32+16, v 16*32+16,
  // o 32*32+32, gate/up/down 64*32 each, two norms 64)
  const std::int64_t per_layer = (1024 + 32) + 2 * (512 + 16) + (1024 + 32) + 3 * 2048 + 64;
  EXPECT_EQ(m.n_params(), 96 * 32 + 32 + 96 * 32 + 2 * per_layer);
}

void write_config(const fs::path& dir, const std::string& json) {
  std::ofstream(dir / "config.json") << json;
}

TEST(Model, UnsupportedArchitectureListsSupportedOnes) {
  TempDir dir;
  testing::write_tiny_model(dir.path(), {});
  write_config(dir.path(), R"({"model_type":"gpt2","hidden_size":32})");
  try {
    Model::open(dir.path());
    FAIL();
  } catch (const InputError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("unsupported model_type 'gpt2'"), std::string::npos) << msg;
    EXPECT_NE(msg.find("llama, mistral, qwen2"), std::string::npos) << msg;
  }
}

TEST(Model, ConfigThatDoesNotMatchTensorsNamesTheTensor) {
  TempDir dir;
  testing::write_tiny_model(dir.path(), {});
  write_config(dir.path(), R"({"model_type":"llama","hidden_size":32,"intermediate_size":48,
    "num_hidden_layers":2,"num_attention_heads":4,"num_key_value_heads":2,"vocab_size":96,
    "tie_word_embeddings":true})");
  try {
    Model::open(dir.path());
    FAIL();
  } catch (const InputError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("mlp.gate_proj.weight' has shape 64x32 but config.json implies 48x32"), std::string::npos) << msg;
  }
}

TEST(Model, MissingLayerTensorIsNamed) {
  TempDir dir;
  testing::write_tiny_model(dir.path(), {});
  write_config(dir.path(), R"({"model_type":"llama","hidden_size":32,"intermediate_size":64,
    "num_hidden_layers":3,"num_attention_heads":4,"num_key_value_heads":2,"vocab_size":96,
    "tie_word_embeddings":true})");
  try {
    Model::open(dir.path());
    FAIL();
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("model.layers.2."), std::string::npos) << e.what();
  }
}

TEST(Config, RejectsBadValues) {
  auto parse = [](const std::string& s) {
    return ModelConfig::from_json(nlohmann::json::parse(s), "config.json");
  };
  const std::string base = R"("model_type":"llama","hidden_size":64,"intermediate_size":128,
    "num_hidden_layers":2,"num_attention_heads":8,"vocab_size":100)";
  EXPECT_NO_THROW(parse("{" + base + "}"));
  EXPECT_EQ(parse("{" + base + "}").n_kv_heads, 8);
  EXPECT_THROW(parse("{" + base + R"(,"num_key_value_heads":3})"), InputError);
  EXPECT_THROW(parse(R"({"model_type":"llama","hidden_size":"64"})"), InputError);
  EXPECT_THROW(parse("{" + base + R"(,"hidden_act":"gelu"})"), InputError);
  auto q = parse(R"({"model_type":"qwen2","hidden_size":64,"intermediate_size":128,
    "num_hidden_layers":2,"num_attention_heads":8,"vocab_size":100})");
  EXPECT_TRUE(q.qkv_bias);
  EXPECT_FALSE(q.o_bias);
  auto r = parse("{" + base + R"(,"rope_scaling":{"rope_type":"llama3","factor":8.0,
    "low_freq_factor":1.0,"high_freq_factor":4.0,"original_max_position_embeddings":8192}})");
  EXPECT_EQ(r.rope_scaling.type, "llama3");
  EXPECT_EQ(r.rope_scaling.factor, 8.0);
}

}  // namespace
}  // namespace quant
