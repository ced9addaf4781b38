"""Quality of every method at every width on the embedded model, one table, same data, same seed.

    python bench/quality.py                       # full grid, settings chosen for the device
    python bench/quality.py --configs w4g64,w3g64 --methods rtn,gptq,omniquant --epochs 5

Methods: fp, rtn, gptq (compresskit's own), nf4 (bitsandbytes, 4-bit, blocksize 64), omniquant (LWC
for weight-only, LWC + LET for weight-activation, as the published scripts), omniquant_let (weight-only
with LET too; W4 g64 only, the ablation);
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

from _results import write_results  # bench/_results.py (scripts run by path)

CONFIGS = {  # name -> QuantConfig fields
    "w4g64": dict(wbits=4, group_size=64), "w3g64": dict(wbits=3, group_size=64),
    "w2g64": dict(wbits=2, group_size=64), "w4pc": dict(wbits=4, group_size=-1),
    "w4a4": dict(wbits=4, abits=4, group_size=-1), "w6a6": dict(wbits=6, abits=6, group_size=-1),
}
WEIGHT_ONLY = ("rtn", "gptq", "nf4", "omniquant", "omniquant_let")
ONLY_W4G64 = ("nf4", "omniquant_let")
WEIGHT_ACT = ("rtn", "smoothquant", "omniquant")


def run_one(args: argparse.Namespace) -> dict:
    import torch

    import compresskit
    from compresskit.core.config import QuantConfig
    from compresskit.quant.gptq import GPTQConfig
    from compresskit.quant.omniquant import OmniQuantConfig

    method, name = args.one.split(":")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, tok = compresskit.load_model(args.model, device=device)
    torch.manual_seed(args.seed)
    base = dict(CONFIGS.get(name, {}), embed_bits=16)  # embeddings kept float: compare the methods only
    calib = dict(nsamples=args.nsamples, seqlen=args.seqlen, calib="builtin", seed=args.seed)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    if method == "rtn":
        compresskit.quantize(model, QuantConfig(**base))
    elif method == "gptq":
        compresskit.quantize(model, GPTQConfig(**base, **calib), tokenizer=tok)
    elif method == "omniquant":
        compresskit.quantize(model, OmniQuantConfig(**base, **calib, epochs=args.epochs), tokenizer=tok)
    elif method == "omniquant_let":
        compresskit.quantize(model, OmniQuantConfig(**base, **calib, epochs=args.epochs, let=True), tokenizer=tok)
    elif method == "smoothquant":
        compresskit.quantize(model, OmniQuantConfig(**base, **calib, epochs=0, lwc=False), tokenizer=tok)
    elif method == "nf4":
        _nf4(model)
    calib_s = time.perf_counter() - t0
    peak = (torch.cuda.max_memory_allocated() if device == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    report = compresskit.evaluate(model, tok, tasks=("ppl", "passkey"), lengths=args.lengths,
                                  ppl_windows=args.ppl_windows, passkey_trials=args.passkey_trials, seed=args.seed,
                                  cache=False)
    scores = {f"{r.task}@{r.length}": r.score for r in report.rows}
    return {"method": method, "config": name, "calib_s": calib_s, "peak_bytes": peak, "device": device,
            "scores": scores, "eval_s": report.seconds}


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
    ap.add_argument("--lengths", default="2048,4096")
    ap.add_argument("--ppl-windows", type=int, default=4)
    ap.add_argument("--passkey-trials", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "quality"))
    ap.add_argument("--no-fp", action="store_true", help="skip the fp row (when merging with a run that has it)")
    ap.add_argument("--merge", help="comma-separated result JSONs (same settings) to combine into --out; "
                    "a later file's row replaces an earlier one's for the same config and method")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--json", help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.lengths = [int(x) for x in str(args.lengths).split(",")]
    if args.one:
        Path(args.json).write_text(json.dumps(run_one(args)))
        return
    if args.merge:
        _merge(args)
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
    rows = []
    for method, name in jobs:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "r.json"
            cmd = [sys.executable, __file__, "--one", f"{method}:{name}", "--json", str(out)] + _forward(args)
            proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
            if proc.returncode != 0:
                rows.append({"method": method, "config": name, "error": proc.stderr.strip().splitlines()[-1:]})
            else:
                rows.append(json.loads(out.read_text()))
        print(_line(rows[-1], args.lengths), flush=True)
    _write(rows, args, cuda)


def _merge(args) -> None:
    rows: dict[tuple[str, str], dict] = {}
    for path in args.merge.split(","):
        data = json.loads(Path(path).read_text())
        for key in ("nsamples", "seqlen", "epochs", "lengths", "ppl_windows", "passkey_trials", "seed"):
            setattr(args, key, data["settings"][key])
        rows.update({(r["config"], r["method"]): r for r in data["rows"]})
    order = ["fp"] + list(CONFIGS)
    methods = ["fp", "rtn", "gptq", "nf4", "smoothquant", "omniquant", "omniquant_let"]
    ordered = sorted(rows.values(), key=lambda r: (order.index(r["config"]), methods.index(r["method"])))
    _write(ordered, args, any(r.get("device") == "cuda" for r in ordered))


def _forward(args) -> list[str]:
    out = ["--model", args.model, "--nsamples", str(args.nsamples), "--seqlen", str(args.seqlen),
           "--lengths", ",".join(map(str, args.lengths)), "--ppl-windows", str(args.ppl_windows),
           "--passkey-trials", str(args.passkey_trials), "--seed", str(args.seed)]
    return out + (["--epochs", str(args.epochs)] if args.epochs is not None else [])


def _line(r: dict, lengths: list[int]) -> str:
    if "error" in r:
        return f"| {r['config']} | {r['method']} | error: {' '.join(r['error'])} |"
    s = r["scores"]
    cols = [f"{s.get(f'ppl@{lengths[0]}', float('nan')):.2f}"] + [f"{s.get(f'passkey@{n}', float('nan')):.0f}%" for n in lengths]
    return (f"| {r['config']} | {r['method']} | " + " | ".join(cols)
            + f" | {r['calib_s']:.0f} | {r['peak_bytes'] / 2**30:.2f} |")


def _write(rows: list[dict], args, cuda: bool) -> None:
    fp = next((r for r in rows if r["method"] == "fp" and "scores" in r), None)
    head = (f"| config | method | ppl@{args.lengths[0]} | " + " | ".join(f"passkey@{n}" for n in args.lengths)
            + " | calib s | peak GiB |\n|" + "---|" * (5 + len(args.lengths)))
    lines = [head] + [_line(r, args.lengths) for r in rows]
    if fp:
        base = fp["scores"][f"ppl@{args.lengths[0]}"]
        lines.append("")
        lines.append("ppl ratio to fp: " + ", ".join(
            f"{r['config']}/{r['method']} {r['scores'][f'ppl@{args.lengths[0]}'] / base:.3f}x"
            for r in rows if "scores" in r and r["method"] != "fp"))
    settings = (f"device {'cuda' if cuda else 'cpu'}; calibration {args.nsamples} x {args.seqlen} tokens from the "
                f"shipped train split, epochs {args.epochs if args.epochs is not None else '20 (40 for W2)'}; "
                f"perplexity over {args.ppl_windows} held-out windows; passkey {args.passkey_trials} trials per length; "
                "embeddings kept in float for every method; W-A activations simulated.")
    md = settings + "\n\n" + "\n".join(lines) + "\n"
    write_results(args.out, md, {"settings": vars(args), "rows": rows}, echo=True)


if __name__ == "__main__":
    main()
