"""Writing results: Parquet shards (deterministic content, atomic rename, a
manifest with row counts and checksums), error lines, and ``stats.json``."""

from __future__ import annotations

import hashlib
import io
import json
import uuid
from typing import Dict, List

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from pipeline.schema import DOCUMENT_SCHEMA


def shard_of(doc_id: str, num_shards: int) -> int:
    return int(doc_id[:8], 16) % num_shards


def _join(*parts: str) -> str:
    return FileSystems.join(*parts)


def atomic_write(path: str, data: bytes) -> None:
    """Write to a temporary name beside ``path``, then rename: readers never see a
    partial file (on object stores the rename is a copy + delete of a whole object)."""
    directory, name = path.rsplit("/", 1) if "/" in path else (".", path)
    tmp = _join(directory, f".tmp-{uuid.uuid4().hex}-{name}")
    # UNCOMPRESSED: Beam would otherwise gzip a name ending in .gz a second time
    with FileSystems.create(tmp, compression_type=CompressionTypes.UNCOMPRESSED) as fh:
        fh.write(data)
    if FileSystems.exists(path):
        FileSystems.delete([path])
    FileSystems.rename([tmp], [path])


def images_in(row: Dict) -> int:
    """Images a row carries: a document's ``num_images``, a pair's one, a text's none."""
    if "num_images" in row:
        return int(row["num_images"])
    return 1 if "image" in row else 0


class WriteShard(beam.DoFn):
    def __init__(self, out_dir: str, num_shards: int, compression: str, row_group_size: int,
                 schema: pa.Schema = DOCUMENT_SCHEMA, key: str = "doc_id"):
        self.out_dir = out_dir
        self.num_shards = num_shards
        self.compression = compression
        self.row_group_size = row_group_size
        self.schema = schema
        self.key = key

    def process(self, element):
        shard, rows = element
        rows = sorted(rows, key=lambda r: r[self.key])  # same bytes on every runner
        table = pa.Table.from_pylist(rows, schema=self.schema)
        buf = io.BytesIO()
        pq.write_table(table, buf, compression=self.compression, row_group_size=self.row_group_size)
        data = buf.getvalue()
        name = f"part-{shard:05d}-of-{self.num_shards:05d}.parquet"
        atomic_write(_join(self.out_dir, name), data)
        yield {"file": name, "rows": len(rows), "bytes": len(data),
               "sha256": hashlib.sha256(data).hexdigest(),
               "images": int(sum(images_in(r) for r in rows))}


class WriteShards(beam.PTransform):
    """Rows -> ``{out_dir}/part-*.parquet`` and ``{out_dir}/_manifest.json`` (the
    leading underscore keeps Parquet dataset readers off it). Rows go to shards by
    their ``key`` (a hex hash) and are sorted by it inside a shard."""

    def __init__(self, out_dir: str, num_shards: int, compression: str = "zstd", row_group_size: int = 256,
                 schema: pa.Schema = DOCUMENT_SCHEMA, key: str = "doc_id"):
        super().__init__()
        self.out_dir = out_dir
        self.num_shards = num_shards
        self.compression = compression
        self.row_group_size = row_group_size
        self.schema = schema
        self.key = key

    def expand(self, rows):
        n, key = self.num_shards, self.key
        entries = (rows
                   | "KeyByShard" >> beam.Map(lambda r: (shard_of(r[key], n), r))
                   | "GroupShards" >> beam.GroupByKey()
                   | "WriteParquet" >> beam.ParDo(WriteShard(self.out_dir, n, self.compression,
                                                             self.row_group_size, self.schema, key)))
        out_dir = self.out_dir
        schema_name = self.schema.metadata[b"kosmos.schema"].decode()

        def write_manifest(entries: List[Dict]):
            entries = sorted(entries, key=lambda e: e["file"])
            manifest = {"schema": schema_name, "shards": entries,
                        "rows": sum(e["rows"] for e in entries),
                        "images": sum(e["images"] for e in entries)}
            atomic_write(_join(out_dir, "_manifest.json"),
                         json.dumps(manifest, indent=2, sort_keys=True).encode())
            return manifest

        return (entries
                | "AllShards" >> beam.combiners.ToList()
                | "WriteManifest" >> beam.Map(write_manifest))


class WriteSortedLines(beam.PTransform):
    """Lines -> ``{path}`` sorted (one file; for errors, which are few by design).
    Writes an empty file when there are none, so readers need no special case."""

    def __init__(self, path: str):
        super().__init__()
        self.path = path

    def expand(self, lines):
        path = self.path

        def write(all_lines):
            data = "".join(line + "\n" for line in sorted(all_lines)).encode("utf-8")
            atomic_write(path, data)
            return len(all_lines)

        return lines | "CollectLines" >> beam.combiners.ToList() | "WriteLines" >> beam.Map(write)


class WriteShardedLines(beam.PTransform):
    """Lines -> ``{directory}/part-NNNNN.jsonl``, each file sorted; for outputs that
    grow with the corpus (the audit of removed duplicates)."""

    def __init__(self, directory: str, num_shards: int):
        super().__init__()
        self.directory = directory
        self.num_shards = num_shards

    def expand(self, lines):
        n = self.num_shards
        directory = self.directory

        def write(element):
            shard, shard_lines = element
            data = "".join(line + "\n" for line in sorted(shard_lines)).encode("utf-8")
            atomic_write(_join(directory, f"part-{shard:05d}.jsonl"), data)
            yield shard

        return (lines
                | "KeyByShard" >> beam.Map(lambda l: (int(hashlib.sha256(l.encode()).hexdigest()[:8], 16) % n, l))
                | "GroupShards" >> beam.GroupByKey()
                | "WriteLines" >> beam.FlatMap(write))
