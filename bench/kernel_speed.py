"""Kernel speed: the CPU fast path on the embedded model, and the Triton kernels on a GPU.

    python bench/kernel_speed.py              # CPU section here; GPU section too when CUDA is present
    python bench/kernel_speed.py --check      # GPU: fp16 and bf16 correctness of every kernel (native Triton)
    python bench/kernel_speed.py --gpu-dry-run   # the GPU section's code on tiny shapes, Triton interpreter, CPU

CPU (SmolLM2-135M, batch 1): prefill time for 512- and 2048-token prompts and greedy decode tokens/s
after them, for the fp32 and bf16 dense models and W4 g64 through each CPU backend (embeddings and
head int8, as `compresskit quantize` saves them); plus per-layer times on the model's three linear
shapes by row count (where the GEMV hands over to dequantize + BLAS). Target: W4 decode >= 1.5x the
fp32 model's tokens/s.

GPU: kernel time vs fp16 ``torch.matmul`` for rows 1/4/16/64/256 on 4096x4096, 4096x11008 and
8192x8192, every bit width (group 128), with achieved GB/s against the measured copy bandwidth.
Targets: W4 batch-1 >= 3x fp16; >= 70% of copy bandwidth.
Writes bench/results/kernels_{cpu,gpu}.{md,json}.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

from _results import median_time, write_results  # bench/_results.py (scripts run by path)

RESULTS = Path(__file__).parent / "results"


def _write(name: str, md: str, data: dict) -> None:
    write_results(RESULTS / name, md, data, echo=True)


# --- CPU ---------------------------------------------------------------------------------------

def _model_bytes(model) -> int:
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total


def _tensors(obj) -> list:
    if hasattr(obj, "data_ptr"):
        return [obj]
    if isinstance(obj, (tuple, list)):
        return [t for o in obj for t in _tensors(o)]
    return [t for o in vars(obj).values() for t in _tensors(o)] if hasattr(obj, "__dict__") else []


def _prepared_bytes(model) -> int:
    """Bytes of the kernels' prepared copies (tiles, unpacked zeros) held beside the stored tensors."""
    from compresskit.kernels.modules import QuantLinear

    total = 0
    for m in model.modules():
        if isinstance(m, QuantLinear) and m._kernel is not None:
            stored = {b.data_ptr() for b in m.buffers()}
            total += sum(t.numel() * t.element_size() for t in _tensors(m._kernel[2]) if t.data_ptr() not in stored)
    return total


def _decode(model, ids, new_tokens: int, prefill_backend: str | None, decode_backend: str | None,
            cache_kind: str = "dynamic"):
    """(prefill seconds, per-token decode seconds list) for one greedy run with a KV cache: transformers'
    default DynamicCache (grows by concatenation: every step copies the whole cache) or a StaticCache
    preallocated for the prompt plus the new tokens (as a server would)."""
    import torch
    from transformers import DynamicCache, StaticCache

    import compresskit

    n = ids.shape[1]
    with torch.inference_mode():
        if prefill_backend:
            compresskit.set_kernel_backend(model, prefill_backend)
        cache = (StaticCache(config=model.config, max_cache_len=n + new_tokens + 1) if cache_kind == "static"
                 else DynamicCache(config=model.config))
        t0 = time.perf_counter()
        out = model(ids, cache=cache, use_cache=True, logits_to_keep=1)  # as generate() does
        prefill = time.perf_counter() - t0
        if decode_backend:
            compresskit.set_kernel_backend(model, decode_backend)
        nxt = out.logits[:, -1:].argmax(-1)
        steps = []
        for i in range(new_tokens):
            t0 = time.perf_counter()
            out = model(nxt, cache=cache, use_cache=True, cache_position=torch.tensor([n + i]))
            nxt = out.logits[:, -1:].argmax(-1)
            steps.append(time.perf_counter() - t0)
    return prefill, steps


def cpu_section(args) -> None:
    import torch

    import compresskit
    from compresskit.core.config import QuantConfig

    fp32, tok = compresskit.load_model(args.model)
    fp32.eval()
    text = compresskit.api.heldout_text()
    all_ids = tok(text * 4, return_tensors="pt").input_ids
    w4 = compresskit.load_model(args.model)[0]
    compresskit.quantize(w4, QuantConfig(wbits=4, group_size=64))
    bf16 = compresskit.load_model(args.model, dtype=torch.bfloat16)[0]
    here = {r["backend"]: r["here"] for r in compresskit.kernel_backends()}
    # (label, model, prefill backend, decode backend, caches); None = dense model. The main runs take
    # turns within every repeat (fp32, bf16, W4, W4, then the next repeat), so drift on a shared machine
    # reaches each of them alike; the slow reference backends run once, with fewer tokens.
    both = ("dynamic", "static")
    main_runs = [("fp32 dense", fp32, None, None, both), ("bf16 dense", bf16, None, None, both),
                 ("W4 g64 cpu_native (auto)", w4, "auto", "auto", both),
                 ("W4 g64 cpu_exact", w4, "cpu_exact", "cpu_exact", both)]
    slow_runs = [("W4 g64 dequant", w4, "dequant", "dequant", ("dynamic",)),
                 ("W4 g64 cpu_int4pack (decode; prefill cpu_native)", w4, "cpu_native", "cpu_int4pack", ("dynamic",))]

    def usable(run, cache_kind):
        return cache_kind in run[4] and all(b in (None, "auto") or here[b] == "yes" for b in run[2:4])

    rows = []
    for prompt in args.prompts:
        ids = all_ids[:, :prompt]
        for cache_kind in both:
            runs = [r for r in main_runs if usable(r, cache_kind)]
            prefills = {r[0]: [] for r in runs}
            steps = {r[0]: [] for r in runs}  # per repeat: that run's median step
            for _ in range(args.repeats):
                for label, model, pb, db, _c in runs:
                    p, s = _decode(model, ids, args.new_tokens, pb, db, cache_kind)
                    prefills[label].append(p)
                    steps[label].append(statistics.median(s[1:]))  # the first step allocates; leave it out
            for label, model, _pb, _db, _c in runs:
                rows.append(_decode_row(prompt, cache_kind, label, model, prefills[label], steps[label],
                                        steps.get("fp32 dense")))
                print(rows[-1], flush=True)
            for label, model, pb, db, _c in (r for r in slow_runs if usable(r, cache_kind)):
                p, s = _decode(model, ids, args.slow_tokens, pb, db, cache_kind)
                rows.append(_decode_row(prompt, cache_kind, label, model, [p], [statistics.median(s[1:])], None))
                print(rows[-1], flush=True)
    acc_rows = [_decode_accuracy(w4, all_ids[:, :args.accuracy_tokens], b)
                for b in ("dense", "cpu_exact", "cpu_native") if here[b] == "yes"]
    compresskit.set_kernel_backend(w4, "auto")
    layer_rows = _cpu_layers(args)
    _write("kernels_cpu", _cpu_markdown(rows, layer_rows, acc_rows, args),
           {"settings": vars(args), "models": rows, "decode_accuracy": acc_rows, "layers": layer_rows})


def _decode_row(prompt, cache_kind, label, model, prefills, steps, fp_steps) -> dict:
    """One table row: medians over repeats, and (``fp_steps`` given) the median over repeats of this
    run's speed against the fp32 run of the same repeat (paired, so slow spells of the machine cancel)."""
    row = {"prompt": prompt, "cache": cache_kind, "model": label, "repeats": len(steps),
           "prefill_s": statistics.median(prefills), "decode_tok_s": 1 / statistics.median(steps),
           "weights_mb": _model_bytes(model) / 1e6, "prepared_mb": _prepared_bytes(model) / 1e6}
    if fp_steps:
        ratios = [f / s for f, s in zip(fp_steps, steps)]
        row.update(decode_vs_fp32_paired=statistics.median(ratios), decode_vs_fp32_range=[min(ratios), max(ratios)])
    return row


def _decode_accuracy(model, ids, backend: str) -> dict:
    """Teacher-forced perplexity of ``ids`` fed one token at a time through the KV cache (every step on
    the decode path), and how far the logits are from the ``dense`` backend's (exact dequantization)."""
    import torch

    import compresskit

    compresskit.set_kernel_backend(model, "dense")
    with torch.inference_mode():
        ref = _stepwise_logits(model, ids)
        compresskit.set_kernel_backend(model, backend)
        got = ref if backend == "dense" else _stepwise_logits(model, ids)
    nll = torch.nn.functional.cross_entropy(got[:-1], ids[0, 1:])
    row = {"backend": backend, "tokens": ids.shape[1], "ppl": float(nll.exp()),
           "max_rel_err": float(((got - ref).norm(dim=-1) / ref.norm(dim=-1)).max()),
           "argmax_agree": float((got.argmax(-1) == ref.argmax(-1)).float().mean())}
    print(row, flush=True)
    return row


def _stepwise_logits(model, ids):
    import torch
    from transformers import DynamicCache

    cache, out = DynamicCache(config=model.config), []
    for i in range(ids.shape[1]):
        out.append(model(ids[:, i:i + 1], cache=cache, use_cache=True).logits[0, -1].float())
    return torch.stack(out)


def _cpu_layers(args) -> list[dict]:
    import torch

    from compresskit.core.formats import GPTQPacked
    from compresskit.core.quant_math import compute_qparams, quantize
    from compresskit.kernels import backends

    names = ("cpu_native", "cpu_exact", "cpu_int4pack", "dequant")
    out = []
    for k, n in ((576, 576), (576, 1536), (1536, 576)):
        w = torch.randn(n, k) * 0.05
        s, z = compute_qparams(w, 4, 64, False)
        packed = GPTQPacked.pack(quantize(w, s, z, 4, 64), s, z, 4, 64)
        states = {b: backends.BACKENDS[b].prepare(packed, torch.device("cpu"), torch.float32) for b in names}
        for rows in args.layer_rows:
            x = torch.randn(rows, k)
            row = {"shape": f"{k}x{n}", "rows": rows,
                   "fp32_us": median_time(lambda: torch.nn.functional.linear(x, w), args.layer_repeats) * 1e6}
            for b, st in states.items():
                if b == "cpu_int4pack" and rows > 64:
                    continue  # seconds per call here
                row[f"{b}_us"] = median_time(lambda: backends.BACKENDS[b].forward(st, x, None),
                                              args.layer_repeats) * 1e6
            out.append(row)
    return out


def _cpu_markdown(rows, layer_rows, acc_rows, args) -> str:
    import torch

    fp = {(r["prompt"], r["cache"]): r for r in rows if r["model"] == "fp32 dense"}
    lines = [f"CPU: {torch.get_num_threads()} threads, torch {torch.__version__}, "
             f"capability {torch.backends.cpu.get_cpu_capability()}; model {args.model}, batch 1, "
             f"{args.new_tokens} greedy tokens after the prompt; {args.repeats} repeats in which the "
             "models take turns (decode: median over repeats of each run's median step; 'paired': median "
             "over repeats of fp32's step time / this model's in the same repeat, with its range); the "
             f"slow reference backends ran once with {args.slow_tokens} tokens. 'cache': transformers' DynamicCache (every step concatenates, so "
             "copies, the whole KV cache) or a StaticCache preallocated for prompt + new tokens. 'weights' "
             "are the model's parameters and buffers (W4: packed weights, int8 embeddings/head); 'prepared' "
             "the kernels' copies in their own layout, held beside them while the model runs.", "",
             "| prompt | cache | model | weights MB | + prepared MB | prefill s | decode tok/s | decode vs fp32 "
             "| paired (range) | prefill vs fp32 |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        base = fp.get((r["prompt"], r["cache"]))
        ratio = f"{r['decode_tok_s'] / base['decode_tok_s']:.2f}x" if base else "-"
        pre = "-" if "prefill cpu_native" in r["model"] else f"{r['prefill_s']:.2f}"
        pre_ratio = "-" if pre == "-" or not base else f"{base['prefill_s'] / r['prefill_s']:.2f}x"
        paired = (f"{r['decode_vs_fp32_paired']:.2f}x ({r['decode_vs_fp32_range'][0]:.2f}-"
                  f"{r['decode_vs_fp32_range'][1]:.2f})" if "decode_vs_fp32_paired" in r else "-")
        lines.append(f"| {r['prompt']} | {r['cache']} | {r['model']} | {r['weights_mb']:.0f} | "
                     f"{r.get('prepared_mb', 0):.0f} | {pre} | {r['decode_tok_s']:.1f} | {ratio} | {paired} | "
                     f"{pre_ratio} |")
    lines += ["", f"Decode-path accuracy (W4 g64): {args.accuracy_tokens} held-out tokens fed one at a time "
              "through the KV cache, teacher-forced perplexity, and the logits' largest relative distance "
              "from the `dense` backend's (exact dequantization) and how often their argmax agrees:", "",
              "| backend | ppl | max rel err vs dense | argmax agrees |", "|---|---|---|---|"]
    lines += [f"| {r['backend']} | {r['ppl']:.4f} | {r['max_rel_err']:.1e} | {r['argmax_agree']:.1%} |"
              for r in acc_rows]
    lines += ["", "Per layer (W4 g64, float32 activations), microseconds, median of "
              f"{args.layer_repeats}; weights stay in cache between calls, so the dense numbers are "
              "faster than in a real decode step:", "",
              "| shape KxN | rows | fp32 dense | cpu_native | cpu_exact | cpu_int4pack | dequant |",
              "|---|---|---|---|---|---|---|"]
    for r in layer_rows:
        cells = [f"{r[c]:.0f}" if c in r else "-" for c in ("fp32_us", "cpu_native_us", "cpu_exact_us",
                                                              "cpu_int4pack_us", "dequant_us")]
        lines.append(f"| {r['shape']} | {r['rows']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# --- GPU ---------------------------------------------------------------------------------------

def _random_packed(k: int, n: int, bits: int, group_size: int, device):
    import torch

    from compresskit.core.formats import GPTQPacked

    g = torch.Generator().manual_seed(0)
    groups = (k + group_size - 1) // group_size
    q = torch.randint(0, 2**bits, (n, k), generator=g, dtype=torch.int32).to(torch.uint8)
    zero = torch.randint(0, 2**bits, (n, groups), generator=g, dtype=torch.int32)
    scale = (torch.rand(n, groups, generator=g) * 0.01 + 1e-3).half().float()
    return GPTQPacked.pack(q, scale, zero, bits, group_size)


def gpu_section(args, dry_run: bool) -> None:
    import torch

    from compresskit.kernels import triton_kernels

    device = torch.device("cpu" if dry_run else "cuda")
    sync = (lambda: None) if dry_run else torch.cuda.synchronize
    shapes = [(256, 256), (256, 512)] if dry_run else [(4096, 4096), (4096, 11008), (8192, 8192)]
    rows_list = [1, 4, 16] if dry_run else [1, 4, 16, 64, 256]
    repeats = 2 if dry_run else 50
    copy_gbs = _copy_bandwidth(device, sync, dry_run)
    out = []
    for k, n in shapes:
        dense = (torch.randn(n, k, device=device) * 0.02).half()
        for bits in (2, 3, 4, 8):
            packed = _random_packed(k, n, bits, 128, device)
            w = triton_kernels.prepare(packed, device, torch.float16)
            wbytes = sum(t.numel() * t.element_size() for t in (w.qweight, w.qhigh, w.scales, w.zeros))
            for rows in rows_list:
                x = torch.randn(rows, k, device=device).half()
                t_fp = median_time(lambda: torch.matmul(x, dense.t()), repeats, sync)
                t_q = median_time(lambda: triton_kernels.matmul(x, w), repeats, sync)
                moved = wbytes + x.numel() * 2 + rows * n * 2
                out.append({"shape": f"{k}x{n}", "bits": bits, "rows": rows, "fp16_us": t_fp * 1e6,
                            "kernel_us": t_q * 1e6, "speedup": t_fp / t_q, "gb_s": moved / t_q / 1e9,
                            "of_copy": moved / t_q / 1e9 / copy_gbs})
                print(out[-1], flush=True)
    name = torch.cuda.get_device_name() if not dry_run else "Triton interpreter on CPU (dry run: timings meaningless)"
    lines = [f"GPU: {name}; copy bandwidth {copy_gbs:.0f} GB/s; group size 128, fp16 activations; median of "
             f"{repeats}.", "", "| shape KxN | bits | rows | fp16 matmul us | kernel us | speedup | GB/s | of copy |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['shape']} | {r['bits']} | {r['rows']} | {r['fp16_us']:.1f} | {r['kernel_us']:.1f} | "
              f"{r['speedup']:.2f}x | {r['gb_s']:.0f} | {r['of_copy']:.0%} |" for r in out]
    md = "\n".join(lines) + "\n"
    if dry_run:
        print(md)
        return
    _write("kernels_gpu", md, {"device": name, "copy_gb_s": copy_gbs, "rows": out})


def _copy_bandwidth(device, sync, dry_run: bool) -> float:
    import torch

    n = (1 << 20) if dry_run else (1 << 28)  # 1 GiB of fp32 on the GPU
    src = torch.empty(n, device=device)
    dst = torch.empty_like(src)
    t = median_time(lambda: dst.copy_(src), 3 if dry_run else 20, sync)
    return 2 * n * 4 / t / 1e9  # read + write


def gpu_check() -> None:
    """Native Triton (no interpreter) against the reference, fp16 and bf16, every width, both kernels."""
    import torch

    from compresskit.kernels import reference, triton_kernels

    worst = 0.0
    for bits in (2, 3, 4, 8):
        for gs in (32, 128, -1):
            packed = _random_packed(576, 1536, bits, 576 if gs == -1 else gs, "cuda")
            if gs == -1:
                packed.group_size = -1
            for dtype in (torch.float16, torch.bfloat16):
                w = triton_kernels.prepare(packed, torch.device("cuda"), dtype)
                for rows in (1, 3, 17, 64):
                    x = torch.randn(rows, 576, device="cuda").to(dtype)
                    ref = reference.gptq_linear(x.float().cpu(), packed)
                    y = triton_kernels.matmul(x, w).float().cpu()
                    err = float((y - ref).norm() / ref.norm())
                    worst = max(worst, err)
                    status = "ok" if err < (2e-3 if dtype == torch.float16 else 1e-2) else "FAIL"
                    print(f"bits {bits} gs {gs} {dtype} rows {rows}: rel err {err:.2e} {status}")
    print(f"worst relative error {worst:.2e}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--prompts", default="512,2048")
    ap.add_argument("--new-tokens", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=5, help="decode runs per model, taking turns")
    ap.add_argument("--slow-tokens", type=int, default=8, help="tokens for the slow reference backends (one run)")
    ap.add_argument("--layer-rows", default="1,4,8,16,64,512")
    ap.add_argument("--layer-repeats", type=int, default=50)
    ap.add_argument("--accuracy-tokens", type=int, default=256, help="tokens for the decode-path accuracy table")
    ap.add_argument("--no-cpu", action="store_true", help="skip the CPU section")
    ap.add_argument("--check", action="store_true", help="GPU: native correctness check only")
    ap.add_argument("--gpu-dry-run", action="store_true", help="run the GPU section's code under the interpreter")
    args = ap.parse_args()
    args.prompts = [int(p) for p in args.prompts.split(",")]
    args.layer_rows = [int(r) for r in args.layer_rows.split(",")]
    if args.gpu_dry_run:
        os.environ["TRITON_INTERPRET"] = "1"
        gpu_section(args, dry_run=True)
        return
    import torch

    if args.check:
        if not torch.cuda.is_available():
            sys.exit("--check needs a CUDA device")
        gpu_check()
        return
    if not args.no_cpu:
        cpu_section(args)
    if torch.cuda.is_available():
        gpu_section(args, dry_run=False)
    else:
        print("no CUDA device: GPU section skipped (the script runs it unchanged where one is present)")


if __name__ == "__main__":
    main()
