"""The block-by-block machinery: statistics of a block's linears with and without the rest of the forward."""
from __future__ import annotations

import pytest
import torch
from conftest import make_tiny_model

from compresskit.core.arch import get_arch, get_module
from compresskit.quant.blockwise import capture_block_inputs, run_block


def _first_block(family: str = "llama"):
    model = make_tiny_model(family)
    ids = torch.randint(0, model.config.vocab_size, (3, 24), generator=torch.Generator().manual_seed(0))
    stream, kwargs = capture_block_inputs(model, ids, batch_size=2)
    return get_arch(model).blocks_of(model)[0], stream, kwargs


def _gram_reference(block, name: str, stream, kwargs) -> torch.Tensor:
    """X^T X / n of one linear's inputs, taken with a plain hook over the whole stream in one forward."""
    seen = []
    h = get_module(block, name).register_forward_pre_hook(lambda m, a: seen.append(a[0].reshape(-1, a[0].shape[-1])))
    with torch.no_grad():
        block(stream, **kwargs)
    h.remove()
    x = torch.cat(seen).double()
    return (x.t() @ x / x.shape[0]).float()


@pytest.mark.parametrize("family", ["llama", "qwen2"])
@pytest.mark.parametrize("names", [["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"],
                                   ["self_attn.o_proj"], ["mlp.gate_proj", "mlp.up_proj"], ["mlp.down_proj"]])
def test_early_stop_gives_the_full_forwards_grams(family, names):
    block, stream, kwargs = _first_block(family)
    mods = {n: get_module(block, n) for n in names}
    full_out, full = run_block(block, stream, kwargs, 2, grams_of=mods)
    none, early = run_block(block, stream, kwargs, 2, grams_of=mods, outputs=False)
    assert none is None and full_out.shape == stream.shape
    for n in names:
        ref = _gram_reference(block, n, stream, kwargs)
        assert torch.allclose(early[f"gram.{n}"], full[f"gram.{n}"], rtol=0, atol=0)
        assert torch.allclose(early[f"gram.{n}"], ref, rtol=1e-4, atol=1e-5)


def test_early_stop_skips_the_rest_of_the_block():
    block, stream, kwargs = _first_block()
    calls = []
    h = block.mlp.register_forward_pre_hook(lambda m, a: calls.append(1))
    try:
        run_block(block, stream, kwargs, 2, grams_of={"q": block.self_attn.q_proj}, outputs=False)
        assert calls == []  # the MLP never ran for the attention projections' statistics
        run_block(block, stream, kwargs, 2, grams_of={"d": block.mlp.down_proj}, outputs=False)
        assert len(calls) == 2  # two micro-batches of the 3 samples
    finally:
        h.remove()


def test_a_module_outside_the_block_is_an_error_not_an_empty_statistic():
    block, stream, kwargs = _first_block()
    stranger = torch.nn.Linear(4, 4)
    with pytest.raises(RuntimeError, match="never reached"):
        run_block(block, stream, kwargs, 2, grams_of={"x": stranger}, outputs=False)
    with pytest.raises(ValueError, match="computes nothing"):
        run_block(block, stream, kwargs, 2, outputs=False)
