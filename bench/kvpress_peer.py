"""NVIDIA kvpress as a peer: its presses on compresskit's own passkey / needle samples, scored as compresskit scores.

kvpress pins transformers<5.3, so it runs in its own venv and this script has two halves:

    bash bench/setup_peer_venvs.sh kvpress                                  # once: /work/peers/kvpress-venv
    .venv/bin/python bench/kvpress_peer.py export                           # main venv: samples -> JSON
    /work/peers/kvpress-venv/bin/python bench/kvpress_peer.py run           # kvpress venv: grid -> results
    (both take --lengths 2048,4096 --trials 5; run also --ratios 0.5,0.75 --check 1 --out ...)

`export` builds the samples with compresskit's generators and the seeds `compresskit.evaluate` uses (seed 0:
passkey keys from random.Random(0), needle samples from ruler_sample with one shared random.Random(0), depths
evenly spaced over [0, 1]) and splits each prompt into context / question / answer prefix. `run` loads the same
checkpoint with plain transformers (fp32, sdpa), sets tokenizer.chat_template = None, and answers every sample
with kvpress's `kv-press-text-generation` pipeline code for the full cache and each press and ratio, with the
question after the compressed context (kvpress's default) or inside it (the answer prefix always follows).
The prefill is the same under every press (a press only rewrites the cache in a hook after each attention
layer), so `run` prefills once per sample and placement, captures each layer's hook arguments, and calls each
press's own `forward_hook` on a copy of the full cache inside `with press(model)`, then decodes with the
pipeline's `generate_answer`. `--check N` runs the real `pipeline(...)` call for the first N samples of each
task at the first length and records whether its answers are identical.
"""
from __future__ import annotations

import argparse
import copy
import re
import time
from pathlib import Path

from _results import write_results  # bench/_results.py (scripts run by path)


PRESSES = ("SnapKVPress", "StreamingLLMPress", "KnormPress", "TOVAPress", "ExpectedAttentionPress")
TASKS = ("passkey", "niah_single_1")
PLACEMENTS = ("after", "inside")
DEFAULT_SAMPLES = "/work/peers/kvpress_peer_samples.json"


def split_prompt(text: str) -> tuple[str, str, str]:
    """(context up to the question's line, question, answer prefix) of a passkey / NIAH prompt."""
    q = text.rindex("\nWhat ") + 1
    a = text.index("? ", q) + 1
    return text[:q], text[q:a], text[a + 1:]


def export(args: argparse.Namespace) -> None:
    """Main venv: compresskit's samples, as evaluate(..., passkey_trials=T, samples=T, seed=0) builds them."""
    import json
    import random

    import torch

    torch.set_num_threads(1)
    import compresskit
    from compresskit.api import heldout_text
    from compresskit.eval.passkey import KEY_MAX, KEY_MIN, default_depths, passkey_prompt
    from compresskit.eval.ruler import ruler_sample

    model, tok = compresskit.load_model(args.model)
    samples = []

    def add(task, length, i, depth, ids, answers):
        text = tok.decode(ids)
        assert list(tok(text, add_special_tokens=True)["input_ids"]) == list(ids), "decode/encode round trip"
        ctx, question, prefix = split_prompt(text)
        assert f"{ctx}{question} {prefix}" == text
        samples.append(dict(task=task, length=length, index=i, depth=depth, answers=answers, prompt_ids=list(ids),
                            context=ctx, question=question, answer_prefix=prefix))

    for length in [int(n) for n in args.lengths.split(",")]:
        depths, rng = default_depths(args.trials), random.Random(args.seed)
        for i, depth in enumerate(depths):  # compresskit.eval.passkey.passkey
            key = rng.randint(KEY_MIN, KEY_MAX)
            add("passkey", length, i, depth, passkey_prompt(tok, length, depth, key), [str(key)])
        rng = random.Random(args.seed)
        for i, depth in enumerate(depths):  # compresskit.eval.ruler.ruler
            s = ruler_sample("niah_single_1", tok, length, rng, haystack_text=heldout_text(), depth=depth)
            add("niah_single_1", length, i, depth, s.prompt_ids, s.references)
    data = {"model_dir": str(compresskit.api.record(model).source.path), "seed": args.seed, "samples": samples}
    Path(args.samples).parent.mkdir(parents=True, exist_ok=True)
    Path(args.samples).write_text(json.dumps(data, indent=1))
    print(f"{len(samples)} samples -> {args.samples}")


def score(task: str, prediction: str, answers: list[str]) -> float:
    """compresskit's scoring, copied: passkey.score_prediction and ruler.score_sample."""
    if task == "passkey":
        m = re.search(r"\d+", prediction)
        return float(m is not None and m.group(0) == answers[0])
    return sum(r.lower() in prediction.lower() for r in answers) / len(answers)


def run(args: argparse.Namespace) -> None:
    """kvpress venv: every sample x placement x (full, press x ratio)."""
    import json

    import torch

    torch.set_num_threads(1)
    import kvpress
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

    data = json.loads(Path(args.samples).read_text())
    lengths = [int(n) for n in args.lengths.split(",")]
    samples = [s for s in data["samples"] if s["length"] in lengths and s["index"] < args.trials]
    model = AutoModelForCausalLM.from_pretrained(data["model_dir"], dtype=torch.float32,
                                                 attn_implementation="sdpa").eval()
    tok = AutoTokenizer.from_pretrained(data["model_dir"])
    tok.chat_template = None  # with the template even the full cache fails (shared/reference.md)
    pipe = pipeline("kv-press-text-generation", model=model, tokenizer=tok)
    missing = [n for n in PRESSES if not hasattr(kvpress, n)]
    configs = [("full", 0.0)] + [(n, float(r)) for n in PRESSES if n not in missing for r in args.ratios.split(",")]

    def make_press(name, ratio):
        return None if name == "full" else getattr(kvpress, name)(compression_ratio=ratio)

    def texts(s, placement):  # (context, question, answer_prefix) for pipeline.preprocess
        if placement == "after":
            return s["context"], s["question"], s["answer_prefix"]
        return s["context"] + s["question"], "", s["answer_prefix"]

    rows, checks, t_start, cpu_start = [], [], time.perf_counter(), time.process_time()
    for si, s in enumerate(samples):
        for placement in PLACEMENTS:
            t0 = time.perf_counter()
            ctx, question, prefix = texts(s, placement)
            inputs = pipe.preprocess(ctx, questions=[question], answer_prefix=prefix, max_context_length=10**9)
            ctx_ids, q_ids = inputs["context_ids"], inputs["questions_ids"][0]
            captured, full = [], transformers.DynamicCache()
            hooks = [layer.self_attn.register_forward_hook(
                lambda mod, a, kw, out: captured.append((mod, dict(kw), out[1])), with_kwargs=True)
                for layer in model.model.layers]
            with torch.no_grad():
                model.model(input_ids=ctx_ids, past_key_values=full)  # the pipeline's prefill
            for h in hooks:
                h.remove()
            for name, ratio in configs:
                press, cache = make_press(name, ratio), copy.deepcopy(full)
                with torch.no_grad():
                    if press is not None:
                        with press(model):  # what the hooks press(model) registers do during the prefill
                            for mod, kw, attn in captured:
                                press.forward_hook(mod, [], {**kw, "past_key_values": cache}, (None, attn))
                    kept = cache.get_seq_length()
                    answer = pipe.generate_answer(q_ids, cache, ctx_ids.shape[1], args.max_new_tokens)
                rows.append(dict(task=s["task"], length=s["length"], index=s["index"], placement=placement,
                                 press=name, ratio=ratio, context_tokens=ctx_ids.shape[1], kept_tokens=kept,
                                 question_tokens=q_ids.shape[1], prediction=answer,
                                 score=score(s["task"], answer, s["answers"])))
                if s["index"] < args.check and s["length"] == lengths[0]:  # the real pipeline call
                    real = pipe(ctx, question=question, answer_prefix=prefix, press=make_press(name, ratio),
                                max_new_tokens=args.max_new_tokens)["answer"]
                    checks.append(dict(task=s["task"], index=s["index"], placement=placement, press=name,
                                       ratio=ratio, same=real == answer, pipeline=real, shared_prefill=answer))
            del captured, full
            print(f"[{si + 1}/{len(samples)}] {s['task']}@{s['length']} #{s['index']} {placement}: "
                  f"{sum(r['score'] for r in rows[-len(configs):]):.1f}/{len(configs)} configs right, "
                  f"{time.perf_counter() - t0:.0f} s (total {time.perf_counter() - t_start:.0f} s)", flush=True)
    seconds, cpu_seconds = time.perf_counter() - t_start, time.process_time() - cpu_start

    cols = [(t, n) for n in lengths for t in TASKS]
    table = []
    for name, ratio in configs:
        for placement in PLACEMENTS:
            cells = []
            for t, n in cols:
                sel = [r["score"] for r in rows if (r["press"], r["ratio"], r["placement"], r["task"], r["length"])
                       == (name, ratio, placement, t, n)]
                cells.append(f"{100 * sum(sel) / len(sel):.0f}%" if sel else "-")
            table.append([name, "-" if name == "full" else f"{ratio:g}", placement, *cells])
    head = ["press", "ratio", "placement", *(f"{'niah' if t != 'passkey' else t}@{n}" for t, n in cols)]
    md = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(r) + " |" for r in table]
    versions = {p: __import__("importlib.metadata").metadata.version(p) for p in ("kvpress", "transformers", "torch")}
    same = sum(c["same"] for c in checks)
    note = (
        f"\n\nkvpress {versions['kvpress']} (transformers {versions['transformers']}, torch {versions['torch']}) in "
        f"its own venv; SmolLM2-135M-Instruct (compresskit's embedded checkpoint), fp32, sdpa, CPU, 1 thread. "
        f"{args.trials} samples per task and length, built by compresskit's generators with evaluate()'s seeds; "
        f"greedy, {args.max_new_tokens} new tokens; scored as compresskit scores (passkey: first run of digits equals "
        f"the key; niah: RULER string_match_all). tokenizer.chat_template = None, so the pipeline prepends the BOS "
        f"string {tok.bos_token!r} to the context (compresskit's prompts have no BOS) and joins question and answer "
        f"prefix with a newline (compresskit: a space). after: the question follows the compressed context "
        f"(kvpress's default); inside: the question is the end of the compressed context, only the answer prefix "
        f"follows. Presses at their kvpress defaults; ratio = compression_ratio (the share of context tokens "
        f"dropped).{' Not in this kvpress: ' + ', '.join(missing) + '.' if missing else ''} One prefill per sample "
        f"and placement, each press's forward_hook applied to it (module docstring); the real pipeline call agreed "
        f"on {same}/{len(checks)} checked answers. Wall time {seconds / 60:.0f} min, CPU time "
        f"{cpu_seconds / 60:.0f} min.\n")
    write_results(args.out, "\n".join(md) + note,
                  {"args": vars(args), "versions": versions, "configs": configs, "seconds": seconds,
                   "cpu_seconds": cpu_seconds, "checks": checks, "rows": rows}, echo=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mode", choices=("export", "run"))
    ap.add_argument("--model", default="smollm2-135m", help="export: compresskit model name")
    ap.add_argument("--samples", default=DEFAULT_SAMPLES, help="the JSON export writes and run reads")
    ap.add_argument("--lengths", default="2048,4096")
    ap.add_argument("--trials", type=int, default=5, help="passkey trials and needle samples per length")
    ap.add_argument("--seed", type=int, default=0, help="export: evaluate()'s seed")
    ap.add_argument("--ratios", default="0.5,0.75")
    ap.add_argument("--max-new-tokens", type=int, default=12)
    ap.add_argument("--check", type=int, default=1, help="samples per task checked against the real pipeline call")
    ap.add_argument("--out", default="bench/results/kvpress_peer")
    args = ap.parse_args()
    export(args) if args.mode == "export" else run(args)


if __name__ == "__main__":
    main()
