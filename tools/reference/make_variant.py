#!/usr/bin/env python3
"""Rebuilds a Llama checkpoint (e.g. ../shared/models/wiki-llama-5m) in place as another family,
from the same trained weights, so that family's code paths run on a model whose perplexity means
something: llama3 / linear / yarn RoPE scaling, qwen2 (random q/k/v biases), qwen3 (random q/k
norms), gemma2 (26 layers, Gemma norms, soft-caps, sliding window), gemma3 (8 layers, period-4
sliding window, q/k norms), fused / fusedlong (Phi-3's qkv_proj and gate_up_proj; fusedlong adds
longrope and partial rotary), mixtral / qwen2moe / qwen3moe (4 experts per layer built from the
dense MLP, random routers). Used by tests/llamacpp/check_arch.sh and bench/families.sh.

Usage: make_variant.py DIR VARIANT   (DIR is a copy of the model; stdlib only)
"""
import json, struct, sys, random


def read_tensors(d):
    """(header, data region) of DIR/model.safetensors."""
    raw = open(f"{d}/model.safetensors", "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def write_tensors(d, out):
    """DIR/model.safetensors from {name: (dtype, shape, bytes)} in order."""
    hdr, body = {}, bytearray()
    for name, (dt, sh, blob) in out.items():
        hdr[name] = {"dtype": dt, "shape": sh, "data_offsets": [len(body), len(body) + len(blob)]}; body += blob
    h = json.dumps(hdr).encode(); h += b" " * ((8 - len(h) % 8) % 8)
    open(f"{d}/model.safetensors", "wb").write(struct.pack("<Q", len(h)) + h + body)


def minus_one(blob):  # F16 values v → v − 1 (Gemma stores norms as w with the 1 + w applied at run time)
    vals = struct.unpack(f"<{len(blob) // 2}e", blob); return struct.pack(f"<{len(vals)}e", *[v - 1 for v in vals])


d, edit = sys.argv[1], sys.argv[2]
cfg = json.load(open(f"{d}/config.json"))
if edit == "llama3":
    cfg["rope_scaling"] = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                           "original_max_position_embeddings": 64}
elif edit == "linear":
    cfg["rope_scaling"] = {"type": "linear", "rope_type": "linear", "factor": 2.0}
elif edit == "qwen2":
    cfg["model_type"] = "qwen2"; cfg["architectures"] = ["Qwen2ForCausalLM"]
    # q/k/v biases (random, small): appended to the safetensors file as F16.
    raw = open(f"{d}/model.safetensors", "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]; hdr = json.loads(raw[8:8 + n]); data = bytearray(raw[8 + n:])
    rng = random.Random(0)
    hd = cfg["hidden_size"] // cfg["num_attention_heads"]
    for l in range(cfg["num_hidden_layers"]):
        for p, rows in (("q", cfg["num_attention_heads"] * hd), ("k", cfg["num_key_value_heads"] * hd), ("v", cfg["num_key_value_heads"] * hd)):
            vals = struct.pack(f"<{rows}e", *[rng.gauss(0, 0.3) for _ in range(rows)])
            hdr[f"model.layers.{l}.self_attn.{p}_proj.bias"] = {"dtype": "F16", "shape": [rows], "data_offsets": [len(data), len(data) + len(vals)]}
            data += vals
    h = json.dumps(hdr).encode(); h += b" " * ((8 - len(h) % 8) % 8)
    open(f"{d}/model.safetensors", "wb").write(struct.pack("<Q", len(h)) + h + data)
elif edit == "gemma2":
    # Gemma 2 from the same weights: 26 layers (llama.cpp runs gemma2 only at 26/42/46), layer i
    # reusing layer i % 6; norms in Gemma's 1 + w form (w − 1), the post-block norms 1 + 0; a
    # 64-token sliding window on even layers so that the 512-token windows exercise it.
    hdr, data = read_tensors(d)
    def get(name):
        a, b = hdr[name]["data_offsets"]; return hdr[name]["dtype"], hdr[name]["shape"], data[a:b]
    L0 = cfg["num_hidden_layers"]; H = cfg["hidden_size"]; hd = H // cfg["num_attention_heads"]
    out = {"model.embed_tokens.weight": get("model.embed_tokens.weight")}
    dt, sh, blob = get("model.norm.weight"); out["model.norm.weight"] = (dt, sh, minus_one(blob))
    zeros = struct.pack(f"<{H}e", *([0.0] * H))
    for l in range(26):
        s, p = f"model.layers.{l % L0}.", f"model.layers.{l}."
        for t in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"):
            out[p + t + ".weight"] = get(s + t + ".weight")
        dt, sh, blob = get(s + "input_layernorm.weight"); out[p + "input_layernorm.weight"] = (dt, sh, minus_one(blob))
        dt, sh, blob = get(s + "post_attention_layernorm.weight"); out[p + "pre_feedforward_layernorm.weight"] = (dt, sh, minus_one(blob))
        out[p + "post_attention_layernorm.weight"] = ("F16", [H], zeros)
        out[p + "post_feedforward_layernorm.weight"] = ("F16", [H], zeros)
    write_tensors(d, out)
    cfg.update({"model_type": "gemma2", "architectures": ["Gemma2ForCausalLM"], "num_hidden_layers": 26, "head_dim": hd,
                "query_pre_attn_scalar": hd, "sliding_window": 64, "attn_logit_softcapping": 50.0,
                "final_logit_softcapping": 30.0, "hidden_activation": "gelu_pytorch_tanh", "tie_word_embeddings": True})
    cfg.pop("hidden_act", None)
elif edit in ("fused", "fusedlong"):  # named so: llama.cpp keys Phi-3 vocabulary quirks on general.name
    # Phi-3 layout from the same weights: q/k/v stacked into qkv_proj, gate/up into gate_up_proj,
    # and a 64-token sliding window on every layer (Phi3Model's mask).
    hdr, data = read_tensors(d)
    def blob(name):
        a, b = hdr[name]["data_offsets"]; return data[a:b]
    out = {}
    for name, info in hdr.items():
        if name == "__metadata__": continue
        if any(name.endswith(f"{t}.weight") for t in ("k_proj", "v_proj", "up_proj")): continue
        if name.endswith("q_proj.weight"):
            base = name[: -len("q_proj.weight")]
            parts = [hdr[base + t + ".weight"] for t in ("q_proj", "k_proj", "v_proj")]
            out[base + "qkv_proj.weight"] = ("F16", [sum(p["shape"][0] for p in parts), parts[0]["shape"][1]],
                                             b"".join(blob(base + t + ".weight") for t in ("q_proj", "k_proj", "v_proj")))
        elif name.endswith("gate_proj.weight"):
            base = name[: -len("gate_proj.weight")]
            g, u = hdr[base + "gate_proj.weight"], hdr[base + "up_proj.weight"]
            out[base + "gate_up_proj.weight"] = ("F16", [g["shape"][0] + u["shape"][0], g["shape"][1]],
                                                 blob(base + "gate_proj.weight") + blob(base + "up_proj.weight"))
        else:
            out[name] = (info["dtype"], info["shape"], blob(name))
    write_tensors(d, out)
    cfg.update({"model_type": "phi3", "architectures": ["Phi3ForCausalLM"], "sliding_window": 1024})
    if edit == "fusedlong":
        # Phi-3 128k style: longrope (512-token windows > original 256: the long factors), the
        # attention factor from max/original = 8, and RoPE over half of each head.
        rng = random.Random(1)
        n = cfg["hidden_size"] // cfg["num_attention_heads"] // 4
        cfg.update({"partial_rotary_factor": 0.5, "original_max_position_embeddings": 256, "max_position_embeddings": 2048,
                    "rope_scaling": {"type": "longrope", "long_factor": [1 + 3 * rng.random() for _ in range(n)],
                                     "short_factor": [1 + rng.random() for _ in range(n)]}})
elif edit == "yarn":
    cfg["max_position_embeddings"] = 512  # = factor × original: every transformers version reads it alike
    cfg["rope_scaling"] = {"rope_type": "yarn", "factor": 8.0, "original_max_position_embeddings": 64}
elif edit in ("qwen3", "gemma3"):
    hdr, data = read_tensors(d)
    def get(name):
        a, b = hdr[name]["data_offsets"]; return hdr[name]["dtype"], hdr[name]["shape"], data[a:b]
    rng = random.Random(2)
    L0 = cfg["num_hidden_layers"]; H = cfg["hidden_size"]; hd = H // cfg["num_attention_heads"]
    gemma = edit == "gemma3"
    L = 8 if gemma else L0
    def qk_norm():  # RMSNorm weights over head_dim: 1 + noise (Gemma stores the noise itself)
        return ("F16", [hd], struct.pack(f"<{hd}e", *[(0.0 if gemma else 1.0) + rng.gauss(0, 0.2) for _ in range(hd)]))
    out = {"model.embed_tokens.weight": get("model.embed_tokens.weight")}
    dt, sh, blob = get("model.norm.weight"); out["model.norm.weight"] = (dt, sh, minus_one(blob) if gemma else blob)
    zeros = struct.pack(f"<{H}e", *([0.0] * H))
    for l in range(L):
        s, p = f"model.layers.{l % L0}.", f"model.layers.{l}."
        for t in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"):
            out[p + t + ".weight"] = get(s + t + ".weight")
        out[p + "self_attn.q_norm.weight"] = qk_norm(); out[p + "self_attn.k_norm.weight"] = qk_norm()
        dt, sh, blob = get(s + "input_layernorm.weight"); out[p + "input_layernorm.weight"] = (dt, sh, minus_one(blob) if gemma else blob)
        dt, sh, blob = get(s + "post_attention_layernorm.weight")
        if gemma:
            out[p + "pre_feedforward_layernorm.weight"] = (dt, sh, minus_one(blob))
            out[p + "post_attention_layernorm.weight"] = ("F16", [H], zeros)
            out[p + "post_feedforward_layernorm.weight"] = ("F16", [H], zeros)
        else:
            out[p + "post_attention_layernorm.weight"] = (dt, sh, blob)
    if "lm_head.weight" in hdr: out["lm_head.weight"] = get("lm_head.weight")
    write_tensors(d, out)
    if gemma:
        # Gemma 3 from the same weights: 8 layers (layer i reusing i % 6), sliding layers with
        # period 4 and a 64-token window, local RoPE base 10^4, global 10^4 with linear ×2.
        cfg.update({"model_type": "gemma3_text", "architectures": ["Gemma3ForCausalLM"], "num_hidden_layers": L, "head_dim": hd,
                    "query_pre_attn_scalar": hd, "sliding_window": 64, "sliding_window_pattern": 4,
                    "final_logit_softcapping": 30.0, "attn_logit_softcapping": None, "hidden_activation": "gelu_pytorch_tanh",
                    "tie_word_embeddings": True, "rope_theta": 10000.0, "rope_local_base_freq": 10000.0,
                    "rope_scaling": {"rope_type": "linear", "factor": 2.0}})
        cfg.pop("hidden_act", None)
    else:
        cfg.update({"model_type": "qwen3", "architectures": ["Qwen3ForCausalLM"], "head_dim": hd, "rope_theta": 10000.0})
elif edit in ("mixtral", "qwen2moe", "qwen3moe"):
    # MoE from the same weights: 4 experts per layer, each the layer's MLP with its down_proj
    # scaled by 0.7, 0.9, 1.1 or 1.3 (so the routing matters), a random router (top 2);
    # qwen2moe adds the MLP at half scale as its shared expert with a random sigmoid gate,
    # qwen3moe random q/k norms. Every layer sparse, as llama.cpp needs.
    hdr, data = read_tensors(d)
    def get(name):
        a, b = hdr[name]["data_offsets"]; return hdr[name]["dtype"], hdr[name]["shape"], data[a:b]
    def scaled(t, f):
        dt, sh, blob = t; vals = struct.unpack(f"<{len(blob) // 2}e", blob)
        return dt, sh, struct.pack(f"<{len(vals)}e", *[v * f for v in vals])
    rng = random.Random(3)
    def rand(shape, sd, mean=0.0):
        n = 1
        for x in shape: n *= x
        return ("F16", shape, struct.pack(f"<{n}e", *[mean + rng.gauss(0, sd) for _ in range(n)]))
    L = cfg["num_hidden_layers"]; H = cfg["hidden_size"]; F = cfg["intermediate_size"]; hd = H // cfg["num_attention_heads"]; E = 4
    mixtral = edit == "mixtral"
    block = "block_sparse_moe." if mixtral else "mlp."
    names = ("w1", "w3", "w2") if mixtral else ("gate_proj", "up_proj", "down_proj")
    out = {}
    for name in hdr:
        if name == "__metadata__" or ".mlp." in name: continue
        out[name] = get(name)
    for l in range(L):
        p = f"model.layers.{l}."
        g, u, dn = (get(p + f"mlp.{t}.weight") for t in ("gate_proj", "up_proj", "down_proj"))
        out[p + block + "gate.weight"] = rand([E, H], 0.5)
        for e in range(E):
            x = f"{p}{block}experts.{e}."
            out[x + names[0] + ".weight"] = g; out[x + names[1] + ".weight"] = u
            out[x + names[2] + ".weight"] = scaled(dn, 0.7 + 0.2 * e)
        if edit == "qwen2moe":
            out[p + "mlp.shared_expert.gate_proj.weight"] = g; out[p + "mlp.shared_expert.up_proj.weight"] = u
            out[p + "mlp.shared_expert.down_proj.weight"] = scaled(dn, 0.5)
            out[p + "mlp.shared_expert_gate.weight"] = rand([1, H], 0.1)
        if edit == "qwen3moe":
            out[p + "self_attn.q_norm.weight"] = rand([hd], 0.2, 1.0); out[p + "self_attn.k_norm.weight"] = rand([hd], 0.2, 1.0)
    write_tensors(d, out)
    if mixtral:
        cfg.update({"model_type": "mixtral", "architectures": ["MixtralForCausalLM"], "num_local_experts": E, "num_experts_per_tok": 2,
                    "rope_theta": cfg.get("rope_theta", 10000.0), "sliding_window": None})
    else:
        cfg.update({"model_type": "qwen2_moe" if edit == "qwen2moe" else "qwen3_moe",
                    "architectures": ["Qwen2MoeForCausalLM" if edit == "qwen2moe" else "Qwen3MoeForCausalLM"],
                    "num_experts": E, "num_experts_per_tok": 2, "moe_intermediate_size": F, "head_dim": hd,
                    "norm_topk_prob": edit == "qwen3moe", "rope_theta": cfg.get("rope_theta", 10000.0)})
        if edit == "qwen2moe":
            cfg.update({"shared_expert_intermediate_size": F, "qkv_bias": False})
json.dump(cfg, open(f"{d}/config.json", "w"), indent=2)
