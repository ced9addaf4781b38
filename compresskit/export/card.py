"""The model card (README.md) every saved artifact carries: what it is, where it came from, how it was
compressed, how big it is, how it scored, and how to load it.

Built with huggingface_hub's ``ModelCard`` / ``ModelCardData`` / ``EvalResult`` from a content string
this module writes (no template download, no network): the evaluation becomes ``model-index`` results
the hub shows, the plots in ``evaluation/`` are linked, and the parent (base model, licence, size) is
kept in the card's metadata so an artifact made from this one carries it on.
"""
from __future__ import annotations

import json
import math
import os
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..core.record import KV_KEY, ModelRecord
from ..core.version import __version__

CARD_VERSION = 1
TASK_TYPE = "text-generation"


@dataclass
class CardParent:
    """What an artifact was made from: ``source`` as the user named it, the hub id of the base model,
    its licence and its weight bytes, when known."""

    source: str | None = None
    base_model: str | None = None
    license: str | None = None
    bytes: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "CardParent":
        d = d or {}
        return cls(**{k: d.get(k) for k in ("source", "base_model", "license", "bytes")})


def read_card_metadata(directory: str | os.PathLike) -> dict[str, Any]:
    """The YAML metadata of ``directory/README.md`` ({} when there is none or it does not parse)."""
    path = Path(directory) / "README.md"
    if not path.is_file():
        return {}
    from huggingface_hub import ModelCard

    try:
        return ModelCard(path.read_text(encoding="utf-8"), ignore_metadata_errors=True).data.to_dict()
    except Exception:  # a hand-written README without valid metadata: nothing to carry
        return {}


def parent_from_card(directory: str | os.PathLike) -> CardParent:
    """The parent recorded in an artifact's card (for a card written again, or an export of it)."""
    meta = read_card_metadata(directory)
    parent = CardParent.from_dict((meta.get("compresskit") or {}).get("parent"))
    base = meta.get("base_model")
    parent.base_model = parent.base_model or (base[0] if isinstance(base, list) and base else base)
    parent.license = parent.license or meta.get("license")
    return parent


# --- the evaluation -------------------------------------------------------------------------------

def _metric(task: str) -> str:
    return "ppl" if task == "ppl" else "score" if task.startswith("longbench") else "acc"


def _rows(report: Any) -> list[dict[str, Any]] | None:
    """Rows ``{task, length, score, metric}`` of a report dict (``{"rows": [...]}``) or a score summary
    (``{"ppl@1024": 34.5}``); None for anything else."""
    if hasattr(report, "to_dict"):
        report = report.to_dict()
    if not isinstance(report, dict):
        return None
    if isinstance(report.get("rows"), list):
        return [{"task": r["task"], "length": int(r["length"]), "score": float(r["score"]),
                 "metric": r.get("metric") or _metric(r["task"])} for r in report["rows"]]
    rows = []
    for key, score in report.items():
        task, sep, length = str(key).rpartition("@")
        if not sep or not length.isdigit() or not isinstance(score, (int, float)):
            return None
        rows.append({"task": task, "length": int(length), "score": float(score), "metric": _metric(task)})
    return rows or None


def evaluation_table(evaluation: dict[str, Any] | None) -> dict[str, Any] | None:
    """``{"rows": [...], "gate": str | None}`` from an evaluation dict (``before``/``after``/``gate`` as the
    CLI saves it, or ``parent``/``compressed``/``comparison`` as report.json holds it); None if it has no
    scores of the compressed model."""
    if not isinstance(evaluation, dict):
        return None
    child = _rows(next((evaluation[k] for k in ("after", "compressed", "model") if evaluation.get(k)), None))
    if not child:
        return None
    parent = {(r["task"], r["length"]): r["score"] for r in
              _rows(next((evaluation[k] for k in ("before", "parent") if evaluation.get(k)), None)) or []}
    comparison = next((evaluation[k] for k in ("gate", "comparison") if evaluation.get(k)), None)
    comparison = comparison.to_dict() if hasattr(comparison, "to_dict") else comparison
    limits = {}
    if isinstance(comparison, dict):
        limits = {(r["task"], int(r["length"])): (r.get("limit"), r.get("passed"))
                  for r in comparison.get("rows") or []}
    rows = []
    for r in child:
        key = (r["task"], r["length"])
        p = parent.get(key)
        change = None
        if p is not None and math.isfinite(r["score"]) and math.isfinite(p):
            change = 100.0 * (r["score"] / p - 1.0) if r["metric"] == "ppl" and p else r["score"] - p
        limit, passed = limits.get(key, (None, None))
        rows.append({**r, "parent": p, "change": change, "limit": limit, "passed": passed})
    gate = None
    if isinstance(comparison, dict) and comparison.get("gate"):
        g = comparison["gate"]
        ppl_limit = g.get("max_ppl_increase") if g.get("max_ppl_increase") is not None else g.get("max_drop")
        gate = (f"{'passed' if comparison.get('passed') else 'FAILED'} (max drop {g.get('max_drop')} points, "
                f"perplexity +{ppl_limit}%)" + (", saved with --force" if comparison.get("forced") else ""))
    return {"rows": rows, "gate": gate}


def _fmt(score: float | None, metric: str) -> str:
    if score is None:
        return "-"
    if not math.isfinite(score):
        return str(score)
    return f"{score:.3f}" if metric == "ppl" else f"{score:.1f}%" if metric == "acc" else f"{score:.2f}"


def eval_markdown(table: dict[str, Any]) -> str:
    lines = ["| task | length | parent | compressed | change | gate limit | ok |", "|---|---|---|---|---|---|---|"]
    for r in table["rows"]:
        ppl = r["metric"] == "ppl"
        change = "-" if r["change"] is None else (f"{r['change']:+.1f}%" if ppl else f"{r['change']:+.1f} pts")
        limit = "-" if r["limit"] is None else (f"+{r['limit']:g}%" if ppl else f"-{r['limit']:g} pts")
        ok = "-" if r["passed"] is None else ("yes" if r["passed"] else "NO")
        lines.append(f"| {r['task']} | {r['length']} | {_fmt(r['parent'], r['metric'])} | "
                     f"{_fmt(r['score'], r['metric'])} | {change} | {limit} | {ok} |")
    out = "\n".join(lines) + "\n"
    if table["gate"]:
        out += f"\nGate: {table['gate']}.\n"
    return out


def eval_results(table: dict[str, Any]) -> list:
    """``EvalResult`` per score of the compressed model (the card's ``model-index``)."""
    from huggingface_hub import EvalResult

    out = []
    for r in table["rows"]:
        if not math.isfinite(r["score"]):
            continue
        metric = {"ppl": "perplexity", "acc": "accuracy"}.get(r["metric"], "score")
        out.append(EvalResult(
            task_type=TASK_TYPE, task_name="long-context evaluation (compresskit)",
            dataset_type=f"compresskit/{r['task']}", dataset_name=f"{r['task']} @ {r['length']} tokens",
            dataset_config=str(r["length"]), metric_type=metric, metric_name=f"{r['task']}@{r['length']}",
            metric_value=round(r["score"], 4)))
    return out


# --- the card -------------------------------------------------------------------------------------

def _describe(config: dict[str, Any]) -> tuple[str, str, dict[str, Any] | None]:
    """``(kind, format description, recipe dict)`` of an artifact from its config.json."""
    q = config.get("quantization_config") or {}
    export = config.get("compresskit_export") or {}
    method = q.get("quant_method")
    if method == "compresskit":
        return "compresskit", "compresskit native (GPTQ layout with exact zero points; needs `import compresskit`)", \
            q.get("recipe")
    if method == "gptq":
        v = "v1 (`checkpoint_format: gptq`, zero - 1)" if q.get("checkpoint_format") == "gptq" else \
            "v2 (`checkpoint_format: gptq_v2`, exact zero points)"
        return "gptq", f"GPTQ {v}, {q.get('bits')}-bit, group size {q.get('group_size')}", export.get("recipe")
    if method == "compressed-tensors":
        return "compressed-tensors", f"compressed-tensors `{q.get('format')}`", export.get("recipe")
    if method:
        return str(method), f"{method} quantization", None
    return ("pruned" if config.get("compresskit_pruning") else "float"), "plain float safetensors", None


def _recipe_line(recipe: dict[str, Any] | None, pruning: dict[str, Any] | None,
                 distill: dict[str, Any] | None = None, kv: dict[str, Any] | None = None) -> str:
    parts = []
    if pruning:
        plan, r = pruning.get("plan") or {}, pruning.get("recipe") or {}
        parts.append(f"structurally pruned (MLP {r.get('mlp', 0):g}, heads {r.get('heads', 0):g}, "
                     f"layers -{r.get('layers', 0)}; kept {plan.get('keep_layers', '?')} layers, "
                     f"{plan.get('keep_heads', '?')} heads / {plan.get('keep_groups', '?')} KV groups, MLP "
                     f"{plan.get('keep_intermediate', '?')})")
    if recipe:
        g = "per-channel" if recipe.get("group_size") == -1 else f"groups of {recipe.get('group_size')}"
        a = "" if recipe.get("abits", 16) >= 16 else f", activations at {recipe['abits']} bits (simulated)"
        emb = "int8 embeddings" if recipe.get("embed_bits") == 8 else "float embeddings"
        parts.append(f"quantized with {str(recipe.get('method', '?')).upper()}: {recipe.get('wbits')}-bit weights "
                     f"in {g} ({'symmetric' if recipe.get('sym') else 'asymmetric'}){a}, {emb}")
    if distill:
        parts.append(f"distilled from `{distill.get('teacher')}` ({distill.get('steps')} steps, "
                     f"{distill.get('tokens')} tokens)")
    if kv:
        parts.append(f"generating with the KV-cache policy `{kv.get('name')}` (`compresskit.load_model` applies it; "
                     "loaders without compresskit use a full cache)")
    return "; ".join(parts) or "saved by compresskit without compression"


def _kv_lines(kv: dict[str, Any] | None, weights: int) -> list[str]:
    """The KV-cache section: the policy and the cache bytes it holds at long context (measured on the cache
    layout when the policy was set), beside the full cache's, and the total with the weights."""
    memory = (kv or {}).get("memory")
    if not memory:
        return []
    lines = ["## KV cache at long context", "",
             f"Generation compresses the KV cache with `{kv.get('name')}` when the model is loaded with "
             "`compresskit.load_model`; other loaders (plain `from_pretrained`, engines) keep the full cache, the "
             f"middle column. Bytes held after a prompt of that many tokens, {memory.get('dtype')} keys and "
             "values, measured on the cache layout.", "",
             "| context | full KV cache | with the policy | weights + KV (policy) |", "|---|---|---|---|"]
    for row in memory.get("rows", []):
        held = row.get("policy") or 0
        lines.append(f"| {row['tokens']:,} | {_mb(row['full'])} | {_mb(held)} ({held / row['full']:.2f}x) | "
                     f"{_mb(weights + held)} |")
    return lines + [""]


_FROM_PRETRAINED = ("from transformers import AutoModelForCausalLM\n\n"
                    "model = AutoModelForCausalLM.from_pretrained(\"{id}\")")
_LOAD = {  # kind -> (shell lines, python lines)
    "compresskit": ("# needs compresskit installed (its README: pip install -e .)\n"
                    "compresskit export {id} --format gptq --output {id}-gptq   # for engines without compresskit",
                    "import compresskit  # registers the compresskit quantization method\n" + _FROM_PRETRAINED),
    "gptq": ("pip install optimum gptqmodel  # GPTQModel runs on CPU too (docs/formats.md: CPU install)",
             _FROM_PRETRAINED + "\n# or serve it: vllm serve {id}"),
    "compressed-tensors": ("pip install compressed-tensors", _FROM_PRETRAINED + "\n# or serve it: vllm serve {id}\n"
                           "# asymmetric weights on transformers 5.x: from_pretrained(..., quantization_config="
                           "CompressedTensorsConfig(dequantize=True))"),
}


def _weights(directory: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in sorted(directory.glob("*.safetensors"))}


def _mb(n: int | None) -> str:
    return "-" if n is None else f"{n / 1e6:.1f} MB"


def _evaluation(directory: Path, config: dict[str, Any], evaluation: dict[str, Any] | None) -> dict[str, Any] | None:
    report = directory / "evaluation" / "report.json"
    export = config.get("compresskit_export") or {}
    candidates = [evaluation]
    if report.is_file():
        try:
            candidates.append(json.loads(report.read_text()))
        except json.JSONDecodeError:
            pass
    saved = ModelRecord.from_saved(config, directory).evaluation  # the record's one reader (its evaluation file)
    candidates += [None if saved is None else saved.table_source(), export.get("evaluation")]
    return next((t for c in candidates if (t := evaluation_table(c)) is not None), None)


def build_card(directory: str | os.PathLike, *, name: str | None = None, parent: CardParent | None = None,
               evaluation: dict[str, Any] | None = None):
    """The ``ModelCard`` of the artifact in ``directory`` (read from its files; nothing is fetched)."""
    from huggingface_hub import ModelCard, ModelCardData

    directory = Path(directory)
    config = json.loads((directory / "config.json").read_text())
    name = name or directory.name
    parent = parent or parent_from_card(directory)
    kind, fmt, recipe = _describe(config)
    pruning = config.get("compresskit_pruning")
    distill = config.get("compresskit_distillation")
    export = config.get("compresskit_export")
    table = _evaluation(directory, config, evaluation)
    weights = _weights(directory)
    total = sum(weights.values())
    quantized = kind not in ("pruned", "float")
    tags = ["compresskit"] + (["quantized", kind] if quantized else []) + (["pruned"] if pruning else []) + \
        (["distilled"] if distill else [])
    if recipe and quantized:
        tags.append(f"{recipe.get('wbits')}-bit")
    data = ModelCardData(
        base_model=parent.base_model, base_model_relation="quantized" if quantized and parent.base_model else None,
        license=parent.license, library_name="transformers", pipeline_tag=TASK_TYPE, tags=tags,
        model_name=name if table else None, eval_results=eval_results(table) if table else None,
        compresskit={"card_version": CARD_VERSION, "kind": kind, "parent": parent.to_dict()})
    src = parent.source or parent.base_model
    licence = (f"{parent.license} (carried from the parent)" if parent.license
               else "not recorded by the parent: check its terms before publishing")
    lines = [f"# {name}", "", f"{f'`{src}`' if src else 'A model'} {_recipe_line(recipe, pruning, distill, config.get(KV_KEY))}, with compresskit "
             f"{__version__}.", "",
             "## Model", "", "| | |", "|---|---|"]
    if parent.base_model:
        lines.append(f"| base model | [{parent.base_model}](https://huggingface.co/{parent.base_model}) |")
    if parent.source and parent.source != parent.base_model:
        lines.append(f"| compressed from | `{parent.source}` |")
    lines += [f"| architecture | {config.get('model_type')}, {config.get('num_hidden_layers')} layers, hidden "
              f"{config.get('hidden_size')}, {config.get('num_attention_heads')} heads / "
              f"{config.get('num_key_value_heads')} KV heads |",
              f"| licence | {licence} |",
              f"| format | {fmt} |", f"| stored dtype | {config.get('dtype') or config.get('torch_dtype')} |", ""]
    lines += ["## Compression recipe", ""]
    if recipe:
        lines += ["Quantization:", "", "```json", json.dumps(recipe, indent=2, sort_keys=True), "```", ""]
    if pruning:
        summary = {k: pruning.get(k) for k in ("recipe", "plan", "params_before", "params_after", "kept_layers")}
        lines += ["Pruning (full record in `pruning.json`):", "", "```json",
                  json.dumps(summary, indent=2, sort_keys=True), "```", ""]
    if distill:
        summary = {k: v for k, v in distill.items() if k not in ("evaluation", "history")}
        lines += ["Distillation (full record in `distillation.json`):", "", "```json",
                  json.dumps(summary, indent=2, sort_keys=True, default=str), "```", ""]
    if export:
        origin = Path(str(export.get("source"))).name
        lines += [f"Exported by compresskit from `{origin}` as {export.get('format')}.", ""]
        lines += [f"- {n}" for n in export.get("notes") or []] + [""]
    run = directory / "recipe.yaml"  # written by `compresskit run`
    if run.is_file():
        lines += ["Recipe (`recipe.yaml`; `compresskit run recipe.yaml` runs it again):", "", "```yaml",
                  run.read_text(encoding="utf-8").strip(), "```", ""]
    if not recipe and not pruning and not distill and not run.is_file():
        lines += ["None: the weights are those of the parent.", ""]
    lines += ["## Size", "", "| | size |", "|---|---|", f"| parent weights | {_mb(parent.bytes)} |",
              f"| these weights | {_mb(total)}" + (f" ({total / parent.bytes:.2f}x the parent)" if parent.bytes else "")
              + " |"]
    lines += [f"| `{f}` | {n:,} bytes |" for f, n in weights.items()] + [""]
    lines += _kv_lines(config.get(KV_KEY), total)
    lines += ["## Evaluation", ""]
    if table:
        lines += [eval_markdown(table)]
        plots = sorted((directory / "evaluation").glob("*.png"))
        lines += [f"![{p.stem}](evaluation/{p.name})" for p in plots]
        if (directory / "evaluation" / "report.md").is_file():
            lines += ["", "Full report: [evaluation/report.md](evaluation/report.md)."]
        lines.append("")
    else:
        lines += ["Not evaluated when it was saved (`compresskit eval` scores it at long context).", ""]
    install, code = _LOAD.get(kind, ("pip install transformers", _FROM_PRETRAINED))
    lines += ["## How to load", "", "```bash", install.format(id=name), "```", "", "```python", code.format(id=name),
              "```", ""]
    content = f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines)
    return ModelCard(content)


def write_card(directory: str | os.PathLike, *, name: str | None = None, parent: CardParent | None = None,
               evaluation: dict[str, Any] | None = None) -> Path:
    """Write (or rewrite) ``directory/README.md`` atomically; returns its path."""
    card = build_card(directory, name=name, parent=parent, evaluation=evaluation)
    path = Path(directory) / "README.md"
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(str(card), encoding="utf-8")
    os.replace(tmp, path)
    return path
