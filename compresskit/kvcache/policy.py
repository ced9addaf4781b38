"""A KV-cache policy and the context that applies it: ``with compress_kv(model, "snapkv:0.5"): model.generate(...)``.

`KVPolicy` is the typed, JSON-serializable form of a spec string (``snapkv:0.5``, ``streaming:0.75``,
``kivi:4``, or a press and a quantized cache composed: ``snapkv:0.5+kivi:4``).
`compress_kv` puts a forward hook on every attention module (no forked attention code): after a prefill
(an update of more than one token), the layer's press scores the cached tokens and the cache keeps the best
of each KV head. Inside the context ``model.generate`` gets an `EvictingLayer` cache unless one is passed.
"""
from __future__ import annotations

import weakref
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Iterator

import torch
from transformers.cache_utils import Cache

from ..core.arch import get_arch, get_module
from ..core.config import JsonConfig
from ..core.errors import ConfigError, InputError
from .cache import EvictingLayer, evicting_cache
from .quantized import QuantizedLayer
from .presses import PRESSES, Press, keep_indices

POLICY_VERSION = 1


@dataclass(frozen=True)
class KVPolicy(JsonConfig):
    """What the cache keeps: ``press`` (one of `PRESSES`: random, knorm, streaming, snapkv, tova; None: no
    eviction) at ``ratio`` (the share of the prefilled tokens each KV head drops), with the press's own
    ``options`` (e.g. ``{"window": 32}`` for snapkv); and ``bits`` (2, 4, 8; None: full precision) for a
    KIVI-style quantized cache with ``group`` and the ``residual`` most recent tokens in full precision."""

    press: str | None = "snapkv"
    ratio: float = 0.5
    options: dict[str, Any] = field(default_factory=dict)
    bits: int | None = None
    group: int = 32
    residual: int = 128
    version: int = POLICY_VERSION

    def __post_init__(self) -> None:
        self.build()  # every check of the press (known name, ratio range, its options) now
        if self.bits is not None:
            QuantizedLayer(self.bits, self.group, self.residual)  # and of the quantized cache
        elif self.press is None:
            raise ConfigError("a KV policy needs a press (snapkv:0.5), a quantized cache (kivi:4), or both")

    def make_cache(self, num_layers: int) -> Cache:
        """An empty cache for ``model.generate(..., cache=...)``: evicting layers, quantized if ``bits``."""
        if self.bits is None:
            return evicting_cache(num_layers)
        return Cache(layers=[QuantizedLayer(self.bits, self.group, self.residual) for _ in range(num_layers)])

    def build(self) -> Press | None:
        if self.press is None:
            return None
        if self.press not in PRESSES:
            raise ConfigError(f"unknown KV press {self.press!r}; known: {', '.join(PRESSES)} (e.g. snapkv:0.5)")
        cls = PRESSES[self.press]
        known = {f.name for f in fields(cls)} - {"ratio"}
        unknown = set(self.options) - known
        if unknown:
            raise ConfigError(f"{self.press} has no option(s) {sorted(unknown)}; its options: {sorted(known) or 'none'}")
        return cls(ratio=self.ratio, **self.options)

    @property
    def name(self) -> str:
        opts = "".join(f",{k}={v}" for k, v in sorted(self.options.items()))
        parts = [] if self.press is None else [f"{self.press}:{self.ratio:g}{opts}"]
        if self.bits is not None:
            extra = "".join(f",{k}={getattr(self, k)}" for k, d in (("group", 32), ("residual", 128))
                            if getattr(self, k) != d)
            parts.append(f"kivi:{self.bits}{extra}")
        return "+".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "KVPolicy":
        cls.check_dict(d, "KV-cache policy", POLICY_VERSION)
        return cls(**d)

    @classmethod
    def parse(cls, spec: "str | KVPolicy | dict[str, Any]") -> "KVPolicy":
        """From ``"snapkv:0.5"`` (``NAME:RATIO``; options as ``NAME:RATIO,window=32``), ``"kivi:4"`` (bits;
        ``kivi:2,residual=64``), ``"snapkv:0.5+kivi:4"``, a dict or a policy."""
        if isinstance(spec, KVPolicy):
            return spec
        if isinstance(spec, dict):
            return cls.from_dict(spec)
        text = str(spec).strip()
        fields_: dict[str, Any] = {"press": None}
        for part in text.split("+"):
            name, ratio, options = _parse_part(text, part)
            if name == "kivi":
                if "bits" in fields_:
                    raise ConfigError(f"KV policy {text!r}: one quantized cache (kivi:BITS) at most")
                unknown = set(options) - {"group", "residual"}
                if unknown or ratio != int(ratio):
                    raise ConfigError(f"KV policy {text!r}: kivi takes the bits (2, 4, 8) and the options group, "
                                      f"residual, e.g. kivi:4 or kivi:2,residual=64")
                fields_ |= {"bits": int(ratio), **options}
            else:
                if fields_["press"] is not None:
                    raise ConfigError(f"KV policy {text!r}: one eviction press at most (add kivi:BITS to quantize)")
                fields_ |= {"press": name, "ratio": ratio, "options": options}
        return cls(**fields_)


def _parse_part(text: str, part: str) -> tuple[str, float, dict[str, Any]]:
    """``(name, number, options)`` of one ``NAME:NUMBER[,KEY=VALUE...]`` part of a policy spec."""
    name, sep, rest = part.strip().partition(":")
    if not sep:
        raise ConfigError(f"KV policy {text!r}: expected NAME:RATIO, e.g. snapkv:0.5 or streaming:0.75 (presses: "
                          f"{', '.join(PRESSES)}), or kivi:BITS")
    ratio_text, *opts = rest.split(",")
    try:
        ratio = float(ratio_text)
    except ValueError:
        raise ConfigError(f"KV policy {text!r}: {ratio_text!r} is not a number (e.g. snapkv:0.5, kivi:4)") from None
    options: dict[str, Any] = {}
    for opt in opts:
        key, eq, value = opt.partition("=")
        if not eq:
            raise ConfigError(f"KV policy {text!r}: option {opt!r} is not KEY=VALUE (e.g. snapkv:0.5,window=32)")
        try:
            options[key.strip()] = int(value) if value.strip().lstrip("-").isdigit() else float(value)
        except ValueError:
            raise ConfigError(f"KV policy {text!r}: option {opt!r} is not a number") from None
    return name.strip(), ratio, options


def check_model(model: Any) -> None:
    """Refuse models whose attention an evicting cache does not fit (sliding windows)."""
    get_arch(model)
    config = model.config
    layer_types = getattr(config, "layer_types", None) or []
    if any(t == "sliding_attention" for t in layer_types) or (
            getattr(config, "sliding_window", None) is not None and getattr(config, "use_sliding_window", True)):
        raise InputError(f"{config.model_type} uses sliding-window attention, which KV eviction does not support "
                         "yet; use a model with full attention")


def _prefill_hook(press: Press):
    def hook(module: Any, args: tuple, kwargs: dict, output: Any) -> None:
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        if cache is None or module.layer_idx >= len(cache.layers):
            return
        layer = cache.layers[module.layer_idx]
        if not isinstance(layer, EvictingLayer) or layer.fresh <= 1 or press.ratio == 0:
            return  # decoding steps (one token) and other caches are left alone
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        with torch.no_grad():
            scores = press.score(module, hidden, kwargs["position_embeddings"], layer.keys, layer.values)
            layer.keep(keep_indices(scores, press.ratio))
        layer.fresh = 0

    return hook


@dataclass
class _Attached:
    policy: KVPolicy
    detach: Any


_ATTACHED: "weakref.WeakKeyDictionary[Any, _Attached]" = weakref.WeakKeyDictionary()


def attached_policy(model: Any) -> KVPolicy | None:
    """The policy `attach_kv` (or an open `compress_kv`) put on ``model``, or None (a full cache)."""
    entry = _ATTACHED.get(model)
    return None if entry is None else entry.policy


def attach_kv(model: Any, policy: "str | KVPolicy | dict[str, Any] | None") -> KVPolicy | None:
    """From now on ``model.generate(...)`` compresses the KV cache after prefill with ``policy`` and decodes at
    the original positions; ``None`` goes back to the full cache. Returns the policy it replaced. Batches
    with left padding are refused (the eviction would mix pad and text positions)."""
    previous = _ATTACHED.pop(model, None)
    if previous is not None:
        previous.detach()
    if policy is None:
        return None if previous is None else previous.policy
    policy = KVPolicy.parse(policy)
    check_model(model)
    press = policy.build()
    spec = get_arch(model)
    blocks = spec.blocks_of(model)
    handles = [] if press is None else [
        get_module(block, spec.attention).register_forward_hook(_prefill_hook(press), with_kwargs=True)
        for block in blocks]
    generate = model.generate
    own = model.__dict__.get("generate")  # a generate set on the instance before (kept as it was)

    def generate_with_cache(*args: Any, **kwargs: Any):
        mask = kwargs.get("attention_mask")
        if mask is not None and not bool(mask.all()):
            raise InputError("KV-cache compression with a padded batch is not supported: generate one prompt at a "
                             "time (or pass prompts of equal length without padding)")
        if kwargs.get("past_key_values") is None and kwargs.get("cache") is None:
            kwargs["cache"] = policy.make_cache(len(blocks))
        return generate(*args, **kwargs)

    def detach() -> None:
        for h in handles:
            h.remove()
        if model.__dict__.get("generate") is generate_with_cache:
            if own is None:
                del model.generate
            else:
                model.generate = own

    model.generate = generate_with_cache
    _ATTACHED[model] = _Attached(policy, detach)
    return None if previous is None else previous.policy


@contextmanager
def compress_kv(model: Any, policy: "str | KVPolicy | dict[str, Any]") -> Iterator[KVPolicy]:
    """Within the context, ``model.generate(...)`` (and any forward given ``policy.make_cache(...)``)
    compresses the KV cache after prefill with ``policy`` and decodes at the original positions (see
    `attach_kv`); on exit the model has the policy it had before (usually the full cache)."""
    before = attached_policy(model)
    attach_kv(model, policy)
    try:
        yield attached_policy(model)
    finally:
        attach_kv(model, before)
