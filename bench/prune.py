"""Structured pruning on the embedded model: settings vs parameters, perplexity, passkey, prefill time.

    python bench/prune.py                                   # the default settings, CPU-sized calibration
    python bench/prune.py --settings heads33,heads33-noprotect --nsamples 8 --passkey-trials 10
    python bench/prune.py --merge a.json,b.json             # combine runs made with the same settings

The unpruned model is scored once through the API (activation importance on ``nsamples x seqlen``
shipped calibration tokens; retrieval heads on ``retrieval_samples`` passkey prompts of
``retrieval_length`` tokens, seeded apart from the evaluation's keys); each setting then prunes a
copy with those scores (``noprotect`` ignores the retrieval scores; ``attention`` protects by attention
mass instead of the default answer-loss score), saves it, reloads the directory
in a fresh interpreter with plain transformers (no compresskit import) and compares logits, evaluates
perplexity and passkey, and times a prefill of ``prefill_tokens`` tokens.
Writes bench/results/prune.{json,md}.
"""
from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _results import write_results  # bench/_results.py (scripts run by path)

SETTINGS = {  # name -> PruneConfig fields
    "fp": {},
    "mlp25": dict(mlp=0.25),
    "heads33": dict(heads=0.33),
    "heads33-noprotect": dict(heads=0.33, protect_retrieval=False),
    "heads33-attention": dict(heads=0.33, retrieval_score="attention"),
    "heads67": dict(heads=0.67),
    "heads67-noprotect": dict(heads=0.67, protect_retrieval=False),
    "layers4": dict(layers=4),
    "layers4-noprotect": dict(layers=4, protect_retrieval=False),
    "layers4-attention": dict(layers=4, retrieval_score="attention"),
    "mlp25-heads33": dict(mlp=0.25, heads=0.33),
}

PLAIN_LOAD = """
import json, sys, torch
from transformers import AutoModelForCausalLM
m = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32)
ids = torch.tensor([json.loads(sys.argv[2])])
with torch.inference_mode():
    torch.save(m(ids).logits, sys.argv[3])
print("compresskit" in sys.modules)
"""


def _prefill_seconds(model, ids, repeats: int = 3) -> float:
    import torch

    times = []
    with torch.inference_mode():
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(input_ids=ids, use_cache=False)
            times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def _evaluate(model, tok, args) -> tuple[dict, float]:
    import compresskit

    report = compresskit.evaluate(model, tok, tasks=("ppl", "passkey"), lengths=args.lengths,
                                  ppl_windows=args.ppl_windows, passkey_trials=args.passkey_trials, seed=args.seed,
                                  cache=False)
    return {f"{r.task}@{r.length}": r.score for r in report.rows}, report.seconds


def _plain_load(model, tok) -> dict:
    """Save, reload in a fresh interpreter with plain transformers, compare logits with compresskit's load."""
    import torch

    import compresskit
    from compresskit import api

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "pruned"
        api.save(model, tok, path)
        size = api.checkpoint_bytes(path)
        probe = tok("The capital of France is", return_tensors="pt")["input_ids"]
        proc = subprocess.run([sys.executable, "-c", PLAIN_LOAD, str(path), json.dumps(probe[0].tolist()),
                               str(Path(tmp) / "l.pt")], capture_output=True, text=True)
        if proc.returncode != 0:
            return {"bytes": size, "ok": False, "error": proc.stderr.strip().splitlines()[-1:]}
        saved, _ = compresskit.load_model(path)  # the bf16-stored weights
        with torch.inference_mode():
            ref = saved(probe).logits
        diff = float((torch.load(Path(tmp) / "l.pt") - ref).abs().max())
        return {"bytes": size, "ok": True, "imported_compresskit": proc.stdout.strip() == "True",
                "max_abs_logit_diff": diff}


def run_all(args: argparse.Namespace) -> list[dict]:
    """Score once on the unpruned model, then prune a copy per setting with those scores."""
    import torch

    import compresskit
    from compresskit import api
    from compresskit.core.arch import get_arch
    from compresskit.prune import head_retrieval_scores

    original, tok = compresskit.load_model(args.model)
    text_ids = tok(api.heldout_text()[:200000], return_tensors="pt")["input_ids"][:, : args.prefill_tokens]
    common = dict(nsamples=args.nsamples, seqlen=args.seqlen, retrieval_samples=args.retrieval_samples,
                  retrieval_length=args.retrieval_length, seed=args.seed)
    t0 = time.perf_counter()
    importance = api.prune_scores(original, api.make_prune_config(**common, protect_retrieval=False),
                                  tokenizer=tok)["importance"]
    configs = {name: api.make_prune_config(**SETTINGS[name], **common) for name in args.settings.split(",")}
    probes = api.retrieval_probes(original, tok, api.make_prune_config(**common))
    retrieval = {m: head_retrieval_scores(original, get_arch(original), probes, m)
                 for m in sorted({c.retrieval_score for c in configs.values() if c.needs_retrieval})}
    score_s = time.perf_counter() - t0
    print(f"scored in {score_s:.0f}s", flush=True)
    rows = []
    for name in args.settings.split(","):
        model = copy.deepcopy(original)
        config = configs[name]
        scores = {"importance": importance, "retrieval": retrieval.get(config.retrieval_score)}
        t0 = time.perf_counter()
        record = api.prune(model, config, tokenizer=tok, scores=scores)
        row: dict = {"setting": name, "recipe": config.to_dict(), "params": api.parameter_count(model),
                     "params_before": record["params_before"], "prune_s": time.perf_counter() - t0,
                     "score_s": score_s if name != "fp" else 0.0,
                     "shape": {k: getattr(model.config, k) for k in ("num_hidden_layers", "num_attention_heads",
                                                                     "num_key_value_heads", "intermediate_size")}}
        if "retrieval" in record:
            row["retrieval"] = {k: record["retrieval"][k] for k in ("protected", "protected_kept")}
            row["retrieval"]["top_heads"] = record["retrieval"]["top_heads"][:8]
        if record.get("kept_query_heads"):
            row["kept_query_heads"] = record["kept_query_heads"]
        if record.get("kept_layers") and config.layers:
            row["kept_layers"] = record["kept_layers"]
        row["plain_load"] = _plain_load(model, tok)
        row["bytes"] = row["plain_load"]["bytes"]
        row["scores"], row["eval_s"] = _evaluate(model, tok, args)
        row["prefill_s"] = _prefill_seconds(model, text_ids)
        row["threads"] = torch.get_num_threads()
        rows.append(row)
        print(_line(row, args.lengths), flush=True)
        _write(rows, args)
        del model
    return rows


def mask_check(args: argparse.Namespace) -> dict:
    """Wu et al.'s ablation of the retrieval score itself, on the unpruned model: zero the o_proj inputs of
    the top-k retrieval heads, or of the k heads with the lowest retrieval score, and run passkey at the
    longest length. Scores count only the answer's non-blank tokens (the key's digits)."""
    import torch

    import compresskit
    from compresskit import api
    from compresskit.core.arch import get_arch
    from compresskit.eval import passkey
    from compresskit.prune import RetrievalProbe, retrieval_scores

    model, tok = compresskit.load_model(args.model)
    config = api.make_prune_config(retrieval_samples=args.retrieval_samples, retrieval_length=args.retrieval_length,
                                   seed=args.seed)
    probes = []
    for p in api.retrieval_probes(model, tok, config):
        keep = [j for j, q in enumerate(p.queries.tolist()) if tok.decode([int(p.input_ids[q + 1])]).strip()]
        probes.append(RetrievalProbe(p.input_ids, p.queries[keep], tuple(p.targets[j] for j in keep)))
    flat = retrieval_scores(model, get_arch(model), probes).flatten()
    n_h, d = model.config.num_attention_heads, model.config.head_dim
    k, length = args.mask_check, args.lengths[-1]
    out = {"k": k, "length": length, "trials": args.passkey_trials}
    for name, heads in (("top", flat.topk(k).indices.tolist()), ("lowest", (-flat).topk(k).indices.tolist())):
        hooks = []
        for layer, block in enumerate(model.model.layers):
            mask = torch.ones(n_h * d)
            for j in heads:
                if j // n_h == layer:
                    mask[(j % n_h) * d:(j % n_h + 1) * d] = 0
            if not bool((mask == 0).any()):
                continue
            hooks.append(block.self_attn.o_proj.register_forward_pre_hook(lambda m, a, c=mask: (a[0] * c,)))
        res = passkey(model, tok, length, trials=args.passkey_trials, seed=args.seed)
        for h in hooks:
            h.remove()
        out[name] = {"heads": [[j // n_h, j % n_h] for j in heads], "passkey": res.accuracy,
                     "predictions": [t.prediction for t in res.trials]}
        print(f"masked {name} {k}: passkey@{length} {res.accuracy:.0f}%", flush=True)
    return out


def prefill_only(args: argparse.Namespace) -> dict:
    """Prefill time per setting's shape alone (time does not depend on which units were kept): a
    random-init model of the pruned shape, median of ``repeats`` forwards of ``prefill_tokens`` tokens."""
    import torch
    from transformers import AutoModelForCausalLM

    import compresskit
    from compresskit import api

    base, _ = compresskit.load_model(args.model)
    ids = torch.randint(0, base.config.vocab_size, (1, args.prefill_tokens), generator=torch.Generator().manual_seed(0))
    out = {}
    for name in args.settings.split(","):
        plan = api.prune_plan(base, api.make_prune_config(**SETTINGS[name]))
        cfg = copy.deepcopy(base.config)
        cfg.num_hidden_layers, cfg.num_attention_heads = plan["keep_layers"], plan["keep_heads"]
        cfg.num_key_value_heads, cfg.intermediate_size = plan["keep_groups"], plan["keep_intermediate"]
        cfg.head_dim = plan["head_dim"]
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
        out[name] = _prefill_seconds(model, ids, repeats=args.repeats)
        print(f"{name}: {out[name]:.2f}s", flush=True)
        del model
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--settings", default=",".join(SETTINGS))
    ap.add_argument("--nsamples", type=int, default=8)
    ap.add_argument("--seqlen", type=int, default=2048)
    ap.add_argument("--retrieval-samples", type=int, default=8)
    ap.add_argument("--retrieval-length", type=int, default=2048)
    ap.add_argument("--lengths", default="1024,2048")
    ap.add_argument("--ppl-windows", type=int, default=2)
    ap.add_argument("--passkey-trials", type=int, default=20)
    ap.add_argument("--prefill-tokens", type=int, default=2048)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "prune"))
    ap.add_argument("--merge", help="comma-separated result JSONs (same settings) to combine into --out")
    ap.add_argument("--mask-check", type=int, default=0, metavar="K",
                    help="instead of the table: mask the top-K / lowest-K retrieval heads of the unpruned model and "
                         "run passkey (writes OUT-mask.json)")
    ap.add_argument("--prefill-only", action="store_true",
                    help="instead of the table: prefill time of each setting's shape alone (writes OUT-prefill.json)")
    ap.add_argument("--repeats", type=int, default=3, help="forwards per prefill timing (median)")
    args = ap.parse_args()
    args.lengths = [int(x) for x in str(args.lengths).split(",")]
    if args.prefill_only:
        result = {"prefill_tokens": args.prefill_tokens, "repeats": args.repeats, "seconds": prefill_only(args)}
        Path(args.out + "-prefill.json").write_text(json.dumps(result, indent=2) + "\n")
        return
    if args.mask_check:
        result = mask_check(args)
        Path(args.out + "-mask.json").write_text(json.dumps(result, indent=2) + "\n")
        return
    if args.merge:
        rows: dict[str, dict] = {}
        for path in args.merge.split(","):
            data = json.loads(Path(path).read_text())
            for key, value in data["settings"].items():
                if key not in ("merge", "out", "settings"):
                    setattr(args, key, value)
            rows.update({r["setting"]: r for r in data["rows"]})
        _write([rows[s] for s in SETTINGS if s in rows], args)
        return
    _write(run_all(args), args, final=True)


def _line(r: dict, lengths: list[int]) -> str:
    if "error" in r:
        return f"| {r['setting']} | error: {' '.join(r['error'])} |"
    s, shape = r["scores"], r["shape"]
    cols = [f"{shape['num_hidden_layers']}L {shape['num_attention_heads']}/{shape['num_key_value_heads']}h "
            f"{shape['intermediate_size']}", f"{r['params'] / 1e6:.1f}M ({r['params'] / r['params_before']:.0%})",
            f"{r['bytes'] / 1e6:.0f}"]
    cols += [f"{s.get(f'ppl@{n}', float('nan')):.2f}" for n in lengths]
    cols += [f"{s.get(f'passkey@{n}', float('nan')):.0f}%" for n in lengths]
    prot = r.get("retrieval")
    cols += [f"{r['prefill_s']:.2f}",
             "-" if prot is None else f"{len(prot['protected'])} ({'all kept' if prot['protected_kept'] else 'NOT all kept'})",
             "yes" if r["plain_load"]["ok"] and not r["plain_load"]["imported_compresskit"] else "NO"]
    return f"| {r['setting']} | " + " | ".join(cols) + " |"


def _write(rows: list[dict], args, final: bool = False) -> None:
    head = ("| setting | shape | params | MB (bf16) | " + " | ".join(f"ppl@{n}" for n in args.lengths) + " | "
            + " | ".join(f"passkey@{n}" for n in args.lengths)
            + f" | prefill s ({args.prefill_tokens} tok) | protected heads | plain load |\n|"
            + "---|" * (7 + 2 * len(args.lengths)))
    lines = [head] + [_line(r, args.lengths) for r in rows]
    settings = (f"CPU, {rows[0].get('threads', '?') if rows else '?'} torch thread(s); importance on "
                f"{args.nsamples} x {args.seqlen} tokens of the shipped calibration split; retrieval heads on "
                f"{args.retrieval_samples} passkey prompts of {args.retrieval_length} tokens (5% of heads protected "
                f"unless `noprotect`, scored by the answer's loss (head-mask gradients) unless `attention`, the "
                f"attention mass on the copied needle token); perplexity over {args.ppl_windows} held-out windows per length; passkey "
                f"{args.passkey_trials} trials per length; prefill = median of 3 forwards of {args.prefill_tokens} "
                "tokens, fp32, sdpa; shape = layers, query/KV heads, MLP width; no recovery training.")
    md = settings + "\n\n" + "\n".join(lines) + "\n"
    write_results(args.out, md, {"settings": vars(args), "rows": rows}, echo=final)


if __name__ == "__main__":
    main()
