"""Distillation on the embedded model: recovery of a pruned and of a quantized SmolLM2-135M student.

    python bench/distill.py                                  # both parts, CPU-sized budgets
    python bench/distill.py --parts pruned --steps 40 --lr 3e-4 --seqlen-schedule 1024,2048
    python bench/distill.py --parts quant --quant-steps 16 --quant-lr 5e-3

``pruned``: MLP channels pruned 25% (Minitron activation importance on ``--nsamples`` x 2048 tokens of
the shipped train split, no retrieval protection), then distilled from the unpruned model (forward KL,
T=1, all weights, or ``--lora``) on windows of the shipped train split, short-to-long ending at
``--seqlen``. ``quant``: RTN W3 g64 (embeddings in float, as bench/quality.py), then only its group
scales trained by distillation (the packed codes stay bit for bit). Each student is evaluated before and
after (perplexity over ``--ppl-windows`` held-out windows and passkey over ``--passkey-trials`` depths at
``--lengths``); the teacher's rows come from the evaluation cache when present.
Writes bench/results/distill.{json,md}.
"""
from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

from _results import write_results  # bench/_results.py (scripts run by path)


def _scores(model, tok, args) -> tuple[dict, float]:
    import compresskit

    report = compresskit.evaluate(model, tok, tasks=("ppl", "passkey"), lengths=args.lengths,
                                  ppl_windows=args.ppl_windows, passkey_trials=args.passkey_trials, seed=args.seed)
    return {f"{r.task}@{r.length}": r.score for r in report.rows}, report.seconds


def _distill(student, teacher, tok, args, **fields) -> dict:
    import torch

    import compresskit

    t0 = time.perf_counter()

    def show(n: int, message: str | None = None) -> None:
        print(f"  {message}, {time.perf_counter() - t0:.0f}s", flush=True)

    result = compresskit.distill_model(student, teacher, tokenizer=tok, data="builtin", seed=args.seed,
                                       gradient_checkpointing=args.gradient_checkpointing, kl_chunk=args.kl_chunk,
                                       progress=show, **fields)
    wall = time.perf_counter() - t0
    hist = result.history
    return {"recipe": result.config, "steps": result.steps, "tokens": result.tokens, "train_s": result.seconds,
            "wall_s": wall, "tokens_per_s": result.tokens_per_second, "threads": torch.get_num_threads(),
            "kl_first": hist[0]["kl"], "kl_last": hist[-1]["kl"],
            "kl_curve": [round(h["kl"], 4) for h in hist]}


def run(args: argparse.Namespace) -> dict:
    import compresskit
    from compresskit import api

    teacher, tok = compresskit.load_model(args.model)
    out: dict = {"rows": []}
    previous = Path(args.out).with_suffix(".json")
    if args.append and previous.is_file():  # keep the rows of the other part (run separately)
        mine = {"pruned": "mlp25" + args.tag, "quant": "rtn-w3g64" + args.tag}
        out["rows"] = [r for r in json.loads(previous.read_text())["rows"]
                       if r["student"] not in {mine[p] for p in args.parts}]
    t_scores, _ = _scores(teacher, tok, args)
    out["teacher"] = t_scores
    print(f"teacher: {t_scores}", flush=True)
    if "pruned" in args.parts:
        student = copy.deepcopy(teacher)
        t0 = time.perf_counter()
        api.prune(student, mlp=0.25, protect_retrieval=False, tokenizer=tok, nsamples=args.nsamples, seqlen=2048,
                  seed=args.seed)
        row: dict = {"student": "mlp25" + args.tag, "prune_s": time.perf_counter() - t0,
                     "params": api.parameter_count(student), "params_teacher": api.parameter_count(teacher)}
        row["before"], _ = _scores(student, tok, args)
        print(f"mlp25 before: {row['before']}", flush=True)
        fields = dict(seqlen=args.seqlen, seqlen_schedule=tuple(args.seqlen_schedule), steps=args.steps, lr=args.lr,
                      warmup_steps=args.warmup, lora=args.lora, schedule_fractions=tuple(args.schedule_fractions),
                      train_parts=tuple(args.train_parts), retrieval_mix=args.retrieval_mix,
                      hidden_weight=args.hidden_weight)
        if args.lora:
            fields.update(lora_rank=args.lora_rank, lora_alpha=2.0 * args.lora_rank)
        row.update(_distill(student, teacher, tok, args, **fields))
        row["method"] = ("LoRA r%d, merged" % args.lora_rank if args.lora
                         else f"{' + '.join(args.train_parts)} weights" if args.train_parts else "all weights")
        row["after"], _ = _scores(student, tok, args)
        print(f"mlp25 after: {row['after']} ({row['tokens']} tokens, {row['wall_s']:.0f}s)", flush=True)
        out["rows"].append(row)
        _write(out, args)
        del student
    if "quant" in args.parts:
        student = copy.deepcopy(teacher)
        compresskit.quantize(student, compresskit.QuantConfig(wbits=3, group_size=64, embed_bits=16))
        codes = {n: b.clone() for n, b in student.named_buffers() if n.endswith(("qweight", "qzeros"))}
        row = {"student": "rtn-w3g64" + args.tag, "method": "scales only (codes frozen)"}
        row["before"], _ = _scores(student, tok, args)
        print(f"w3g64 before: {row['before']}", flush=True)
        row.update(_distill(student, teacher, tok, args, seqlen=args.seqlen,
                            seqlen_schedule=tuple(args.seqlen_schedule), steps=args.quant_steps, lr=args.quant_lr,
                            warmup_steps=args.warmup, quant_params_only=True, retrieval_mix=args.retrieval_mix))
        import torch

        row["codes_identical"] = all(torch.equal(b, codes[n]) for n, b in student.named_buffers() if n in codes)
        row["after"], _ = _scores(student, tok, args)
        print(f"w3g64 after: {row['after']} ({row['tokens']} tokens, {row['wall_s']:.0f}s)", flush=True)
        out["rows"].append(row)
        _write(out, args)
    return out


def _gap(teacher: float, before: float, after: float) -> str:
    return f"{(before - after) / (before - teacher):.0%}" if before != teacher else "-"


def _mix(recipe: dict) -> str:
    share, hidden = recipe.get("retrieval_mix", 0), recipe.get("hidden_weight", 0)
    return ((f"; {share:.0%} of windows retrieval exercises" if share else "")
            + (f"; + {hidden:g} x hidden-state cosine" if hidden else ""))


def _write(out: dict, args: argparse.Namespace, final: bool = False) -> None:
    n = args.lengths[-1]
    t = out["teacher"]
    head = (f"| student | trained | lr | threads | lengths | steps | tokens | train s | tok/s | ppl@{n} teacher | before | "
            f"after | gap closed | passkey@{n} teacher | before | after |\n|" + "---|" * 16)
    lines = [head]
    for r in out["rows"]:
        b, a, rec = r["before"], r["after"], r["recipe"]
        lines.append(
            f"| {r['student']} | {r['method']}{_mix(rec)} | {rec['lr']:g} | {r.get('threads', '?')} | "
            f"{','.join(map(str, rec['seqlen_schedule']))} | "
            f"{r['steps']} | {r['tokens']} | {r['train_s']:.0f} | "
            f"{r['tokens_per_s']:.1f} | {t[f'ppl@{n}']:.2f} | {b[f'ppl@{n}']:.2f} | {a[f'ppl@{n}']:.2f} | "
            f"{_gap(t[f'ppl@{n}'], b[f'ppl@{n}'], a[f'ppl@{n}'])} | {t[f'passkey@{n}']:.0f}% | "
            f"{b[f'passkey@{n}']:.0f}% | {a[f'passkey@{n}']:.0f}% |")
    settings = ("CPU (2 cores; a 1-thread run was pinned to one core with taskset), fp32; "
                f"forward KL on logits, T=1, no LM loss; AdamW (0.9, 0.95), {args.warmup} warmup steps then cosine to "
                f"0.1 x lr; batch 1 sequence; data: windows of the shipped train split; the steps split equally over "
                f"the lengths (short to long); gradient checkpointing {'on' if args.gradient_checkpointing else 'off'}, "
                f"lm_head/KL in chunks of {args.kl_chunk} positions (fused gradient in -fused rows). mlp25: 25% of MLP channels pruned (importance "
                f"on {args.nsamples} x 2048 tokens, no retrieval protection); rtn-w3g64: RTN W3 "
                "g64 with float embeddings, only the group scales trained (lr on their log gains), codes frozen. "
                f"Evaluation: perplexity over {args.ppl_windows} held-out windows, passkey {args.passkey_trials} "
                f"depths, at {n} tokens. gap closed = (before - after) / (before - teacher) of perplexity.")
    md = settings + "\n\n" + "\n".join(lines) + "\n"
    write_results(args.out, md, {"settings": vars(args), **out}, echo=final)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--parts", default="pruned,quant")
    ap.add_argument("--nsamples", type=int, default=8, help="pruning importance samples (x 2048 tokens)")
    ap.add_argument("--seqlen", type=int, default=2048)
    ap.add_argument("--seqlen-schedule", default="1024,2048")
    ap.add_argument("--schedule-fractions", default="", help="share of the steps per stage (default equal)")
    ap.add_argument("--steps", type=int, default=28)
    ap.add_argument("--lr", type=float, default=4e-4)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--lora", action="store_true")
    ap.add_argument("--hidden-weight", type=float, default=0.0, help="weight of the hidden-state (cosine) loss")
    ap.add_argument("--retrieval-mix", type=float, default=0.0, help="share of windows made retrieval exercises")
    ap.add_argument("--train-parts", default="", help="train only these parts of the pruned student (e.g. mlp)")
    ap.add_argument("--lora-rank", type=int, default=32)
    ap.add_argument("--quant-steps", type=int, default=10)
    ap.add_argument("--quant-lr", type=float, default=1e-2)
    ap.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=True,
                    help="on: at 2048 tokens it costs nothing measurable on this CPU (31 s/step either way)")
    ap.add_argument("--kl-chunk", type=int, default=1024)
    ap.add_argument("--lengths", default="2048")
    ap.add_argument("--ppl-windows", type=int, default=4)
    ap.add_argument("--passkey-trials", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tag", default="", help="suffix of the row name (several settings in one table)")
    ap.add_argument("--render", action="store_true", help="only rewrite OUT.md from OUT.json")
    ap.add_argument("--append", action="store_true", help="keep the other part's row already in OUT.json")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "distill"))
    args = ap.parse_args()
    args.lengths = [int(x) for x in str(args.lengths).split(",")]
    args.seqlen_schedule = [int(x) for x in args.seqlen_schedule.split(",")] if args.seqlen_schedule else []
    args.schedule_fractions = [float(x) for x in args.schedule_fractions.split(",")] if args.schedule_fractions else []
    args.parts = args.parts.split(",")
    args.train_parts = [p for p in args.train_parts.split(",") if p]
    if args.render:
        saved = json.loads(Path(args.out).with_suffix(".json").read_text())
        _write({"teacher": saved["teacher"], "rows": saved["rows"]}, args, final=True)
        return
    _write(run(args), args, final=True)


if __name__ == "__main__":
    main()
