"""Reading curated shards without Beam: where a dataset's files are (its manifest, a
directory, a glob; local or any fsspec URL), their checksums, the rows."""

from __future__ import annotations

import hashlib
import json
from typing import Dict, Iterator, List, Optional, Tuple

import pyarrow.parquet as pq

from pipeline.schema import DOCUMENT_SCHEMA, SUCCESS_MARKER


class BadShardError(RuntimeError):
    """A shard (or one of its row groups) that cannot be read; names the path."""


class IncompleteRunError(RuntimeError):
    """A dataset of a curation run that never finished (no ``_SUCCESS`` marker)."""


def check_run_complete(dataset_dir: str) -> None:
    """A dataset directory inside a curation run (its parent holds ``run.json``) is
    complete only when the run wrote ``_SUCCESS``; raise otherwise. Directories that
    are not part of a run (a user's own Parquet files) pass."""
    parent = dataset_dir.rstrip("/").rsplit("/", 1)[0] if "/" in dataset_dir.rstrip("/") else "."
    fs, run_json = url_to_fs(join(parent, "run.json"))
    if fs.exists(run_json) and not fs.exists(url_to_fs(join(parent, SUCCESS_MARKER))[1]):
        raise IncompleteRunError(
            f"{dataset_dir}: the curation run in {parent} has not finished (no {SUCCESS_MARKER}; it may have "
            f"been killed, or still be running). Its shards may be partial; set data.allow_incomplete_runs "
            f"(or pass allow_incomplete) to read them anyway.")


def url_to_fs(path: str) -> Tuple[object, str]:
    """(fsspec file system, path inside it) for a local path or a URL."""
    import fsspec
    return fsspec.core.url_to_fs(path)


def join(base: str, name: str) -> str:
    return base.rstrip("/") + "/" + name


def read_manifest(dataset_dir: str) -> Dict:
    fs, path = url_to_fs(join(dataset_dir, "_manifest.json"))
    with fs.open(path, "r") as fh:
        return json.load(fh)


def expand_dataset(path: str, verify: bool = False, allow_incomplete: bool = False) -> List[str]:
    """The files of a dataset path, in a stable order: the shards its ``_manifest.json``
    lists (with ``verify``, each checked against its sha256), else the ``*.parquet`` and
    ``*.jsonl`` files of the directory, the matches of a glob, or the file itself. A
    directory of an unfinished curation run raises :class:`IncompleteRunError`."""
    fs, root = url_to_fs(path)
    protocol = path.split("://", 1)[0] + "://" if "://" in path else ""
    if any(ch in path for ch in "*?["):
        return sorted(protocol + p for p in fs.glob(root))
    if fs.isdir(root):
        if not allow_incomplete:
            check_run_complete(path)
        if fs.exists(url_to_fs(join(path, "_manifest.json"))[1]):
            entries = read_manifest(path)["shards"]
            files = [join(path, e["file"]) for e in entries]
            if verify:
                for entry, file in zip(entries, files):
                    with fs.open(url_to_fs(file)[1], "rb") as fh:
                        digest = hashlib.sha256(fh.read()).hexdigest()
                    if digest != entry["sha256"]:
                        raise BadShardError(f"{file}: sha256 {digest} does not match _manifest.json")
            return files
        names = sorted(p for p in fs.ls(root, detail=False) if p.endswith((".parquet", ".jsonl")))
        return [protocol + p for p in names]
    if not fs.exists(root):
        raise FileNotFoundError(f"dataset not found: {path}")
    return [path]


def shard_paths(documents_dir: str, verify: bool = False, allow_incomplete: bool = False) -> List[str]:
    """Shard files listed by the manifest; with ``verify`` their sha256 is checked."""
    return expand_dataset(documents_dir, verify, allow_incomplete)


def iter_documents(documents_dir: str, columns: Optional[List[str]] = None,
                   batch_size: int = 64) -> Iterator[Dict]:
    """Rows as dicts, shard by shard, a record batch at a time."""
    for path in shard_paths(documents_dir):
        fs, local = url_to_fs(path)
        with fs.open(local, "rb") as fh:
            pf = pq.ParquetFile(fh)
            if pf.schema_arrow.remove_metadata() != DOCUMENT_SCHEMA.remove_metadata() and columns is None:
                raise ValueError(f"{path}: schema differs from pipeline.schema.DOCUMENT_SCHEMA")
            for batch in pf.iter_batches(batch_size=batch_size, columns=columns):
                yield from batch.to_pylist()
