"""What compresskit writes and pushes holds no local path and no token, and is readable like any file:
quantize (with its evaluation, plots and a push), prune, export and a recipe run from a model in a local
directory, every file read back byte by byte."""
from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest
from hub_server import TOKEN, HubServer  # tests/hub_server.py: the local hub
from typer.testing import CliRunner

from compresskit.cli.main import app

SMALL = ["--tasks", "ppl,passkey", "--lengths", "200", "--ppl-windows", "1", "--passkey-trials", "1"]


@pytest.fixture
def hub(monkeypatch):
    import huggingface_hub.constants

    with HubServer() as server:
        monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", server.endpoint)
        yield server


@pytest.fixture
def private_model(tmp_path, tiny_dir) -> Path:
    """The tiny model in a directory whose path must not leak."""
    path = tmp_path / "home-of-someone" / "private-models" / "tiny"
    shutil.copytree(tiny_dir, path)
    return path


def _leaks(files: dict[str, bytes], *secrets: str) -> list[str]:
    return [f"{name}: {s!r}" for name, data in files.items() for s in secrets if s.encode() in data]


def _tree(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def _run(*args: str) -> None:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output


def test_saved_exported_and_pushed_files_hold_no_local_path_nor_token(tmp_path, private_model, hub, monkeypatch):
    old_mask = os.umask(0o022)
    try:
        monkeypatch.setenv("HF_TOKEN", TOKEN)
        out = tmp_path / "outputs"
        data = private_model.parent / "calib.txt"
        data.write_text("A few words of calibration text, repeated. " * 200)
        _run("quantize", str(private_model), "-o", str(out / "q"), "--group-size", "32", *SMALL,
             "--push-to-hub", "tester/q")
        _run("prune", str(private_model), "-o", str(out / "p"), "--mlp", "0.25", "--no-protect-retrieval",
             "--calib", f"file:{data}", "--nsamples", "2", "--seqlen", "64", *SMALL)
        _run("export", str(out / "q"), "--format", "gptq", "--output", str(out / "e"))
        recipe = tmp_path / "home-of-someone" / "r.yaml"
        recipe.write_text(f"version: 1\nname: r\nmodel: {private_model}\noutput: {out / 'r'}\npasses:\n"
                          f"  - quantize: {{method: rtn, wbits: 4, group_size: 32}}\n"
                          f"  - eval: {{tasks: [ppl], lengths: [200], ppl_windows: 1}}\n  - save: {{}}\n")
        _run("run", str(recipe), "--set", f"work_dir={tmp_path / 'home-of-someone' / 'work'}")
    finally:
        os.umask(old_mask)
    secrets = (str(tmp_path), "home-of-someone", TOKEN)
    for name in ("q", "p", "e", "r"):
        files = _tree(out / name)
        assert files and not _leaks(files, *secrets), (name, _leaks(files, *secrets))
        for path in (out / name).rglob("*"):  # mkstemp/mkdtemp's 0600/0700 would lock the team out
            assert path.stat().st_mode & (stat.S_IRGRP | stat.S_IROTH), f"{path} is not readable by others"
    assert (out / "q" / "evaluation").is_dir() and list((out / "q" / "evaluation").glob("*.png"))
    pushed = hub.files("tester/q")
    assert "README.md" in pushed and not _leaks(pushed, *secrets)
    assert "tiny" in (out / "q" / "README.md").read_text()  # the parent is still named, by its last part
