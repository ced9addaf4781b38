"""core.packing: round-trips, an independent bit-stream packer, GPTQ's 3-bit pattern, errors."""
from __future__ import annotations

import pytest
import torch

from compresskit.core.packing import block_shape, pack_int, packed_len, unpack_int



BITS = (2, 3, 4, 8)
LEADING = ((), (1,), (3,), (2, 5))


def _values_per_block(bits: int) -> int:
    # written out, not taken from the code under test
    return {2: 16, 3: 32, 4: 8, 8: 4}[bits]


def slow_pack(values: list[int], bits: int) -> list[int]:
    """Pure-Python packer: concatenate the values little-endian into one big integer bit stream
    (value j at bits [j*bits, (j+1)*bits)), then cut it into 32-bit words and read them as int32."""
    stream = 0
    for j, v in enumerate(values):
        assert 0 <= v < (1 << bits)
        stream |= v << (j * bits)
    n_words = len(values) * bits // 32
    words = []
    for w in range(n_words):
        u = (stream >> (32 * w)) & 0xFFFFFFFF
        words.append(u - (1 << 32) if u >= (1 << 31) else u)
    return words


def slow_unpack(words: list[int], bits: int, n: int) -> list[int]:
    stream = 0
    for w, s in enumerate(words):
        stream |= (s & 0xFFFFFFFF) << (32 * w)
    return [(stream >> (j * bits)) & ((1 << bits) - 1) for j in range(n)]


def _rand_codes(shape, bits, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 2**bits, shape, generator=g, dtype=torch.int64).to(torch.uint8)


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("lead", LEADING)
def test_round_trip(bits, lead):
    n = _values_per_block(bits) * 3
    q = _rand_codes((*lead, n), bits, seed=bits)
    packed = pack_int(q, bits)
    assert packed.dtype == torch.int32
    assert packed.shape == (*lead, n * bits // 32)
    out = unpack_int(packed, bits, n)
    assert out.dtype == torch.uint8
    assert torch.equal(out, q)


@pytest.mark.parametrize("bits", BITS)
def test_round_trip_extremes(bits):
    """All-zero, all-max and alternating patterns (sign bit of the int32 words set)."""
    n = _values_per_block(bits) * 2
    maxv = 2**bits - 1
    for vals in ([0] * n, [maxv] * n, [maxv if j % 2 else 0 for j in range(n)]):
        q = torch.tensor([vals], dtype=torch.uint8)
        assert torch.equal(unpack_int(pack_int(q, bits), bits, n), q)
    all_ones = pack_int(torch.full((1, n), maxv, dtype=torch.uint8), bits)
    assert torch.all(all_ones == -1)  # every bit of every word set


@pytest.mark.parametrize("bits", BITS)
def test_matches_slow_reference_packer(bits):
    n = _values_per_block(bits) * 4
    q = _rand_codes((6, n), bits, seed=100 + bits)
    packed = pack_int(q, bits)
    for r in range(q.shape[0]):
        vals = [int(v) for v in q[r]]
        assert packed[r].tolist() == slow_pack(vals, bits)
        assert unpack_int(packed[r], bits, n).tolist() == slow_unpack(packed[r].tolist(), bits, n)


@pytest.mark.parametrize("bits", BITS)
def test_unpack_of_arbitrary_words_matches_slow_reference(bits):
    """unpack_int of random int32 words (not produced by pack_int) reads the same bit stream."""
    n = _values_per_block(bits) * 2
    m = n * bits // 32
    g = torch.Generator().manual_seed(7)
    words = torch.randint(-(2**31), 2**31, (4, m), generator=g, dtype=torch.int64).to(torch.int32)
    out = unpack_int(words, bits, n)
    for r in range(4):
        assert out[r].tolist() == slow_unpack(words[r].tolist(), bits, n)
    assert torch.equal(pack_int(out, bits), words)


def _bit(word: int, i: int) -> int:
    return ((word & 0xFFFFFFFF) >> i) & 1


def test_gptq_3bit_straddling_values():
    # value 10 = 0b110 (low 2 bits 0b10, high bit 1); value 21 = 0b101 (low bit 1, high 2 bits 0b10)
    vals = [0] * 32
    vals[10] = 0b110
    q = torch.tensor([vals], dtype=torch.uint8)
    w = pack_int(q, 3)[0].tolist()
    assert len(w) == 3
    assert (_bit(w[0], 30), _bit(w[0], 31)) == (0, 1)  # low 2 bits of value 10
    assert _bit(w[1], 0) == 1  # high bit of value 10
    assert (w[0] & 0xFFFFFFFF) == 0b10 << 30 and w[1] == 1 and w[2] == 0

    vals = [0] * 32
    vals[21] = 0b101
    w = pack_int(torch.tensor([vals], dtype=torch.uint8), 3)[0].tolist()
    assert _bit(w[1], 31) == 1  # low bit of value 21
    assert (_bit(w[2], 0), _bit(w[2], 1)) == (0, 1)  # high 2 bits (0b10) of value 21
    assert w[0] == 0 and (w[1] & 0xFFFFFFFF) == 1 << 31 and w[2] == 0b10

    # the "10 | 1 | 10 | 1 | 10" layout: value 11 starts at bit 1 of word 1, value 22 at bit 2 of word 2
    for j, (word, bit) in {0: (0, 0), 9: (0, 27), 11: (1, 1), 20: (1, 28), 22: (2, 2), 31: (2, 29)}.items():
        vals = [0] * 32
        vals[j] = 0b111
        w = pack_int(torch.tensor(vals, dtype=torch.uint8), 3).tolist()
        expect = [0, 0, 0]
        expect[word] = 0b111 << bit
        assert [x & 0xFFFFFFFF for x in w] == expect, j


def test_4bit_layout():
    q = torch.arange(16, dtype=torch.uint8)  # value i at position i
    w = pack_int(q, 4).tolist()
    assert len(w) == 2
    for i in range(16):
        assert ((w[i // 8] & 0xFFFFFFFF) >> (4 * (i % 8))) & 0xF == i


@pytest.mark.parametrize("bits,expected", [(2, (16, 1)), (3, (32, 3)), (4, (8, 1)), (8, (4, 1))])
def test_block_shape(bits, expected):
    assert block_shape(bits) == expected
    assert packed_len(expected[0] * 5, bits) == expected[1] * 5


@pytest.mark.parametrize("bits", [0, 9, -1])
def test_block_shape_rejects_bad_bits(bits):
    with pytest.raises(ValueError, match="bits"):
        block_shape(bits)


@pytest.mark.parametrize("bits", BITS)
def test_out_of_range_values(bits):
    n = _values_per_block(bits)
    too_big = torch.zeros(2, n, dtype=torch.int32)
    too_big[1, 3] = 2**bits
    with pytest.raises(ValueError, match="out of range"):
        pack_int(too_big, bits)
    negative = torch.zeros(2, n, dtype=torch.int32)
    negative[0, 0] = -1
    with pytest.raises(ValueError, match="out of range"):
        pack_int(negative, bits)


@pytest.mark.parametrize("bits", BITS)
def test_bad_lengths(bits):
    n = _values_per_block(bits)
    with pytest.raises(ValueError, match="multiple of"):
        pack_int(torch.zeros(2, n + 1, dtype=torch.uint8), bits)
    with pytest.raises(ValueError, match="multiple of"):
        packed_len(n - 1, bits)
    packed = pack_int(torch.zeros(2, 2 * n, dtype=torch.uint8), bits)
    with pytest.raises(ValueError, match="expected"):
        unpack_int(packed, bits, n)  # words for 2n values, asked for n
    with pytest.raises(ValueError, match="expected"):
        unpack_int(packed[:, :-1], bits, 2 * n)
    with pytest.raises(ValueError):
        unpack_int(packed, bits, 2 * n + 1)
