"""Damaged archives: no bad length, header or flipped bit may swallow a good
neighbour, pass damaged bytes as a good record, or misplace an error."""

import gzip
import json
import subprocess
import sys
import tracemalloc

import pytest

from conftest import ROOT, SHARED
from hostile.archives import archive, pages, read, record


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
def test_a_length_of_a_terabyte_swallows_nothing(gz):
    recs = [record("http://example.com/liar", content_length=10 ** 12)] + pages(6)
    got, errors = read(archive(recs, gz))
    assert [r.target_uri for r in got] == [f"http://example.com/p{i}" for i in range(6)]
    assert [(e.kind, e.offset) for e in errors] == [("truncated_record", 0)]


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
def test_a_length_a_little_too_long_is_cut_at_the_next_record(gz):
    recs = pages(2) + [record("http://example.com/liar", content_length=len(pages(1)[0]) + 3000)] + pages(4, "http://e.org/")
    got, errors = read(archive(recs, gz))
    assert [r.target_uri for r in got] == ["http://example.com/p0", "http://example.com/p1"] + [
        f"http://e.org/{i}" for i in range(4)]
    assert [e.kind for e in errors] == ["truncated_record"]
    assert "reading resumes there" in errors[0].message


def test_a_plain_warc_cut_inside_a_page_is_an_error_not_a_half_page():
    data = archive(pages(3), gzip_members=False)
    cut = data[: len(data) - 700]
    got, errors = read(cut)
    assert [r.target_uri for r in got] == ["http://example.com/p0", "http://example.com/p1"]
    assert [e.kind for e in errors] == ["truncated_record"]
    assert errors[0].offset == 2 * len(pages(1)[0])


def test_a_cut_page_followed_by_a_record_gives_both_their_due():
    first, second = pages(2)
    data = first[: len(first) // 2] + second
    got, errors = read(data)
    assert [r.target_uri for r in got] == ["http://example.com/p1"]
    assert [(e.kind, e.offset) for e in errors] == [("truncated_record", 0)]


def test_a_cut_gzip_member_is_one_error_and_no_record():
    data = archive(pages(3), gzip_members=True)
    got, errors = read(data[:-40])
    assert [r.target_uri for r in got] == ["http://example.com/p0", "http://example.com/p1"]
    assert [e.kind for e in errors] == ["truncated_gzip"]


def test_a_huge_header_is_an_error_with_flat_memory():
    huge = (b"WARC/1.0\r\nWARC-Type: response\r\n" + (b"X-Filler: " + b"c" * 100 + b"\r\n") * 16000
            + b"Content-Length: 5\r\n\r\nhello\r\n\r\n")
    assert len(huge) > 1_600_000
    data = huge + b"".join(pages(2))
    tracemalloc.start()
    got, errors = read(data)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert [r.target_uri for r in got] == ["http://example.com/p0", "http://example.com/p1"]
    assert errors[0].kind == "bad_record_header" and errors[0].offset == 0
    assert peak < len(data) + 4 * 1024 * 1024, peak   # the input itself, plus a bounded header


def test_error_offsets_in_gzip_files_name_the_member():
    good = pages(4)
    junk = gzip.compress(b"this member holds no record\r\n" * 50, mtime=0)
    members = [gzip.compress(good[0], mtime=0), gzip.compress(good[1], mtime=0), junk,
               gzip.compress(good[2], mtime=0), junk, gzip.compress(good[3], mtime=0)]
    data = b"".join(members)
    got, errors = read(data)
    assert len(got) == 4
    starts = [sum(len(m) for m in members[:i]) for i in range(len(members))]
    assert [(e.kind, e.offset, e.inner_offset) for e in errors] == [
        ("bad_record_header", starts[2], 0), ("bad_record_header", starts[4], 0)]
    for e in errors:
        assert data[e.offset:e.offset + 2] == b"\x1f\x8b"


def test_flipped_bits_lose_no_neighbour_and_pass_no_damage():
    """A sample of the campaign that benchmarks/bitflips.py runs with 100 flips per archive."""
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bitflips.py"), "--flips", "12",
                          "--seed", "11", "--json", "--shared", str(SHARED / "warc")],
                         check=True, capture_output=True, text=True).stdout
    for name, totals in json.loads(out).items():
        assert totals["untouched_lost"] == 0, (name, totals)
        assert totals["damaged_passed"] == 0, (name, totals)
        assert totals["damaged_reported"] >= 10, (name, totals)


def test_a_record_that_embeds_a_warc_file_is_not_split():
    """The boundary rule applies only when a block lacks its terminator: a response
    whose body is itself a WARC file reads as one record."""
    inner = b"".join(pages(2))
    outer = record("http://example.com/a.warc", body=inner)
    got, errors = read(archive([outer] + pages(1, "http://x.org/"), gzip_members=False))
    assert not errors
    assert [r.target_uri for r in got] == ["http://example.com/a.warc", "http://x.org/0"]
    assert got[0].payload == inner


def test_a_header_without_its_blank_line_does_not_swallow_the_next_record():
    first, second = pages(2)
    head, _, rest = first.partition(b"\r\n\r\n")
    data = head + b"\r\n" + second                     # the header runs straight into the next record
    got, errors = read(data)
    assert [r.target_uri for r in got] == ["http://example.com/p1"]
    assert [(e.kind, e.offset) for e in errors] == [("bad_record_header", 0)]
