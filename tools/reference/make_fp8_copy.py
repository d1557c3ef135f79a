#!/usr/bin/env python3
"""Writes an FP8 copy of a float16/float32 checkpoint, as FP8 releases store it: every decoder
linear weight as F8_E4M3 (nearest e4m3fn code, ties to the even code) with a per-tensor F32
`weight_scale` = absmax / 448, and quantization_config compressed-tensors `float-quantized`.
Other tensors are copied. Used to measure quant's FP8 input (docs/formats.md); stdlib only.

Usage: make_fp8_copy.py SRC_DIR DST_DIR   (SRC_DIR holds one model.safetensors)
"""
import bisect
import json
import math
import os
import shutil
import struct
import sys


def e4m3(code):
    s = -1.0 if code & 0x80 else 1.0
    e, m = (code >> 3) & 0xF, code & 7
    if e == 0xF and m == 7:
        return math.nan
    return s * (m / 8 * 2.0 ** -6 if e == 0 else (1 + m / 8) * 2.0 ** (e - 7))


POS = sorted((e4m3(c), c) for c in range(0x7F))  # finite non-negative codes, ascending
VALS = [v for v, _ in POS]


def encode(x):
    a = abs(x)
    i = bisect.bisect_left(VALS, a)
    if i == len(VALS):
        i -= 1
    elif i > 0 and (a - VALS[i - 1] < VALS[i] - a or (a - VALS[i - 1] == VALS[i] - a and POS[i - 1][1] % 2 == 0)):
        i -= 1
    return POS[i][1] | (0x80 if x < 0 and POS[i][1] else 0)


def main():
    src, dst = sys.argv[1], sys.argv[2]
    os.makedirs(dst, exist_ok=True)
    raw = open(os.path.join(src, "model.safetensors"), "rb").read()
    (n,) = struct.unpack("<Q", raw[:8])
    hdr = json.loads(raw[8:8 + n])
    data = raw[8 + n:]
    out, body = {}, bytearray()

    def put(name, dtype, shape, blob):
        out[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(body), len(body) + len(blob)]}
        body.extend(blob)

    for name, info in hdr.items():
        if name == "__metadata__":
            continue
        a, b = info["data_offsets"]
        blob = data[a:b]
        if ".layers." in name and name.endswith("_proj.weight") and info["dtype"] in ("F16", "F32"):
            fmt = "e" if info["dtype"] == "F16" else "f"
            vals = struct.unpack(f"<{len(blob) // struct.calcsize(fmt)}{fmt}", blob)
            scale = max(abs(v) for v in vals) / 448.0 or 1.0
            scale = struct.unpack("<f", struct.pack("<f", scale))[0]
            put(name, "F8_E4M3", info["shape"], bytes(encode(v / scale) for v in vals))
            put(name[: -len("weight")] + "weight_scale", "F32", [1], struct.pack("<f", scale))
        else:
            put(name, info["dtype"], info["shape"], blob)
    h = json.dumps(out).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(os.path.join(dst, "model.safetensors"), "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + body)
    cfg = json.load(open(os.path.join(src, "config.json")))
    cfg["quantization_config"] = {
        "quant_method": "compressed-tensors", "format": "float-quantized", "quantization_status": "compressed",
        "config_groups": {"group_0": {"targets": ["Linear"], "input_activations": None,
                                      "weights": {"num_bits": 8, "type": "float", "strategy": "tensor", "symmetric": True}}},
        "ignore": ["lm_head"]}
    json.dump(cfg, open(os.path.join(dst, "config.json"), "w"), indent=2)
    for f in os.listdir(src):
        if f.startswith("tokenizer") or f == "generation_config.json":
            shutil.copy(os.path.join(src, f), os.path.join(dst, f))


if __name__ == "__main__":
    main()
