"""Calibration data and its loaders (installed as compresskit.calib).

Imports only torch / transformers / datasets / the standard library.

Example::

    src = parse_source("builtin")  # shipped train split; also "file:PATH[#FIELD]", "generated", "hf:NAME[:CONFIG][:SPLIT]"
    x = build_samples(tokenizer, src, nsamples=128, seqlen=2048, seed=0)  # LongTensor [128, 2048]
"""
from .retrieval import retrieval_exercise, with_retrieval
from .samples import build_samples, sample_windows, token_stream
from .source import ACCEPTED_FORMS, CalibSource, parse_source
from .texts import DATA_DIR, DatasetLoadError, builtin_texts, heldout_text, load_texts

__all__ = [
    "ACCEPTED_FORMS",
    "CalibSource",
    "DATA_DIR",
    "DatasetLoadError",
    "build_samples",
    "builtin_texts",
    "heldout_text",
    "load_texts",
    "parse_source",
    "sample_windows",
    "retrieval_exercise",
    "token_stream",
    "with_retrieval",
]
