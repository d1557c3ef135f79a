#!/usr/bin/python3
"""Independent reference forward pass for quant's model families, written from transformers'
modeling code (modeling_llama.py, modeling_qwen3.py, modeling_gemma2.py, modeling_gemma3.py,
modeling_phi3.py, modeling_mixtral.py, modeling_qwen2_moe.py, modeling_qwen3_moe.py)
in plain torch, without transformers and without any quant code.

It reads the tiny checkpoints the C++ test suite writes (config.json, model.safetensors,
tokens.json) and writes the golden logits that tests/unit/families_test.cpp compares against:

    QUANT_FAMILY_FIXTURES_OUT=/tmp/families build/tests/unit/quant_unit_tests --gtest_filter='Families*'
    python3 tools/reference/hf_reference.py /tmp/families tests/golden/families

Needs python3-torch (Debian package); the C++ suite never runs it.
"""
import json
import math
import os
import struct
import sys

import torch

DTYPES = {"F32": torch.float32, "F16": torch.float16}


def load_safetensors(path):
    data = open(path, "rb").read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        a, b = info["data_offsets"]
        t = torch.frombuffer(bytearray(data[base + a:base + b]), dtype=DTYPES[info["dtype"]])
        out[name] = t.reshape(info["shape"]).float()
    return out


def rms_norm(x, w, eps, gemma):
    # LlamaRMSNorm: w * (x * rsqrt(mean(x^2) + eps)); Gemma2RMSNorm/Gemma3RMSNorm: (1 + w) * ...
    xn = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return xn * (1.0 + w) if gemma else xn * w


def inv_freq(cfg, base, scaling, T):
    """(inv_freq, attention_scaling) as modeling_rope_utils' _compute_*_parameters."""
    dim = int(cfg["head_dim"] * cfg.get("partial_rotary_factor", 1.0))
    f = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    kind = (scaling or {}).get("rope_type", (scaling or {}).get("type", "default"))
    attention = 1.0
    if kind == "yarn":  # _compute_yarn_parameters
        factor = scaling["factor"]
        orig = scaling.get("original_max_position_embeddings") or cfg["max_position_embeddings"]
        attention = scaling.get("attention_factor")
        if attention is None:
            attention = 0.1 * math.log(factor) + 1.0 if factor > 1 else 1.0
        beta_fast, beta_slow = scaling.get("beta_fast") or 32, scaling.get("beta_slow") or 1

        def corr(rot):
            return (dim * math.log(orig / (rot * 2 * math.pi))) / (2 * math.log(base))
        low, high = math.floor(corr(beta_fast)), math.ceil(corr(beta_slow))
        low, high = max(low, 0), min(high, dim - 1)
        if low == high:
            high += 0.001
        ramp = torch.clamp((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low), 0, 1)
        extra = 1 - ramp
        f = (f / factor) * (1 - extra) + f * extra
    elif kind in ("longrope", "su"):  # _compute_longrope_parameters + longrope_frequency_update
        orig = scaling.get("original_max_position_embeddings") or cfg.get("original_max_position_embeddings", 4096)
        factor = cfg["max_position_embeddings"] / orig
        attention = scaling.get("attention_factor")
        if attention is None:
            attention = 1.0 if factor <= 1 else math.sqrt(1 + math.log(factor) / math.log(orig))
        ext = torch.tensor(scaling["long_factor"] if T > orig else scaling["short_factor"], dtype=torch.float32)
        f = 1.0 / (ext * base ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    elif kind == "linear":  # _compute_linear_scaling_rope_parameters... positions / factor
        f = f / scaling["factor"]
    elif kind == "llama3":  # _compute_llama3_parameters
        factor, lo, hi = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
        old = scaling["original_max_position_embeddings"]
        low_wl, high_wl = old / lo, old / hi
        wl = 2 * math.pi / f
        scaled = torch.where(wl > low_wl, f / factor, f)
        smooth = (old / wl - lo) / (hi - lo)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wl < high_wl) * ~(wl > low_wl)
        f = torch.where(medium, smoothed, scaled)
    elif kind != "default":
        raise SystemExit(f"rope type {kind} not in this reference")
    return f, attention


def rope(cfg, base, scaling, T):
    f, attention = inv_freq(cfg, base, scaling, T)
    freqs = torch.arange(T).float()[:, None] * f[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos() * attention, emb.sin() * attention


def apply_rope(x, cos, sin):
    # Phi3's apply_rotary_pos_emb: rotate the first cos.shape[-1] dims, pass the rest through.
    r = cos.shape[-1]
    xr, xp = x[..., :r], x[..., r:]
    return torch.cat((xr * cos + rotate_half(xr) * sin, xp), dim=-1)


def rotate_half(x):
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=-1)


def linear(x, W, name):
    y = x @ W[name + ".weight"].T
    if name + ".bias" in W:
        y = y + W[name + ".bias"]
    return y


def is_sparse(cfg, i):
    """Qwen2MoeDecoderLayer/Qwen3MoeDecoderLayer: sparse unless in mlp_only_layers, and when
    (i + 1) % decoder_sparse_step == 0; MixtralDecoderLayer: always."""
    mt = cfg["model_type"]
    if mt == "mixtral":
        return True
    if mt not in ("qwen2_moe", "qwen3_moe"):
        return False
    return i not in (cfg.get("mlp_only_layers") or []) and (i + 1) % cfg.get("decoder_sparse_step", 1) == 0


def sparse_moe_block(cfg, W, p, x):
    """MixtralSparseMoeBlock / Qwen2MoeSparseMoeBlock / Qwen3MoeSparseMoeBlock.forward."""
    mixtral = cfg["model_type"] == "mixtral"
    block = p + ("block_sparse_moe." if mixtral else "mlp.")
    g, u, d = ("w1", "w3", "w2") if mixtral else ("gate_proj", "up_proj", "down_proj")
    n = cfg["num_local_experts"] if mixtral else cfg["num_experts"]
    k = cfg["num_experts_per_tok"]
    logits = x @ W[block + "gate.weight"].T
    weights = torch.softmax(logits, dim=1, dtype=torch.float)
    weights, chosen = torch.topk(weights, k, dim=-1)
    if mixtral or cfg.get("norm_topk_prob", False):
        weights = weights / weights.sum(dim=-1, keepdim=True)
    out = torch.zeros_like(x)
    mask = torch.nn.functional.one_hot(chosen, num_classes=n).permute(2, 1, 0)
    silu = torch.nn.functional.silu
    for e in range(n):
        idx, rows = torch.where(mask[e])
        cur = x[rows]
        xe = f"{block}experts.{e}."
        y = linear(silu(linear(cur, W, xe + g)) * linear(cur, W, xe + u), W, xe + d) * weights[rows, idx, None]
        out.index_add_(0, rows, y)
    if block + "shared_expert_gate.weight" in W:  # Qwen2MoeSparseMoeBlock's shared expert
        se = block + "shared_expert."
        y = linear(silu(linear(x, W, se + "gate_proj")) * linear(x, W, se + "up_proj"), W, se + "down_proj")
        out = out + torch.sigmoid(x @ W[block + "shared_expert_gate.weight"].T) * y
    return out


def forward(cfg, W, tokens):
    mt = cfg["model_type"]
    gemma = mt in ("gemma2", "gemma3_text")
    H, nh, nkv = cfg["hidden_size"], cfg["num_attention_heads"], cfg.get("num_key_value_heads", cfg["num_attention_heads"])
    hd = cfg.get("head_dim") or H // nh
    cfg["head_dim"] = hd
    eps = cfg.get("rms_norm_eps", 1e-6)
    T = len(tokens)
    L = cfg["num_hidden_layers"]
    qk_norm = mt in ("qwen3", "gemma3_text", "qwen3_moe")
    scaling = cfg["query_pre_attn_scalar"] ** -0.5 if gemma else hd ** -0.5
    softcap = cfg.get("attn_logit_softcapping") if gemma else None
    window = cfg.get("sliding_window") if gemma else None
    if mt == "gemma2":
        sliding = [i % 2 == 0 for i in range(L)]  # Gemma2Attention: not bool(layer_idx % 2)
    elif mt == "gemma3_text":
        pat = cfg.get("sliding_window_pattern", 6)
        sliding = [bool((i + 1) % pat) for i in range(L)]
    else:
        sliding = [False] * L
    if mt == "phi3" and cfg.get("sliding_window"):
        # Phi3Model: create_sliding_window_causal_mask on every layer when sliding_window is set
        window = cfg["sliding_window"]
        sliding = [True] * L
    if mt == "mixtral" and cfg.get("sliding_window"):  # MixtralConfig default None
        window = cfg["sliding_window"]
        sliding = [True] * L
    if mt == "mistral" and cfg.get("sliding_window", 4096):
        window = cfg.get("sliding_window", 4096)  # MistralConfig default; every layer
        sliding = [True] * L
    if mt in ("qwen2", "qwen2_moe") and cfg.get("use_sliding_window"):
        window = cfg.get("sliding_window", 4096)  # Qwen2: layers from max_window_layers on
        sliding = [i >= cfg.get("max_window_layers", 28) for i in range(L)]
    if "layer_types" in cfg:
        sliding = [t == "sliding_attention" for t in cfg["layer_types"]]
    cos_g, sin_g = rope(cfg, cfg.get("rope_theta", 10000.0), cfg.get("rope_scaling"), T)
    if mt == "gemma3_text":
        cos_l, sin_l = rope(cfg, cfg.get("rope_local_base_freq", 10000.0), None, T)
    else:
        cos_l, sin_l = cos_g, sin_g

    h = W["model.embed_tokens.weight"][tokens]
    if gemma:
        h = h * torch.tensor(H ** 0.5, dtype=h.dtype)
    i_idx = torch.arange(T)[:, None]
    j_idx = torch.arange(T)[None, :]
    for i in range(L):
        p = f"model.layers.{i}."
        res = h
        x = rms_norm(h, W[p + "input_layernorm.weight"], eps, gemma)
        if mt == "phi3":  # Phi3Attention: qkv = qkv_proj(x); q, k, v = split by head counts
            qkv = x @ W[p + "self_attn.qkv_proj.weight"].T
            qp = nh * hd
            q = qkv[:, :qp].reshape(T, nh, hd)
            k = qkv[:, qp:qp + nkv * hd].reshape(T, nkv, hd)
            v = qkv[:, qp + nkv * hd:].reshape(T, nkv, hd)
        else:
            q = linear(x, W, p + "self_attn.q_proj").view(T, nh, hd)
            k = linear(x, W, p + "self_attn.k_proj").view(T, nkv, hd)
            v = linear(x, W, p + "self_attn.v_proj").view(T, nkv, hd)
        if qk_norm:
            q = rms_norm(q, W[p + "self_attn.q_norm.weight"], eps, gemma)
            k = rms_norm(k, W[p + "self_attn.k_norm.weight"], eps, gemma)
        q, k, v = q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1)
        cos, sin = (cos_l, sin_l) if sliding[i] else (cos_g, sin_g)
        q = apply_rope(q, cos, sin)
        k = apply_rope(k, cos, sin)
        k = k.repeat_interleave(nh // nkv, dim=0)
        v = v.repeat_interleave(nh // nkv, dim=0)
        s = (q @ k.transpose(1, 2)) * scaling
        if softcap:
            s = torch.tanh(s / softcap) * softcap
        mask = j_idx > i_idx
        if sliding[i]:
            mask = mask | (j_idx <= i_idx - window)
        s = s.masked_fill(mask, float("-inf"))
        a = torch.softmax(s.float(), dim=-1) @ v
        a = a.transpose(0, 1).reshape(T, nh * hd)
        o = linear(a, W, p + "self_attn.o_proj")
        if gemma:
            o = rms_norm(o, W[p + "post_attention_layernorm.weight"], eps, gemma)
        h = res + o
        res = h
        norm = p + ("pre_feedforward_layernorm.weight" if gemma else "post_attention_layernorm.weight")
        x = rms_norm(h, W[norm], eps, gemma)
        if is_sparse(cfg, i):
            m = sparse_moe_block(cfg, W, p, x)
        elif mt == "phi3":  # Phi3MLP: gate, up = gate_up_proj(x).chunk(2); down(up * silu(gate))
            gate, up = (x @ W[p + "mlp.gate_up_proj.weight"].T).chunk(2, dim=-1)
            m = linear(up * torch.nn.functional.silu(gate), W, p + "mlp.down_proj")
        else:
            g = linear(x, W, p + "mlp.gate_proj")
            act = torch.nn.functional.gelu(g, approximate="tanh") if gemma else torch.nn.functional.silu(g)
            m = linear(act * linear(x, W, p + "mlp.up_proj"), W, p + "mlp.down_proj")
        if gemma:
            m = rms_norm(m, W[p + "post_feedforward_layernorm.weight"], eps, gemma)
        h = res + m
    h = rms_norm(h, W["model.norm.weight"], eps, gemma)
    head = W.get("lm_head.weight", W["model.embed_tokens.weight"])
    logits = h @ head.T
    cap = cfg.get("final_logit_softcapping") if mt == "gemma2" or mt == "gemma3_text" else None
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


def main():
    src, dst = sys.argv[1], sys.argv[2]
    os.makedirs(dst, exist_ok=True)
    for family in sorted(os.listdir(src)):
        d = os.path.join(src, family)
        cfg = json.load(open(os.path.join(d, "config.json")))
        W = load_safetensors(os.path.join(d, "model.safetensors"))
        tokens = json.load(open(os.path.join(d, "tokens.json")))
        with torch.no_grad():
            logits = forward(cfg, W, tokens)
            logp = torch.log_softmax(logits.double(), dim=-1)
            nll = -logp[torch.arange(len(tokens) - 1), torch.tensor(tokens[1:])].mean().item()
        out = {"family": family, "tokens": tokens, "nll_mean": nll, "ppl": math.exp(nll),
               "logits": [[round(float(v), 6) for v in row] for row in logits]}
        with open(os.path.join(dst, family + ".json"), "w") as f:
            json.dump(out, f)
        print(f"{family}: ppl {math.exp(nll):.6f}")


if __name__ == "__main__":
    main()
