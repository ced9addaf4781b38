"""evaluate(): task validation, progress sizing, report round-trip."""
from __future__ import annotations

import json

import pytest
from conftest import TINY_TEXT

from compresskit.eval import (
    EvalReport,
    EvalRow,
    count_tokens,
    evaluate,
    passkey,
    perplexity,
    total_units,
)

TEXT = TINY_TEXT * 3


def test_evaluate_runs_all_and_matches_task_functions(tiny_llama, tiny_tokenizer):
    calls: list[int] = []
    report = evaluate(
        tiny_llama, tiny_tokenizer, lengths=(192, 256), text=TEXT, ppl_windows=3, passkey_trials=2,
        seed=1, progress=calls.append,
    )
    assert [(r.task, r.length) for r in report.rows] == [("ppl", 192), ("ppl", 256), ("passkey", 192), ("passkey", 256)]
    expected_units = total_units(
        ("ppl", "passkey"), (192, 256), text_tokens=count_tokens(tiny_tokenizer, TEXT), ppl_windows=3,
        passkey_trials=2,
    )
    assert sum(calls) == expected_units == 3 + 3 + 2 + 2
    ppl_row = report.get("ppl", 192)
    assert ppl_row.metric == "ppl" and ppl_row.higher_is_better is False
    assert ppl_row.score == pytest.approx(perplexity(tiny_llama, tiny_tokenizer, TEXT, 192, max_windows=3).ppl)
    pk_row = report.get("passkey", 256)
    assert pk_row.metric == "acc" and pk_row.higher_is_better is True
    assert pk_row.details == passkey(tiny_llama, tiny_tokenizer, 256, trials=2, seed=1).to_dict()
    assert report.get("passkey", 999) is None
    assert report.seconds > 0


def test_total_units_caps_by_text():
    assert total_units(("ppl",), (100, 1000), text_tokens=950, ppl_windows=8) == 8 + 0
    assert total_units(("ppl",), (100,), text_tokens=950, ppl_windows=None) == 9
    assert total_units(("passkey",), (100, 200, 300), passkey_trials=4) == 12
    with pytest.raises(ValueError, match="known tasks"):
        total_units(("nope",), (100,))


def test_unknown_task_and_missing_text(tiny_llama, tiny_tokenizer):
    with pytest.raises(ValueError, match=r"unknown eval task\(s\) \['rouge'\]; known tasks: ppl, passkey"):
        evaluate(tiny_llama, tiny_tokenizer, tasks=("ppl", "rouge"), text=TEXT)
    with pytest.raises(ValueError, match="needs text"):
        evaluate(tiny_llama, tiny_tokenizer, tasks=("ppl",), lengths=(64,))


def test_fails_fast_before_running_anything(tiny_llama, tiny_tokenizer):
    calls: list[int] = []
    with pytest.raises(ValueError, match="max_position_embeddings=512"):
        evaluate(tiny_llama, tiny_tokenizer, tasks=("passkey", "ppl"), lengths=(192, 1024), text=TEXT * 3,
                 progress=calls.append)
    with pytest.raises(ValueError, match="too short"):
        evaluate(tiny_llama, tiny_tokenizer, tasks=("passkey",), lengths=(5,), progress=calls.append)
    assert calls == []


def test_passkey_only_needs_no_text(tiny_llama, tiny_tokenizer):
    report = evaluate(tiny_llama, tiny_tokenizer, tasks=("passkey",), lengths=(200,), passkey_trials=1)
    assert len(report.rows) == 1 and len(report.rows[0].details["trials"]) == 1


def test_report_round_trip_and_table():
    report = EvalReport(
        rows=[
            EvalRow("ppl", 1024, 12.3456, "ppl", False, {"ppl": 12.3456, "windows": 8}),
            EvalRow("passkey", 1024, 80.0, "acc", True, {"trials": [{"key": 12345, "correct": True}]}),
        ],
        seconds=3.5,
    )
    again = EvalReport.from_dict(json.loads(json.dumps(report.to_dict())))
    assert again == report
    assert again.get("passkey", 1024).details["trials"][0]["key"] == 12345
    assert report.table() == [
        ["task", "length", "metric", "score", "better"],
        ["ppl", "1024", "ppl", "12.346", "lower"],
        ["passkey", "1024", "acc", "80.0%", "higher"],
    ]


def test_eval_imports_only_torch_transformers_stdlib():
    """Plus the optional ones, imported inside functions only: matplotlib (plots), lm_eval (harness),
    jieba (Chinese LongBench metrics)."""
    import ast
    import pathlib
    import sys

    import compresskit.eval as ev

    allowed = {"torch", "transformers", "numpy", "__future__"} | set(sys.stdlib_module_names)
    lazy = {"matplotlib", "lm_eval", "jieba"}
    for path in pathlib.Path(ev.__file__).parent.glob("*.py"):
        tree = ast.parse(path.read_text())
        top = {id(n) for n in tree.body}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module]
            else:
                continue
            for name in names:
                if name.split(".")[0] in lazy:
                    assert id(node) not in top, f"{path.name} imports {name} at module level"
                    continue
                ok = name.split(".")[0] in allowed or name == "compresskit.core" or name.startswith("compresskit.core.")
                assert ok, f"{path.name} imports {name}"


def test_ruler_tasks_run_through_evaluate(tiny_llama, tiny_tokenizer):
    from compresskit.eval import ruler

    calls: list[int] = []
    report = evaluate(tiny_llama, tiny_tokenizer, tasks=("niah", "vt"), lengths=(900,), text=TEXT, samples=2,
                      seed=3, progress=calls.append)
    assert [(r.task, r.length, r.metric) for r in report.rows] == [("niah_single_1", 900, "acc"), ("vt", 900, "acc")]
    direct = ruler(tiny_llama, tiny_tokenizer, "niah_single_1", 900, samples=2, seed=3, haystack_text=TEXT)
    assert report.rows[0].details == direct.to_dict() and report.rows[0].score == direct.score
    assert sum(calls) == 4 == total_units(("niah", "vt"), (900,), samples=2)
    with pytest.raises(ValueError, match="too short"):
        evaluate(tiny_llama, tiny_tokenizer, tasks=("vt",), lengths=(50,), text=TEXT)


def test_longbench_task_reads_local_files(tiny_llama, tiny_tokenizer, tmp_path):
    rows = [{"input": "", "context": f"Paragraph 1: alpha. Paragraph 2: beta {i}.", "answers": ["2"], "length": 6,
             "dataset": "passage_count", "language": "en", "all_classes": None, "_id": str(i)} for i in range(3)]
    (tmp_path / "passage_count.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    report = evaluate(tiny_llama, tiny_tokenizer, tasks=("longbench:passage_count",), lengths=(256,),
                      longbench_path=tmp_path, longbench_limit=2)
    row = report.rows[0]
    assert (row.task, row.metric, row.details["n"], row.details["max_length"]) == ("longbench:passage_count", "score", 2, 256)
    assert row.score == pytest.approx(100 * sum(s["score"] for s in row.details["samples"]) / 2, abs=0.01)
    with pytest.raises(ValueError, match="needs longbench_path"):
        evaluate(tiny_llama, tiny_tokenizer, tasks=("longbench:passage_count",), lengths=(256,))
    with pytest.raises(ValueError, match="nope"):
        evaluate(tiny_llama, tiny_tokenizer, tasks=("longbench:nope",), lengths=(256,), longbench_path=tmp_path)
