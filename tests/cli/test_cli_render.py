"""The CLI's progress display: notes do not stop a bar, and off a terminal a long phase logs its progress."""
from __future__ import annotations

import io
from types import SimpleNamespace

from rich.console import Console

from cli import render


def _events(on_event, units: int) -> None:
    on_event(SimpleNamespace(kind="phase", label="quantizing w3g64", n=units, message=""))
    on_event(SimpleNamespace(kind="note", label="", n=0, message="omniquant: the cpu preset"))
    for i in range(units):
        on_event(SimpleNamespace(kind="advance", label="", n=1, message=f"block {i}"))
    on_event(SimpleNamespace(kind="done", label="", n=0, message=""))


def test_a_note_prints_and_the_bar_keeps_counting(monkeypatch):
    out = io.StringIO()
    monkeypatch.setattr(render, "LOG_INTERVAL_S", 1e9)  # no log lines: only the bar's last drawing
    with render.phase_progress(Console(file=out, force_terminal=False, width=200)) as on_event:
        _events(on_event, 5)
    text = out.getvalue()
    assert "omniquant: the cpu preset" in text
    assert "5/5" in text and "0/5" not in text  # the bar drawn at its end counted every unit after the note
    assert "(1/5," not in text


def test_off_a_terminal_progress_lines_come_with_count_and_message(monkeypatch):
    out = io.StringIO()
    monkeypatch.setattr(render, "LOG_INTERVAL_S", 0.0)  # a line at every unit
    with render.phase_progress(Console(file=out, force_terminal=False, width=200)) as on_event:
        _events(on_event, 3)
    lines = out.getvalue().splitlines()
    for i in range(3):
        assert any(line.startswith(f"quantizing w3g64: block {i} ({i + 1}/3, 0:00:0") for line in lines), lines


def test_on_a_terminal_no_log_lines(monkeypatch):
    out = io.StringIO()
    monkeypatch.setattr(render, "LOG_INTERVAL_S", 0.0)
    with render.phase_progress(Console(file=out, force_terminal=True, width=200)) as on_event:
        _events(on_event, 3)
    assert "(1/3," not in out.getvalue()  # the live bar shows it there


def test_a_recipe_run_off_a_terminal_logs_its_stage_progress(monkeypatch):
    from cli import recipe

    out = io.StringIO()
    monkeypatch.setattr(recipe, "console", Console(file=out, force_terminal=False, width=200))
    monkeypatch.setattr(render, "LOG_INTERVAL_S", 0.0)
    stage = SimpleNamespace(position=1, kind="quantize", step=SimpleNamespace(name="quantize"), path="work/1")
    plan = SimpleNamespace(stages=[stage], recipe=SimpleNamespace(name="r"))
    with recipe.recipe_progress(plan) as on_event:
        on_event(SimpleNamespace(kind="start", stage=stage, n=2, message="", seconds=0.0, label=""))
        for i in range(2):
            on_event(SimpleNamespace(kind="advance", stage=stage, n=1, message=f"block {i}", seconds=0.0, label=""))
        on_event(SimpleNamespace(kind="done", stage=stage, n=0, message="", seconds=1.0, label=""))
    text = out.getvalue()
    assert "1/1 quantize: block 0 (1/2, " in text and "1/1 quantize: block 1 (2/2, " in text, text
    assert "done in 1.0s" in text
