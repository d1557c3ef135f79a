// Zero-shot multiple choice: the file formats, lm-eval's context/continuation split, acc and
// acc_norm by hand, and HellaSwag on a real model against the torch reference's counts.
#include "quant/pipeline/tasks.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "cli_helpers.h"
#include "fixtures.h"
#include "quant/core/error.h"
#include "quant/io/io.h"

namespace quant {
namespace {

using testing::run_quant;
using testing::TempDir;

TEST(Tasks, HellaswagFormatAndErrors) {
  const auto t = parse_hellaswag("Ctx: a man\r\n2\r\nA\r\nB\r\nC\r\nD\r\n", "h.txt");
  ASSERT_EQ(t.size(), 1u);
  EXPECT_EQ(t[0].context, "Ctx: a man");  // CRLF line ends stripped
  EXPECT_EQ(t[0].label, 2);
  EXPECT_EQ(t[0].continuations, (std::vector<std::string>{"A", "B", "C", "D"}));
  EXPECT_EQ(t[0].delimiter, " ");
  EXPECT_THROW(parse_hellaswag("a\n1\nb\nc\nd\n", "h.txt"), InputError);        // 5 lines
  EXPECT_THROW(parse_hellaswag("a\n4\nb\nc\nd\ne\n", "h.txt"), InputError);     // gold out of range
}

TEST(Tasks, JsonlFormatsAndErrors) {
  const auto t = parse_mc_jsonl(
      R"({"context": "Q: 2+2?\nA:", "choices": ["4", "5"], "label": 0}
{"contexts": ["The cup", "The pot"], "continuation": " is full.", "label": 1, "target_delimiter": ""}
)",
      "m.jsonl");
  ASSERT_EQ(t.size(), 2u);
  EXPECT_EQ(t[0].delimiter, " ");
  EXPECT_EQ(t[1].delimiter, "");
  EXPECT_EQ(t[1].continuations.size(), 2u);
  EXPECT_THROW(parse_mc_jsonl(R"({"context": "x", "choices": ["a", "b"], "label": 2})", "m"), InputError);
  EXPECT_THROW(parse_mc_jsonl(R"({"context": "x", "choices": ["a"], "label": 0})", "m"), InputError);
  EXPECT_THROW(parse_mc_jsonl(R"({"context": "x", "label": 0})", "m"), InputError);
  EXPECT_THROW(parse_mc_jsonl("not json", "m"), InputError);
}

TEST(Tasks, ContinuationSplitAsLmEval) {
  TempDir dir;
  testing::write_tiny_tokenizer(dir.path(), 96);
  const auto tok = Tokenizer::load(dir.path());
  // Trailing spaces of the context move to the continuation; the continuation's tokens are the
  // whole string's tokens after the context's.
  ChoiceText c{"ab ", {"cd", "e"}, " ", 1};
  const auto tasks = tokenize_tasks({c}, *tok, -1);
  ASSERT_EQ(tasks.size(), 1u);
  const auto whole = tok->encode("ab  cd");
  const auto ctx = tok->encode("ab");
  EXPECT_EQ(tasks[0].context[0], ctx);
  EXPECT_EQ(tasks[0].continuation[0], std::vector<std::int32_t>(whole.begin() + static_cast<std::ptrdiff_t>(ctx.size()), whole.end()));
  EXPECT_EQ(tasks[0].chars, (std::vector<std::size_t>{2, 1}));  // the choices' own lengths, no delimiter
}

TEST(Tasks, AccuracyByHand) {
  std::vector<ChoiceTask> tasks(3);
  tasks[0].chars = {1, 10};
  tasks[0].label = 1;
  tasks[1].chars = {4, 4};
  tasks[1].label = 0;
  tasks[2].chars = {2, 2, 2};
  tasks[2].label = 2;
  TaskScores s;
  s.loglik = {{-2.0, -5.0},          // acc → 0 (wrong); norm: -2/1 vs -0.5 → 1 (right)
              {-3.0, -3.0},          // tie → first (right for both)
              {-9.0, -1.0, -4.0}};   // acc → 1, norm → 1 (both wrong)
  const TaskAccuracy a = task_accuracy(tasks, s);
  EXPECT_EQ(a.pred, (std::vector<int>{0, 0, 1}));
  EXPECT_EQ(a.pred_norm, (std::vector<int>{1, 0, 1}));
  EXPECT_DOUBLE_EQ(a.acc, 1.0 / 3);
  EXPECT_DOUBLE_EQ(a.acc_norm, 2.0 / 3);
  EXPECT_NEAR(a.acc_stderr, std::sqrt((1.0 / 3) * (2.0 / 3) / 2), 1e-12);
}

TEST(Tasks, CliGateOnAccuracyDrop) {
  TempDir dir;
  testing::TinyModelSpec spec;
  spec.weight_scale = 0.3f;
  testing::write_tiny_model(dir / "base", spec);
  testing::write_tiny_tokenizer(dir / "base", 96);
  spec.seed = 9;
  testing::write_tiny_model(dir / "other", spec);
  testing::write_tiny_tokenizer(dir / "other", 96);
  std::string jsonl;
  for (int i = 0; i < 40; ++i) {
    jsonl += nlohmann::json{{"context", "abc" + std::string(1, static_cast<char>('a' + i % 20))},
                            {"choices", {"xy", "zq", std::string(1 + i % 3, 'k')}},
                            {"label", i % 3}}.dump() + "\n";
  }
  write_file_atomic(dir / "t.jsonl", jsonl);
  const std::string common = "eval " + (dir / "other").string() + " --task mc " + (dir / "t.jsonl").string() + " --json";
  auto r = run_quant(common);
  ASSERT_EQ(r.rc, 0) << r.err;
  const auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["n"], 40);
  EXPECT_GE(j["acc"].get<double>(), 0.0);
  // Against the base: a limit of -100 points always fails, +100 always passes.
  r = run_quant(common + " --base " + (dir / "base").string() + " --max-acc-drop 100");
  EXPECT_EQ(r.rc, 0) << r.err;
  r = run_quant(common + " --base " + (dir / "base").string() + " --max-acc-drop 0 --junit " + (dir / "j.xml").string());
  const auto jr = nlohmann::json::parse(r.out);
  const bool dropped = jr["acc_norm"].get<double>() < jr["base_acc_norm"].get<double>();
  EXPECT_EQ(r.rc, dropped ? 4 : 0) << r.err;
  EXPECT_NE(read_text_file(dir / "j.xml").find("max-acc-drop"), std::string::npos);
  // Misuse: a perplexity text with --task, or the gate without a base.
  EXPECT_EQ(run_quant(common + " --max-acc-drop 1").rc, 2);
  EXPECT_EQ(run_quant(common + " --tokens " + (dir / "t.jsonl").string()).rc, 2);
}

// The bar: HellaSwag's first 200 tasks on wiki-llama-5m, acc and acc_norm counts exactly equal to
// the torch reference's on the same tokens (tools/reference/task_reference.py).
TEST(Tasks, HellaswagMatchesTorchReferenceCounts) {
  QUANT_REQUIRE_SHARED();
  const fs::path data = testing::shared_dir() / "data" / "hellaswag_val_full.txt";
  const fs::path model = testing::shared_dir() / "models" / "wiki-llama-5m";
  if (!fs::exists(data) || !fs::exists(model)) GTEST_SKIP() << "hellaswag or wiki-llama-5m absent from ../shared";
  const auto golden = read_json_file(fs::path(QUANT_GOLDEN_DIR) / "hellaswag_wiki_llama_5m_200.json");
  const auto r = run_quant("eval " + model.string() + " --task hellaswag " + data.string() + " --max-tasks 200 --json");
  ASSERT_EQ(r.rc, 0) << r.err;
  const auto j = nlohmann::json::parse(r.out);
  ASSERT_EQ(j["n"], golden["n"]);
  const double n = golden["n"].get<double>();
  EXPECT_EQ(std::lround(j["acc"].get<double>() * n), golden["acc_count"].get<long>());
  EXPECT_EQ(std::lround(j["acc_norm"].get<double>() * n), golden["acc_norm_count"].get<long>());
}

}  // namespace
}  // namespace quant
