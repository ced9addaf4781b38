"""Weight quantizers of other projects against compresskit's own, on the embedded model, one table, same
calibration windows, same evaluation.

    bash bench/setup_peer_venvs.sh gptqmodel     # the peers' venv (/work/peers/gptqmodel-venv)
    nice -n 19 python bench/quant_peers.py       # W4 g64 and W3 g64, every method below, one thread

Rows (W4 g64 and W3 g64, asymmetric where the method allows, embeddings kept float):
  fp, rtn, gptq, gptq_act, gptq_gar compresskit itself, run with this interpreter (``--main-python``);
                                    gptq: natural column order; gptq_gar: act_group_aware (group-aware
                                    reordering, GPTQModel's and compresskit's default)
  omniquant_default                 compresskit's OmniQuant `cpu` preset, loaded from the checkpoint that
                                    ``bench/quality.py --save-models DIR`` saved (``--saved-models DIR``)
  gptqmodel                         GPTQModel's GPTQ, desc_act=False (its default: group-aware reordering on)
  gptqmodel_plain                   the same with act_group_aware=False: the plain GPTQ column order
  gptqmodel_act                     desc_act=True (act-order, dynamic groups through g_idx)
  hqq                               HQQ (half-quadratic zero/scale optimization, no calibration), axis 1
  nf4                               bitsandbytes NF4, blocksize 64 (W4 only; symmetric absmax by design)
The peer rows run with ``--python`` (default ``$QUANT_PEERS_PYTHON`` or /work/peers/gptqmodel-venv/bin/python).
Every peer quantizes the same model weights as compresskit; GPTQModel calibrates on compresskit's own
windows (``build_samples(tok, "builtin", nsamples, seqlen, seed)``, passed as its dataset). Each peer's
packed layers are dequantized with the peer's own function (GPTQModel ``dequantize_weight()`` of its packed
qweight/qzeros/scales/g_idx, HQQ ``HQQLinear.dequantize()``, bitsandbytes ``dequantize_4bit`` of the
Params4bit) into plain float32 ``nn.Linear`` of compresskit's model, so every row runs through one forward and
one evaluator (``max_out_diff`` in the JSON: the packed module's own CPU forward against that linear, on
random inputs). Each row is a subprocess at ``--threads`` torch threads (default 1): its quantization time
and peak RSS are its own. The docs text is read once at the start, so every row scores the same text.
``--extra-tasks niah_single_1,niah_multikey_1`` adds needle columns (as many samples as passkey trials).
Writes bench/results/quant_peers.{md,json}; ``--merge`` combines runs made with the same settings.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _results import add_eval_options, docs_ppl, handled, gap_share, merged_docs_sha, pin_docs, quantize_baseline, retrieval_keys, saved_model_path, score_model, write_results  # bench/_results.py (run by path)

CONFIGS = {"w4g64": dict(wbits=4, group_size=64), "w3g64": dict(wbits=3, group_size=64)}
OURS = ("fp", "rtn", "gptq", "gptq_act", "gptq_gar", "omniquant_default")
PEERS = ("gptqmodel", "gptqmodel_plain", "gptqmodel_act", "hqq", "nf4")
ORDER = OURS + PEERS
ONLY_W4 = ("nf4",)
NOTES = {
    "fp": "compresskit, float32",
    "rtn": "compresskit RTN (asym)",
    "gptq": "compresskit GPTQ, natural column order (act_group_aware=False; asym, damp 0.01)",
    "gptq_act": "compresskit GPTQ act-order, static groups",
    "gptq_gar": "compresskit GPTQ act_group_aware (group-aware reordering, per-group parameters when reached)",
    "omniquant_default": ("compresskit OmniQuant as `compresskit quantize --method omniquant` runs it on a CPU "
                          "(the `cpu` preset: its own 16 x 2048 calibration tokens, clipping search, block stage, "
                          "end-to-end stage, and in checkpoints made since 2026-12-05 the long-window stage), calibrated by `bench/quality.py --save-models` and loaded from that "
                          "checkpoint (fp16 scales); quant s: the calibration seconds its report records (2 threads); "
                          "peak: see that run"),
    "gptqmodel": "GPTQModel GPTQ desc_act=False (default act_group_aware=True), asym, damp {damp}; dequantized from its packed TorchLinear after its loader's v1->v2 qzeros conversion (fp16 scales)",
    "gptqmodel_plain": "GPTQModel GPTQ desc_act=False, act_group_aware=False, asym, damp {damp}; dequantized from its packed TorchLinear after its loader's v1->v2 qzeros conversion (fp16 scales)",
    "gptqmodel_act": "GPTQModel GPTQ desc_act=True, asym, damp {damp}; dequantized from its packed TorchLinear after its loader's v1->v2 qzeros conversion (fp16 scales, g_idx)",
    "hqq": "HQQ axis 1, asym, no calibration; dequantized from HQQLinear",
    "nf4": "bitsandbytes NF4 blocksize 64 (symmetric); dequantized from Params4bit",
}
DEFAULT_PEER_PYTHON = os.environ.get("QUANT_PEERS_PYTHON", "/work/peers/gptqmodel-venv/bin/python")


# ---------------------------------------------------------------------------------------------- one row

def run_one(args: argparse.Namespace) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    method, name = args.one.split(":")
    cfg = CONFIGS.get(name, {})
    extra: dict = {}
    if method == "omniquant_default":
        model, tok, quant_s, peak = _saved(method, name, args)
    elif method in OURS:
        model, tok, quant_s, peak = _ours(method, cfg, args)
    else:
        model, tok, quant_s, peak, extra = _peer(method, cfg, args)
    if args.docs_only:  # the docs perplexity alone (re-scoring rows of an earlier run on another docs text)
        return {"method": method, "config": name, "docs_only": True, "docs_sha256": args.docs_sha256,
                "scores": docs_ppl(model, tok, args)}
    scores, eval_s = score_model(model, tok, args)
    return {"method": method, "config": name, "quant_s": quant_s, "peak_bytes": peak, "scores": scores,
            "eval_s": eval_s, "versions": _versions(), **extra}


def _peak() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _ours(method: str, cfg: dict, args):
    import torch

    import compresskit

    model, tok = compresskit.load_model(args.model, device="cpu")
    torch.manual_seed(args.seed)
    t0 = time.perf_counter()
    if method != "fp":
        quantize_baseline(model, tok, method, dict(cfg, embed_bits=16),
                          dict(nsamples=args.nsamples, seqlen=args.seqlen, calib="builtin", seed=args.seed))
    return model, tok, time.perf_counter() - t0, _peak()


def _saved(method: str, name: str, args):
    """A model that `bench/quality.py --save-models DIR` calibrated, loaded back; the calibration seconds its
    report records (block stage, end-to-end and long-window stages)."""
    import compresskit

    path = saved_model_path(args.saved_models or "", name, method)
    if not args.saved_models or not path.is_dir():
        raise SystemExit(f"{method} rows load a saved model: {path} does not exist; run `python bench/quality.py "
                         f"--configs {name} --methods {method} --save-models DIR` and pass --saved-models DIR")
    model, tok = compresskit.load_model(str(path), device="cpu")
    report = json.loads((path / "quantization_report.json").read_text())
    seconds = report["seconds"] + sum(report.get(k, {}).get("seconds", 0.0) for k in ("distillation", "long_distillation"))
    return model, tok, seconds, None


def _linears(model) -> dict:
    """name -> nn.Linear of every decoder-block linear (what compresskit quantizes; lm_head and embeddings stay)."""
    from compresskit.core.arch import get_arch

    return dict(get_arch(model).quantizable_linears(model))


def _peer(method: str, cfg: dict, args):
    import torch

    import compresskit

    extra: dict = {}
    if method.startswith("gptqmodel"):
        t0 = time.perf_counter()
        weights, extra = _gptqmodel(method, cfg, args)  # quantizes its own load of the same checkpoint
        quant_s = time.perf_counter() - t0
        peak = _peak()
        model, tok = compresskit.load_model(args.model, device="cpu")
        lins = _linears(model)
        missing = sorted(set(lins) - set(weights))
        if missing:
            raise RuntimeError(f"GPTQModel left {len(missing)} linears unquantized, e.g. {missing[:3]}")
        # the same starting weights as compresskit's load (the checkpoint is bf16; both load it as float32)
        ours = _sums(model)
        start = extra.pop("start_sums")
        extra["start_weights_equal"] = all(ours.get(k) == v for k, v in start.items()) and len(start) == len(ours)
        errs = []
        with torch.no_grad():
            for path, lin in lins.items():
                errs.append(((weights[path] - lin.weight).norm() / lin.weight.norm()).item())
                lin.weight.copy_(weights[path])
        extra["weight_rel_err_median"] = sorted(errs)[len(errs) // 2]
        return model, tok, quant_s, peak, extra
    model, tok = compresskit.load_model(args.model, device="cpu")
    lins = _linears(model)
    t0 = time.perf_counter()
    diff = 0.0
    gen = torch.Generator().manual_seed(args.seed)
    with torch.no_grad():
        for path, lin in lins.items():
            if method == "hqq":
                packed, w = _hqq(lin, cfg)
            elif method == "nf4":
                packed, w = _nf4(lin)
            else:
                raise ValueError(method)
            x = torch.randn(4, lin.in_features, generator=gen)
            diff = max(diff, (packed(x).float() - torch.nn.functional.linear(x, w, lin.bias)).abs().max().item())
            lin.weight.copy_(w)
            del packed
    quant_s = time.perf_counter() - t0
    extra["max_out_diff"] = diff
    return model, tok, quant_s, _peak(), extra


def _hqq(lin, cfg: dict):
    import torch
    from hqq.core.quantize import BaseQuantizeConfig, HQQBackend, HQQLinear

    HQQLinear.set_backend(HQQBackend.PYTORCH)
    qc = BaseQuantizeConfig(nbits=cfg["wbits"], group_size=cfg["group_size"], axis=1)
    src = torch.nn.Linear(lin.in_features, lin.out_features, bias=lin.bias is not None)
    src.weight.data = lin.weight.data.clone()
    if lin.bias is not None:
        src.bias.data = lin.bias.data.clone()
    q = HQQLinear(src, quant_config=qc, compute_dtype=torch.float32, device="cpu", del_orig=True)
    return q, q.dequantize().float().reshape(lin.out_features, lin.in_features)


def _nf4(lin):
    import bitsandbytes as bnb
    import bitsandbytes.functional as F
    import torch

    q = bnb.nn.Linear4bit(lin.in_features, lin.out_features, bias=lin.bias is not None,
                          compute_dtype=torch.float32, quant_type="nf4")
    q.weight = bnb.nn.Params4bit(lin.weight.data.clone(), requires_grad=False, quant_type="nf4", blocksize=64)
    if lin.bias is not None:
        q.bias = torch.nn.Parameter(lin.bias.data.clone(), requires_grad=False)
    q = q.to("cpu")  # quantizes
    return q, F.dequantize_4bit(q.weight.data, q.weight.quant_state).float()


def _sums(model) -> dict[str, tuple[float, float]]:
    """name -> (sum, sum of squares) in float64 of every parameter: a cheap fingerprint of the weights."""
    return {k: (v.double().sum().item(), v.double().square().sum().item()) for k, v in model.named_parameters()}


def _patch_gptqmodel_pool(workers: int) -> None:
    """GPTQModel's device thread pool asks for a 2-worker ``model_loader:cpu`` sub-pool, which fails when the cpu
    pool has 1 worker (its default on a 2-core machine); build it with ``workers`` for both, so it quantizes on
    one worker thread (``GPTQMODEL_CPU_WORKERS=2`` is the documented alternative, at two workers)."""
    import gptqmodel
    from gptqmodel.utils.threadx import DeviceThreadPool

    def build():
        return DeviceThreadPool(inference_mode=True, workers={"cpu": workers, "model_loader:cpu": workers},
                                empty_cache_every_n=512)

    gptqmodel._build_device_thread_pool = build


def _gptqmodel(method: str, cfg: dict, args) -> tuple[dict, dict]:
    """GPTQModel quantizes the embedded model's HF checkpoint (float32) on compresskit's calibration windows;
    returns (linear name -> its dequantized float32 weight, extra fields)."""
    import torch

    import compresskit
    from compresskit.calib import build_samples

    _patch_gptqmodel_pool(args.gptqmodel_workers)
    from gptqmodel import GPTQModel, QuantizeConfig

    ref, tok = compresskit.load_model(args.model, device="cpu")
    path = ref.config._name_or_path
    ids = build_samples(tok, "builtin", args.nsamples, args.seqlen, seed=args.seed)
    calib = [{"input_ids": row.unsqueeze(0), "attention_mask": torch.ones_like(row).unsqueeze(0)} for row in ids]
    del ref
    kw = dict(bits=cfg["wbits"], group_size=cfg["group_size"], sym=False, damp_percent=args.damp,
              offload_to_disk=False, desc_act=method == "gptqmodel_act")
    if method == "gptqmodel_plain":
        kw["act_group_aware"] = False
    qc = QuantizeConfig(**kw)
    gm = GPTQModel.load(path, qc, device="cpu", dtype=torch.float32)
    start = _sums(gm.model)  # compared with compresskit's load of the same checkpoint afterwards
    t0 = time.perf_counter()
    gm.quantize(calib, batch_size=1, tokenizer=tok)
    quantize_call_s = time.perf_counter() - t0
    from gptqmodel.utils.model import convert_gptq_v1_to_v2_format_module

    weights, diff, kinds = {}, 0.0, set()
    gen = torch.Generator().manual_seed(args.seed)
    with torch.no_grad():
        for name, mod in gm.model.named_modules():
            if not hasattr(mod, "dequantize_weight") or not hasattr(mod, "qweight"):
                continue
            kinds.add(f"{type(mod).__name__} (qzeros v{mod.qzero_format()})")
            if mod.qzero_format() == 1:
                # GPTQModel packs the checkpoint (v1) zero layout, stored zero = zero - 1, and its in-memory
                # module still computes as v2 (dequantize_weight and forward are then one scale step off per
                # group); its loader converts v1 -> v2 with this function on load, so do the same here
                convert_gptq_v1_to_v2_format_module(mod, bits=mod.bits, pack_dtype=mod.pack_dtype)
                mod.qzero_format(format=2)
                for reset in ("clear_weight_cache", "_stream_reset_cache"):
                    if hasattr(mod, reset):
                        getattr(mod, reset)()
            w = mod.dequantize_weight().float().t().contiguous()  # GPTQ layout: [in, out]
            assert w.shape == (mod.out_features, mod.in_features), (name, tuple(w.shape))
            x = torch.randn(4, mod.in_features, generator=gen)
            diff = max(diff, (mod(x).float() - x @ w.t()).abs().max().item())
            weights[name] = w
    resolved = {k: getattr(gm.quantize_config, k, None) for k in ("desc_act", "act_group_aware", "sym",
                                                                     "damp_percent", "static_groups", "mse")}
    return weights, {"max_out_diff": diff, "packed_modules": sorted(kinds), "start_sums": start,
                     "quantize_call_s": quantize_call_s,
                     "gptqmodel_config": {k: (v if isinstance(v, (bool, int, float, type(None))) else str(v))
                                          for k, v in resolved.items()}}


def _versions() -> dict:
    import importlib.metadata as md

    out = {"python": sys.executable}
    for p in ("torch", "transformers", "compresskit", "gptqmodel", "hqq", "bitsandbytes"):
        try:
            out[p] = md.version(p)
        except md.PackageNotFoundError:
            pass
    return out


# ---------------------------------------------------------------------------------------------- driver

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--methods", default="rtn,gptq,gptq_act,gptqmodel,gptqmodel_act,hqq,nf4")
    ap.add_argument("--python", default=DEFAULT_PEER_PYTHON, help="interpreter of the peer rows")
    ap.add_argument("--main-python", default=sys.executable, help="interpreter of compresskit's rows")
    ap.add_argument("--nsamples", type=int, default=16)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--damp", type=float, default=0.01, help="GPTQModel damp_percent (compresskit's GPTQ: 0.01)")
    add_eval_options(ap, Path(__file__).parent / "results" / "quant_peers")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of each row")
    ap.add_argument("--saved-models", help="where omniquant_default rows load their models from (the DIR of "
                    "`bench/quality.py --save-models DIR`): the preset takes ~30 minutes a width to calibrate")
    ap.add_argument("--gptqmodel-workers", type=int, default=1, help="GPTQModel's cpu worker threads")
    ap.add_argument("--docs-only", action="store_true", help="quantize and score the docs perplexity only; "
                    "--merge puts it into the same rows of the other files")
    args = ap.parse_args()
    if handled(args, run_one, _merge):
        return
    methods = args.methods.split(",")
    unknown = set(methods) - set(ORDER)
    if unknown:
        ap.error(f"unknown methods {sorted(unknown)}; known: {', '.join(ORDER)}")
    jobs = [] if args.no_fp else [("fp", "fp")]
    for m in methods:  # method by method, as given: a run stopped early has every config of its first methods
        jobs += [(m, name) for name in args.configs.split(",")
                 if m != "fp" and not (m in ONLY_W4 and CONFIGS[name]["wbits"] != 4)]
    with tempfile.TemporaryDirectory() as tmp:
        pin_docs(args, tmp)
        args.git_head = _git_head()
        rows = []
        for method, name in jobs:
            out = Path(tmp) / "r.json"
            out.unlink(missing_ok=True)
            python = args.main_python if method in OURS else args.python
            cmd = [python, str(Path(__file__).resolve()), "--one", f"{method}:{name}", "--json", str(out)] + _forward(args)
            env = {**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": str(args.threads),
                   "MKL_NUM_THREADS": str(args.threads), "TORCH_COMPILE_DISABLE": "1"}
            t0 = time.perf_counter()
            # in the temporary folder: GPTQModel writes a logs/ folder into its working directory
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp)
            if proc.returncode != 0:
                rows.append({"method": method, "config": name, "error": proc.stderr.strip().splitlines()[-3:]})
            else:
                rows.append(json.loads(out.read_text()))
            rows[-1]["wall_s"] = time.perf_counter() - t0
            print(_line(rows[-1], args.lengths, {}, None, retrieval_keys(rows, args.lengths)), flush=True)
            _write(rows, args, echo=False)  # after every row: a stopped run keeps what it finished
    _write(rows, args, echo=True)


def _git_head() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent).stdout.strip()
    except OSError:
        return ""


def _forward(args) -> list[str]:
    out = ["--model", args.model, "--nsamples", str(args.nsamples), "--seqlen", str(args.seqlen),
           "--lengths", ",".join(map(str, args.lengths)), "--ppl-windows", str(args.ppl_windows),
           "--passkey-trials", str(args.passkey_trials), "--extra-tasks", args.extra_tasks, "--seed", str(args.seed),
           "--damp", str(args.damp),
           "--threads", str(args.threads), "--gptqmodel-workers", str(args.gptqmodel_workers),
           "--docs-file", args.docs_file, "--docs-sha256", args.docs_sha256]
    return out + (["--docs-only"] if args.docs_only else []) + (
        ["--saved-models", args.saved_models] if args.saved_models else [])


def _merge(args) -> None:
    rows: dict[tuple[str, str], dict] = {}
    for path in args.merge.split(","):
        data = json.loads(Path(path).read_text())
        sha = data["settings"].get("docs_sha256")
        if data["settings"].get("docs_only"):  # re-scored docs perplexities: into the rows already merged
            for r in data["rows"]:
                if (r["config"], r["method"]) in rows:
                    old = rows[(r["config"], r["method"])]
                    old["scores"] |= r["scores"]
                    old["docs_sha256"] = sha
                    old["docs_rescored"] = True
            continue
        for r in data["rows"]:
            r.setdefault("docs_sha256", sha)
        for key, value in data["settings"].items():
            if key not in ("merge", "out", "configs", "methods", "no_fp"):
                setattr(args, key, value)
        rows.update({(r["config"], r["method"]): r for r in data["rows"]})
    args.docs_only = False
    args.docs_sha256 = merged_docs_sha({r.get("docs_sha256") for r in rows.values() if "scores" in r})
    _write(list(rows.values()), args, echo=True)


def _gap(rows: list[dict], key: str) -> dict[tuple[str, str], float]:
    """(config, method) -> the share of the same config's RTN log-perplexity gap the method closes."""
    fp_row = next((r for r in rows if r["method"] == "fp" and key in r.get("scores", {})), None)
    if fp_row is None:
        return {}
    fp = fp_row["scores"][key]
    # the docs perplexities of merged runs compare only when they scored the same docs text
    same = (lambda r: True) if key.startswith("ppl@") else (
        lambda r: r.get("docs_sha256") == fp_row.get("docs_sha256"))
    rtn = {r["config"]: r["scores"][key] for r in rows
           if r["method"] == "rtn" and key in r.get("scores", {}) and same(r)}
    return {(r["config"], r["method"]): gap_share(rtn[r["config"]], r["scores"][key], fp)
            for r in rows if key in r.get("scores", {}) and r["method"] not in ("fp", "rtn")
            and r["config"] in rtn and rtn[r["config"]] > fp and same(r)}


def _line(r: dict, lengths: list[int], gaps: dict, fp_docs: str | None, keys: list[str]) -> str:
    if "error" in r or "docs_only" in r:
        if "docs_only" in r:
            return f"| {r['config']} | {r['method']} | docs {r['scores'].get(f'ppl_docs@{lengths[0]}', float('nan')):.2f} |"
        return f"| {r['config']} | {r['method']} | error: {' '.join(r['error'])[-300:]} |"
    s = r["scores"]
    n = lengths[0]
    dagger = " †" if fp_docs and r.get("docs_sha256", fp_docs) != fp_docs else ""
    cols = [f"{s.get(f'ppl@{n}', float('nan')):.2f}", f"{s.get(f'ppl_docs@{n}', float('nan')):.2f}{dagger}"]
    cols += [f"{s[k]:.0f}%" if k in s else "-" for k in keys]
    cols += [f"{r['quant_s']:.0f}", "-" if r["peak_bytes"] is None else f"{r['peak_bytes'] / 2**30:.2f}"]
    for key in (f"ppl@{n}", f"ppl_docs@{n}"):
        g = gaps.get(key, {}).get((r["config"], r["method"]))
        cols.append("" if g is None else f"{g:.0%}")
    return f"| {r['config']} | {r['method']} | " + " | ".join(cols) + " |"


def _write(rows: list[dict], args, echo: bool) -> None:
    order = ["fp"] + list(CONFIGS)
    rows = sorted(rows, key=lambda r: (order.index(r["config"]), ORDER.index(r["method"])))
    n = args.lengths[0]
    gaps = {key: _gap(rows, key) for key in (f"ppl@{n}", f"ppl_docs@{n}")}
    keys = retrieval_keys(rows, args.lengths)
    head = (f"| config | method | ppl@{n} held-out | ppl@{n} docs | " + " | ".join(keys)
            + " | quant s | peak GiB | RTN gap closed, held-out | RTN gap closed, docs |\n|" + "---|" * (8 + len(keys)))
    fp_docs = next((r.get("docs_sha256") for r in rows if r["method"] == "fp"), None)
    lines = [head] + [_line(r, args.lengths, gaps, fp_docs, keys) for r in rows]
    other = sorted({r["docs_sha256"] for r in rows if r.get("docs_sha256", fp_docs) != fp_docs})
    if fp_docs and other:
        lines += ["", f"† scored on another docs text (sha256 {', '.join(other)}) than the fp row's ({fp_docs}): "
                  "docs/ changed between the merged runs; these docs perplexities compare only with each other, "
                  "and their share of the docs gap is left out."]
    methods = [m for m in ORDER if any(r["method"] == m for r in rows)]
    lines += ["", "Methods:"] + [f"- `{m}`: {NOTES[m].format(damp=args.damp)}" for m in methods]
    checks = [f"{r['config']}/{r['method']} {r['max_out_diff']:.1e}" for r in rows if "max_out_diff" in r]
    if checks:
        lines += ["", "max |packed module's own CPU forward - dequantized nn.Linear| on random inputs: "
                  + ", ".join(checks)]
    vers = next((r["versions"] for r in rows if r.get("method") in PEERS and "versions" in r), None)
    settings = (f"device cpu, {args.threads} torch thread(s) per row; calibration {args.nsamples} x {args.seqlen} "
                f"tokens (compresskit's `build_samples(tok, 'builtin', ...)`, seed {args.seed}) for every calibrated "
                f"method; perplexity over {args.ppl_windows} windows of the held-out split and of docs/*.md "
                f"(sha256 {getattr(args, 'docs_sha256', '?')}, read once for the run); passkey "
                f"{'and ' + args.extra_tasks.replace(',', ', ') + ': ' if getattr(args, 'extra_tasks', '') else ''}"
                f"{args.passkey_trials} trials (samples) per length; embeddings and lm_head kept in float for every method; the RTN gap closed is "
                f"(log ppl_rtn - log ppl_method) / (log ppl_rtn - log ppl_fp) at the same config; quant s and peak "
                f"RSS are the row's process (a peer's includes its import and its own model load); git HEAD "
                f"{getattr(args, 'git_head', '?')}.")
    if vers:
        settings += " Peer venv: " + ", ".join(f"{k} {v}" for k, v in vers.items() if k != "python") + "."
    md = settings + "\n\n" + "\n".join(lines) + "\n"
    data = {"settings": {k: v for k, v in vars(args).items() if k not in ("one", "json", "docs_file")}, "rows": rows}
    write_results(args.out, md, data, echo=echo)


if __name__ == "__main__":
    main()
