// GGUF as eval input (issue 24 item 4): a GGUF file opens as a model whose weights equal the
// `--dense-out` twin written by the same export, tensor by tensor, for every family quant
// exports; its perplexity equals the twin's; the tokenizer rebuilt from tokenizer.ggml.* encodes
// as the original does; commands that cannot take a GGUF refuse it before any work.
#include <gtest/gtest.h>

#include <cmath>

#include <nlohmann/json.hpp>

#include "cli_helpers.h"
#include "fixtures.h"
#include "quant/core/error.h"
#include "quant/formats/codec.h"
#include "quant/io/gguf.h"
#include "quant/io/io.h"
#include "quant/model/tokenizer.h"
#include "quant/model/weights.h"
#include "quant/pipeline/eval.h"

namespace quant {
namespace {

using nlohmann::json;
using testing::run_quant;
using testing::TempDir;

testing::TinyModelSpec spec_for(const std::string& type) {
  testing::TinyModelSpec s;
  s.model_type = type;
  s.hidden = 64;
  s.intermediate = 128;
  s.heads = 4;
  s.kv_heads = 2;
  s.layers = 2;
  s.vocab = 96;
  s.ctx = 64;
  s.seed = 11;
  s.weight_scale = 0.3f;
  s.tied = type == "llama" || type == "gemma2";
  if (type == "llama3") {  // Llama 3.1 RoPE scaling → the GGUF's rope_freqs.weight, all three bands in use
    s.model_type = "llama";
    s.extra_config = {{"rope_scaling", {{"rope_type", "llama3"}, {"factor", 8.0}, {"low_freq_factor", 1.0}, {"high_freq_factor", 4.0},
                                        {"original_max_position_embeddings", 64}}}};
  }
  if (type == "yarn") {  // rope.scaling.type yarn with its original context
    s.model_type = "qwen2";
    s.extra_config = {{"rope_scaling", {{"rope_type", "yarn"}, {"factor", 4.0}, {"original_max_position_embeddings", 16}}}};
  }
  if (type == "phi3_longrope") {  // rope_factors_long/short, rope.scaling.attn_factor, RoPE over half of each head
    s.model_type = "phi3";
    s.extra_config = {{"partial_rotary_factor", 0.5}, {"original_max_position_embeddings", 16},
                      {"rope_scaling", {{"type", "longrope"}, {"long_factor", {1.5, 2.0, 3.0, 7.0}}, {"short_factor", {1.1, 1.2, 1.5, 2.0}}}}};
  }
  if (type == "gemma3") {  // sliding layers with period 2 (a sliding_window_pattern key), local RoPE base
    s.model_type = "gemma3_text";
    s.layers = 4;
    s.head_dim = 16;
    s.query_pre_attn_scalar = 16;
    s.attn_softcap = 0;
    s.extra_config = {{"attn_logit_softcapping", nullptr}, {"rope_scaling", {{"rope_type", "linear"}, {"factor", 2.0}}}};
  }
  if (type == "qwen3") s.head_dim = 8;  // 4 × 8 ≠ 64: key_length in the GGUF
  if (type == "gemma2") {               // the shape llama.cpp runs (26 layers, q scaled by head_dim)
    s.layers = 26;
    s.hidden = 32;
    s.intermediate = 32;
    s.head_dim = 16;
    s.query_pre_attn_scalar = 16;
  }
  return s;
}

std::string sample_text() {
  std::string t;
  for (int i = 0; i < 40; ++i) t += "the quick brown fox " + std::to_string(i * 7) + " jumps over {lazy} dogs; ";
  return t;
}

class GgufInput : public ::testing::TestWithParam<const char*> {};

TEST_P(GgufInput, WeightsTokenizerAndPerplexityEqualTheDenseTwin) {
  const std::string type = GetParam();
  TempDir dir;
  testing::write_tiny_model(dir / "m", spec_for(type));
  testing::write_tiny_tokenizer(dir / "m", 96);
  const fs::path g = dir / "m.gguf", twin = dir / "twin";
  const auto r = run_quant("gguf " + (dir / "m").string() + " -t q8_0 -o " + g.string() + " --dense-out " + twin.string());
  ASSERT_EQ(r.rc, 0) << r.err;

  const Model a = formats::open_model(g, true);
  const Model b = formats::open_model(twin);
  EXPECT_EQ(a.config().model_type, b.config().model_type);
  if (type == "llama3") EXPECT_EQ(a.config().rope_scaling.type, "freq_factors");
  if (type != "llama3") EXPECT_EQ(a.config().rope_scaling.type, b.config().rope_scaling.type);
  EXPECT_EQ(a.config().rotary_dim, b.config().rotary_dim);
  EXPECT_NEAR(a.config().rope_scaling.attention_factor, b.config().rope_scaling.attention_factor, 1e-6);
  EXPECT_EQ(a.config().rope_scaling.long_factor.size(), b.config().rope_scaling.long_factor.size());
  EXPECT_EQ(a.config().n_layers, b.config().n_layers);
  EXPECT_EQ(a.config().head_dim, b.config().head_dim);
  EXPECT_EQ(a.config().attn_scale, b.config().attn_scale);
  EXPECT_EQ(a.config().layer_sliding, b.config().layer_sliding);
  // Every linear (llama's q/k un-permuted) and norm (Gemma's 1 + w back to w).
  for (std::size_t i = 0; i < a.linears().size(); ++i) {
    const Mat wa = load_linear(a, *a.linears()[i]), wb = load_linear(b, *b.linears()[i]);
    ASSERT_EQ(wa.rows(), wb.rows());
    EXPECT_LE((wa - wb).cwiseAbs().maxCoeff(), 1e-6f) << a.linears()[i]->prefix;
  }
  for (const auto& layer : a.layout().layers) {
    for (const auto& [name, n] : layer.norms(a.config().hidden_size, a.config().head_dim)) {
      EXPECT_LE((load_vector(a, name) - load_vector(b, name)).cwiseAbs().maxCoeff(), 1e-6f) << name;
    }
  }

  const std::string text = sample_text();
  const auto ta = Tokenizer::load(g), tb = Tokenizer::load(dir / "m");
  EXPECT_EQ(ta->encode(text), tb->encode(text));
  EXPECT_EQ(ta->add_bos(), tb->add_bos());
  const std::vector<std::int32_t> ids = tb->encode_for_model(text);
  EvalOptions opt;
  opt.ctx = 32;
  const double pa = evaluate(a, ids, opt).ppl, pb = evaluate(b, ids, opt).ppl;
  EXPECT_NEAR(pa / pb, 1.0, 1e-4) << pa << " vs " << pb;
}

INSTANTIATE_TEST_SUITE_P(Families, GgufInput, ::testing::Values("llama", "llama3", "yarn", "qwen2", "qwen3", "gemma2", "gemma3", "phi3",
                                                                  "phi3_longrope"));

TEST(GgufInputCli, EvalReadsGgufAndQuantizersRefuseIt) {
  TempDir dir;
  testing::write_tiny_model(dir / "m", spec_for("llama"));
  testing::write_tiny_tokenizer(dir / "m", 96);
  const fs::path g = dir / "m.gguf", text = dir / "t.txt";
  ASSERT_EQ(run_quant("gguf " + (dir / "m").string() + " -t f32 -o " + g.string()).rc, 0);
  write_file_atomic(text, sample_text());
  // An F32 GGUF holds the original weights: the same perplexity as the HF directory, and the
  // GGUF as --base of its own checkpoint gives KL 0.
  const auto e = run_quant("eval " + g.string() + " --text " + text.string() + " --ctx 32 --json --base " + (dir / "m").string());
  ASSERT_EQ(e.rc, 0) << e.err;
  const auto h = run_quant("eval " + (dir / "m").string() + " --text " + text.string() + " --ctx 32 --json");
  ASSERT_EQ(h.rc, 0) << h.err;
  const json je = json::parse(e.out), jh = json::parse(h.out);
  EXPECT_NEAR(je["ppl"].get<double>() / jh["ppl"].get<double>(), 1.0, 1e-6);
  EXPECT_NEAR(je["kl_mean"].get<double>(), 0.0, 1e-6);
  EXPECT_EQ(je["tokens"], jh["tokens"]);

  for (const char* cmd : {"rtn", "gptq", "awq", "kmeans", "gguf"}) {
    const fs::path out = dir / (std::string("out-") + cmd);
    const std::string calib = std::string(cmd) == "rtn" ? "" : " --calib " + text.string();
    const auto q = run_quant(std::string(cmd) + " " + g.string() + " -o " + out.string() + calib);
    EXPECT_NE(q.rc, 0) << cmd;
    EXPECT_NE(q.err.find("is a GGUF file"), std::string::npos) << cmd << ": " << q.err;
    EXPECT_FALSE(fs::exists(out)) << cmd;
  }
}

TEST(GgufInputCli, UnsupportedArchitectureAndMissingTensorNamed) {
  TempDir dir;
  testing::write_tiny_model(dir / "m", spec_for("llama"));
  testing::write_tiny_tokenizer(dir / "m", 96);
  const fs::path g = dir / "m.gguf";
  ASSERT_EQ(run_quant("gguf " + (dir / "m").string() + " -t f32 -o " + g.string()).rc, 0);
  // Rewrite the file with another architecture name / without one tensor.
  const gguf::File src = gguf::File::open(g);
  auto rewrite = [&](const fs::path& out, const std::string& arch, const std::string& drop) {
    gguf::Writer w;
    for (const auto& [k, v] : src.metadata) {
      std::string key = k;
      if (key.rfind("llama.", 0) == 0) key = arch + key.substr(5);
      w.set(key, key == "general.architecture" ? gguf::Value::str(arch) : v);
    }
    std::vector<const gguf::TensorInfo*> kept;
    for (const auto& t : src.tensors) {
      if (t.name == drop) continue;
      w.add_tensor(t.name, std::vector<std::int64_t>(t.ne.rbegin(), t.ne.rend()), t.type);
      kept.push_back(&t);
    }
    w.write(out, [&](std::size_t i) {
      const std::uint8_t* p = src.data(*kept[i]);
      return std::vector<std::uint8_t>(p, p + kept[i]->bytes);
    });
  };
  rewrite(dir / "falcon.gguf", "falcon", "");
  const auto f = run_quant("eval " + (dir / "falcon.gguf").string() + " --text " + (dir / "m" / "config.json").string());
  EXPECT_NE(f.rc, 0);
  EXPECT_NE(f.err.find("architecture 'falcon' is not supported"), std::string::npos) << f.err;
  // A block count that lies is refused before anything is built for it.
  {
    gguf::Writer w;
    for (const auto& [k, v] : src.metadata) w.set(k, k == "llama.block_count" ? gguf::Value::u32(1000000000) : v);
    for (const auto& t : src.tensors) w.add_tensor(t.name, std::vector<std::int64_t>(t.ne.rbegin(), t.ne.rend()), t.type);
    w.write(dir / "lie.gguf", [&](std::size_t i) {
      const std::uint8_t* p = src.data(src.tensors[i]);
      return std::vector<std::uint8_t>(p, p + src.tensors[i].bytes);
    });
    const auto l = run_quant("eval " + (dir / "lie.gguf").string() + " --text " + (dir / "m" / "config.json").string());
    EXPECT_NE(l.rc, 0);
    EXPECT_NE(l.err.find("block_count is 1000000000, but the file holds tensors for 2 blocks"), std::string::npos) << l.err;
  }
  rewrite(dir / "hole.gguf", "llama", "blk.1.ffn_down.weight");
  const auto m = run_quant("eval " + (dir / "hole.gguf").string() + " --text " + (dir / "m" / "config.json").string());
  EXPECT_NE(m.rc, 0);
  EXPECT_NE(m.err.find("hole.gguf: tensor 'blk.1.ffn_down.weight' is missing"), std::string::npos) << m.err;
}

// The sentencepiece vocabulary rebuilt from the GGUF encodes the real models' texts as their
// tokenizer.model does (wikitext's runs of spaces and newlines; tinystories' CRLF line ends).
TEST(GgufInputShared, SentencepieceVocabularyEncodesAsTheOriginal) {
  QUANT_REQUIRE_SHARED();
  TempDir dir;
  const fs::path shared = testing::shared_dir();
  for (const auto& [model, text] : {std::pair{"wiki-llama-5m", "wikitext2-test.txt"}, {"stories260K", "tinystories-eval.txt"}}) {
    const fs::path g = dir / (std::string(model) + ".gguf");
    const auto r = run_quant("gguf " + (shared / "models" / model).string() + " -t q8_0 -o " + g.string());
    ASSERT_EQ(r.rc, 0) << r.err;
    std::string t = read_text_file(shared / "data" / text, true);
    t.resize(std::min<std::size_t>(t.size(), 300000));
    const auto a = Tokenizer::load(g), b = Tokenizer::load(shared / "models" / model);
    EXPECT_EQ(a->encode_for_model(t), b->encode_for_model(t)) << model;
    EXPECT_EQ(a->kind(), "sentencepiece");
  }
}

}  // namespace
}  // namespace quant
