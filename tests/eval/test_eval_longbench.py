"""LongBench: metrics against hand-computed values, the jsonl loader, prompt cutting, and end-to-end runs
with honest fake models (they read the question and the context out of the prompt ids)."""
from __future__ import annotations

import copy
import json
import re
import sys

import pytest
import torch
from _fake_lm import FakeLM  # tests/eval/_fake_lm.py

from compresskit.eval import longbench_metrics as M
from compresskit.eval.longbench import (
    DATASET_MAXLEN, DATASET_PROMPT, LongBenchRecord, LongBenchResult, build_prompt, head_tail, load_longbench,
    longbench, prompt_text,
)

EPS = 1e-7  # ROUGE-L's F = 2PR / (P + R + 1e-8), as in the rouge package


# ----------------------------------------------------------------------------- normalisation and F1
def test_normalize_answer():
    # lower -> drop punctuation -> drop whole-word articles -> collapse whitespace
    assert M.normalize_answer("The  Cat, sat on a MAT!\n") == "cat sat on mat"
    assert M.normalize_answer("Another theory; an apple") == "another theory apple"  # "an" only as a word
    assert M.normalize_answer("A.B.C.") == "abc"  # punctuation goes first, then "abc" is no article
    assert M.normalize_zh_answer("北京， 是 《中国》的首都。A") == "北京是《中国的首都a"  # official list lacks 《


def test_qa_f1():
    # "The cat sat" -> [cat, sat]; "a cat sat down" -> [cat, sat, down]: 2 common, P = 2/2, R = 2/3,
    # F1 = 2 * 1 * 2/3 / (1 + 2/3) = 0.8
    assert M.qa_f1_score("The cat sat", "a cat sat down") == pytest.approx(0.8)
    # multiset overlap: "cat cat" vs "cat" -> 1 common, P = 1/2, R = 1, F1 = 2/3
    assert M.qa_f1_score("cat cat", "cat") == pytest.approx(2 / 3)
    assert M.qa_f1_score("The Cat!", "cat") == 1.0
    assert M.qa_f1_score("dog", "cat") == 0.0 and M.qa_f1_score("", "cat") == 0.0
    assert M.qa_f1_score("the", "a") == 0.0  # both normalise to nothing


# ----------------------------------------------------------------------------- ROUGE-L
def test_rouge_l_single_sentence():
    # LCS("cats small chase mice today", "cats chase small mice") = 3 (cats chase mice);
    # R = 3/5 (reference tokens), P = 3/4 (prediction tokens), F = 2 * .45 / 1.35 = 2/3
    assert M.rouge_l_score("cats chase small mice", "cats small chase mice today") == pytest.approx(2 / 3, abs=EPS)
    # repeated tokens count once (set semantics): LCS "the cat on the mat" has 4 distinct tokens,
    # each side has 5 distinct tokens -> P = R = 4/5 -> F = 0.8
    assert M.rouge_l_score("the cat sat on the mat", "the cat lay on the mat") == pytest.approx(0.8, abs=EPS)
    assert M.rouge_l_score("Cat", "cat") == 0.0  # no lowercasing
    assert M.rouge_l_score("a b", "a b") == pytest.approx(1.0, abs=EPS)


def test_rouge_l_summary_level_union():
    # The rouge package's own example: reference r = w1..w5; prediction sentences c1 = w1 w2 w6 w7 w8 and
    # c2 = w1 w3 w8 w9 w5. LCS(r, c1) = w1 w2, LCS(r, c2) = w1 w3 w5, union {w1 w2 w3 w5} = 4.
    # R = 4/5, P = 4/8 (8 distinct prediction tokens), F = 2 * .4 / 1.3 = 8/13
    pred = "one two six seven eight. one three eight nine five"
    assert M.rouge_l_score(pred, "one two three four five.") == pytest.approx(8 / 13, abs=EPS)
    assert M.rouge_l_score("", "a b") == 0.0 and M.rouge_l_score("...", "a b") == 0.0  # no sentence
    assert M.rouge_l_score("a b", "") == 0.0


# ----------------------------------------------------------------------------- classification
CLASSES = ["Location", "Entity", "Description"]


@pytest.mark.parametrize(
    "prediction, truth, classes, expected",
    [
        ("Location", "Location", CLASSES, 1.0),
        ("Location or Entity", "Location", CLASSES, 0.5),  # two class names matched -> 1/2
        ("Entity", "Location", CLASSES, 0.0),
        ("no idea", "Location", CLASSES, 0.0),  # nothing matched: the official difflib fallback never runs
        # prediction "esports" contains both "sports" and "esports"; the truth "sports" is a substring of the
        # other class, which is not dropped (only names inside the truth are) -> 2 matches -> 1/2
        ("esports", "sports", ["sports", "esports", "news"], 0.5),
        # truth "esports": "sports" is a proper substring of the truth and is dropped -> 1 match -> 1
        ("esports", "esports", ["sports", "esports", "news"], 1.0),
        # official loop quirk: "port" is removed while iterating, so "sport" (next) is never checked and
        # stays: [sport, esports] -> 1/2
        ("esports", "esports", ["port", "sport", "esports"], 0.5),
    ],
)
def test_classification(prediction, truth, classes, expected):
    assert M.classification_score(prediction, truth, all_classes=classes) == expected


def test_classification_needs_classes():
    with pytest.raises(ValueError, match="all_classes"):
        M.classification_score("Location", "Location")


# ----------------------------------------------------------------------------- synthetic tasks, code
def test_retrieval_and_count():
    # numbers in the prediction: share equal to N of "Paragraph N"
    assert M.retrieval_score("Paragraph 3", "Paragraph 3") == 1.0
    assert M.retrieval_score("Paragraph 3 or Paragraph 13", "Paragraph 3") == 0.5  # [3, 13]
    assert M.retrieval_score("Paragraph 30", "Paragraph 3") == 0.0  # whole numbers, not prefixes
    assert M.retrieval_score("It is paragraph 3; Paragraph 3.", "Paragraph 3") == 1.0  # [3, 3]
    assert M.retrieval_score("the first one", "Paragraph 3") == 0.0  # no number at all
    assert M.retrieval_zh_score("答案是段落12", "段落12") == 1.0
    with pytest.raises(ValueError, match="Paragraph"):
        M.retrieval_score("3", "the third")
    assert M.count_score("5", "5") == 1.0
    assert M.count_score("There are 5 unique paragraphs out of 12", "5") == 0.5  # [5, 12]
    assert M.count_score("15", "5") == 0.0 and M.count_score("", "5") == 0.0
    assert M.count_score("5", 5) == 1.0


def test_code_sim():
    # leading newlines dropped, lines with "#", "//" or "`" skipped; first remaining line compared
    assert M.first_code_line("\n\n# add\n// c\nx = foo(1)\ny = 2") == "x = foo(1)"
    assert M.code_sim_score("\n# add\nx = foo(1)\ny = 2", "x = foo(1)") == 1.0
    # "return a + b" (12 chars) vs "return a+b" (10): difflib matches "return a", "+", "b" = 10 chars,
    # ratio 2 * 10 / 22 = 0.909 -> fuzz.ratio 91 -> 0.91
    assert M.code_sim_score("```python\nreturn a + b\n```", "return a+b") == 0.91
    assert M.code_sim_score("# only\n// comments", "x = 1") == 0.0  # "" vs non-empty
    # fuzz.ratio rounds with round(): 2 * 1 / 16 = 12.5 -> 12 (half to even)
    assert M.fuzz_ratio("abbbbbbb", "accccccc") == 12
    assert M.fuzz_ratio("", "") == 100 and M.fuzz_ratio("", "a") == 0


# ----------------------------------------------------------------------------- sample and dataset scores
def test_first_line_rule_and_max_over_answers():
    pred = "\nParis\nThe capital is Lyon"
    assert M.score_sample("triviaqa", pred, ["Paris"]) == 1.0  # only "Paris" is scored
    # hotpotqa scores everything: [paris, capital, is, lyon] vs [paris]: P = 1/4, R = 1, F1 = 0.4
    assert M.score_sample("hotpotqa", pred, ["Paris"]) == pytest.approx(0.4)
    # vs "Obama": P = 1/2, R = 1 -> 2/3; vs "Barack Hussein Obama": P = 1, R = 2/3 -> 0.8; max = 0.8
    assert M.score_sample("hotpotqa", "Barack Obama", ["Obama", "Barack Hussein Obama"]) == pytest.approx(0.8)
    assert M.score_sample("trec", "Location\nEntity", ["Location"], CLASSES) == 1.0  # first line only
    assert M.score_sample("qasper_e", "x", ["x"]) == 1.0
    with pytest.raises(ValueError, match="unknown LongBench dataset"):
        M.score_sample("narrativeqa_e", "x", ["x"])  # not part of LongBench-E


def test_score_dataset():
    # 1.0 + F1("it is rome", "rome") = 2 * 1/3 / (4/3) = 0.5 + 0.0 -> mean 0.5 -> 50.0
    preds, answers = ["Paris", "It is Rome", "x"], [["Paris"], ["Rome"], ["Oslo"]]
    assert M.score_dataset("hotpotqa", preds, answers) == 50.0
    assert M.score_dataset("hotpotqa", preds[1:], answers[1:]) == 25.0
    assert M.score_dataset("hotpotqa", ["a", "b", "Paris"], [["Paris"]] * 3) == 33.33  # round(100/3, 2)
    assert M.score_dataset("trec", ["Location", "Entity"], [["Location"], ["Location"]], CLASSES) == 50.0
    per_sample = [CLASSES, ["Entity", "Other"]]  # one class list per sample also works
    assert M.score_dataset("trec", ["Location", "Entity"], [["Location"], ["Entity"]], per_sample) == 100.0
    with pytest.raises(ValueError, match="equally many"):
        M.score_dataset("hotpotqa", ["a"], [])


def test_score_dataset_e_buckets():
    # count truth 5: "5" -> 1, "4" -> 0, "5" -> 1, "5 or 6" -> 1/2, "5" -> 1
    preds = ["5", "4", "5", "5 or 6", "5"]
    lengths = [100, 3999, 4000, 7999, 8000]  # <4000 | <8000 | rest
    buckets = M.score_dataset_e("passage_count_e", preds, [["5"]] * 5, lengths)
    assert buckets == {"0-4k": 50.0, "4-8k": 75.0, "8k+": 100.0}
    assert M.score_dataset_e("passage_count", ["5"], [["5"]], [9000]) == {"0-4k": None, "4-8k": None, "8k+": 100.0}


# ----------------------------------------------------------------------------- Chinese metrics
def test_chinese_metrics_with_jieba():
    pytest.importorskip("jieba")
    # jieba: 北京 / 是 / 中国 / 的 / 首都 / 。 -> "。" normalises away: 5 tokens vs [北京]: P = 1/5, R = 1, F1 = 1/3
    assert M.qa_f1_zh_score("北京是中国的首都。", "北京") == pytest.approx(1 / 3)
    # LCS(中国 的 首都 是 北京, 北京 是 中国 的 首都) = 中国 的 首都: P = R = 3/5
    assert M.rouge_zh_score("北京是中国的首都", "中国的首都是北京") == pytest.approx(0.6, abs=EPS)
    assert M.score_sample("dureader", "北京是中国的首都", ["x", "北京是中国的首都"]) == pytest.approx(1.0, abs=EPS)


def test_chinese_metrics_without_jieba_raise_clearly(monkeypatch):
    monkeypatch.setitem(sys.modules, "jieba", None)  # makes `import jieba` fail
    for dataset in ("multifieldqa_zh", "dureader", "vcsum"):
        with pytest.raises(ImportError, match="pip install jieba"):
            M.score_sample(dataset, "北京", ["北京"])
    assert M.score_sample("passage_retrieval_zh", "段落2", ["段落2"]) == 1.0  # no jieba needed


def test_matches_reference_packages():
    """Same numbers as the packages the official metrics call (skipped unless they are installed)."""
    rouge = pytest.importorskip("rouge")
    fuzz = pytest.importorskip("fuzzywuzzy.fuzz")
    import difflib

    def official_rouge(p: str, g: str) -> float:
        try:
            return rouge.Rouge().get_scores([p], [g], avg=True)["rouge-l"]["f"]
        except Exception:  # the official code returns 0 on any error
            return 0.0

    texts = ["the cat sat on the mat. It was happy.", "The cat lay on a mat . it was  happy", "x. . y",
             "a b c. ", "...", "", "one two six seven eight. one three eight nine five"]
    for p in texts:
        for g in texts:
            assert M.rouge_l_score(p, g) == official_rouge(p, g), (p, g)
            if fuzz.SequenceMatcher is difflib.SequenceMatcher:  # pure-python fuzzywuzzy, as LongBench used
                assert M.fuzz_ratio(p, g) == fuzz.ratio(p, g), (p, g)


# ----------------------------------------------------------------------------- loader
def _write(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _rec(**over) -> dict:
    rec = dict(input="What is the capital of Zorbia?", context="The capital of Zorbia is Plim.",
               answers=["Plim"], length=7, dataset="hotpotqa", language="en", all_classes=None, _id="a1")
    rec.update(over)
    return rec


def test_load_file_and_directory(tmp_path):
    f = _write(tmp_path / "hotpotqa.jsonl", [json.dumps(_rec()), "", json.dumps(_rec(_id="a2", length=9))])
    recs = load_longbench(f)
    assert [r.id for r in recs] == ["a1", "a2"] and recs[1].length == 9
    assert recs[0] == LongBenchRecord("What is the capital of Zorbia?", "The capital of Zorbia is Plim.",
                                      ["Plim"], 7, "hotpotqa", "en", None, "a1")
    _write(tmp_path / "qasper_e.jsonl", [json.dumps(_rec(dataset="qasper_e"))])
    assert load_longbench(tmp_path, "qasper_e")[0].dataset == "qasper_e"
    assert len(load_longbench(str(tmp_path), "hotpotqa")) == 2


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a file nor a directory"):
        load_longbench(tmp_path / "nope.jsonl")
    with pytest.raises(FileNotFoundError, match="qasper.jsonl"):
        load_longbench(tmp_path, "qasper")
    with pytest.raises(ValueError, match="pass dataset="):
        load_longbench(tmp_path)
    bad = _write(tmp_path / "bad.jsonl", [json.dumps(_rec()), json.dumps(_rec()), '{"input": "x", '])
    with pytest.raises(ValueError, match=r"bad\.jsonl:3: invalid JSON"):
        load_longbench(bad)
    no_answers = {k: v for k, v in _rec().items() if k != "answers"}
    miss = _write(tmp_path / "miss.jsonl", [json.dumps(_rec()), json.dumps(no_answers)])
    with pytest.raises(ValueError, match=r"miss\.jsonl:2: record is missing field\(s\) 'answers'"):
        load_longbench(miss)
    typed = _write(tmp_path / "typed.jsonl", [json.dumps(_rec(answers="Plim"))])
    with pytest.raises(ValueError, match=r"typed\.jsonl:1: 'answers' must be a list"):
        load_longbench(typed)


# ----------------------------------------------------------------------------- prompts
def test_tables_cover_every_dataset():
    assert set(DATASET_PROMPT) == set(DATASET_MAXLEN) == set(M.DATASET_METRIC)
    assert {DATASET_MAXLEN[d] for d in ("narrativeqa", "qasper", "dureader", "samsum")} == {128}
    assert {DATASET_MAXLEN[d] for d in ("gov_report", "qmsum", "multi_news", "vcsum")} == {512}
    assert DATASET_MAXLEN["hotpotqa"] == 32 and DATASET_MAXLEN["lcc"] == 64
    assert all("{context}" in t for t in DATASET_PROMPT.values())


def test_head_tail_cut(tiny_tokenizer):
    ids = list(range(10))
    assert head_tail(ids, 10) == ids and head_tail(ids, 4) == [0, 1, 8, 9]
    assert head_tail(ids, 5) == [0, 1, 2, 8, 9] and head_tail(ids, 1) == [0]
    rec = LongBenchRecord("What is the capital of Zorbia?", "The sky is blue. " * 100, ["Plim"], 300, "hotpotqa")
    full = list(tiny_tokenizer(prompt_text(rec), add_special_tokens=True)["input_ids"])
    assert len(full) > 200
    assert build_prompt(rec, tiny_tokenizer, len(full) + 5) == full  # fits: untouched
    for max_length in (100, 101):
        cut = build_prompt(rec, tiny_tokenizer, max_length)
        head = max_length - max_length // 2
        assert len(cut) == max_length
        assert cut[:head] == full[:head] and cut[head:] == full[len(full) - max_length // 2:]
    text = tiny_tokenizer.decode(build_prompt(rec, tiny_tokenizer, 120))
    assert text.startswith("Answer the question based on") and text.endswith("Question: What is the capital of Zorbia?\nAnswer:")


def test_chat_template_only_where_allowed(tiny_tokenizer):
    tok = copy.deepcopy(tiny_tokenizer)
    tok.chat_template = ("{% for m in messages %}[U]{{ m['content'] }}{% endfor %}"
                         "{% if add_generation_prompt %}[A]{% endif %}")
    rec = LongBenchRecord("Q?", "ctx", ["x"], 1, "hotpotqa")
    assert tok.decode(build_prompt(rec, tok, 1000, chat=True)) == "[U]" + prompt_text(rec) + "[A]"
    plain = build_prompt(rec, tok, 1000, dataset="trec")
    assert build_prompt(rec, tok, 1000, dataset="trec", chat=True) == plain  # few-shot: never a chat prompt
    with pytest.raises(ValueError, match="chat template"):
        build_prompt(rec, tiny_tokenizer, 1000, chat=True)


# ----------------------------------------------------------------------------- end to end
class ReadingModel(FakeLM):
    """Fake LM: finds "What is the capital of X?" in the prompt, looks for "The capital of X is Y." in it,
    and answers ``answer.format(y=Y)`` ("unknown" if the fact is not in the prompt)."""

    def __init__(self, tokenizer, answer: str = " {y}"):
        super().__init__(tokenizer, self.read)
        self.template = answer

    def read(self, prompt: str) -> str:
        country = re.search(r"What is the capital of (\w+)\?\nAnswer:$", prompt).group(1)
        fact = re.search(rf"The capital of {country} is (\w+)\.", prompt)
        return self.template.format(y=fact.group(1)) if fact else " unknown"


FACTS = [("Zorbia", "Plim"), ("Quex", "Darn"), ("Vell", "Orsk")]


def _records(dataset="hotpotqa", lengths=(100, 5000, 9000)):
    return [LongBenchRecord(f"What is the capital of {c}?", f"Some text. The capital of {c} is {y}. More text.",
                            [y], n, dataset, "en", None, f"id{i}") for i, ((c, y), n) in enumerate(zip(FACTS, lengths))]


def test_reading_model_scores_100(tiny_tokenizer, tmp_path):
    f = _write(tmp_path / "hotpotqa.jsonl", [json.dumps(_rec(input=f"What is the capital of {c}?",
               context=f"The capital of {c} is {y}.", answers=[y], _id=c)) for c, y in FACTS])
    model, calls = ReadingModel(tiny_tokenizer), []
    model.train()
    res = longbench(model, tiny_tokenizer, tmp_path, "hotpotqa", max_length=2000, progress=calls.append)
    assert isinstance(res, LongBenchResult) and res.score == 100.0 and res.n == 3 and calls == [3]
    assert [s.id for s in res.samples] == ["Zorbia", "Quex", "Vell"] and res.buckets is None
    assert all(c["max_new_tokens"] == 32 and not c["do_sample"] and not c["training"] and c["inference"]
               for c in model.calls)
    assert model.calls[0]["prompt"] == prompt_text(load_longbench(f)[0])
    assert model.training  # restored
    assert longbench(ReadingModel(tiny_tokenizer), tiny_tokenizer, f, "hotpotqa", max_length=2000, limit=2).n == 2
    d = res.to_dict()
    assert d["score"] == 100.0 and set(d["samples"][0]) == {"id", "length", "prediction", "answers", "score"}


def test_wordy_model_partial_score_and_buckets(tiny_tokenizer):
    # " It is Plim city" -> [it, is, plim, city] vs [plim]: P = 1/4, R = 1, F1 = 2 * 1/4 / (5/4) = 0.4
    res = longbench(ReadingModel(tiny_tokenizer, " It is {y} city"), tiny_tokenizer, _records("hotpotqa_e"),
                    "hotpotqa_e", max_length=2000)
    assert res.score == 40.0 and all(s.score == pytest.approx(0.4) for s in res.samples)
    assert res.buckets == {"0-4k": 40.0, "4-8k": 40.0, "8k+": 40.0}


def test_first_line_rule_end_to_end(tiny_tokenizer):
    answer = " {y}\nQuestion: What is the capital of Foo?\nAnswer: Bar"
    recs = [LongBenchRecord("Question: What is the capital of Zorbia?\nAnswer:", "The capital of Zorbia is Plim.",
                            ["Plim"], 10, "triviaqa")]
    model = ReadingModel(tiny_tokenizer, answer)
    assert longbench(model, tiny_tokenizer, recs, "triviaqa", max_length=2000).score == 100.0
    # hotpotqa scores all lines: [plim, question, what, is, capital, of, foo, answer, bar] ("the" dropped),
    # 9 tokens vs [plim]: P = 1/9, R = 1, F1 = 2 * 1/9 / (10/9) = 0.2
    res = longbench(model, tiny_tokenizer, _records()[:1], "hotpotqa", max_length=2000)
    assert res.score == 20.0


def test_middle_cut_hides_the_fact(tiny_tokenizer):
    filler = "Nothing to see here. " * 60
    rec = LongBenchRecord("What is the capital of Zorbia?", filler + "The capital of Zorbia is Plim. " + filler,
                          ["Plim"], 100, "hotpotqa")
    assert longbench(ReadingModel(tiny_tokenizer), tiny_tokenizer, [rec], "hotpotqa", max_length=5000).score == 100.0
    short = ReadingModel(tiny_tokenizer)
    assert longbench(short, tiny_tokenizer, [rec], "hotpotqa", max_length=200).score == 0.0  # question kept, fact cut
    assert "Plim" not in short.calls[0]["prompt"]


def test_runner_errors(tiny_tokenizer):
    with pytest.raises(ValueError, match="unknown LongBench dataset"):
        longbench(ReadingModel(tiny_tokenizer), tiny_tokenizer, _records(), "nope", max_length=100)
    with pytest.raises(ValueError, match="no LongBench records"):
        longbench(ReadingModel(tiny_tokenizer), tiny_tokenizer, [], "hotpotqa", max_length=100)
    with pytest.raises(ValueError, match="limit"):
        longbench(ReadingModel(tiny_tokenizer), tiny_tokenizer, _records(), "hotpotqa", max_length=100, limit=0)
