// Evaluation presets (issue 24 item 6): the texts the papers' code builds, by hand-computed
// goldens; Python's random reproduced bit for bit (goldens printed by CPython 3.11's random);
// the wikitext2 preset rebuilds ../shared's joined WikiText-2 from the raw file it came from.
#include <gtest/gtest.h>

#include <algorithm>

#include <nlohmann/json.hpp>

#include "cli_helpers.h"
#include "fixtures.h"
#include "quant/core/error.h"
#include "quant/io/io.h"
#include "quant/pipeline/eval_presets.h"

namespace quant {
namespace {

using nlohmann::json;
using testing::TempDir;

TEST(PythonRandom, RandintEqualsCPython) {
  // python3 -c "import random; random.seed(0); print([random.randint(0, 45575) for _ in range(6)])"
  PythonRandom a(0);
  std::vector<std::int64_t> got;
  for (int i = 0; i < 6; ++i) got.push_back(a.randint(0, 45575));
  EXPECT_EQ(got, (std::vector<std::int64_t>{25247, 27562, 2653, 16968, 33506, 31845}));
  // random.seed(0); [randint(0, 1) for _ in range(8)], randint(0, 10**12) (two 32-bit words), randint(5, 5)
  PythonRandom b(0);
  got.clear();
  for (int i = 0; i < 8; ++i) got.push_back(b.randint(0, 1));
  EXPECT_EQ(got, (std::vector<std::int64_t>{1, 1, 0, 1, 1, 1, 1, 1}));
  EXPECT_EQ(b.randint(0, 1000000000000), 641487937455);
  EXPECT_EQ(b.randint(5, 5), 5);
  EXPECT_THROW(b.randint(0, -1), Error);  // Python: ValueError("empty range")
  // A seed wider than 32 bits is two key words: random.seed(12345678901)
  PythonRandom c(12345678901ull);
  got.clear();
  for (int i = 0; i < 3; ++i) got.push_back(c.randint(0, 1000));
  EXPECT_EQ(got, (std::vector<std::int64_t>{968, 610, 335}));
}

TEST(EvalPresets, PythonStripAndLines) {
  EXPECT_EQ(python_strip(" \t a b \r\n"), "a b");
  EXPECT_EQ(python_strip("\xc2\xa0x\xe3\x80\x80"), "x");  // NBSP and ideographic space are whitespace to Python
  EXPECT_EQ(python_strip("\xc3\xa9"), "\xc3\xa9");        // é is not
  EXPECT_EQ(python_strip(" \n "), "");
  EXPECT_EQ(python_lines("a\r\nb\rc\nd"), (std::vector<std::string>{"a\n", "b\n", "c\n", "d"}));
}

TEST(EvalPresets, WikitextRowsAndPtbSentencesByHand) {
  // wiki.test.raw's first lines → rows "", " = A = \n", "", " B b .\n" → "\n\n".join(rows)
  EXPECT_EQ(preset_text(EvalPreset::wikitext2, " \n = A = \n \n B b .\n"), "\n\n = A = \n\n\n\n\n B b .\n");
  // ptb.test.txt → stripped sentences joined by one space
  EXPECT_EQ(preset_text(EvalPreset::ptb, " no it was n't black monday \n but while the new york stock exchange\n"),
            "no it was n't black monday but while the new york stock exchange");
  EXPECT_EQ(read_jsonl_texts("{\"text\": \"a\\nb\", \"url\": \"u\"}\n\n{\"text\": \"c\"}\n", "x.json"),
            (std::vector<std::string>{"a\nb", "c"}));
  EXPECT_THROW(read_jsonl_texts("{\"url\": 1}\n", "x.json"), InputError);
  EXPECT_THROW(parse_eval_preset("wikitext103"), UsageError);
}

// GPTQ's get_c4 windows on documents of a char-per-token vocabulary; (document, start) pairs
// printed by CPython running the same loop:
//   docs = [chr(97 + i % 26) * (5 + 2 * ((i * 37) % 25)) for i in range(100)]; seed 0, seqlen 20
TEST(EvalPresets, C4WindowsFollowPythonsDraws) {
  TempDir dir;
  testing::write_tiny_tokenizer(dir.path(), 96);
  const auto tok = Tokenizer::load(dir.path());
  ASSERT_FALSE(tok->add_bos());
  std::vector<std::string> docs;
  for (int i = 0; i < 100; ++i) docs.push_back(std::string(static_cast<std::size_t>(5 + 2 * ((i * 37) % 25)), static_cast<char>('a' + i % 26)));
  const std::vector<std::int32_t> ids = c4_windows(docs, *tok, 20, 6, 0);
  ASSERT_EQ(ids.size(), 120u);
  const std::pair<int, int> draws[] = {{49, 6}, {5, 2}, {62, 12}, {45, 9}, {27, 32}, {12, 19}};
  for (std::size_t w = 0; w < 6; ++w) {
    const auto doc = tok->encode(docs[static_cast<std::size_t>(draws[w].first)]);
    const std::vector<std::int32_t> expect(doc.begin() + draws[w].second, doc.begin() + draws[w].second + 20);
    EXPECT_EQ(std::vector<std::int32_t>(ids.begin() + static_cast<std::ptrdiff_t>(w * 20), ids.begin() + static_cast<std::ptrdiff_t>(w * 20 + 20)), expect) << w;
  }
  // c4-new: " ".join(docs[:1100]) → its first n × ctx tokens
  const auto joined = c4_new_tokens(docs, *tok, 10, 3);
  std::string text;
  for (std::size_t i = 0; i < docs.size(); ++i) text += (i ? " " : "") + docs[i];
  const auto all = tok->encode(text);
  EXPECT_EQ(joined, std::vector<std::int32_t>(all.begin(), all.begin() + 30));
}

// ../shared's wikitext2-test.txt is the joined text; the raw file it came from is recovered by
// reading the rows back (a row is "" or one line ending in "\n"; blank raw lines are " \n"),
// and the preset must rebuild the joined text byte for byte.
TEST(EvalPresets, Wikitext2RebuildsTheJoinedSharedText) {
  QUANT_REQUIRE_SHARED();
  const std::string joined = read_text_file(testing::shared_dir() / "data" / "wikitext2-test.txt");
  std::string raw;
  std::size_t p = 0;
  for (;;) {
    if (p == joined.size() || joined[p] == '\n') {
      raw += " \n";  // an empty row
    } else {
      const std::size_t e = joined.find('\n', p);
      ASSERT_NE(e, std::string::npos);
      raw += joined.substr(p, e + 1 - p);
      p = e + 1;
    }
    if (p >= joined.size()) break;
    ASSERT_EQ(joined.compare(p, 2, "\n\n"), 0) << "separator expected at byte " << p;
    p += 2;
  }
  const std::string rebuilt = preset_text(EvalPreset::wikitext2, raw);
  EXPECT_EQ(rebuilt.size(), joined.size());
  EXPECT_TRUE(rebuilt == joined) << "first difference at byte "
                                 << std::mismatch(rebuilt.begin(), rebuilt.end(), joined.begin(), joined.end()).first - rebuilt.begin();
}

TEST(EvalPresetsCli, PresetTextScoresAsTheJoinedText) {
  TempDir dir;
  testing::TinyModelSpec spec;
  spec.vocab = 96;
  testing::write_tiny_model(dir / "m", spec);
  testing::write_tiny_tokenizer(dir / "m", 96);
  // No newlines in the fixture's vocabulary: ptb's joined text has none.
  write_file_atomic(dir / "ptb.txt", " the cat sat \n on the mat \n " + std::string(200, 'x') + "\n");
  write_file_atomic(dir / "joined.txt", preset_text(EvalPreset::ptb, read_text_file(dir / "ptb.txt")));
  const auto a = testing::run_quant("eval " + (dir / "m").string() + " --preset ptb --text " + (dir / "ptb.txt").string() + " --ctx 16 --json");
  const auto b = testing::run_quant("eval " + (dir / "m").string() + " --text " + (dir / "joined.txt").string() + " --ctx 16 --json");
  ASSERT_EQ(a.rc, 0) << a.err;
  ASSERT_EQ(b.rc, 0) << b.err;
  EXPECT_EQ(json::parse(a.out)["preset"], "ptb");
  EXPECT_EQ(json::parse(a.out)["ppl"], json::parse(b.out)["ppl"]);
  const auto bad = testing::run_quant("eval " + (dir / "m").string() + " --preset ptb --text " + (dir / "ptb.txt").string() + " --protocol llamacpp");
  EXPECT_EQ(bad.rc, 2);
  EXPECT_NE(bad.err.find("cannot be combined with --protocol llamacpp"), std::string::npos) << bad.err;
}

}  // namespace
}  // namespace quant
