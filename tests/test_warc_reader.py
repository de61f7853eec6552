"""The streaming WARC/ARC reader on every real file in ../shared/data/warc and on
damaged copies of them."""

import gzip
import io
import json
from collections import Counter
from pathlib import Path

import pytest

from conftest import SHARED, all_shared_warcs, shared_warc
from filters.records import classify
from archives.records import ArchiveRecord, ReadError, iter_archive


def read_all(data: bytes, name="mem"):
    items = list(iter_archive(io.BytesIO(data), name))
    return [i for i in items if isinstance(i, ArchiveRecord)], [i for i in items if isinstance(i, ReadError)]


def manifest():
    return {Path(e["file"]).name: e for e in json.loads((SHARED / "MANIFEST.json").read_text())
            if e.get("kind") == "warc"}


@pytest.mark.parametrize("path", all_shared_warcs(), ids=lambda p: Path(p).name)
def test_every_shared_file_reads_and_matches_its_manifest(path):
    """Record counts by type, 2xx HTML pages and image records agree with the
    independent count in MANIFEST.json (made with warcio)."""
    entry = manifest()[Path(path).name]
    recs, errors = read_all(Path(path).read_bytes(), path)
    kinds = Counter(classify(r).kind.value for r in recs if r.rec_type in ("response", "resource"))
    expected = entry["analysis"]
    types = Counter(r.rec_type for r in recs)
    if Path(path).name == "warcio__example-bad-non-chunked.warc.gz":
        # warcio refuses whole-file gzip after the first record; we read all six.
        assert sum(types.values()) == 6 and types["response"] == 1
    else:
        assert dict(types) == expected["record_types"]
    assert kinds["image"] == expected["image_responses"]
    if Path(path).name == "warcio__example-trunc.warc":
        assert [e.kind for e in errors] == ["bad_record_header"]
    else:
        assert errors == []


def test_offsets_point_at_gzip_members():
    path = shared_warc("aut__example.warc.gz")
    data = Path(path).read_bytes()
    recs, _ = read_all(data, path)
    for rec in recs[:50]:
        assert data[rec.offset:rec.offset + 2] == b"\x1f\x8b"
        assert rec.inner_offset == 0
        member = gzip.GzipFile(fileobj=io.BytesIO(data[rec.offset:])).read(9)
        assert member.startswith(b"WARC/0.17")


def test_whole_file_gzip_addresses_records_inside_the_member():
    data = gzip.compress(Path(shared_warc("node-warc__books.toscrape.warc")).read_bytes())
    recs, errors = read_all(data)
    assert len(recs) == 60 and not errors
    assert all(r.offset == 0 for r in recs)
    plain = gzip.decompress(data)
    for r in recs[:5]:
        assert plain[r.inner_offset:r.inner_offset + 9] == b"WARC/1.1\r"


def test_truncated_gzip_is_a_named_error_and_keeps_earlier_records():
    data = Path(shared_warc("aut__example.warc.gz")).read_bytes()
    recs, errors = read_all(data[: len(data) // 2])
    assert len(recs) > 400
    assert [e.kind for e in errors] == ["truncated_gzip"]
    assert errors[0].offset > 0


def test_corrupt_member_is_skipped_and_reading_goes_on():
    data = bytearray(Path(shared_warc("aut__example.warc.gz")).read_bytes())
    data[100000:100200] = b"\x00" * 200
    recs, errors = read_all(bytes(data))
    assert [e.kind for e in errors] == ["bad_gzip"]
    assert len(recs) == 821  # one of 822 records lost, and named


def test_garbage_and_empty_files_are_named_errors():
    assert [e.kind for e in read_all(b"this is not an archive\n" * 10)[1]] == ["not_an_archive"]
    assert [e.kind for e in read_all(b"")[1]] == ["empty_file"]


def test_arc_records_become_responses():
    recs, errors = read_all(Path(shared_warc("warcio__example.arc")).read_bytes())
    assert not errors
    assert [r.rec_type for r in recs] == ["warcinfo", "response"]
    page = recs[1]
    assert page.format == "ARC" and page.http_status == 200 and classify(page).kind.value == "page"
    assert page.target_uri == "http://example.com/"
    assert page.date.startswith("2014-02-16T05:02:21")


def test_brotli_and_chunked_bodies_are_decoded():
    for name in ("webarchive-discovery__transfer_compression_brotli.warc.gz",
                 "warcio__example-iana.org-chunked.warc"):
        recs, _ = read_all(Path(shared_warc(name)).read_bytes())
        page = next(r for r in recs if r.rec_type == "response")
        assert b"<html" in page.payload.lower()[:2000], name
        assert not page.notes, page.notes


def test_truncated_record_keeps_what_decodes():
    recs, errors = read_all(Path(shared_warc("warcio__example-trunc.warc")).read_bytes())
    page = next(r for r in recs if r.rec_type == "response")
    assert page.truncated and "content_truncated" in page.notes
    assert page.payload.rstrip().endswith(b"</html>")
    assert errors[0].kind == "bad_record_header"


def test_oversize_payload_is_not_held():
    path = shared_warc("node-warc__books.toscrape.warc")
    items = list(iter_archive(open(path, "rb"), path, max_payload_bytes=1000))
    big = [i for i in items if isinstance(i, ArchiveRecord) and i.oversize]
    assert big and all(i.payload == b"" for i in big)
    assert all(i.payload_size > 1000 for i in big)


def test_repeated_headers_and_status_without_reason():
    recs, errors = read_all(Path(shared_warc("webarchive-commons__mutliple-headers.warc")).read_bytes())
    assert not errors and recs[0].http_status == 200
    assert [v for k, v in recs[0].headers if k == "WARC-Protocol"] == ["h2", "tls/1.3"]
