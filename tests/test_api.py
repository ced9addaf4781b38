"""The API's evaluation helpers: compare (with and without a gate) and reading reports back."""
from __future__ import annotations

import json

import pytest

import compresskit
from compresskit import api
from compresskit.eval import EvalReport, EvalRow


def _report(ppl: float, acc: float) -> EvalReport:
    return EvalReport([EvalRow("ppl", 512, ppl, "ppl", False), EvalRow("vt", 512, acc, "acc", True)], 2.0)


def test_compare_without_thresholds_has_no_gate():
    c = compresskit.compare(_report(10.0, 100.0), _report(30.0, 0.0))
    assert c.gate is None and c.passed and [r.drop for r in c.rows] == [pytest.approx(200.0), 100.0]


def test_compare_with_thresholds():
    c = compresskit.compare(_report(10.0, 100.0), _report(11.0, 99.0), max_drop=1.0)
    assert c.gate.max_drop == 1.0 and c.gate.limit("ppl") == 1.0  # perplexity falls back to max_drop
    assert [r.task for r in c.failures] == ["ppl"]  # +10% > 1%; vt dropped exactly 1 point
    c = compresskit.compare(_report(10.0, 100.0), _report(11.0, 99.0), max_ppl_increase=15.0)
    assert c.gate.max_drop == 2.0 and c.passed  # the default point budget, perplexity +15% allowed


def test_load_report_reads_both_report_files(tmp_path):
    report = _report(10.0, 80.0)
    api.write_report(tmp_path / "r.json", report)
    assert api.load_report(tmp_path / "r.json").to_dict() == report.to_dict()
    compresskit.write_eval_report(tmp_path / "dir", report)
    assert api.load_report(tmp_path / "dir" / "report.json").to_dict() == report.to_dict()
    (tmp_path / "x.json").write_text(json.dumps({"hello": 1}))
    with pytest.raises(ValueError, match="not an evaluation report"):
        api.load_report(tmp_path / "x.json")


def test_evaluate_rejects_unknown_tasks_before_running(tiny_llama, tiny_tokenizer):
    with pytest.raises(ValueError, match="unknown eval task.*longbench:<dataset>"):
        compresskit.evaluate(tiny_llama, tiny_tokenizer, tasks=["nope"], cache=False)


def test_save_adds_files_inside_the_atomic_write(tmp_path, tiny_llama, tiny_tokenizer):
    report = tmp_path / "report"
    report.mkdir()
    (report / "report.md").write_text("# scores\n")
    out = api.save(tiny_llama, tiny_tokenizer, tmp_path / "out",
                   files={"recipe.yaml": "model: m\n", "notes/raw.bin": b"\x00\x01", "evaluation": report})
    assert (out / "recipe.yaml").read_text() == "model: m\n" and (out / "notes" / "raw.bin").read_bytes() == b"\x00\x01"
    assert (out / "evaluation" / "report.md").is_file()
    assert "```yaml\nmodel: m\n```" in (out / "README.md").read_text()  # the card shows a saved recipe
    with pytest.raises(ValueError, match="must be a relative name inside the saved directory"):
        api.save(tiny_llama, tiny_tokenizer, tmp_path / "bad", files={"../escape.txt": "x"})
    assert not (tmp_path / "bad").exists() and not (tmp_path / "escape.txt").exists()
