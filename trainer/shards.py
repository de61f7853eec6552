"""Reading curated shards without Beam: the manifest, its checksums, the rows."""

from __future__ import annotations

import hashlib
import json
import os
from typing import Dict, Iterator, List, Optional

import pyarrow.parquet as pq

from pipeline.schema import DOCUMENT_SCHEMA


def read_manifest(documents_dir: str) -> Dict:
    with open(os.path.join(documents_dir, "_manifest.json"), encoding="utf-8") as fh:
        return json.load(fh)


def shard_paths(documents_dir: str, verify: bool = False) -> List[str]:
    """Shard files listed by the manifest; with ``verify`` their sha256 is checked."""
    manifest = read_manifest(documents_dir)
    paths = []
    for entry in manifest["shards"]:
        path = os.path.join(documents_dir, entry["file"])
        if verify:
            with open(path, "rb") as fh:
                digest = hashlib.sha256(fh.read()).hexdigest()
            if digest != entry["sha256"]:
                raise ValueError(f"{path}: sha256 {digest} does not match the manifest")
        paths.append(path)
    return paths


def iter_documents(documents_dir: str, columns: Optional[List[str]] = None,
                   batch_size: int = 64) -> Iterator[Dict]:
    """Rows as dicts, shard by shard, a record batch at a time."""
    for path in shard_paths(documents_dir):
        pf = pq.ParquetFile(path)
        if pf.schema_arrow.remove_metadata() != DOCUMENT_SCHEMA.remove_metadata() and columns is None:
            raise ValueError(f"{path}: schema differs from pipeline.schema.DOCUMENT_SCHEMA")
        for batch in pf.iter_batches(batch_size=batch_size, columns=columns):
            yield from batch.to_pylist()
