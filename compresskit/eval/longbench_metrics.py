"""LongBench metrics (Bai et al. 2024), re-implemented from THUDM/LongBench ``metrics.py`` / ``eval.py``.

Every metric is a pure function ``(prediction, ground_truth, **kwargs) -> float`` in [0, 1].
The official code relies on three packages; here ``rouge`` (ROUGE-L) and ``fuzzywuzzy``
(``fuzz.ratio``) are re-implemented in plain Python with the same results, and ``jieba`` (Chinese
word segmentation, which cannot be re-implemented faithfully) is imported lazily, only when
``multifieldqa_zh``, ``dureader`` or ``vcsum`` is scored.

Dataset scores follow ``eval.py``: the sample score is the max over the reference answers (after
the first-line rule for the few-shot datasets), the dataset score is ``round(100 * mean, 2)``, and
LongBench-E splits samples by their ``length`` field into 0-4k, 4-8k and 8k+.
"""
from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Callable, Sequence
from difflib import SequenceMatcher
from typing import Any

from ..core.errors import ConfigError, InputError, MissingDependencyError

Metric = Callable[..., float]

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_NUMBER = re.compile(r"\d+")
_EN_PUNCT = frozenset(string.punctuation)
# Verbatim from the official normalize_zh_answer (note: it lists "》" but not "《").
_ZH_PUNCT = frozenset(
    string.punctuation
    + "！？｡。＂＃＄％＆＇（）＊＋，－／：；＜＝＞＠［＼］＾＿｀｛｜｝～｟｠｢｣､、〃》「」『』【】〔〕〖〗〘〙〚〛〜〝〞〟〰〾〿–—‘’‛“”„‟…‧﹏."
)
FIRST_LINE_DATASETS = frozenset({"trec", "triviaqa", "samsum", "lsht"})
"""Few-shot datasets whose prediction is cut at its first line before scoring (eval.py)."""
BUCKETS = ("0-4k", "4-8k", "8k+")


# ----------------------------------------------------------------------------- normalisation
def normalize_answer(text: str) -> str:
    """Lowercase, drop ASCII punctuation, drop the articles a/an/the, collapse whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in _EN_PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def normalize_zh_answer(text: str) -> str:
    """Lowercase, drop ASCII and Chinese punctuation, remove all whitespace."""
    return "".join("".join(ch for ch in text.lower() if ch not in _ZH_PUNCT).split())


def _jieba_cut(text: str) -> list[str]:
    """Words of ``text`` by ``jieba.cut(text, cut_all=False)``; clear ImportError without jieba."""
    try:
        import jieba
    except ImportError:
        raise MissingDependencyError(
            "Scoring the Chinese LongBench datasets (multifieldqa_zh, dureader, vcsum) needs the "
            "'jieba' word segmenter, as in the official metrics: pip install jieba"
        ) from None
    return list(jieba.cut(text, cut_all=False))


# ----------------------------------------------------------------------------- token F1
def token_f1(prediction: Sequence[str], ground_truth: Sequence[str]) -> float:
    """Bag-of-tokens F1 (multiset overlap); 0 when nothing overlaps."""
    same = sum((Counter(prediction) & Counter(ground_truth)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(prediction), same / len(ground_truth)
    return (2 * precision * recall) / (precision + recall)


def qa_f1_score(prediction: str, ground_truth: str, **kwargs: Any) -> float:
    """Token F1 of the normalised, whitespace-split answers."""
    return token_f1(normalize_answer(prediction).split(), normalize_answer(ground_truth).split())


def qa_f1_zh_score(prediction: str, ground_truth: str, **kwargs: Any) -> float:
    """Token F1 over jieba words, each normalised and empty ones dropped (needs jieba)."""
    def words(text: str) -> list[str]:
        return [w for w in (normalize_zh_answer(t) for t in _jieba_cut(text)) if w]

    return token_f1(words(prediction), words(ground_truth))


# ----------------------------------------------------------------------------- ROUGE-L
def _rouge_sentences(text: str) -> list[list[str]]:
    """Sentences as the ``rouge`` package sees them: split on ".", whitespace collapsed, split on " ".

    Non-empty pieces that are only whitespace become ``[""]`` (one empty token), as in the package.
    """
    return [" ".join(piece.split()).split(" ") for piece in text.split(".") if piece]


def _lcs_tokens(ref: list[str], hyp: list[str]) -> list[str]:
    """One longest common subsequence, reconstructed with the ``rouge`` package's tie-breaking."""
    table = [[0] * (len(hyp) + 1) for _ in range(len(ref) + 1)]
    for i, r in enumerate(ref, 1):
        row, prev = table[i], table[i - 1]
        for j, h in enumerate(hyp, 1):
            row[j] = prev[j - 1] + 1 if r == h else max(prev[j], row[j - 1])
    out, i, j = [], len(ref), len(hyp)
    while i > 0 and j > 0:
        if ref[i - 1] == hyp[j - 1]:
            out.append(ref[i - 1])
            i, j = i - 1, j - 1
        elif table[i - 1][j] > table[i][j - 1]:
            i -= 1
        else:
            j -= 1
    return out


def rouge_l_score(prediction: str, ground_truth: str, **kwargs: Any) -> float:
    """ROUGE-L F of ``Rouge().get_scores([prediction], [ground_truth], avg=True)["rouge-l"]["f"]``.

    Matches the ``rouge`` package (pltrdy, 1.0.1) as the official ``rouge_score`` uses it:
    summary-level union LCS over "."-separated sentences with set semantics (``exclusive=True``):
    the LCS hit count is the number of *distinct* tokens in the union of the sentence-pair LCSs,
    divided by the number of distinct reference (recall) / prediction (precision) tokens, and
    ``F = 2PR / (P + R + 1e-8)``. No lowercasing or punctuation stripping. An empty prediction
    or reference (no non-empty "." piece) scores 0, like the package's ValueError caught by the
    official code.
    """
    hyp, ref = _rouge_sentences(prediction), _rouge_sentences(ground_truth)
    if not hyp or not ref:
        return 0.0
    union: set[str] = set()
    for ref_words in ref:
        for hyp_words in hyp:
            union.update(_lcs_tokens(ref_words, hyp_words))
    recall = len(union) / len({w for s in ref for w in s})
    precision = len(union) / len({w for s in hyp for w in s})
    return 2.0 * ((precision * recall) / (precision + recall + 1e-8))


def rouge_zh_score(prediction: str, ground_truth: str, **kwargs: Any) -> float:
    """ROUGE-L of the jieba words joined by spaces (needs jieba)."""
    return rouge_l_score(" ".join(_jieba_cut(prediction)), " ".join(_jieba_cut(ground_truth)))


# ----------------------------------------------------------------------------- classification
def classification_score(prediction: str, ground_truth: str, **kwargs: Any) -> float:
    """1 / (number of matched class names) if the ground truth is among them, else 0.

    Official rule: every class name that occurs as a substring of ``prediction`` matches; then
    matched names that are proper substrings of ``ground_truth`` are dropped, with the official
    loop's quirk kept (it removes from the list it iterates, so the name right after a removed
    one is never checked). The official fallback to difflib similarity sits behind the always
    true test ``em_match_list != 0`` and never runs, so no match scores 0. Needs
    ``all_classes=[...]``.
    """
    all_classes = kwargs.get("all_classes")
    if all_classes is None:
        raise InputError("classification_score needs all_classes=[...] (the record's class names)")
    matched = [name for name in all_classes if name in prediction]
    i = 0
    while i < len(matched):
        name = matched[i]
        if name in ground_truth and name != ground_truth:
            matched.remove(name)
        i += 1  # the list iterator advances either way: after a removal it skips one name
    return 1.0 / len(matched) if ground_truth in matched else 0.0


# ----------------------------------------------------------------------------- synthetic tasks
def _share_equal(prediction: str, target: str) -> float:
    """Fraction of the digit runs in ``prediction`` equal to ``target`` (0 if there are none)."""
    numbers = _NUMBER.findall(prediction)
    return sum(n == target for n in numbers) / len(numbers) if numbers else 0.0


def count_score(prediction: str, ground_truth: str, **kwargs: Any) -> float:
    """Share of the numbers in ``prediction`` that equal the ground-truth count."""
    return _share_equal(prediction, str(ground_truth))


def _paragraph_id(pattern: str, ground_truth: str) -> str:
    match = re.search(pattern, ground_truth)
    if match is None:
        raise InputError(f"ground truth {ground_truth!r} does not name a paragraph (pattern {pattern!r})")
    return match.group(1)


def retrieval_score(prediction: str, ground_truth: str, **kwargs: Any) -> float:
    """Share of the numbers in ``prediction`` equal to N of the ground truth's "Paragraph N"."""
    return _share_equal(prediction, _paragraph_id(r"Paragraph (\d+)", ground_truth))


def retrieval_zh_score(prediction: str, ground_truth: str, **kwargs: Any) -> float:
    """As :func:`retrieval_score` with the Chinese "段落N"."""
    return _share_equal(prediction, _paragraph_id(r"段落(\d+)", ground_truth))


# ----------------------------------------------------------------------------- code
def fuzz_ratio(a: str, b: str) -> int:
    """``fuzzywuzzy.fuzz.ratio`` without python-Levenshtein: 100 if equal, 0 if one is empty,
    else ``int(round(100 * difflib.SequenceMatcher(None, a, b).ratio()))``."""
    if a == b:
        return 100
    if not a or not b:
        return 0
    return int(round(100 * SequenceMatcher(None, a, b).ratio()))


def first_code_line(prediction: str) -> str:
    """First line (after leading newlines) containing none of "`", "#", "//"; "" if none."""
    for line in prediction.lstrip("\n").split("\n"):
        if "`" not in line and "#" not in line and "//" not in line:
            return line
    return ""


def code_sim_score(prediction: str, ground_truth: str, **kwargs: Any) -> float:
    """``fuzz.ratio(first_code_line(prediction), ground_truth) / 100``."""
    return fuzz_ratio(first_code_line(prediction), ground_truth) / 100


# ----------------------------------------------------------------------------- datasets
DATASET_METRIC: dict[str, Metric] = {
    "narrativeqa": qa_f1_score,
    "qasper": qa_f1_score,
    "multifieldqa_en": qa_f1_score,
    "multifieldqa_zh": qa_f1_zh_score,
    "hotpotqa": qa_f1_score,
    "2wikimqa": qa_f1_score,
    "musique": qa_f1_score,
    "dureader": rouge_zh_score,
    "gov_report": rouge_l_score,
    "qmsum": rouge_l_score,
    "multi_news": rouge_l_score,
    "vcsum": rouge_zh_score,
    "trec": classification_score,
    "triviaqa": qa_f1_score,
    "samsum": rouge_l_score,
    "lsht": classification_score,
    "passage_retrieval_en": retrieval_score,
    "passage_count": count_score,
    "passage_retrieval_zh": retrieval_zh_score,
    "lcc": code_sim_score,
    "repobench-p": code_sim_score,
}
"""LongBench dataset name -> metric, as in the official eval.py."""

LONGBENCH_E_DATASETS = (
    "qasper", "multifieldqa_en", "hotpotqa", "2wikimqa", "gov_report", "multi_news",
    "trec", "triviaqa", "samsum", "passage_count", "passage_retrieval_en", "lcc", "repobench-p",
)
"""The 13 datasets of LongBench-E (files ``{name}_e.jsonl``)."""


def base_dataset(dataset: str) -> str:
    """``"qasper_e"`` -> ``"qasper"``; raises ``ValueError`` for unknown names."""
    base = dataset[:-2] if dataset.endswith("_e") else dataset
    if base not in DATASET_METRIC or (base != dataset and base not in LONGBENCH_E_DATASETS):
        known = ", ".join(sorted(DATASET_METRIC))
        raise ConfigError(f"unknown LongBench dataset {dataset!r}; known: {known} (add _e for LongBench-E)")
    return base


def score_sample(
    dataset: str, prediction: str, answers: Sequence[str], all_classes: Sequence[str] | None = None
) -> float:
    """Best metric value over ``answers`` (0..1), after the first-line rule where it applies."""
    base = base_dataset(dataset)
    if base in FIRST_LINE_DATASETS:
        prediction = prediction.lstrip("\n").split("\n")[0]
    metric = DATASET_METRIC[base]
    score = 0.0
    for answer in answers:
        score = max(score, metric(prediction, answer, all_classes=all_classes))
    return score


def _mean100(scores: Sequence[float]) -> float | None:
    return round(100 * sum(scores) / len(scores), 2) if scores else None


def _check_lengths(predictions: Sequence[str], *others: Sequence[Any]) -> None:
    sizes = [len(predictions)] + [len(o) for o in others]
    if not predictions or len(set(sizes)) > 1:
        raise ValueError(f"need equally many (>0) predictions, answers (and lengths), got {sizes}")


def _all_classes_per_sample(all_classes: Any, n: int) -> list[Sequence[str] | None]:
    """One class list for all samples (as eval.py) or a list of per-sample lists (or Nones)."""
    if all_classes and not all(isinstance(c, str) for c in all_classes):
        if len(all_classes) != n:
            raise ValueError(f"got {len(all_classes)} per-sample class lists for {n} predictions")
        return list(all_classes)
    return [all_classes] * n


def score_dataset(
    dataset: str,
    predictions: Sequence[str],
    answers: Sequence[Sequence[str]],
    all_classes: Sequence[str] | Sequence[Sequence[str] | None] | None = None,
) -> float:
    """``round(100 * mean sample score, 2)`` as in eval.py's ``scorer``.

    ``all_classes`` is one list for the whole dataset (as eval.py) or one list per sample.
    """
    _check_lengths(predictions, answers)
    classes = _all_classes_per_sample(all_classes, len(predictions))
    scores = [score_sample(dataset, p, a, c) for p, a, c in zip(predictions, answers, classes)]
    return _mean100(scores)  # type: ignore[return-value]  # never None: predictions is non-empty


def length_bucket(length: int) -> str:
    """LongBench-E bucket of a record's ``length``: "0-4k" (<4000), "4-8k" (<8000) or "8k+"."""
    return BUCKETS[0] if length < 4000 else BUCKETS[1] if length < 8000 else BUCKETS[2]


def bucket_means(scores: Sequence[float], lengths: Sequence[int]) -> dict[str, float | None]:
    """``round(100 * mean, 2)`` of the 0..1 ``scores`` per length bucket; None for an empty bucket."""
    grouped: dict[str, list[float]] = {b: [] for b in BUCKETS}
    for score, length in zip(scores, lengths):
        grouped[length_bucket(length)].append(score)
    return {b: _mean100(s) for b, s in grouped.items()}


def score_dataset_e(
    dataset: str,
    predictions: Sequence[str],
    answers: Sequence[Sequence[str]],
    lengths: Sequence[int],
    all_classes: Sequence[str] | Sequence[Sequence[str] | None] | None = None,
) -> dict[str, float | None]:
    """LongBench-E scores per length bucket, as eval.py's ``scorer_e`` (None for an empty bucket)."""
    _check_lengths(predictions, answers, lengths)
    classes = _all_classes_per_sample(all_classes, len(predictions))
    scores = [score_sample(dataset, p, a, c) for p, a, c in zip(predictions, answers, classes)]
    return bucket_means(scores, lengths)
