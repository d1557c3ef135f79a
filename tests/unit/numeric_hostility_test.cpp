// Numeric hostility, every method end to end (docs/cli.md, "Numeric edge cases"): NaN/±inf
// weights are refused naming the tensor; weights so large that calibration activations
// overflow are refused naming the layer; scales outside float16 in a float16-scaled format are
// refused naming the tensor; subnormal and all-zero weights (and the all-zero activations the
// latter cause) quantize to finite outputs. A refusal exits 3 and leaves no output behind.
#include <gtest/gtest.h>

#include <cmath>
#include <nlohmann/json.hpp>

#include "cli_helpers.h"
#include "fixtures.h"
#include "quant/io/io.h"
#include "quant/io/safetensors.h"

namespace quant {
namespace {

using testing::run_quant;
using testing::TempDir;

// Rewrites `dir`'s checkpoint with `edit` applied to every tensor whose name contains `part`.
void edit_tensors(const fs::path& dir, const std::string& part, const std::function<void(std::vector<float>&)>& edit) {
  const fs::path tmp = dir.string() + ".edit";
  fs::create_directories(tmp);
  {
    const TensorStore store = TensorStore::open(dir);
    SafetensorsWriter w(tmp);
    for (const auto& name : store.names()) {
      std::vector<float> v = store.read_f32(name);
      if (name.find(part) != std::string::npos) edit(v);
      w.add_f32(name, DType::F32, store.get(name).shape, v);
    }
    w.finish();
  }
  fs::rename(tmp / "model.safetensors", dir / "model.safetensors");
  fs::remove_all(tmp);
}

struct Method {
  const char* name;
  std::string args;  // after the model and -o
  bool dense;        // output is a checkpoint quant eval can read
};

const std::vector<Method>& methods() {
  static const std::string calib = " --calib-tokens CALIB --nsamples 8 --seqlen 64";
  static const std::vector<Method> m = {
      {"rtn", "rtn MODEL -o OUT -g 32 --format dense", true},
      {"rtn_gptq_format", "rtn MODEL -o OUT -g 32 --format gptq", true},
      {"gptq", "gptq MODEL -o OUT -g 32 --format dense" + calib, true},
      {"awq", "awq MODEL -o OUT -g 32 --format dense" + calib, true},
      {"kmeans", "kmeans MODEL -o OUT --bits 3" + calib, true},
      {"kmeans_dense", "kmeans MODEL -o OUT --bits 3 --format dense" + calib, true},
      {"gguf", "gguf MODEL -o OUT -t q4_k_m" + calib, false},
  };
  return m;
}

struct NumericHostility : ::testing::Test {
  TempDir dir;
  std::string model, calib;
  void SetUp() override {
    testing::TinyModelSpec spec;
    spec.kv_heads = 4;
    testing::write_tiny_model(dir / "m", spec);
    testing::write_tiny_tokenizer(dir / "m", spec.vocab);
    model = (dir / "m").string();
    std::string t;
    for (int i = 0; i < 600; ++i) t += std::to_string((i * 13 + 5) % 96) + " ";
    write_file_atomic(dir / "calib.txt", t);
    calib = (dir / "calib.txt").string();
  }
  testing::CommandResult run(const Method& m, const std::string& out) {
    std::string a = m.args;
    for (auto [k, v] : {std::pair<std::string, std::string>{"MODEL", model}, {"OUT", out}, {"CALIB", calib}}) {
      if (a.find(k) != std::string::npos) a.replace(a.find(k), k.size(), v);
    }
    return run_quant(a);
  }
  // Every method refuses with exit 3, naming `what`; nothing is left under the output names.
  void expect_refused(const std::string& what, const std::string& why, const std::vector<std::string>& only = {}) {
    for (const Method& m : methods()) {
      if (!only.empty() && std::find(only.begin(), only.end(), m.name) == only.end()) continue;
      const std::string out = (dir / (std::string("out-") + m.name)).string();
      const auto r = run(m, out);
      EXPECT_EQ(r.rc, 3) << m.name << ": " << r.err;
      EXPECT_NE(r.err.find(what), std::string::npos) << m.name << ": " << r.err;
      EXPECT_NE(r.err.find(why), std::string::npos) << m.name << ": " << r.err;
      EXPECT_FALSE(fs::exists(out)) << m.name;
      EXPECT_FALSE(fs::exists(out + ".partial")) << m.name;
    }
  }
  // Every method succeeds and the result evaluates to a finite perplexity.
  void expect_finite() {
    for (const Method& m : methods()) {
      const std::string out = (dir / (std::string("out-") + m.name)).string();
      const auto r = run(m, out);
      ASSERT_EQ(r.rc, 0) << m.name << ": " << r.err;
      if (!m.dense) continue;
      const auto e = run_quant("eval " + out + " --tokens " + calib + " --ctx 64 --json");
      ASSERT_EQ(e.rc, 0) << m.name << ": " << e.err;
      EXPECT_TRUE(std::isfinite(nlohmann::json::parse(e.out)["ppl"].get<double>())) << m.name << ": " << e.out;
    }
  }
};

TEST_F(NumericHostility, NanWeightIsRefusedNamingTheTensor) {
  edit_tensors(model, "layers.1.mlp.up_proj", [](auto& v) { v[10] = std::nanf(""); });
  expect_refused("model.layers.1.mlp.up_proj.weight", "non-finite");
}

TEST_F(NumericHostility, InfiniteWeightIsRefusedNamingTheTensor) {
  edit_tensors(model, "layers.0.self_attn.k_proj", [](auto& v) { v[3] = -INFINITY; });
  expect_refused("model.layers.0.self_attn.k_proj.weight", "non-finite");
}

TEST_F(NumericHostility, OverflowingActivationsAreRefusedNamingTheLayer) {
  // Layer 0's up projection (finite weights of 1e30) drives down_proj's inputs past float32.
  edit_tensors(model, "layers.0.mlp.up_proj", [](auto& v) { for (auto& x : v) x *= 1e30f; });
  expect_refused("layer 0: calibration activations into model.layers.0.mlp.down_proj", "not finite",
                 {"awq", "kmeans_dense", "gguf"});
  // GPTQ's error compensation on the 1e30 weights themselves overflows first.
  expect_refused("model.layers.0.mlp.up_proj.weight: GPTQ's error compensation overflowed float32", "use RTN", {"gptq"});
  // In the lut format the up projection's own codebook (float16) is refused first.
  expect_refused("model.layers.0.mlp.up_proj.weight", "does not fit float16", {"kmeans"});
}

TEST_F(NumericHostility, ScaleBeyondFloat16IsRefusedInFloat16Formats) {
  edit_tensors(model, "layers.1.mlp.down_proj", [](auto& v) { for (auto& x : v) x *= 1e30f; });
  expect_refused("model.layers.1.mlp.down_proj.weight': a group scale", "does not fit float16", {"rtn_gptq_format"});
}

TEST_F(NumericHostility, SubnormalWeightsQuantizeToFiniteOutputs) {
  edit_tensors(model, "layers.1.self_attn.v_proj", [](auto& v) { for (auto& x : v) x *= 1e-39f; });
  expect_finite();
}

TEST_F(NumericHostility, AllZeroLayerAndItsZeroActivationsQuantizeToFiniteOutputs) {
  // Zero gate/up projections make down_proj's calibration inputs all zero.
  for (const char* t : {"layers.0.mlp.gate_proj", "layers.0.mlp.up_proj", "layers.1.self_attn.o_proj"}) {
    edit_tensors(model, t, [](auto& v) { std::fill(v.begin(), v.end(), 0.0f); });
  }
  expect_finite();
}

}  // namespace
}  // namespace quant
