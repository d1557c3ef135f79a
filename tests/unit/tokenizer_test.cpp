#include "quant/model/tokenizer.h"

#include <gtest/gtest.h>
#include <sentencepiece_processor.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "fixtures.h"
#include "quant/core/error.h"
#include "quant/io/io.h"

namespace quant {
namespace {

using nlohmann::json;
using testing::TempDir;

// GPT-2 byte-to-unicode for the printable ASCII subset used below: identity, and ' ' -> 'Ġ'.
json byte_level_vocab() {
  json vocab = json::object();
  int id = 0;
  for (int c = 33; c <= 126; ++c) vocab[std::string(1, static_cast<char>(c))] = id++;  // 0..93
  vocab["\xC4\xA0"] = id++;  // Ġ (space) = 94
  return vocab;
}

TEST(BpeTokenizer, HandComputedByteLevelMerges) {
  TempDir dir;
  json vocab = byte_level_vocab();
  vocab["he"] = 95;
  vocab["ll"] = 96;
  vocab["hell"] = 97;
  vocab["hello"] = 98;
  vocab["\xC4\xA0w"] = 99;  // Ġw
  json tok = {{"model", {{"type", "BPE"}, {"vocab", vocab},
                         {"merges", {"h e", "l l", "he ll", "hell o", "\xC4\xA0 w"}}}},
              {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", true}}},
              {"added_tokens", {{{"id", 100}, {"content", "<|end|>"}, {"special", true}}}}};
  write_file_atomic(dir / "tokenizer.json", tok.dump());
  auto t = load_tokenizer_json(dir / "tokenizer.json");
  // "hello" merges fully; " world" -> Ġw + o r l d (single characters: 'o'=78 ... by ASCII-33).
  const auto ids = t->encode("hello world");
  const std::vector<std::int32_t> expect = {98, 99, 'o' - 33, 'r' - 33, 'l' - 33, 'd' - 33};
  EXPECT_EQ(ids, expect);
  // Merge order matters: "hel" can only become he + l (no 'el' merge).
  EXPECT_EQ(t->encode("hel"), (std::vector<std::int32_t>{95, 'l' - 33}));
  // Added tokens are split out before BPE.
  EXPECT_EQ(t->encode("hello<|end|>hello"), (std::vector<std::int32_t>{98, 100, 98}));
  EXPECT_FALSE(t->add_bos());
  EXPECT_EQ(t->vocab_size(), 101);
}

TEST(BpeTokenizer, Gpt2ReferenceIds) {
  QUANT_REQUIRE_SHARED();
  const auto src = testing::shared_dir() / "tokenizers/gpt2";
  json vocab = json::parse(read_text_file(src / "vocab.json"));
  json merges = json::array();
  std::ifstream in(src / "merges.txt");
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line.rfind("#version", 0) == 0) continue;
    merges.push_back(line);
  }
  ASSERT_EQ(merges.size(), 50000u);
  json tok = {{"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", merges}}},
              {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", true}}},
              {"post_processor", {{"type", "ByteLevel"}}}};
  TempDir dir;
  write_file_atomic(dir / "tokenizer.json", tok.dump());
  auto t = load_tokenizer_json(dir / "tokenizer.json");
  EXPECT_EQ(t->encode("hello world"), (std::vector<std::int32_t>{31373, 995}));
  EXPECT_EQ(t->encode("Hello world"), (std::vector<std::int32_t>{15496, 995}));
  EXPECT_EQ(t->vocab_size(), 50257);
  // Every byte, including invalid UTF-8, maps to a token: no error, one token per odd byte.
  EXPECT_EQ(t->encode(std::string("\xff\xfe")).size(), 2u);
}

// Builds the Llama-2 style tokenizer.json (Prepend ▁ + Replace ' '->▁, BPE with byte fallback;
// merges ranked by the merged piece's id, i.e. its sentencepiece score) from a sentencepiece
// model, as transformers' LlamaConverter does.
json tokenizer_json_from_sentencepiece(const sentencepiece::SentencePieceProcessor& sp) {
  json vocab = json::object();
  std::map<std::string, int> ids;
  for (int i = 0; i < sp.GetPieceSize(); ++i) {
    vocab[sp.IdToPiece(i)] = i;
    ids[sp.IdToPiece(i)] = i;
  }
  std::vector<std::tuple<int, int, std::string>> m;  // (merged id, left id, "a b")
  for (const auto& [piece, id] : ids) {
    if (sp.IsControl(id) || sp.IsByte(id) || sp.IsUnknown(id)) continue;
    for (std::size_t k = 1; k < piece.size(); ++k) {
      const std::string a = piece.substr(0, k), b = piece.substr(k);
      if (ids.count(a) && ids.count(b)) m.emplace_back(id, ids[a], a + " " + b);
    }
  }
  std::sort(m.begin(), m.end());
  json merges = json::array();
  for (auto& e : m) merges.push_back(std::get<2>(e));
  return {{"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", merges}, {"byte_fallback", true},
                     {"unk_token", "<unk>"}, {"fuse_unk", true}}},
          {"normalizer", {{"type", "Sequence"}, {"normalizers", {{{"type", "Prepend"}, {"prepend", "\xE2\x96\x81"}},
                          {{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", "\xE2\x96\x81"}}}}}},
          {"post_processor", {{"type", "TemplateProcessing"},
                              {"single", {{{"SpecialToken", {{"id", "<s>"}, {"type_id", 0}}}}, {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}}},
                              {"special_tokens", {{"<s>", {{"id", "<s>"}, {"ids", {1}}, {"tokens", {"<s>"}}}}}}}}};
}

TEST(BpeTokenizer, MetaspaceByteFallbackMatchesLibsentencepieceOnSharedTexts) {
  QUANT_REQUIRE_SHARED();
  const auto shared = testing::shared_dir();
  for (const char* model : {"stories260K", "wiki-llama-5m"}) {
    sentencepiece::SentencePieceProcessor sp;
    ASSERT_TRUE(sp.Load((shared / "models" / model / "tokenizer.model").string()).ok());
    TempDir dir;
    write_file_atomic(dir / "tokenizer.json", tokenizer_json_from_sentencepiece(sp).dump());
    auto bpe = load_tokenizer_json(dir / "tokenizer.json");
    EXPECT_TRUE(bpe->add_bos());
    EXPECT_EQ(bpe->bos_id(), 1);
    for (const char* text : {"data/tinystories-eval.txt", "data/c4-calibration.txt"}) {
      std::string s = read_text_file(shared / text);
      s.resize(std::min<std::size_t>(s.size(), 60000));
      while (!s.empty() && (static_cast<unsigned char>(s.back()) & 0xC0) == 0x80) s.pop_back();  // whole chars
      if (!s.empty() && static_cast<unsigned char>(s.back()) >= 0xC0) s.pop_back();
      std::vector<int> want;
      ASSERT_TRUE(sp.Encode(s, &want).ok());
      const auto got = bpe->encode(s);
      ASSERT_EQ(got.size(), want.size()) << model << " " << text;
      EXPECT_TRUE(std::equal(got.begin(), got.end(), want.begin())) << model << " " << text;
    }
  }
}

TEST(Tokenizer, SentencepieceFollowsTokenizerConfig) {
  QUANT_REQUIRE_SHARED();
  auto t = Tokenizer::load(testing::shared_dir() / "models/stories260K");
  EXPECT_EQ(t->kind(), "sentencepiece");
  EXPECT_EQ(t->bos_id(), 1);
  const auto ids = t->encode_for_model("Once upon a time");
  ASSERT_FALSE(ids.empty());
  EXPECT_EQ(ids[0], 1);
  EXPECT_EQ(ids[1], 403);  // "▁Once", checked with spm_encode
}

TEST(Tokenizer, UnknownTypeIsAClearError) {
  TempDir dir;
  write_file_atomic(dir / "tokenizer.json", R"({"model":{"type":"WordPiece","vocab":{}}})");
  try {
    load_tokenizer_json(dir / "tokenizer.json");
    FAIL();
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("unsupported tokenizer model type 'WordPiece'"), std::string::npos) << e.what();
  }
  write_file_atomic(dir / "tokenizer.json", R"({"model":{"type":"BPE","vocab":{}},"pre_tokenizer":{"type":"BertPreTokenizer"}})");
  EXPECT_THROW(load_tokenizer_json(dir / "tokenizer.json"), InputError);
  write_file_atomic(dir / "tokenizer.json", "{not json");
  EXPECT_THROW(load_tokenizer_json(dir / "tokenizer.json"), InputError);
}

TEST(Tokenizer, TokenIdFiles) {
  TempDir dir;
  write_file_atomic(dir / "ids.txt", "1 5, 7\n[9]\n");
  EXPECT_EQ(read_token_ids(dir / "ids.txt"), (std::vector<std::int32_t>{1, 5, 7, 9}));
  write_file_atomic(dir / "bad.txt", "1 2 x");
  EXPECT_THROW(read_token_ids(dir / "bad.txt"), InputError);
  write_file_atomic(dir / "neg.txt", "-3");
  EXPECT_THROW(read_token_ids(dir / "neg.txt"), InputError);
}

}  // namespace
}  // namespace quant
