"""Tests for compresskit.calib: source specs, shipped corpus, file/generated/hf loaders, calibration windows."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch

from compresskit.calib import (
    CalibSource,
    build_samples,
    builtin_texts,
    heldout_text,
    load_texts,
    parse_source,
    token_stream,
)
from compresskit.calib.texts import DATA_DIR

DOCS = [
    "The harbor town kept its ledgers in a tin box under the stairs, and every spring the clerk counted the boats.",
    "A workshop needs light, a flat bench, and a place for every tool; the rest is patience and practice.",
    "Wetlands filter water slowly, storing floods in winter and releasing them through the long dry summer.",
]


def _stream(tokenizer, texts: list[str]) -> list[int]:
    """Reference token stream: each document tokenized alone, EOS between documents."""
    out: list[int] = []
    for i, text in enumerate(texts):
        if i:
            out.append(tokenizer.eos_token_id)
        out.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
    return out


def _is_window(stream: list[int], row: torch.Tensor) -> bool:
    """Whether ``row`` occurs as a contiguous run of ``stream``."""
    s = torch.tensor(stream)
    return bool((s.unfold(0, row.numel(), 1) == row).all(dim=1).any())


@pytest.fixture
def txt_file(tmp_path: Path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text("\n\n".join(DOCS), encoding="utf-8")
    return path


@pytest.fixture
def corpus_dir(tmp_path: Path) -> Path:
    d = tmp_path / "corpus"
    (d / "sub").mkdir(parents=True)
    (d / "a.txt").write_text(DOCS[0], encoding="utf-8")
    (d / "b.jsonl").write_text(json.dumps({"text": DOCS[1]}) + "\n", encoding="utf-8")
    (d / "sub" / "c.json").write_text(json.dumps([{"text": DOCS[2]}]), encoding="utf-8")
    (d / "ignored.csv").write_text("not,calibration\n", encoding="utf-8")
    return d


# ---------------------------------------------------------------- parse_source


@pytest.mark.parametrize(
    "spec, kind, value",
    [
        ("builtin", "builtin", None),
        ("generated", "generated", None),
        ("hf:wikitext:wikitext-2-raw-v1:test", "hf", "wikitext:wikitext-2-raw-v1:test"),
        ("hf:allenai/c4", "hf", "allenai/c4"),
        ("hf:org/name::validation[:100]#body", "hf", "org/name::validation[:100]#body"),
    ],
)
def test_parse_source_keywords_round_trip(spec: str, kind: str, value: str | None) -> None:
    src = parse_source(spec)
    assert (src.kind, src.value) == (kind, value)
    assert str(src) == spec
    assert parse_source(str(src)) == src
    assert CalibSource.from_dict(json.loads(json.dumps(src.to_dict()))) == src
    assert parse_source(src) is src


def test_parse_source_hf_args() -> None:
    assert parse_source("hf:wikitext:wikitext-2-raw-v1:test").hf_args() == ("wikitext", "wikitext-2-raw-v1", "test")
    assert parse_source("hf:allenai/c4").hf_args() == ("allenai/c4", None, "train")
    src = parse_source("hf:org/name::validation[:100]#body")
    assert src.hf_args() == ("org/name", None, "validation[:100]")
    assert src.field == "body"
    assert parse_source("hf:x").field == "text"


def test_parse_source_files_round_trip(txt_file: Path, tmp_path: Path) -> None:
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text(json.dumps({"body": "x"}) + "\n", encoding="utf-8")
    for spec in (f"file:{txt_file}", f"file:{jsonl}#body", f"file:{tmp_path}"):
        src = parse_source(spec)
        assert src.kind == "file" and str(src) == spec and parse_source(str(src)) == src
    plain = parse_source(str(txt_file))  # an existing plain path is a file source
    assert plain == CalibSource("file", str(txt_file))
    assert plain.path == txt_file and plain.field == "text"
    assert parse_source(f"file:{jsonl}#body").path == jsonl
    assert parse_source(f"file:{jsonl}#body").field == "body"


def test_parse_source_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError) as err:
        parse_source("wikitext2")
    for form in ("builtin", "file:", "generated", "hf:"):
        assert form in str(err.value)
    missing = tmp_path / "nope" / "missing.jsonl"
    for spec in (f"file:{missing}", str(missing)):
        with pytest.raises(FileNotFoundError, match="missing.jsonl"):
            parse_source(spec)
    bad_suffix = tmp_path / "data.xlsx"
    bad_suffix.write_text("a,b\n")
    with pytest.raises(ValueError, match=r"\.xlsx"):
        parse_source(f"file:{bad_suffix}")
    for bad in ("", "file:", "hf:", "hf::cfg"):
        with pytest.raises(ValueError):
            parse_source(bad)
    with pytest.raises(ValueError):
        CalibSource("s3", "bucket")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        CalibSource("builtin", "x")
    with pytest.raises(ValueError):
        CalibSource("file")
    with pytest.raises(ValueError):
        CalibSource.from_dict({"value": "x"})


# ---------------------------------------------------------------- shipped corpus


def test_builtin_splits_nonempty_and_disjoint() -> None:
    train, heldout = builtin_texts("train"), builtin_texts("heldout")
    for split, texts in (("train", train), ("heldout", heldout)):  # one string per non-empty shipped file
        assert len(texts) == sum(1 for p in (DATA_DIR / split).glob("*.txt") if p.read_text(encoding="utf-8").strip())
    assert train and heldout
    assert all(isinstance(t, str) and t.strip() for t in train + heldout)
    assert not set(train) & set(heldout)
    assert not {p.name for p in (DATA_DIR / "train").glob("*.txt")} & {p.name for p in (DATA_DIR / "heldout").glob("*.txt")}
    assert builtin_texts() == train
    assert heldout_text() == "\n\n".join(heldout)
    assert load_texts("builtin") == train  # calibration never sees the heldout split
    with pytest.raises(ValueError):
        builtin_texts("test")  # type: ignore[arg-type]


def test_every_shipped_document_is_on_record_and_no_paragraph_is_in_both_splits() -> None:
    readme = (DATA_DIR / "README.md").read_text(encoding="utf-8")
    for split in ("train", "heldout", "candidates"):
        for path in (DATA_DIR / split).glob("*.txt"):
            assert f"`{path.name}` | {split} |" in readme, f"{path.name} is not listed in calib/data/README.md"
    paragraphs = {split: {p.strip() for path in (DATA_DIR / split).glob("*.txt")
                          for p in path.read_text(encoding="utf-8").split("\n\n") if len(p.strip()) > 80}
                  for split in ("train", "heldout", "candidates")}
    assert all(len(found) > 100 for found in paragraphs.values())
    assert not (paragraphs["train"] | paragraphs["candidates"]) & paragraphs["heldout"]


def test_build_samples_builtin(tiny_tokenizer) -> None:
    x = build_samples(tiny_tokenizer, "builtin", nsamples=4, seqlen=64, seed=0)
    assert x.shape == (4, 64) and x.dtype == torch.long
    stream = _stream(tiny_tokenizer, builtin_texts("train"))
    assert all(_is_window(stream, row) for row in x)


# ---------------------------------------------------------------- build_samples


def test_build_samples_shape_determinism_windows(tiny_tokenizer, txt_file: Path) -> None:
    a = build_samples(tiny_tokenizer, f"file:{txt_file}", nsamples=3, seqlen=8, seed=0)
    b = build_samples(tiny_tokenizer, str(txt_file), nsamples=3, seqlen=8, seed=0)
    c = build_samples(tiny_tokenizer, parse_source(str(txt_file)), nsamples=3, seqlen=8, seed=1)
    assert a.shape == (3, 8) and a.dtype == torch.long
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    stream = _stream(tiny_tokenizer, load_texts(str(txt_file)))
    assert all(_is_window(stream, row) for row in torch.cat([a, c]))


def test_token_stream_puts_eos_between_documents(tiny_tokenizer) -> None:
    got = token_stream(tiny_tokenizer, ["The sky", "", "is blue"]).tolist()
    ids = lambda t: tiny_tokenizer(t, add_special_tokens=False)["input_ids"]  # noqa: E731
    assert got == ids("The sky") + [tiny_tokenizer.eos_token_id] + ids("is blue")


def test_build_samples_from_files(tiny_tokenizer, tmp_path: Path, corpus_dir: Path) -> None:
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text("\n".join(json.dumps({"text": d, "id": i}) for i, d in enumerate(DOCS)) + "\n\n", encoding="utf-8")
    other = tmp_path / "other.jsonl"
    other.write_text("\n".join(json.dumps({"body": d, "text": "wrong"}) for d in DOCS), encoding="utf-8")
    assert load_texts(f"file:{jsonl}") == DOCS
    assert load_texts(f"file:{other}#body") == DOCS
    assert load_texts(str(corpus_dir)) == DOCS  # sorted, recursive, .csv skipped
    with pytest.raises(ValueError, match="nofield"):
        load_texts(f"file:{jsonl}#nofield")
    for spec in (f"file:{jsonl}", f"file:{other}#body", f"file:{corpus_dir}"):
        x = build_samples(tiny_tokenizer, spec, nsamples=2, seqlen=16, seed=3)
        assert x.shape == (2, 16)
        assert all(_is_window(_stream(tiny_tokenizer, DOCS), row) for row in x)


def test_build_samples_too_short_and_bad_args(tiny_tokenizer, tmp_path: Path, txt_file: Path) -> None:
    short = tmp_path / "short.txt"
    short.write_text("The sky is blue.", encoding="utf-8")
    n = len(tiny_tokenizer("The sky is blue.", add_special_tokens=False)["input_ids"])
    with pytest.raises(ValueError) as err:
        build_samples(tiny_tokenizer, str(short), nsamples=1, seqlen=n + 7)
    assert str(n) in str(err.value) and str(n + 7) in str(err.value)
    with pytest.raises(ValueError, match="nsamples"):
        build_samples(tiny_tokenizer, str(txt_file), nsamples=0, seqlen=8)
    with pytest.raises(ValueError, match="seqlen"):
        build_samples(tiny_tokenizer, str(txt_file), nsamples=1, seqlen=1)


def test_build_samples_overlap_warns_once(tiny_tokenizer, txt_file: Path) -> None:
    n = len(_stream(tiny_tokenizer, load_texts(str(txt_file))))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        x = build_samples(tiny_tokenizer, str(txt_file), nsamples=20, seqlen=n // 2)
        build_samples(tiny_tokenizer, str(txt_file), nsamples=1, seqlen=n // 2)  # fits: no warning
    assert x.shape == (20, n // 2)
    assert len(caught) == 1 and "overlap" in str(caught[0].message)


# ---------------------------------------------------------------- generated / hf


def test_generated_source(tiny_llama, tiny_tokenizer, monkeypatch) -> None:
    with pytest.raises(ValueError, match="model"):
        load_texts("generated")
    calls: list[dict] = []
    real_generate = tiny_llama.generate

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real_generate(*args, **kwargs)

    monkeypatch.setattr(tiny_llama, "generate", spy)
    texts = load_texts("generated", model=tiny_llama, tokenizer=tiny_tokenizer, n_generated=2, gen_tokens=16, seed=0)
    again = load_texts("generated", model=tiny_llama, tokenizer=tiny_tokenizer, n_generated=2, gen_tokens=16, seed=0)
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)
    assert texts == again and any(texts)
    kw = calls[0]
    assert kw["do_sample"] is True and kw["temperature"] == 1.0 and kw["top_k"] in (0, None)
    assert kw["max_new_tokens"] == 16
    assert kw["input_ids"].shape == (2, 1) and (kw["input_ids"] == tiny_tokenizer.bos_token_id).all()
    x = build_samples(tiny_tokenizer, "generated", nsamples=2, seqlen=16, seed=0, model=tiny_llama)
    assert x.shape == (2, 16) and x.dtype == torch.long
    assert calls[-1]["max_new_tokens"] <= 16  # generation length capped at seqlen


def test_hf_source_unreachable_gives_clear_error(monkeypatch) -> None:
    import datasets.config
    import huggingface_hub.constants

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # datasets reads the env vars at import time; patch its cached flags too so the call fails fast.
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(RuntimeError) as err:
        load_texts("hf:compresskit-no-such-org/no-such-dataset")
    msg = str(err.value)
    assert "compresskit-no-such-org/no-such-dataset" in msg and "file:" in msg
