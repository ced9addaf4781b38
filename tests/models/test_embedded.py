"""The embedded model's conversion helpers (the conversion itself: tests/integration/test_smollm2.py)."""
from __future__ import annotations

import gguf
import numpy as np
import pytest
from transformers import modeling_gguf_pytorch_utils as hf_gguf

from compresskit.models.embedded import parsed_once


def _tiny_gguf(path, value: int) -> None:
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_uint32("test.value", value)
    writer.add_tensor("blk.0.attn_q.weight", np.arange(8, dtype=np.float32).reshape(2, 4))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_a_file_is_parsed_once_inside_the_block_and_nothing_is_kept_after(tmp_path):
    a, b = tmp_path / "a.gguf", tmp_path / "b.gguf"
    _tiny_gguf(a, 1)
    _tiny_gguf(b, 2)
    real_reader, real_map, real_bar = gguf.GGUFReader, gguf.get_tensor_name_map, hf_gguf.tqdm
    with parsed_once():
        first = gguf.GGUFReader(a)
        assert gguf.GGUFReader(str(a)) is first  # the same file by another spelling: the same reader
        other = gguf.GGUFReader(b)
        assert other is not first
        assert int(first.fields["test.value"].parts[-1][0]) == 1 and int(other.fields["test.value"].parts[-1][0]) == 2
        np.testing.assert_array_equal(np.asarray(first.tensors[0].data).reshape(-1), np.arange(8, dtype=np.float32))
        arch = gguf.MODEL_ARCH.LLAMA
        assert gguf.get_tensor_name_map(arch, 2) is gguf.get_tensor_name_map(arch, 2)
        assert gguf.get_tensor_name_map(arch, 3) is not gguf.get_tensor_name_map(arch, 2)
        assert list(hf_gguf.tqdm([1, 2], desc="bar")) == [1, 2]  # the conversion bar: silent, same items
    assert (gguf.GGUFReader, gguf.get_tensor_name_map, hf_gguf.tqdm) == (real_reader, real_map, real_bar)
    assert gguf.GGUFReader(a) is not first


def test_the_originals_come_back_when_the_body_raises(tmp_path):
    real = (gguf.GGUFReader, gguf.get_tensor_name_map, hf_gguf.tqdm)
    with pytest.raises(KeyError, match="boom"), parsed_once():
        raise KeyError("boom")
    assert (gguf.GGUFReader, gguf.get_tensor_name_map, hf_gguf.tqdm) == real
