"""The Python API: the one module that composes the rooms (the CLI calls only this).

    import compresskit
    model, tok = compresskit.load_model("smollm2-135m")
    before = compresskit.evaluate(model, tok, lengths=[1024])
    compresskit.quantize(model, compresskit.QuantConfig(wbits=4, group_size=64))
    after = compresskit.evaluate(model, tok, lengths=[1024])
    compresskit.save(model, tok, "smollm2-w4g64", evaluation={"before": before, "after": after})
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

from .core.arch import UnsupportedArchitectureError
from .core.config import (
    CalibratedConfig, ConfigError, GPTQConfig, OmniQuantConfig, QuantConfig, fields_for_method,
)
from .core.fsutil import OutputExistsError, check_output_dir, dir_size_bytes, write_json_atomic
from .core.manifest import QuantManifest
from .models import DEFAULT_MODEL, CorruptCheckpointError, ModelNotFoundError, load_pretrained, resolve_model
from .distill.lora import MissingDependencyError
from .models.embedded import EmbeddedModelMissing
from .prune import PruneConfig  # noqa: F401  (api.PruneConfig)

# Errors caused by the user's input: front ends report them as one line, not a traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (
    ConfigError, UnsupportedArchitectureError, OutputExistsError, CorruptCheckpointError,
    ModelNotFoundError, EmbeddedModelMissing, ValueError, FileNotFoundError, MissingDependencyError,
)

_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def load_model(
    name_or_path: str | os.PathLike = DEFAULT_MODEL,
    *,
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
    verify: bool = True,
    backend: str = "auto",
):
    """``(model, tokenizer)`` for an embedded name (``smollm2-135m``), a local directory or a hub id.

    Quantized compresskit checkpoints load too (their packed modules are rebuilt). ``verify``
    checks the files against the manifest's sha256 sums. ``backend`` picks the kernel of quantized
    layers (see `set_kernel_backend`).
    """
    model, tokenizer = load_pretrained(name_or_path, dtype=dtype, device=device, verify=verify)
    if backend != "auto":
        set_kernel_backend(model, backend)
    return model, tokenizer


def set_kernel_backend(model: nn.Module, backend: str = "auto") -> dict[str, str]:
    """Compute every quantized layer through ``backend``: ``"auto"`` (per layer, device and dtype: Triton
    on CUDA, compresskit's C kernels on CPU, chunked dequantize elsewhere), or a name from
    `kernel_backends` (``triton``, ``cpu_native``, ``cpu_int4pack``, ``dequant``, ``dense``,
    ``reference``). A forced backend is checked against every layer now; ``BackendError`` names the
    first layer it cannot serve, why, and which backends can. Returns layer name -> backend."""
    from .kernels.modules import set_kernel_backend as _set

    return _set(model, backend)


def kernel_backends() -> list[dict[str, str]]:
    """The backend table: devices, bits, group sizes and dtypes each kernel serves, where automatic
    choice uses it, and whether it can run on this machine."""
    from .kernels.backends import table

    return table()


def quantize(
    model: nn.Module,
    config: QuantConfig | dict | None = None,
    *,
    calib: Any = None,
    tokenizer: Any = None,
    work_dir: str | os.PathLike | None = None,
    progress: Callable[..., None] | None = None,
    **overrides: Any,
) -> QuantManifest:
    """Quantize ``model`` in place; returns the manifest (also kept as ``model.compresskit_manifest``).

    ``config`` is a `QuantConfig`, `GPTQConfig` or `OmniQuantConfig`, a dict of fields (``method``
    picks the class), or None (fields from ``overrides``). RTN needs no data. GPTQ and OmniQuant
    calibrate on ``calib``: a ``[nsamples, seqlen]`` LongTensor of token ids, or a source spec
    (``"builtin"``, ``"file:PATH"``, ``"generated"``, ``"hf:NAME"``; default ``config.calib``)
    tokenized with ``tokenizer``. ``work_dir`` keeps per-block checkpoints so an interrupted
    OmniQuant run resumes. ``progress(message, advance=1)`` is called per linear (RTN, GPTQ) or per
    block epoch (OmniQuant).
    """
    config = make_config(config, **overrides)
    if isinstance(config, OmniQuantConfig):
        from .quant.omniquant import quantize_omniquant

        ids = calibration_ids(model, tokenizer, config, calib)
        manifest = quantize_omniquant(model, config, ids, work_dir=None if work_dir is None else str(work_dir),
                                      progress=progress)
    elif isinstance(config, GPTQConfig):
        from .quant.gptq import quantize_gptq

        manifest = quantize_gptq(model, config, calibration_ids(model, tokenizer, config, calib), progress=progress)
    else:
        from .quant import quantize_rtn

        manifest = quantize_rtn(model, config, progress=progress)
    model.compresskit_manifest = manifest
    return manifest


def make_config(config: QuantConfig | dict | None = None, *, for_method: bool = False,
                **overrides: Any) -> QuantConfig:
    """A validated config from a config object, a dict, and/or keyword overrides. With
    ``for_method``, dict keys the chosen method does not take are dropped (CLI options)."""
    if isinstance(config, dict) and for_method:
        config = fields_for_method(config)
    if config is None:
        return QuantConfig.from_dict({"method": "rtn", **overrides})
    if isinstance(config, dict):
        return QuantConfig.from_dict({**config, **overrides})
    return QuantConfig.from_dict({**config.to_dict(), **overrides}) if overrides else config


def calibration_ids(model: nn.Module, tokenizer: Any, config: CalibratedConfig, calib: Any = None) -> torch.Tensor:
    """``[nsamples, seqlen]`` token ids for calibration, checked against the model's context."""
    if isinstance(calib, torch.Tensor):
        ids = calib.long()
    else:
        from .calib import build_samples

        if tokenizer is None:
            raise ValueError("calibration from a text source needs the tokenizer: quantize(..., tokenizer=tok)")
        ids = build_samples(tokenizer, calib or config.calib, config.nsamples, config.seqlen, seed=config.seed,
                            model=model)
    context = getattr(model.config, "max_position_embeddings", None)
    if context is not None and ids.shape[1] > context:
        raise ValueError(f"calibration seqlen {ids.shape[1]} exceeds the model's context {context}; "
                         f"use --seqlen {context} or less")
    return ids


def count_quantizable(model: nn.Module, config: QuantConfig) -> int:
    """How many linears ``config`` would quantize (raises on a bad setting, changing nothing)."""
    from .quant import plan_linears

    return len(plan_linears(model, config)[0])


def progress_units(model: nn.Module, config: QuantConfig) -> int:
    """How many progress units `quantize` reports: linears (RTN) or blocks x epochs (OmniQuant)."""
    if isinstance(config, OmniQuantConfig):
        count_quantizable(model, config)  # validate first
        from .core.arch import get_arch

        return len(get_arch(model).blocks_of(model)) * config.epochs
    return count_quantizable(model, config)


def eval_units(tokenizer: Any, tasks, lengths, *, text: str | None, ppl_windows: int | None,
               passkey_trials: int, samples: int = 5, longbench_path: str | os.PathLike | None = None,
               longbench_limit: int | None = None) -> int:
    """Progress units `evaluate` will report for these settings (to size a progress bar)."""
    from .eval import count_tokens, total_units

    return total_units(tuple(tasks), tuple(lengths), text_tokens=count_tokens(tokenizer, text) if text else 0,
                       ppl_windows=ppl_windows, passkey_trials=passkey_trials, samples=samples,
                       longbench_path=None if longbench_path is None else str(longbench_path),
                       longbench_limit=longbench_limit)


def write_report(path: str | os.PathLike, report: Any) -> None:
    """Write a report (anything with ``to_dict``, or a dict) as JSON, atomically."""
    write_json_atomic(path, report.to_dict() if hasattr(report, "to_dict") else report)


def heldout_text() -> str:
    """The shipped held-out text (never used for calibration)."""
    from .calib import heldout_text as _heldout

    return _heldout()


def evaluate(
    model: nn.Module,
    tokenizer: Any,
    *,
    tasks: tuple[str, ...] | list[str] | None = None,
    lengths: tuple[int, ...] | list[int] = (1024,),
    text: str | None = None,
    ppl_windows: int | None = 8,
    passkey_trials: int = 5,
    samples: int = 5,
    seed: int = 0,
    longbench_path: str | os.PathLike | None = None,
    longbench_limit: int | None = None,
    cache: bool | str | os.PathLike = True,
    progress: Callable[[int], None] | None = None,
    cache_dequantized: bool | None = None,
):
    """Run evaluation tasks at each length; returns an ``EvalReport`` (``.rows``, ``.table()``,
    ``.to_dict()``, ``.plot(dir)``).

    ``tasks`` defaults to ``compresskit.eval.DEFAULT_TASKS`` (ppl, passkey, two needle tasks, variable
    tracking, common words); see ``compresskit.eval.TASKS`` and ``longbench:<dataset>`` (needs
    ``longbench_path``). Perplexity (and the essay haystack of RULER tasks) uses the shipped held-out
    text by default. ``cache`` (True: ``$COMPRESSKIT_EVAL_CACHE``, else ``$COMPRESSKIT_CACHE/eval``; or a
    directory; False: off) reuses
    rows computed before for the same weights and settings, so a parent model is scored once.
    ``cache_dequantized`` (default: on CPU) dequantizes each packed weight once for the run instead
    of on every forward; scores are identical, memory is that of the dense model while it runs.
    """
    from contextlib import nullcontext

    from .eval import DEFAULT_TASKS, RowCache
    from .eval import evaluate as _evaluate
    from .kernels.modules import dequantized_cache

    tasks = tuple(tasks) if tasks is not None else DEFAULT_TASKS
    if text is None:
        text = heldout_text()
    row_cache = None
    if cache:
        from .models.embedded import cache_root

        default = os.environ.get("COMPRESSKIT_EVAL_CACHE") or cache_root() / "eval"
        directory = Path(default if cache is True else cache)
        row_cache = RowCache.for_model(directory, model, tokenizer)
    if cache_dequantized is None:
        cache_dequantized = next(model.parameters()).device.type == "cpu"
    with dequantized_cache(model) if cache_dequantized else nullcontext():
        return _evaluate(model, tokenizer, tasks=tasks, lengths=tuple(lengths), text=text,
                         ppl_windows=ppl_windows, passkey_trials=passkey_trials, samples=samples, seed=seed,
                         longbench_path=longbench_path, longbench_limit=longbench_limit, cache=row_cache,
                         progress=progress)


def compare(parent: Any, child: Any, *, max_drop: float | None = None,
            max_ppl_increase: float | None = None):
    """The child's scores against the parent's, per task and length (a ``Comparison``). With
    ``max_drop`` (points for accuracy-type tasks; percent for perplexity unless ``max_ppl_increase``)
    each row is checked and ``.passed`` says whether the gate passed."""
    from .eval import Gate
    from .eval import compare as _compare

    gate = None if max_drop is None and max_ppl_increase is None else Gate(
        max_drop=2.0 if max_drop is None else max_drop, max_ppl_increase=max_ppl_increase)
    return _compare(parent, child, gate)


def write_eval_report(directory: str | os.PathLike, child: Any, parent: Any = None, comparison: Any = None,
                      meta: dict[str, Any] | None = None) -> list[Path]:
    """``report.json``, ``report.md`` and the PNG plots (needle heatmaps, perplexity vs length) in
    ``directory``."""
    from .eval import write_report_dir

    return write_report_dir(directory, child, parent, comparison, meta)


def load_report(path: str | os.PathLike):
    """An ``EvalReport`` from a JSON written by ``write_report`` (or the ``compressed``/``model`` entry
    of a ``report.json``)."""
    from .eval import EvalReport

    data = json.loads(Path(path).read_text())
    data = data.get("compressed") or data.get("model") or data
    if "rows" not in data:
        raise ValueError(f"{path} is not an evaluation report (no 'rows'); pass a model or a report JSON")
    return EvalReport.from_dict(data)


def _manifest_of(model: nn.Module) -> QuantManifest | None:
    manifest = getattr(model, "compresskit_manifest", None)
    if manifest is not None:
        return manifest
    qcfg = getattr(model.config, "quantization_config", None)
    if qcfg is not None and hasattr(qcfg, "manifest"):
        return qcfg.manifest()
    return None


def save(
    model: nn.Module,
    tokenizer: Any,
    path: str | os.PathLike,
    *,
    overwrite: bool = False,
    evaluation: dict[str, Any] | None = None,
    files: dict[str, str | bytes | os.PathLike] | None = None,
) -> Path:
    """Write the model (quantized or not) as safetensors + config.json, atomically.

    Non-quantized float tensors are stored in the source checkpoint's dtype (bf16 for the embedded
    model); scales as fp16. ``evaluation`` (JSON-able, or reports with ``to_dict``) goes into the
    manifest. ``files`` adds files to the artifact inside the same atomic write, before its card:
    relative name -> text (``str``), ``bytes``, or a ``Path`` of a file or directory to copy (e.g.
    ``{"recipe.yaml": text, "evaluation": report_dir}``). An existing ``path`` is refused unless
    ``overwrite``.
    """
    from .api_publish import card_writer
    from .export import save_native

    source = getattr(model, "compresskit_source", {}) or {}
    storage = _DTYPES.get(str(source.get("dtype")), next(model.parameters()).dtype)
    if not storage.is_floating_point:
        storage = torch.float32
    manifest = _manifest_of(model)
    if manifest is not None and evaluation is not None:
        manifest.evaluation = {k: (v.to_dict() if hasattr(v, "to_dict") else v) for k, v in evaluation.items()}
    pruning = getattr(model, "compresskit_pruning", None)
    if pruning is not None and evaluation is not None and manifest is None:
        model.config.compresskit_pruning = {**model.config.compresskit_pruning,
                                            "evaluation": _score_summary(evaluation)}
    distillation = getattr(model, "compresskit_distillation", None)  # set by `distill`
    if distillation is not None and evaluation is not None and manifest is None:
        model.config.compresskit_distillation = {**model.config.compresskit_distillation,
                                                 "evaluation": _score_summary(evaluation)}
    sidecars = {name: data for name, data in (("pruning.json", pruning), ("distillation.json", distillation))
                if data is not None}
    card = card_writer(model, evaluation, path)

    def finalize(directory: Path) -> None:
        _add_files(directory, files or {})
        card(directory)

    return save_native(model, tokenizer, path, manifest, overwrite=overwrite, storage_dtype=storage,
                       sidecars=sidecars or None, finalize=finalize)


def _add_files(directory: Path, files: dict[str, str | bytes | os.PathLike]) -> None:
    """Write ``files`` (see `save`) into ``directory``; names must stay inside it."""
    import shutil

    for name, content in files.items():
        target = directory / name
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise ValueError(f"save(files=...): {name!r} must be a relative name inside the saved directory")
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            target.write_text(content, encoding="utf-8")
        elif isinstance(content, bytes):
            target.write_bytes(content)
        elif Path(content).is_dir():
            shutil.copytree(content, target)
        else:
            shutil.copy2(content, target)


def _score_summary(evaluation: dict[str, Any]) -> dict[str, Any]:
    """``{"before": {"ppl@1024": 34.5, ...}, ...}`` from reports (or dicts with ``rows``)."""
    out: dict[str, Any] = {}
    for key, rep in evaluation.items():
        d = rep.to_dict() if hasattr(rep, "to_dict") else rep
        rows = d.get("rows") if isinstance(d, dict) else None
        if rows and "score" not in rows[0]:  # a comparison (gate): its verdict
            out[key] = {k: d[k] for k in ("passed", "gate", "forced") if k in d}
            continue
        out[key] = {f"{r['task']}@{r['length']}": r["score"] for r in rows} if rows is not None else d
    return out


def check_output(path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Fail before any work if ``path`` exists and ``overwrite`` is False."""
    return check_output_dir(path, overwrite)


def checkpoint_bytes(name_or_path: str | os.PathLike) -> int:
    """Bytes of the weight files of a model directory (or embedded model)."""
    return dir_size_bytes(resolve_model(name_or_path))


def info(name_or_path: str | os.PathLike) -> dict[str, Any]:
    """What a checkpoint is: architecture, sizes, and the compression recipe if any."""
    path = Path(resolve_model(name_or_path))
    config = json.loads((path / "config.json").read_text())
    qcfg = config.get("quantization_config")
    manifest = QuantManifest.from_dict(qcfg) if qcfg and qcfg.get("quant_method") == "compresskit" else None
    return {
        "path": str(path),
        "model_type": config.get("model_type"),
        "layers": config.get("num_hidden_layers"),
        "hidden_size": config.get("hidden_size"),
        "dtype": config.get("dtype") or config.get("torch_dtype"),
        "weights_bytes": dir_size_bytes(path),
        "quantization": None if manifest is None else {
            "recipe": manifest.recipe.to_dict(),
            "name": manifest.recipe.name,
            "quantized_linears": len(manifest.linears),
            "embeddings": manifest.embeddings.to_dict() if manifest.embeddings else None,
            "skipped": manifest.skipped,
            "compresskit_version": manifest.compresskit_version,
            "base_model": manifest.base_model,
            "evaluation": manifest.evaluation,
            "calibration": None if not manifest.report else {
                k: v for k, v in manifest.report.items() if k != "blocks"},
            "attention_abits": manifest.attention_abits,
        },
        "foreign_quantization": qcfg if qcfg and manifest is None else None,
        "pruning": config.get("compresskit_pruning"),
        "distillation": config.get("compresskit_distillation"),
    }


# distillation is composed in its own module (api_distill); the API surface is this one
from .api_distill import (  # noqa: E402,F401
    check_distill, check_distill_dependencies, distill, distill_units, has_distill_checkpoint, is_main_process,
    make_distill_config,
)

from .api_publish import export_model, push, write_card  # noqa: E402,F401  (publishing, composed in api_publish)

# pruning is composed in its own module (api_prune); the API surface is this one
from .api_prune import (  # noqa: E402,F401
    make_prune_config, parameter_count, prune, prune_plan, prune_scores, prune_units, retrieval_probes,
)

# recipes (compresskit run) are planned in api_recipe_plan and run in api_recipe; the API surface is this one
from .api_recipe import (  # noqa: E402,F401
    GateFailedError, RecipeError, RecipeEvent, RecipePlan, RecipeResult, plan_recipe, run_recipe, shipped_recipes,
)
