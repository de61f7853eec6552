"""Hostile inputs, second set (issue 28): Content-Encoding bombs inside a record,
TIFFs of many frames, pages nested deeper than the parser reads, and UTF-16 pages
labelled UTF-8. Each was silently wrong or unbounded before."""

import gzip
import io
import time
import tracemalloc
import zlib

import pytest

from conftest import IN_MEMORY, SHARED, run_job
from hostile.archives import PAGE, pages
from hostile.bombs import (MIB, brotli_of_zeros, encoded_response, gzip_of_zeros, tiff_with_ifds,
                           zstd_of_zeros)
from hostile.pages import article
from warcgen import http_response

# -- Content-Encoding bombs ----------------------------------------------------------------

BOMBS = {
    "gzip": lambda n: gzip_of_zeros(n),
    "x-gzip": lambda n: gzip_of_zeros(n),
    "deflate": lambda n: gzip_of_zeros(n, wbits=15),
    "br": brotli_of_zeros,
    "zstd": zstd_of_zeros,
    "gzip, gzip": lambda n: gzip.compress(gzip_of_zeros(n), mtime=0),
    "br, gzip": lambda n: gzip.compress(brotli_of_zeros(n), mtime=0),
}


def _read(data: bytes, cap: int):
    from archives.records import ArchiveRecord, iter_archive
    items = list(iter_archive(io.BytesIO(data), "mem", max_payload_bytes=cap))
    return [i for i in items if isinstance(i, ArchiveRecord)], [i for i in items if not isinstance(i, ArchiveRecord)]


@pytest.mark.parametrize("encoding", list(BOMBS))
def test_a_content_encoding_bomb_stops_at_the_cap_without_being_held(encoding):
    body = BOMBS[encoding](256)                      # 256 MiB of zeros, in 1 KB to 270 KB
    assert len(body) < 300_000
    data = encoded_response("http://example.com/bomb", body, encoding) + b"".join(pages(2))
    tracemalloc.start()
    got, errors = _read(data, cap=1 * MIB)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert not errors
    bomb, *rest = got
    assert bomb.oversize and bomb.payload == b""       # the job counts it too_large
    assert bomb.notes == [f"Content-Encoding {encoding!r} inflates past {MIB} bytes"]
    assert [r.target_uri for r in rest] == ["http://example.com/p0", "http://example.com/p1"]
    assert peak < len(data) + 6 * MIB, peak            # was 256 MiB and more: the whole inflated body


def test_brotli_that_cannot_cap_its_output_is_fed_in_small_pieces(monkeypatch):
    from archives import decoding as warc
    monkeypatch.setattr(warc, "_brotli_process", lambda dec, data: None)     # as brotli before 1.1
    tracemalloc.start()
    got, _ = _read(encoded_response("http://example.com/bomb", brotli_of_zeros(256), "br"), cap=1 * MIB)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert got[0].oversize and got[0].payload == b""
    assert peak < 16 * MIB, peak
    import brotli
    ok, _ = _read(encoded_response("http://example.com/a", brotli.compress(PAGE), "br"), cap=1 * MIB)
    assert ok[0].payload == PAGE and not ok[0].notes


def test_chained_and_zstd_codings_are_undone_last_first():
    import brotli
    import zstandard
    cases = {
        "gzip, gzip": gzip.compress(gzip.compress(PAGE)),
        "deflate, br": brotli.compress(zlib.compress(PAGE)),
        "identity, gzip": gzip.compress(PAGE),
        "zstd": zstandard.ZstdCompressor().compress(PAGE),
        "GZIP , br": brotli.compress(gzip.compress(PAGE)),
    }
    for encoding, body in cases.items():
        got, errors = _read(encoded_response("http://example.com/a", body, encoding), cap=1 * MIB)
        assert not errors and got[0].payload == PAGE and not got[0].notes, encoding
    # a body just under the cap is kept whole; one byte over is too large
    exact = gzip_of_zeros(1)
    got, _ = _read(encoded_response("http://example.com/a", exact, "gzip"), cap=MIB)
    assert got[0].payload == bytes(MIB) and not got[0].oversize
    got, _ = _read(encoded_response("http://example.com/a", exact, "gzip"), cap=MIB - 1)
    assert got[0].oversize and got[0].payload == b""
    # an unknown coding anywhere in the list leaves the body as it came, named
    got, _ = _read(encoded_response("http://example.com/a", gzip.compress(PAGE), "gzip, compress"), cap=MIB)
    assert got[0].notes == ["content_encoding_unknown"] and got[0].payload == gzip.compress(PAGE)


# -- TIFFs of many frames ------------------------------------------------------------------

def test_a_tiff_of_160k_frames_is_judged_in_well_under_a_second():
    from filters.config import ImageConfig
    from filters.images import judge_image
    data = tiff_with_ifds(160_000)                   # 20 MB; Pillow's n_frames took 300 s
    t0 = time.monotonic()
    verdict, stored = judge_image(data, ImageConfig())
    assert time.monotonic() - t0 < 0.5
    assert not verdict.keep and verdict.reason == "too_many_frames" and stored is None
    assert 1 < verdict.scores["max_frames"] < 160_000


@pytest.mark.parametrize("n", [1, 3, 200])
def test_tiff_frames_are_counted_as_pillow_counts_them(n):
    from PIL import Image

    from filters.config import ImageConfig
    from filters.images import judge_image, tiff_frames
    data = tiff_with_ifds(n)
    assert tiff_frames(data) == Image.open(io.BytesIO(data)).n_frames == n
    verdict, stored = judge_image(data, ImageConfig())
    assert verdict.keep and stored.frames == n


def test_a_tiff_whose_frames_loop_or_are_cut_short():
    import struct

    from filters.images import tiff_frames
    data = bytearray(tiff_with_ifds(4))
    (first,) = struct.unpack_from("<L", data, 4)
    ifds = [first]
    while True:
        (count,) = struct.unpack_from("<H", data, ifds[-1])
        (nxt,) = struct.unpack_from("<L", data, ifds[-1] + 2 + 12 * count)
        if not nxt:
            break
        ifds.append(nxt)
    last_next = ifds[-1] + 2 + 12 * count
    looped = bytes(data[:last_next]) + struct.pack("<L", ifds[1]) + bytes(data[last_next + 4:])
    assert tiff_frames(looped) == 4                 # back to the second: the end, as in Pillow
    with pytest.raises(ValueError):                 # Pillow fails on it too: undecodable
        tiff_frames(bytes(data[:ifds[2] + 20]))


# -- pages nested deeper than libxml2 reads ------------------------------------------------

URL = "https://www.dw.com/en/colonial"


def _wrapped(n: int, opener: str = "<div>") -> str:
    page = article()
    body = page.find(">", page.find("<body")) + 1
    return page[:body] + opener * n + page[body:].replace("</body>", "</div>" * n + "</body>", 1)


@pytest.mark.parametrize("n", [250, 400, 3000])
def test_an_article_inside_hundreds_of_wrappers_is_extracted_whole(n):
    from filters.html import extract_content
    plain = [(i.kind, i.text) for i in extract_content(article(), URL).items]
    t0 = time.monotonic()
    deep = extract_content(_wrapped(n), URL)
    assert time.monotonic() - t0 < 5
    assert [(i.kind, i.text) for i in deep.items] == plain        # 250: only the cookie banner was left
    assert deep.flattening is not None and deep.flattening.depth > 0


def test_classed_wrappers_past_the_huge_limit_keep_the_article():
    from filters.html import extract_content
    plain = [i.text for i in extract_content(article(), URL).items]
    assert [i.text for i in extract_content(_wrapped(3000, '<div class="wrap">'), URL).items] == plain


@pytest.mark.parametrize("n", [400, 3000])
def test_unclosed_div_and_p_lose_no_paragraph(n):
    from filters.html import extract_content
    page = "<html><body>" + "".join(f"<div><p>Paragraph number {i} has a few words in it for the reader."
                                    for i in range(n)) + "</body></html>"
    content = extract_content(page, "https://example.com/x")
    assert [i.text for i in content.items] == [
        f"Paragraph number {i} has a few words in it for the reader." for i in range(n)]    # 400: 252 were left


def test_text_at_every_level_of_a_deep_nest_is_kept():
    from filters.html import extract_content
    n = 3000
    page = "<html><body>" + "".join(f"<blockquote>Quoted reply {i} says a few words here." for i in range(n)) \
        + "</body></html>"
    content = extract_content(page, "https://example.com/x")
    text = " ".join(i.text for i in content.items)
    assert all(f"Quoted reply {i} says" in text for i in range(n))
    assert content.flattening.merged > 0


def test_pages_under_the_limit_are_parsed_as_before():
    """The check is a bound on the tags, no parse: ordinary pages go to trafilatura as
    they came (only a page whose bound passes the limit is parsed first, and handed on
    as it came when the parse is no deeper than the limit)."""
    from filters.html import nesting_bound, shallow_tree
    for path in sorted((SHARED / "html").glob("*.html")):
        text = path.read_text(encoding="utf-8", errors="replace")
        assert nesting_bound(text) < 250, path.name
        assert shallow_tree(text) == (None, None)
    sloppy = "<html><body>" + "<p>Unclosed paragraph. " * 400 + "</body></html>"
    tree, note = shallow_tree(sloppy)            # the bound counts every <p>; the parser closes them
    assert tree is None and note.depth < 10


# -- UTF-16 labelled UTF-8 -----------------------------------------------------------------

@pytest.mark.parametrize("codec", ["utf-16-le", "utf-16-be"])
def test_utf16_without_a_bom_labelled_utf8_reads_as_the_original(codec):
    from filters.html import decode_html, extract_content
    original = (SHARED / "html" / "trafilatura__dw.com.colonial.html").read_bytes()
    assert b'charset="utf-8"' in original.lower() or b"charset=utf-8" in original.lower()
    text, _ = decode_html(original, "text/html; charset=utf-8")
    assert any(ord(c) > 127 for c in text)
    utf16 = text.encode(codec)
    got, used = decode_html(utf16, "text/html; charset=utf-8")
    assert (got, used) == (text, codec)          # was decoded as UTF-8: NULs and all
    assert [i.text for i in extract_content(got, URL).items] == [i.text for i in extract_content(text, URL).items]


def test_byte_encodings_are_not_taken_for_utf16():
    from filters.html import decode_html, utf16_by_zeros
    for path in sorted((SHARED / "html").glob("*.html")):
        assert utf16_by_zeros(path.read_bytes()) is None, path.name
    assert utf16_by_zeros("<p>plain</p>".encode("utf-32-le") * 10) is None
    assert decode_html("<p>Grüße</p>".encode("cp1252"), "text/html; charset=utf-8")[1] == "cp1252"


# -- through the job -----------------------------------------------------------------------

def test_the_job_counts_the_bomb_too_large_and_reads_the_utf16_and_deep_pages_whole(tmp_path):
    """One page three ways: as it came, UTF-16 labelled UTF-8, inside 400 wrappers. The
    text output keeps one and drops the other two as exact duplicates: the same text."""
    page = article()
    warc = str(tmp_path / "hostile.warc")
    with open(warc, "wb") as fh:
        fh.write(gzip.compress(http_response(URL, page.encode("utf-8"), "text/html; charset=utf-8"), mtime=0))
        fh.write(gzip.compress(http_response(URL + "-16", page.encode("utf-16-le"), "text/html; charset=utf-8"),
                               mtime=0))
        fh.write(gzip.compress(http_response(URL + "-deep", _wrapped(400).encode("utf-8"),
                                             "text/html; charset=utf-8"), mtime=0))
        fh.write(gzip.compress(encoded_response("https://example.com/bomb", gzip_of_zeros(64), "gzip"), mtime=0))
    stats = run_job([warc], tmp_path / "run", beam_args=IN_MEMORY)
    assert stats["records"]["balanced"] and stats["text_documents"]["balanced"]
    assert stats["records"]["dropped"]["too_large"] == 1          # 64 MiB inflated past the 20 MiB cap
    assert stats["text_documents"]["kept"] == 1
    assert stats["text_documents"]["dropped"] == {"duplicate_exact": 2}


def test_bounded_inflating_gives_what_zlib_and_brotli_give_in_one_call(monkeypatch):
    """Tiny steps and pieces, so that every seam of the loops is crossed: the output
    is byte for byte what one unbounded call returns, truncated streams included."""
    import random

    import brotli

    from archives import decoding as warc
    monkeypatch.setattr(warc, "INFLATE_STEP", 777)
    monkeypatch.setattr(warc, "_ZLIB_PIECE", 13)
    rng = random.Random(3)
    words = [b"alpha", b"beta", b"gamma", b"\x00" * 300, bytes(range(256))]
    for _ in range(40):
        raw = b" ".join(rng.choice(words) for _ in range(rng.randrange(0, 3000)))
        for wbits in (31, 15, -15):
            co = zlib.compressobj(rng.choice([1, 6, 9]), zlib.DEFLATED, wbits)
            packed = co.compress(raw) + co.flush()
            for cut in (len(packed), max(0, len(packed) - rng.randrange(1, 40))):
                d = zlib.decompressobj(wbits)
                want = d.decompress(packed[:cut])
                got = warc._inflate_zlib(packed[:cut], wbits, limit=10 ** 7)
                assert got == (want, None if d.eof else "content_truncated")
        packed = brotli.compress(raw)
        assert warc._inflate_brotli(packed, limit=10 ** 7) == (raw, None)
        cut = packed[:max(1, len(packed) - rng.randrange(1, 40))]
        part, problem = warc._inflate_brotli(cut, limit=10 ** 7)
        # all that the cut stream holds (one unbounded call stops at 32 KB of it)
        assert problem == "content_truncated" and part == raw[:len(part)]
        assert len(part) >= len(brotli.Decompressor().process(cut))
        assert warc._inflate_brotli(packed, limit=max(len(raw) - 1, 0))[1] == ("too_large" if raw else None)
