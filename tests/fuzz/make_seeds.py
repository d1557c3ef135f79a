#!/usr/bin/env python3
"""Writes the seed corpus of the fuzz targets (tests/fuzz/corpus/<target>/): small, valid files
of each kind plus a few near-misses, so that fuzzing starts from deep inside the parsers.
Run from anywhere: python3 tests/fuzz/make_seeds.py. The output is committed; rerunning it
rewrites the same bytes."""
import json
import os
import random
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
rng = random.Random(7)


def out(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def safetensors(tensors, metadata=None, pad=8):
    """tensors: list of (name, dtype, shape, bytes)."""
    header, off, blob = {}, 0, b""
    for name, dtype, shape, data in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + len(data)]}
        off += len(data)
        blob += data
    if metadata is not None:
        header["__metadata__"] = metadata
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((-len(h)) % pad)
    return struct.pack("<Q", len(h)) + h + blob


def floats(n, fmt="<f"):
    return b"".join(struct.pack(fmt, rng.gauss(0, 1)) for _ in range(n))


# --- safetensors -------------------------------------------------------------------------
out("safetensors", "f32", safetensors([("a", "F32", [2, 3], floats(6)), ("b", "F32", [3], floats(3))],
                                      {"format": "pt"}))
out("safetensors", "f16_bf16", safetensors([("h", "F16", [4], floats(4, "<e")),
                                            ("b", "BF16", [2, 2], bytes(rng.randrange(256) for _ in range(8)))]))
out("safetensors", "ints", safetensors([("i", "I32", [2], struct.pack("<ii", 1, -2)),
                                        ("u", "U8", [3], b"\x01\x02\x03"), ("d", "F64", [1], struct.pack("<d", 1.5)),
                                        ("z", "F32", [0, 4], b"")]))
out("safetensors", "scalar", safetensors([("s", "F32", [], floats(1))]))
out("safetensors", "truncated", safetensors([("a", "F32", [4], floats(4))])[:-5])

# --- sharded index (shards written by the target: shard-a has a, b; shard-b has c) --------
out("index", "valid", json.dumps({"metadata": {"total_size": 36},
                                  "weight_map": {"a": "shard-a.safetensors", "b": "shard-a.safetensors",
                                                 "c": "shard-b.safetensors"}}))
out("index", "missing_tensor", json.dumps({"weight_map": {"a": "shard-a.safetensors", "x": "shard-b.safetensors"}}))
out("index", "escape", json.dumps({"weight_map": {"a": "../shard-a.safetensors"}}))

# --- config.json (the target's checkpoint: hidden 32, inter 64, 2 layers, 4/2 heads, vocab 96) --
base = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 32,
        "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "vocab_size": 96, "max_position_embeddings": 128,
        "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": True,
        "hidden_act": "silu", "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "float32"}
out("config", "llama", json.dumps(base, indent=1))
out("config", "mistral_rope", json.dumps(dict(base, model_type="mistral", sliding_window=64,
                                              rope_scaling={"rope_type": "llama3", "factor": 8.0,
                                                            "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                                            "original_max_position_embeddings": 64})))
out("config", "qwen2", json.dumps(dict(base, model_type="qwen2", num_hidden_layers=3)))
out("config", "gptq", json.dumps(dict(base, quantization_config={"quant_method": "gptq", "bits": 4,
                                                                  "group_size": 32, "desc_act": False, "sym": True})))

# --- tokenizer.json ------------------------------------------------------------------------
vocab = {chr(33 + i): i for i in range(94)}
vocab["\u0120"] = 94
merges = ["h e", "l l", "he ll", "\u0120 w", "o r"]
for m in merges:
    a, b = m.split(" ")
    vocab.setdefault(a + b, len(vocab))
bytelevel = {"version": "1.0",
             "added_tokens": [{"id": len(vocab), "content": "<s>", "special": True},
                              {"id": len(vocab) + 1, "content": "</s>", "special": True}],
             "normalizer": None,
             "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
                 {"type": "Split", "pattern": {"Regex": "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"},
                  "behavior": "Isolated", "invert": False},
                 {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]},
             "post_processor": {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                                                                        {"Sequence": {"id": "A", "type_id": 0}}],
                                "special_tokens": {"<s>": {"id": "<s>", "ids": [len(vocab)], "tokens": ["<s>"]}}},
             "model": {"type": "BPE", "vocab": vocab, "merges": merges, "ignore_merges": False}}
out("tokenizer", "bytelevel", json.dumps(bytelevel))
out("tokenizer", "bytelevel_digits", json.dumps(dict(bytelevel, pre_tokenizer={"type": "Sequence", "pretokenizers": [
    {"type": "Digits", "individual_digits": True}, {"type": "ByteLevel", "add_prefix_space": True, "use_regex": True}]},
    normalizer={"type": "NFC"})))
mvocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
for i in range(256):
    mvocab["<0x%02X>" % i] = len(mvocab)
for p in ["\u2581", "e", "l", "o", "h", "w", "r", "d", "\u2581h", "el", "lo", "\u2581w", "or", "ld", "\u2581hel"]:
    mvocab.setdefault(p, len(mvocab))
metaspace = {"version": "1.0",
             "added_tokens": [{"id": 0, "content": "<unk>", "special": True}, {"id": 1, "content": "<s>", "special": True},
                              {"id": 2, "content": "</s>", "special": True}],
             "normalizer": {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "\u2581"},
                                                                 {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}]},
             "pre_tokenizer": None,
             "model": {"type": "BPE", "vocab": mvocab, "merges": [["\u2581", "h"], ["e", "l"], ["l", "o"], ["\u2581", "w"],
                                                                 ["o", "r"], ["l", "d"], ["\u2581h", "el"]],
                       "unk_token": "<unk>", "byte_fallback": True, "fuse_unk": True}}
out("tokenizer", "metaspace", json.dumps(metaspace))
out("tokenizer", "metaspace_pretok", json.dumps(dict(metaspace, normalizer=None,
                                                     pre_tokenizer={"type": "Metaspace", "replacement": "\u2581",
                                                                    "prepend_scheme": "first", "split": False})))


# --- GGUF ----------------------------------------------------------------------------------
def gstr(s):
    s = s.encode()
    return struct.pack("<Q", len(s)) + s


def gkv(key, vtype, payload):
    return gstr(key) + struct.pack("<I", vtype) + payload


BLOCK = {0: (1, 4), 1: (1, 2), 2: (32, 18), 3: (32, 20), 6: (32, 22), 7: (32, 24), 8: (32, 34),
         12: (256, 144), 13: (256, 176), 14: (256, 210)}


def gguf(tensors, kvs, align=32, version=3):
    """tensors: list of (name, ne list, ggml type)."""
    head = b"GGUF" + struct.pack("<IQQ", version, len(tensors), len(kvs)) + b"".join(kvs)
    infos, data, off = b"", b"", 0
    for name, ne, t in tensors:
        n = 1
        for d in ne:
            n *= d
        blk, size = BLOCK[t]
        nbytes = n // blk * size
        off += (-off) % align
        data += b"\0" * ((-len(data)) % align)
        infos += gstr(name) + struct.pack("<I", len(ne)) + b"".join(struct.pack("<q", d) for d in ne) + \
            struct.pack("<IQ", t, off)
        payload = bytearray(rng.randrange(256) for _ in range(nbytes))
        if t in (2, 3, 6, 7, 8):  # keep the f16 block scales finite and small
            for b in range(0, nbytes, size):
                payload[b:b + 2] = struct.pack("<e", 0.01)
        data += bytes(payload)
        off += nbytes
    body = head + infos
    body += b"\0" * ((-len(body)) % align)
    return body + data


kvs = [gkv("general.architecture", 8, gstr("llama")),
       gkv("general.name", 8, gstr("seed")),
       gkv("llama.block_count", 4, struct.pack("<I", 1)),
       gkv("llama.rope.freq_base", 6, struct.pack("<f", 10000.0)),
       gkv("general.file_type", 4, struct.pack("<I", 7)),
       gkv("tokenizer.ggml.tokens", 9, struct.pack("<IQ", 8, 3) + gstr("<unk>") + gstr("a") + gstr("b")),
       gkv("tokenizer.ggml.scores", 9, struct.pack("<IQ", 6, 3) + struct.pack("<fff", 0, -1, -2)),
       gkv("tokenizer.ggml.add_bos_token", 7, b"\x01"),
       gkv("general.big", 10, struct.pack("<Q", 2**40))]
out("gguf", "all_types", gguf([("f32", [4, 2], 0), ("f16", [8], 1), ("q4_0", [32, 2], 2), ("q4_1", [32], 3),
                               ("q5_0", [32], 6), ("q5_1", [32], 7), ("q8_0", [64], 8), ("q4_k", [256], 12),
                               ("q5_k", [256], 13), ("q6_k", [256, 2], 14)], kvs))
out("gguf", "aligned64", gguf([("t", [32, 1], 8)], [gkv("general.alignment", 4, struct.pack("<I", 64))] + kvs[:2],
                              align=64))
out("gguf", "empty", gguf([], []))
out("gguf", "v2", gguf([("t", [4], 0)], kvs[:1], version=2))

# --- recipes (a tiny model sits at "m" beside the recipe) ----------------------------------
out("recipe", "basic", json.dumps({"defaults": {"model": "m", "bits": 4, "group_size": 32},
                                   "jobs": [{"name": "rtn", "method": "rtn", "output": "o1"},
                                            {"name": "gptq", "method": "gptq", "output": "o2", "calib_tokens": "t.ids",
                                             "act_order": True, "rules": ["down_proj=bits:8", "layers\\.0\\.=skip"]}]}))
out("recipe", "eval", json.dumps({"jobs": [{"method": "awq", "model": "m", "output": "o", "bits": 3,
                                            "eval": {"text": "x.txt", "ctx": 64, "max_ppl_increase": 5}}]}))
out("recipe", "gguf_kmeans", json.dumps({"jobs": [{"method": "gguf", "model": "m", "output": "o.gguf", "type": "q4_k_m"},
                                                  {"method": "kmeans", "model": "m", "output": "k", "bits": [3],
                                                   "target_bpw": 3.5}]}))
out("recipe", "bad_field", json.dumps({"jobs": [{"method": "rtn", "model": "m", "output": "o", "bitz": 4}]}))
