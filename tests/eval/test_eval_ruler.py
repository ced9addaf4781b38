"""RULER synthetic tasks: prompt budgets, references re-derived from the decoded prompts by
independent solvers, determinism, scoring, and end-to-end runs with honest fake models."""
from __future__ import annotations

import random
import re
from collections import Counter

import pytest
import torch
from _fake_lm import FakeLM  # tests/eval/_fake_lm.py

from compresskit.eval.ruler import (
    RULER_ALIASES,
    RULER_TASKS,
    RulerResult,
    resolve_task,
    ruler,
    ruler_min_length,
    ruler_sample,
    score_sample,
)
from compresskit.eval.ruler_data import (
    ADJECTIVES,
    CWE_TEMPLATE,
    CWE_WORDS,
    FWE_TEMPLATE,
    NIAH_TEMPLATE,
    NOISE,
    NOUNS,
    VT_TEMPLATE,
    cwe_draft,
)

NIAH = [t for t in RULER_TASKS if t.startswith("niah")]
ESSAY = (
    "Paul wrote about startups and painters. Good ideas look like bad ideas at first! "
    "Why do founders fail? Most run out of money, or out of energy, before the market notices them. "
    "The best essays wander; they follow curiosity instead of an outline. "
)
UUID = "0f1e2d3c-4b5a-4978-8a6b-5c4d3e2f1a0b"
MAX_NEW = {"niah": 128, "vt": 30, "cwe": 120, "fwe": 50}


def make_word_tokenizer():
    """A byte-level BPE with a larger vocabulary trained on RULER-like text, that prepends <s>."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = [" ".join(CWE_WORDS), NOISE, NIAH_TEMPLATE, VT_TEMPLATE, CWE_TEMPLATE, FWE_TEMPLATE, ESSAY,
              " ".join(f"{i}. VAR {i}" for i in range(2000))]
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1500, special_tokens=["<s>", "</s>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus * 3, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="</s>")


@pytest.fixture(scope="module")
def word_tokenizer():
    return make_word_tokenizer()


@pytest.fixture(params=["tiny", "word"])
def tok(request, tiny_tokenizer, word_tokenizer):
    return tiny_tokenizer if request.param == "tiny" else word_tokenizer


# ---------------------------------------------------------------- independent solvers (test side)

def _text(tok, ids) -> str:
    return tok.decode(ids, skip_special_tokens=True)


def _needles(text: str) -> list[tuple[str, str]]:
    return re.findall(r"One of the special magic (?:numbers|uuids) for ([\w-]+) is: ([\w-]+)\.", text)


def _query_keys(text: str) -> list[str]:
    asked = r"What (?:is|are all) the special magic \w+ for (.+?) mentioned in the provided text\?"
    return re.split(r", and |, ", re.search(asked, text).group(1))


def solve_niah(text: str) -> list[str]:
    keys = _query_keys(text)
    return [v for k, v in _needles(text) if k in keys]


def solve_vt(text: str) -> set[str]:
    part = text[text.rindex("Memorize and track") :]
    value = re.search(r"assigned the value (\d+) in the text above", part).group(1)
    assigns = re.findall(r"VAR ([A-Z]+) = (?:VAR ([A-Z]+)|(\d+))", part)
    found = {name for name, _, num in assigns if num == value}
    while True:
        more = {name for name, src, _ in assigns if src in found} - found
        if not more:
            return found
        found |= more


def _top(counts: Counter, k: int) -> set[str]:
    ranked = counts.most_common()
    assert len(ranked) == k or ranked[k - 1][1] > ranked[k][1], ranked[: k + 1]  # no tie at the cut
    return {w for w, _ in ranked[:k]}


def cwe_counts(text: str) -> Counter:
    part = text[text.rindex("Below is a numbered list") :]
    listing = part.split("\n")[1]
    return Counter(re.findall(r"\d+\. (\S+)", listing))


def fwe_counts(text: str) -> Counter:
    context = text.split("coded words. ", 1)[1].split("\nQuestion:")[0]
    return Counter(context.split())


def solve(task: str, text: str) -> list[str]:
    if task.startswith("niah"):
        return solve_niah(text)
    if task == "vt":
        return sorted(solve_vt(text))
    if task == "cwe":
        return sorted(_top(cwe_counts(text), 10))
    counts = fwe_counts(text)
    assert counts.most_common(1)[0][0] == "..."
    del counts["..."]
    return sorted(_top(counts, 3))


# ---------------------------------------------------------------- prompts

def _slack(tok, task: str) -> int:
    """Tokens of one haystack unit (+2): how far below ``length`` the longest prompt may stop."""
    if task == "niah_multikey_2":
        unit = "One of the special magic numbers for strange-umbrella is: 1234567.\n"
    elif task == "niah_multikey_3":
        unit = f"One of the special magic uuids for {UUID} is: {UUID}.\n"
    elif task == "cwe":
        unit = "1234. strange-umbrella " * 3
    elif task == "fwe":
        unit = "abcdef " * 4
    else:
        unit = NOISE + "\n "
    return len(tok(unit, add_special_tokens=False)["input_ids"]) + 2


def test_task_names():
    assert RULER_TASKS == (
        "niah_single_1", "niah_single_2", "niah_single_3", "niah_multikey_1", "niah_multikey_2",
        "niah_multikey_3", "niah_multivalue", "niah_multiquery", "vt", "cwe", "fwe")
    assert RULER_ALIASES == {"niah": "niah_single_1"} and resolve_task("niah") == "niah_single_1"
    with pytest.raises(ValueError, match="unknown RULER task 'qa_1'"):
        resolve_task("qa_1")
    assert len(CWE_WORDS) >= 590 and len(ADJECTIVES) >= 100 and len(NOUNS) >= 100
    assert all(w.isalpha() and w.islower() for w in CWE_WORDS)


@pytest.mark.parametrize("task", RULER_TASKS)
def test_prompt_fits_and_references_are_right(tok, task):
    m = ruler_min_length(tok, task)
    for length, seed in ((m, 0), (m + 97, 1), (2 * m + 300, 2)):
        s = ruler_sample(task, tok, length, random.Random(seed))
        assert s.task == task and s.length == length and s.max_new_tokens == MAX_NEW[task.split("_")[0]]
        assert len(s.prompt_ids) <= length
        assert length - len(s.prompt_ids) <= _slack(tok, task), (length, len(s.prompt_ids))
        if tok.bos_token == "<s>":
            assert s.prompt_ids[0] == tok.bos_token_id  # special tokens are counted
        assert sorted(solve(task, _text(tok, s.prompt_ids))) == sorted(s.references)


@pytest.mark.parametrize("task", NIAH)
def test_niah_needles(tiny_tokenizer, task):
    s = ruler_sample(task, tiny_tokenizer, 900, random.Random(5))
    text = _text(tiny_tokenizer, s.prompt_ids)
    needles, keys = _needles(text), _query_keys(text)
    n_q = 4 if task == "niah_multiquery" else 1
    n_v = 4 if task == "niah_multivalue" else 1
    assert len(keys) == n_q and len(s.references) == n_q * n_v == len(set(s.references))
    asked = [(k, v) for k, v in needles if k in keys]
    assert sorted(v for _, v in asked) == sorted(s.references)  # each value follows its key in a needle
    assert all(text.count(v) == 1 for v in s.references)  # no distractor repeats a value
    singular = n_q * n_v == 1
    assert text.startswith("A special magic" if singular else "Some special magic")
    assert text.endswith("mentioned in the provided text " + ("is" if singular else "are"))
    if task in ("niah_multikey_1", "niah_multiquery"):
        assert len({k for k, _ in needles}) == 4
    if task in ("niah_multikey_2", "niah_multikey_3"):
        lines = text.split("\n")[1:-1]
        assert len(lines) > 3 and len(needles) == len(lines) and s.haystack == "needle"
    uuid_re = r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"
    value_re = uuid_re if task in ("niah_single_3", "niah_multikey_3") else r"\d{7}"
    key_re = uuid_re if task == "niah_multikey_3" else r"[a-z]+-[a-z]+"
    assert all(re.fullmatch(key_re, k) and re.fullmatch(value_re, v) for k, v in needles)


@pytest.mark.parametrize("depth", [0.0, 0.25, 0.5, 0.75, 1.0])
def test_niah_depth_on_noise_and_needle_haystacks(tiny_tokenizer, depth):
    for task in ("niah_single_1", "niah_multikey_2", "niah_multivalue"):
        s = ruler_sample(task, tiny_tokenizer, 1200, random.Random(3), depth=depth)
        lines = _text(tiny_tokenizer, s.prompt_ids).split("\n")[1:-1]
        real = [i for i, line in enumerate(lines) if any(v in line for v in s.references)]
        units = len(lines) - len(real)
        assert s.depth == depth and units > 5
        assert real == list(range(real[0], real[0] + len(real)))  # all needles together at the depth
        assert real[0] == int(units * depth)


def test_niah_essay_haystack(tiny_tokenizer):
    s = ruler_sample("niah_single_2", tiny_tokenizer, 1500, random.Random(0), haystack_text=ESSAY, depth=0.5)
    text = _text(tiny_tokenizer, s.prompt_ids)
    assert s.haystack == "essay" and NOISE not in text and text.count("Paul wrote about startups") >= 2
    before, after = text.split(" One of the special magic numbers")
    assert abs(len(before) - len(after)) < 0.2 * len(text)  # the middle, at sentence granularity
    assert before.endswith((".", "!", "?"))
    fallback = ruler_sample("niah_single_2", tiny_tokenizer, 600, random.Random(0))
    assert fallback.haystack == "noise" and NOISE in _text(tiny_tokenizer, fallback.prompt_ids)
    with pytest.raises(ValueError, match="haystack_text is empty"):
        ruler_sample("niah_single_2", tiny_tokenizer, 600, random.Random(0), haystack_text=" \n")


def test_vt_chain_and_example(word_tokenizer):
    s = ruler_sample("vt", word_tokenizer, 1500, random.Random(4))
    text = _text(word_tokenizer, s.prompt_ids)
    example, main = text[: text.rindex("Memorize")], text[text.rindex("Memorize") :]
    assert len(s.references) == 5 and all(re.fullmatch(r"[A-Z]{5}", v) for v in s.references)
    assert solve_vt(main) == set(s.references) and main.count(NOISE) > 10
    assert len(re.findall(r"VAR [A-Z]+ =", main)) == 5
    assert main.endswith(", they are: ") and "5 variables are assigned the value" in main
    shown = example.strip().rsplit("they are: ", 1)[1].split()
    assert set(shown) == solve_vt(example) and len(shown) == 5  # the solved example is right


@pytest.mark.parametrize("length, common, rare", [(1500, 6, 1), (4096, 30, 3)])
def test_cwe_counts(word_tokenizer, length, common, rare):
    s = ruler_sample("cwe", word_tokenizer, length, random.Random(2))
    text = _text(word_tokenizer, s.prompt_ids)
    counts = cwe_counts(text)
    assert {w: counts[w] for w in s.references} == {w: common for w in s.references}
    assert set(counts.values()) == {common, rare} and len(counts) > 20
    example = text[: text.rindex("Below is")]
    assert example.count("Below is a numbered list") == 1
    shown = re.findall(r"\d+\. (\S+)", example.rsplit("are:", 1)[1])
    assert set(shown) == _top(cwe_counts(example), 10)


def test_cwe_runs_past_the_word_list():
    draft = cwe_draft(random.Random(1), 1500)
    extra = 700 - (len(CWE_WORDS) - 10)
    counts = cwe_counts(draft.render(700))
    compounds = [w for w in counts if "-" in w]
    assert len(counts) == 710 and len(compounds) == extra and set(counts.values()) == {6, 1}
    assert not {p for w in compounds for p in w.split("-")} & set(draft.references)
    assert draft.max_units > 10_000


def test_fwe_counts(tok):
    for length in (ruler_min_length(tok, "fwe") + 40, 2500):
        s = ruler_sample("fwe", tok, length, random.Random(6))
        counts = fwe_counts(_text(tok, s.prompt_ids))
        ranked = [w for w, _ in counts.most_common()]
        assert ranked[0] == "..." and set(ranked[1:4]) == set(s.references)
        assert counts[ranked[3]] > counts[ranked[4]] and len(counts) <= max(length // 50, 7)
        assert all(re.fullmatch(r"[a-z]{6}", w) for w in s.references)
        assert counts[ranked[1]] >= 2 * counts[ranked[3]]  # Zipf alpha=2: rank 2 vs rank 4 is 4x (floored)


@pytest.mark.parametrize("task", RULER_TASKS)
def test_determinism(tiny_tokenizer, task):
    length = ruler_min_length(tiny_tokenizer, task) + 150
    a, b, c = (ruler_sample(task, tiny_tokenizer, length, random.Random(seed)) for seed in (11, 11, 12))
    assert a == b
    assert (a.prompt_ids, a.references) != (c.prompt_ids, c.references)


def test_too_short_and_bad_arguments(tok):
    for task in RULER_TASKS:
        m = ruler_min_length(tok, task)
        for seed in range(8):
            assert len(ruler_sample(task, tok, m, random.Random(seed)).prompt_ids) <= m
        with pytest.raises(ValueError, match=rf"length=50 is too short for RULER task '{task}'") as err:
            ruler_sample(task, tok, 50, random.Random(0))
        need = int(re.search(r"use length >= (\d+)$", str(err.value)).group(1))
        assert need <= m and len(ruler_sample(task, tok, need, random.Random(0)).prompt_ids) == need
        with pytest.raises(ValueError, match=f"use length >= {need}"):
            ruler_sample(task, tok, need - 1, random.Random(0))
    with pytest.raises(ValueError, match="depth"):
        ruler_sample("niah", tok, 600, random.Random(0), depth=1.5)
    with pytest.raises(ValueError, match="NIAH tasks only"):
        ruler_sample("vt", tok, 2000, random.Random(0), depth=0.5)


def test_score_sample():
    assert score_sample("The numbers are 1234567 and 7654321.", ["1234567", "7654321"]) == 1.0
    assert score_sample("only 1234567", ["1234567", "7654321"]) == 0.5
    assert score_sample("ABC-DEF, qrs", ["abc-def", "QRS", "xyz"]) == pytest.approx(2 / 3)
    assert score_sample("1. apple 2. pear", ["apple", "pear", "plum", "fig"]) == 0.5
    assert score_sample("", ["x"]) == 0.0
    with pytest.raises(ValueError, match="references"):
        score_sample("x", [])


# ---------------------------------------------------------------- end to end

class SolvingModel(FakeLM):
    """Fake LM that solves the task from the decoded prompt (what a real model sees).

    ``keep`` answers only the first ``keep`` solutions; ``wrong`` answers nonsense.
    """

    def __init__(self, tokenizer, task: str, keep: int | None = None, wrong: bool = False):
        super().__init__(tokenizer, self.reply, skip_special=True)
        self.task, self.keep, self.wrong = task, keep, wrong

    def reply(self, prompt: str) -> str:
        answers = solve(resolve_task(self.task), prompt)
        return "zzz" if self.wrong else " " + ", ".join(answers[: self.keep]) + "."


@pytest.mark.parametrize("task", [*RULER_TASKS, "niah"])
def test_solving_model_scores_100(tiny_tokenizer, task):
    name = resolve_task(task)
    length = ruler_min_length(tiny_tokenizer, task) + 200
    model, calls = SolvingModel(tiny_tokenizer, task), []
    model.train()
    res = ruler(model, tiny_tokenizer, task, length, samples=4, seed=1, haystack_text=ESSAY,
                progress=calls.append)
    assert isinstance(res, RulerResult) and res.task == name and res.length == length
    assert res.score == 100.0 and all(t.score == 1.0 for t in res.samples)
    assert calls == [4] and len(res.samples) == 4 and model.training  # one batch; train flag restored
    assert all(t.prompt_tokens <= length for t in res.samples)
    want_depths = [0.0, 1 / 3, 2 / 3, 1.0] if name.startswith("niah") else [None] * 4
    assert [t.depth for t in res.samples] == pytest.approx(want_depths)
    assert all({k: c[k] for k in ("training", "inference", "do_sample", "pad", "max_new_tokens", "mask_ok")}
               == dict(training=False, inference=True, do_sample=False, pad=tiny_tokenizer.pad_token_id,
                       max_new_tokens=MAX_NEW[name.split("_")[0]], mask_ok=True) for c in model.calls)


def test_wrong_and_partial_answers(tiny_tokenizer):
    def run(task, **kw):
        length = ruler_min_length(tiny_tokenizer, task) + 150
        return ruler(SolvingModel(tiny_tokenizer, task, **kw), tiny_tokenizer, task, length, samples=3)

    assert run("niah_single_1", wrong=True).score == 0.0
    assert run("vt", wrong=True).score == 0.0
    assert run("niah_multivalue", keep=1).score == 25.0
    mq = run("niah_multiquery", keep=2)
    assert mq.score == 50.0 and [t.score for t in mq.samples] == [0.5, 0.5, 0.5]


def test_tiny_model_end_to_end(tiny_llama, tiny_tokenizer):
    calls: list[int] = []
    a = ruler(tiny_llama, tiny_tokenizer, "niah", 300, samples=2, seed=3, progress=calls.append)
    b = ruler(tiny_llama, tiny_tokenizer, "niah", 300, samples=2, seed=3)
    assert calls == [2] and a.to_dict() == b.to_dict()  # greedy + seeded prompts: deterministic
    assert 0.0 <= a.score <= 100.0 and a.task == "niah_single_1"
    d = a.to_dict()
    assert set(d) == {"task", "length", "score", "samples"} and len(d["samples"]) == 2
    assert set(d["samples"][0]) == {"depth", "haystack", "prompt_tokens", "references", "prediction", "score"}
    assert all(t["prompt_tokens"] <= 300 and t["haystack"] == "noise" and len(t["references"]) == 1
               for t in d["samples"])
    assert all(0.0 <= t["score"] <= 1.0 and isinstance(t["prediction"], str) for t in d["samples"])


def test_a_sample_is_settled_once_every_reference_is_in_its_text():
    from compresskit.eval.ruler import _all_found, score_sample

    done = _all_found(["4711", "Blue-Whale"])
    assert not done("The numbers are 4711 and")
    assert done("The numbers are 4711 and blue-whale")  # case-insensitive, as the score
    # settled means the score is 1 and stays 1 for any longer text
    assert score_sample("The numbers are 4711 and blue-whale, then more", ["4711", "Blue-Whale"]) == 1.0
