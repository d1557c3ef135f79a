// GGUF tokenizer metadata from a byte-level BPE tokenizer.json ("gpt2" vocabularies).
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "cli_helpers.h"
#include "fixtures.h"
#include "quant/io/gguf.h"
#include "quant/io/io.h"

namespace quant::gguf {
namespace {

using nlohmann::json;
using testing::TempDir;

// A tiny model (vocab 104) with a GPT-2 style tokenizer.json: 95 single characters, 4 merges,
// one special added token, ids 100..103 unused.
json write_bpe_model(const fs::path& dir, const json& pre) {
  testing::TinyModelSpec spec;
  spec.vocab = 104;
  spec.hidden = 32;
  testing::write_tiny_model(dir, spec);
  json vocab = json::object();
  int id = 0;
  for (int c = 33; c <= 126; ++c) vocab[std::string(1, static_cast<char>(c))] = id++;
  vocab["\xC4\xA0"] = id++;  // Ġ = 94
  vocab["he"] = 95;
  vocab["ll"] = 96;
  vocab["hell"] = 97;
  vocab["hello"] = 98;
  json tok = {{"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", json::array({"h e", "l l", json::array({"he", "ll"}), "hell o"})}}},
              {"pre_tokenizer", pre},
              {"added_tokens", {{{"id", 99}, {"content", "<|end|>"}, {"special", true}}}}};
  write_file_atomic(dir / "tokenizer.json", tok.dump());
  return tok;
}

TEST(GgufVocab, Gpt2TokenizerJson) {
  TempDir dir;
  write_bpe_model(dir / "m", {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", true}});
  const auto r = testing::run_quant("gguf " + (dir / "m").string() + " -t f32 -o " + (dir / "m.gguf").string());
  ASSERT_EQ(r.rc, 0) << r.err;
  const File g = File::open(dir / "m.gguf");
  EXPECT_EQ(g.find("tokenizer.ggml.model")->s, "gpt2");
  EXPECT_EQ(g.find("tokenizer.ggml.pre")->s, "gpt-2");
  const auto& tokens = g.find("tokenizer.ggml.tokens")->arr;
  const auto& types = g.find("tokenizer.ggml.token_type")->arr;
  ASSERT_EQ(tokens.size(), 104u);
  ASSERT_EQ(types.size(), 104u);
  EXPECT_EQ(tokens[0].s, "!");
  EXPECT_EQ(tokens[94].s, "\xC4\xA0");
  EXPECT_EQ(tokens[98].s, "hello");
  EXPECT_EQ(types[98].i, 1);  // normal
  EXPECT_EQ(tokens[99].s, "<|end|>");
  EXPECT_EQ(types[99].i, 3);  // control
  EXPECT_EQ(tokens[103].s, "[PAD103]");
  EXPECT_EQ(types[103].i, 5);  // unused
  const auto& merges = g.find("tokenizer.ggml.merges")->arr;
  ASSERT_EQ(merges.size(), 4u);
  EXPECT_EQ(merges[0].s, "h e");
  EXPECT_EQ(merges[2].s, "he ll");  // [a, b] pairs joined with a space
  EXPECT_EQ(g.find("tokenizer.ggml.scores"), nullptr);
}

TEST(GgufVocab, Llama3RegexAndUnknownRegex) {
  const std::string llama3 =
      "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
  auto seq = [](const std::string& regex) {
    return json{{"type", "Sequence"},
                {"pretokenizers", {{{"type", "Split"}, {"pattern", {{"Regex", regex}}}, {"behavior", "Isolated"}, {"invert", false}},
                                   {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", false}}}}};
  };
  TempDir dir;
  write_bpe_model(dir / "a", seq(llama3));
  auto r = testing::run_quant("gguf " + (dir / "a").string() + " -t f16 -o " + (dir / "a.gguf").string());
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_EQ(File::open(dir / "a.gguf").find("tokenizer.ggml.pre")->s, "llama-bpe");
  // A regex llama.cpp would not reproduce: a clear error naming the file, and no output.
  write_bpe_model(dir / "b", seq("\\p{L}+|\\s+"));
  r = testing::run_quant("gguf " + (dir / "b").string() + " -t f16 -o " + (dir / "b.gguf").string());
  EXPECT_NE(r.rc, 0);
  EXPECT_NE(r.err.find("tokenizer.json"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("pre-tokenizer regex"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(dir / "b.gguf"));
}

}  // namespace
}  // namespace quant::gguf
