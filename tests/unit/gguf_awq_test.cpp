// GGUF importance from llama.cpp imatrix files, and `--from-awq` (AWQ's export-compatible
// scaling applied before the GGUF quantization).
#include <gtest/gtest.h>

#include <cstring>
#include <nlohmann/json.hpp>

#include "cli_helpers.h"
#include "fixtures.h"
#include "quant/formats/ggml_quants.h"
#include "quant/core/error.h"
#include "quant/formats/gguf_export.h"
#include "quant/io/io.h"
#include "quant/io/safetensors.h"

namespace quant::gguf {
namespace {

using testing::TempDir;

void write_imatrix(const fs::path& path, const std::string& type, float count) {
  Writer w;
  w.set("general.type", Value::str(type));
  w.add_tensor("blk.0.attn_q.weight.in_sum2", {4}, GgmlType::F32);
  w.add_tensor("blk.0.attn_q.weight.counts", {1}, GgmlType::F32);
  const float sums[4] = {2, 4, 6, 8};
  w.write(path, [&](std::size_t i) {
    std::vector<std::uint8_t> b(i == 0 ? 16 : 4);
    std::memcpy(b.data(), i == 0 ? sums : &count, b.size());
    return b;
  });
}

TEST(GgufImatrix, ReadsMeanSquaresAndRejectsBadFiles) {
  TempDir dir;
  write_imatrix(dir / "ok.gguf", "imatrix", 2.0f);
  const auto imp = read_imatrix(dir / "ok.gguf");
  ASSERT_EQ(imp.size(), 1u);
  EXPECT_EQ(imp.at("blk.0.attn_q.weight"), (std::vector<float>{1, 2, 3, 4}));
  write_imatrix(dir / "zero.gguf", "imatrix", 0.0f);
  EXPECT_THROW(read_imatrix(dir / "zero.gguf"), Error);
  write_imatrix(dir / "model.gguf", "model", 2.0f);
  try {
    read_imatrix(dir / "model.gguf");
    FAIL() << "a non-imatrix GGUF was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("model.gguf"), std::string::npos) << e.what();
  }
}

double eval_ppl(const fs::path& model, const fs::path& tokens) {
  const auto r = testing::run_quant("eval " + model.string() + " --tokens " + tokens.string() + " --ctx 64 --json");
  EXPECT_EQ(r.rc, 0) << r.err;
  return nlohmann::json::parse(r.out)["ppl"].get<double>();
}

TEST(GgufFromAwq, ScaledFloatModelComputesTheSameFunction) {
  TempDir dir;
  testing::TinyModelSpec spec;
  spec.kv_heads = 4;  // no GQA: the v→o mapping is searched too
  testing::write_tiny_model(dir / "m", spec);
  testing::write_tiny_tokenizer(dir / "m", spec.vocab);
  std::string ids;
  for (int i = 0; i < 2000; ++i) ids += std::to_string((i * 17 + 3) % 96) + " ";
  write_file_atomic(dir / "c.txt", ids);
  const std::string calib = " --calib-tokens " + (dir / "c.txt").string() + " --nsamples 4 --seqlen 64";
  // Without clipping, AWQ's export-compatible output is the same function with other weights.
  auto r = testing::run_quant("awq " + (dir / "m").string() + calib + " --group-size 32 --no-clip --export-compatible -o " + (dir / "s").string());
  ASSERT_EQ(r.rc, 0) << r.err;
  const auto src = TensorStore::open(dir / "m"), scaled = TensorStore::open(dir / "s");
  EXPECT_NE(src.read_f32("model.layers.0.input_layernorm.weight"), scaled.read_f32("model.layers.0.input_layernorm.weight"));
  EXPECT_NE(src.read_f32("model.layers.0.mlp.gate_proj.weight"), scaled.read_f32("model.layers.0.mlp.gate_proj.weight"));
  EXPECT_NEAR(eval_ppl(dir / "s", dir / "c.txt"), eval_ppl(dir / "m", dir / "c.txt"), 1e-3 * eval_ppl(dir / "m", dir / "c.txt"));
  // gguf --from-awq: the GGUF carries the scaled norms; the scratch checkpoint is gone.
  r = testing::run_quant("gguf " + (dir / "m").string() + calib + " -t q4_0 --from-awq -o " + (dir / "a.gguf").string());
  ASSERT_EQ(r.rc, 0) << r.err;
  r = testing::run_quant("gguf " + (dir / "m").string() + " -t q4_0 -o " + (dir / "p.gguf").string());
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_FALSE(fs::exists(dir / "a.gguf.awq-scaled"));
  const File a = File::open(dir / "a.gguf"), p = File::open(dir / "p.gguf");
  EXPECT_EQ(a.find("general.name")->s, "m");
  EXPECT_EQ(gguf::dequantize_tensor(p, "blk.0.attn_norm.weight"), src.read_f32("model.layers.0.input_layernorm.weight"));
  EXPECT_NE(gguf::dequantize_tensor(a, "blk.0.attn_norm.weight"), gguf::dequantize_tensor(p, "blk.0.attn_norm.weight"));
  // F16 has nothing for AWQ to protect.
  r = testing::run_quant("gguf " + (dir / "m").string() + calib + " -t f16 --from-awq -o " + (dir / "f.gguf").string());
  EXPECT_NE(r.rc, 0);
  EXPECT_NE(r.err.find("--from-awq needs a quantized GGUF type"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(dir / "f.gguf"));
}

}  // namespace
}  // namespace quant::gguf
