// quant check: the loaders' rules on written outputs, and mixed precision that passes them.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "cli_helpers.h"
#include "fixtures.h"
#include "quant/io/io.h"

namespace quant {
namespace {

using nlohmann::json;

struct CheckFixture {
  testing::TempDir dir;
  std::string model;
  CheckFixture() {
    testing::TinyModelSpec spec;
    spec.hidden = 64;
    spec.intermediate = 128;
    spec.kv_heads = 4;
    spec.tied = false;
    testing::write_tiny_model(dir / "m", spec);
    model = (dir / "m").string();
  }
  json check(const std::string& out, const std::string& loaders, int expect_rc) const {
    const auto r = testing::run_quant("check " + out + " --json" + (loaders.empty() ? "" : " --for " + loaders));
    EXPECT_EQ(r.rc, expect_rc) << r.out << r.err;
    return json::parse(r.out);
  }
};

TEST(CheckCli, DefaultOutputsPassTheirLoaders) {
  CheckFixture f;
  for (const char* fmt : {"gptq", "awq", "dense"}) {
    const std::string out = (f.dir / fmt).string();
    const auto r = testing::run_quant(std::string("rtn ") + f.model + " --group-size 32 --format " + fmt + " -o " + out + " --json");
    ASSERT_EQ(r.rc, 0) << r.err;
    const json j = f.check(out, "", 0);
    EXPECT_TRUE(j["pass"].get<bool>()) << j.dump(2);
    EXPECT_FALSE(j["rules"].empty());
  }
  // GPTQ's symmetric 4-bit default qualifies for vLLM's Marlin kernels.
  const auto r = testing::run_quant("rtn " + f.model + " --group-size 32 -o " + (f.dir / "k").string() + " --json");
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_EQ(json::parse(r.out)["kernels"][0], "vllm gptq_marlin");
}

TEST(CheckCli, MixedPrecisionIsPerFusedGroupAndFailsOnlyTransformers) {
  CheckFixture f;
  const std::string out = (f.dir / "bpw").string();
  const auto r = testing::run_quant("rtn " + f.model + " --group-size 32 --target-bpw 4.2 --sensitivity hessian -o " + out);
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_TRUE(f.check(out, "vllm,gptqmodel", 0)["pass"].get<bool>());
  const json t = f.check(out, "transformers", 4);
  bool dynamic_rule_failed = false;
  for (const auto& rule : t["rules"]) dynamic_rule_failed |= !rule["pass"].get<bool>() && rule["rule"].get<std::string>().find("dynamic") != std::string::npos;
  EXPECT_TRUE(dynamic_rule_failed) << t.dump(2);
}

TEST(CheckCli, LiesAndForeignFormatsFail) {
  CheckFixture f;
  const std::string out = (f.dir / "g").string();
  ASSERT_EQ(testing::run_quant("rtn " + f.model + " --group-size 32 -o " + out).rc, 0);
  json c = json::parse(read_text_file(f.dir / "g" / "config.json"));
  c["quantization_config"]["damp_percent"] = 0.0;
  c["quantization_config"]["group_size"] = 64;
  write_file_atomic(f.dir / "g" / "config.json", c.dump());
  const json j = f.check(out, "", 4);
  int failed = 0;
  for (const auto& rule : j["rules"]) failed += !rule["pass"].get<bool>();
  EXPECT_GE(failed, 2) << j.dump(2);  // damp_percent, and the tensors' groups against group_size
  const std::string lut = (f.dir / "l").string();
  ASSERT_EQ(testing::run_quant("kmeans " + f.model + " --bits 3 -o " + lut).rc, 0);
  f.check(lut, "", 0);
  f.check(lut, "vllm", 4);
  EXPECT_NE(testing::run_quant("check " + lut + " --for nosuch").rc, 0);
}

TEST(CheckCli, CandidateBitsTheFormatCannotHoldAreRefusedBeforeWork) {
  CheckFixture f;
  const auto r = testing::run_quant("rtn " + f.model + " --target-bpw 4 --candidate-bits 3,5 -o " + (f.dir / "x").string());
  EXPECT_EQ(r.rc, 2) << r.err;
  EXPECT_NE(r.err.find("--candidate-bits 5"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(f.dir / "x"));
}

TEST(CheckCli, GlobalOptionsAfterTheSubcommand) {
  CheckFixture f;
  const auto r = testing::run_quant("rtn " + f.model + " --group-size 32 -o " + (f.dir / "t").string() + " --threads 1 -q");
  EXPECT_EQ(r.rc, 0) << r.err;
}

}  // namespace
}  // namespace quant
