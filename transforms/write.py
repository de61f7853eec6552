"""Writing results: Parquet shards (deterministic content, atomic rename, the
manifest of contract.manifest) and sorted or sharded JSON lines."""

from __future__ import annotations

import hashlib
import io
import uuid
from typing import Dict, List

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from contract.manifest import MANIFEST, build_manifest, manifest_bytes, shard_entry, shard_name, shard_of
from contract.schema import DOCUMENTS, Dataset


def _join(*parts: str) -> str:
    return FileSystems.join(*parts)


# The temporary names of atomic_write; pipeline/run.py's --overwrite removes any a
# killed run left.
TEMP_PREFIX = ".tmp-"


def atomic_write(path: str, data: bytes) -> None:
    """Write to a temporary name beside ``path``, then rename: readers never see a
    partial file (on object stores the rename is a copy + delete of a whole object).
    A write that fails (a full disk) takes its temporary file with it."""
    directory, name = path.rsplit("/", 1) if "/" in path else (".", path)
    tmp = _join(directory, f"{TEMP_PREFIX}{uuid.uuid4().hex}-{name}")
    try:
        # UNCOMPRESSED: Beam would otherwise gzip a name ending in .gz a second time
        with FileSystems.create(tmp, compression_type=CompressionTypes.UNCOMPRESSED) as fh:
            fh.write(data)
        if FileSystems.exists(path):
            FileSystems.delete([path])
        FileSystems.rename([tmp], [path])
    except BaseException:
        try:
            if FileSystems.exists(tmp):
                FileSystems.delete([tmp])
        except Exception:
            pass          # the write's own error is the one to report
        raise


class WriteShard(beam.DoFn):
    def __init__(self, out_dir: str, num_shards: int, compression: str, row_group_size: int,
                 dataset: Dataset = DOCUMENTS):
        self.out_dir = out_dir
        self.num_shards = num_shards
        self.compression = compression
        self.row_group_size = row_group_size
        self.dataset = dataset

    def process(self, element):
        shard, rows = element
        key = self.dataset.key
        rows = sorted(rows, key=lambda r: r[key])  # same bytes on every runner
        table = pa.Table.from_pylist(rows, schema=self.dataset.schema)
        buf = io.BytesIO()
        pq.write_table(table, buf, compression=self.compression, row_group_size=self.row_group_size)
        data = buf.getvalue()
        name = shard_name(shard, self.num_shards)
        atomic_write(_join(self.out_dir, name), data)
        yield shard_entry(name, data, len(rows), sum(self.dataset.images_in(r) for r in rows))


class WriteShards(beam.PTransform):
    """Rows of a dataset -> ``{out_dir}/part-*.parquet`` and ``{out_dir}/_manifest.json``
    (contract.manifest). Rows go to shards by the dataset's key (a hex hash) and are
    sorted by it inside a shard. Returns the manifest (a singleton PCollection)."""

    def __init__(self, out_dir: str, num_shards: int, compression: str = "zstd", row_group_size: int = 256,
                 dataset: Dataset = DOCUMENTS):
        super().__init__()
        self.out_dir = out_dir
        self.num_shards = num_shards
        self.compression = compression
        self.row_group_size = row_group_size
        self.dataset = dataset

    def expand(self, rows):
        n, key = self.num_shards, self.dataset.key
        entries = (rows
                   | "KeyByShard" >> beam.Map(lambda r: (shard_of(r[key], n), r))
                   | "GroupShards" >> beam.GroupByKey()
                   | "WriteParquet" >> beam.ParDo(WriteShard(self.out_dir, n, self.compression,
                                                             self.row_group_size, self.dataset)))
        out_dir = self.out_dir
        schema_name = self.dataset.schema_name

        def write_manifest(entries: List[Dict]):
            manifest = build_manifest(schema_name, entries)
            atomic_write(_join(out_dir, MANIFEST), manifest_bytes(manifest))
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
