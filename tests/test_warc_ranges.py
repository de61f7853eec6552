"""One file read in byte ranges (issue 13): every record, and every error, exactly
once whatever the cut, the same as reading the file whole."""

import gzip
import hashlib
import io
import random

import pytest

from tests.conftest import ROOT, SHARED
from tests.hostile.archives import archive, pages, record
from archives.ranges import archive_layout, iter_archive_range, sync_point
from archives.records import ArchiveRecord, iter_archive


def _signature(item):
    if isinstance(item, ArchiveRecord):
        return ("record", item.offset, item.inner_offset, item.rec_type, item.target_uri, item.record_id,
                hashlib.sha1(item.payload).hexdigest(), item.truncated)
    return ("error", item.offset, item.inner_offset, item.kind)


def _opener(data: bytes):
    def opener(offset):
        f = io.BytesIO(data)
        f.seek(offset)
        return f
    return opener


def _whole(data: bytes, name: str):
    return [_signature(i) for i in iter_archive(io.BytesIO(data), name)]


def _in_ranges(data: bytes, name: str, n: int, cuts=None):
    size = len(data)
    bounds = cuts if cuts is not None else [size * k // n for k in range(n + 1)]
    opener = _opener(data)
    layout = archive_layout(opener)
    out = []
    for lo, hi in zip(bounds, bounds[1:]):
        out += [_signature(i) for i in iter_archive_range(opener, name, lo, hi, layout=layout)]
    return out


def _archives():
    files = sorted((SHARED / "warc").glob("*")) + sorted((SHARED / "pages-eval").glob("*.warc.gz"))
    files += sorted((ROOT / "data" / "sample" / "warc").glob("*"))
    return [f for f in files if f.is_file()]


@pytest.mark.parametrize("path", _archives(), ids=lambda p: p.name)
def test_every_shared_archive_reads_the_same_in_1_3_and_7_ranges(path):
    data = path.read_bytes()
    whole = _whole(data, path.name)
    assert whole
    for n in (1, 3, 7):
        assert _in_ranges(data, path.name, n) == whole, n


def _damaged_archives():
    """Per-record gzip and plain archives with a cut record, a bad length, a damaged
    member and garbage between records (the shapes tests/test_hostile_archives.py reads)."""
    recs = pages(12)
    out = {}
    for gz in (True, False):
        good = archive(recs, gz)
        bad_len = archive(recs[:4] + [record("http://example.com/long", content_length=10 ** 6)] + recs[4:], gz)
        garbage = archive(recs[:5], gz) + b"\x00garbage that starts no record\r\n" * 50 + archive(recs[5:], gz)
        cut = archive(recs[:7], gz)
        cut += (gzip.compress(recs[7], mtime=0)[:-40] if gz else recs[7][:len(recs[7]) // 2]) + archive(recs[8:], gz)
        out.update({f"good-{gz}": good, f"bad_length-{gz}": bad_len, f"garbage-{gz}": garbage, f"cut-{gz}": cut})
    # bits flipped in the deflate data of two members
    flipped = bytearray(archive(recs, True))
    rng = random.Random(3)
    members = [i for i in range(len(flipped) - 2) if flipped[i:i + 3] == b"\x1f\x8b\x08"]
    for m in (members[3], members[9]):
        pos = m + 40 + rng.randrange(200)
        flipped[pos] ^= 1 << rng.randrange(8)
    out["bit_flips"] = bytes(flipped)
    # a member whose header bytes are broken, so no range can start there
    broken = bytearray(archive(recs, True))
    broken[members[6] + 12] ^= 0xFF
    out["broken_member_header"] = bytes(broken)
    return out


@pytest.mark.parametrize("name", sorted(_damaged_archives()))
def test_damaged_archives_read_the_same_in_any_number_of_ranges(name):
    data = _damaged_archives()[name]
    whole = _whole(data, name)
    assert any(s[0] == "error" for s in whole) or name.startswith("good")
    for n in (1, 2, 3, 5, 7, 13):
        assert _in_ranges(data, name, n) == whole, n
    # and at every possible cut of a two-range split near a member boundary
    for cut in range(1, len(data), max(1, len(data) // 97)):
        assert _in_ranges(data, name, 2, cuts=[0, cut, len(data)]) == whole, cut


def test_a_range_with_no_sync_point_reads_nothing_and_the_one_before_reads_through():
    big = record("http://example.com/big", body=b"<html><body>" + b"x" * 300_000 + b"</body></html>")
    data = archive(pages(2) + [big] + pages(2, "http://example.com/q"), True)
    opener = _opener(data)
    layout = archive_layout(opener)
    assert layout == "gzip"
    starts = [i.offset for i in iter_archive(io.BytesIO(data), "x")]
    inside_big = (starts[2] + starts[3]) // 2
    assert sync_point(opener, layout, inside_big, starts[3]) is None
    first = list(iter_archive_range(opener, "x", 0, starts[2] + 1, layout=layout))
    assert [i.offset for i in first] == starts[:3]          # the big record, though it ends past the range


def test_whole_file_gzip_and_arc_are_read_by_the_first_range_only():
    recs = pages(6)
    whole_gzip = gzip.compress(b"".join(recs), mtime=0)
    assert archive_layout(_opener(whole_gzip)) == "gzip"     # a WARC, but with no member to sync on
    assert _in_ranges(whole_gzip, "w", 5) == _whole(whole_gzip, "w")
    arc = (SHARED / "warc" / "warcio__example.arc").read_bytes()
    assert archive_layout(_opener(arc)) == "whole"
    parts = [list(iter_archive_range(_opener(arc), "a", lo, hi))
             for lo, hi in ((0, 100), (100, 400), (400, len(arc)))]
    assert parts[1] == [] and parts[2] == [] and len(parts[0]) == len(_whole(arc, "a"))


def test_a_claim_refused_stops_the_range_where_the_next_begins():
    """Beam's restriction tracker may shrink a range while it is read (dynamic
    splitting): reading stops at the first sync point it may not claim, which is
    where the residual range's reader starts."""
    data = archive(pages(10), True)
    opener = _opener(data)
    starts = [i.offset for i in iter_archive(io.BytesIO(data), "x")]
    split_at = starts[4] + 5
    claimed = []

    def claim(off):
        claimed.append(off)
        return off < split_at
    head = [i.offset for i in iter_archive_range(opener, "x", 0, len(data), claim=claim)]
    rest = [i.offset for i in iter_archive_range(opener, "x", split_at, len(data))]
    assert head == starts[:5] and rest == starts[5:] and claimed[-1] == starts[5]


def test_the_job_reading_in_small_ranges_keeps_the_same_documents_and_statistics(shared_run, tmp_path):
    """Every shared archive cut into 50 KB ranges (each read on its own, claimed from
    Beam's restriction tracker): the same shards, errors and statistics as whole files;
    only the input manifest says the files were read in ranges (no one pass saw every
    byte, so no checksum)."""
    import json
    from tests.conftest import IN_MEMORY, all_shared_warcs, run_job
    run, stats = shared_run
    out = tmp_path / "ranges"
    split = run_job(all_shared_warcs(), out, beam_args=IN_MEMORY, num_workers=1,
                    overrides={"records.split_bytes": 50_000})
    skip = {"config_sha256", "config", "run_seconds", "started_at", "finished_at"}
    assert {k: v for k, v in split.items() if k not in skip} == {k: v for k, v in stats.items() if k not in skip}
    for d in ("documents", "text", "pairs"):
        a = json.loads((run / d / "_manifest.json").read_text())["shards"]
        b = json.loads((out / d / "_manifest.json").read_text())["shards"]
        assert [s["sha256"] for s in a] == [s["sha256"] for s in b], d
    assert (run / "errors.jsonl").read_text() == (out / "errors.jsonl").read_text()
    whole = [json.loads(x) for x in (run / "inputs.jsonl").read_text().splitlines()]
    ranged = [json.loads(x) for x in (out / "inputs.jsonl").read_text().splitlines()]
    assert [i["path"] for i in whole] == [i["path"] for i in ranged]
    big = [i for i in ranged if i["bytes"] > 50_000]
    assert big and all(i["sha256"] is None and i["read_in_ranges"] for i in big)


def test_only_originals_a_revisit_points_at_go_to_the_join():
    import apache_beam as beam
    from apache_beam.testing.util import assert_that, equal_to
    from transforms.read import OriginalsNeeded
    with beam.Pipeline(runner="DirectRunner", options=beam.options.pipeline_options.PipelineOptions(
            ["--direct_running_mode=in_memory", "--direct_num_workers=1"])) as p:
        originals = p | "O" >> beam.Create([("sha1:A", "page a"), ("sha1:B", "page b"), ("sha1:C", "image c")])
        revisits = p | "R" >> beam.Create([("sha1:B", "revisit 1"), ("sha1:B", "revisit 2"), ("sha1:Z", "r3")])
        assert_that((originals, revisits) | OriginalsNeeded(), equal_to([("sha1:B", "page b")]))
        none = p | "N" >> beam.Create([]).with_output_types(tuple)
        assert_that((originals, none) | "NoRevisits" >> OriginalsNeeded(), equal_to([]), label="empty")
