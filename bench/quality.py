"""Quality of every method at every width on the embedded model, one table, same data, same seed.

    python bench/quality.py                       # full grid, settings chosen for the device
    python bench/quality.py --configs w4g64,w3g64 --methods rtn,gptq,omniquant --epochs 5

Methods: fp, rtn, gptq (compresskit's own, natural column order), gptq_act (act-order, static groups), gptq_gar
(act_group_aware: group-aware reordering, GPTQModel's and compresskit's default), nf4 (bitsandbytes, 4-bit,
blocksize 64), clipsearch (per-(row, group) clipping searched on each block's inputs, no training), omniquant
(LWC for weight-only, LWC + LET for weight-activation, as the published scripts), omniquant_search (LWC
started from the clipping search, early stopping with patience 2), omniquant_e2e (omniquant_search, then
``--finetune-steps`` steps of end-to-end scales-only distillation against the parent), omniquant_default (no setting
but the width: the device's preset, the budgeted pipeline on a CPU; its own calibration size), omniquant_let (weight-only with LET too;
W4 g64 only, the ablation);
for weight-activation configs: rtn, smoothquant (LET init, no training), omniquant. Each run is a
subprocess, so its calibration time and peak memory (RSS on CPU, max allocated on CUDA) are its own.
Writes bench/results/quality.{json,md}. Runs unchanged on a CUDA machine (published calibration
settings there: 128 x 2048, 20 epochs, 40 for W2).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _results import BASELINES, add_eval_options, handled, gap_share, merged_docs_sha, pin_docs, quantize_baseline, retrieval_keys, saved_model_path, score_model, write_results  # bench/_results.py (run by path)

CONFIGS = {  # name -> QuantConfig fields
    "w4g64": dict(wbits=4, group_size=64), "w3g64": dict(wbits=3, group_size=64),
    "w2g64": dict(wbits=2, group_size=64), "w4pc": dict(wbits=4, group_size=-1),
    "w4a4": dict(wbits=4, abits=4, group_size=-1), "w6a6": dict(wbits=6, abits=6, group_size=-1),
}
WEIGHT_ONLY = ("rtn", "gptq", "gptq_act", "gptq_gar", "nf4", "clipsearch", "omniquant", "omniquant_search", "omniquant_e2e",
               "omniquant_default", "omniquant_let")
ONLY_W4G64 = ("nf4", "omniquant_let")
WEIGHT_ACT = ("rtn", "smoothquant", "omniquant")


def run_one(args: argparse.Namespace) -> dict:
    import torch

    import compresskit
    from compresskit.quant.omniquant import OmniQuantConfig

    method, name = args.one.split(":")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, tok = compresskit.load_model(args.model, device=device)
    torch.manual_seed(args.seed)
    base = dict(CONFIGS.get(name, {}), embed_bits=16)  # embeddings kept float: compare the methods only
    calib = dict(nsamples=args.nsamples, seqlen=args.seqlen, calib="builtin", seed=args.seed)
    fixed = dict(calib, preset="published")  # the rows below set what they change; the rest is the paper's
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    if method in BASELINES:
        quantize_baseline(model, tok, method, base, calib)
    elif method == "clipsearch":
        compresskit.quantize(model, OmniQuantConfig(**base, **fixed, epochs=0, clip_init="search"), tokenizer=tok)
    elif method == "omniquant_e2e":
        compresskit.quantize(model, OmniQuantConfig(**base, **fixed, epochs=args.epochs, clip_init="search",
                                                    patience=2, finetune_steps=args.finetune_steps), tokenizer=tok)
    elif method == "omniquant_search":
        compresskit.quantize(model, OmniQuantConfig(**base, **fixed, epochs=args.epochs, clip_init="search",
                                                    patience=2), tokenizer=tok)
    elif method == "omniquant_default":  # what `compresskit quantize --method omniquant` runs: the device's preset
        compresskit.quantize(model, OmniQuantConfig(**base, calib="builtin", seed=args.seed), tokenizer=tok)
    elif method == "omniquant":
        compresskit.quantize(model, OmniQuantConfig(**base, **fixed, epochs=args.epochs), tokenizer=tok)
    elif method == "omniquant_let":
        compresskit.quantize(model, OmniQuantConfig(**base, **fixed, epochs=args.epochs, let=True), tokenizer=tok)
    elif method == "smoothquant":
        compresskit.quantize(model, OmniQuantConfig(**base, **fixed, epochs=0, lwc=False), tokenizer=tok)
    elif method == "nf4":
        _nf4(model)
    calib_s = time.perf_counter() - t0
    peak = (torch.cuda.max_memory_allocated() if device == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    if args.save_models and method != "fp":  # kept for later scoring (more trials, other tasks) without recalibrating
        compresskit.save(model, tok, saved_model_path(args.save_models, name, method))
    scores, eval_s = score_model(model, tok, args)
    return {"method": method, "config": name, "calib_s": calib_s, "peak_bytes": peak, "device": device,
            "scores": scores, "eval_s": eval_s}


def _nf4(model) -> None:
    """bitsandbytes NF4 (blocksize 64) on every block linear."""
    import bitsandbytes as bnb
    import torch

    from compresskit.core.arch import get_arch, set_module

    for path, lin in get_arch(model).quantizable_linears(model).items():
        q = bnb.nn.Linear4bit(lin.in_features, lin.out_features, bias=lin.bias is not None,
                              compute_dtype=torch.float32, quant_type="nf4")
        q.weight = bnb.nn.Params4bit(lin.weight.data.clone(), requires_grad=False, quant_type="nf4", blocksize=64)
        if lin.bias is not None:
            q.bias = torch.nn.Parameter(lin.bias.data.clone(), requires_grad=False)
        set_module(model, path, q.to(lin.weight.device))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--methods", default="rtn,gptq,nf4,smoothquant,omniquant,omniquant_let")
    ap.add_argument("--nsamples", type=int, default=None)
    ap.add_argument("--seqlen", type=int, default=None)
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--finetune-steps", type=int, default=20, help="end-to-end steps of omniquant_e2e")
    ap.add_argument("--save-models", help="save each quantized row's model to DIR/CONFIG-METHOD (compresskit.save; "
                    "an existing one is an error), to score it again later without recalibrating")
    add_eval_options(ap, Path(__file__).parent / "results" / "quality")
    args = ap.parse_args()
    if handled(args, run_one, _merge):
        return
    import torch

    cuda = torch.cuda.is_available()
    args.nsamples = args.nsamples or (128 if cuda else 16)
    args.seqlen = args.seqlen or (2048 if cuda else 512)
    if args.epochs is None and not cuda:
        args.epochs = 5
    methods = args.methods.split(",")
    jobs = [] if args.no_fp else [("fp", "fp")]
    for name in args.configs.split(","):
        allowed = WEIGHT_ACT if CONFIGS[name].get("abits") else WEIGHT_ONLY
        jobs += [(m, name) for m in methods if m in allowed and not (m in ONLY_W4G64 and name != "w4g64")]
    taken = [str(saved_model_path(args.save_models, n, m)) for m, n in jobs
             if args.save_models and m != "fp" and saved_model_path(args.save_models, n, m).exists()]
    if taken:  # refused before any calibration, not after it
        ap.error(f"--save-models: {', '.join(taken)} exist already; move them or pick another DIR")
    rows = []
    pinned = tempfile.TemporaryDirectory()
    pin_docs(args, pinned.name)
    for method, name in jobs:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "r.json"
            cmd = [sys.executable, __file__, "--one", f"{method}:{name}", "--json", str(out)] + _forward(args)
            proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
            if proc.returncode != 0:
                rows.append({"method": method, "config": name, "error": proc.stderr.strip().splitlines()[-1:]})
            else:
                rows.append(json.loads(out.read_text()))
        print(_line(rows[-1], args.lengths, retrieval_keys(rows, args.lengths)), flush=True)
    _write(rows, args, cuda)


def _merge(args) -> None:
    rows: dict[tuple[str, str], dict] = {}
    shas = set()
    for path in args.merge.split(","):
        data = json.loads(Path(path).read_text())
        for key in ("nsamples", "seqlen", "epochs", "lengths", "ppl_windows", "passkey_trials", "seed"):
            setattr(args, key, data["settings"][key])
        shas.add(data["settings"].get("docs_sha256"))
        rows.update({(r["config"], r["method"]): r for r in data["rows"]})
    args.docs_sha256 = merged_docs_sha(shas)
    order = ["fp"] + list(CONFIGS)
    methods = ["fp", "rtn", "gptq", "gptq_act", "gptq_gar", "nf4", "smoothquant", "clipsearch", "omniquant", "omniquant_search",
               "omniquant_e2e", "omniquant_default", "omniquant_let"]
    ordered = sorted(rows.values(), key=lambda r: (order.index(r["config"]), methods.index(r["method"])))
    _write(ordered, args, any(r.get("device") == "cuda" for r in ordered))


def _forward(args) -> list[str]:
    out = ["--model", args.model, "--nsamples", str(args.nsamples), "--seqlen", str(args.seqlen),
           "--lengths", ",".join(map(str, args.lengths)), "--ppl-windows", str(args.ppl_windows),
           "--passkey-trials", str(args.passkey_trials), "--seed", str(args.seed)]
    out += ["--finetune-steps", str(args.finetune_steps), "--extra-tasks", args.extra_tasks,
            "--docs-file", args.docs_file] + (["--save-models", args.save_models] if args.save_models else [])
    return out + (["--epochs", str(args.epochs)] if args.epochs is not None else [])


def _line(r: dict, lengths: list[int], keys: list[str]) -> str:
    if "error" in r:
        return f"| {r['config']} | {r['method']} | error: {' '.join(r['error'])} |"
    s = r["scores"]
    cols = [f"{s.get(f'ppl@{lengths[0]}', float('nan')):.2f}", f"{s.get(f'ppl_docs@{lengths[0]}', float('nan')):.2f}"]
    cols += [f"{s[k]:.0f}%" if k in s else "-" for k in keys]
    return (f"| {r['config']} | {r['method']} | " + " | ".join(cols)
            + f" | {r['calib_s']:.0f} | {r['peak_bytes'] / 2**30:.2f} |")


def _gap_closed(rows: list[dict], fp_ppl: float, key: str) -> dict[str, float]:
    """config/method -> the share of the same config's RTN log-perplexity gap the method closes."""
    rtn = {r["config"]: r["scores"][key] for r in rows if r["method"] == "rtn" and key in r.get("scores", {})}
    return {f"{r['config']}/{r['method']}": gap_share(rtn[r["config"]], r["scores"][key], fp_ppl)
            for r in rows if key in r.get("scores", {}) and r["method"] not in ("fp", "rtn") and r["config"] in rtn
            and rtn[r["config"]] > fp_ppl}


def _write(rows: list[dict], args, cuda: bool) -> None:
    fp = next((r for r in rows if r["method"] == "fp" and "scores" in r), None)
    keys = retrieval_keys(rows, args.lengths)
    head = (f"| config | method | ppl@{args.lengths[0]} | ppl@{args.lengths[0]} docs | " + " | ".join(keys)
            + " | calib s | peak GiB |\n|" + "---|" * (6 + len(keys)))
    lines = [head] + [_line(r, args.lengths, keys) for r in rows]
    if fp:
        base = fp["scores"][f"ppl@{args.lengths[0]}"]
        lines.append("")
        lines.append("ppl ratio to fp: " + ", ".join(
            f"{r['config']}/{r['method']} {r['scores'][f'ppl@{args.lengths[0]}'] / base:.3f}x"
            for r in rows if "scores" in r and r["method"] != "fp"))
        for key, what in ((f"ppl@{args.lengths[0]}", "held-out split"), (f"ppl_docs@{args.lengths[0]}", "docs")):
            if key not in fp["scores"]:
                continue
            closed = _gap_closed(rows, fp["scores"][key], key)
            if closed:
                lines.append("")
                lines.append(f"share of RTN's log-perplexity gap closed on the {what}, (log rtn - log method) / "
                             "(log rtn - log fp): " + ", ".join(f"{k} {v:.1%}" for k, v in closed.items()))
    preset = (" (omniquant_default rows: the device's preset and its own calibration settings instead)"
              if any(r["method"] == "omniquant_default" for r in rows) else "")
    settings = (f"device {'cuda' if cuda else 'cpu'}; calibration {args.nsamples} x {args.seqlen} tokens from the "
                f"shipped train split, epochs {args.epochs if args.epochs is not None else '20 (40 for W2)'}"
                f"{preset}; "
                f"perplexity over {args.ppl_windows} windows of the held-out split and of docs/*.md (text of another kind; "
                f"sha256 {getattr(args, 'docs_sha256', None) or 'not recorded'}); passkey {args.passkey_trials} trials per length; "
                "embeddings kept in float for every method; W-A activations simulated.")
    md = settings + "\n\n" + "\n".join(lines) + "\n"
    write_results(args.out, md, {"settings": vars(args), "rows": rows}, echo=True)


if __name__ == "__main__":
    main()
