"""One vocabulary across commands: the same evaluation and gate options with the same defaults on every
evaluating command, `--json` meaning "JSON on stdout", `--version`, and the documented exit codes."""
from __future__ import annotations

import json

import pytest
import typer
from typer.testing import CliRunner

import compresskit
from compresskit.cli.common import EXIT_GATE_FAILED, EXIT_USER_ERROR
from compresskit.cli.main import app

EVALUATING = ("quantize", "prune", "distill", "apply", "eval")
SHARED = ("--tasks", "--lengths", "--ppl-windows", "--passkey-trials", "--samples", "--longbench",
          "--longbench-limit", "--max-drop", "--max-ppl-increase")


def _options(command: str) -> dict[str, object]:
    """option spelling -> its click parameter, for one command of the app."""
    group = typer.main.get_command(app)
    return {opt: p for p in group.commands[command].params for opt in p.opts}


def test_every_evaluating_command_has_the_same_evaluation_and_gate_options():
    defaults: dict[str, set] = {}
    for command in EVALUATING:
        opts = _options(command)
        missing = [o for o in SHARED if o not in opts]
        assert not missing, f"{command} lacks {missing}"
        assert "--eval" in opts and opts["--eval"] is opts["--tasks"], f"{command}: --eval is --tasks' old spelling"
        for o in ("--ppl-windows", "--passkey-trials", "--samples"):
            defaults.setdefault(o, set()).add(opts[o].default)
    assert all(len(v) == 1 for v in defaults.values()), defaults
    for command in ("quantize", "prune", "distill", "apply"):
        assert {"--force", "--no-eval"} <= set(_options(command)), command


def test_json_is_a_flag_wherever_it_exists():
    group = typer.main.get_command(app)
    having = [name for name in group.commands if "--json" in _options(name)]
    assert {"eval", "info", "kernels"} <= set(having)
    assert all(_options(name)["--json"].is_flag for name in having), having


def test_version():
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.stdout.strip() == f"compresskit {compresskit.__version__}"


def test_kernels_json_parses():
    result = CliRunner().invoke(app, ["kernels", "--json"])
    assert result.exit_code == 0
    rows = json.loads(result.stdout)
    assert rows and {"backend", "here"} <= set(rows[0])


@pytest.mark.parametrize("args", [["quantize", "smollm2-135m", "-o", "x", "--wbits", "5"],
                                  ["eval", "smollm2-135m", "--tasks", "nosuchtask"]])
def test_bad_input_exits_with_the_user_error_code(args, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, args)
    assert result.exit_code == EXIT_USER_ERROR, result.output
    assert result.stderr.startswith("error:") and not any(tmp_path.iterdir())


# -- --device / --dtype ------------------------------------------------------------------------------------
DEVICE_COMMANDS = ("quantize", "prune", "distill", "apply", "eval", "kv", "run")


def test_every_command_that_loads_a_model_takes_device_and_dtype_defaulting_to_auto():
    for command in DEVICE_COMMANDS:
        opts = _options(command)
        assert opts["--device"].default == "auto" and opts["--dtype"].default == "auto", command


@pytest.mark.parametrize("gpu,bf16,want", [(False, False, ("cpu", "float32")), (True, True, ("cuda", "bfloat16")),
                                           (True, False, ("cuda", "float16"))])
def test_auto_picks_the_gpu_in_bf16_or_fp16_else_the_cpu_in_fp32(monkeypatch, gpu, bf16, want):
    import torch

    from compresskit import api

    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    monkeypatch.setattr(torch.xpu, "is_available", lambda: False)
    device = api.resolve_device("auto")
    assert (device, str(api.resolve_dtype("auto", device)).removeprefix("torch.")) == want
    assert api.resolve_dtype("float16", "cpu") == torch.float16  # explicit wins


@pytest.mark.parametrize("args,message", [
    (["--device", "cuda"], "no CUDA GPU"), (["--device", "tpu"], "not a device"),
    (["--dtype", "float64"], "not one of auto, bfloat16, float16, float32")])
def test_a_device_or_dtype_this_machine_cannot_use_fails_before_any_work(monkeypatch, tmp_path, args, message):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["quantize", "smollm2-135m", "-o", "out", *args])
    assert result.exit_code == EXIT_USER_ERROR and message in result.stderr and not any(tmp_path.iterdir())


def test_the_chosen_device_and_dtype_reach_the_loader(monkeypatch, tiny_dir, tmp_path):
    import compresskit.runner

    seen = []
    real = compresskit.runner.load_model

    def spy(name, **kw):
        seen.append(kw)
        return real(name, **kw)

    monkeypatch.setattr(compresskit.runner, "load_model", spy)
    result = CliRunner().invoke(app, ["quantize", str(tiny_dir), "-o", str(tmp_path / "q"), "--group-size", "32",
                                      "--no-eval", "--device", "cpu", "--dtype", "bfloat16"])
    assert result.exit_code == 0, result.output
    assert seen == [{"device": "cpu", "dtype": "bfloat16"}]
