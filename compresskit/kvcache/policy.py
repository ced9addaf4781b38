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
from .presses import PRESSES, Press, RetrievalHeadsPress, adaptive_keep, keep_top

BUDGETS = ("uniform", "adaptive")

POLICY_VERSION = 1


@dataclass(frozen=True)
class KVPolicy(JsonConfig):
    """What the cache keeps: ``press`` (one of `PRESSES`: random, knorm, streaming, snapkv, tova,
    retrieval-heads; None: no eviction) at ``ratio`` (the share of the prefilled tokens the cache drops), with
    the press's own ``options`` (e.g. ``{"window": 32}`` for snapkv); ``budget`` "uniform" (every KV head keeps
    the same count) or "adaptive" (AdaKV: one top-k over a layer's heads, each keeping at least ``floor`` of its
    even share; spec ``ada-snapkv:0.5,floor=0.2``. AdaKV's paper uses 0.2; on SmolLM2-135M 0.2 lost the
    passkey at 2K that 0.5 and uniform budgets kept, hence 0.5);
    ``interval``: while generating, evict back to the size held after the prompt every ``interval`` new tokens
    (None: only at prefill); ``tail``: in ``generate``, the last ``tail`` prompt tokens are read after the rest
    was compressed, as a question that arrives after its context (question-agnostic compression; 0: the whole
    prompt is compressed at once, a question at its end inside the scoring window); and ``bits`` (2, 4, 8;
    None: full precision) for a KIVI-style quantized cache with
    ``group``, the ``residual`` most recent tokens and the first ``sink`` tokens in full precision (the
    attention sinks: keeping 4 halved KIVI-2's perplexity increase on SmolLM2-135M, docs/kvcache.md), keys
    quantized before RoPE (``prerope``, where the model's rotary frequencies are fixed) with ``outliers`` exact
    entries per key group (None: ``group // 2`` at 2 bits, none at 4 and 8; KVQuant's dense-and-sparse keys)."""

    press: str | None = "snapkv"
    ratio: float = 0.5
    options: dict[str, Any] = field(default_factory=dict)
    budget: str = "uniform"
    floor: float = 0.5
    interval: int | None = None
    tail: int = 0
    bits: int | None = None
    group: int = 32
    residual: int = 128
    sink: int = 4
    outliers: int | None = None
    prerope: bool = True
    version: int = POLICY_VERSION

    def __post_init__(self) -> None:
        press = self.build()  # every check of the press (known name, ratio range, its options) now
        if self.bits is not None:
            self._quantized_layer(None)  # and of the quantized cache
        elif press is None:
            raise ConfigError("a KV policy needs a press (snapkv:0.5), a quantized cache (kivi:4), or both")
        if self.budget not in BUDGETS:
            raise ConfigError(f"KV budget {self.budget!r} is unknown; use {' or '.join(BUDGETS)} (ada-snapkv:0.5)")
        if not 0.0 < self.floor <= 1.0:
            raise ConfigError(f"floor={self.floor} must lie in (0, 1]: the least share of its even budget an "
                              "adaptive head keeps")
        if self.budget == "adaptive" and isinstance(press, RetrievalHeadsPress):
            raise ConfigError("retrieval-heads sets its own per-head budgets; drop the ada- prefix")
        if self.per_head and self.bits is not None:
            raise ConfigError(f"per-head budgets ({self.name.split('+')[0]}) do not combine with kivi yet; use a "
                              "uniform press (snapkv:0.5+kivi:4)")
        if not isinstance(self.tail, int) or self.tail < 0 or (self.tail and press is None):
            raise ConfigError(f"tail={self.tail!r}: the prompt tokens read after compression must be a whole number "
                              ">= 0, with a press (e.g. snapkv:0.5,tail=64)")
        if self.interval is not None:
            if press is None or self.per_head or self.bits is not None or self.interval < 1:
                raise ConfigError(f"interval={self.interval}: decoding-time eviction needs a uniform press without "
                                  "kivi and an interval >= 1 (e.g. tova:0.5,interval=256)")

    @property
    def per_head(self) -> bool:
        """Whether KV heads keep different counts (the per-head layout of `EvictingLayer`)."""
        return self.budget == "adaptive" or self.press == "retrieval-heads"

    @property
    def key_outliers(self) -> int:
        """Exact key entries per packed group (`outliers`, or its default for the bits)."""
        if self.outliers is not None:
            return self.outliers
        return self.group // 2 if self.bits == 2 else 0

    def cache_for(self, model: Any) -> Cache:
        """An empty cache of this policy sized for ``model`` (with its rotary frequencies for ``prerope``)."""
        shape = cache_shape(model.config)
        return self.make_cache(shape["layers"], shape["groups"], rope=rotary_frequencies(model))

    def make_cache(self, num_layers: int, groups: int = 1, rope: torch.Tensor | None = None) -> Cache:
        """An empty cache for ``model.generate(..., cache=...)``: evicting layers, quantized if ``bits``
        (``groups``: query heads per KV head; ``rope``: the model's rotary frequencies, which ``prerope``
        needs - without them keys are quantized after RoPE, as KIVI does)."""
        if self.bits is None:
            return evicting_cache(num_layers, groups)
        return Cache(layers=[self._quantized_layer(rope) for _ in range(num_layers)])

    def _quantized_layer(self, rope: torch.Tensor | None) -> QuantizedLayer:
        return QuantizedLayer(self.bits, self.group, self.residual, self.sink, self.key_outliers,
                              rope if self.prerope else None)

    def build(self) -> Press | None:
        if self.press is None:
            return None
        if self.press not in PRESSES:
            raise ConfigError(f"unknown KV press {self.press!r}; known: {', '.join(PRESSES)} (e.g. snapkv:0.5)")
        cls = PRESSES[self.press]
        known = {f.name for f in fields(cls)} - {"ratio"}
        unknown = set(self.options) - known
        if unknown:
            raise ConfigError(f"{self.press} has no option(s) {sorted(unknown)}; its options: {sorted(known) or 'none'}"
                              " (and interval=N, tail=N for every press)")
        return cls(ratio=self.ratio, **self.options)

    @property
    def name(self) -> str:
        opts = "".join(f",{k}={v}" for k, v in sorted(self.options.items()) if k != "heads")
        if self.interval is not None:
            opts += f",interval={self.interval}"
        if self.tail:
            opts += f",tail={self.tail}"
        if self.budget == "adaptive" and self.floor != 0.5:
            opts += f",floor={self.floor:g}"
        prefix = "ada-" if self.budget == "adaptive" else ""
        parts = [] if self.press is None else [f"{prefix}{self.press}:{self.ratio:g}{opts}"]
        if self.bits is not None:
            extra = "".join(f",{k}={int(getattr(self, k))}" for k, d in (
                ("group", 32), ("residual", 128), ("sink", 4), ("outliers", None), ("prerope", True))
                if getattr(self, k) != d)
            parts.append(f"kivi:{self.bits}{extra}")
        return "+".join(parts)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if "heads" in d["options"]:
            d["options"]["heads"] = [list(pair) for pair in d["options"]["heads"]]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "KVPolicy":
        cls.check_dict(d, "KV-cache policy", POLICY_VERSION)
        return cls(**d)

    @classmethod
    def parse(cls, spec: "str | KVPolicy | dict[str, Any]") -> "KVPolicy":
        """From ``"snapkv:0.5"`` (``NAME:RATIO``; options as ``NAME:RATIO,window=32``), ``"ada-snapkv:0.5"``
        (AdaKV budgets), ``"tova:0.5,interval=256"`` (also while generating), ``"retrieval-heads:0.5"``,
        ``"kivi:4"`` (bits; ``kivi:2,residual=64``), ``"snapkv:0.5+kivi:4"``, a dict or a policy."""
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
                unknown = set(options) - {"group", "residual", "sink", "outliers", "prerope"}
                if unknown or ratio != int(ratio):
                    raise ConfigError(f"KV policy {text!r}: kivi takes the bits (2, 4, 8) and the options group, "
                                      f"residual, sink, outliers, prerope (0 or 1), e.g. kivi:4 or kivi:2,residual=64")
                if "prerope" in options:
                    if options["prerope"] not in (0, 1):
                        raise ConfigError(f"KV policy {text!r}: prerope is 0 (keys quantized after RoPE) or 1")
                    options["prerope"] = bool(options["prerope"])
                fields_ |= {"bits": int(ratio), **options}
            else:
                if fields_["press"] is not None:
                    raise ConfigError(f"KV policy {text!r}: one eviction press at most (add kivi:BITS to quantize)")
                budget = "adaptive" if name.startswith("ada-") else "uniform"
                fields_ |= {"press": name.removeprefix("ada-"), "ratio": ratio, "budget": budget,
                            "interval": options.pop("interval", None), "tail": options.pop("tail", 0),
                            "options": options}
                if "floor" in options:
                    if budget != "adaptive":
                        raise ConfigError(f"KV policy {text!r}: floor= is for adaptive budgets (ada-{name}:...)")
                    fields_["floor"] = options.pop("floor")
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


def cache_shape(config: Any) -> dict[str, int]:
    """``layers``, ``kv_heads``, ``head_dim`` and ``groups`` (query heads per KV head) of a model config."""
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    return {"layers": config.num_hidden_layers, "kv_heads": kv_heads, "groups": heads // kv_heads,
            "head_dim": getattr(config, "head_dim", None) or config.hidden_size // heads}


def rotary_frequencies(model: Any) -> torch.Tensor | None:
    """The model's RoPE frequencies ``[head_dim / 2]``, when they stay fixed while it runs (default, linear,
    llama3, yarn rope types rotating the whole head); None otherwise (dynamic or longrope scaling, partial
    rotary, no RoPE), and a quantized cache then quantizes keys after RoPE."""
    config = model.config
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    if isinstance(rope, dict) and rope.get("rope_type", rope.get("type", "default")) in ("dynamic", "longrope"):
        return None
    head_dim = cache_shape(config)["head_dim"]
    for module in model.modules():
        inv_freq = getattr(module, "inv_freq", None)
        if isinstance(inv_freq, torch.Tensor):
            return inv_freq.detach().float() if inv_freq.numel() * 2 == head_dim else None
    return None


def check_model(model: Any) -> None:
    """Refuse models whose attention an evicting cache does not fit (sliding windows)."""
    get_arch(model)
    config = model.config
    layer_types = getattr(config, "layer_types", None) or []
    if any(t == "sliding_attention" for t in layer_types) or (
            getattr(config, "sliding_window", None) is not None and getattr(config, "use_sliding_window", True)):
        raise InputError(f"{config.model_type} uses sliding-window attention, which KV eviction does not support "
                         "yet; use a model with full attention")


def compress_layer(layer: EvictingLayer, policy: KVPolicy, press: Press, scores: torch.Tensor, index: int,
                   n_layers: int) -> None:
    """Compress the prompt held by ``layer`` (layer ``index`` of ``n_layers``) by ``policy``'s budget rule:
    the press's own (one count per head, or its per-head budgets) or AdaKV's."""
    if policy.budget == "adaptive":
        layer.keep_heads(adaptive_keep(scores, press.ratio, policy.floor))
    else:
        kept = press.keep(scores, index, n_layers)
        layer.keep_heads(kept) if isinstance(kept, list) else layer.keep(kept)
    layer.target = layer.held()


def _compress_hook(press: Press, policy: KVPolicy, n_layers: int):
    """After an attention forward: compress the layer's cache once after the prompt (an update of more than
    one token), and, with ``policy.interval``, every ``interval`` generated tokens back to the size it held
    after the prompt (scored with the current token's query)."""
    def hook(module: Any, args: tuple, kwargs: dict, output: Any) -> None:
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        if cache is None or module.layer_idx >= len(cache.layers) or press.ratio == 0:
            return
        layer = cache.layers[module.layer_idx]
        if not isinstance(layer, EvictingLayer):
            return  # other caches are left alone
        prompt = layer.fresh > 1 and not layer.compressed
        again = policy.interval is not None and layer.compressed and layer.since >= policy.interval
        if not (prompt or again):
            return
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        with torch.no_grad():
            scores = press.score(module, hidden, kwargs["position_embeddings"], layer.keys, layer.values)
            if again:
                layer.keep(keep_top(scores, layer.target))
            else:
                compress_layer(layer, policy, press, scores, module.layer_idx, n_layers)

    return hook


def _read_context_first(model: Any, policy: KVPolicy, cache: Cache, ids: torch.Tensor | None) -> None:
    """Prefill all but the last ``policy.tail`` prompt tokens into an empty ``cache`` (so they are compressed
    without the question); ``generate`` then reads the rest (a per-head layout: all but the last token here,
    one at a time)."""
    if ids is None or cache.get_seq_length() > 0 or ids.shape[-1] <= policy.tail + 1:
        return
    with torch.no_grad():
        model(ids[:, :-policy.tail], cache=cache, use_cache=True, logits_to_keep=1)
        if policy.per_head:
            for i in range(ids.shape[-1] - policy.tail, ids.shape[-1] - 1):
                model(ids[:, i:i + 1], cache=cache, use_cache=True, logits_to_keep=1)


def _generate_by_length(generate: Any, model: Any, policy: KVPolicy, ids: torch.Tensor | None,
                        mask: torch.Tensor | None, extra: tuple, kwargs: dict) -> torch.Tensor:
    """``generate`` on a left-padded batch (or, with per-head budgets, any batch of several rows) as the
    unpadded batches of its equal-length rows (one row each with per-head budgets), returned as one batch would
    be: the padded prompts, then each row's new tokens, right-filled with the pad token. Eviction never sees a
    pad token and every row gets the continuation it gets alone."""
    if ids is None or extra or kwargs.get("cache") is not None or kwargs.get("past_key_values") is not None \
            or kwargs.get("return_dict_in_generate") or kwargs.get("num_return_sequences", 1) != 1 \
            or kwargs.get("stopping_criteria"):
        raise InputError("KV-cache compression splits a padded batch by prompt length, which needs input_ids and "
                         "attention_mask only (no cache, inputs_embeds, return_dict_in_generate, stopping_criteria "
                         "or num_return_sequences); generate one prompt at a time instead")
    mask = torch.ones_like(ids) if mask is None else mask
    lengths = mask.sum(dim=1)
    width = ids.shape[1]
    left = torch.arange(width, device=mask.device)[None, :] >= (width - lengths)[:, None]
    if not torch.equal(mask.bool(), left):
        raise InputError("KV-cache compression needs left padding (each attention_mask row zeros, then ones); "
                         "pad on the left (tokenizer.padding_side = 'left') or generate one prompt at a time")
    groups: dict[Any, list[int]] = {}
    for row, n in enumerate(lengths.tolist()):
        groups.setdefault(row if policy.per_head else n, []).append(row)
    rest = {k: v for k, v in kwargs.items() if k not in ("input_ids", "attention_mask")}
    new: dict[int, torch.Tensor] = {}
    for rows in groups.values():
        n = int(lengths[rows[0]])
        sub = ids[rows, width - n:]
        out = generate(input_ids=sub, attention_mask=torch.ones_like(sub), **rest)
        new.update({row: out[i, n:] for i, row in enumerate(rows)})
    pad = kwargs.get("pad_token_id", getattr(model.generation_config, "pad_token_id", None))
    if pad is None:
        eos = getattr(model.generation_config, "eos_token_id", None)
        pad = (eos[0] if isinstance(eos, (list, tuple)) else eos) or 0
    result = torch.full((ids.shape[0], width + max(t.numel() for t in new.values())), int(pad), dtype=ids.dtype,
                        device=ids.device)
    result[:, :width] = ids
    for row, tokens in new.items():
        result[row, width:width + tokens.numel()] = tokens
    return result


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
    the original positions; ``None`` goes back to the full cache. Returns the policy it replaced. A batch
    with left padding is generated as the unpadded batches of its equal-length prompts, so eviction never
    mixes pad and text positions (and, with per-head budgets, one prompt at a time)."""
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
    if policy.per_head and getattr(model.config, "_attn_implementation", None) != "sdpa":
        raise InputError(f"{policy.name} keeps a different count per KV head, which needs sdpa attention; load the "
                         "model with attn_implementation='sdpa' (compresskit.load_model does)")
    if press is not None:
        press.check_ready()
    handles = [] if press is None else [
        get_module(block, spec.attention).register_forward_hook(_compress_hook(press, policy, len(blocks)),
                                                                with_kwargs=True)
        for block in blocks]
    generate = model.generate
    own = model.__dict__.get("generate")  # a generate set on the instance before (kept as it was)

    def generate_with_cache(*args: Any, **kwargs: Any):
        ids = args[0] if args else kwargs.get("input_ids")
        mask = kwargs.get("attention_mask")
        padded = mask is not None and not bool(mask.all())
        if padded or (policy.per_head and ids is not None and ids.shape[0] > 1):
            return _generate_by_length(generate_with_cache, model, policy, ids, mask, args[1:], kwargs)
        if kwargs.get("past_key_values") is None and kwargs.get("cache") is None:
            kwargs["cache"] = policy.cache_for(model)
        if policy.tail:
            _read_context_first(model, policy, kwargs.get("cache", kwargs.get("past_key_values")),
                                args[0] if args else kwargs.get("input_ids"))
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
