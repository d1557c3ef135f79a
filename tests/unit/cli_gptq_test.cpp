// quant gptq end to end on a generated model with generated calibration ids.
#include <gtest/gtest.h>

#include <cstring>
#include <nlohmann/json.hpp>

#include "cli_helpers.h"
#include "fixtures.h"
#include "quant/io/io.h"
#include "quant/io/safetensors.h"

namespace quant {
namespace {

using nlohmann::json;
using testing::run_quant;
using testing::TempDir;

struct GptqCli : ::testing::Test {
  TempDir dir;
  std::string model, calib;
  void SetUp() override {
    testing::TinyModelSpec spec;
    spec.kv_heads = 4;
    spec.dtype = DType::F16;
    testing::write_tiny_model(dir / "m", spec);
    model = (dir / "m").string();
    std::string t;
    for (int i = 0; i < 3000; ++i) t += std::to_string((i * 31 + i / 7) % 96) + " ";
    write_file_atomic(dir / "calib.txt", t);
    calib = (dir / "calib.txt").string();
  }
  std::string common() const { return " --calib-tokens " + calib + " --nsamples 8 --seqlen 64 --group-size 32 "; }
};

TEST_F(GptqCli, ActOrderCheckpointWithLossesBelowRtn) {
  const std::string out = (dir / "q").string();
  const auto r = run_quant("gptq " + model + common() + "--act-order -o " + out + " --json");
  ASSERT_EQ(r.rc, 0) << r.err;
  const json rep = json::parse(r.out);
  EXPECT_EQ(rep["method"], "gptq");
  EXPECT_EQ(rep["n_quantized"], 14);
  for (const auto& t : rep["tensors"]) {
    ASSERT_TRUE(t.contains("extra")) << t.dump();
    EXPECT_LE(t["extra"]["gptq_loss"].get<double>(), t["extra"]["rtn_loss"].get<double>()) << t["name"];
  }
  const json q = json::parse(read_text_file(fs::path(out) / "config.json"))["quantization_config"];
  EXPECT_EQ(q["desc_act"], true);
  EXPECT_EQ(q["damp_percent"], 0.01);
  EXPECT_EQ(q["true_sequential"], true);
  // act-order permutes g_idx.
  const auto store = TensorStore::open(out);
  const auto gi = store.bytes("model.layers.0.mlp.down_proj.g_idx");
  std::vector<std::int32_t> g(gi.size() / 4);
  std::memcpy(g.data(), gi.data(), gi.size());
  bool trivial = true;
  for (std::size_t j = 0; j < g.size(); ++j) trivial &= g[j] == static_cast<std::int32_t>(j / 32);
  EXPECT_FALSE(trivial);
  EXPECT_EQ(run_quant("eval " + out + " --tokens " + calib + " --ctx 64").rc, 0);
}

TEST_F(GptqCli, IdenticalOutputForAnyThreadCount) {
  const auto a = run_quant("-t 1 gptq " + model + common() + "-o " + (dir / "a").string());
  const auto b = run_quant("-t 2 gptq " + model + common() + "-o " + (dir / "b").string());
  ASSERT_EQ(a.rc, 0) << a.err;
  ASSERT_EQ(b.rc, 0) << b.err;
  EXPECT_EQ(read_text_file(dir / "a" / "model.safetensors"), read_text_file(dir / "b" / "model.safetensors"));
}

TEST_F(GptqCli, AwqFormatRefusesActOrder) {
  const auto r = run_quant("gptq " + model + common() + "--act-order --format awq -o " + (dir / "q").string());
  EXPECT_EQ(r.rc, 2);
  EXPECT_NE(r.err.find("act-order"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(dir / "q.partial"));
}

TEST_F(GptqCli, CalibrationShorterThanAWindow) {
  write_file_atomic(dir / "short.txt", "1 2 3 4");
  const auto r = run_quant("gptq " + model + " --calib-tokens " + (dir / "short.txt").string() + " --seqlen 64 -o " + (dir / "q").string());
  EXPECT_EQ(r.rc, 3);
  EXPECT_NE(r.err.find("shorter than one calibration window"), std::string::npos) << r.err;
}

}  // namespace
}  // namespace quant
