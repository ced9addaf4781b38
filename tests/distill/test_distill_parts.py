"""``part_parameters``: the float weights of named student parts, found through the ArchSpec."""
from __future__ import annotations

import pytest
from conftest import make_tiny_model

from compresskit.distill import part_parameters


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_parts_partition_the_float_weights(family):
    model = make_tiny_model(family, tie_word_embeddings=False)
    names = {id(p): n for n, p in model.named_parameters()}
    by_part = {part: {names[id(p)] for p in part_parameters(model, (part,))}
               for part in ("attention", "mlp", "norms", "embed", "lm_head")}
    assert by_part["attention"] == {n for n in names.values() if ".self_attn." in n}
    assert by_part["mlp"] == {n for n in names.values() if ".mlp." in n}
    assert by_part["norms"] == {n for n in names.values() if "norm" in n}
    assert by_part["embed"] == {"model.embed_tokens.weight"} and by_part["lm_head"] == {"lm_head.weight"}
    assert set().union(*by_part.values()) == set(names.values())  # together they are every weight
    assert sum(map(len, by_part.values())) == len(names)  # and no weight is in two parts
    assert [names[id(p)] for p in part_parameters(model, ())] == list(names.values())  # empty: all, in order


def test_tied_embeddings_are_one_tensor():
    model = make_tiny_model("llama", tie_word_embeddings=True)
    assert part_parameters(model, ("embed", "lm_head")) == [model.model.embed_tokens.weight]
