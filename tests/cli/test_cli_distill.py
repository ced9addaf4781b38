"""``compresskit distill`` on tiny saved models: teacher / before / after table, a saved student that
reloads, resumable state, and bad inputs as one-line errors before any work."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from conftest import make_tiny_model
from typer.testing import CliRunner

from compresskit import api, api_passes
from compresskit.cli.main import app

SMALL = ["--seqlen", "64", "--steps", "3", "--lr", "3e-3", "--data", "builtin"]
SMALL_EVAL = ["--tasks", "ppl,passkey", "--lengths", "200", "--ppl-windows", "1", "--passkey-trials", "1"]


@pytest.fixture(scope="module")
def dirs(tmp_path_factory, tiny_tokenizer) -> tuple[Path, Path]:
    """A teacher trained a little on the start of the held-out text (where the CLI's perplexity windows
    are), so a pruned student is clearly worse than it, and that student saved as a pruned checkpoint."""
    root = tmp_path_factory.mktemp("distill")
    teacher = make_tiny_model("llama", num_hidden_layers=3)
    ids = tiny_tokenizer(api.heldout_text()[:20000], return_tensors="pt")["input_ids"][:, :800].view(4, 200)
    opt = torch.optim.Adam(teacher.parameters(), lr=3e-3)
    for _ in range(40):
        opt.zero_grad()
        teacher(ids, labels=ids).loss.backward()
        opt.step()
    teacher.eval().save_pretrained(root / "teacher")
    tiny_tokenizer.save_pretrained(root / "teacher")
    student = copy.deepcopy(teacher)
    api.prune(student, mlp=0.5, layers=1, protect_retrieval=False, calib=ids[:, :64])
    api.save(student, tiny_tokenizer, root / "student")
    return root / "teacher", root / "student"


def test_distill_prints_teacher_before_after_and_saves(tmp_path, dirs):
    teacher, student = dirs
    out = tmp_path / "distilled"
    result = CliRunner().invoke(app, ["distill", "--teacher", str(teacher), "--student", str(student),
                                      "--output", str(out), "--hidden-weight", "0.5", *SMALL, *SMALL_EVAL])
    assert result.exit_code == 0, result.output
    for needle in ("teacher", "before", "after", "gap closed", "perplexity @ 200", "passkey @ 200", "distill loss"):
        assert needle in result.output
    cfg = json.loads((out / "config.json").read_text())
    d = cfg["compresskit_distillation"]
    assert d["steps"] == 3 and d["recipe"]["hidden_weight"] == 0.5 and "evaluation" not in d
    assert set(json.loads((out / "compresskit_evaluation.json").read_text())) == {"teacher", "before", "after", "gate"}
    assert cfg["compresskit_pruning"]["kept_layers"]  # the pruning record is kept
    assert (out / "distillation.json").is_file() and (out / "evaluation" / "report.json").is_file()
    assert not out.with_name(out.name + ".distill-state").exists()  # removed after saving
    model, _ = api.load_model(out)
    assert model.config.num_hidden_layers == 2
    info = CliRunner().invoke(app, ["info", str(out)])
    assert info.exit_code == 0 and "distillation" in info.output
    assert api.info(out)["distillation"]["steps"] == 3


def test_train_parts_reach_the_recipe_and_leave_the_rest_alone(tmp_path, dirs):
    teacher, student = dirs
    out = tmp_path / "mlp-only"
    result = CliRunner().invoke(app, ["distill", "--teacher", str(teacher), "--student", str(student), "--output",
                                      str(out), "--no-eval", "--train-parts", "mlp", *SMALL])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "config.json").read_text())["compresskit_distillation"]["recipe"]["train_parts"] == ["mlp"]
    (before, _), (after, _) = api.load_model(student), api.load_model(out)
    old, new = dict(before.named_parameters()), dict(after.named_parameters())
    assert all(torch.equal(p, old[n]) == (".mlp." not in n) for n, p in new.items())


def test_keep_state_and_resume_message(tmp_path, dirs):
    teacher, student = dirs
    out, state = tmp_path / "d", tmp_path / "state"
    args = ["distill", "--teacher", str(teacher), "--student", str(student), "--no-eval", "--work-dir", str(state),
            "--checkpoint-every", "1", "--keep-state", *SMALL]
    first = CliRunner().invoke(app, [*args, "--output", str(out)])
    assert first.exit_code == 0, first.output
    assert (state / "checkpoint").is_dir()
    again = CliRunner().invoke(app, [*args, "--output", str(tmp_path / "d2")])
    assert again.exit_code == 0 and "resuming from" in again.output


def test_gate_failure_does_not_save(tmp_path, dirs):
    teacher, student = dirs
    out = tmp_path / "gated"
    result = CliRunner().invoke(app, ["distill", "--teacher", str(teacher), "--student", str(student), "--output",
                                      str(out), "--max-drop", "0", "--max-ppl-increase", "0", *SMALL, *SMALL_EVAL])
    assert result.exit_code == 3 and "not saved" in result.output
    assert not out.exists() and out.with_name("gated.gate-report").is_dir()


@pytest.mark.parametrize("args,needle", [
    (["--seqlen-schedule", "16,32"], "must end at the longest length, --seqlen 64"),
    (["--lora", "--quant-params-only"], "exclude each other"),
    (["--quant-params-only"], "has no quantized layer"),
    (["--seqlen", "4096"], "exceeds the student's context"),
    (["--hidden-loss", "l2"], "use one of cosine, mse"),
    (["--train-parts", "mlp,heads"], "train_parts ['heads'] unknown"),
])
def test_bad_settings_are_one_line_errors_before_any_work(tmp_path, dirs, args, needle):
    teacher, student = dirs
    base = ["distill", "--teacher", str(teacher), "--student", str(student), "--output", str(tmp_path / "x"),
            "--steps", "2", "--seqlen", "64", "--no-eval"]
    result = CliRunner().invoke(app, [*base, *args])
    assert result.exit_code == 2, result.output
    assert needle in result.output and "Traceback" not in result.output
    assert not (tmp_path / "x").exists()


def test_existing_output_is_refused(tmp_path, dirs):
    teacher, student = dirs
    (tmp_path / "exists").mkdir()
    result = CliRunner().invoke(app, ["distill", "--teacher", str(teacher), "--student", str(student),
                                      "--output", str(tmp_path / "exists"), *SMALL])
    assert result.exit_code == 2 and "already exists" in result.output and "--overwrite" in result.output


def test_other_processes_train_but_do_not_evaluate_or_save(tmp_path, dirs, monkeypatch):
    teacher, student = dirs
    monkeypatch.setattr(api, "is_main_process", lambda: False)  # as a non-main rank of accelerate launch
    ran = []
    real = api_passes.distill  # what the distill pass calls
    monkeypatch.setattr(api_passes, "distill", lambda *a, **k: ran.append(k.get("progress")) or real(*a, **k))
    out = tmp_path / "rank1"
    result = CliRunner().invoke(app, ["distill", "--teacher", str(teacher), "--student", str(student), "--output",
                                      str(out), *SMALL, *SMALL_EVAL])
    assert result.exit_code == 0, result.output
    assert ran == [None]  # it trained, without a progress display of its own
    assert not out.exists() and "teacher" not in result.output  # no evaluation table, nothing saved


def test_retrieval_depth_reaches_the_recipe_and_a_bad_one_is_refused(tmp_path, dirs):
    teacher, student = dirs
    base = ["distill", "--teacher", str(teacher), "--student", str(student), "--no-eval", "--seqlen", "256",
            "--steps", "1", "--data", "builtin", "--retrieval-mix", "1"]
    out = tmp_path / "far"
    result = CliRunner().invoke(app, [*base, "--output", str(out), "--retrieval-depth", "0.5"])
    assert result.exit_code == 0, result.output
    recipe = json.loads((out / "config.json").read_text())["compresskit_distillation"]["recipe"]
    assert (recipe["retrieval_mix"], recipe["retrieval_depth"]) == (1.0, 0.5)
    bad = CliRunner().invoke(app, [*base, "--output", str(tmp_path / "bad"), "--retrieval-depth", "0"])
    assert bad.exit_code != 0 and "retrieval_depth=0.0" in bad.output and "(0, 1]" in bad.output
    assert not (tmp_path / "bad").exists()


def test_info_shows_omniquant_long_stage_after_a_round_trip(tmp_path, tiny_tokenizer):
    from compresskit.quant.omniquant import OmniQuantConfig

    model = make_tiny_model("llama")
    model.config.max_position_embeddings = 4096  # room for the long-window stage after the 2048-token one
    api.quantize(model, OmniQuantConfig(wbits=3, group_size=32, epochs=1, nsamples=2, seqlen=32, embed_bits=16,
                                        preset="published", finetune_steps=1, finetune_long_steps=1),
                 tokenizer=tiny_tokenizer)
    api.save(model, tiny_tokenizer, tmp_path / "m")
    info = api.info(tmp_path / "m")
    assert info["distillation"]["steps"] == 1 and info["distillation"]["long_stage"]["recipe"]["seqlen"] == 4096
    report = json.loads((tmp_path / "m" / "quantization_report.json").read_text())
    assert report["long_distillation"]["recipe"]["retrieval_depth"] == 0.5
    result = CliRunner().invoke(app, ["info", str(tmp_path / "m")])
    cells = " ".join(result.output.replace("\u2502", " ").split())  # the table's wrapped cells, read in order
    assert result.exit_code == 0 and "1 steps, 2048 tokens" in cells and "then 1 steps at 4096 tokens" in cells
