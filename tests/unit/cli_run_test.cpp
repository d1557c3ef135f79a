// The scripting surface: recipes and batches (`quant run`), --target-bpw, --dry-run.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "cli_helpers.h"
#include "fixtures.h"
#include "quant/io/io.h"

namespace quant {
namespace {

using nlohmann::json;
using testing::TempDir;

struct Fixture {
  TempDir dir;
  std::string model, tokens;
  Fixture() {
    testing::TinyModelSpec spec;
    spec.hidden = 64;
    spec.intermediate = 128;
    spec.heads = 4;
    spec.kv_heads = 4;
    testing::write_tiny_model(dir / "m", spec);
    std::string ids;
    for (int i = 0; i < 3000; ++i) ids += std::to_string((i * 37 + i / 7) % 96) + " ";
    write_file_atomic(dir / "ids.txt", ids);
    model = (dir / "m").string();
    tokens = (dir / "ids.txt").string();
  }
};

TEST(CliRun, RecipeRulesReachTheWrittenConfigAndTheReport) {
  Fixture f;
  const json recipe = {
      {"defaults", {{"bits", 4}, {"group_size", 32}, {"eval", {{"tokens", "ids.txt"}, {"ctx", 64}}}}},
      {"jobs",
       {{{"name", "mixed"}, {"method", "rtn"}, {"model", "m"}, {"output", "out-mixed"},
         {"rules", {"layers\\.0\\.mlp\\.down_proj=bits:8", "layers\\.1\\.self_attn\\.[qkv]_proj=skip", "self_attn\\.[qkv]_proj=bits:3,group:64"}}},
        {{"name", "plain"}, {"method", "rtn"}, {"model", "m"}, {"output", "out-plain"}, {"bits", 8}}}}};
  write_file_atomic(f.dir / "r.json", recipe.dump());
  const auto r = testing::run_quant("run " + (f.dir / "r.json").string() + " --json --report " + (f.dir / "rep.json").string());
  ASSERT_EQ(r.rc, 0) << r.err;
  const json cfg = json::parse(read_text_file(f.dir / "out-mixed" / "config.json"))["quantization_config"];
  EXPECT_EQ(cfg["bits"], 4);  // the spec most linears share, whatever comes first
  const json& dyn = cfg["dynamic"];
  // Fused siblings share one key that matches each of them and vLLM's fused prefix.
  const std::string qkv0 = "^model\\.layers\\.0\\.self_attn\\.(q_proj|k_proj|v_proj|qkv_proj)$";
  EXPECT_EQ(dyn["+:^model\\.layers\\.0\\.mlp\\.down_proj$"]["bits"], 8);
  EXPECT_EQ(dyn["+:" + qkv0]["bits"], 3);
  EXPECT_EQ(dyn["+:" + qkv0]["group_size"], 64);
  EXPECT_TRUE(dyn.contains("-:^model\\.layers\\.1\\.self_attn\\.(q_proj|k_proj|v_proj|qkv_proj)$"));
  EXPECT_EQ(dyn.size(), 3u);
  EXPECT_FALSE(dyn.contains("+:^model\\.layers\\.1\\.mlp\\.down_proj$"));  // defaults: not listed
  const json rep = json::parse(r.out);
  ASSERT_EQ(rep.size(), 2u);
  EXPECT_EQ(rep[0]["status"], "ok");
  EXPECT_GT(rep[0]["ppl"].get<double>(), 1.0);
  EXPECT_GT(rep[1]["bpw"].get<double>(), 8.0);
  EXPECT_EQ(json::parse(read_text_file(f.dir / "rep.json")), rep);
}

TEST(CliRun, ValidationNamesTheJobAndFieldBeforeAnyWork) {
  Fixture f;
  auto expect_invalid = [&](const json& job, const std::string& needle) {
    const json recipe = {{"jobs", {{{"name", "first"}, {"method", "rtn"}, {"model", "m"}, {"output", "o1"}}, job}}};
    write_file_atomic(f.dir / "bad.json", recipe.dump());
    const auto r = testing::run_quant("run " + (f.dir / "bad.json").string());
    EXPECT_EQ(r.rc, 3) << r.err;
    EXPECT_NE(r.err.find("job 'second'"), std::string::npos) << r.err;
    EXPECT_NE(r.err.find(needle), std::string::npos) << r.err;
    EXPECT_FALSE(fs::exists(f.dir / "o1")) << "a job ran before validation finished";
  };
  const json base = {{"name", "second"}, {"method", "rtn"}, {"model", "m"}, {"output", "o2"}};
  json j = base;
  j["bitz"] = 4;
  expect_invalid(j, "'bitz' is not an option");
  j = base;
  j["bits"] = 9;
  expect_invalid(j, "bits");
  j = base;
  j["rules"] = {"(unclosed=bits:4"};
  expect_invalid(j, "rules[0]");
  j = base;
  j["method"] = "magic";
  expect_invalid(j, "field 'method'");
  j = base;
  j["model"] = "nowhere";
  expect_invalid(j, "field 'model'");
  j = base;
  j["sym"] = 3;
  expect_invalid(j, "'sym' is a flag");
}

TEST(CliRun, KeepGoingRunsPastAFailedJob) {
  Fixture f;
  fs::create_directories(f.dir / "taken");  // exists, no force: the job fails at run time
  const json recipe = {{"jobs",
                        {{{"name", "a"}, {"method", "rtn"}, {"model", "m"}, {"output", "taken"}},
                         {{"name", "b"}, {"method", "rtn"}, {"model", "m"}, {"output", "ok"}}}}};
  write_file_atomic(f.dir / "r.json", recipe.dump());
  auto r = testing::run_quant("run " + (f.dir / "r.json").string() + " --json");
  EXPECT_EQ(r.rc, 6);
  json rep = json::parse(r.out);
  EXPECT_EQ(rep[0]["status"], "failed");
  EXPECT_EQ(rep[0]["exit_code"], 2);
  EXPECT_EQ(rep[1]["status"], "skipped");
  EXPECT_FALSE(fs::exists(f.dir / "ok"));
  r = testing::run_quant("run " + (f.dir / "r.json").string() + " --json --keep-going");
  EXPECT_EQ(r.rc, 6);
  rep = json::parse(r.out);
  EXPECT_EQ(rep[1]["status"], "ok");
  EXPECT_TRUE(fs::exists(f.dir / "ok" / "config.json"));
}

TEST(CliTargetBpw, MeetsTheBudgetAndMixesBits) {
  Fixture f;
  for (const char* sens : {"hessian", "kl"}) {
    const auto r = testing::run_quant("rtn " + f.model + " --calib-tokens " + f.tokens + " --nsamples 4 --seqlen 64 -g 32 --target-bpw 4.1" +
                                      " --candidate-bits 3,4,5,8 --sensitivity " + sens + " --format dense --json -o " +
                                      (f.dir / sens).string());
    ASSERT_EQ(r.rc, 0) << r.err;
    const json rep = json::parse(r.out);
    const double bpw = rep["bpw_quantized"].get<double>();
    EXPECT_LE(bpw, 4.1 + 1e-9) << sens;
    EXPECT_GE(bpw, 4.1 - 0.05) << sens;
    std::set<int> bits;
    for (const auto& t : rep["tensors"]) {
      if (t["quantized"]) bits.insert(t["bits"].get<int>());
    }
    EXPECT_GE(bits.size(), 2u) << sens << ": one bit width for every linear is not a mix";
  }
  // A budget below every linear at the fewest bits is a usage error.
  const auto r = testing::run_quant("rtn " + f.model + " -g 32 --target-bpw 2.0 --candidate-bits 3,4 -o " + (f.dir / "x").string());
  EXPECT_EQ(r.rc, 2);
  EXPECT_NE(r.err.find("below the smallest allocation"), std::string::npos) << r.err;
}

TEST(CliDryRun, PrintsThePlanAndWritesNothing) {
  Fixture f;
  const auto r = testing::run_quant("rtn " + f.model + " -b 3 -g 32 --rule 'down_proj=bits:8' --dry-run --json -o " + (f.dir / "o").string());
  ASSERT_EQ(r.rc, 0) << r.err;
  const json plan = json::parse(r.out);
  EXPECT_FALSE(fs::exists(f.dir / "o"));
  EXPECT_FALSE(fs::exists(f.dir / "o.partial"));
  int n = 0;
  for (const auto& l : plan["linears"]) {
    ++n;
    const std::string name = l["name"];
    EXPECT_EQ(l["bits"], name.find("down_proj") != std::string::npos ? 8 : 3) << name;
  }
  EXPECT_EQ(n, 14);
  EXPECT_GT(plan["estimated_bytes"].get<double>(), 0);
}

}  // namespace
}  // namespace quant
