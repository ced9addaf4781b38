"""Which linears' searched clipping costs retrieval: the clipping search (no training) with a set of linears
left at the constant start, scored as bench/quality.py scores (held-out and docs perplexity at 2048, passkey
at 2K / 4K, 10 trials).

    python bench/clip_skip.py --wbits 4 --skip "v_proj"        # one row, appended to results/clip_skip.jsonl
    python bench/clip_skip.py --wbits 3 --skip "" --min-ratio 0.85

``--skip``: comma-separated linear roles (q_proj ... down_proj) the search leaves alone (OmniQuantConfig's
``clip_search_skip``); ``--min-ratio``: the smallest clipping ratio the search may pick.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from _results import docs_text  # bench/_results.py (scripts run by path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--wbits", type=int, default=4)
    ap.add_argument("--skip", default="v_proj")
    ap.add_argument("--min-ratio", type=float, default=0.5)
    ap.add_argument("--nsamples", type=int, default=16)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "clip_skip.jsonl"))
    args = ap.parse_args()
    import compresskit
    from compresskit.quant.omniquant import OmniQuantConfig
    from compresskit.quant.omniquant import block

    if args.min_ratio != 0.5:
        search = block.search_clip
        block.search_clip = lambda w, g, e: search(w, g, e, min_ratio=args.min_ratio)
    model, tok = compresskit.load_model("smollm2-135m", device="cpu")
    skip = [s for s in args.skip.split(",") if s]
    cfg = OmniQuantConfig(wbits=args.wbits, group_size=64, embed_bits=16, nsamples=args.nsamples, seqlen=args.seqlen,
                          calib="builtin", seed=0, epochs=0, clip_init="search", clip_search_skip=skip,
                          preset="published")
    t0 = time.perf_counter()
    compresskit.quantize(model, cfg, tokenizer=tok)
    row = {"wbits": args.wbits, "skip": skip, "min_ratio": args.min_ratio, "calib_s": round(time.perf_counter() - t0)}
    rep = compresskit.evaluate(model, tok, tasks=("ppl", "passkey"), lengths=[2048, 4096], ppl_windows=4,
                               passkey_trials=10, seed=0, cache=False)
    row |= {f"{r.task}@{r.length}": round(r.score, 2) for r in rep.rows}
    docs = compresskit.evaluate(model, tok, tasks=("ppl",), lengths=[2048], ppl_windows=4, seed=0, cache=False,
                                text=docs_text())
    row |= {f"ppl_docs@{r.length}": round(r.score, 2) for r in docs.rows}
    print(json.dumps(row), flush=True)
    with open(args.out, "a") as fh:
        fh.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    torch.set_num_threads(min(2, torch.get_num_threads()))
    main()
