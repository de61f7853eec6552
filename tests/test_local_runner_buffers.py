"""pipeline/local_runner.py's compact grouping buffer against Beam's own on the coders
the job's shuffles carry: the same grouped bytes; values the runner sees as bytes
kept as they came (nothing encoded again), only the large ones compressed; and a
Beam whose BytesCoder no longer decodes a value to its own encoding is refused."""

from __future__ import annotations

import random

import pytest
from apache_beam.coders import coder_impl, coders
from apache_beam.coders.coder_impl import create_OutputStream
from apache_beam.runners.portability.fn_api_runner import execution
from apache_beam.transforms import core, window

from pipeline import local_runner

WINDOWING = core.Windowing(window.GlobalWindows())


def _beams_own():
    return local_runner._own(execution, "GroupingBuffer")


def _buffers(kv_coder, grouped_coder):
    pre = coders.WindowedValueCoder(kv_coder, coders.GlobalWindowCoder())
    post = coders.WindowedValueCoder(grouped_coder, coders.GlobalWindowCoder())
    base = _beams_own()
    return pre, post, base, local_runner._grouping_buffer_class(base)


def _encoded(pre, elements) -> bytes:
    stream = create_OutputStream()
    for kv in elements:
        pre.get_impl().encode_to_stream(window.GlobalWindows.windowed_value(kv), stream, True)
    return stream.get()


def _values(rng: random.Random, n: int):
    """Bytes of every size around the compression threshold: empty, tiny, text-like
    (compressible), random (not), and some starting like a zstd frame."""
    out = []
    for i in range(n):
        size = rng.choice([0, 1, 7, 100, local_runner.COMPRESS_ABOVE - 1, local_runner.COMPRESS_ABOVE,
                           local_runner.COMPRESS_ABOVE + 1, 3000, 40_000])
        kind = i % 3
        if kind == 0:
            value = (b"word %d " % i * (size // 6 + 1))[:size]
        elif kind == 1:
            value = rng.randbytes(size)
        else:
            value = (b"\x28\xb5\x2f\xfd" + rng.randbytes(size))[:size]
        out.append(value)
    return out


SHAPES = {
    "bytes values, bytes keys": (coders.BytesCoder(), coders.BytesCoder(), lambda i: b"k%d" % (i % 23), None),
    "bytes values, varint keys": (coders.VarIntCoder(), coders.BytesCoder(), lambda i: i % 5, None),
    "bytes values, tuple keys": (coders.TupleCoder([coders.BytesCoder(), coders.BytesCoder()]), coders.BytesCoder(),
                                 lambda i: (b"a", b"%d" % (i % 4)), None),
    "(str, bytes) values": (coders.BytesCoder(), coders.TupleCoder([coders.StrUtf8Coder(), coders.BytesCoder()]),
                            lambda i: b"k%d" % (i % 9), lambda i, v: (f"ü{i}", v)),
    "python values": (coders.BytesCoder(), coders.FastPrimitivesCoder(), lambda i: b"k%d" % (i % 9),
                      lambda i, v: {"i": i, "text": v.decode("latin-1"), "list": [i, None, 1.5]}),
}


@pytest.fixture
def beams_own_in_place(monkeypatch):
    """Beam's GroupingBuffer as the runner module's own for the test: its ``extend``
    checks buffers against that name, which the local runner's patches (installed by any
    job this process ran before) point at a compact class other than the test's."""
    monkeypatch.setattr(execution, "GroupingBuffer", _beams_own())


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_the_compact_buffer_groups_to_beams_own_bytes(shape, beams_own_in_place):
    key_coder, value_coder, key, wrap = SHAPES[shape]
    pre, post, base, compact = _buffers(coders.TupleCoder([key_coder, value_coder]),
                                        coders.TupleCoder([key_coder, coders.IterableCoder(value_coder)]))
    rng = random.Random(shape)
    values = _values(rng, 240)
    elements = [(key(i), wrap(i, v) if wrap else v) for i, v in enumerate(values)]
    pieces = [_encoded(pre, elements[k:k + 37]) for k in range(0, len(elements), 37)]
    for n in (1, 2, 3):
        theirs, ours = base(pre, post, WINDOWING), compact(pre, post, WINDOWING)
        for piece in pieces:
            theirs.append(piece)
            ours.append(piece)
        assert [b"".join(p) for p in ours.partition(n)] == [b"".join(p) for p in theirs.partition(n)]
    theirs, ours = base(pre, post, WINDOWING), compact(pre, post, WINDOWING)
    for piece in pieces:
        theirs.append(piece)
        ours.append(piece)
    assert b"".join(ours) == b"".join(theirs)
    # Beam's own buffer's table, and another compact one's, join a compact one's
    half = len(pieces) // 2
    merged, own, other = compact(pre, post, WINDOWING), base(pre, post, WINDOWING), compact(pre, post, WINDOWING)
    whole = base(pre, post, WINDOWING)
    for piece in pieces[:half]:
        merged.append(piece)
    for piece in pieces[half:]:
        own.append(piece)
        other.append(piece)
    merged.extend(own)
    merged.extend(other)
    for piece in pieces + pieces[half:]:
        whole.append(piece)
    assert b"".join(merged) == b"".join(whole)


def test_values_seen_as_bytes_are_kept_as_they_came_and_only_large_ones_compressed():
    pre, post, base, compact = _buffers(coders.TupleCoder([coders.BytesCoder(), coders.BytesCoder()]),
                                        coders.TupleCoder([coders.BytesCoder(),
                                                           coders.IterableCoder(coders.BytesCoder())]))
    above = local_runner.COMPRESS_ABOVE
    small, edge, large, noise = b"s" * 100, b"e" * above, b"large text " * 500, random.Random(1).randbytes(5000)
    ours = compact(pre, post, WINDOWING)
    ours.append(_encoded(pre, [(b"k", small), (b"k", edge), (b"k", large), (b"k", noise)]))
    stored = ours._table[b"k"]
    assert stored[:2] == [small, edge] and all(type(v) is bytes for v in stored[:2])   # not compressed
    assert type(stored[2]) is local_runner._Zstd and len(stored[2]) < len(large) // 10
    assert type(stored[3]) is bytes and stored[3] == noise                             # did not get smaller
    assert ours._values_are_bytes and ours._compressed


def test_python_values_are_encoded_once_and_decoded_once():
    """A coder the runner knows (FastPrimitivesCoder here): its values encoded as they
    arrive and decoded as the grouped output is made, once each."""
    pre, post, base, compact = _buffers(coders.TupleCoder([coders.BytesCoder(), coders.FastPrimitivesCoder()]),
                                        coders.TupleCoder([coders.BytesCoder(),
                                                           coders.IterableCoder(coders.FastPrimitivesCoder())]))
    ours = compact(pre, post, WINDOWING)
    assert not ours._values_are_bytes
    ours.append(_encoded(pre, [(b"k", {"a": 1}), (b"k", "x" * 5000)]))
    assert ours._table[b"k"][0] == coders.FastPrimitivesCoder().encode({"a": 1})
    assert type(ours._table[b"k"][1]) is local_runner._Zstd


def test_a_bytes_coder_that_no_longer_decodes_to_its_encoding_is_refused(monkeypatch):
    class Decoding(coder_impl.BytesCoderImpl):      # what a later Beam might do: a view, not bytes
        def decode_from_stream(self, in_stream, nested):
            return bytearray(super().decode_from_stream(in_stream, nested))

    assert local_runner.problems() == []
    monkeypatch.setattr(coder_impl, "BytesCoderImpl", Decoding)
    found = dict(local_runner.problems())
    assert "BytesCoder does not decode a value to its own encoding" in found["compact shuffle buffers"], found
