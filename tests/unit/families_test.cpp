// The model families beyond Llama (qwen3, gemma2, gemma3_text, phi3, mistral's and qwen2's
// sliding windows, and the RoPE scalings llama3, yarn, longrope with partial rotary) against
// golden logits from an independent torch reference written from transformers' modeling code
// (tools/reference/hf_reference.py; it reads the fixtures this test writes when
// QUANT_FAMILY_FIXTURES_OUT names a directory). The suite itself never needs torch.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <sstream>

#include "cli_helpers.h"
#include "fixtures.h"
#include "quant/core/json.h"
#include "quant/io/io.h"
#include "quant/model/forward.h"
#include "quant/model/model.h"

namespace quant {
namespace {

using testing::TempDir;
using testing::TinyModelSpec;

struct Family {
  std::string name;  // golden file stem
  TinyModelSpec spec;
};

std::vector<Family> families() {
  std::vector<Family> out;
  TinyModelSpec base;
  base.hidden = 32;
  base.heads = 4;
  base.kv_heads = 2;
  base.intermediate = 64;
  base.layers = 2;
  base.vocab = 96;
  base.seed = 21;
  base.weight_scale = 0.3f;
  {
    TinyModelSpec s = base;
    s.model_type = "qwen3";
    s.head_dim = 16;  // differs from hidden / heads = 8
    s.tied = false;
    out.push_back({"qwen3", s});
  }
  {
    TinyModelSpec s = base;
    s.model_type = "gemma2";
    s.head_dim = 16;
    out.push_back({"gemma2", s});
  }
  {
    TinyModelSpec s = base;
    s.model_type = "gemma3_text";
    s.head_dim = 16;
    s.layers = 3;  // sliding, full, sliding (pattern 2)
    s.extra_config["rope_scaling"] = {{"rope_type", "linear"}, {"factor", 2.0}};
    out.push_back({"gemma3_text", s});
  }
  {
    TinyModelSpec s = base;
    s.model_type = "phi3";
    s.tied = false;
    s.sliding_window = 7;
    out.push_back({"phi3", s});
  }
  {
    TinyModelSpec s = base;
    s.model_type = "llama";
    s.tied = false;
    s.extra_config["rope_scaling"] = {{"rope_type", "llama3"}, {"factor", 8.0}, {"low_freq_factor", 1.0},
                                      {"high_freq_factor", 4.0}, {"original_max_position_embeddings", 64}};
    out.push_back({"llama_rope_llama3", s});
  }
  {
    // YaRN (ramp over frequencies 0..3 of 8) with max_position_embeddings = factor × original,
    // and Qwen2's sliding window on the layers from max_window_layers on.
    TinyModelSpec s = base;
    s.model_type = "qwen2";
    s.head_dim = 16;
    s.tied = false;
    s.ctx = 256;
    s.extra_config["rope_scaling"] = {{"rope_type", "yarn"}, {"factor", 4.0}, {"original_max_position_embeddings", 64}};
    s.extra_config["use_sliding_window"] = true;
    s.extra_config["sliding_window"] = 5;
    s.extra_config["max_window_layers"] = 1;
    out.push_back({"qwen2_rope_yarn", s});
  }
  {
    // Phi-3 128k style: longrope (24 tokens > original 16: the long factors), attention factor
    // sqrt(1 + ln 4 / ln 16), and partial RoPE (half of each 8-dim head).
    TinyModelSpec s = base;
    s.model_type = "phi3";
    s.tied = false;
    s.ctx = 64;
    s.extra_config["sliding_window"] = nullptr;
    s.extra_config["partial_rotary_factor"] = 0.5;
    s.extra_config["original_max_position_embeddings"] = 16;
    s.extra_config["rope_scaling"] = {{"type", "longrope"}, {"long_factor", {1.5, 7.0}}, {"short_factor", {1.1, 2.0}}};
    out.push_back({"phi3_longrope", s});
  }
  {
    TinyModelSpec s = base;
    s.model_type = "mistral";
    s.tied = false;
    s.extra_config["sliding_window"] = 6;  // every layer (MistralModel)
    out.push_back({"mistral", s});
  }
  // MoE: 4 experts, top 2 (mixtral: renormalized, w1/w3/w2, a 6-token window); qwen2_moe with
  // its sigmoid-gated shared expert and un-normalized top-k; qwen3_moe with q/k norms and
  // renormalized top-k.
  {
    TinyModelSpec s = base;
    s.model_type = "mixtral";
    s.tied = false;
    s.extra_config["sliding_window"] = 6;
    out.push_back({"mixtral", s});
  }
  {
    TinyModelSpec s = base;
    s.model_type = "qwen2_moe";
    s.tied = false;
    s.top_k = 2;
    out.push_back({"qwen2_moe", s});
  }
  {
    TinyModelSpec s = base;
    s.model_type = "qwen3_moe";
    s.head_dim = 16;
    s.tied = false;
    s.experts = 5;
    s.top_k = 3;
    out.push_back({"qwen3_moe", s});
  }
  return out;
}

std::vector<std::int32_t> test_tokens(int vocab) {
  std::vector<std::int32_t> t;
  std::uint32_t x = 12345;
  for (int i = 0; i < 24; ++i) {
    x = x * 1664525u + 1013904223u;
    t.push_back(static_cast<std::int32_t>((x >> 8) % static_cast<std::uint32_t>(vocab)));
  }
  return t;
}

Mat our_logits(const Model& model, const std::vector<std::int32_t>& tokens) {
  const HeadWeights head = load_head(model);
  const RopeTable rope = build_rope(model.config(), static_cast<std::int64_t>(tokens.size()));
  Mat h = embed_tokens(head, tokens);
  for (const auto& layer : model.layout().layers) decoder_layer_forward(model.config(), load_layer(model, layer.index), rope, h);
  return final_logits(model.config(), head, h);
}

void PrintTo(const Family& f, std::ostream* os) { *os << f.name; }

class Families : public ::testing::TestWithParam<Family> {};

TEST_P(Families, LogitsAndPerplexityMatchTorchReference) {
  const Family& f = GetParam();
  TempDir dir;
  const fs::path model_dir = dir / f.name;
  testing::write_tiny_model(model_dir, f.spec);
  const auto tokens = test_tokens(f.spec.vocab);
  if (const char* out = std::getenv("QUANT_FAMILY_FIXTURES_OUT")) {
    const fs::path dst = fs::path(out) / f.name;
    fs::create_directories(dst);
    fs::copy(model_dir, dst, fs::copy_options::overwrite_existing | fs::copy_options::recursive);
    write_file_atomic(dst / "tokens.json", nlohmann::json(tokens).dump());
  }
  const fs::path golden_path = fs::path(QUANT_GOLDEN_DIR) / "families" / (f.name + ".json");
  ASSERT_TRUE(fs::exists(golden_path)) << golden_path << " is missing: regenerate it as tools/reference/hf_reference.py says";
  const nlohmann::json golden = read_json_file(golden_path);
  ASSERT_EQ(golden["tokens"].get<std::vector<std::int32_t>>(), tokens) << "fixture tokens changed: regenerate the goldens";

  const Model model = Model::open(model_dir);
  const Mat logits = our_logits(model, tokens);
  const auto& ref = golden["logits"];
  ASSERT_EQ(static_cast<Eigen::Index>(ref.size()), logits.rows());
  double max_diff = 0, ref_range = 0;
  for (Eigen::Index t = 0; t < logits.rows(); ++t) {
    ASSERT_EQ(static_cast<Eigen::Index>(ref[t].size()), logits.cols());
    for (Eigen::Index v = 0; v < logits.cols(); ++v) {
      const double r = ref[t][v].get<double>();
      max_diff = std::max(max_diff, std::abs(r - logits(t, v)));
      ref_range = std::max(ref_range, std::abs(r));
    }
  }
  std::cerr << f.name << ": max |logit diff| " << max_diff << " (logits up to " << ref_range << ")\n";
  EXPECT_LE(max_diff, 1e-3) << f.name << ": max |logit − torch reference| (logits up to " << ref_range << ")";
  EXPECT_GT(ref_range, 0.5) << "degenerate fixture: logits too small to tell families apart";

  // quant eval on the same tokens, one window: perplexity within 0.5 % of the reference's.
  std::ostringstream ids;
  for (auto t : tokens) ids << t << ' ';
  write_file_atomic(dir / "tokens.txt", ids.str());
  const auto r = testing::run_quant("eval '" + model_dir.string() + "' --tokens '" + (dir / "tokens.txt").string() +
                                    "' --ctx " + std::to_string(tokens.size()) + " --json");
  ASSERT_EQ(r.rc, 0) << r.err;
  const double ppl = nlohmann::json::parse(r.out)["ppl"].get<double>();
  const double ref_ppl = golden["ppl"].get<double>();
  std::cerr << f.name << ": quant eval ppl " << ppl << ", torch " << ref_ppl << "\n";
  EXPECT_NEAR(ppl / ref_ppl, 1.0, 0.005) << f.name << ": quant eval " << ppl << " vs torch " << ref_ppl;
}

INSTANTIATE_TEST_SUITE_P(Reference, Families, ::testing::ValuesIn(families()),
                         [](const auto& info) { return info.param.name; });

// A family that differs from its reference in one detail must fail: the Gemma norm convention
// read as Llama's gives different logits (guards against goldens that cannot tell).
TEST(FamiliesGuard, GemmaNormConventionMatters) {
  TempDir dir;
  Family g = families()[1];
  testing::write_tiny_model(dir / "m", g.spec);
  const Model model = Model::open(dir / "m");
  const auto tokens = test_tokens(g.spec.vocab);
  const Mat right = our_logits(model, tokens);
  ModelConfig c = model.config();
  c.norm_offset = 0.0f;
  const HeadWeights head = load_head(model);
  const RopeTable rope = build_rope(c, static_cast<std::int64_t>(tokens.size()));
  Mat h = embed_tokens(head, tokens);
  for (const auto& layer : model.layout().layers) decoder_layer_forward(c, load_layer(model, layer.index), rope, h);
  EXPECT_GT((final_logits(c, head, h) - right).cwiseAbs().maxCoeff(), 0.01f);
}

}  // namespace
}  // namespace quant
