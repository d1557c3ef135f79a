// Per-tensor GGUF types as llama-quantize spells them (issue 27 item 2) and BF16: --tensor-type
// (first match wins, row fallbacks apply), --pure, --output-tensor-type, --token-embedding-type,
// --leave-output-tensor, and --dry-run's plan equal to what is then written. Byte identity with
// llama-quantize itself is checked by hand against a llama.cpp build (docs/formats.md).
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "cli_helpers.h"
#include "fixtures.h"
#include "quant/core/dtype.h"
#include "quant/formats/ggml_quants.h"
#include "quant/io/gguf.h"

namespace quant {
namespace {

using nlohmann::json;
using testing::run_quant;
using testing::TempDir;

// Untied, hidden 256 (whole k-quant blocks) and intermediate 64 (ffn_down rows are not).
fs::path fixture(const TempDir& dir) {
  testing::TinyModelSpec s;
  s.hidden = 256;
  s.intermediate = 64;
  s.heads = 4;
  s.kv_heads = 2;
  s.layers = 2;
  s.vocab = 96;
  s.tied = false;
  testing::write_tiny_model(dir / "m", s);
  testing::write_tiny_tokenizer(dir / "m", 96);
  return dir / "m";
}

// Tensor name → type name of a --dry-run --json plan ("absent" for a tensor it does not list).
struct Types {
  std::map<std::string, std::string> t;
  std::string at(const std::string& name) const {
    const auto it = t.find(name);
    return it == t.end() ? "absent" : it->second;
  }
};
Types types_of(const std::string& out) {
  Types t;
  const json j = json::parse(out);  // kept alive: a range-for over parse(out)["tensors"] would dangle
  for (const auto& x : j["tensors"]) t.t[x["name"].get<std::string>()] = x["type"].get<std::string>();
  return t;
}

TEST(GgufTypes, DryRunPlansExactlyWhatIsWritten) {
  TempDir dir;
  const fs::path m = fixture(dir);
  const std::string out = (dir / "x.gguf").string();
  const auto plan = run_quant("gguf " + m.string() + " -t q4_k_m -o " + out + " --dry-run --json");
  ASSERT_EQ(plan.rc, 0) << plan.err;
  EXPECT_FALSE(fs::exists(out));
  const json p = json::parse(plan.out);
  ASSERT_EQ(run_quant("gguf " + m.string() + " -t q4_k_m -o " + out).rc, 0);
  EXPECT_EQ(p["bytes"].get<std::uint64_t>(), fs::file_size(out));
  const gguf::File f = gguf::File::open(out);
  ASSERT_EQ(p["tensors"].size(), f.tensors.size());
  for (std::size_t i = 0; i < f.tensors.size(); ++i) {
    EXPECT_EQ(p["tensors"][i]["name"], f.tensors[i].name);
    EXPECT_EQ(p["tensors"][i]["type"], gguf::type_info(f.tensors[i].type).name) << f.tensors[i].name;
  }
  // The mixture: output Q6_K; ffn_down's 64-wide rows fall back Q6_K → Q8_0 on the
  // use_more_bits layer (the last of two), Q4_K → Q5_0 on the other.
  const auto t = types_of(plan.out);
  EXPECT_EQ(t.at("output.weight"), "Q6_K");
  EXPECT_EQ(t.at("blk.1.ffn_down.weight"), "Q8_0");
  EXPECT_EQ(t.at("blk.0.ffn_down.weight"), "Q5_0");
  EXPECT_EQ(t.at("blk.0.ffn_gate.weight"), "Q4_K");
}

TEST(GgufTypes, OverridesInLlamaQuantizesOrder) {
  TempDir dir;
  const fs::path m = fixture(dir);
  const std::string base = "gguf " + m.string() + " -t q4_k_m -o " + (dir / "x.gguf").string() + " --dry-run --json ";
  // First matching pattern wins; an override whose blocks do not fit the rows falls back
  // (ffn_down is 64 wide: Q4_K → Q5_0).
  auto r = run_quant(base + "--tensor-type 'attn_(q|k)=q8_0' --tensor-type 'attn=q5_k' --tensor-type ffn_down=q4_k");
  ASSERT_EQ(r.rc, 0) << r.err;
  auto t = types_of(r.out);
  EXPECT_EQ(t.at("blk.1.attn_q.weight"), "Q8_0");
  EXPECT_EQ(t.at("blk.1.attn_k.weight"), "Q8_0");
  EXPECT_EQ(t.at("blk.1.attn_v.weight"), "Q5_K");
  EXPECT_EQ(t.at("blk.1.attn_output.weight"), "Q5_K");
  EXPECT_EQ(t.at("blk.1.ffn_down.weight"), "Q5_0");
  EXPECT_EQ(t.at("blk.1.attn_norm.weight"), "F32");  // norms are never quantized
  // --pure: the base type everywhere the mixture would differ; explicit embedding/output types;
  // --tensor-type patterns still apply.
  r = run_quant(base + "--pure --output-tensor-type bf16 --token-embedding-type q6_k --tensor-type ffn_down=q8_0");
  ASSERT_EQ(r.rc, 0) << r.err;
  t = types_of(r.out);
  EXPECT_EQ(t.at("blk.0.attn_v.weight"), "Q4_K");
  EXPECT_EQ(t.at("output.weight"), "BF16");
  EXPECT_EQ(t.at("token_embd.weight"), "Q6_K");
  EXPECT_EQ(t.at("blk.1.ffn_down.weight"), "Q8_0");
  // --leave-output-tensor: output.weight in the checkpoint's dtype (this fixture is F32).
  r = run_quant(base + "--leave-output-tensor");
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_EQ(types_of(r.out).at("output.weight"), "F32");
  // Refused before any work: an explicit type that cannot store the rows, a bad regex, a bad type.
  r = run_quant(base + "--pure");  // --pure skips the mixture and its fallbacks: Q4_K cannot store 64-wide rows (llama-quantize aborts)
  EXPECT_EQ(r.rc, 2);
  EXPECT_NE(r.err.find("blk.0.ffn_down.weight': rows of 64 are not whole Q4_K blocks"), std::string::npos) << r.err;
  r = run_quant(base + "--token-embedding-type q4_0 --tensor-type 'attn_[=q8_0'");
  EXPECT_EQ(r.rc, 2);
  EXPECT_NE(r.err.find("not a regular expression"), std::string::npos) << r.err;
  r = run_quant(base + "--output-tensor-type iq2_xxs");
  EXPECT_EQ(r.rc, 2);
  EXPECT_NE(r.err.find("--output-tensor-type 'iq2_xxs': unknown type"), std::string::npos) << r.err;
}

TEST(GgufTypes, Bf16RoundsToNearestEvenAndReadsBack) {
  const float x[4] = {1.0f, 1.00390625f /* halfway: rounds to even 1.0 */, 1.01171875f /* halfway: up */, -3.14159f};
  std::uint8_t q[8];
  gguf::quantize_row(gguf::GgmlType::BF16, x, 4, nullptr, q);
  float y[4];
  gguf::dequantize_row(gguf::GgmlType::BF16, q, 4, y);
  EXPECT_EQ(y[0], 1.0f);
  EXPECT_EQ(y[1], 1.0f);
  EXPECT_EQ(y[2], 1.015625f);
  EXPECT_EQ(y[3], bf16_to_f32(f32_to_bf16(-3.14159f)));
  TempDir dir;
  const fs::path m = fixture(dir);
  const std::string out = (dir / "b.gguf").string();
  ASSERT_EQ(run_quant("gguf " + m.string() + " -t bf16 -o " + out).rc, 0);
  const gguf::File f = gguf::File::open(out);
  EXPECT_EQ(f.find("general.file_type")->u, 32u);  // LLAMA_FTYPE_MOSTLY_BF16
  EXPECT_EQ(f.tensor("blk.0.attn_q.weight").type, gguf::GgmlType::BF16);
  EXPECT_EQ(f.tensor("blk.0.attn_norm.weight").type, gguf::GgmlType::F32);
}

}  // namespace
}  // namespace quant
