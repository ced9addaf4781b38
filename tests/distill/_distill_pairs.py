"""Tiny teacher/student pairs for distillation tests: a random-init 2-layer Llama, a copy with its
weights perturbed (which distillation can undo, so the KL falls far) and a copy with half its MLP
channels pruned (structurally smaller)."""
from __future__ import annotations

import copy

import torch
from conftest import make_tiny_model

VOCAB = 320


def token_stream(n: int = 20000, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (n,), generator=torch.Generator().manual_seed(seed))


def teacher(seed: int = 0, **overrides) -> torch.nn.Module:
    return make_tiny_model("llama", seed=seed, initializer_range=0.05, **overrides)


def perturbed_student(model: torch.nn.Module, rel: float = 1.0, seed: int = 3) -> torch.nn.Module:
    """Gaussian noise of ``rel`` times each weight's std on every weight but the norms."""
    student = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in student.named_parameters():
            if "norm" not in name:
                p.add_(torch.randn(p.shape, generator=g) * rel * p.std())
    return student


def pruned_student(model: torch.nn.Module, mlp: float = 0.5) -> torch.nn.Module:
    from compresskit import api

    student = copy.deepcopy(model)
    api.prune(student, mlp=mlp, protect_retrieval=False, calib=token_stream(512, seed=9).view(8, 64))
    return student


def windows_fn(stream: torch.Tensor):
    """``samples(seqlen, n, stage)`` cutting windows from ``stream`` at seeded offsets (deterministic)."""
    def samples(seqlen: int, n: int, stage: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(100 + stage)
        starts = torch.randint(0, stream.numel() - seqlen, (n,), generator=g)
        return torch.stack([stream[s:s + seqlen] for s in starts.tolist()])
    return samples


@torch.no_grad()
def mean_kl(student: torch.nn.Module, teacher_model: torch.nn.Module, ids: torch.Tensor) -> float:
    from compresskit.distill import token_kl

    return float(token_kl(student(ids).logits, teacher_model(ids).logits).mean())
