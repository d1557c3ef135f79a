// A checkpoint's quantization_config is read the way loaders read it; quant refuses, naming the
// tensor and the field, when the config lies about its tensors (so `quant eval` cannot pass a
// checkpoint that every loader would reject).
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "fixtures.h"
#include "quant/core/error.h"
#include "quant/formats/codec.h"
#include "quant/io/io.h"
#include "quant/methods/rtn.h"
#include "quant/model/weights.h"
#include "quant/pipeline/layer_loop.h"

namespace quant {
namespace {

using nlohmann::json;

struct Written {
  testing::TempDir dir;
  fs::path out;
  Written(formats::Format f, QuantSpec spec, std::vector<std::string> rules = {}) {
    testing::write_tiny_model(dir / "m", {});
    const Model m = formats::open_model(dir / "m");
    std::vector<Rule> parsed;
    for (const auto& r : rules) parsed.push_back(Rule::parse(r));
    const RtnMethod rtn;
    RunOptions run;
    run.out = out = dir / "out";
    quantize_model(m, make_plan(m, Policy::standard(spec, false, parsed), rtn.traits(), f, false), rtn, run, {});
  }
  void edit(const std::function<void(json&)>& change) const {
    json c = json::parse(read_text_file(out / "config.json"));
    change(c["quantization_config"]);
    write_file_atomic(out / "config.json", c.dump(2));
  }
  // Opens the output and reads every linear; returns the refusal, or "" when it loads.
  std::string refusal() const {
    try {
      const Model m = formats::open_model(out);
      for (const LinearDesc* l : m.linears()) load_linear(m, *l);
    } catch (const InputError& e) {
      return e.what();
    }
    return "";
  }
};

TEST(ConfigContract, HonestConfigsLoad) {
  EXPECT_EQ(Written(formats::Format::gptq, {4, 32, true}).refusal(), "");
  EXPECT_EQ(Written(formats::Format::gptq, {4, 32, false}, {"down_proj=bits:8", "layers\\.1\\.self_attn\\.[qkv]_proj=skip"}).refusal(), "");
  EXPECT_EQ(Written(formats::Format::awq, {4, 32, false}, {"down_proj=skip"}).refusal(), "");
}

TEST(ConfigContract, WrongBitsNamesTensorAndField) {
  const Written w(formats::Format::gptq, {4, 32, true});
  w.edit([](json& q) { q["bits"] = 8; });
  const std::string e = w.refusal();
  EXPECT_NE(e.find(".qweight"), std::string::npos) << e;
  EXPECT_NE(e.find("bits 8"), std::string::npos) << e;
}

TEST(ConfigContract, WrongGroupSizeOrSymmetryIsRefused) {
  const Written w(formats::Format::gptq, {4, 32, false});
  w.edit([](json& q) { q["group_size"] = 16; });
  EXPECT_NE(w.refusal().find("group_size 16"), std::string::npos) << w.refusal();
  w.edit([](json& q) {
    q["group_size"] = 32;
    q["sym"] = true;
  });
  EXPECT_NE(w.refusal().find("sym: true"), std::string::npos) << w.refusal();
}

TEST(ConfigContract, KeptLinearsMustBeWhereTheConfigSaysTheyAre) {
  const Written w(formats::Format::gptq, {4, 32, true}, {"layers\\.1\\.mlp\\.down_proj=skip"});
  w.edit([](json& q) { q.erase("dynamic"); });  // now the config quantizes the float down_proj
  EXPECT_NE(w.refusal().find("is a float weight"), std::string::npos) << w.refusal();
  w.edit([](json& q) { q["dynamic"] = {{"-:.*layers\\.0\\.", json::object()}, {"-:.*layers\\.1\\.mlp\\.down_proj", json::object()}}; });
  EXPECT_NE(w.refusal().find("is stored packed"), std::string::npos) << w.refusal();
  w.edit([](json& q) { q["dynamic"] = {{"-:.*[", json::object()}}; });
  EXPECT_NE(w.refusal().find("not a valid regular expression"), std::string::npos) << w.refusal();
}

TEST(ConfigContract, AwqSkipsAndMistypedFields) {
  const Written w(formats::Format::awq, {4, 32, false}, {"down_proj=skip"});
  w.edit([](json& q) { q["modules_to_not_convert"] = nullptr; });
  EXPECT_NE(w.refusal().find("is a float weight"), std::string::npos) << w.refusal();
  w.edit([](json& q) { q["bits"] = "4"; });
  EXPECT_NE(w.refusal().find("quantization_config.bits must be an integer"), std::string::npos) << w.refusal();
}

}  // namespace
}  // namespace quant
