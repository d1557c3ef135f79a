// The families beyond Llama through every command: quantizers beat RTN on the KL to the float
// model (random-weight fixtures have no meaningful perplexity ordering, their KL does), outputs
// pass `quant check` for the family's loaders, inspect counts every parameter once, and GGUF
// export writes or refuses by llama.cpp's rules.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "cli_helpers.h"
#include "fixtures.h"
#include "quant/core/error.h"
#include "quant/formats/ggml_quants.h"
#include "quant/formats/gguf_export.h"
#include "quant/io/gguf.h"
#include "quant/io/io.h"
#include "quant/io/safetensors.h"

namespace quant {
namespace {

using nlohmann::json;
using testing::run_quant;
using testing::TempDir;

testing::TinyModelSpec family_spec(const std::string& type) {
  testing::TinyModelSpec s;
  s.model_type = type;
  s.hidden = 64;
  s.intermediate = 128;
  s.heads = 4;
  s.kv_heads = 2;
  s.head_dim = 16;
  s.layers = 2;
  s.vocab = 96;
  s.seed = 7;
  s.weight_scale = 0.3f;
  s.tied = type != "qwen3" && type != "phi3";
  return s;
}

struct FamilyCli : ::testing::TestWithParam<std::string> {
  TempDir dir;
  std::string model, calib, text;
  void SetUp() override {
    testing::write_tiny_model(dir / "m", family_spec(GetParam()));
    model = (dir / "m").string();
    std::string c, e;
    std::uint32_t x = 99;
    for (int i = 0; i < 4096; ++i) {
      x = x * 1664525u + 1013904223u;
      (i < 2048 ? c : e) += std::to_string((x >> 9) % 96) + " ";
    }
    write_file_atomic(dir / "calib.txt", c);
    write_file_atomic(dir / "eval.txt", e);
    calib = (dir / "calib.txt").string();
    text = (dir / "eval.txt").string();
  }
  double kl(const std::string& out) {
    const auto r = run_quant("eval " + out + " --tokens " + text + " --ctx 64 --base " + model + " --json");
    EXPECT_EQ(r.rc, 0) << r.err;
    return r.rc == 0 ? json::parse(r.out)["kl_mean"].get<double>() : 1e9;
  }
  std::string quantize(const std::string& cmd, const std::string& name, const std::string& args) {
    const std::string out = (dir / name).string();
    const auto r = run_quant(cmd + " " + model + " " + args + " -o " + out);
    EXPECT_EQ(r.rc, 0) << cmd << ": " << r.err;
    const auto c = run_quant("check " + out);
    EXPECT_EQ(c.rc, 0) << name << ": " << c.out << c.err;
    return out;
  }
};

TEST_P(FamilyCli, QuantizersBeatRtnAndOutputsPassCheck) {
  const std::string cal = "--calib-tokens " + calib + " --nsamples 16 --seqlen 64";
  const double rtn = kl(quantize("rtn", "rtn", "-b 4 -g 32"));
  const double gptq = kl(quantize("gptq", "gptq", "-b 4 -g 32 " + cal));
  const double awq = kl(quantize("awq", "awq", "-b 4 -g 32 " + cal));
  const double rtn3 = kl(quantize("rtn", "rtn3", "-b 3 -g -1 --format dense"));
  const double km3 = kl(quantize("kmeans", "km3", "-b 3 --format dense"));
  std::cerr << GetParam() << ": KL rtn " << rtn << " gptq " << gptq << " awq " << awq << " | 3-bit rtn " << rtn3
            << " kmeans " << km3 << "\n";
  EXPECT_GT(rtn, 0.0);
  EXPECT_LT(gptq, rtn);
  EXPECT_LT(awq, rtn);
  EXPECT_LT(km3, rtn3);
}

TEST_P(FamilyCli, MixedPrecisionAndInspectCount) {
  const std::string out = (dir / "bpw").string();
  const auto r = run_quant("gptq " + model + " --target-bpw 3.5 --calib-tokens " + calib + " --nsamples 8 --seqlen 64 -g 32 -o " + out + " --json");
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_EQ(run_quant("check " + out + " --for vllm").rc, 0);  // per-module bits: vLLM's `dynamic`, not transformers
  const auto i = run_quant("inspect " + model + " --json");
  ASSERT_EQ(i.rc, 0) << i.err;
  // By hand (V 96, H 64, F 128, q 4×16, kv 2×16): embed 6144, final norm 64; per layer q 4096,
  // k 2048, v 2048, o 4096, MLP 24576, norms 2×64 (+2×16 q/k norms; Gemma: 4×64).
  const std::int64_t per_layer = 4096 + 2048 + 2048 + 4096 + 24576 +
                                 (GetParam() == "qwen3" ? 128 + 32 : GetParam() == "phi3" ? 128 : GetParam() == "gemma2" ? 256 : 256 + 32);
  const bool untied = GetParam() == "qwen3" || GetParam() == "phi3";
  const std::int64_t expected = 6144 + 64 + 2 * per_layer + (untied ? 6144 : 0);
  EXPECT_EQ(json::parse(i.out)["n_params"].get<std::int64_t>(), expected);
}

INSTANTIATE_TEST_SUITE_P(Families, FamilyCli, ::testing::Values("qwen3", "gemma2", "gemma3_text", "phi3"));

TEST(FamilyGguf, Qwen3NamesAndGemmaRefusals) {
  TempDir dir;
  auto q3 = family_spec("qwen3");
  q3.head_dim = 8;  // 4 × 8 ≠ hidden 64: key_length must be written
  testing::write_tiny_model(dir / "q3", q3);
  testing::write_tiny_tokenizer(dir / "q3", 96);
  const auto r = run_quant("gguf " + (dir / "q3").string() + " -t f32 -o " + (dir / "q3.gguf").string());
  ASSERT_EQ(r.rc, 0) << r.err;
  const gguf::File g = gguf::File::open(dir / "q3.gguf");
  ASSERT_NE(g.find("general.architecture"), nullptr);
  EXPECT_EQ(g.find("general.architecture")->s, "qwen3");
  ASSERT_NE(g.find("qwen3.attention.key_length"), nullptr);
  EXPECT_EQ(g.find("qwen3.attention.key_length")->u, 8u);
  EXPECT_EQ(g.tensor("blk.1.attn_q_norm.weight").ne, (std::vector<std::int64_t>{8}));
  EXPECT_EQ(g.tensor("blk.1.attn_k_norm.weight").ne, (std::vector<std::int64_t>{8}));

  // gemma2 with 2 layers: llama.cpp's graph aborts for it, so nothing is written.
  testing::write_tiny_model(dir / "g2", family_spec("gemma2"));
  testing::write_tiny_tokenizer(dir / "g2", 96);
  const auto g2 = run_quant("gguf " + (dir / "g2").string() + " -t q8_0 -o " + (dir / "g2.gguf").string());
  EXPECT_NE(g2.rc, 0);
  EXPECT_NE(g2.err.find("26, 42 or 46 layers"), std::string::npos) << g2.err;
  EXPECT_FALSE(fs::exists(dir / "g2.gguf"));
  // gemma3 whose query_pre_attn_scalar (24) is not head_dim: llama.cpp would scale q differently.
  testing::write_tiny_model(dir / "g3", family_spec("gemma3_text"));
  testing::write_tiny_tokenizer(dir / "g3", 96);
  const auto g3 = run_quant("gguf " + (dir / "g3").string() + " -t q8_0 -o " + (dir / "g3.gguf").string());
  EXPECT_NE(g3.rc, 0);
  EXPECT_NE(g3.err.find("but llama.cpp's gemma3 uses 0.25"), std::string::npos) << g3.err;
  EXPECT_FALSE(fs::exists(dir / "g3.gguf"));
}

TEST(FamilyGguf, Gemma2NormsStoredPlusOneAndRulesChecked) {
  TempDir dir;
  auto spec = family_spec("gemma2");
  spec.layers = 26;
  spec.hidden = 32;
  spec.intermediate = 32;
  spec.query_pre_attn_scalar = 16;  // = head_dim, as llama.cpp scales 26-layer gemma2
  testing::write_tiny_model(dir / "g", spec);
  testing::write_tiny_tokenizer(dir / "g", 96);
  const auto r = run_quant("gguf " + (dir / "g").string() + " -t f32 -o " + (dir / "g.gguf").string());
  ASSERT_EQ(r.rc, 0) << r.err;
  const gguf::File g = gguf::File::open(dir / "g.gguf");
  for (const char* key : {"general.architecture", "gemma2.attn_logit_softcapping", "gemma2.final_logit_softcapping",
                          "gemma2.attention.sliding_window"}) {
    ASSERT_NE(g.find(key), nullptr) << key;
  }
  EXPECT_EQ(g.find("general.architecture")->s, "gemma2");
  EXPECT_FLOAT_EQ(g.find("gemma2.attn_logit_softcapping")->f, 5.0f);
  EXPECT_FLOAT_EQ(g.find("gemma2.final_logit_softcapping")->f, 3.0f);
  EXPECT_EQ(g.find("gemma2.attention.sliding_window")->u, 6u);
  const TensorStore src = TensorStore::open(dir / "g");
  const auto hf = src.read_f32("model.layers.3.post_feedforward_layernorm.weight");
  const auto gg = gguf::dequantize_tensor(g, "blk.3.post_ffw_norm.weight");
  ASSERT_EQ(hf.size(), gg.size());
  for (std::size_t i = 0; i < hf.size(); ++i) EXPECT_FLOAT_EQ(gg[i], hf[i] + 1.0f);
  EXPECT_THROW(g.tensor("output.weight"), InputError);  // llama.cpp's gemma2 reads the head from token_embd

  // query_pre_attn_scalar that llama.cpp would not honour: refused before writing.
  spec.query_pre_attn_scalar = 24;
  testing::write_tiny_model(dir / "bad", spec);
  testing::write_tiny_tokenizer(dir / "bad", 96);
  const auto b = run_quant("gguf " + (dir / "bad").string() + " -t f32 -o " + (dir / "bad.gguf").string());
  EXPECT_NE(b.rc, 0);
  EXPECT_NE(b.err.find("query_pre_attn_scalar"), std::string::npos) << b.err;
  EXPECT_FALSE(fs::exists(dir / "bad.gguf"));
}

}  // namespace
}  // namespace quant

namespace quant {
namespace {

// Resume is family-agnostic (the journal holds hidden states), checked on the family with the
// most state per layer: gemma3_text with AWQ, killed after its first layer, resumes to the same bytes.
TEST(FamilyResume, Gemma3AwqKilledRunResumesToIdenticalOutput) {
  TempDir dir;
  auto spec = family_spec("gemma3_text");
  spec.layers = 3;
  testing::write_tiny_model(dir / "m", spec);
  std::string ids;
  for (int i = 0; i < 2000; ++i) ids += std::to_string((i * 29 + i / 5) % 96) + " ";
  write_file_atomic(dir / "ids.txt", ids);
  const std::string args = "awq " + (dir / "m").string() + " -b 4 -g 32 --calib-tokens " + (dir / "ids.txt").string() +
                           " --nsamples 8 --seqlen 32 -o ";
  ASSERT_EQ(run_quant(args + (dir / "full").string()).rc, 0);
  setenv("QUANT_FAULT_KILL_AFTER_LAYER", "0", 1);
  const auto killed = run_quant(args + (dir / "res").string());
  unsetenv("QUANT_FAULT_KILL_AFTER_LAYER");
  EXPECT_NE(killed.rc, 0);
  ASSERT_TRUE(fs::exists(dir / "res.resume" / "state.json"));
  const auto r = run_quant(args + (dir / "res").string());
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(r.err.find("resuming"), std::string::npos) << r.err;
  for (const auto& e : fs::directory_iterator(dir / "full")) {
    const std::string name = e.path().filename().string();
    if (name == "quant_summary.json") continue;
    EXPECT_EQ(read_text_file(e.path()), read_text_file(dir / "res" / name)) << name;
  }
}

}  // namespace
}  // namespace quant

namespace quant {
namespace {

// Phi-3's fused tensors stay fused in every output: GPTQ packs qkv_proj/gate_up_proj whole, and
// GGUF writes llama.cpp's attn_qkv and ffn_up ([gate; up]) with output.weight even when tied.
TEST(FamilyPhi3, FusedTensorsStayFused) {
  TempDir dir;
  auto spec = family_spec("phi3");
  spec.tied = true;
  testing::write_tiny_model(dir / "fused", spec);
  testing::write_tiny_tokenizer(dir / "fused", 96);
  std::string ids;
  for (int i = 0; i < 2000; ++i) ids += std::to_string((i * 29 + i / 5) % 96) + " ";
  write_file_atomic(dir / "ids.txt", ids);
  auto r = run_quant("gptq " + (dir / "fused").string() + " -b 4 -g 32 --calib-tokens " + (dir / "ids.txt").string() +
                     " --nsamples 8 --seqlen 32 -o " + (dir / "q").string());
  ASSERT_EQ(r.rc, 0) << r.err;
  const TensorStore q = TensorStore::open(dir / "q");
  EXPECT_TRUE(q.contains("model.layers.0.self_attn.qkv_proj.qweight"));
  EXPECT_EQ(q.get("model.layers.0.self_attn.qkv_proj.scales").shape, (std::vector<std::int64_t>{2, 64 + 2 * 32}));
  EXPECT_TRUE(q.contains("model.layers.1.mlp.gate_up_proj.qweight"));
  EXPECT_FALSE(q.contains("model.layers.0.self_attn.q_proj.qweight"));
  // A rule on one part of a fused tensor is a rule on the tensor: the parts cannot differ.
  r = run_quant("rtn " + (dir / "fused").string() + " --rule 'self_attn\\.qkv_proj=bits:8' -o " + (dir / "r").string() + " --json");
  ASSERT_EQ(r.rc, 0) << r.err;
  int eight = 0;
  const auto rep = nlohmann::json::parse(r.out);
  for (const auto& t : rep["tensors"]) eight += t.value("bits", 0) == 8;
  EXPECT_EQ(eight, 6) << r.out;  // q, k, v of both layers

  r = run_quant("gguf " + (dir / "fused").string() + " -t q8_0 -o " + (dir / "f.gguf").string());
  ASSERT_EQ(r.rc, 0) << r.err;
  const gguf::File g = gguf::File::open(dir / "f.gguf");
  EXPECT_EQ(g.find("general.architecture")->s, "phi3");
  EXPECT_EQ(g.tensor("blk.0.attn_qkv.weight").ne, (std::vector<std::int64_t>{64, 128}));
  EXPECT_EQ(g.tensor("blk.0.ffn_up.weight").ne, (std::vector<std::int64_t>{64, 256}));
  EXPECT_THROW(g.tensor("blk.0.ffn_gate.weight"), InputError);
  EXPECT_EQ(g.tensor("output.weight").ne, (std::vector<std::int64_t>{64, 96}));
  ASSERT_NE(g.find("phi3.attention.sliding_window"), nullptr);
  EXPECT_EQ(g.find("phi3.attention.sliding_window")->u, 6u);

  // llama.cpp keys Phi-3 vocabulary fixes on the name: a "phi3" directory without those tokens
  // would not load, so it is refused.
  fs::rename(dir / "fused", dir / "phi3");
  r = run_quant("gguf " + (dir / "phi3").string() + " -t q8_0 -o " + (dir / "p.gguf").string());
  EXPECT_NE(r.rc, 0);
  EXPECT_NE(r.err.find("Phi-3's"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(dir / "p.gguf"));
}

}  // namespace
}  // namespace quant
