// Mixture-of-experts families (mixtral, qwen2_moe, qwen3_moe): config and layout, the routing
// against values computed by hand, the sparse block against a dense evaluation of every expert,
// and every command on tiny seeded MoE checkpoints (the forward pass against the torch reference
// is in families_test.cpp).
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <set>
#include <nlohmann/json.hpp>

#include "cli_helpers.h"
#include "fixtures.h"
#include "quant/core/error.h"
#include "quant/formats/ggml_quants.h"
#include "quant/io/gguf.h"
#include "quant/io/io.h"
#include "quant/io/safetensors.h"
#include "quant/model/forward.h"
#include "quant/model/model.h"

namespace quant {
namespace {

using nlohmann::json;
using testing::run_quant;
using testing::TempDir;

std::vector<std::byte> raw(const TensorStore& s, const std::string& name) {
  const auto b = s.bytes(name);
  return {b.begin(), b.end()};
}

json qwen_moe_config() {
  return {{"model_type", "qwen2_moe"}, {"hidden_size", 32}, {"intermediate_size", 64}, {"num_hidden_layers", 4},
          {"num_attention_heads", 4}, {"vocab_size", 96}, {"num_experts", 6}, {"num_experts_per_tok", 2},
          {"moe_intermediate_size", 16}, {"shared_expert_intermediate_size", 40}};
}

TEST(MoeConfig, FamiliesDefaultsAndSparseLayers) {
  json m = qwen_moe_config();
  m["model_type"] = "mixtral";
  m.erase("num_experts");
  const ModelConfig mix = ModelConfig::from_json(m, "config.json");
  EXPECT_EQ(mix.moe.n_experts, 8);  // MixtralConfig.num_local_experts default
  EXPECT_EQ(mix.moe.top_k, 2);
  EXPECT_TRUE(mix.moe.norm_topk_prob);
  EXPECT_EQ(mix.moe.expert_ffn, 64);  // Mixtral's experts are intermediate_size wide
  EXPECT_DOUBLE_EQ(mix.rope_theta, 1e6);
  EXPECT_EQ(mix.sliding_window, 0);  // MixtralConfig.sliding_window default None
  const ModelLayout ml = build_layout(mix);
  ASSERT_EQ(ml.layers[0].linears.size(), 4u + 8 * 3);
  EXPECT_EQ(ml.layers[0].expert(7, LinearKind::up).prefix, "model.layers.0.block_sparse_moe.experts.7.w3");
  EXPECT_EQ(ml.layers[0].expert(7, LinearKind::down).in, 64);
  EXPECT_EQ(ml.layers[0].router, "model.layers.0.block_sparse_moe.gate.weight");
  EXPECT_THROW(ml.layers[0].linear(LinearKind::gate), Error);

  json q = qwen_moe_config();
  q["decoder_sparse_step"] = 2;
  q["mlp_only_layers"] = {3};
  const ModelConfig qc = ModelConfig::from_json(q, "config.json");
  EXPECT_FALSE(qc.moe.norm_topk_prob);  // Qwen2MoeConfig default
  EXPECT_TRUE(qc.qkv_bias);
  // Sparse when (i + 1) % 2 == 0 and not in mlp_only_layers: only layer 1.
  EXPECT_EQ(qc.moe.layer_moe, (std::vector<bool>{false, true, false, false}));
  const ModelLayout ql = build_layout(qc);
  EXPECT_EQ(ql.layers[0].linear(LinearKind::gate).out, 64);  // a dense layer: intermediate_size
  EXPECT_EQ(ql.layers[1].expert(-1, LinearKind::gate).prefix, "model.layers.1.mlp.shared_expert.gate_proj");
  EXPECT_EQ(ql.layers[1].expert(-1, LinearKind::gate).out, 40);
  EXPECT_EQ(ql.layers[1].expert(5, LinearKind::down).in, 16);
  EXPECT_EQ(ql.layers[1].shared_gate, "model.layers.1.mlp.shared_expert_gate.weight");
  EXPECT_EQ(fused_prefix(ql.layers[1].expert(5, LinearKind::down)), "model.layers.1.mlp.experts");
  EXPECT_EQ(fused_prefix(ql.layers[1].expert(-1, LinearKind::up)), "model.layers.1.mlp.shared_expert.gate_up_proj");

  json bad = qwen_moe_config();
  bad["num_experts_per_tok"] = 7;
  EXPECT_THROW(ModelConfig::from_json(bad, "config.json"), InputError);
  bad = qwen_moe_config();
  bad["mlp_only_layers"] = {9};
  EXPECT_THROW(ModelConfig::from_json(bad, "config.json"), InputError);
}

// Three experts, hidden 2, one token x = (1, 0): router logits are the first router column
// (ln 1, ln 2, ln 5 → softmax 1/8, 2/8, 5/8). Top 2: experts 2 and 1.
TEST(MoeRouting, TopKOfSoftmaxByHand) {
  ModelConfig c;
  c.moe.n_experts = 3;
  c.moe.top_k = 2;
  LayerWeights L;
  L.router.resize(3, 2);
  L.router << std::log(1.0f), 0, std::log(2.0f), 0, std::log(5.0f), 0;
  L.experts.resize(3);
  Mat x(1, 2);
  x << 1, 0;
  c.moe.norm_topk_prob = false;
  Routing r = route_tokens(c, L, x);
  EXPECT_TRUE(r.rows[0].empty());
  ASSERT_EQ(r.rows[1].size(), 1u);
  ASSERT_EQ(r.rows[2].size(), 1u);
  EXPECT_NEAR(r.weights[1][0], 2.0 / 8, 1e-6);
  EXPECT_NEAR(r.weights[2][0], 5.0 / 8, 1e-6);
  c.moe.norm_topk_prob = true;  // renormalized over the chosen two: 2/7 and 5/7
  r = route_tokens(c, L, x);
  EXPECT_NEAR(r.weights[1][0], 2.0 / 7, 1e-6);
  EXPECT_NEAR(r.weights[2][0], 5.0 / 7, 1e-6);
}

// The sparse block equals Σ over every expert of its routing weight (0 when not chosen) times
// its output, plus the gated shared expert, evaluated densely token by token.
TEST(MoeBlock, EqualsDenseSumOverExperts) {
  TempDir dir;
  testing::TinyModelSpec s;
  s.model_type = "qwen2_moe";
  s.experts = 5;
  s.top_k = 2;
  s.seed = 4;
  testing::write_tiny_model(dir / "m", s);
  const Model model = Model::open(dir / "m");
  const LayerWeights L = load_layer(model, 1);
  ASSERT_TRUE(L.moe());
  Mat x = Mat::Random(7, s.hidden);
  const Mat got = moe_block(model.config(), L, x);
  for (Eigen::Index t = 0; t < x.rows(); ++t) {
    Eigen::VectorXf logits = L.router * x.row(t).transpose();
    Eigen::VectorXf p = (logits.array() - logits.maxCoeff()).exp();
    p /= p.sum();
    std::vector<int> order = {0, 1, 2, 3, 4};
    std::sort(order.begin(), order.end(), [&](int a, int b) { return p(a) > p(b); });
    Eigen::RowVectorXf want = Eigen::RowVectorXf::Zero(s.hidden);
    for (int i = 0; i < 2; ++i) {
      const ExpertWeights& e = L.experts[static_cast<std::size_t>(order[static_cast<std::size_t>(i)])];
      Mat act = expert_activation(e, x.row(t));
      want += p(order[static_cast<std::size_t>(i)]) * (act * e.down.transpose());
    }
    const float g = 1.0f / (1.0f + std::exp(-(x.row(t) * L.shared_gate.transpose())(0, 0)));
    want += g * (expert_activation(L.shared, x.row(t)) * L.shared.down.transpose());
    EXPECT_LT((got.row(t) - want).cwiseAbs().maxCoeff(), 1e-5f) << "token " << t;
  }
}

testing::TinyModelSpec moe_spec(const std::string& type) {
  testing::TinyModelSpec s;
  s.model_type = type;
  s.hidden = 64;
  s.intermediate = 64;
  s.heads = 4;
  s.kv_heads = 2;
  s.head_dim = 16;
  s.layers = 2;
  s.vocab = 96;
  s.seed = 11;
  s.weight_scale = 0.3f;
  s.tied = false;
  s.experts = 4;
  s.top_k = 2;
  s.moe_ffn = 64;
  s.shared_ffn = 64;
  return s;
}

struct MoeCli : ::testing::TestWithParam<std::string> {
  TempDir dir;
  std::string model, calib, text;
  void SetUp() override {
    testing::write_tiny_model(dir / "m", moe_spec(GetParam()));
    model = (dir / "m").string();
    std::string c, e;
    std::uint32_t x = 77;
    for (int i = 0; i < 4096; ++i) {
      x = x * 1664525u + 1013904223u;
      (i < 2048 ? c : e) += std::to_string((x >> 9) % 96) + " ";
    }
    write_file_atomic(dir / "calib.txt", c);
    write_file_atomic(dir / "eval.txt", e);
    calib = (dir / "calib.txt").string();
    text = (dir / "eval.txt").string();
  }
  std::string cal() const { return "--calib-tokens " + calib + " --nsamples 16 --seqlen 64"; }
  double kl(const std::string& out) {
    const auto r = run_quant("eval " + out + " --tokens " + text + " --ctx 64 --base " + model + " --json");
    EXPECT_EQ(r.rc, 0) << r.err;
    return r.rc == 0 ? json::parse(r.out)["kl_mean"].get<double>() : 1e9;
  }
  std::string quantize(const std::string& cmd, const std::string& name, const std::string& args, bool check = true) {
    const std::string out = (dir / name).string();
    const auto r = run_quant(cmd + " " + model + " " + args + " -o " + out);
    EXPECT_EQ(r.rc, 0) << cmd << ": " << r.err;
    if (check) {
      const auto c = run_quant("check " + out);
      EXPECT_EQ(c.rc, 0) << name << ": " << c.out << c.err;
    }
    return out;
  }
};

TEST_P(MoeCli, QuantizersBeatRtnAndOutputsPassCheck) {
  const double rtn = kl(quantize("rtn", "rtn", "-b 4 -g 32"));
  const double gptq = kl(quantize("gptq", "gptq", "-b 4 -g 32 " + cal()));
  const double awq = kl(quantize("awq", "awq", "-b 4 -g 32 " + cal()));
  const double rtn3 = kl(quantize("rtn", "rtn3", "-b 3 -g -1 --format dense"));
  const double km3 = kl(quantize("kmeans", "km3", "-b 3 --format dense " + cal()));
  std::cerr << GetParam() << ": KL rtn " << rtn << " gptq " << gptq << " awq " << awq << " | 3-bit rtn " << rtn3 << " kmeans " << km3 << "\n";
  EXPECT_GT(rtn, 0.0);
  EXPECT_LT(gptq, rtn);
  EXPECT_LT(awq, rtn);
  EXPECT_LT(km3, rtn3);
  // AWQ folded its MLP scale into the norm and, exactly, into the router's columns.
  const json s = read_json_file(dir / "awq" / "quant_summary.json");
  bool mapped = false;
  for (const auto& t : s["tensors"]) mapped = mapped || (t.contains("extra") && t["extra"].value("awq_mapping", "") == "up_down");
  EXPECT_TRUE(mapped) << "no expert got an up_down scale";
  // The router (and qwen2_moe's shared-expert gate) are copied in full precision.
  const auto st = TensorStore::open(dir / "gptq");
  const std::string block = GetParam() == "mixtral" ? "block_sparse_moe." : "mlp.";
  EXPECT_TRUE(is_float(st.get("model.layers.1." + block + "gate.weight").dtype));
  EXPECT_TRUE(st.contains("model.layers.1." + block + "experts.3." + (GetParam() == "mixtral" ? "w2" : "down_proj") + ".qweight"));
}

// Every expert linear reports the tokens its expert was routed; per layer they add up to
// top_k × the calibration tokens (each token goes to top_k experts).
TEST_P(MoeCli, TokenCountsPerExpertInSummary) {
  const std::string out = quantize("gptq", "g", "-b 4 -g 32 " + cal(), false);
  const json summary = read_json_file(fs::path(out) / "quant_summary.json");
  std::map<int, std::int64_t> per_layer;
  int n = 0;
  const std::string up = GetParam() == "mixtral" ? ".w3" : ".up_proj";
  for (const auto& t : summary["tensors"]) {
    const std::string name = t["name"];
    if (name.find(".experts.") == std::string::npos) continue;
    ASSERT_TRUE(t["extra"].contains("moe_tokens")) << t.dump();
    EXPECT_EQ(t["extra"]["moe_statistics"], "routed tokens");
    if (name.size() > up.size() && name.compare(name.size() - up.size(), up.size(), up) == 0) {
      per_layer[name[std::string("model.layers.").size()] - '0'] += t["extra"]["moe_tokens"].get<std::int64_t>();
      ++n;
    }
  }
  EXPECT_EQ(n, 2 * 4);
  for (const auto& [layer, tokens] : per_layer) EXPECT_EQ(tokens, 2 * 16 * 64) << "layer " << layer;
}

INSTANTIATE_TEST_SUITE_P(Families, MoeCli, ::testing::Values("mixtral", "qwen2_moe", "qwen3_moe"));

TEST(MoeCliRules, FallbackRefusalsAndResume) {
  TempDir dir;
  testing::write_tiny_model(dir / "m", moe_spec("mixtral"));
  const std::string model = (dir / "m").string();
  std::string ids;
  for (int i = 0; i < 2000; ++i) ids += std::to_string((i * 29 + i / 5) % 96) + " ";
  write_file_atomic(dir / "ids.txt", ids);
  const std::string cal = " --calib-tokens " + (dir / "ids.txt").string() + " --nsamples 8 --seqlen 32";

  // Every expert under --moe-min-tokens: quantized without statistics, i.e. exactly RTN's codes.
  auto r = run_quant("gptq " + model + " -b 4 -g 32 --moe-min-tokens 100000" + cal + " -o " + (dir / "few").string() + " --json");
  ASSERT_EQ(r.rc, 0) << r.err;
  ASSERT_EQ(run_quant("rtn " + model + " -b 4 -g 32 -o " + (dir / "rtn").string()).rc, 0);
  const auto few = TensorStore::open(dir / "few"), rtn = TensorStore::open(dir / "rtn");
  const std::string w2 = "model.layers.1.block_sparse_moe.experts.2.w2.qweight";
  EXPECT_EQ(raw(few, w2), raw(rtn, w2));
  EXPECT_NE(r.err.find("quantized without statistics"), std::string::npos) << r.err;
  // --moe-calibration all: statistics from every token.
  r = run_quant("gptq " + model + " -b 4 -g 32 --moe-calibration all" + cal + " -o " + (dir / "all").string());
  ASSERT_EQ(r.rc, 0) << r.err;
  const json s = read_json_file(dir / "all" / "quant_summary.json");
  bool seen = false;
  for (const auto& t : s["tensors"]) {
    if (t["name"] == "model.layers.0.block_sparse_moe.experts.0.w1") {
      seen = true;
      EXPECT_EQ(t["extra"]["moe_statistics"], "all tokens");
    }
  }
  EXPECT_TRUE(seen);

  // vLLM's FusedMoE: one config for a layer's experts, 4- or 8-bit; refused before any output.
  r = run_quant("gptq " + model + " -b 4 -g 32 --rule 'experts\\.1\\.=bits:8'" + cal + " -o " + (dir / "mixed").string());
  EXPECT_NE(r.rc, 0);
  EXPECT_NE(r.err.find("model.layers.0.block_sparse_moe.experts"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(dir / "mixed"));
  r = run_quant("gptq " + model + " -b 3 -g 32" + cal + " -o " + (dir / "b3").string());
  EXPECT_NE(r.rc, 0);
  EXPECT_NE(r.err.find("4- or 8-bit experts"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(dir / "b3"));
  // Not yet: SmoothQuant's layer transform over experts.
  r = run_quant("rtn " + model + " --scheme W8A8 --smooth 0.5" + cal + " -o " + (dir / "sq").string());
  EXPECT_NE(r.rc, 0);
  EXPECT_NE(r.err.find("sparse (MoE)"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(dir / "sq"));

  // Killed after layer 0, resumed: the same bytes as an uninterrupted run (AWQ also rewrites the
  // norms and the router).
  for (const std::string method : {"gptq", "awq"}) {
    const std::string args = method + " " + model + " -b 4 -g 32" + cal + " -o ";
    const fs::path full = dir / (method + "-full"), res = dir / (method + "-res");
    ASSERT_EQ(run_quant(args + full.string()).rc, 0);
    setenv("QUANT_FAULT_KILL_AFTER_LAYER", "0", 1);
    const auto killed = run_quant(args + res.string());
    unsetenv("QUANT_FAULT_KILL_AFTER_LAYER");
    EXPECT_NE(killed.rc, 0);
    ASSERT_TRUE(fs::exists(fs::path(res.string() + ".resume") / "state.json"));
    ASSERT_EQ(run_quant(args + res.string()).rc, 0);
    const auto a = TensorStore::open(full), b = TensorStore::open(res);
    for (const auto& name : a.names()) EXPECT_TRUE(raw(a, name) == raw(b, name)) << method << " " << name;
    if (method == "awq") {
      const auto src = TensorStore::open(dir / "m");
      const std::string router = "model.layers.1.block_sparse_moe.gate.weight";
      EXPECT_FALSE(raw(a, router) == raw(src, router)) << "AWQ's MLP scale is folded into the router's columns";
    }
  }
}

// --target-bpw moves a layer's experts as one group and only among the widths vLLM's MoE kernels
// take (4 or 8 for GPTQ), so the allocation stays loadable.
TEST(MoeCliRules, TargetBpwKeepsExpertsInOneLoadableGroup) {
  TempDir dir;
  testing::write_tiny_model(dir / "m", moe_spec("qwen2_moe"));
  std::string ids;
  for (int i = 0; i < 2000; ++i) ids += std::to_string((i * 31 + i / 7) % 96) + " ";
  write_file_atomic(dir / "ids.txt", ids);
  const auto r = run_quant("gptq " + (dir / "m").string() + " --target-bpw 4.4 -g 32 --calib-tokens " + (dir / "ids.txt").string() +
                           " --nsamples 8 --seqlen 32 -o " + (dir / "out").string());
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_EQ(run_quant("check " + (dir / "out").string() + " --for vllm").rc, 0);
  const json s = read_json_file(dir / "out" / "quant_summary.json");
  std::map<std::string, std::set<int>> bits;  // per layer's experts
  for (const auto& t : s["tensors"]) {
    const std::string name = t["name"];
    const auto at = name.find(".experts.");
    if (at == std::string::npos || !t.value("quantized", false)) continue;
    bits[name.substr(0, at)].insert(t["bits"].get<int>());
  }
  ASSERT_EQ(bits.size(), 2u);
  for (const auto& [layer, b] : bits) {
    EXPECT_EQ(b.size(), 1u) << layer << ": the experts of one layer got different bits";
    EXPECT_TRUE(b.count(4) || b.count(8)) << layer;
  }
}

// llama.cpp's MoE tensors: the router in F32, each routed linear's experts stacked
// {n_expert, rows, cols} (ggml ne reversed), qwen2moe's shared expert; checked in llama.cpp itself
// by tests/llamacpp/check_arch.sh (variants mixtral, qwen2moe, qwen3moe).
TEST(MoeGguf, StackedExpertsMetadataAndRefusals) {
  TempDir dir;
  for (const std::string type : {"mixtral", "qwen2_moe"}) {
    testing::write_tiny_model(dir / type, moe_spec(type));
    testing::write_tiny_tokenizer(dir / type, 96);
    const fs::path out = dir / (type + ".gguf");
    const auto r = run_quant("gguf " + (dir / type).string() + " -t f32 -o " + out.string());
    ASSERT_EQ(r.rc, 0) << r.err;
    const gguf::File g = gguf::File::open(out);
    const std::string arch = type == "mixtral" ? "llama" : "qwen2moe";
    ASSERT_NE(g.find("general.architecture"), nullptr);
    EXPECT_EQ(g.find("general.architecture")->s, arch);
    ASSERT_NE(g.find(arch + ".expert_count"), nullptr);
    EXPECT_EQ(g.find(arch + ".expert_count")->u, 4u);
    EXPECT_EQ(g.find(arch + ".expert_used_count")->u, 2u);
    EXPECT_EQ(g.tensor("blk.1.ffn_gate_inp.weight").ne, (std::vector<std::int64_t>{64, 4}));
    EXPECT_EQ(g.tensor("blk.1.ffn_gate_exps.weight").ne, (std::vector<std::int64_t>{64, 64, 4}));
    EXPECT_EQ(g.tensor("blk.1.ffn_down_exps.weight").ne, (std::vector<std::int64_t>{64, 64, 4}));
    EXPECT_THROW(g.tensor("blk.1.ffn_gate.weight"), InputError);
    // Expert 3's down_proj is the fourth block of rows of ffn_down_exps, bit for bit.
    const TensorStore src = TensorStore::open(dir / type);
    const auto want = src.read_f32(std::string("model.layers.1.") + (type == "mixtral" ? "block_sparse_moe.experts.3.w2" : "mlp.experts.3.down_proj") + ".weight");
    const auto got = gguf::dequantize_tensor(g, "blk.1.ffn_down_exps.weight");
    ASSERT_EQ(got.size(), 4 * want.size());
    EXPECT_TRUE(std::equal(want.begin(), want.end(), got.begin() + 3 * static_cast<std::ptrdiff_t>(want.size())));
    // Read back (GGUF input: each expert's slice of the stacked tensors): the same perplexity.
    std::string ids;
    for (int i = 0; i < 300; ++i) ids += std::to_string((i * 37 + i / 3) % 95) + " ";
    write_file_atomic(dir / "ids.txt", ids);
    auto ppl = [&](const fs::path& m) {
      const auto e = run_quant("eval " + m.string() + " --tokens " + (dir / "ids.txt").string() + " --ctx 64 --json");
      EXPECT_EQ(e.rc, 0) << e.err;
      return e.rc == 0 ? json::parse(e.out)["ppl"].get<double>() : -1.0;
    };
    EXPECT_NEAR(ppl(out) / ppl(dir / type), 1.0, 1e-5) << type;
    if (type == "qwen2_moe") {
      EXPECT_EQ(g.find(arch + ".expert_feed_forward_length")->u, 64u);
      EXPECT_EQ(g.find(arch + ".expert_shared_feed_forward_length")->u, 64u);
      EXPECT_EQ(g.tensor("blk.0.ffn_gate_inp_shexp.weight").ne, (std::vector<std::int64_t>{64}));
      EXPECT_EQ(g.tensor("blk.0.ffn_up_shexp.weight").ne, (std::vector<std::int64_t>{64, 64}));
    }
  }
  // qwen3moe in llama.cpp always renormalizes the top-k weights: norm_topk_prob false is refused.
  auto spec = moe_spec("qwen3_moe");
  spec.extra_config["norm_topk_prob"] = false;
  testing::write_tiny_model(dir / "q3", spec);
  testing::write_tiny_tokenizer(dir / "q3", 96);
  const auto r = run_quant("gguf " + (dir / "q3").string() + " -t q8_0 -o " + (dir / "q3.gguf").string());
  EXPECT_NE(r.rc, 0);
  EXPECT_NE(r.err.find("always renormalizes"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(dir / "q3.gguf"));
}

}  // namespace
}  // namespace quant
