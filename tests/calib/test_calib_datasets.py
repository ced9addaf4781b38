"""Calibration data the ecosystem's way: a list of strings, a ``datasets.Dataset`` / ``IterableDataset``,
an ``hf:`` source streamed only as far as the windows need, parquet / csv files through datasets."""
from __future__ import annotations

import json

import datasets
import pytest
import torch

import compresskit
from compresskit.calib import build_samples, token_stream
from compresskit.core.errors import InputError

DOCS = [f"Document {i} talks about topic {i % 7} at some length, " * 6 for i in range(60)]


def test_a_list_of_strings_and_a_dataset_give_the_same_windows(tiny_tokenizer):
    """Both are read in order as far as the windows need (1.1 x nsamples x seqlen tokens), as a streamed
    dataset is."""
    ref = build_samples(tiny_tokenizer, list(DOCS), 4, 32, seed=3)
    assert ref.shape == (4, 32)
    rows = datasets.Dataset.from_dict({"content": DOCS, "id": list(range(len(DOCS)))})  # one string column
    assert torch.equal(build_samples(tiny_tokenizer, rows, 4, 32, seed=3), ref)
    streamed = datasets.Dataset.from_dict({"text": DOCS}).to_iterable_dataset()
    windows = build_samples(tiny_tokenizer, streamed, 4, 32, seed=3)  # read as far as 4 x 32 tokens need
    stream = token_stream(tiny_tokenizer, DOCS)
    assert all(any(torch.equal(w, stream[o:o + 32]) for o in range(stream.numel() - 31)) for w in windows)


def test_quantize_takes_a_dataset_through_the_api(tiny_tokenizer):
    from conftest import make_tiny_model

    m = make_tiny_model("llama")
    ds = datasets.Dataset.from_dict({"text": DOCS})
    compresskit.quantize(m, compresskit.GPTQConfig(wbits=4, group_size=32, nsamples=2, seqlen=32), tokenizer=tiny_tokenizer,
                         calib=ds)
    assert compresskit.record(m).manifest.recipe.method == "gptq"


def test_bad_in_memory_data_is_refused(tiny_tokenizer):
    with pytest.raises(InputError, match="must be strings"):
        build_samples(tiny_tokenizer, ["ok", 3], 2, 16)
    with pytest.raises(InputError, match="no column 'text'"):
        build_samples(tiny_tokenizer, datasets.Dataset.from_dict({"a": ["x"], "b": ["y"]}), 2, 16)
    with pytest.raises(InputError, match="a list of strings, a datasets.Dataset"):
        build_samples(tiny_tokenizer, {"text": "x"}, 2, 16)


def test_an_hf_source_is_streamed_and_stops_after_the_tokens_needed(tiny_tokenizer, monkeypatch):
    read = []

    def rows():
        for i in range(100_000):  # a corpus far larger than calibration needs
            read.append(i)
            yield {"text": DOCS[i % len(DOCS)]}

    def fake_load(name, config=None, split=None, streaming=False, **kw):
        assert streaming and (name, config, split) == ("org/corpus", "en", "train")
        return datasets.IterableDataset.from_generator(rows)

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    ids = build_samples(tiny_tokenizer, "hf:org/corpus:en", 4, 64)
    assert ids.shape == (4, 64) and 0 < len(read) < 100  # a few rows, not the corpus


def test_parquet_and_csv_files_are_read_through_datasets(tiny_tokenizer, tmp_path):
    ds = datasets.Dataset.from_dict({"body": DOCS})
    ds.to_parquet(str(tmp_path / "c.parquet"))
    ds.to_csv(str(tmp_path / "c.csv"), index=False)
    (tmp_path / "c.jsonl").write_text("".join(json.dumps({"body": d}) + "\n" for d in DOCS))
    ref = build_samples(tiny_tokenizer, f"file:{tmp_path / 'c.jsonl'}#body", 3, 32, seed=1)  # the same records
    for name in ("c.parquet", "c.csv"):
        assert torch.equal(build_samples(tiny_tokenizer, f"file:{tmp_path / name}#body", 3, 32, seed=1), ref), name


def test_hf_data_files_select_shards_and_local_files_go_through_datasets(tiny_tokenizer, tmp_path, monkeypatch):
    """``?data_files=`` reaches `datasets.load_dataset` (a hub shard, or local files under a packaged builder)."""
    from compresskit.calib.source import parse_source
    from compresskit.api_publish import public_name

    src = parse_source("hf:allenai/c4:en?data_files=en/c4-train.00000-of-01024.json.gz,en/c4-train.00001-of-01024.json.gz#body")
    assert src.hf_args() == ("allenai/c4", "en", "train") and src.field == "body"
    assert src.data_files == ["en/c4-train.00000-of-01024.json.gz", "en/c4-train.00001-of-01024.json.gz"]
    assert parse_source("hf:allenai/c4").data_files is None
    for bad in ("hf:org/x?split=train", "hf:org/x?data_files=", "hf:org/x?data_files=,"):
        with pytest.raises(InputError, match="data_files=GLOB"):
            parse_source(bad)
    # a real local read: the json builder, streamed, with the globbed shards in order
    for i in range(2):
        (tmp_path / f"s{i}.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in DOCS[i * 30:(i + 1) * 30]))
    ref = build_samples(tiny_tokenizer, list(DOCS), 3, 32, seed=2)
    got = build_samples(tiny_tokenizer, f"hf:json?data_files={tmp_path}/s0.jsonl,{tmp_path}/s1.jsonl", 3, 32, seed=2)
    assert torch.equal(got, ref)
    # saved files name local data files by their last part; hub-relative globs stay
    assert public_name(f"hf:json?data_files={tmp_path}/s0.jsonl,en/x.json.gz#text") == "hf:json?data_files=s0.jsonl,en/x.json.gz#text"
    seen = {}

    def fake_load(name, config=None, split=None, streaming=False, **kw):
        seen.update(kw)
        raise FileNotFoundError("no such shard")

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    from compresskit.calib.texts import DatasetLoadError
    with pytest.raises(DatasetLoadError, match=r"data_files=\['en/missing.json'\]"):
        build_samples(tiny_tokenizer, "hf:allenai/c4?data_files=en/missing.json", 2, 16)
    assert seen["data_files"] == ["en/missing.json"]
