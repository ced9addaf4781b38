"""What bench scripts share: timing a call (`median_time`) and writing results, ``OUT.md`` (the table)
and ``OUT.json`` (settings and rows).

Bench scripts are run by path (``python bench/prune.py``), so this sits beside them and is imported
as ``_results``.
"""
from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any, Callable


def median_time(fn: Callable[[], Any], repeats: int, sync: Callable[[], Any] = lambda: None) -> float:
    """Median seconds of ``repeats`` calls of ``fn`` after one warm-up call; ``sync`` (e.g.
    ``torch.cuda.synchronize``) runs after each call so queued GPU work is counted."""
    fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def write_results(out: str | Path, md: str, data: dict[str, Any], echo: bool = False) -> None:
    """Write ``md`` to ``out.md`` and ``data`` to ``out.json`` (creating the folder); print ``md`` if ``echo``."""
    if echo:
        print("\n" + md)
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.with_suffix(".md").write_text(md)
    path.with_suffix(".json").write_text(json.dumps(data, indent=2) + "\n")
