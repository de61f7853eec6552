"""Bit-flip campaigns (not a test): on real archives, and on curated shards.

Archives (the default): flips one random bit at a time (seeded) in per-record gzip
archives of ../shared/data/warc and reads each damaged copy with our reader. For
every flip:

  * untouched_lost: records whose gzip member the flip did not touch, but which
    went missing or came out different (goal: 0);
  * damaged_passed: the record of the flipped member, returned as a good record
    with bytes different from the original (goal: 0);
  * damaged_reported: flips that produced at least one named error.

A flip in a gzip header field that no check covers (MTIME, OS) leaves the data
intact: such a record comes out whole and equal, which is neither.

Shards (``--shards RUN``): in each of the text, pairs and documents datasets of a
curated run, XORs one byte (seeded position and value) of one shard at a time and
reads the damaged dataset with the trainer's loader (``list_units`` and a
``SourceStream`` over one epoch, images decoded). For every flip:

  * damaged_rows_trained: rows that reached the chunker with content different from
    the clean shard's (goal: 0);
  * damaged_reported: flips whose shard is named in the loader's bad-shard report
    (goal: every flip; each flip changes the file's sha256);
  * untouched_rows_lost: rows of the other shards that were not read (goal: 0);
  * silent_without_sha: flips after which the shard still decodes, into rows that
    differ (what trains unnoticed when nothing checks the sha256: ``--no-verify``
    shows the loader without it).

    scripts/in-venv python benchmarks/bitflips.py [--flips 100] [--seed 7] [--json]
    scripts/in-venv python benchmarks/bitflips.py --shards RUN [--flips 200] [--no-verify]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import random
import shutil
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Dict, List, Tuple

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from archives.records import ArchiveRecord, ReadError, iter_archive  # noqa: E402

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


# --------------------------------------------------------------------------- shards
RUN_DATASETS = (("text", "text"), ("pairs", "pairs"), ("documents", "interleaved"))


def _loader_pass(dataset_dir: str, source: str, tokenizer, verify: bool):
    """One epoch of the loader over a dataset: (rows that reached the chunker as
    {(file, row group, row): row}, the bad-shard report)."""
    import trainer.data as data
    read = data.read_unit
    got: Dict[Tuple[str, int], List[Dict]] = {}

    def recording(unit, columns=None):
        rows = read(unit, columns)
        got[(Path(unit.path).name, unit.row_group)] = rows
        return rows

    bad: List[Dict] = []
    units = data.list_units([dataset_dir], "skip", verify, bad, source)
    chunker = data.Chunker(source, tokenizer, 8, 256, 32)
    trained: Dict[Tuple[str, int, int], Dict] = {}
    if units:
        stream = data.SourceStream(source, units, 0, 1, chunker, 256, tokenizer.ids.pad, 0, epochs=1)
        data.read_unit = recording
        try:
            for _ in stream.sequences():
                pass
        except RuntimeError as exc:          # every unit left out: nothing to train on
            if "has no rows" not in str(exc):
                raise
        finally:
            data.read_unit = read
        bad += stream.bad
        for key in stream.rows_read:
            path, at = key.rsplit("#", 1)
            rg, r = map(int, at.split(":"))
            trained[(Path(path).name, rg, r)] = got[(Path(path).name, rg)][r]
    return trained, bad


def _decodes_differently(path: str, clean: Dict[Tuple[str, int, int], Dict], columns) -> bool:
    """Whether a damaged shard still decodes, into rows unlike the clean ones."""
    import pyarrow.parquet as pq
    name = Path(path).name
    try:
        pf = pq.ParquetFile(path)
        rows = {(name, g, r): row for g in range(pf.metadata.num_row_groups)
                for r, row in enumerate(pf.read_row_group(g, columns=columns).to_pylist())}
    except Exception:
        return False
    return any(clean.get(k) != row for k, row in rows.items())


def shard_campaign(run_dir: str, dataset: str, source: str, flips: int, seed: int, tokenizer,
                   verify: bool, work: Path) -> Dict:
    from contract.manifest import shard_entries
    from trainer.data import Chunker
    src = Path(run_dir) / dataset
    files = [Path(f) for f, _ in shard_entries(str(src))]
    sizes = [f.stat().st_size for f in files]
    columns = Chunker.COLUMNS[source]
    t0 = time.perf_counter()
    clean, bad = _loader_pass(str(src), source, tokenizer, verify)
    clean_seconds = time.perf_counter() - t0
    assert not bad, f"the campaign needs undamaged shards: {bad}"
    rng = random.Random(seed)
    totals = {"flips": 0, "shards": len(files), "rows": len(clean), "damaged_rows_trained": 0,
              "damaged_reported": 0, "untouched_rows_lost": 0, "silent_without_sha": 0,
              "clean_pass_seconds": round(clean_seconds, 2)}
    for i in range(flips):
        at = rng.randrange(sum(sizes))
        n = 0
        while at >= sizes[n]:
            at -= sizes[n]
            n += 1
        value = rng.randrange(1, 256)
        copy = work / f"{dataset}-{i}"       # a fresh path a flip: nothing cached from the last one
        shutil.copytree(src, copy)
        victim = copy / files[n].name
        raw = bytearray(victim.read_bytes())
        raw[at] ^= value
        victim.write_bytes(bytes(raw))
        trained, bad = _loader_pass(str(copy), source, tokenizer, verify)
        totals["flips"] += 1
        totals["damaged_reported"] += int(any(Path(b["path"]).name == victim.name for b in bad
                                              if "image" not in b))
        totals["damaged_rows_trained"] += sum(1 for k, row in trained.items()
                                              if k[0] == victim.name and clean.get(k) != row)
        totals["untouched_rows_lost"] += sum(1 for k in clean if k[0] != victim.name and k not in trained)
        totals["silent_without_sha"] += int(_decodes_differently(str(victim), clean, columns))
        shutil.rmtree(copy)
    return totals


def _run_tokenizer(run_dir: str, work: Path):
    from trainer.tokenizer import dataset_texts, train_tokenizer
    return train_tokenizer(dataset_texts([str(Path(run_dir) / "text")]), str(work / "tok"), 300, threads=1)


def shards_main(args) -> Dict[str, Dict]:
    import logging
    from trainer.tokenizer import Tokenizer
    logging.getLogger("trainer.data").setLevel(logging.CRITICAL)   # each flip's report is counted, not printed
    results = {}
    with tempfile.TemporaryDirectory(prefix="bitflips-") as tmp:
        work = Path(tmp)
        tok = Tokenizer(args.tokenizer) if args.tokenizer else _run_tokenizer(args.shards, work)
        for dataset, source in RUN_DATASETS:
            if not (Path(args.shards) / dataset / "_manifest.json").exists():
                continue
            t0 = time.perf_counter()
            results[dataset] = shard_campaign(args.shards, dataset, source, args.flips, args.seed, tok,
                                              not args.no_verify, work)
            results[dataset]["seconds"] = round(time.perf_counter() - t0, 1)
    return results


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--flips", type=int, default=100)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--shared", default=str(SHARED))
    ap.add_argument("--shards", metavar="RUN", help="a curated run: flip bytes of its shards instead")
    ap.add_argument("--no-verify", action="store_true", help="shards: the loader without the sha256 check")
    ap.add_argument("--tokenizer", help="shards: a SentencePiece .model (default: one learned from RUN/text)")
    ap.add_argument("--json", action="store_true", help="one JSON object on stdout")
    args = ap.parse_args()
    if args.shards:
        results = shards_main(args)
        if args.json:
            print(json.dumps(results))
            return
        for name, r in results.items():
            print(f"{name}: {r['flips']} byte flips over {r['shards']} shards ({r['rows']} rows), sha256 "
                  f"{'not ' if args.no_verify else ''}checked: damaged rows trained {r['damaged_rows_trained']}, "
                  f"flipped shards reported {r['damaged_reported']}, untouched rows lost "
                  f"{r['untouched_rows_lost']}; flips that still decode into changed rows "
                  f"{r['silent_without_sha']} ({r['seconds']} s; a clean pass {r['clean_pass_seconds']} s)")
        return
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
