#!/usr/bin/python3
"""Independent scorer for quant's zero-shot multiple-choice tasks (lm-evaluation-harness rules).

Reads a model directory and the per-task tokens quant wrote with `quant eval --task-details`,
scores every continuation with the torch forward pass of hf_reference.py (written from
transformers' modeling code), and counts acc (largest log-likelihood) and acc_norm (largest
log-likelihood per character of the choice, lm-eval's len(choice)). Writes the counts as JSON:

    build/quant eval ../shared/models/wiki-llama-5m --task hellaswag ../shared/data/hellaswag_val_full.txt \\
        --max-tasks 200 --task-details /tmp/hs.json
    /usr/bin/python3 tools/reference/task_reference.py ../shared/models/wiki-llama-5m /tmp/hs.json \\
        tests/golden/hellaswag_wiki_llama_5m_200.json
"""
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hf_reference import forward, load_safetensors  # noqa: E402


def main():
    model_dir, details_path, out_path = sys.argv[1], sys.argv[2], sys.argv[3]
    cfg = json.load(open(os.path.join(model_dir, "config.json")))
    W = load_safetensors(os.path.join(model_dir, "model.safetensors"))
    tasks = json.load(open(details_path))
    acc = acc_norm = 0
    max_dev = 0.0
    for t in tasks:
        lls = []
        for ctx, cont in zip(t["context"], t["continuation"]):
            inp = (ctx + cont)[:-1]  # lm-eval: the last token is only a target
            with torch.no_grad():
                logp = torch.log_softmax(forward(dict(cfg), W, inp).double(), dim=-1)
            first = len(inp) - len(cont)
            lls.append(sum(logp[first + j, tok].item() for j, tok in enumerate(cont)))
        max_dev = max(max_dev, max(abs(a - b) for a, b in zip(lls, t["loglik"])))
        pred = max(range(len(lls)), key=lambda k: (lls[k], -k))
        pred_norm = max(range(len(lls)), key=lambda k: (lls[k] / t["chars"][k], -k))
        acc += pred == t["label"]
        acc_norm += pred_norm == t["label"]
    out = {"n": len(tasks), "acc_count": acc, "acc_norm_count": acc_norm,
           "max_loglik_deviation_from_quant": max_dev}
    json.dump(out, open(out_path, "w"), indent=2)
    print(out)


if __name__ == "__main__":
    main()
