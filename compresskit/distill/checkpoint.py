"""Training state on disk: accelerate's ``save_state`` / ``load_state`` (model as safetensors, optimizer,
RNG of every process, registered objects: the scheduler and `TrainState`) in ``WORK_DIR/checkpoint``,
written under a temporary name and swapped in, with the config it belongs to."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from ..core.config import ConfigError
from ..core.fsutil import write_json_atomic
from .config import DistillConfig

CHECKPOINT = "checkpoint"
CONFIG_FILE = "distill_config.json"


class TrainState:
    """Counters restored on resume: optimizer steps done (the data position follows from it: every
    stage's windows are drawn deterministically and consumed in order), tokens, seconds, loss history."""

    def __init__(self) -> None:
        self.step = 0
        self.tokens = 0
        self.seconds = 0.0
        self.history: list[dict[str, Any]] = []

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "tokens": self.tokens, "seconds": self.seconds, "history": list(self.history)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step, self.tokens = int(state["step"]), int(state["tokens"])
        self.seconds, self.history = float(state["seconds"]), list(state["history"])


def checkpoint_path(work_dir: str | Path) -> Path:
    """The checkpoint directory; a swap interrupted after the old one was moved aside is undone first."""
    work_dir = Path(work_dir)
    final, old = work_dir / CHECKPOINT, work_dir / f".{CHECKPOINT}-old"
    if not final.exists() and old.exists():
        old.rename(final)
    return final


def has_checkpoint(work_dir: str | Path | None) -> bool:
    return work_dir is not None and (checkpoint_path(work_dir) / CONFIG_FILE).is_file()


def check_resumable(work_dir: str | Path, config: DistillConfig) -> None:
    """Raise ConfigError when the checkpoint was written for a different run (other settings)."""
    saved = json.loads((checkpoint_path(work_dir) / CONFIG_FILE).read_text())
    want = config.resume_key()
    have = {k: v for k, v in saved.items() if k in want}
    diff = sorted(k for k in want if have.get(k) != want[k])
    if diff:
        shown = ", ".join(f"{k}: {have.get(k)!r} -> {want[k]!r}" for k in diff[:4])
        raise ConfigError(f"{work_dir} holds a distillation checkpoint of different settings ({shown}); rerun with "
                          "the same settings to resume, or delete that directory (or pass another --work-dir) to "
                          "start over")


def save_checkpoint(accelerator: Any, work_dir: str | Path, config: DistillConfig) -> Path:
    """Write the full training state and swap it in for the previous checkpoint."""
    work_dir = Path(work_dir)
    final = checkpoint_path(work_dir)
    tmp, old = work_dir / f".{CHECKPOINT}-partial", work_dir / f".{CHECKPOINT}-old"
    if accelerator.is_main_process:
        work_dir.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_json_atomic(tmp / CONFIG_FILE, config.to_dict())
        if final.exists():
            final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator: Any, work_dir: str | Path) -> None:
    accelerator.load_state(str(checkpoint_path(work_dir)))
