"""Exports of the embedded model loaded through transformers' own paths, against compresskit's own load.

    python bench/export.py [--model smollm2-135m] [--wbits 4] [--group-size 64] [--dtypes float16,float32]

Quantizes (RTN), evaluates briefly before/after (so the card has its table), saves natively, exports
GPTQ v2, GPTQ v1 (when every zero point allows it) and compressed-tensors, loads each with plain
``AutoModelForCausalLM.from_pretrained`` (optimum + GPTQModel for GPTQ, compressed-tensors for the
other) in float32 on the CPU, and reports the max |logit difference| on a few prompts, top-1 agreement,
file sizes and load times. Writes bench/results/export.{md,json} and the GPTQ export's card as
bench/results/export_card.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import torch

import compresskit
from compresskit.api import checkpoint_bytes

PROMPTS = [  # reference: compresskit's load with the "dense" backend (exact float32)
    "The capital of France is",
    "def fibonacci(n):\n    ",
    "There is an important info hidden inside a lot of irrelevant text. The pass key is 71432. Remember it.",
]


@torch.inference_mode()
def _logits(model, tok) -> list[torch.Tensor]:
    return [model(tok(p, return_tensors="pt").input_ids).logits.float()[0] for p in PROMPTS]


def _compare(ref: list[torch.Tensor], got: list[torch.Tensor]) -> dict:
    diff = max((a - b).abs().max().item() for a, b in zip(ref, got))
    scale = max(a.abs().max().item() for a in ref)
    top1 = sum(int((a.argmax(-1) == b.argmax(-1)).sum()) for a, b in zip(ref, got))
    n = sum(a.shape[0] for a in ref)
    return {"max_abs_logit_diff": diff, "max_abs_logit": scale, "top1_agreement": f"{top1}/{n}"}


def _rounded_reference(native: Path, linears_fp16: bool, embed_fp16: bool):
    """compresskit's own load with its weights rounded as a loader stores them: every quantized linear
    dequantized once and rounded to float16 (GPTQModel dequantizes in its float16 scales' dtype), and/or the
    int8-row embedding dequantized and rounded to float16 (a float16 export stores it so)."""
    import torch.nn as nn

    from compresskit.core.arch import set_module
    from compresskit.kernels.modules import Int8Embedding, Int8Linear, QuantLinear

    model, _ = compresskit.load_model(native, backend="dense")
    for name, m in list(model.named_modules()):
        if isinstance(m, QuantLinear) and linears_fp16:
            lin = nn.Linear(m.in_features, m.out_features, bias=m.bias is not None)
            lin.weight.data = m.packed().dequantize(torch.float32).half().float()
            if m.bias is not None:
                lin.bias.data = m.bias.data.float()
            set_module(model, name, lin)
        elif isinstance(m, Int8Embedding) and embed_fp16:
            w = (m.weight.float() * m.weight_scale.float()[:, None]).half().float()
            set_module(model, name, nn.Embedding.from_pretrained(w, freeze=True, padding_idx=m.padding_idx))
    head = model.lm_head
    if isinstance(head, Int8Linear) and embed_fp16:
        lin = nn.Linear(head.in_features, head.out_features, bias=False)
        lin.weight.data = (head.weight.float() * head.weight_scale.float()[:, None]).half().float()
        model.lm_head = lin
    return model.eval()


def _loaded_kernel(model) -> str:
    q = model.model.layers[0].self_attn.q_proj
    return f"{type(q).__module__.split('.')[0]}.{type(q).__name__}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--wbits", type=int, default=4)
    ap.add_argument("--group-size", type=int, default=64)
    ap.add_argument("--dtypes", default="float16,float32")
    ap.add_argument("--formats", default="gptq,gptq-v1,compressed-tensors")
    ap.add_argument("--sym", action="store_true", help="symmetric quantization")
    ap.add_argument("--no-eval", action="store_true")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "export"))
    args = ap.parse_args()
    os.environ.setdefault("GPTQMODEL_CPU_WORKERS", str(max(2, os.cpu_count() or 2)))
    from transformers import AutoModelForCausalLM

    work = Path(tempfile.mkdtemp(prefix="ck-export-"))
    try:
        model, tok = compresskit.load_model(args.model)
        kw = dict(tasks=["ppl", "passkey"], lengths=[512], ppl_windows=2, passkey_trials=3)
        before = None if args.no_eval else compresskit.evaluate(model, tok, **kw)
        cfg = compresskit.QuantConfig(wbits=args.wbits, group_size=args.group_size, sym=args.sym)
        compresskit.quantize(model, cfg)
        after = None if args.no_eval else compresskit.evaluate(model, tok, **kw)
        comparison = None if args.no_eval else compresskit.compare(before, after, max_drop=5, max_ppl_increase=30)
        evaluation = None if args.no_eval else {"before": before, "after": after, "gate": comparison.to_dict()}
        native = compresskit.save(model, tok, work / f"smollm2-135m-{cfg.name}", evaluation=evaluation)
        if comparison is not None:  # as the CLI does: the report and plots, then the card again (it links them)
            compresskit.write_eval_report(native / "evaluation", after, before, comparison,
                                          meta={"title": f"{args.model} -> {cfg.name}"})
            compresskit.write_card(native)
        del model
        t = time.perf_counter()
        ours, _ = compresskit.load_model(native, backend="dense")  # exact float32: no kernel approximation
        native_load = time.perf_counter() - t
        ref = _logits(ours, tok)
        refs = {(False, False): ref}
        del ours
        rows = [{"format": "compresskit native", "dtype": "bf16/fp16 scales", "bytes": checkpoint_bytes(native),
                 "load_s": round(native_load, 2), "kernel": "compresskit.QuantLinear", "max_abs_logit_diff": 0.0,
                 "top1_agreement": "reference"}]
        for fmt in args.formats.split(","):
            for dtype in args.dtypes.split(","):
                out = work / f"{fmt}-{dtype}"
                row = {"format": fmt, "dtype": dtype}
                try:
                    t = time.perf_counter()
                    result = compresskit.export_model(native, fmt, out, dtype=dtype)
                    row["export_s"] = round(time.perf_counter() - t, 2)
                    row["bytes"] = result.weights_bytes
                    row["notes"] = result.notes
                except ValueError as e:  # e.g. v1 with a zero point of 0
                    row["error"] = str(e)
                    rows.append(row)
                    print(f"{fmt} {dtype}: {e}")
                    continue
                t = time.perf_counter()
                try:
                    theirs = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32, device_map="cpu").eval()
                    row["load_path"] = "default"
                except RuntimeError as e:  # asymmetric pack-quantized on transformers 5 + compressed-tensors 0.20
                    if fmt != "compressed-tensors":
                        raise
                    row["default_path_error"] = str(e).splitlines()[0][:200]
                    print(f"{fmt} {dtype}: transformers' default path refused it ({row['default_path_error']})")
                    from transformers import CompressedTensorsConfig

                    t = time.perf_counter()
                    theirs = AutoModelForCausalLM.from_pretrained(
                        out, dtype=torch.float32, device_map="cpu",
                        quantization_config=CompressedTensorsConfig(dequantize=True)).eval()
                    row["load_path"] = "dequantize=True"
                row["load_s"] = round(time.perf_counter() - t, 2)
                row["kernel"] = _loaded_kernel(theirs)
                got = _logits(theirs, tok)
                del theirs
                row.update(_compare(ref, got))
                # GPTQModel dequantizes in float16 (its scales' dtype); compressed-tensors' dequantize=True path in the
                # stored scales' dtype; its default (compressed) path in the model's (float32)
                fp16_linears = row["kernel"].startswith("gptqmodel") or (
                    row["load_path"] == "dequantize=True" and dtype == "float16")
                key = (fp16_linears, dtype == "float16")
                if key not in refs:
                    refs[key] = _logits(_rounded_reference(native, *key), tok)
                row["reference"] = ("linears fp16-rounded" if key[0] else "") + (", " if all(key) else "") + \
                    ("embedding fp16-rounded" if key[1] else "") or "compresskit as is"
                row["max_abs_diff_vs_rounded_reference"] = _compare(refs[key], got)["max_abs_logit_diff"]
                rows.append(row)
                print(json.dumps(row))
        card_dir = Path(args.out + "_card")  # the GPTQ export's card and the plots it links
        exported = work / "gptq-float16"
        if exported.is_dir():
            shutil.rmtree(card_dir, ignore_errors=True)
            card_dir.mkdir(parents=True)
            shutil.copyfile(exported / "README.md", card_dir / "README.md")
            if (exported / "evaluation").is_dir():
                shutil.copytree(exported / "evaluation", card_dir / "evaluation")
        _write(args, cfg.name, rows)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("torch", "transformers", "optimum", "gptqmodel", "compressed-tensors", "huggingface_hub"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


def _write(args, name: str, rows: list[dict]) -> None:
    meta = {"model": args.model, "recipe": name, "machine": f"{platform.machine()} {platform.processor()}".strip(),
            "threads": torch.get_num_threads(), "prompts": PROMPTS, "versions": _versions()}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out + ".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    lines = [f"# Exports of {args.model} ({name}) through transformers' own loaders", "",
             f"Max |logit difference| against compresskit's own load over {len(PROMPTS)} prompts, float32 on the "
             f"CPU ({meta['threads']} threads). Versions: "
             + ", ".join(f"{k} {v}" for k, v in meta["versions"].items() if v) + ".", "",
             "| format | stored dtype | weights (MB) | export (s) | load (s) | loaded as | max abs logit diff | top-1 agree "
             "| same weights rounded as the loader does | max abs diff vs that |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['format']} | {r['dtype']} | - | - | - | not expressible: {r['error'][:140]} | - | - | - | - |")
            continue
        diff, vs = r.get("max_abs_logit_diff"), r.get("max_abs_diff_vs_rounded_reference")
        path = f" ({r['load_path']})" if r.get("load_path") not in (None, "default") else ""
        lines.append(f"| {r['format']} | {r['dtype']} | {r['bytes'] / 1e6:.1f} | {r.get('export_s', '-')} | "
                     f"{r['load_s']} | `{r['kernel']}`{path} | {diff:.2e} | {r['top1_agreement']} | "
                     f"{r.get('reference', '-')} | {'-' if vs is None else f'{vs:.2e}'} |")
    if any(r.get("default_path_error") for r in rows):
        lines += ["", "compressed-tensors: transformers' default (compressed) path refuses asymmetric pack-quantized "
                  "checkpoints (`weight_zero_point` size mismatch: the checkpoint's zero points are packed "
                  "`[out*b/32, groups]`, the model it builds on the meta device expects them unpacked `[out, groups]`; "
                  "llm-compressor issue #1618), so these rows load with `CompressedTensorsConfig(dequantize=True)`, "
                  "which decompresses the same tensors with compressed-tensors' own code."]
    lines += ["", "\"same weights rounded as the loader does\": compresskit's weights, each dequantized linear (and the "
              "dequantized embedding) rounded to float16 the way that loader stores them; a difference of 0 there means "
              "the export holds exactly compresskit's integer weights, zero points and scales."]
    Path(args.out + ".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
