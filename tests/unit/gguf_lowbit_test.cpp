// Q2_K, Q3_K, IQ4_NL, IQ4_XS and the Q2_K/Q3_K/IQ4 mixes (issue 27 item 1): a block computed by
// hand, code ranges and reconstruction error as properties, and llama_tensor_get_type's rules
// for each mix through --dry-run. Byte identity with llama-quantize is checked by hand against a
// llama.cpp build (docs/formats.md lists the runs).
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include <nlohmann/json.hpp>

#include "cli_helpers.h"
#include "fixtures.h"
#include "quant/core/dtype.h"
#include "quant/formats/ggml_quants.h"
#include "quant/io/gguf.h"

namespace quant {
namespace {

using gguf::GgmlType;
using nlohmann::json;
using testing::run_quant;
using testing::TempDir;

// x = [1.27, 0 × 31]: d = 1.27/127, then the least-squares scale 1.27/113 (every candidate
// ties, so the first stays); codes 15 (113) and 8 (the grid value 1, nearest 0).
TEST(GgufLowbit, Iq4NlBlockByHand) {
  float x[32] = {1.27f};
  std::uint8_t q[18];
  gguf::quantize_row(GgmlType::IQ4_NL, x, 32, nullptr, q);
  std::uint16_t d;
  std::memcpy(&d, q, 2);
  EXPECT_EQ(d, f32_to_f16(1.27f / 113.f));
  EXPECT_EQ(q[2], 0x8F);  // L[0] = 15, L[16] = 8
  for (int j = 3; j < 18; ++j) EXPECT_EQ(q[j], 0x88) << j;
  float y[32];
  gguf::dequantize_row(GgmlType::IQ4_NL, q, 32, y);
  EXPECT_NEAR(y[0], 1.27f, 1e-3f);
  EXPECT_FLOAT_EQ(y[1], f16_to_f32(d));  // grid value 1 times d
}

// Every type reconstructs Gaussian rows with a relative RMS error that shrinks with its bits,
// and an importance-weighted search never has a worse weighted error than the plain one on the
// columns it weights most... within the bound of its bit width.
TEST(GgufLowbit, ReconstructionErrorFollowsTheBitWidth) {
  std::mt19937 rng(5);
  std::normal_distribution<float> g(0.f, 1.f);
  const int n = 1024;
  std::vector<float> x(n);
  for (float& v : x) v = g(rng);
  auto rel_rms = [&](GgmlType t, const float* imp) {
    std::vector<std::uint8_t> q(gguf::data_bytes(t, n));
    gguf::quantize_row(t, x.data(), n, imp, q.data());
    std::vector<float> y(n);
    gguf::dequantize_row(t, q.data(), n, y.data());
    double e = 0, s = 0;
    for (int i = 0; i < n; ++i) {
      e += (y[i] - x[i]) * (y[i] - x[i]);
      s += x[i] * x[i];
    }
    return std::sqrt(e / s);
  };
  const double q2 = rel_rms(GgmlType::Q2_K, nullptr), q3 = rel_rms(GgmlType::Q3_K, nullptr);
  const double nl = rel_rms(GgmlType::IQ4_NL, nullptr), xs = rel_rms(GgmlType::IQ4_XS, nullptr), q4 = rel_rms(GgmlType::Q4_K, nullptr);
  EXPECT_LT(q2, 0.45);
  EXPECT_LT(q3, q2);
  EXPECT_LT(q3, 0.25);
  EXPECT_LT(nl, q3);
  EXPECT_LT(xs, 0.13);
  EXPECT_NEAR(xs, nl, 0.02);  // the same grid; XS only rounds the sub-block scales to 6 bits
  EXPECT_NEAR(q4, nl, 0.03);
  std::vector<float> imp(n, 1.0f);
  for (GgmlType t : {GgmlType::Q2_K, GgmlType::Q3_K, GgmlType::IQ4_NL, GgmlType::IQ4_XS}) {
    EXPECT_LT(rel_rms(t, imp.data()), 1.15 * rel_rms(t, nullptr) + 0.02) << gguf::type_info(t).name;
  }
}

TEST(GgufLowbit, ZeroBlocksStayZero) {
  std::vector<float> x(256, 0.f);
  for (GgmlType t : {GgmlType::Q2_K, GgmlType::Q3_K, GgmlType::IQ4_NL, GgmlType::IQ4_XS}) {
    std::vector<std::uint8_t> q(gguf::data_bytes(t, 256));
    gguf::quantize_row(t, x.data(), 256, nullptr, q.data());
    std::vector<float> y(256, 1.f);
    gguf::dequantize_row(t, q.data(), 256, y.data());
    for (float v : y) EXPECT_EQ(v, 0.f) << gguf::type_info(t).name;
  }
}

std::map<std::string, std::string> plan(const fs::path& m, const std::string& type, const std::string& extra = "") {
  const auto r = run_quant("gguf " + m.string() + " -t " + type + " -o " + (m.parent_path() / "x.gguf").string() + " --dry-run --json " + extra);
  EXPECT_EQ(r.rc, 0) << r.err;
  std::map<std::string, std::string> t;
  if (r.rc != 0) return t;
  const json j = json::parse(r.out);
  for (const auto& x : j["tensors"]) t[x["name"].get<std::string>()] = x["type"].get<std::string>();
  return t;
}

// llama_tensor_get_type's branches for the new mixes on a 16-layer model (n/16 = 1, n/8 = 2)
// with grouped-query attention of 4 (8 heads, 2 KV heads).
TEST(GgufLowbit, MixRulesPerTensor) {
  TempDir dir;
  testing::TinyModelSpec s;
  s.hidden = 256;
  s.intermediate = 256;
  s.heads = 8;
  s.kv_heads = 2;
  s.layers = 16;
  s.vocab = 96;
  s.tied = false;
  testing::write_tiny_model(dir / "m", s);
  testing::write_tiny_tokenizer(dir / "m", 96);
  const fs::path m = dir / "m";
  auto t = plan(m, "q2_k");
  EXPECT_EQ(t["blk.0.attn_v.weight"], "Q4_K");  // gqa ≥ 4
  EXPECT_EQ(t["blk.0.ffn_down.weight"], "Q3_K");
  EXPECT_EQ(t["blk.0.attn_output.weight"], "Q3_K");
  EXPECT_EQ(t["blk.0.attn_q.weight"], "Q2_K");
  EXPECT_EQ(t["output.weight"], "Q6_K");
  t = plan(m, "q3_k_m");
  EXPECT_EQ(t["blk.1.attn_v.weight"], "Q5_K");  // the first two attn_v
  EXPECT_EQ(t["blk.2.attn_v.weight"], "Q4_K");
  EXPECT_EQ(t["blk.0.ffn_down.weight"], "Q5_K");  // i < n/16
  EXPECT_EQ(t["blk.1.ffn_down.weight"], "Q4_K");
  EXPECT_EQ(t["blk.5.attn_output.weight"], "Q4_K");
  EXPECT_EQ(t["blk.5.ffn_up.weight"], "Q3_K");
  t = plan(m, "q3_k_l");
  EXPECT_EQ(t["blk.9.attn_v.weight"], "Q5_K");
  EXPECT_EQ(t["blk.9.ffn_down.weight"], "Q5_K");
  EXPECT_EQ(t["blk.9.attn_output.weight"], "Q5_K");
  t = plan(m, "q3_k_s");
  EXPECT_EQ(t["blk.9.attn_v.weight"], "Q3_K");
  EXPECT_EQ(t["blk.9.ffn_down.weight"], "Q3_K");
  t = plan(m, "iq4_xs");
  EXPECT_EQ(t["blk.3.attn_v.weight"], "Q5_K");      // gqa ≥ 4
  EXPECT_EQ(t["blk.1.ffn_down.weight"], "Q5_K");    // i < n/8 without an imatrix
  EXPECT_EQ(t["blk.2.ffn_down.weight"], "IQ4_XS");
  t = plan(m, "iq4_xs", "--calib " + (m / "config.json").string());  // with an imatrix: no ffn_down bump
  EXPECT_EQ(t["blk.1.ffn_down.weight"], "IQ4_XS");
  // Q2_K_S is refused without importance, as llama-quantize refuses it.
  const auto r = run_quant("gguf " + m.string() + " -t q2_k_s -o " + (dir / "y.gguf").string());
  EXPECT_EQ(r.rc, 2);
  EXPECT_NE(r.err.find("q2_k_s needs importance weights"), std::string::npos) << r.err;
  t = plan(m, "q2_k_s", "--calib " + (m / "config.json").string());
  EXPECT_EQ(t["blk.1.ffn_down.weight"], "Q4_K");  // i < n/8
  EXPECT_EQ(t["blk.2.ffn_down.weight"], "Q2_K");
  EXPECT_EQ(t["blk.2.attn_v.weight"], "Q4_K");
}

// Rows that are not whole 256-blocks: Q2_K/Q3_K/IQ4_XS fall back to IQ4_NL, then F16.
TEST(GgufLowbit, FallbacksForShortRows) {
  TempDir dir;
  testing::TinyModelSpec s;
  s.hidden = 64;
  s.intermediate = 96;  // ffn_down rows: 96 = 3 × 32; attention rows: 64
  s.layers = 2;
  s.vocab = 96;
  testing::write_tiny_model(dir / "m", s);
  testing::write_tiny_tokenizer(dir / "m", 96);
  auto t = plan(dir / "m", "q3_k_s");
  EXPECT_EQ(t["blk.0.attn_q.weight"], "IQ4_NL");
  EXPECT_EQ(t["blk.0.ffn_down.weight"], "IQ4_NL");
  EXPECT_EQ(t["token_embd.weight"], "Q8_0");  // tied: the output rule
}

}  // namespace
}  // namespace quant
