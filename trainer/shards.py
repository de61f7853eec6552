"""Reading curated shards without Beam: where a dataset's files are (its manifest, a
directory, a glob; local or any fsspec URL) and the rows. The manifest and the run's
layout are contract.manifest's; this module adds what only a reader needs."""

from __future__ import annotations

from typing import Dict, Iterator, List, Optional, Tuple

import pyarrow.parquet as pq

from contract.manifest import (MANIFEST, RUN_RECORD, SUCCESS_MARKER, BadShardError, exists, join, shard_entries,
                               verify_shard, url_to_fs)
from contract.schema import DOCUMENT_SCHEMA

__all__ = ["BadShardError", "IncompleteRunError", "check_run_complete", "dataset_shards", "expand_dataset",
           "iter_documents", "join", "url_to_fs"]


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


def dataset_shards(path: str, allow_incomplete: bool = False) -> List[Tuple[str, Optional[Dict]]]:
    """The files of a dataset path in a stable order, each with its ``_manifest.json``
    entry (rows, bytes, sha256) or None where no manifest lists it: the shards a
    directory's manifest lists, else the ``*.parquet`` and ``*.jsonl`` files of the
    directory, the matches of a glob, or the file itself (a glob's matches and a file
    take the entry of the manifest beside them, when it lists them). A directory of an
    unfinished curation run raises :class:`IncompleteRunError`."""
    fs, root = url_to_fs(path)
    protocol = path.split("://", 1)[0] + "://" if "://" in path else ""
    if any(ch in path for ch in "*?["):
        return _with_entries(sorted(protocol + p for p in fs.glob(root)))
    if fs.isdir(root):
        if not allow_incomplete:
            check_run_complete(path)
        if exists(join(path, MANIFEST)):
            return shard_entries(path)
        names = sorted(p for p in fs.ls(root, detail=False) if p.endswith((".parquet", ".jsonl")))
        return [(protocol + p, None) for p in names]
    if not fs.exists(root):
        raise FileNotFoundError(f"dataset not found: {path}")
    return _with_entries([path])


def _with_entries(files: List[str]) -> List[Tuple[str, Optional[Dict]]]:
    """Files of a glob or a single file, with the entry of the manifest of their directory."""
    manifests: Dict[str, Dict[str, Dict]] = {}
    out = []
    for file in files:
        directory, name = file.rsplit("/", 1) if "/" in file else (".", file)
        if directory not in manifests:
            manifests[directory] = ({f.rsplit("/", 1)[-1]: e for f, e in shard_entries(directory)}
                                    if exists(join(directory, MANIFEST)) else {})
        out.append((file, manifests[directory].get(name)))
    return out


def expand_dataset(path: str, verify: bool = False, allow_incomplete: bool = False) -> List[str]:
    """The files of a dataset path (see :func:`dataset_shards`); with ``verify``, each
    one a manifest lists is checked against its sha256 first."""
    shards = dataset_shards(path, allow_incomplete)
    if verify:
        for file, entry in shards:
            if entry is not None:
                verify_shard(file, entry)
    return [file for file, _ in shards]


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
