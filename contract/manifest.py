"""A curation run on disk: the names in its output directory, and each dataset's
``_manifest.json`` (its shards with row counts, image counts and sha256), written
by the job and read and verified by the trainer and the report from this one module.

    OUTPUT/
      run.json              what ran (config, code version, inputs, Beam arguments)
      inputs.jsonl          each input file with its size and sha256
      documents/ text/ pairs/
        part-NNNNN-of-MMMMM.parquet ...
        _manifest.json      the shards (the leading underscore keeps Parquet readers off it)
      duplicates/           which document each dropped duplicate was a copy of
      rejects/samples.parquet  a seeded sample of every reason's rejects
      errors.jsonl          every record that failed, with file and offset
      stats.json            the accounting (contract.reasons names its keys)
      _SUCCESS              written last: the run's datasets are complete
"""

from __future__ import annotations

import hashlib
import json
from typing import Dict, Iterable, List, Tuple

MANIFEST = "_manifest.json"
SUCCESS_MARKER = "_SUCCESS"
RUN_RECORD = "run.json"
STATS = "stats.json"
INPUTS = "inputs.jsonl"
ERRORS = "errors.jsonl"
DUPLICATES_DIR = "duplicates"
REJECTS_DIR = "rejects"
REJECT_SAMPLES = "rejects/samples.parquet"
FETCHED_DIR = "fetched"
FETCH_FAILURES = "fetch_failures.jsonl"
REPORT_FILES = ("report.html", "report.json")


class BadShardError(RuntimeError):
    """A shard (or one of its row groups) that cannot be read, or whose bytes do not
    match its manifest; names the path. ``details``: what a report records beside the
    message (the expected and actual sha256 or row count)."""

    def __init__(self, message: str, **details):
        super().__init__(message)
        self.details = details


def join(base: str, name: str) -> str:
    return base.rstrip("/") + "/" + name


def shard_of(key: str, num_shards: int) -> int:
    """The shard a row goes to, from its key (a hex hash)."""
    return int(key[:8], 16) % num_shards


def shard_name(shard: int, num_shards: int) -> str:
    return f"part-{shard:05d}-of-{num_shards:05d}.parquet"


def shard_entry(name: str, data: bytes, rows: int, images: int) -> Dict:
    return {"file": name, "rows": rows, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(),
            "images": images}


def build_manifest(schema_name: str, entries: Iterable[Dict]) -> Dict:
    entries = sorted(entries, key=lambda e: e["file"])
    return {"schema": schema_name, "shards": entries, "rows": sum(e["rows"] for e in entries),
            "images": sum(e["images"] for e in entries)}


def manifest_bytes(manifest: Dict) -> bytes:
    return json.dumps(manifest, indent=2, sort_keys=True).encode()


def success_record(outputs: Dict, config_sha256: str) -> bytes:
    return json.dumps({"stats": STATS, "outputs": outputs, "config_sha256": config_sha256},
                      sort_keys=True).encode()


def url_to_fs(path: str) -> Tuple[object, str]:
    """(fsspec file system, path inside it) for a local path or a URL."""
    import fsspec
    return fsspec.core.url_to_fs(path)


def exists(path: str) -> bool:
    fs, local = url_to_fs(path)
    return fs.exists(local)


def read_manifest(dataset_dir: str) -> Dict:
    fs, path = url_to_fs(join(dataset_dir, MANIFEST))
    with fs.open(path, "r") as fh:
        manifest = json.load(fh)
    if not isinstance(manifest.get("shards"), list):
        raise BadShardError(f"{join(dataset_dir, MANIFEST)}: no list of shards")
    return manifest


def file_sha256(path: str) -> str:
    """sha256 of a file, local or any fsspec URL, read in 1 MiB blocks."""
    fs, local = url_to_fs(path)
    digest = hashlib.sha256()
    with fs.open(local, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_shard(path: str, entry: Dict) -> None:
    """Raise :class:`BadShardError` when the file's sha256 differs from its manifest entry."""
    actual = file_sha256(path)
    if actual != entry["sha256"]:
        raise BadShardError(f"{path}: sha256 {actual} does not match {MANIFEST} ({entry['sha256']})",
                            expected_sha256=entry["sha256"], actual_sha256=actual)


def shard_entries(dataset_dir: str) -> List[Tuple[str, Dict]]:
    """(path, manifest entry) of every shard a dataset's manifest lists, in its order."""
    return [(join(dataset_dir, e["file"]), e) for e in read_manifest(dataset_dir)["shards"]]


def shard_files(dataset_dir: str, verify: bool = False) -> List[str]:
    """The shards a dataset's manifest lists, in its order; with ``verify`` each checked."""
    entries = shard_entries(dataset_dir)
    if verify:
        for file, entry in entries:
            verify_shard(file, entry)
    return [file for file, _ in entries]
