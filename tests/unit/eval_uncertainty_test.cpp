// quant eval's uncertainties against a direct computation from per-token NLLs, the noise-aware
// gate, and the JUnit report.
#include <gtest/gtest.h>

#include <cmath>
#include <nlohmann/json.hpp>

#include "cli_helpers.h"
#include "fixtures.h"
#include "quant/io/io.h"
#include "quant/model/forward.h"
#include "quant/model/model.h"
#include "quant/pipeline/eval.h"

namespace quant {
namespace {

using testing::run_quant;
using testing::TempDir;

std::vector<std::int32_t> ids(int n, std::uint32_t seed) {
  std::vector<std::int32_t> t;
  for (int i = 0; i < n; ++i) {
    seed = seed * 1664525u + 1013904223u;
    t.push_back(static_cast<std::int32_t>((seed >> 9) % 96));
  }
  return t;
}

// Per-token NLLs of one window, from the forward pass directly.
std::vector<double> token_nlls(const Model& m, const std::vector<std::int32_t>& w) {
  const HeadWeights head = load_head(m);
  const RopeTable rope = build_rope(m.config(), static_cast<std::int64_t>(w.size()));
  Mat h = embed_tokens(head, w);
  for (const auto& layer : m.layout().layers) decoder_layer_forward(m.config(), load_layer(m, layer.index), rope, h);
  const Mat logits = final_logits(m.config(), head, h);
  std::vector<double> out;
  for (Eigen::Index p = 0; p + 1 < logits.rows(); ++p) {
    const Eigen::VectorXd row = logits.row(p).transpose().cast<double>();
    const double lse = row.maxCoeff() + std::log((row.array() - row.maxCoeff()).exp().sum());
    out.push_back(lse - row(w[static_cast<std::size_t>(p + 1)]));
  }
  return out;
}

// A base and a different model on the same shapes (standing in for a quantized one), and 640
// token ids in ids.txt (returned as written).
std::string write_pair(const TempDir& dir) {
  testing::TinyModelSpec spec;
  spec.weight_scale = 0.3f;
  testing::write_tiny_model(dir / "base", spec);
  spec.seed = 2;
  testing::write_tiny_model(dir / "q", spec);
  std::string t;
  for (auto v : ids(640, 9)) t += std::to_string(v) + " ";
  write_file_atomic(dir / "ids.txt", t);
  return t;
}

double sem(const std::vector<double>& x) {  // sample standard deviation / sqrt(n)
  double mean = 0;
  for (double v : x) mean += v;
  mean /= static_cast<double>(x.size());
  double ss = 0;
  for (double v : x) ss += (v - mean) * (v - mean);
  return std::sqrt(ss / static_cast<double>(x.size() - 1) / static_cast<double>(x.size()));
}

TEST(EvalUncertainty, StandardErrorsMatchPerTokenComputation) {
  TempDir dir;
  testing::TinyModelSpec spec;
  spec.seed = 3;
  spec.weight_scale = 0.3f;
  testing::write_tiny_model(dir / "base", spec);
  spec.seed = 4;  // a different model on the same shapes stands in for a quantized one
  spec.weight_scale = 0.3f;
  testing::write_tiny_model(dir / "q", spec);
  const Model base = Model::open(dir / "base"), q = Model::open(dir / "q");
  const auto tokens = ids(96, 5);
  EvalOptions opt;
  opt.ctx = 32;
  const EvalResult r = evaluate(q, tokens, opt, &base);

  std::vector<double> nq, nb, diff;
  for (int w = 0; w < 3; ++w) {
    const std::vector<std::int32_t> win(tokens.begin() + w * 32, tokens.begin() + (w + 1) * 32);
    for (double v : token_nlls(q, win)) nq.push_back(v);
    for (double v : token_nlls(base, win)) nb.push_back(v);
  }
  for (std::size_t i = 0; i < nq.size(); ++i) diff.push_back(nq[i] - nb[i]);
  ASSERT_EQ(static_cast<std::int64_t>(nq.size()), r.tokens_scored);
  // llama-perplexity's sqrt((mean x² − mean²)/(N − 1)) is the sample standard error of the mean.
  const double n = static_cast<double>(nq.size());
  EXPECT_NEAR(r.ppl_stderr / r.ppl, sem(nq), 1e-6);
  EXPECT_NEAR(r.base_ppl_stderr / r.base_ppl, sem(nb), 1e-6);
  EXPECT_NEAR(r.log_ppl_ratio_stderr, sem(diff), 1e-6);
  EXPECT_NEAR(std::exp(r.log_ppl_ratio), r.ppl / r.base_ppl, 1e-9);
  EXPECT_GT(r.ppl_stderr, 0.0);
  EXPECT_LE(r.kl_median, r.kl_p90);
  EXPECT_LE(r.kl_p90, r.kl_p99);
  EXPECT_LE(r.kl_p99, r.kl_max);
  EXPECT_GT(r.kl_stderr, 0.0);
  EXPECT_NEAR(r.top1_stderr, std::sqrt(r.top1_agreement * (1 - r.top1_agreement) / (n - 1)), 1e-12);
}

// Streaming the layers (two resident, the next read in the background, wrapping to layer 0 for
// the next batch) computes exactly what resident layers compute, with a base model too.
TEST(EvalUncertainty, StreamedLayersGiveTheResidentResultsBitForBit) {
  TempDir dir;
  testing::TinyModelSpec spec;
  spec.seed = 3;
  spec.layers = 3;
  testing::write_tiny_model(dir / "base", spec);
  spec.seed = 4;
  testing::write_tiny_model(dir / "q", spec);
  const Model base = Model::open(dir / "base"), q = Model::open(dir / "q");
  const auto tokens = ids(160, 5);
  EvalOptions opt;
  opt.ctx = 32;
  opt.windows_per_batch = 2;  // three batches: every layer is read three times when streaming
  const EvalResult resident = evaluate(q, tokens, opt, &base);
  ASSERT_FALSE(LayerCache(q).streaming());
  opt.resident_layers_budget = 0;
  ASSERT_TRUE(LayerCache(q, 0).streaming());
  const EvalResult streamed = evaluate(q, tokens, opt, &base);
  EXPECT_EQ(streamed.tokens_scored, resident.tokens_scored);
  EXPECT_EQ(streamed.ppl, resident.ppl);
  EXPECT_EQ(streamed.base_ppl, resident.base_ppl);
  EXPECT_EQ(streamed.kl_mean, resident.kl_mean);
  EXPECT_EQ(streamed.top1_agreement, resident.top1_agreement);
  // The memory estimate counts two layers instead of all of them when streaming.
  const std::uint64_t all = eval_memory_estimate(q, 32, 2), two = eval_memory_estimate(q, 32, 2, 0);
  EXPECT_EQ(all - two, (3 - 2) * layer_f32_bytes(q.config()));
  // Asking for layers out of order still gives each its own weights.
  LayerCache cache(q, 0);
  const Mat l2 = cache.get(2).w[0];
  const Mat l0 = cache.get(0).w[0];
  EXPECT_EQ(l0, load_layer(q, 0).w[0]);
  EXPECT_EQ(l2, load_layer(q, 2).w[0]);
  EXPECT_NE(l0, l2);
}

TEST(EvalUncertainty, NoiseAwareGateAndJUnitReport) {
  TempDir dir;
  write_pair(dir);
  const std::string common = "eval " + (dir / "q").string() + " --tokens " + (dir / "ids.txt").string() +
                             " --ctx 64 --base " + (dir / "base").string() + " --max-ppl-increase 0 --json";
  const fs::path report = dir / "report.xml";
  // A zero-percent limit on a different model: fails plainly, and the report says so.
  auto r = run_quant(common + " --junit " + report.string());
  EXPECT_EQ(r.rc, 4) << r.err;
  const std::string xml = read_text_file(report);
  EXPECT_NE(xml.find("<testcase classname=\"quant.eval\" name=\"max-ppl-increase\""), std::string::npos) << xml;
  EXPECT_NE(xml.find("<failure message=\"perplexity"), std::string::npos) << xml;
  EXPECT_NE(xml.find("failures=\"1\""), std::string::npos) << xml;
  const auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["schema"], "quant.eval/1");
  EXPECT_EQ(j["gates"][0]["pass"], false);
  // The report exists: refused without --force (before any work), replaced with it.
  r = run_quant(common + " --junit " + report.string());
  EXPECT_EQ(r.rc, 2) << r.err;
  // A huge sigma requirement: the increase is within its noise, so the gate passes.
  r = run_quant(common + " --gate-sigmas 1000 --junit " + report.string() + " -f");
  EXPECT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(read_text_file(report).find("failures=\"0\""), std::string::npos);
  EXPECT_NE(r.err.find("within 1000 standard errors"), std::string::npos) << r.err;
  // A file quant did not write is never replaced, even with --force.
  write_file_atomic(dir / "mine.xml", "<results/>");
  r = run_quant(common + " --junit " + (dir / "mine.xml").string() + " -f");
  EXPECT_EQ(r.rc, 2);
  EXPECT_EQ(read_text_file(dir / "mine.xml"), "<results/>");
  // Nor an input.
  r = run_quant(common + " --junit " + (dir / "ids.txt").string() + " -f");
  EXPECT_EQ(r.rc, 2);
}

}  // namespace
}  // namespace quant

namespace quant {
namespace {

TEST(EvalBaseLogits, CachedBaseEqualsTwoModelEvaluation) {
  TempDir dir;
  const std::string t = write_pair(dir);
  const std::string text = " --tokens " + (dir / "ids.txt").string() + " --ctx 64 --json";
  const auto two = run_quant("eval " + (dir / "q").string() + text + " --base " + (dir / "base").string());
  ASSERT_EQ(two.rc, 0) << two.err;
  const auto jt = nlohmann::json::parse(two.out);
  for (int k : {96, 8}) {
    const fs::path file = dir / ("base-" + std::to_string(k) + ".bin");
    auto r = run_quant("eval " + (dir / "base").string() + text + " --save-logits " + file.string() + " --logits-k " + std::to_string(k));
    ASSERT_EQ(r.rc, 0) << r.err;
    r = run_quant("eval " + (dir / "q").string() + text + " --base-logits " + file.string());
    ASSERT_EQ(r.rc, 0) << r.err;
    const auto j = nlohmann::json::parse(r.out);
    // Perplexity of the base and top-1 agreement are exact at any k; KL is exact when k covers
    // the vocabulary and a lower bound below it.
    EXPECT_NEAR(j["base_ppl"].get<double>(), jt["base_ppl"].get<double>(), 1e-4 * jt["base_ppl"].get<double>());
    EXPECT_DOUBLE_EQ(j["top1_agreement"].get<double>(), jt["top1_agreement"].get<double>());
    if (k == 96) EXPECT_NEAR(j["kl_mean"].get<double>(), jt["kl_mean"].get<double>(), 1e-5);
    else EXPECT_LE(j["kl_mean"].get<double>(), jt["kl_mean"].get<double>() + 1e-9);
  }
  // Another text: refused, naming the file.
  write_file_atomic(dir / "other.txt", t + " 5 6 7");
  auto r = run_quant("eval " + (dir / "q").string() + " --tokens " + (dir / "other.txt").string() + " --ctx 64 --base-logits " +
                     (dir / "base-96.bin").string());
  EXPECT_NE(r.rc, 0);
  EXPECT_NE(r.err.find("different text"), std::string::npos) << r.err;
  // A truncated file: refused.
  const std::string bytes = read_text_file(dir / "base-96.bin");
  write_file_atomic(dir / "cut.bin", bytes.substr(0, bytes.size() - 100));
  r = run_quant("eval " + (dir / "q").string() + text + " --base-logits " + (dir / "cut.bin").string());
  EXPECT_NE(r.rc, 0);
  EXPECT_NE(r.err.find("truncated"), std::string::npos) << r.err;
  // Both a base model and cached logits: a usage error.
  EXPECT_EQ(run_quant("eval " + (dir / "q").string() + text + " --base " + (dir / "base").string() + " --base-logits " +
                      (dir / "base-96.bin").string()).rc, 2);
  // The saved file is quant's: --force replaces it, and without --force it is never overwritten.
  EXPECT_EQ(run_quant("eval " + (dir / "base").string() + text + " --save-logits " + (dir / "base-8.bin").string()).rc, 2);
  EXPECT_EQ(run_quant("eval " + (dir / "base").string() + text + " --save-logits " + (dir / "base-8.bin").string() + " -f").rc, 0);
}

}  // namespace
}  // namespace quant
