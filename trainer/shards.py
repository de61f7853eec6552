"""Reading curated shards without Beam: where a dataset's files are (its manifest, a
directory, a glob; local or any fsspec URL) and the rows. The manifest and the run's
layout are contract.manifest's; this module adds what only a reader needs."""

from __future__ import annotations

from typing import Dict, Iterator, List, Optional

import pyarrow.parquet as pq

from contract.manifest import MANIFEST, RUN_RECORD, SUCCESS_MARKER, BadShardError, exists, join, shard_files, url_to_fs
from contract.schema import DOCUMENT_SCHEMA

__all__ = ["BadShardError", "IncompleteRunError", "check_run_complete", "expand_dataset", "iter_documents",
           "join", "url_to_fs"]


class IncompleteRunError(RuntimeError):
    """A dataset of a curation run that never finished (no ``_SUCCESS`` marker)."""


def check_run_complete(dataset_dir: str) -> None:
    """A dataset directory inside a curation run (its parent holds ``run.json``) is
    complete only when the run wrote ``_SUCCESS``; raise otherwise. Directories that
    are not part of a run (a user's own Parquet files) pass."""
    parent = dataset_dir.rstrip("/").rsplit("/", 1)[0] if "/" in dataset_dir.rstrip("/") else "."
    if exists(join(parent, RUN_RECORD)) and not exists(join(parent, SUCCESS_MARKER)):
        raise IncompleteRunError(
            f"{dataset_dir}: the curation run in {parent} has not finished (no {SUCCESS_MARKER}; it may have "
            f"been killed, or still be running). Its shards may be partial; set data.allow_incomplete_runs "
            f"(or pass allow_incomplete) to read them anyway.")


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
        if exists(join(path, MANIFEST)):
            return shard_files(path, verify)
        names = sorted(p for p in fs.ls(root, detail=False) if p.endswith((".parquet", ".jsonl")))
        return [protocol + p for p in names]
    if not fs.exists(root):
        raise FileNotFoundError(f"dataset not found: {path}")
    return [path]


def iter_documents(documents_dir: str, columns: Optional[List[str]] = None,
                   batch_size: int = 64) -> Iterator[Dict]:
    """Rows of an interleaved-document dataset as dicts, shard by shard, a record batch at a time."""
    for path in expand_dataset(documents_dir):
        fs, local = url_to_fs(path)
        with fs.open(local, "rb") as fh:
            pf = pq.ParquetFile(fh)
            if pf.schema_arrow.remove_metadata() != DOCUMENT_SCHEMA.remove_metadata() and columns is None:
                raise ValueError(f"{path}: schema differs from contract.schema.DOCUMENT_SCHEMA")
            for batch in pf.iter_batches(batch_size=batch_size, columns=columns):
                yield from batch.to_pylist()
