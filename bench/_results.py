"""What bench scripts share: timing a call (`median_time`), writing results, ``OUT.md`` (the table)
and ``OUT.json`` (settings and rows), and what the quality benches (quality.py, quant_peers.py,
clip_skip.py, omniquant_stage.py) score alike: the docs text (`docs_text`, read once per run by `pin_docs`),
a row's scores (`score_model`), RTN's gap closed (`gap_share`) and their evaluation and run options
(`add_eval_options`).

Bench scripts are run by path (``python bench/prune.py``), so this sits beside them and is imported
as ``_results``.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path
from typing import Any, Callable


def median_time(fn: Callable[[], Any], repeats: int, sync: Callable[[], Any] = lambda: None) -> float:
    """Median seconds of ``repeats`` calls of ``fn`` after one warm-up call; ``sync`` (e.g.
    ``torch.cuda.synchronize``) runs after each call so queued GPU work is counted."""
    fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def write_results(out: str | Path, md: str, data: dict[str, Any], echo: bool = False) -> None:
    """Write ``md`` to ``out.md`` and ``data`` to ``out.json`` (creating the folder); print ``md`` if ``echo``."""
    if echo:
        print("\n" + md)
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.with_suffix(".md").write_text(md)
    path.with_suffix(".json").write_text(json.dumps(data, indent=2) + "\n")


def docs_text() -> str:
    """compresskit's docs/*.md joined in name order: text of another kind than the calibration split
    (technical prose with commands and tables), so a method is not only scored on its calibration source."""
    return "\n\n".join(p.read_text() for p in sorted((Path(__file__).parent.parent / "docs").glob("*.md")))


def saved_model_path(folder: str | Path, config: str, method: str) -> Path:
    """Where ``bench/quality.py --save-models FOLDER`` keeps a row's model, and ``quant_peers.py --saved-models``
    finds it."""
    return Path(folder) / f"{config}-{method}"


def gap_share(rtn: float, method: float, fp: float) -> float:
    """The share of RTN's log-perplexity gap to fp that ``method`` closes: (log rtn - log m) / (log rtn - log fp)."""
    return (math.log(rtn) - math.log(method)) / (math.log(rtn) - math.log(fp))


def handled(args: argparse.Namespace, run_one: Callable[[argparse.Namespace], dict],
            merge: Callable[[argparse.Namespace], None]) -> bool:
    """The start the quality benches share after parsing: ``--lengths`` as ints, then ``--one`` (run one row
    in this process, its JSON to ``--json``) or ``--merge``. True when one of those was the whole call."""
    args.lengths = [int(x) for x in str(args.lengths).split(",")]
    if args.one:
        Path(args.json).write_text(json.dumps(run_one(args)))
        return True
    if args.merge:
        merge(args)
        return True
    return False


GPTQ_ORDERS = {"gptq": {"act_group_aware": False}, "gptq_act": {"act_order": True}, "gptq_gar": {"act_group_aware": True}}
BASELINES = ("rtn", *GPTQ_ORDERS)


def quantize_baseline(model: Any, tok: Any, method: str, base: dict, calib: dict) -> None:
    """compresskit's RTN and GPTQ rows (``rtn``, and ``gptq`` / ``gptq_act`` / ``gptq_gar``: the column orders of
    `GPTQ_ORDERS`), run alike in every quality bench: quantize ``model`` in place with ``base`` (width, group,
    embeddings) and, for GPTQ, ``calib`` (nsamples, seqlen, calib, seed)."""
    import compresskit
    from compresskit.core.config import QuantConfig
    from compresskit.quant.gptq import GPTQConfig

    if method == "rtn":
        compresskit.quantize(model, QuantConfig(**base))
    elif method in GPTQ_ORDERS:
        compresskit.quantize(model, GPTQConfig(**base, **calib, **GPTQ_ORDERS[method]), tokenizer=tok)
    else:
        raise ValueError(f"{method!r} is not one of {BASELINES}")


def add_eval_options(ap: argparse.ArgumentParser, out: Path, extra_tasks: str = "") -> None:
    """The evaluation and run options the quality benches share (one spelling, one default each)."""
    ap.add_argument("--lengths", default="2048,4096")
    ap.add_argument("--extra-tasks", default=extra_tasks, help="comma-separated evaluation tasks scored at every "
                    "length besides ppl and passkey, e.g. niah_single_1,niah_multikey_1 (samples = --passkey-trials)")
    ap.add_argument("--ppl-windows", type=int, default=4)
    ap.add_argument("--passkey-trials", type=int, default=10, help="passkey trials (and needle samples) per "
                    "length; 0 scores the perplexities alone")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(out))
    ap.add_argument("--no-fp", action="store_true", help="skip the fp row (when merging with a run that has it)")
    ap.add_argument("--merge", help="comma-separated result JSONs (same settings) to combine into --out; "
                    "a later file's row replaces an earlier one's for the same config and method")
    ap.add_argument("--docs-file", help="score this text file instead of docs/*.md (read once at the start, as "
                    "those are): rows of runs made while docs/ changed stay comparable")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--json", help=argparse.SUPPRESS)
    ap.add_argument("--docs-sha256", help=argparse.SUPPRESS)


def score_model(model: Any, tok: Any, args: argparse.Namespace) -> tuple[dict[str, float], float]:
    """``(scores, seconds)``: held-out perplexity and passkey at ``args.lengths``, the docs perplexity at the first
    length (``args.docs_file``, see `pin_docs`) and ``args.extra_tasks`` (as many samples per length as passkey
    trials), the way every quality bench row is scored; seconds are those of the first evaluation.
    ``--passkey-trials 0`` scores the perplexities alone (no retrieval task)."""
    import compresskit

    retrieval = {"tasks": ("ppl", "passkey"), "passkey_trials": args.passkey_trials} if args.passkey_trials else {
        "tasks": ("ppl",)}
    report = compresskit.evaluate(model, tok, lengths=args.lengths, ppl_windows=args.ppl_windows, seed=args.seed,
                                  cache=False, **retrieval)
    scores = {f"{r.task}@{r.length}": r.score for r in report.rows}
    scores |= docs_ppl(model, tok, args)
    if getattr(args, "extra_tasks", "") and args.passkey_trials:
        extra = compresskit.evaluate(model, tok, tasks=args.extra_tasks.split(","), lengths=args.lengths,
                                     samples=args.passkey_trials, seed=args.seed, cache=False)
        scores |= {f"{r.task}@{r.length}": r.score for r in extra.rows}
    return scores, report.seconds


def docs_ppl(model: Any, tok: Any, args: argparse.Namespace) -> dict[str, float]:
    """``{"ppl_docs@N": ...}``: the perplexity of ``args.docs_file`` (see `pin_docs`) at the first length."""
    import compresskit

    docs = compresskit.evaluate(model, tok, tasks=("ppl",), lengths=args.lengths[:1], ppl_windows=args.ppl_windows,
                                seed=args.seed, cache=False, text=Path(args.docs_file).read_text())
    return {f"ppl_docs@{r.length}": r.score for r in docs.rows}


def retrieval_keys(rows: list[dict], lengths: list[int]) -> list[str]:
    """The retrieval columns of a table: passkey@length, then those of any other task a row was scored on
    (``--extra-tasks``), each at every length."""
    tasks = ["passkey"] + sorted({k.split("@")[0] for r in rows for k in r.get("scores", {})}
                                 - {"ppl", "ppl_docs", "passkey"})
    return [f"{t}@{n}" for t in tasks for n in lengths]


def merged_docs_sha(shas: set) -> str | None:
    """The docs sha256 of merged runs, "a/b" (and a warning: their docs perplexities do not compare) when they
    scored different texts; runs that recorded none (files from before the sha was kept) are left out."""
    import sys

    recorded = sorted(str(s) for s in shas if s)
    if len(recorded) > 1:
        print(f"warning: the merged runs scored different docs texts (sha256 {recorded}): their docs perplexities "
              "are not comparable", file=sys.stderr)
    return "/".join(recorded) or None


def pin_docs(args: argparse.Namespace, tmp: str | Path) -> None:
    """Read the docs text once (``--docs-file`` or docs/*.md now) into ``tmp``: every row of the run scores
    it, whatever happens to docs/ meanwhile; ``args.docs_sha256`` names it in the results."""
    import hashlib

    docs = Path(args.docs_file).read_text() if args.docs_file else docs_text()
    args.docs_file = str(Path(tmp) / "docs.txt")
    Path(args.docs_file).write_text(docs)
    args.docs_sha256 = hashlib.sha256(docs.encode()).hexdigest()[:16]
