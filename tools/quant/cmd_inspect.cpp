// quant inspect PATH: architecture summary, parameter count, per-tensor table.
#include <algorithm>
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <iostream>
#include <map>
#include <nlohmann/json.hpp>

#include "commands.h"
#include "quant/formats/codec.h"
#include "quant/io/gguf.h"
#include "quant/model/model.h"

namespace quant::cli {
namespace {

struct InspectOptions {
  std::string path;
  bool json = false;
};

// A .gguf file: metadata (long arrays abbreviated) and tensors.
void inspect_gguf(const InspectOptions& o) {
  const gguf::File g = gguf::File::open(o.path);
  nlohmann::ordered_json j;
  j["path"] = o.path;
  j["gguf_version"] = g.version;
  nlohmann::ordered_json meta;
  for (const auto& [k, v] : g.metadata) meta[k] = v.to_string();
  j["metadata"] = meta;
  std::int64_t n = 0;
  nlohmann::ordered_json tensors = nlohmann::ordered_json::array();
  for (const auto& t : g.tensors) {
    n += t.numel();
    tensors.push_back({{"name", t.name}, {"type", gguf::type_info(t.type).name}, {"ne", t.ne}, {"bytes", t.bytes}});
  }
  j["n_params"] = n;
  j["tensors"] = tensors;
  if (o.json) {
    std::cout << j.dump(2) << "\n";
    return;
  }
  std::cout << fmt::format("{}: GGUF v{}, {} tensors, {} parameters\n", o.path, g.version, g.tensors.size(), n);
  for (const auto& [k, v] : g.metadata) std::cout << fmt::format("  {:<44} {}\n", k, v.to_string());
  for (const auto& t : g.tensors) std::cout << fmt::format("  {:<32} {:<5} {}\n", t.name, gguf::type_info(t.type).name, fmt::join(t.ne, "x"));
}

void run_inspect(const InspectOptions& o) {
  if (fs::is_regular_file(o.path) && fs::path(o.path).extension() == ".gguf") {
    inspect_gguf(o);
    return;
  }
  const Model model = formats::open_model(o.path);
  const auto& c = model.config();
  const auto& store = model.store();
  nlohmann::ordered_json j;
  j["path"] = o.path;
  j["model_type"] = c.model_type;
  j["hidden_size"] = c.hidden_size;
  j["intermediate_size"] = c.intermediate_size;
  j["num_hidden_layers"] = c.n_layers;
  j["num_attention_heads"] = c.n_heads;
  j["num_key_value_heads"] = c.n_kv_heads;
  j["head_dim"] = c.head_dim;
  j["vocab_size"] = c.vocab_size;
  j["max_position_embeddings"] = c.max_position_embeddings;
  j["rope_theta"] = c.rope_theta;
  j["rope_scaling"] = c.rope_scaling.type;
  j["tie_word_embeddings"] = c.tie_word_embeddings;
  j["torch_dtype"] = c.torch_dtype;
  const std::int64_t n_sliding = std::count(c.layer_sliding.begin(), c.layer_sliding.end(), true);
  j["family"] = {{"qk_norm", c.qk_norm}, {"sandwich_norms", c.sandwich_norms}, {"norm_offset", c.norm_offset},
                 {"mlp_activation", c.gelu_tanh ? "gelu_pytorch_tanh" : "silu"}, {"embed_scale", c.embed_scale},
                 {"attn_scale", c.attn_scale}, {"attn_softcap", c.attn_softcap}, {"final_softcap", c.final_softcap},
                 {"sliding_window", c.sliding_window}, {"sliding_layers", n_sliding}, {"rope_local_theta", c.rope_local_theta}};
  if (c.is_moe()) {
    j["moe"] = {{"experts", c.moe.n_experts}, {"experts_per_token", c.moe.top_k}, {"norm_topk_prob", c.moe.norm_topk_prob},
                {"expert_intermediate_size", c.moe.expert_ffn}, {"shared_expert_intermediate_size", c.moe.shared_ffn},
                {"sparse_layers", std::count(c.moe.layer_moe.begin(), c.moe.layer_moe.end(), true)}};
  }
  j["n_params"] = model.n_params();
  std::map<std::string, std::int64_t> dtype_counts;
  std::uint64_t total_bytes = 0;
  auto tensors = nlohmann::ordered_json::array();
  for (const auto& name : store.names()) {
    const TensorInfo& t = store.get(name);
    dtype_counts[std::string(dtype_name(t.dtype))] += t.numel();
    total_bytes += t.nbytes;
    tensors.push_back({{"name", name}, {"dtype", dtype_name(t.dtype)}, {"shape", t.shape}, {"bytes", t.nbytes}});
  }
  j["dtypes"] = dtype_counts;
  j["total_bytes"] = total_bytes;
  j["n_files"] = store.files().size();
  if (!c.quantization_config.is_null()) j["quantization_config"] = c.quantization_config;
  j["unused_tensors"] = model.unused_tensors(formats::all_linear_suffixes());
  j["tensors"] = tensors;

  if (o.json) {
    std::cout << j.dump(2) << "\n";
    return;
  }
  fmt::print("model       {}\n", o.path);
  fmt::print("arch        {} ({}), {} layers, hidden {}, ffn {}, vocab {}\n", c.model_type,
             c.raw.value("architectures", nlohmann::json::array()).dump(), c.n_layers,
             c.hidden_size, c.intermediate_size, c.vocab_size);
  fmt::print("attention   {} heads, {} kv heads, head_dim {}, rope theta {} scaling {}\n",
             c.n_heads, c.n_kv_heads, c.head_dim, c.rope_theta, c.rope_scaling.type);
  if (c.qk_norm || c.sandwich_norms || n_sliding > 0) {
    fmt::print("family      q/k norms: {}  norms: {}  mlp: {}  attention scale {:.4g}  soft-cap {}/{}  sliding window {} on {} of {} layers{}\n",
               c.qk_norm ? "yes" : "no", c.sandwich_norms ? "4 per layer, (1 + w)" : "2 per layer",
               c.gelu_tanh ? "gelu_tanh" : "silu", c.attn_scale, c.attn_softcap, c.final_softcap, c.sliding_window,
               n_sliding, c.n_layers, c.rope_local_theta > 0 ? fmt::format(" (local rope theta {})", c.rope_local_theta) : "");
  }
  if (c.is_moe()) {
    fmt::print("experts     {} per sparse layer, {} per token{}, ffn {}{}; {} of {} layers sparse\n", c.moe.n_experts, c.moe.top_k,
               c.moe.norm_topk_prob ? " (renormalized)" : "", c.moe.expert_ffn,
               c.moe.shared_ffn ? fmt::format(", shared expert ffn {}", c.moe.shared_ffn) : "",
               std::count(c.moe.layer_moe.begin(), c.moe.layer_moe.end(), true), c.n_layers);
  }
  fmt::print("context     {}   tied embeddings: {}   torch_dtype: {}\n", c.max_position_embeddings,
             c.tie_word_embeddings ? "yes" : "no", c.torch_dtype.empty() ? "-" : c.torch_dtype);
  fmt::print("parameters  {} ({:.2f} M)\n", model.n_params(), model.n_params() / 1e6);
  fmt::print("storage     {} bytes in {} file(s); dtypes:", total_bytes, store.files().size());
  for (const auto& [d, n] : dtype_counts) fmt::print(" {}={}", d, n);
  fmt::print("\n");
  if (!c.quantization_config.is_null()) fmt::print("quantization {}\n", c.quantization_config.dump());
  for (const auto& u : model.unused_tensors(formats::all_linear_suffixes())) fmt::print("unused      {}\n", u);
  fmt::print("\n{:<56} {:<5} {:<14} {:>12}\n", "tensor", "dtype", "shape", "bytes");
  for (const auto& t : tensors) {
    fmt::print("{:<56} {:<5} {:<14} {:>12}\n", t["name"].get<std::string>(),
               t["dtype"].get<std::string>(),
               fmt::format("{}", fmt::join(t["shape"].get<std::vector<std::int64_t>>(), "x")),
               t["bytes"].get<std::uint64_t>());
  }
}

}  // namespace

void register_inspect(CLI::App& app) {
  auto opts = std::make_shared<InspectOptions>();
  auto* cmd = app.add_subcommand("inspect", "show a checkpoint's architecture, parameters and tensors");
  cmd->add_option("path", opts->path, "model directory (config.json + safetensors)")->required();
  cmd->add_flag("--json", opts->json, "print JSON on stdout");
  cmd->callback([opts] { run_inspect(*opts); });
}

}  // namespace quant::cli
