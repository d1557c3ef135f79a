#include "quant/formats/gguf_export.h"

#include <chrono>
#include <algorithm>
#include <cmath>
#include <deque>
#include <cstring>
#include <functional>
#include <future>
#include <regex>

#include "quant/core/error.h"
#include "quant/io/io.h"
#include "quant/formats/ggml_quants.h"
#include "quant/formats/imatrix.h"
#include "quant/core/log.h"
#include "quant/model/weights.h"
#include "gguf_vocab.h"

namespace quant::gguf {

namespace {

const FileType kFileTypes[] = {
    {"f32", 0, GgmlType::F32},        {"f16", 1, GgmlType::F16},        {"q4_0", 2, GgmlType::Q4_0},
    {"q4_1", 3, GgmlType::Q4_1},      {"q8_0", 7, GgmlType::Q8_0},      {"q5_0", 8, GgmlType::Q5_0},
    {"q5_1", 9, GgmlType::Q5_1},      {"q2_k", 10, GgmlType::Q2_K},     {"q3_k_s", 11, GgmlType::Q3_K},
    {"q3_k_m", 12, GgmlType::Q3_K},   {"q3_k_l", 13, GgmlType::Q3_K},   {"q4_k_s", 14, GgmlType::Q4_K},
    {"q4_k_m", 15, GgmlType::Q4_K},   {"q5_k_s", 16, GgmlType::Q5_K},   {"q5_k_m", 17, GgmlType::Q5_K},
    {"q6_k", 18, GgmlType::Q6_K},     {"q2_k_s", 21, GgmlType::Q2_K},   {"iq4_nl", 25, GgmlType::IQ4_NL},
    {"iq4_xs", 30, GgmlType::IQ4_XS}, {"bf16", 32, GgmlType::BF16},
};

bool is_quantized(GgmlType t) { return t != GgmlType::F32 && t != GgmlType::F16 && t != GgmlType::BF16; }

// llama_tensor_get_type's fallback for rows that are not whole blocks: Q2_K, Q3_K and IQ4_XS →
// IQ4_NL, Q4_K → Q5_0, Q5_K → Q5_1, Q6_K → Q8_0, then F16 when the fallback does not fit either.
GgmlType fallback_type(GgmlType t, std::int64_t row) {
  if (row % type_info(t).block == 0) return t;
  const GgmlType wanted = t;
  if (t == GgmlType::Q2_K || t == GgmlType::Q3_K || t == GgmlType::IQ4_XS) t = GgmlType::IQ4_NL;
  else if (t == GgmlType::Q4_K) t = GgmlType::Q5_0;
  else if (t == GgmlType::Q5_K) t = GgmlType::Q5_1;
  else if (t == GgmlType::Q6_K) t = GgmlType::Q8_0;
  if (row % type_info(t).block != 0) t = GgmlType::F16;
  log::debug("rows of {} are not whole {} blocks: {} instead", row, type_info(wanted).name, type_info(t).name);
  return t;
}

// What a tensor is, for llama.cpp's per-tensor type rules.
enum class Role { token_embd, output, attn_v, attn_qkv, attn_output, ffn_down, other };
struct Placement {
  Role role = Role::other;
  int layer = 0;
  int n_layers = 1;
  std::int64_t gqa = 1;   // attention heads per KV head (hparams.n_gqa())
  bool llama_70b = false;  // llama.cpp's LLM_TYPE_70B (an 80-layer llama)
};

// llama.cpp's use_more_bits: the first and last eighth of the layers and every third between.
bool use_more_bits(int i, int n) { return i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2; }

// llama.cpp's llama_tensor_get_type (llama-quant.cpp, c392e50) for these file types on models
// without experts, branch for branch: the output matrix (or token_embd when tied) goes to
// --output-tensor-type when given, else Q6_K (Q8_0 when its rows are not whole 256-blocks);
// attn_v, ffn_down, attn_output and Phi-3's attn_qkv by the mix's rules; then the fallbacks.
GgmlType tensor_type(const FileType& ft, const Placement& p, std::int64_t row, bool imatrix, std::optional<GgmlType> output_type) {
  using T = GgmlType;
  T t = ft.base;
  const std::string& n = ft.name;
  if (!is_quantized(t)) return t;
  const bool more = use_more_bits(p.layer, p.n_layers), iq4 = n == "iq4_nl" || n == "iq4_xs";
  switch (p.role) {
    case Role::output:
      if (output_type) t = *output_type;
      else t = row % 256 != 0 ? T::Q8_0 : (t == T::Q8_0 ? t : T::Q6_K);
      break;
    case Role::attn_v:
      if (n == "q2_k") t = p.gqa >= 4 ? T::Q4_K : T::Q3_K;
      else if (n == "q2_k_s" && p.gqa >= 4) t = T::Q4_K;
      else if (n == "q3_k_m") t = p.layer < 2 ? T::Q5_K : T::Q4_K;
      else if (n == "q3_k_l") t = T::Q5_K;
      else if (iq4 && p.gqa >= 4) t = T::Q5_K;
      else if ((n == "q4_k_m" || n == "q5_k_m") && more) t = T::Q6_K;
      else if (n == "q4_k_s" && p.layer < 4) t = T::Q5_K;
      if (p.llama_70b && (t == T::Q3_K || t == T::Q4_K)) t = T::Q5_K;
      break;
    case Role::ffn_down:
      if (n == "q2_k") t = T::Q3_K;
      else if (n == "q2_k_s") { if (p.layer < p.n_layers / 8) t = T::Q4_K; }
      else if (n == "q3_k_m") t = p.layer < p.n_layers / 16 ? T::Q5_K : T::Q4_K;
      else if (n == "q3_k_l") t = T::Q5_K;
      else if (n == "q4_k_m") { if (more) t = T::Q6_K; }
      else if (p.layer < p.n_layers / 8 && iq4 && !imatrix) t = T::Q5_K;
      else if (n == "q5_k_m" && more) t = T::Q6_K;
      else if (n == "q4_k_s" && p.layer < p.n_layers / 8) t = T::Q5_K;
      else if ((n == "q4_0" || n == "q5_0") && imatrix && p.layer < p.n_layers / 8) t = n == "q4_0" ? T::Q4_1 : T::Q5_1;
      break;
    case Role::attn_output:
      if (n == "q2_k") t = T::Q3_K;
      else if (n == "q3_k_m") t = T::Q4_K;
      else if (n == "q3_k_l") t = T::Q5_K;
      break;
    case Role::attn_qkv:
      if (n == "q3_k_m" || n == "q3_k_l") t = T::Q4_K;
      else if (n == "q4_k_m") t = T::Q5_K;
      else if (n == "q5_k_m") t = T::Q6_K;
      break;
    case Role::token_embd: case Role::other:
      break;
  }
  return fallback_type(t, row);
}

// The type of one tensor with the user's overrides, in llama-quantize's order
// (llama-quant.cpp llama_model_quantize_impl / llama_tensor_get_type, c392e50, and the
// --tensor-type patterns of its later versions): output.weight kept as is with
// --leave-output-tensor; for a quantized target the first --tensor-type pattern found in the name
// (std::regex_search), else the mixture rules unless --pure, with the row fallbacks; then
// --token-embedding-type and --output-tensor-type by name. An explicit type whose blocks do not
// divide the rows is refused (llama-quantize would abort).
struct TypeChooser {
  const ExportOptions& o;
  std::vector<std::pair<std::regex, GgmlType>> patterns;
  GgmlType source;  // the checkpoint's dtype, for --leave-output-tensor
  bool imatrix;

  GgmlType operator()(const std::string& name, const Placement& p, std::int64_t row) const {
    if (o.leave_output && name == "output.weight") return source;
    GgmlType t = o.type.base;
    if (is_quantized(t)) {
      bool manual = false;
      for (const auto& [re, type] : patterns) {
        if (std::regex_search(name, re)) {
          t = fallback_type(type, row);
          manual = true;
          break;
        }
      }
      if (!manual && !o.pure) t = tensor_type(o.type, p, row, imatrix, o.output_tensor_type);
    }
    if (o.token_embedding_type && name == "token_embd.weight") t = *o.token_embedding_type;
    if (o.output_tensor_type && name == "output.weight") t = *o.output_tensor_type;
    if (row % type_info(t).block != 0) {
      fail<UsageError>("tensor '{}': rows of {} are not whole {} blocks of {} (llama.cpp cannot store it so); choose another type for it",
                       name, row, type_info(t).name, type_info(t).block);
    }
    return t;
  }
};

}  // namespace

FileType parse_file_type(const std::string& name) {
  std::string low;
  for (char c : name) low += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  std::string names;
  for (const auto& f : kFileTypes) {
    if (f.name == low) return f;
    names += (names.empty() ? "" : ", ") + f.name;
  }
  fail<UsageError>("unknown GGUF type '{}' (supported: {})", name, names);
}

std::string gguf_linear_name(const LinearDesc& l) {
  if (l.layer < 0) return "output.weight";
  // Phi-3's fused tensors: llama.cpp's attn_qkv, and ffn_up holding [gate; up] (LLM_FFN_SWIGLU
  // splits it in that order).
  const std::string& t = l.tensor_prefix();
  if (t.ends_with(".qkv_proj")) return fmt::format("blk.{}.attn_qkv.weight", l.layer);
  if (t.ends_with(".gate_up_proj")) return fmt::format("blk.{}.ffn_up.weight", l.layer);
  static const char* kNames[] = {"attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"};
  // MoE (llama-arch.cpp LLM_TENSOR_FFN_*_EXPS, *_SHEXP): a layer's routed experts stacked into
  // one 3-D tensor, the shared expert under its own names.
  const char* suffix = l.expert >= 0 ? "_exps" : l.shared_expert ? "_shexp" : "";
  return fmt::format("blk.{}.{}{}.weight", l.layer, kNames[static_cast<int>(l.kind)], suffix);
}

namespace {
// Row h·hd + 2i + t of the result is row h·hd + t·hd/2 + i of w (the inverse swaps them).
void rope_rows(const float* w, float* r, std::int64_t rows, std::int64_t n_head, std::int64_t cols, bool inverse) {
  const std::int64_t hd = rows / n_head, half = hd / 2;
  for (std::int64_t h = 0; h < n_head; ++h)
    for (std::int64_t i = 0; i < half; ++i)
      for (std::int64_t t = 0; t < 2; ++t) {
        std::int64_t dst = h * hd + i * 2 + t, src = h * hd + t * half + i;
        if (inverse) std::swap(dst, src);
        std::copy_n(w + src * cols, cols, r + dst * cols);
      }
}
std::vector<float> rope_rows(const std::vector<float>& w, std::int64_t n_head, std::int64_t cols, bool inverse) {
  std::vector<float> r(w.size());
  rope_rows(w.data(), r.data(), static_cast<std::int64_t>(w.size()) / cols, n_head, cols, inverse);
  return r;
}
}  // namespace

std::vector<float> permute_rope_rows(const std::vector<float>& w, std::int64_t n_head, std::int64_t cols) {
  return rope_rows(w, n_head, cols, false);
}
std::vector<float> unpermute_rope_rows(const std::vector<float>& w, std::int64_t n_head, std::int64_t cols) {
  return rope_rows(w, n_head, cols, true);
}

std::map<std::string, std::vector<float>> read_imatrix(const fs::path& path) {
  try {
    return read_imatrix_file(path).importance();
  } catch (const InputError& e) {
    const std::string what = e.what();
    if (what.rfind(path.string(), 0) == 0) throw;
    fail("{}: {}", path.string(), what);
  }
}

QuantSpec awq_spec_for(const FileType& type) {
  QuantSpec s;
  s.group_size = 32;
  switch (type.base) {
    case GgmlType::F32: case GgmlType::F16: case GgmlType::BF16:
      fail<UsageError>("--from-awq needs a quantized GGUF type, not {}", type.name);
    case GgmlType::Q4_0: s.bits = 4; s.sym = true; break;
    case GgmlType::Q4_1: case GgmlType::Q4_K: s.bits = 4; break;
    case GgmlType::Q5_0: s.bits = 5; s.sym = true; break;
    case GgmlType::Q5_1: case GgmlType::Q5_K: s.bits = 5; break;
    case GgmlType::Q6_K: s.bits = 6; s.sym = true; s.group_size = 16; break;
    case GgmlType::Q2_K: s.bits = 2; s.group_size = 16; break;
    case GgmlType::Q3_K: s.bits = 3; s.sym = true; s.group_size = 16; break;
    case GgmlType::IQ4_NL: case GgmlType::IQ4_XS: s.bits = 4; s.sym = true; break;  // a non-linear grid: the nearest uniform search
    case GgmlType::Q8_0: s.bits = 8; s.sym = true; break;
  }
  return s;
}

namespace {

// llama.cpp's architecture for a model_type, as convert_hf_to_gguf.py registers them
// (MistralForCausalLM converts as llama).
std::string gguf_arch(const ModelConfig& c) {
  if (c.model_type == "qwen2" || c.model_type == "qwen3" || c.model_type == "gemma2" || c.model_type == "phi3") return c.model_type;
  if (c.model_type == "gemma3_text") return "gemma3";
  if (c.model_type == "qwen2_moe") return "qwen2moe";
  if (c.model_type == "qwen3_moe") return "qwen3moe";
  return "llama";  // llama, mistral, and mixtral (llama with experts)
}

// llama.cpp's MoE graphs (src/models/llama.cpp, qwen2moe.cpp, qwen3moe.cpp at d32676d): every
// layer sparse; build_moe_ffn's norm_w fixed per architecture (llama/mixtral and qwen3moe
// renormalize the top-k weights, qwen2moe does not); qwen2moe's attention output is
// {n_embd, n_embd}.
void check_moe(const Model& model) {
  const ModelConfig& c = model.config();
  const std::string dir = model.dir().string(), arch = gguf_arch(c);
  if (std::find(c.moe.layer_moe.begin(), c.moe.layer_moe.end(), false) != c.moe.layer_moe.end()) {
    fail<UsageError>("{}: some layers are dense (mlp_only_layers / decoder_sparse_step), but llama.cpp's {} makes every layer sparse",
                     dir, arch);
  }
  const bool llama_norm = arch != "qwen2moe";
  if (c.moe.norm_topk_prob != llama_norm) {
    fail<UsageError>("{}: norm_topk_prob is {}, but llama.cpp's {} {} the top-k routing weights; the GGUF would compute a different model",
                     dir, c.moe.norm_topk_prob, arch, llama_norm ? "always renormalizes" : "never renormalizes");
  }
  if (arch == "qwen2moe" && c.head_dim * c.n_heads != c.hidden_size) {
    fail<UsageError>("{}: heads × head_dim = {} ≠ hidden_size {}: llama.cpp's qwen2moe needs them equal", dir, c.head_dim * c.n_heads, c.hidden_size);
  }
  if (arch == "qwen2moe" && c.moe.shared_ffn == 0) fail<UsageError>("{}: llama.cpp's qwen2moe needs the shared expert", dir);
}

// Gemma 3's sliding layers as llama.cpp sets them from a period p (llama_hparams::set_swa_pattern:
// layer il slides when il % p < p − 1, the same as transformers' (i + 1) % p != 0); 0 when the
// layers follow no period.
std::int64_t swa_period(const ModelConfig& c) {
  for (std::int64_t p = 1; p <= c.n_layers + 1; ++p) {
    bool ok = true;
    for (std::int64_t i = 0; i < c.n_layers && ok; ++i) ok = c.is_sliding(i) == (i % p < p - 1);
    if (ok) return p;
  }
  return 0;
}

// llama.cpp's attention scale for Gemma 2/3 (gemma2.cpp / gemma3.cpp load_arch_hparams):
// 1/sqrt(hidden/heads) for the 27B (46 resp. 62 layers), else 1/sqrt(head_dim); it ignores
// query_pre_attn_scalar, so the config must agree.
void check_gemma_scale(const ModelConfig& c, const std::string& dir, std::int64_t layers_27b) {
  const double llama_cpp_scale = c.n_layers == layers_27b ? 1.0 / std::sqrt(static_cast<double>(c.hidden_size / c.n_heads))
                                                          : 1.0 / std::sqrt(static_cast<double>(c.head_dim));
  if (std::abs(llama_cpp_scale - c.attn_scale) > 1e-9 * llama_cpp_scale) {
    fail("{}: query_pre_attn_scalar gives attention scale {:.6g}, but llama.cpp's {} uses {:.6g} for a {}-layer model",
         dir, c.attn_scale, gguf_arch(c), llama_cpp_scale, c.n_layers);
  }
}

// Gemma 3 as llama.cpp runs it (src/models/gemma3.cpp, convert_hf_to_gguf.py Gemma3Model):
// no attention soft-capping (the converter asserts it is absent), the attention scale above,
// sliding layers in a period (written as attention.sliding_window_pattern, default 6), the
// local RoPE base as rope.freq_base_swa unscaled, global RoPE scaling linear at most.
void check_gemma3(const Model& model) {
  const ModelConfig& c = model.config();
  const std::string dir = model.dir().string();
  if (c.attn_softcap > 0) fail("{}: llama.cpp's gemma3 has no attention soft-capping (attn_logit_softcapping {})", dir, c.attn_softcap);
  check_gemma_scale(c, dir, 62);
  if (swa_period(c) == 0) {
    fail("{}: the sliding-window layers follow no period p (layer i sliding when i % p < p - 1), which is all llama.cpp's gemma3 "
         "can express", dir);
  }
  if (c.rope_scaling.type != "none" && c.rope_scaling.type != "linear") {
    fail("{}: llama.cpp's gemma3 takes linear RoPE scaling at most (rope_scaling '{}')", dir, c.rope_scaling.type);
  }
}

// YaRN as llama.cpp applies it (llama-context.cpp: ext_factor 1, attention factor
// 0.1·ln(factor) + 1 recomputed from the factor, beta_fast/beta_slow from its defaults 32/1,
// the correction range floored/ceiled): a config that sets anything else would run differently.
void check_yarn(const ModelConfig& c, const std::string& dir) {
  const RopeScaling& r = c.rope_scaling;
  const double mscale = r.factor <= 1 ? 1.0 : 0.1 * std::log(r.factor) + 1.0;
  if (r.attention_factor_given && std::abs(r.attention_factor - mscale) > 1e-6) {
    fail("{}: rope_scaling yarn with attention factor {} (mscale/attention_factor): llama.cpp computes {} from the factor", dir,
         r.attention_factor, mscale);
  }
  if (r.beta_fast != 32.0 || r.beta_slow != 1.0 || !r.truncate) {
    fail("{}: rope_scaling yarn with beta_fast {} / beta_slow {} / truncate {}: llama.cpp runs 32 / 1 / true", dir, r.beta_fast,
         r.beta_slow, r.truncate);
  }
  if (gguf_arch(c) != "llama" && gguf_arch(c) != "qwen2" && gguf_arch(c) != "qwen3") {
    fail("{}: rope_scaling yarn cannot be exported for {}", dir, c.model_type);
  }
}

// Phi-3's RoPE as the converter writes it (Phi3MiniModel): rope dims int(partial·hidden)/heads,
// longrope as rope_factors_long/short tensors with rope.scaling.attn_factor
// sqrt(1 + ln(max/original) / ln(original)); an attention_factor the config sets is not written.
void check_phi3(const Model& model) {
  const ModelConfig& c = model.config();
  const std::string dir = model.dir().string();
  // llama-model.cpp load_tensors(LLM_ARCH_PHI3): attn_output is {n_embd, n_embd} and
  // n_embd_head = n_embd / n_head, so heads × head_dim must be the hidden size.
  if (c.n_heads * c.head_dim != c.hidden_size) {
    fail("{}: llama.cpp's phi3 needs num_attention_heads × head_dim = hidden_size ({} × {} ≠ {})", dir, c.n_heads, c.head_dim, c.hidden_size);
  }
  const double partial = static_cast<double>(c.rotary_dim) / static_cast<double>(c.head_dim);
  if (static_cast<std::int64_t>(partial * static_cast<double>(c.hidden_size)) / c.n_heads != c.rotary_dim) {
    fail("{}: the converter's rope dims int(partial_rotary_factor × hidden) / heads differ from transformers' {}", dir, c.rotary_dim);
  }
  const RopeScaling& r = c.rope_scaling;
  if (r.type != "none" && r.type != "longrope") fail("{}: rope_scaling '{}' cannot be exported for phi3 (longrope can)", dir, r.type);
  if (r.type == "longrope" && r.attention_factor_given) {
    const double f = r.factor <= 1 ? 1.0 : std::sqrt(1.0 + std::log(r.factor) / std::log(static_cast<double>(r.original_max_position_embeddings)));
    if (std::abs(f - r.attention_factor) > 1e-6) {
      fail("{}: rope_scaling longrope with attention_factor {}: llama.cpp's converter writes {} from the context lengths", dir, r.attention_factor, f);
    }
  }
  if (c.sliding_window > 0 && c.sliding_window < c.max_position_embeddings) {
    log::warn("{}: llama.cpp (since mid-2025) disables Phi-3's sliding window (\"Phi SWA is currently disabled\"): it agrees "
              "with transformers only for contexts up to {} tokens", dir, c.sliding_window);
  }
}

// Gemma 2 as llama.cpp (c392e50) runs it, each rule from the code that imposes it:
// - llama-model.cpp load_hparams(LLM_ARCH_GEMMA2): the model type comes from n_layer (26: 2B,
//   42: 9B, 46: 27B); build_gemma2 (llama.cpp) aborts on any other type;
// - build_gemma2 scales q by 1/sqrt(head_dim) for 2B/9B and 1/sqrt(hidden/heads) for 27B,
//   ignoring query_pre_attn_scalar, so the config must agree with that;
// - build_gemma2 uses the sliding-window mask on even layers (il % 2 == 0) and no RoPE scaling;
// - load_tensors(LLM_ARCH_GEMMA2) has no output.weight: the head is token_embd (tied).
void check_gemma2(const Model& model) {
  const ModelConfig& c = model.config();
  const std::string dir = model.dir().string();
  if (c.n_layers != 26 && c.n_layers != 42 && c.n_layers != 46) {
    fail("{}: llama.cpp runs gemma2 only with 26, 42 or 46 layers (the released 2B/9B/27B sizes; others abort in its "
         "graph), this model has {}", dir, c.n_layers);
  }
  check_gemma_scale(c, dir, 46);
  for (std::int64_t i = 0; i < c.n_layers; ++i) {
    if (c.is_sliding(i) != (i % 2 == 0)) {
      fail("{}: layer {} is {} but llama.cpp's gemma2 uses sliding-window attention exactly on the even layers", dir, i,
           c.is_sliding(i) ? "sliding" : "full attention");
    }
  }
  if (!model.layout().tied) fail("{}: llama.cpp's gemma2 reads the output head from token_embd; an untied lm_head cannot be exported", dir);
  if (c.rope_scaling.type != "none") fail("{}: llama.cpp's gemma2 takes no RoPE scaling (rope_scaling '{}')", dir, c.rope_scaling.type);
}

// llama.cpp's llama architecture is exported without linear biases (quant refuses them), qwen2
// with its q/k/v biases; RoPE scaling: none, linear (rope.scaling.* keys), llama3 (the
// rope_freqs.weight factors convert_hf_to_gguf.py writes), yarn (rope.scaling.* keys) and
// phi3's longrope (factor tensors); others are refused. Packed inputs are re-quantized.
void check_exportable(const Model& model) {
  const ModelConfig& c = model.config();
  const std::string dir = model.dir().string();
  if (c.is_moe()) check_moe(model);
  if (c.model_type == "gemma2") check_gemma2(model);
  if (c.model_type == "gemma3_text") check_gemma3(model);
  if (c.model_type == "phi3") check_phi3(model);
  const std::string& rope = c.rope_scaling.type;
  if (rope == "yarn") check_yarn(c, dir);
  if (rope != "none" && rope != "linear" && rope != "llama3" && rope != "yarn" && rope != "longrope") {
    fail("{}: rope_scaling type '{}' cannot be exported to GGUF (supported: linear, llama3, yarn, longrope for phi3)", dir, rope);
  }
  // llama.cpp's llama/qwen2/qwen3 graphs attend over the whole context (no n_swa for them).
  const std::string arch = gguf_arch(c);
  if ((arch == "llama" || arch == "qwen2" || arch == "qwen3" || arch == "qwen2moe" || arch == "qwen3moe") && c.sliding_window > 0 &&
      std::any_of(c.layer_sliding.begin(), c.layer_sliding.end(), [](bool b) { return b; })) {
    log::warn("{}: llama.cpp's {} runs without the {}-token sliding window: it agrees with transformers only for contexts up to "
              "that length", dir, arch, c.sliding_window);
  }
  for (const auto& layer : model.layout().layers) {
    for (const auto& l : layer.linears) {
      const bool qkv = l.kind == LinearKind::q || l.kind == LinearKind::k || l.kind == LinearKind::v;
      if (l.bias && !((c.model_type == "qwen2" || c.model_type == "qwen2_moe") && qkv)) fail("{}: '{}' has a bias, which llama.cpp's {} architecture does not load", model.dir().string(), l.prefix, gguf_arch(c));
      if (model.storage(l) == LinearStorage::packed) {
        log::warn("{}: '{}' is stored quantized; it is dequantized and re-quantized for GGUF", model.dir().string(), l.prefix);
      }
    }
  }
}

// general.* and llama.* metadata, as llama.cpp's converter writes them.
void set_metadata(const Model& model, const ExportOptions& o, Writer& w) {
  const ModelConfig& c = model.config();
  const std::string arch = gguf_arch(c);
  w.set("general.architecture", Value::str(arch));
  std::string name = o.name;
  if (name.empty()) name = model.dir().filename().string().empty() ? model.dir().parent_path().filename().string() : model.dir().filename().string();
  w.set("general.name", Value::str(name));
  w.set("general.file_type", Value::u32(o.type.ftype));
  w.set("general.quantization_version", Value::u32(2));
  w.set("general.quantized_by", Value::str("quant 0.1.0"));  // marks the file as quant's own (--force replaces only these)
  if (!o.job_id.empty()) w.set("quant.job_id", Value::str(o.job_id));
  w.set("general.alignment", Value::u32(32));
  w.set(arch + ".context_length", Value::u32(static_cast<std::uint32_t>(c.max_position_embeddings)));
  w.set(arch + ".embedding_length", Value::u32(static_cast<std::uint32_t>(c.hidden_size)));
  w.set(arch + ".block_count", Value::u32(static_cast<std::uint32_t>(c.n_layers)));
  w.set(arch + ".feed_forward_length", Value::u32(static_cast<std::uint32_t>(c.intermediate_size)));
  w.set(arch + ".rope.dimension_count", Value::u32(static_cast<std::uint32_t>(c.rotary_dim)));
  w.set(arch + ".rope.freq_base", Value::f32(static_cast<float>(c.rope_theta)));
  w.set(arch + ".attention.head_count", Value::u32(static_cast<std::uint32_t>(c.n_heads)));
  w.set(arch + ".attention.head_count_kv", Value::u32(static_cast<std::uint32_t>(c.n_kv_heads)));
  w.set(arch + ".attention.layer_norm_rms_epsilon", Value::f32(static_cast<float>(c.rms_norm_eps)));
  w.set(arch + ".vocab_size", Value::u32(static_cast<std::uint32_t>(c.vocab_size)));
  if (c.is_moe()) {  // convert_hf_to_gguf.py: add_expert_count / _used_count / _feed_forward_length
    w.set(arch + ".expert_count", Value::u32(static_cast<std::uint32_t>(c.moe.n_experts)));
    w.set(arch + ".expert_used_count", Value::u32(static_cast<std::uint32_t>(c.moe.top_k)));
    if (arch != "llama") w.set(arch + ".expert_feed_forward_length", Value::u32(static_cast<std::uint32_t>(c.moe.expert_ffn)));
    if (c.moe.shared_ffn > 0) w.set(arch + ".expert_shared_feed_forward_length", Value::u32(static_cast<std::uint32_t>(c.moe.shared_ffn)));
  }
  if (c.head_dim * c.n_heads != c.hidden_size || c.model_type == "gemma2" || c.model_type == "gemma3_text") {
    w.set(arch + ".attention.key_length", Value::u32(static_cast<std::uint32_t>(c.head_dim)));
    w.set(arch + ".attention.value_length", Value::u32(static_cast<std::uint32_t>(c.head_dim)));
  }
  if (c.model_type == "phi3") {
    // convert_hf_to_gguf.py Phi3MiniModel.set_gguf_parameters; llama.cpp requires a sliding
    // window for phi3 (load_hparams: "invalid value for sliding_window"): without one in the
    // config, the context length, which masks nothing.
    w.set(arch + ".attention.sliding_window",
          Value::u32(static_cast<std::uint32_t>(c.sliding_window > 0 ? c.sliding_window : c.max_position_embeddings)));
    if (c.rope_scaling.type == "longrope") {
      w.set(arch + ".rope.scaling.original_context_length", Value::u32(static_cast<std::uint32_t>(c.rope_scaling.original_max_position_embeddings)));
      w.set(arch + ".rope.scaling.attn_factor", Value::f32(static_cast<float>(c.rope_scaling.attention_factor)));
    } else if (c.raw.contains("original_max_position_embeddings") && c.raw["original_max_position_embeddings"].is_number_integer()) {
      w.set(arch + ".rope.scaling.original_context_length", Value::u32(c.raw["original_max_position_embeddings"].get<std::uint32_t>()));
    }
  }
  if (c.model_type == "gemma3_text") {  // convert_hf_to_gguf.py Gemma3Model.set_gguf_parameters
    if (c.final_softcap > 0) w.set(arch + ".final_logit_softcapping", Value::f32(static_cast<float>(c.final_softcap)));
    const std::int64_t period = swa_period(c);
    if (period != 1 && c.sliding_window > 0) {
      w.set(arch + ".attention.sliding_window", Value::u32(static_cast<std::uint32_t>(c.sliding_window)));
      // llama.cpp's default period is 6 (Gemma 3's); the converter writes none.
      if (period != 6) w.set(arch + ".attention.sliding_window_pattern", Value::u32(static_cast<std::uint32_t>(period)));
    }
    w.set(arch + ".rope.freq_base_swa", Value::f32(static_cast<float>(c.rope_local_theta)));
  }
  if (c.model_type == "gemma2") {  // convert_hf_to_gguf.py Gemma2Model.set_gguf_parameters
    w.set(arch + ".attn_logit_softcapping", Value::f32(static_cast<float>(c.attn_softcap)));
    w.set(arch + ".final_logit_softcapping", Value::f32(static_cast<float>(c.final_softcap)));
    w.set(arch + ".attention.sliding_window", Value::u32(static_cast<std::uint32_t>(c.sliding_window)));
  }
  if (c.rope_scaling.type == "linear" || c.rope_scaling.type == "yarn") {  // TextModel.set_gguf_parameters
    w.set(arch + ".rope.scaling.type", Value::str(c.rope_scaling.type));
    w.set(arch + ".rope.scaling.factor", Value::f32(static_cast<float>(c.rope_scaling.factor)));
    if (c.rope_scaling.type == "yarn") {
      w.set(arch + ".rope.scaling.original_context_length", Value::u32(static_cast<std::uint32_t>(c.rope_scaling.original_max_position_embeddings)));
    }
  }
  add_tokenizer(model, w);
  // llama-vocab.cpp load (c392e50): a general.name containing "phi-3"/"phi3" sets attributes on
  // the tokens "</s>", "<unk>", "<s>", "<|endoftext|>" with unordered_map::at, so loading fails
  // when the vocabulary lacks one.
  std::string lower = name;
  std::transform(lower.begin(), lower.end(), lower.begin(), [](unsigned char ch) { return static_cast<char>(std::tolower(ch)); });
  if (lower.find("phi-3") != std::string::npos || lower.find("phi3") != std::string::npos) {
    const Value* tokens = w.find("tokenizer.ggml.tokens");
    for (const char* needed : {"</s>", "<unk>", "<s>", "<|endoftext|>"}) {
      const bool present = tokens && std::any_of(tokens->arr.begin(), tokens->arr.end(), [&](const Value& t) { return t.s == needed; });
      if (!present) {
        fail("{}: the GGUF name '{}' makes llama.cpp treat the vocabulary as Phi-3's, which needs the token '{}' this tokenizer "
             "lacks; llama.cpp would fail to load the file (rename the model directory)", model.dir().string(), name, needed);
      }
    }
  }
}

// Llama 3.1's per-frequency RoPE divisors (convert_hf_to_gguf.py LlamaModel.generate_extra_tensors,
// the same bands as transformers' _compute_llama3_parameters): 1 for short wavelengths, `factor`
// for long ones, interpolated between. llama.cpp divides each frequency by its factor.
std::vector<float> llama3_rope_factors(const ModelConfig& c) {
  const RopeScaling& rs = c.rope_scaling;
  const double old_ctx = static_cast<double>(rs.original_max_position_embeddings);
  const double low_wavelen = old_ctx / rs.low_freq_factor, high_wavelen = old_ctx / rs.high_freq_factor;
  std::vector<float> factors;
  for (std::int64_t i = 0; i < c.head_dim / 2; ++i) {
    // As the converter: the frequency in float32 (torch.arange(0, dim, 2, dtype=float32) / dim).
    const float freq = 1.0f / std::pow(static_cast<float>(c.rope_theta), static_cast<float>(2 * i) / static_cast<float>(c.head_dim));
    const double wavelen = 2.0 * M_PI / freq;
    if (wavelen < high_wavelen) {
      factors.push_back(1.0f);
    } else if (wavelen > low_wavelen) {
      factors.push_back(static_cast<float>(rs.factor));
    } else {
      const double smooth = (old_ctx / wavelen - rs.low_freq_factor) / (rs.high_freq_factor - rs.low_freq_factor);
      factors.push_back(static_cast<float>(1.0 / ((1.0 - smooth) / rs.factor + smooth)));
    }
  }
  return factors;
}

}  // namespace

ExportReport export_gguf(const Model& model, const fs::path& out, const ExportOptions& o) {
  const auto start = std::chrono::steady_clock::now();
  const ModelConfig& c = model.config();
  check_exportable(model);
  Writer w;
  set_metadata(model, o, w);

  // Tensors in llama.cpp's order, each with a loader producing its float data.
  struct Item {
    std::function<Mat()> load;  // row-major, [rows, row]
    std::int64_t row = 0;
    std::string hf_name;        // the source tensor
    std::int64_t rope_heads = 0;  // q/k: rows permuted over this many heads
    std::vector<std::string> hf_parts;  // stacked experts: the source tensor of each equal block of rows
  };
  std::vector<Item> items;
  ExportReport rep;
  auto add = [&](const std::string& name, std::vector<std::int64_t> shape, GgmlType type, std::function<Mat()> load,
                 std::string hf_name = {}, std::int64_t rope_heads = 0) {
    w.add_tensor(name, shape, type);
    items.push_back({std::move(load), shape.back(), std::move(hf_name), rope_heads});
    rep.tensor_types[name] = type_info(type).name;
  };
  auto vec = [&](const std::string& name) {
    return [&model, name] {
      const Vec v = load_vector(model, name);
      return Mat(Eigen::Map<const Mat>(v.data(), 1, v.size()));
    };
  };
  // Norm weights as llama.cpp multiplies them: Gemma's (1 + w) is stored as w + 1
  // (convert_hf_to_gguf.py Gemma2Model.modify_tensors: every "norm.weight" gets + 1).
  auto norm = [&](const std::string& name) {
    return [&model, name] {
      const Vec v = (load_vector(model, name).array() + model.config().norm_offset).matrix();
      return Mat(Eigen::Map<const Mat>(v.data(), 1, v.size()));
    };
  };
  // Loaded weights are already checked finite (load_linear names the file and tensor).
  auto mat = [&](const LinearDesc& l, std::int64_t permute_heads) {
    return [&model, &l, permute_heads] {
      Mat m = load_linear(model, l);
      if (permute_heads <= 0) return m;
      Mat r(m.rows(), m.cols());
      rope_rows(m.data(), r.data(), m.rows(), permute_heads, m.cols(), false);
      return r;
    };
  };
  const auto& L = model.layout();
  std::deque<LinearDesc> fused_descs;  // Phi-3's stored tensors as linears (stable addresses for the loaders)
  const std::int64_t H = c.hidden_size;
  const bool imatrix = !o.importance.empty() || o.importance_planned;
  // llama-quantize's guard (examples/quantize/quantize.cpp main): Q2_K_S is meant for an imatrix.
  if (o.type.name == "q2_k_s" && !imatrix) {
    fail<UsageError>("q2_k_s needs importance weights (--calib or --imatrix), as llama-quantize requires; use q2_k without them");
  }
  const std::string& dt = c.torch_dtype;
  TypeChooser choose{o, {}, dt == "float32" ? GgmlType::F32 : dt == "bfloat16" ? GgmlType::BF16 : GgmlType::F16, imatrix};
  for (const auto& [re, type] : o.tensor_types) {
    try {
      choose.patterns.emplace_back(std::regex(re), type);
    } catch (const std::regex_error& e) {
      fail<UsageError>("--tensor-type '{}': not a regular expression: {}", re, e.what());
    }
  }
  const int n_layers = static_cast<int>(c.n_layers);
  if (c.rope_scaling.type == "llama3") {
    add("rope_freqs.weight", {c.head_dim / 2}, GgmlType::F32, [&c] {
      const std::vector<float> f = llama3_rope_factors(c);
      return Mat(Eigen::Map<const Mat>(f.data(), 1, static_cast<Eigen::Index>(f.size())));
    });
  }
  if (c.rope_scaling.type == "longrope") {  // Phi3MiniModel.generate_extra_tensors
    for (const auto& entry : {std::pair{"rope_factors_long.weight", &c.rope_scaling.long_factor},
                              std::pair{"rope_factors_short.weight", &c.rope_scaling.short_factor}}) {
      const std::vector<double>* f = entry.second;
      add(entry.first, {c.rotary_dim / 2}, GgmlType::F32, [f] {
        Mat m(1, static_cast<Eigen::Index>(f->size()));
        for (std::size_t i = 0; i < f->size(); ++i) m(0, static_cast<Eigen::Index>(i)) = static_cast<float>((*f)[i]);
        return m;
      });
    }
  }
  const std::int64_t gqa = c.n_heads / std::max<std::int64_t>(c.n_kv_heads, 1);
  const bool llama_70b = gguf_arch(c) == "llama" && c.n_layers == 80;
  auto place = [&](Role role, int layer) { return Placement{role, layer, n_layers, gqa, llama_70b}; };
  const Placement embed_place = place(L.tied ? Role::output : Role::token_embd, 0);
  add("token_embd.weight", {c.vocab_size, H}, choose("token_embd.weight", embed_place, H), [&model, &L] {
    return load_matrix(model, L.embed);
  }, L.embed);
  // A sparse layer (llama-arch.cpp LLM_TENSOR_FFN_GATE_INP, FFN_*_EXPS, FFN_*_SHEXP): the router in
  // float32 (llama-quantize never quantizes ffn_gate_inp), each routed linear's experts stacked
  // into {n_expert, rows, cols}, qwen2moe's shared expert and its gate ([1, H] stored as {H}).
  auto add_moe_tensors = [&](const LayerDesc& layer) {
    const std::string b = fmt::format("blk.{}.", layer.index);
    add(b + "ffn_gate_inp.weight", {layer.n_experts, H}, GgmlType::F32, [&model, name = layer.router] { return load_matrix(model, name); });
    for (LinearKind k : {LinearKind::gate, LinearKind::down, LinearKind::up}) {
      const LinearDesc& first = layer.expert(0, k);
      const std::string name = gguf_linear_name(first);
      std::vector<std::string> parts;
      for (int e = 0; e < layer.n_experts; ++e) parts.push_back(layer.expert(e, k).weight_name());
      add(name, {layer.n_experts, first.out, first.in},
          choose(name, place(k == LinearKind::down ? Role::ffn_down : Role::other, layer.index), first.in),
          [&model, &layer, k] {
            const LinearDesc& f = layer.expert(0, k);
            Mat all(static_cast<Eigen::Index>(layer.n_experts) * f.out, f.in);
            for (int e = 0; e < layer.n_experts; ++e) all.middleRows(e * f.out, f.out) = load_linear(model, layer.expert(e, k));
            return all;
          });
      items.back().hf_parts = std::move(parts);
    }
    if (!layer.has_shared_expert()) return;
    add(b + "ffn_gate_inp_shexp.weight", {H}, GgmlType::F32, [&model, name = layer.shared_gate] { return load_matrix(model, name); });
    for (LinearKind k : {LinearKind::gate, LinearKind::down, LinearKind::up}) {
      const LinearDesc& l = layer.expert(-1, k);
      add(gguf_linear_name(l), {l.out, l.in}, choose(gguf_linear_name(l), place(k == LinearKind::down ? Role::ffn_down : Role::other, layer.index), l.in),
          mat(l, 0), l.weight_name());
    }
  };
  for (const auto& layer : L.layers) {
    const std::string b = fmt::format("blk.{}.", layer.index);
    add(b + "attn_norm.weight", {H}, GgmlType::F32, norm(layer.attn_norm));
    for (LinearKind k : kAllLinearKinds) {
      if (layer.moe && k >= LinearKind::gate) break;  // the sparse block follows
      const LinearDesc& part = layer.linear(k);
      if (part.fused() && part.row_offset != 0) continue;  // written with its storage's first part
      const LinearDesc& l = part.fused() ? fused_descs.emplace_back(part.storage_desc()) : part;
      // llama's q/k rows are permuted to llama.cpp's RoPE pairing; qwen2 uses NEOX RoPE (HF's layout).
      const bool permute = gguf_arch(c) == "llama";
      const std::int64_t heads = !permute ? 0 : k == LinearKind::q ? c.n_heads : k == LinearKind::k ? c.n_kv_heads : 0;
      const Role role = l.tensor_prefix().ends_with(".qkv_proj") ? Role::attn_qkv
                        : k == LinearKind::v                        ? Role::attn_v
                        : k == LinearKind::o                        ? Role::attn_output
                        : k == LinearKind::down                     ? Role::ffn_down
                                                                    : Role::other;
      add(gguf_linear_name(l), {l.out, l.in}, choose(gguf_linear_name(l), place(role, layer.index), l.in), mat(l, heads),
          l.weight_name(), heads);
      if (l.bias) {
        add(fmt::format("blk.{}.{}.bias", layer.index, k == LinearKind::q ? "attn_q" : k == LinearKind::k ? "attn_k" : "attn_v"), {l.out},
            GgmlType::F32, vec(l.bias_name()));
      }
      if (k == LinearKind::k && !layer.q_norm.empty()) {  // qwen3: blk.N.attn_{q,k}_norm (llama-arch.cpp LLM_ARCH_QWEN3)
        add(b + "attn_q_norm.weight", {c.head_dim}, GgmlType::F32, norm(layer.q_norm));
        add(b + "attn_k_norm.weight", {c.head_dim}, GgmlType::F32, norm(layer.k_norm));
      }
      if (k == LinearKind::o) {
        if (!layer.post_attn_norm.empty()) add(b + "post_attention_norm.weight", {H}, GgmlType::F32, norm(layer.post_attn_norm));
        add(b + "ffn_norm.weight", {H}, GgmlType::F32, norm(layer.mlp_norm));
      }
      if (k == LinearKind::down && !layer.post_mlp_norm.empty()) add(b + "post_ffw_norm.weight", {H}, GgmlType::F32, norm(layer.post_mlp_norm));
    }
    if (layer.moe) add_moe_tensors(layer);
  }
  add("output_norm.weight", {H}, GgmlType::F32, norm(L.final_norm));
  if (!L.tied) add("output.weight", {L.lm_head.out, L.lm_head.in}, choose("output.weight", place(Role::output, 0), H), mat(L.lm_head, 0),
                    L.lm_head.weight_name());
  // llama.cpp's phi3 and qwen2moe require output.weight (load_tensors, flag 0): a tied head is written out.
  else if (c.model_type == "phi3" || c.model_type == "qwen2_moe") add("output.weight", {c.vocab_size, H}, choose("output.weight", place(Role::output, 0), H), [&model, &L] {
    return load_matrix(model, L.embed);
  });

  rep.tensors = w.tensors();
  if (o.dry_run) {
    rep.bytes = w.file_size();
    return rep;
  }
  StagedFile staged(out, o.output);  // checked against the inputs, locked
  // Tensor i + 1 is read and converted while tensor i is quantized (at most two in memory).
  std::future<Mat> next;
  auto prefetch = [&](std::size_t i) {
    if (i < items.size()) next = std::async(std::launch::async, items[i].load);
  };
  prefetch(0);
  w.write_to(staged.file(), [&](std::size_t i) {
    check_interrupted();
    const TensorInfo& t = w.tensors()[i];
    const Mat x = next.get();
    prefetch(i + 1);
    const auto it = o.importance.find(t.name);
    const float* imp = it == o.importance.end() ? nullptr : it->second.data();
    if (imp && static_cast<std::int64_t>(it->second.size()) != items[i].row) fail<Error>("importance of '{}' has the wrong size", t.name);
    log::debug("{} {} {}", t.name, type_info(t.type).name, imp ? "(weighted)" : "");
    std::vector<std::uint8_t> q = quantize_matrix(t.type, x.data(), t.numel() / items[i].row, items[i].row, imp);
    if (o.dequantized && (!items[i].hf_name.empty() || !items[i].hf_parts.empty())) {
      std::vector<float> y(static_cast<std::size_t>(t.numel()));
      const std::uint64_t rb = data_bytes(t.type, items[i].row);
      const std::int64_t rows = t.numel() / items[i].row;
      for (std::int64_t r = 0; r < rows; ++r) {
        dequantize_row(t.type, q.data() + static_cast<std::uint64_t>(r) * rb, items[i].row, y.data() + r * items[i].row);
      }
      if (items[i].rope_heads > 0) y = unpermute_rope_rows(y, items[i].rope_heads, items[i].row);
      if (items[i].hf_parts.empty()) {
        o.dequantized(items[i].hf_name, y, {rows, items[i].row});
      } else {  // stacked experts: each expert's block of rows to its own tensor
        const auto n = static_cast<std::int64_t>(items[i].hf_parts.size());
        const std::int64_t per = rows / n;
        for (std::int64_t e = 0; e < n; ++e) {
          const auto from = y.begin() + e * per * items[i].row;
          o.dequantized(items[i].hf_parts[static_cast<std::size_t>(e)], std::vector<float>(from, from + per * items[i].row), {per, items[i].row});
        }
      }
    }
    return q;
  });
  staged.commit();
  rep.output = staged.final_path();
  rep.bytes = is_stream_target(rep.output) ? 0 : fs::file_size(rep.output);
  rep.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return rep;
}

}  // namespace quant::gguf
