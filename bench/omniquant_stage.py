"""OmniQuant's end-to-end stage, setting by setting, from one saved block-stage model.

    python bench/omniquant_stage.py --block-model DIR                      # DIR: saved once, see below
    python bench/omniquant_stage.py --block-model DIR --variants "lr=3e-3;lr=3e-3,repeat=0.5"

The block stage (LWC from the clipping search, a few epochs per block) takes most of the `cpu` preset's
time and does not depend on the end-to-end settings, so it runs once: ``--block-model DIR`` is a model
quantized with ``finetune_steps=0`` (made and saved there first if DIR does not exist, with ``--wbits``,
``--group-size``, ``--block-mix`` (the block stage's ``retrieval_mix``) and the `cpu` preset). Each
variant then loads it, runs the stage against the float parent as the preset would
(`compresskit.api_passes.finetune_config`, with the variant's ``lr``, ``repeat`` =
``finetune_retrieval_repeat``, ``mix`` = ``finetune_retrieval_mix``, ``steps``, ``seqlen`` =
``finetune_seqlen``) and is scored like bench/quality.py's rows: held-out and docs perplexity, passkey
and ``--extra-tasks`` at ``--lengths``. ``none`` is the block-stage model itself. Rows run one after
another in this process.
Writes bench/results/omniquant_stage.{md,json}.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from _results import add_eval_options, gap_share, pin_docs, score_model, write_results  # bench/_results.py (run by path)

KEYS = {"lr": ("finetune_lr", float), "repeat": ("finetune_retrieval_repeat", float),
        "mix": ("finetune_retrieval_mix", float), "steps": ("finetune_steps", int),
        "seqlen": ("finetune_seqlen", int)}


def parse_variant(spec: str) -> dict:
    """``"lr=3e-3,repeat=0.5"`` -> OmniQuantConfig fields; ``"none"`` -> {} (no stage)."""
    if spec.strip() == "none":
        return {}
    out = {}
    for part in spec.split(","):
        key, _, value = part.partition("=")
        if key.strip() not in KEYS:
            raise SystemExit(f"unknown variant key {key!r} in {spec!r}; use {', '.join(KEYS)} or 'none'")
        field, cast = KEYS[key.strip()]
        out[field] = cast(value)
    return out


def block_model(args):
    """The saved block-stage model, made first when ``--block-model`` does not exist."""
    import compresskit
    from compresskit.quant.omniquant import OmniQuantConfig

    path = Path(args.block_model)
    if not path.exists():
        model, tok = compresskit.load_model(args.model)
        t0 = time.perf_counter()
        compresskit.quantize(model, OmniQuantConfig(wbits=args.wbits, group_size=args.group_size, embed_bits=16,
                                                    calib="builtin", seed=args.seed, preset="cpu", finetune_steps=0,
                                                    retrieval_mix=args.block_mix),
                             tokenizer=tok)
        print(f"block stage: {time.perf_counter() - t0:.0f} s", flush=True)
        compresskit.save(model, tok, path)
    return compresskit.load_model(str(path))


def run(args) -> list[dict]:
    import compresskit
    from compresskit.api_distill import distill
    from compresskit.api_passes import finetune_config
    from compresskit.quant.omniquant import OmniQuantConfig

    rows = []
    for spec in args.variants.split(";"):
        fields = parse_variant(spec)
        model, tok = block_model(args)
        seconds = 0.0
        if fields:
            parent, _ = compresskit.load_model(args.model)
            config = OmniQuantConfig(wbits=args.wbits, group_size=args.group_size, calib="builtin", seed=args.seed,
                                     preset="cpu", **fields)  # unset fields: the preset's (its steps ...)
            stage = finetune_config(config, parent.config.max_position_embeddings)
            t0 = time.perf_counter()
            distill(model, parent, stage, tokenizer=tok)
            seconds = time.perf_counter() - t0
            del parent
            fields = {"lr": stage.lr, "repeat": stage.retrieval_repeat, "mix": stage.retrieval_mix, "steps": stage.steps,
                      "seqlen": stage.seqlen}
        rows.append({"variant": spec.strip(), "settings": fields, "stage_s": round(seconds), "scores": score_model(model, tok, args)[0]})
        print(rows[-1], flush=True)
    return rows


def write(rows: list[dict], args) -> None:
    keys = [k for k in rows[0]["scores"] if not k.startswith("ppl")]
    first = args.lengths[0]
    head = ["variant", f"ppl@{first}", f"ppl@{first} docs"] + keys + ["stage s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        s = r["scores"]
        ppl, docs = s[f"ppl@{first}"], s[f"ppl_docs@{first}"]
        gaps = ("", "")
        if args.fp_ppl and args.rtn_ppl:
            gaps = tuple(f" ({100 * gap_share(rtn, v, fp):.0f}%)" for v, fp, rtn in
                         ((ppl, args.fp_ppl[0], args.rtn_ppl[0]), (docs, args.fp_ppl[1], args.rtn_ppl[1])))
        lines.append("| " + " | ".join([r["variant"], f"{ppl:.2f}{gaps[0]}", f"{docs:.2f}{gaps[1]}"]
                                      + [f"{s[k]:.0f}%" for k in keys] + [str(r["stage_s"])]) + " |")
    mix = "" if args.block_mix is None else f", retrieval_mix={args.block_mix} when it was made here"
    settings = (f"block-stage model {Path(args.block_model).name} (W{args.wbits} g{args.group_size}, `cpu` preset with "
                f"finetune_steps=0{mix}); each variant: the preset's end-to-end steps unless it sets steps; perplexity over "
                f"{args.ppl_windows} windows of the held-out split and of the docs text (sha256 {args.docs_sha256}); "
                f"passkey and {args.extra_tasks or 'no other tasks'}: {args.passkey_trials} trials per length"
                + (f"; in brackets the share of RTN's log-perplexity gap closed (fp {args.fp_ppl}, RTN {args.rtn_ppl})"
                   if args.fp_ppl and args.rtn_ppl else ""))
    write_results(args.out, settings + "\n\n" + "\n".join(lines) + "\n", {"settings": vars(args), "rows": rows}, echo=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--block-model", required=True, help="the saved block-stage model (made there if missing)")
    ap.add_argument("--wbits", type=int, default=4)
    ap.add_argument("--block-mix", type=float, default=None,
                    help="retrieval_mix of the block stage when the block model is made (default: the preset's)")
    ap.add_argument("--group-size", type=int, default=64)
    ap.add_argument("--variants", default="none;lr=1e-2,repeat=0;lr=1e-2,repeat=0.5;lr=3e-3,repeat=0;lr=3e-3,repeat=0.5")
    ap.add_argument("--fp-ppl", type=lambda s: [float(x) for x in s.split(",")], default=None,
                    help="fp's held-out,docs perplexity (for the gap closed), e.g. 29.34,38.99")
    ap.add_argument("--rtn-ppl", type=lambda s: [float(x) for x in s.split(",")], default=None,
                    help="RTN's held-out,docs perplexity, e.g. 36.74,47.41")
    add_eval_options(ap, Path(__file__).parent / "results" / "omniquant_stage", extra_tasks="niah_multikey_1")
    args = ap.parse_args()
    args.lengths = [int(x) for x in str(args.lengths).split(",")] if isinstance(args.lengths, str) else args.lengths
    with tempfile.TemporaryDirectory() as tmp:
        pin_docs(args, tmp)
        write(run(args), args)


if __name__ == "__main__":
    main()
