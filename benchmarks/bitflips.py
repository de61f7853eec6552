"""Bit-flip campaign on real archives (not a test).

Flips one random bit at a time (seeded) in per-record gzip archives of
../shared/data/warc and reads each damaged copy with our reader. For every flip:

  * untouched_lost: records whose gzip member the flip did not touch, but which
    went missing or came out different (goal: 0);
  * damaged_passed: the record of the flipped member, returned as a good record
    with bytes different from the original (goal: 0);
  * damaged_reported: flips that produced at least one named error.

A flip in a gzip header field that no check covers (MTIME, OS) leaves the data
intact: such a record comes out whole and equal, which is neither.

    scripts/in-venv python benchmarks/bitflips.py [--flips 100] [--seed 7] [--json]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import random
import sys
import time
import zlib
from pathlib import Path
from typing import Dict, List, Tuple

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from transforms.warc import ArchiveRecord, ReadError, iter_archive  # noqa: E402

SHARED = ROOT.parent / "shared" / "data" / "warc"
ARCHIVES = ["webarchive-discovery__flashfrozen-jwat-recompressed.warc.gz", "aut__example.warc.gz"]


def read(data: bytes):
    items = list(iter_archive(io.BytesIO(data), "mem"))
    return ([i for i in items if isinstance(i, ArchiveRecord)], [i for i in items if isinstance(i, ReadError)])


def fingerprint(rec: ArchiveRecord) -> Tuple:
    return rec.offset, rec.inner_offset, rec.rec_type, rec.target_uri, hashlib.sha1(rec.payload).hexdigest()


def member_spans(data: bytes) -> List[Tuple[int, int]]:
    """(start, end) raw offsets of every gzip member of an undamaged file."""
    spans, pos = [], 0
    while pos < len(data):
        d = zlib.decompressobj(31)
        d.decompress(data[pos:])
        end = len(data) - len(d.unused_data)
        spans.append((pos, end))
        pos = end
    return spans


def campaign(data: bytes, flips: int, seed: int) -> Dict[str, int]:
    clean, clean_errors = read(data)
    assert not clean_errors, "the campaign needs an undamaged archive"
    by_offset = {r.offset: fingerprint(r) for r in clean}
    spans = member_spans(data)
    rng = random.Random(seed)
    totals = {"flips": 0, "records": len(clean), "untouched_lost": 0, "damaged_passed": 0,
              "damaged_reported": 0, "errors": 0}
    for _ in range(flips):
        bit = rng.randrange(len(data) * 8)
        hit = bit // 8
        broken = bytearray(data)
        broken[hit] ^= 1 << (bit % 8)
        recs, errors = read(bytes(broken))
        got = {fingerprint(r) for r in recs}
        member = next(s for s, e in spans if s <= hit < e)
        totals["flips"] += 1
        totals["errors"] += len(errors)
        totals["damaged_reported"] += int(bool(errors))
        totals["untouched_lost"] += sum(1 for off, fp in by_offset.items() if off != member and fp not in got)
        totals["damaged_passed"] += sum(1 for r in recs
                                        if r.offset == member and fingerprint(r) != by_offset.get(member))
    return totals


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--flips", type=int, default=100)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--shared", default=str(SHARED))
    ap.add_argument("--json", action="store_true", help="one JSON object on stdout")
    args = ap.parse_args()
    results = {}
    for name in ARCHIVES:
        t0 = time.perf_counter()
        results[name] = campaign((Path(args.shared) / name).read_bytes(), args.flips, args.seed)
        results[name]["seconds"] = round(time.perf_counter() - t0, 1)
    if args.json:
        print(json.dumps(results))
        return
    for name, r in results.items():
        print(f"{name}: {r['flips']} flips over {r['records']} records: untouched records lost "
              f"{r['untouched_lost']}, damaged records passed as good {r['damaged_passed']}, "
              f"flips reported as errors {r['damaged_reported']} ({r['seconds']} s)")


if __name__ == "__main__":
    main()
