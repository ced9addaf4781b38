"""RTN on the embedded model: size, perplexity and passkey per configuration, in one run.

    python bench/spine.py [--lengths 1024,2048] [--ppl-windows 4] [--passkey-trials 5] [--configs w4g64,w3g64]

Prints a Markdown table and writes bench/results/spine.{json,md}. Uses the Python API only.
"""
from __future__ import annotations

import argparse
import copy
import json
import platform
import shutil
import tempfile
import time
from pathlib import Path

import torch

import compresskit
from compresskit.api import checkpoint_bytes

CONFIGS = {
    "w8g64": dict(wbits=8, group_size=64),
    "w4g64": dict(wbits=4, group_size=64),
    "w4g64-sym": dict(wbits=4, group_size=64, sym=True),
    "w4g32": dict(wbits=4, group_size=32),
    "w4pc": dict(wbits=4, group_size=-1),
    "w3g64": dict(wbits=3, group_size=64),
    "w2g64": dict(wbits=2, group_size=64),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--lengths", default="1024,2048")
    ap.add_argument("--ppl-windows", type=int, default=4)
    ap.add_argument("--passkey-trials", type=int, default=5)
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "spine"))
    args = ap.parse_args()
    lengths = [int(x) for x in args.lengths.split(",")]
    fp, tok = compresskit.load_model(args.model)
    base_bytes = checkpoint_bytes(args.model)
    kw = dict(lengths=lengths, ppl_windows=args.ppl_windows, passkey_trials=args.passkey_trials)
    rows = []
    t = time.perf_counter()
    rows.append(_row("fp (bf16 checkpoint)", base_bytes, base_bytes, 0.0, compresskit.evaluate(fp, tok, **kw),
                     time.perf_counter() - t))
    for name in args.configs.split(","):
        model = copy.deepcopy(fp)
        t = time.perf_counter()
        compresskit.quantize(model, compresskit.QuantConfig(**CONFIGS[name]))
        qsec = time.perf_counter() - t
        tmp = Path(tempfile.mkdtemp()) / name
        compresskit.save(model, tok, tmp)
        size = checkpoint_bytes(tmp)
        shutil.rmtree(tmp.parent)
        t = time.perf_counter()
        rows.append(_row(f"rtn {name}", size, base_bytes, qsec, compresskit.evaluate(model, tok, **kw),
                         time.perf_counter() - t))
        print(_markdown(rows[-1:], lengths, header=len(rows) == 2), flush=True)
    md = _markdown(rows, lengths)
    print(md)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"model": args.model, "torch": torch.__version__, "threads": torch.get_num_threads(),
            "machine": platform.processor() or platform.machine(), "args": vars(args)}
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    out.with_suffix(".md").write_text(f"Model {args.model}, CPU, torch {torch.__version__}, "
                                      f"{torch.get_num_threads()} threads, float32 compute.\n\n{md}\n")


def _row(name, size, base, qsec, report, esec):
    scores = {f"{r.task}@{r.length}": r.score for r in report.rows}
    return {"config": name, "bytes": size, "ratio": size / base, "quantize_s": qsec, "eval_s": esec, "scores": scores}


def _markdown(rows, lengths, header=True):
    cols = [f"ppl@{n}" for n in lengths] + [f"passkey@{n}" for n in lengths]
    lines = []
    if header:
        lines = ["| config | size MB | % of bf16 | " + " | ".join(cols) + " | quantize s | eval s |",
                 "|---" * (len(cols) + 5) + "|"]
    for r in rows:
        vals = [f"{r['scores'].get(c.replace('ppl@', 'ppl@'), float('nan')):.2f}" if c.startswith("ppl")
                else f"{r['scores'].get(c, float('nan')):.0f}%" for c in cols]
        lines.append(f"| {r['config']} | {r['bytes'] / 1e6:.1f} | {r['ratio']:.1%} | " + " | ".join(vals)
                     + f" | {r['quantize_s']:.1f} | {r['eval_s']:.0f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
