"""The one progress protocol: ``progress(n, message=None)``: ``n`` more units of work are done, and
``message`` (optional) says what is happening now.

Every call that takes ``progress`` calls it this way: `compresskit.quantize`, ``prune_model``,
``distill_model``, `compresskit.evaluate` (with ``n`` only), `compresskit.apply` and the passes' run
functions (``PassContext.progress``), and the rooms underneath them. The runner turns these calls into
``RecipeEvent``s for ``compresskit run`` and the commands' progress bars.
"""
from __future__ import annotations

from typing import Callable, Optional

Progress = Callable[..., None]
"""``progress(n: int, message: str | None = None) -> None``."""


def no_progress(n: int = 1, message: Optional[str] = None) -> None:
    """A progress callback that shows nothing."""
