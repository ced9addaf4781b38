"""Selection: uniform per KV group, protected heads first, whole groups, layers."""
from __future__ import annotations

import torch

from compresskit.prune.select import (
    heads_of_groups, keep_kv_groups, keep_query_heads, layers_to_keep, protected_heads, top_indices,
)


def test_top_indices_sorted_with_ties_to_the_lower_index():
    assert top_indices(torch.tensor([1.0, 3.0, 3.0, 0.0]), 2).tolist() == [1, 2]


def test_query_heads_are_kept_uniformly_within_groups():
    scores = torch.tensor([0.1, 0.9, 0.5, 0.3, 0.2, 0.8])  # 2 groups of 3
    assert keep_query_heads(scores, 2, 2).tolist() == [1, 2, 3, 5]
    assert keep_query_heads(scores, 2, 1).tolist() == [1, 5]


def test_protected_heads_rank_first_in_their_group_and_counts_stay_uniform():
    scores = torch.tensor([0.1, 0.9, 0.5, 0.3, 0.2, 0.8])
    protected = torch.tensor([True, False, False, False, True, True])
    assert keep_query_heads(scores, 2, 1, protected).tolist() == [0, 5]
    assert keep_query_heads(scores, 2, 2, protected).tolist() == [0, 1, 4, 5]


def test_protected_mask_picks_the_top_heads_over_the_whole_model():
    r = torch.tensor([[0.0, 0.7], [0.9, 0.1]])
    assert protected_heads(r, 2).tolist() == [[False, True], [True, False]]
    assert not protected_heads(r, 0).any()


def test_whole_groups_by_summed_score_protected_groups_first():
    scores = torch.tensor([0.1, 0.1, 0.5, 0.5, 0.3, 0.3])  # 3 groups of 2
    assert keep_kv_groups(scores, 3, 1).tolist() == [1]
    prot = torch.tensor([True, False, False, False, False, False])
    assert keep_kv_groups(scores, 3, 2, prot).tolist() == [0, 1]
    assert heads_of_groups(torch.tensor([0, 2]), 2).tolist() == [0, 1, 4, 5]


def test_layers_by_block_influence_with_protection():
    bi = torch.tensor([0.5, 0.01, 0.3, 0.02])
    assert layers_to_keep(bi, 2).tolist() == [0, 2]
    assert layers_to_keep(bi, 2, torch.tensor([False, True, False, False])).tolist() == [0, 1]


def test_a_group_with_more_protected_heads_than_slots_keeps_its_best_retrieval_heads():
    scores = torch.tensor([0.9, 0.1, 0.5])  # one group of 3, keep 2, all protected
    protected = torch.tensor([True, True, True])
    retrieval = torch.tensor([0.1, 0.8, 0.6])
    assert keep_query_heads(scores, 1, 2, protected, retrieval).tolist() == [1, 2]
    assert keep_query_heads(scores, 1, 2, protected).tolist() == [0, 2]  # no priority: activation decides
