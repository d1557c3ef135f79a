// quant rtn end to end on generated models: formats load back, configs are right, bad input
// fails cleanly without leaving output behind.
#include <gtest/gtest.h>

#include <sys/resource.h>

#include <fstream>
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

struct RtnCli : ::testing::Test {
  TempDir dir;
  std::string model, ids;
  void SetUp() override {
    testing::TinyModelSpec spec;
    spec.dtype = DType::F16;
    spec.kv_heads = 4;  // k/v outputs 32: every bit width packs
    testing::write_tiny_model(dir / "m", spec);
    model = (dir / "m").string();
    std::string t;
    for (int i = 0; i < 400; ++i) t += std::to_string((i * 13 + 5) % 96) + " ";
    write_file_atomic(dir / "ids.txt", t);
    ids = (dir / "ids.txt").string();
  }
  double ppl(const std::string& m) {
    const auto r = run_quant("eval " + m + " --tokens " + ids + " --ctx 64 --json");
    EXPECT_EQ(r.rc, 0) << r.err;
    return json::parse(r.out)["ppl"].get<double>();
  }
};

TEST_F(RtnCli, DenseGptqAndAwqGiveTheSamePerplexity) {
  for (const char* f : {"dense", "gptq", "awq"}) {
    const auto r = run_quant(std::string("rtn ") + model + " -o " + (dir / f).string() + " --bits 4 --group-size 32 --no-sym --format " + f + " --json");
    ASSERT_EQ(r.rc, 0) << r.err;
    const auto j = json::parse(r.out);
    EXPECT_EQ(j["n_quantized"], 14);
    EXPECT_NEAR(j["bpw_quantized"].get<double>(), 4 + 20.0 / 32, 1e-9);
  }
  const double dense = ppl((dir / "dense").string()), gptq = ppl((dir / "gptq").string()), awq = ppl((dir / "awq").string());
  EXPECT_EQ(gptq, dense);  // packed formats dequantize in the model's dtype (F16), as dense stores
  EXPECT_EQ(gptq, awq);  // same codes, scales and zeros, two layouts
  EXPECT_NE(dense, ppl(model));
}

TEST_F(RtnCli, GptqConfigAndTensors) {
  const std::string out = (dir / "q").string();
  auto r = run_quant("rtn " + model + " -o " + out + " --bits 3 --group-size 32 --sym --rule 'down_proj=bits:8'");
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_EQ(r.out, out + "\n");
  const json c = json::parse(read_text_file(fs::path(out) / "config.json"));
  const json q = c["quantization_config"];
  EXPECT_EQ(q["quant_method"], "gptq");
  EXPECT_EQ(q["bits"], 3);
  EXPECT_EQ(q["group_size"], 32);
  EXPECT_EQ(q["sym"], true);
  EXPECT_EQ(q["desc_act"], false);
  EXPECT_EQ(q["checkpoint_format"], "gptq");
  EXPECT_EQ(q["dynamic"]["+:^model\\.layers\\.0\\.mlp\\.down_proj$"]["bits"], 8);
  EXPECT_EQ(json::parse(read_text_file(fs::path(out) / "quantize_config.json")), q);
  const auto store = TensorStore::open(out);
  const auto& qw = store.get("model.layers.0.self_attn.q_proj.qweight");
  EXPECT_EQ(qw.dtype, DType::I32);
  EXPECT_EQ(qw.shape, (std::vector<std::int64_t>{32 * 3 / 32, 32}));
  EXPECT_EQ(store.get("model.layers.0.mlp.down_proj.qweight").shape, (std::vector<std::int64_t>{64 * 8 / 32, 32}));
  EXPECT_EQ(store.get("model.layers.0.self_attn.k_proj.scales").dtype, DType::F16);
  EXPECT_EQ(store.get("model.layers.0.self_attn.k_proj.qzeros").shape, (std::vector<std::int64_t>{1, 32 * 3 / 32}));
  EXPECT_FALSE(store.contains("model.layers.0.self_attn.q_proj.weight"));
  EXPECT_TRUE(store.contains("model.embed_tokens.weight"));
  EXPECT_TRUE(fs::exists(fs::path(out) / "quant_summary.json"));
  // The quantized checkpoint inspects and evaluates.
  r = run_quant("inspect --json " + out);
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_EQ(json::parse(r.out)["quantization_config"]["bits"], 3);
}

TEST_F(RtnCli, RefusesToOverwriteWithoutForce) {
  const std::string out = (dir / "q").string();
  ASSERT_EQ(run_quant("rtn " + model + " -o " + out + " --format dense").rc, 0);
  auto r = run_quant("rtn " + model + " -o " + out + " --format dense");
  EXPECT_EQ(r.rc, 2);
  EXPECT_NE(r.err.find("--force"), std::string::npos) << r.err;
  EXPECT_EQ(run_quant("rtn " + model + " -o " + out + " --format dense --force").rc, 0);
}

TEST_F(RtnCli, WriteFailureIsAnIoErrorAndLeavesNoOutput) {
  // A 16 KiB file-size limit (as `ulimit -f 16` would set) for the child: its writes fail with
  // EFBIG past it, as on a full disk.
  rlimit old{};
  ASSERT_EQ(getrlimit(RLIMIT_FSIZE, &old), 0);
  rlimit small = old;
  small.rlim_cur = 16 * 1024;
  ASSERT_EQ(setrlimit(RLIMIT_FSIZE, &small), 0);
  const auto r = run_quant("rtn " + model + " -o " + (dir / "full").string() + " --format dense");
  ASSERT_EQ(setrlimit(RLIMIT_FSIZE, &old), 0);
  EXPECT_EQ(r.rc, 5) << r.err;
  EXPECT_NE(r.err.find("error:"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(dir / "full"));
  EXPECT_FALSE(fs::exists(dir / "full.partial"));
}

TEST_F(RtnCli, NanWeightNamesTheTensorAndLeavesNoOutput) {
  // Overwrite one value of one weight with NaN (F16 0x7E00).
  const fs::path st = dir / "m" / "model.safetensors";
  const SafetensorsFile f(st);
  const TensorInfo* t = f.find("model.layers.1.mlp.up_proj.weight");
  ASSERT_NE(t, nullptr);
  std::uint64_t header = 0;
  {
    std::ifstream in(st, std::ios::binary);
    in.read(reinterpret_cast<char*>(&header), 8);
  }
  {
    std::fstream io(st, std::ios::binary | std::ios::in | std::ios::out);
    io.seekp(static_cast<std::streamoff>(8 + header + t->offset + 2 * 10));
    const std::uint16_t nan = 0x7E00;
    io.write(reinterpret_cast<const char*>(&nan), 2);
  }
  const std::string out = (dir / "q").string();
  const auto r = run_quant("rtn " + model + " -o " + out);
  EXPECT_EQ(r.rc, 3);
  EXPECT_NE(r.err.find("model.layers.1.mlp.up_proj.weight"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("non-finite"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(out));
  EXPECT_FALSE(fs::exists(out + ".partial"));
}

TEST_F(RtnCli, UnsupportedShapesFailBeforeWritingOrAreKept) {
  testing::TinyModelSpec spec;
  spec.intermediate = 40;  // not a multiple of 32
  testing::write_tiny_model(dir / "odd", spec);
  const std::string out = (dir / "q").string();
  auto r = run_quant("rtn " + (dir / "odd").string() + " -o " + out + " --group-size 32");
  EXPECT_EQ(r.rc, 3);
  EXPECT_NE(r.err.find("mlp.down_proj.weight': 40 input features"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("--skip-unsupported"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(out + ".partial"));
  r = run_quant("rtn " + (dir / "odd").string() + " -o " + out + " --group-size 32 --skip-unsupported --json");
  ASSERT_EQ(r.rc, 0) << r.err;
  const json j = json::parse(r.out);
  EXPECT_EQ(j["n_kept"], 2);
  EXPECT_EQ(j["n_quantized"], 12);
  const json q = json::parse(read_text_file(fs::path(out) / "config.json"))["quantization_config"];
  EXPECT_TRUE(q["dynamic"].contains("-:^model\\.layers\\.1\\.mlp\\.down_proj$"));
  EXPECT_EQ(run_quant("eval " + out + " --tokens " + ids + " --ctx 64").rc, 0);
}

TEST_F(RtnCli, BadValuesAreUsageErrors) {
  EXPECT_EQ(run_quant("rtn " + model + " --bits 9 -o " + (dir / "x").string()).rc, 2);
  EXPECT_EQ(run_quant("rtn " + model + " --group-size 0 -o " + (dir / "x").string()).rc, 2);
  EXPECT_EQ(run_quant("rtn " + model + " --format gguf -o " + (dir / "x").string()).rc, 2);
  EXPECT_EQ(run_quant("rtn " + model + " --bits 3 --format awq -o " + (dir / "x").string()).rc, 3);
}

}  // namespace
}  // namespace quant
