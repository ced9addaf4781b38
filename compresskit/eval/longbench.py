"""LongBench v1 and LongBench-E (Bai et al. 2024, THUDM/LongBench) from local jsonl files.

Records are read from the official ``{dataset}.jsonl`` / ``{dataset}_e.jsonl`` files (nothing is
downloaded). Prompts use the official templates (``config/dataset2prompt.json``), generation is
greedy with the official per-dataset budget (``config/dataset2maxlen.json``), and scoring follows
the official ``eval.py`` (see :mod:`.longbench_metrics`).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..core.errors import ConfigError, InputError, MissingFileError
from ..core.fsutil import iter_jsonl
from ._runtime import Progress, eval_mode, generate_greedy
from .longbench_metrics import base_dataset, bucket_means, score_sample

# Verbatim from the official config/dataset2prompt.json (the "asconcisely" typo included).
DATASET_PROMPT: dict[str, str] = {
    "narrativeqa": "You are given a story, which can be either a novel or a movie script, and a question. Answer the question asconcisely as you can, using a single phrase if possible. Do not provide any explanation.\n\nStory: {context}\n\nNow, answer the question based on the story asconcisely as you can, using a single phrase if possible. Do not provide any explanation.\n\nQuestion: {input}\n\nAnswer:",
    "qasper": 'You are given a scientific article and a question. Answer the question as concisely as you can, using a single phrase or sentence if possible. If the question cannot be answered based on the information in the article, write "unanswerable". If the question is a yes/no question, answer "yes", "no", or "unanswerable". Do not provide any explanation.\n\nArticle: {context}\n\n Answer the question based on the above article as concisely as you can, using a single phrase or sentence if possible. If the question cannot be answered based on the information in the article, write "unanswerable". If the question is a yes/no question, answer "yes", "no", or "unanswerable". Do not provide any explanation.\n\nQuestion: {input}\n\nAnswer:',
    "multifieldqa_en": "Read the following text and answer briefly.\n\n{context}\n\nNow, answer the following question based on the above text, only give me the answer and do not output any other words.\n\nQuestion: {input}\nAnswer:",
    "multifieldqa_zh": "阅读以下文字并用中文简短回答：\n\n{context}\n\n现在请基于上面的文章回答下面的问题，只告诉我答案，不要输出任何其他字词。\n\n问题：{input}\n回答：",
    "hotpotqa": "Answer the question based on the given passages. Only give me the answer and do not output any other words.\n\nThe following are given passages.\n{context}\n\nAnswer the question based on the given passages. Only give me the answer and do not output any other words.\n\nQuestion: {input}\nAnswer:",
    "2wikimqa": "Answer the question based on the given passages. Only give me the answer and do not output any other words.\n\nThe following are given passages.\n{context}\n\nAnswer the question based on the given passages. Only give me the answer and do not output any other words.\n\nQuestion: {input}\nAnswer:",
    "musique": "Answer the question based on the given passages. Only give me the answer and do not output any other words.\n\nThe following are given passages.\n{context}\n\nAnswer the question based on the given passages. Only give me the answer and do not output any other words.\n\nQuestion: {input}\nAnswer:",
    "dureader": "请基于给定的文章回答下述问题。\n\n文章：{context}\n\n请基于上述文章回答下面的问题。\n\n问题：{input}\n回答：",
    "gov_report": "You are given a report by a government agency. Write a one-page summary of the report.\n\nReport:\n{context}\n\nNow, write a one-page summary of the report.\n\nSummary:",
    "qmsum": "You are given a meeting transcript and a query containing a question or instruction. Answer the query in one or more sentences.\n\nTranscript:\n{context}\n\nNow, answer the query based on the above meeting transcript in one or more sentences.\n\nQuery: {input}\nAnswer:",
    "multi_news": "You are given several news passages. Write a one-page summary of all news. \n\nNews:\n{context}\n\nNow, write a one-page summary of all the news.\n\nSummary:",
    "vcsum": "下面有一段会议记录，请你阅读后，写一段总结，总结会议的内容。\n会议记录：\n{context}\n\n会议总结：",
    "trec": "Please determine the type of the question below. Here are some examples of questions.\n\n{context}\n{input}",
    "triviaqa": "Answer the question based on the given passage. Only give me the answer and do not output any other words. The following are some examples.\n\n{context}\n\n{input}",
    "samsum": "Summarize the dialogue into a few short sentences. The following are some examples.\n\n{context}\n\n{input}",
    "lsht": "请判断给定新闻的类别，下面是一些例子。\n\n{context}\n{input}",
    "passage_count": "There are some paragraphs below sourced from Wikipedia. Some of them may be duplicates. Please carefully read these paragraphs and determine how many unique paragraphs there are after removing duplicates. In other words, how many non-repeating paragraphs are there in total?\n\n{context}\n\nPlease enter the final count of unique paragraphs after removing duplicates. The output format should only contain the number, such as 1, 2, 3, and so on.\n\nThe final answer is: ",
    "passage_retrieval_en": 'Here are 30 paragraphs from Wikipedia, along with an abstract. Please determine which paragraph the abstract is from.\n\n{context}\n\nThe following is an abstract.\n\n{input}\n\nPlease enter the number of the paragraph that the abstract is from. The answer format must be like "Paragraph 1", "Paragraph 2", etc.\n\nThe answer is: ',
    "passage_retrieval_zh": '以下是若干段落文字，以及其中一个段落的摘要。请确定给定的摘要出自哪一段。\n\n{context}\n\n下面是一个摘要\n\n{input}\n\n请输入摘要所属段落的编号。答案格式必须是"段落1"，"段落2"等格式\n\n答案是：',
    "lcc": "Please complete the code given below. \n{context}Next line of code:\n",
    "repobench-p": "Please complete the code given below. \n{context}{input}Next line of code:\n",
}

# Official config/dataset2maxlen.json: max new tokens per dataset.
DATASET_MAXLEN: dict[str, int] = {
    "narrativeqa": 128, "qasper": 128, "multifieldqa_en": 64, "multifieldqa_zh": 64,
    "hotpotqa": 32, "2wikimqa": 32, "musique": 32, "dureader": 128,
    "gov_report": 512, "qmsum": 512, "multi_news": 512, "vcsum": 512,
    "trec": 64, "triviaqa": 32, "samsum": 128, "lsht": 64,
    "passage_count": 32, "passage_retrieval_en": 32, "passage_retrieval_zh": 32,
    "lcc": 64, "repobench-p": 64,
}

NO_CHAT_DATASETS = frozenset({"trec", "triviaqa", "samsum", "lsht", "lcc", "repobench-p"})
"""Datasets the official pred.py never wraps in a chat prompt (few-shot and code completion)."""

_REQUIRED = ("input", "context", "answers", "length")


@dataclass
class LongBenchRecord:
    """One LongBench sample (``length`` counts words, or characters for Chinese)."""

    input: str
    context: str
    answers: list[str]
    length: int
    dataset: str = ""
    language: str = ""
    all_classes: list[str] | None = None
    id: str = ""


@dataclass
class LongBenchSample:
    """What the model answered for one record and its score (0..1, max over the answers)."""

    id: str
    length: int
    prediction: str
    answers: list[str]
    score: float


@dataclass
class LongBenchResult:
    """One dataset: ``score`` is ``round(100 * mean sample score, 2)``; ``buckets`` only for LongBench-E."""

    dataset: str
    score: float
    n: int
    max_length: int
    samples: list[LongBenchSample] = field(default_factory=list)
    buckets: dict[str, float | None] | None = None

    def to_dict(self) -> dict:
        """Plain, JSON-friendly dict (samples become a list of dicts)."""
        return asdict(self)


# ----------------------------------------------------------------------------- loading
def _record_from_json(obj: Any, where: str) -> LongBenchRecord:
    """Validate one decoded line and build the record; ``where`` is "file:line" for errors."""
    if not isinstance(obj, dict):
        raise InputError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    missing = [k for k in _REQUIRED if k not in obj]
    if missing:
        raise InputError(f"{where}: record is missing field(s) {', '.join(map(repr, missing))}")
    answers = obj["answers"]
    if not isinstance(answers, list) or not all(isinstance(a, str) for a in answers):
        raise InputError(f"{where}: 'answers' must be a list of strings, got {answers!r:.80}")
    classes = obj.get("all_classes")
    if classes is not None and not isinstance(classes, list):
        raise InputError(f"{where}: 'all_classes' must be a list or null, got {classes!r:.80}")
    try:
        length = int(obj["length"])
    except (TypeError, ValueError):
        raise InputError(f"{where}: 'length' must be an integer, got {obj['length']!r:.80}") from None
    return LongBenchRecord(
        input=str(obj["input"]), context=str(obj["context"]), answers=list(answers), length=length,
        dataset=str(obj.get("dataset") or ""), language=str(obj.get("language") or ""),
        all_classes=classes, id=str(obj.get("_id") or ""),
    )


def _resolve_file(path: Path, dataset: str | None) -> Path:
    """``path`` itself if it is a file, else ``{dataset}.jsonl`` in it (or in its ``data/``)."""
    if path.is_file():
        return path
    if not path.is_dir():
        raise MissingFileError(f"LongBench data not found: {path} is neither a file nor a directory")
    if not dataset:
        raise InputError(f"{path} is a directory: pass dataset= to pick {{dataset}}.jsonl in it")
    tried = [path / f"{dataset}.jsonl", path / "data" / f"{dataset}.jsonl"]
    for candidate in tried:
        if candidate.is_file():
            return candidate
    raise MissingFileError(
        f"LongBench file for {dataset!r} not found; tried {', '.join(map(str, tried))} "
        "(LongBench-E files are named {dataset}_e.jsonl: pass e.g. dataset='qasper_e')"
    )


def load_longbench(path: str | Path, dataset: str | None = None) -> list[LongBenchRecord]:
    """Records of a LongBench jsonl file, or of ``{dataset}.jsonl`` in the directory ``path``.

    Blank lines are skipped. Raises ``FileNotFoundError`` for a missing file and ``ValueError``
    naming the file and line for invalid JSON, missing fields (input, context, answers, length)
    or wrongly typed ones.
    """
    file = _resolve_file(Path(path), dataset)
    return [_record_from_json(obj, where) for where, obj in iter_jsonl(file)]


# ----------------------------------------------------------------------------- prompts
def head_tail(ids: list[int], max_length: int) -> list[int]:
    """``ids`` if it fits, else its first ``max_length - max_length // 2`` and last ``max_length // 2``."""
    if len(ids) <= max_length:
        return list(ids)
    tail = max_length // 2
    return list(ids[: max_length - tail]) + list(ids[len(ids) - tail :])


def prompt_text(record: LongBenchRecord, dataset: str | None = None) -> str:
    """The official template of ``dataset`` (default: the record's own) filled with the record."""
    name = dataset or record.dataset
    if not name:
        raise InputError("the record has no 'dataset' field: pass dataset=")
    return DATASET_PROMPT[base_dataset(name)].format(context=record.context, input=record.input)


def build_prompt(
    record: LongBenchRecord, tokenizer: Any, max_length: int, *, dataset: str | None = None, chat: bool = False
) -> list[int]:
    """Token ids of the record's prompt, over-long prompts cut in the middle to ``max_length``.

    By default no chat template is applied: the prompt is tokenized with the tokenizer's usual
    special tokens (e.g. BOS) and, when longer than ``max_length``, keeps its first
    ``max_length - max_length // 2`` and last ``max_length // 2`` tokens (exactly ``max_length``).
    The official pred.py cuts the same way, but decodes the two halves and re-tokenizes them.

    ``chat=True`` mirrors pred.py for chat models: except for the few-shot and code datasets
    (``NO_CHAT_DATASETS``), the (cut) prompt text becomes one user message passed through
    ``tokenizer.apply_chat_template`` with the generation prompt; as in pred.py, the template's
    own tokens come on top of ``max_length``.
    """
    if max_length < 1:
        raise ConfigError(f"max_length={max_length} must be >= 1")
    text = prompt_text(record, dataset)
    name = base_dataset(dataset or record.dataset)
    if not chat or name in NO_CHAT_DATASETS:
        return head_tail(list(tokenizer(text, add_special_tokens=True)["input_ids"]), max_length)
    if getattr(tokenizer, "chat_template", None) is None:
        raise InputError("chat=True needs a tokenizer with a chat template (tokenizer.chat_template is None)")
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    if len(ids) > max_length:
        cut = head_tail(ids, max_length)
        head = max_length - max_length // 2
        text = tokenizer.decode(cut[:head], skip_special_tokens=True) + tokenizer.decode(
            cut[head:], skip_special_tokens=True)
    chat_text = tokenizer.apply_chat_template(
        [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True)
    return list(tokenizer(chat_text, add_special_tokens=False)["input_ids"])


# ----------------------------------------------------------------------------- runner
def _records(path_or_records: str | Path | Sequence[LongBenchRecord], dataset: str) -> list[LongBenchRecord]:
    if isinstance(path_or_records, (str, Path)):
        return load_longbench(path_or_records, dataset)
    return list(path_or_records)


def longbench(
    model: Any,
    tokenizer: Any,
    path_or_records: str | Path | Sequence[LongBenchRecord],
    dataset: str,
    *,
    max_length: int,
    limit: int | None = None,
    chat: bool = False,
    max_new_tokens: int | None = None,
    batch_size: int = 8,
    progress: Progress = None,
) -> LongBenchResult:
    """Greedy LongBench score of ``model`` on one dataset (``"qasper"``; ``"qasper_e"`` for LongBench-E).

    ``path_or_records`` is a jsonl file, a directory holding ``{dataset}.jsonl``, or records.
    Only the first ``limit`` records are used when given. Prompts come from :func:`build_prompt`
    (cut to ``max_length`` tokens); ``max_new_tokens`` defaults to the official budget of the
    dataset. Predictions are scored as in eval.py (so trec/triviaqa/samsum/lsht count only their
    first line, the effect of pred.py's extra newline stop). Records are generated ``batch_size`` at a
    time (`generate_greedy`); ``progress`` gets the records of each batch.
    """
    name = base_dataset(dataset)
    if limit is not None and limit < 1:
        raise ConfigError(f"limit={limit} must be >= 1 (or None for all records)")
    records = _records(path_or_records, dataset)[:limit]
    if not records:
        raise InputError(f"no LongBench records for {dataset!r}")
    budget = DATASET_MAXLEN[name] if max_new_tokens is None else max_new_tokens
    prompts = [build_prompt(rec, tokenizer, max_length, dataset=name, chat=chat) for rec in records]
    with eval_mode(model):
        predictions = generate_greedy(model, tokenizer, prompts, budget, batch_size=batch_size, progress=progress)
    samples = [LongBenchSample(rec.id, rec.length, p, list(rec.answers),
                               score_sample(name, p, rec.answers, rec.all_classes))
               for rec, p in zip(records, predictions)]
    scores = [s.score for s in samples]
    buckets = bucket_means(scores, [s.length for s in samples]) if dataset.endswith("_e") else None
    return LongBenchResult(
        dataset=dataset, score=round(100 * sum(scores) / len(scores), 2), n=len(samples),
        max_length=max_length, samples=samples, buckets=buckets,
    )
