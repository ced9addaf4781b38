"""OmniQuant's block loop: two activation streams carried through the model.

- capture the inputs of block 0 for the calibration samples;
- for each block: the fp block on the fp stream gives the target; LWC/LET are trained so the
  quantized block on the quantized stream matches it; fold, pack, install; push both streams on.
Streams live on the CPU in float32 and are moved to the block's device one micro-batch at a time,
so memory is one block plus ``batch_size`` samples of activations (plus the streams in host RAM).
"""
from __future__ import annotations

import time
from typing import Any, Callable

import torch
import torch.nn as nn

from ...core.arch import get_arch, get_module
from .config import OmniQuantConfig
from ...core.manifest import QuantManifest
from ...core.progress import Progress
from ..apply import build_manifest, enable_activation_quantization, plan_embeddings, plan_linears, quantize_embeddings
from ..blockwise import block_entries, capture_block_inputs, run_block
from .block import BlockQuantizer, BlockReport
from .let import Geometry
from .state import StateStore, tensor_fingerprint



def quantize_omniquant(model: nn.Module, cfg: OmniQuantConfig, calib_ids: torch.Tensor, *,
                       work_dir: str | None = None, progress: Progress | None = None) -> QuantManifest:
    """Quantize ``model`` in place with OmniQuant on ``calib_ids`` ``[nsamples, seqlen]`` (a ``preset="auto"``
    config is resolved for the model's device first). The end-to-end stage (``finetune_steps``) is the API's."""
    cfg = cfg.resolved(next(model.parameters()).device.type, getattr(model.config, "max_position_embeddings", None))
    plans, skipped = plan_linears(model, cfg)  # validates every layer before anything changes
    arch, geo = get_arch(model), Geometry.from_config(model.config)
    quantize_emb = plan_embeddings(model, cfg, arch)
    enable_activation_quantization(model, cfg)
    blocks = arch.blocks_of(model)
    entries = block_entries(plans, arch, len(blocks))
    store = None
    if work_dir is not None:
        store = StateStore(work_dir, {"recipe": cfg.to_dict(), "model": getattr(model.config, "_name_or_path", ""),
                                      "layers": len(blocks), "calib": tensor_fingerprint(calib_ids)})
    torch.manual_seed(cfg.seed)
    fp_stream, kwargs = capture_block_inputs(model, calib_ids, cfg.batch_size)
    q_stream = fp_stream.clone()
    reports: list[dict[str, Any]] = []
    t_start = time.perf_counter()
    for i, block in enumerate(blocks):
        stats_of = {"qkv": get_module(block, arch.q_proj), "o": get_module(block, arch.o_proj),
                    "fc1": get_module(block, arch.gate_proj)} if cfg.let else None
        # the fp block's output on the fp stream is this block's target and the next block's fp input:
        # the old fp stream is dropped here, so two streams (fp, quantized) live at any time
        bq = BlockQuantizer(block, arch, geo, cfg, entries[i])
        grams_of = ({n: get_module(block, n) for n in bq.searched}
                    if cfg.lwc and cfg.clip_init == "search" and not cfg.let else None)
        fp_stream, stats = run_block(block, fp_stream, kwargs, cfg.batch_size, stats_of, grams_of)
        saved = store.load(i) if store else None
        if saved is not None:
            state, report = saved
            report = {**report, "resumed": True}
            if progress:
                progress(cfg.epochs, f"block {i + 1}/{len(blocks)}: resumed")
        else:
            torch.manual_seed(cfg.seed + i)
            state = bq.init_state(stats)

            def log(epoch: int, loss: float, i=i) -> None:
                if progress:
                    progress(1, f"block {i + 1}/{len(blocks)} epoch {epoch} loss {loss:.3g}")

            state, rep = bq.train(state, q_stream, fp_stream, kwargs, log) if cfg.epochs else (state, BlockReport())
            if progress and rep.epochs < cfg.epochs:
                why = "stopped early" if rep.stopped_early else "fell back to RTN"
                progress(cfg.epochs - rep.epochs, f"block {i + 1}/{len(blocks)}: {why}")
            report = rep.to_dict()
            if store:
                store.save(i, state, report)
        bq.install(state)
        q_stream, _ = run_block(block, q_stream, kwargs, cfg.batch_size)
        reports.append(report)
    embeddings = quantize_embeddings(model, arch) if quantize_emb else None
    fallbacks = [i for i, r in enumerate(reports) if r.get("fallback")]
    return build_manifest(model, cfg, plans, skipped, embeddings, report={
        "method": "omniquant",
        "calibration_tokens": int(calib_ids.numel()),
        "seconds": time.perf_counter() - t_start,
        "fallback_blocks": fallbacks,
        "activation_quantization": "simulated (fake-quantized per token)" if cfg.abits < 16 else None,
        "blocks": reports,
    })
