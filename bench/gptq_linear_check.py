"""compresskit's GPTQ against GPTQModel's on one linear of the embedded model, same inputs, same Hessian.

    python bench/gptq_linear_check.py        # with the peers' venv (bash bench/setup_peer_venvs.sh gptqmodel)

Takes a linear of block 0 (its inputs are the same float32 tensors for both: the embedding and the input norm of
compresskit's calibration windows), lets GPTQModel's ``GPTQ`` accumulate its Hessian from them and quantize, then
runs compresskit's ``gptq_quantize`` on GPTQModel's own Hessian and on compresskit's (``2 X^T X / n``), and prints
how far the dequantized weights are apart (relative to the float weight) next to each one's distance from the float
weight. GPTQModel dequantizes with float32 scales, compresskit with the fp16 scales it stores, so "same" rounding
shows as a gap of ~2e-4, not 0. Orders: natural, group-aware (GPTQModel's default), act-order (GPTQModel's
dynamic groups against compresskit's static ones: two different algorithms, shown for the record).
Writes bench/results/gptq_linear_check.{md,json}.
"""
from __future__ import annotations

import argparse
import copy
from pathlib import Path

from _results import write_results  # bench/_results.py (run by path)

MODES = {"natural": dict(desc_act=False, act_group_aware=False), "group-aware": dict(desc_act=False, act_group_aware=True),
         "act-order": dict(desc_act=True, act_group_aware=False)}


def check(lin, X, bits: int, group_size: int, mode: str) -> dict:
    import torch
    from gptqmodel import QuantizeConfig
    from gptqmodel.quantization.gptq import GPTQ

    from compresskit.core.manifest import LinearEntry
    from compresskit.core.quant_math import dequantize
    from compresskit.quant.gptq import gptq_quantize

    qc = QuantizeConfig(bits=bits, group_size=group_size, sym=False, damp_percent=0.01, offload_to_disk=False,
                        **MODES[mode])
    task = GPTQ(copy.deepcopy(lin), qc)
    task.fallback, task.expected_nsamples = qc.fallback, None
    task.quantizer.configure(perchannel=True)  # as GPTQModel's GPTQProcessor sets it up
    with torch.no_grad():
        for i in range(X.shape[0]):
            task.add_batch(X[i:i + 1], None)
    task.finalize_hessian()
    h_theirs = task.H.clone()
    theirs = task.quantize()[0].float()
    W = lin.weight.detach().float()
    flat = X.reshape(-1, X.shape[-1])
    row = {"mode": mode}
    for label, h in (("their H", h_theirs), ("own H", 2 * flat.T @ flat / X.shape[0])):
        q, s, z, _ = gptq_quantize(W, h, LinearEntry(bits, group_size, False), act_order=mode == "act-order",
                                   act_group_aware=mode == "group-aware")
        ours = dequantize(q, s, z, group_size)
        row[f"gap, {label}"] = ((theirs - ours).norm() / W.norm()).item()
        row[f"error, compresskit, {label}"] = ((ours - W).norm() / W.norm()).item()
    row["error, GPTQModel"] = ((theirs - W).norm() / W.norm()).item()
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--linear", default="self_attn.q_proj", help="a linear of block 0 fed by the input norm")
    ap.add_argument("--bits", type=int, default=3)
    ap.add_argument("--group-size", type=int, default=64)
    ap.add_argument("--nsamples", type=int, default=16)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "gptq_linear_check"))
    args = ap.parse_args()
    import torch

    import compresskit
    from compresskit.calib import build_samples
    from compresskit.core.arch import get_module

    torch.set_num_threads(1)
    model, tok = compresskit.load_model(args.model, device="cpu")
    block = model.model.layers[0]
    ids = build_samples(tok, "builtin", args.nsamples, args.seqlen, seed=0)
    with torch.no_grad():
        X = block.input_layernorm(model.model.embed_tokens(ids)).float()
    rows = [check(get_module(block, args.linear), X, args.bits, args.group_size, m) for m in MODES]
    keys = [k for k in rows[0] if k != "mode"]
    lines = [f"block 0 `{args.linear}` of {args.model}, W{args.bits} g{args.group_size} asym, damp 0.01, "
             f"{args.nsamples} x {args.seqlen} calibration tokens; every figure ||A - B|| / ||W_float||.", "",
             "| order | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    lines += ["| " + r["mode"] + " | " + " | ".join(f"{r[k]:.5f}" for k in keys) + " |" for r in rows]
    import gptqmodel

    lines += ["", f"GPTQModel {gptqmodel.__version__}, torch {torch.__version__}."]
    write_results(args.out, "\n".join(lines) + "\n", {"settings": vars(args), "rows": rows}, echo=True)


if __name__ == "__main__":
    main()
