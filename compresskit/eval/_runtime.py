"""Small runtime helpers shared by the eval tasks (no task logic here).

Models handed to the eval room may hold custom quantized modules, so these helpers only look at
module flags and parameter *metadata* (the device), never at weight values.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

from ..core.progress import Progress as _Progress

Progress = _Progress | None
"""Optional callback (compresskit.core.progress), called with the number of work units (windows, trials)
just finished."""


@contextmanager
def eval_mode(model: Any) -> Iterator[None]:
    """Run the body with ``model.eval()`` under ``torch.inference_mode()``; restore the train flag after."""
    was_training = bool(getattr(model, "training", False))
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        if was_training:
            model.train(True)


def model_device(model: Any) -> torch.device:
    """The device inputs should be placed on: ``model.device`` if present, else the first parameter's."""
    device = getattr(model, "device", None)
    if isinstance(device, torch.device):
        return device
    try:
        return next(model.parameters()).device
    except (AttributeError, StopIteration):
        return torch.device("cpu")


def report(progress: Progress, units: int) -> None:
    """Forward ``units`` finished units to the optional progress callback."""
    if progress is not None and units > 0:
        progress(units)
