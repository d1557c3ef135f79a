// quant eval and quant inspect as a user runs them: exit codes, stdout/stderr, errors.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "cli_helpers.h"
#include "fixtures.h"
#include "quant/io/io.h"

namespace quant {
namespace {

using testing::run_quant;
using testing::TempDir;

struct TinyEval : ::testing::Test {
  TempDir dir;
  std::string model;
  void SetUp() override {
    testing::TinyModelSpec spec;
    spec.ctx = 64;
    testing::write_tiny_model(dir / "m", spec);
    model = (dir / "m").string();
    std::string ids;
    for (int i = 0; i < 300; ++i) ids += std::to_string((i * 7 + 3) % 96) + " ";
    write_file_atomic(dir / "ids.txt", ids);
  }
};

TEST_F(TinyEval, JsonOnStdoutLogsOnStderr) {
  const auto r = run_quant("eval " + model + " --tokens " + (dir / "ids.txt").string() + " --ctx 32 --json");
  ASSERT_EQ(r.rc, 0) << r.err;
  const auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["windows"], 9);  // 300 / 32, tail dropped
  EXPECT_EQ(j["tokens"], 9 * 31);
  EXPECT_GT(j["ppl"].get<double>(), 1.0);
  EXPECT_NE(r.err.find("perplexity"), std::string::npos);
}

TEST_F(TinyEval, SameModelAsBaseHasZeroKlAndFullAgreement) {
  const auto r = run_quant("eval " + model + " --tokens " + (dir / "ids.txt").string() +
                           " --ctx 32 --json --base " + model + " --max-ppl-increase 0");
  ASSERT_EQ(r.rc, 0) << r.err;
  const auto j = nlohmann::json::parse(r.out);
  EXPECT_NEAR(j["kl_mean"].get<double>(), 0.0, 1e-12);
  EXPECT_EQ(j["top1_agreement"].get<double>(), 1.0);
  EXPECT_EQ(j["ppl"].get<double>(), j["base_ppl"].get<double>());
}

TEST_F(TinyEval, RegressionGateExitsWithStatus4) {
  const auto r = run_quant("eval " + model + " --tokens " + (dir / "ids.txt").string() + " --ctx 32 --max-ppl 1.0");
  EXPECT_EQ(r.rc, 4);
  EXPECT_NE(r.err.find("error: perplexity"), std::string::npos) << r.err;
}

TEST_F(TinyEval, WindowLargerThanContextIsAUsageError) {
  const auto r = run_quant("eval " + model + " --tokens " + (dir / "ids.txt").string() + " --ctx 128");
  EXPECT_EQ(r.rc, 2);
  EXPECT_NE(r.err.find("larger than the context"), std::string::npos) << r.err;
}

TEST_F(TinyEval, TextShorterThanOneWindow) {
  write_file_atomic(dir / "short.txt", "1 2 3");
  const auto r = run_quant("eval " + model + " --tokens " + (dir / "short.txt").string() + " --ctx 32");
  EXPECT_EQ(r.rc, 3);
  EXPECT_NE(r.err.find("shorter than one window"), std::string::npos) << r.err;
}

TEST_F(TinyEval, EmptyTextAndMissingTokenizer) {
  write_file_atomic(dir / "empty.txt", "");
  auto r = run_quant("eval " + model + " --text " + (dir / "empty.txt").string());
  EXPECT_EQ(r.rc, 3);
  EXPECT_NE(r.err.find("empty"), std::string::npos) << r.err;
  write_file_atomic(dir / "t.txt", "hello");
  r = run_quant("eval " + model + " --text " + (dir / "t.txt").string());
  EXPECT_EQ(r.rc, 3);
  EXPECT_NE(r.err.find("no tokenizer.json or tokenizer.model"), std::string::npos) << r.err;
}

TEST_F(TinyEval, TokenOutsideVocabulary) {
  write_file_atomic(dir / "big.txt", std::string(200, ' ') + "5000 " + std::string(40, ' ') + [] {
    std::string s;
    for (int i = 0; i < 40; ++i) s += "1 ";
    return s;
  }());
  const auto r = run_quant("eval " + model + " --tokens " + (dir / "big.txt").string() + " --ctx 32");
  EXPECT_EQ(r.rc, 3);
  EXPECT_NE(r.err.find("outside the vocabulary"), std::string::npos) << r.err;
}

TEST(CliInspect, JsonParameterCount) {
  TempDir dir;
  testing::write_tiny_model(dir / "m", {});
  const auto r = run_quant("inspect --json " + (dir / "m").string());
  ASSERT_EQ(r.rc, 0) << r.err;
  const auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["num_hidden_layers"], 2);
  EXPECT_EQ(j["n_params"].get<std::int64_t>(), 96 * 32 + 32 + 2 * (1024 + 512 + 512 + 1024 + 3 * 2048 + 64));
}

TEST(CliInspect, SharedModels) {
  QUANT_REQUIRE_SHARED();
  auto r = run_quant("inspect --json " + (testing::shared_dir() / "models/stories260K").string());
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_EQ(nlohmann::json::parse(r.out)["n_params"], 260032);
  r = run_quant("inspect --json " + (testing::shared_dir() / "models/wiki-llama-5m").string());
  EXPECT_EQ(nlohmann::json::parse(r.out)["n_params"], 5246208);
}

TEST(CliEvalShared, Stories260KPerplexity) {
  QUANT_REQUIRE_SHARED();
  const auto s = testing::shared_dir();
  const auto r = run_quant("eval " + (s / "models/stories260K").string() + " --text " +
                           (s / "data/tinystories-eval.txt").string() + " --ctx 256 --json");
  ASSERT_EQ(r.rc, 0) << r.err;
  // Measured with this implementation (see issue notes); the forward pass itself is checked
  // against a naive reference in forward_test.
  EXPECT_NEAR(nlohmann::json::parse(r.out)["ppl"].get<double>(), 6.2368, 0.001);
}

TEST(CliEvalShared, WikiLlamaFirst200KBytesMatchesReference) {
  QUANT_REQUIRE_SHARED();
  const auto s = testing::shared_dir();
  const auto r = run_quant("eval " + (s / "models/wiki-llama-5m").string() + " --text " +
                           (s / "data/wikitext2-test.txt").string() + " --ctx 1024 --limit-bytes 200000 --max-windows 20 --json");
  ASSERT_EQ(r.rc, 0) << r.err;
  const auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["windows"], 20);
  EXPECT_GT(j["ppl"].get<double>(), 60.0);
  EXPECT_LT(j["ppl"].get<double>(), 120.0);
}

}  // namespace
}  // namespace quant
