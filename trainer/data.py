"""Streaming the curated datasets into packed, mixed training batches.

Layers, each testable alone:

* **Units** (``list_units``): the row groups of every Parquet shard of a dataset
  (a directory with ``_manifest.json``, a directory of ``*.parquet``, a glob, a
  file; local or any fsspec URL), or whole JSONL files for instruction data.
* **Readers** (``SourceStream``): one per (rank, data-loader worker, source). With
  ``G = world_size * num_workers`` readers, reader ``g`` takes units ``g, g+G, ...``;
  when a dataset has fewer units than readers, every reader opens every unit and
  takes rows ``g, g+G, ...`` instead. Either way no two readers see the same row.
  The order of a reader's units is reshuffled each epoch by a seeded hash.
* **Chunks**: a row becomes whole sentences and image blocks (``<image>``, the
  slots, ``</image>``, with the image decoded and CLIP-normalised in the worker);
  an instruction example is one chunk whose prompt tokens are not targets.
* **Packing** ("full-sentence", KOSMOS.md §3): chunks are appended to a sequence of
  ``seq_len`` tokens until the next one does not fit; the rest is padding. A
  sentence is never cut unless it is longer than a whole sequence.
* **Mixing** (``StepPlan``, ``MixtureDataset``): each source's token budget is a
  global number of sequences per optimizer step, the same for any number of ranks,
  the ranks taking turns for the sequences that do not divide evenly; a rank's share
  of all sources fills as few micro-batches as ``data.micro_batch_size`` allows
  (sources mixed in one micro-batch), and every rank runs the same number of them.
  Micro-batch ``k`` of the run is made by worker ``k mod num_workers``, so the data
  loader's in-order round robin hands them out in plan order.

The position of every reader (epoch, unit, row, chunk of the first chunk of its
next sequence) travels with each micro-batch; the trainer keeps the positions of
what it consumed and puts them in the checkpoint, so ``--resume`` continues with
exactly the next micro-batch.
"""

from __future__ import annotations

import io
import json
import logging
import re
import warnings
from dataclasses import dataclass
from typing import Any, Dict, Iterable, Iterator, List, Optional, Tuple

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from contract.hashing import seeded_hash
from contract.schema import DATASETS, ITEM_IMAGE, ITEM_TEXT
from contract.tokens import IGNORE_INDEX, SpecialIds
from trainer.config import TrainConfig
from trainer.model.vision import CLIP_MEAN, CLIP_STD
from contract.manifest import MANIFEST, file_sha256
from trainer.shards import BadShardError, dataset_shards, url_to_fs

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- units
@dataclass(frozen=True)
class Unit:
    path: str
    row_group: int      # -1 for a whole JSONL file
    rows: int
    kind: str           # "parquet" | "jsonl"
    sha256: Optional[str] = None    # the manifest's digest of the file, checked before its first row (None: not)


class UnverifiedShardWarning(UserWarning):
    """Files of a dataset that no ``_manifest.json`` lists (a user's own Parquet or
    JSONL): read, but with no row count or sha256 to check them against."""


_WARNED_UNVERIFIED: set = set()
# (path, expected sha256, size, modification stamp) -> actual sha256, for the files this process hashed
_HASHED: Dict[Tuple, str] = {}


def _file_stamp(path: str) -> Tuple:
    """The size and modification time (or the object store's generation/etag) of a file:
    a file rewritten since it was hashed is hashed again."""
    fs, local = url_to_fs(path)
    info = fs.info(local)
    return info.get("size"), next((info[k] for k in ("mtime", "updated", "LastModified", "generation", "etag", "ETag")
                                   if info.get(k) is not None), None)


def check_sha256(path: str, expected: str) -> None:
    """Raise :class:`BadShardError` (with both digests) when the file's sha256 is not
    ``expected``. Each file is hashed once per process (again if it changed since): a
    reader checks a shard before it uses the first of its rows, and the answer holds
    for its other row groups."""
    try:
        key = (path, expected) + _file_stamp(path)
        if key not in _HASHED:
            _HASHED[key] = file_sha256(path)
    except Exception as exc:
        raise BadShardError(f"{path}: cannot be read to check its sha256 ({type(exc).__name__}: {exc})") from exc
    actual = _HASHED[key]
    if actual != expected:
        raise BadShardError(f"{path}: sha256 {actual} does not match {MANIFEST} ({expected}): the file changed "
                            f"after the run wrote it (damaged, or another file in its place)",
                            expected_sha256=expected, actual_sha256=actual)


def _schema_problem(schema, source: Optional[str]) -> Optional[str]:
    """Why a readable shard cannot feed ``source`` (the columns its chunker reads,
    with the types of the curation contract), or None."""
    dataset = DATASETS.get(source or "")
    if dataset is None:
        return None
    expected = dataset.schema
    problems = []
    for name in dataset.train_columns:
        if name not in schema.names:
            problems.append(f"no column {name!r}")
        elif not schema.field(name).type.equals(expected.field(name).type):
            problems.append(f"column {name!r} is {schema.field(name).type}, not {expected.field(name).type}")
    return "; ".join(problems) or None


def file_units(path: str, source: Optional[str] = None, entry: Optional[Dict] = None,
               verify: bool = True) -> List[Unit]:
    """The units of one file. With its manifest ``entry``, the file's size and the
    footer's row count must be the manifest's (free: the footer is read anyway), and
    with ``verify`` every unit carries the manifest's sha256 for the reader to check."""
    sha = entry["sha256"] if entry is not None and verify else None
    if path.endswith((".jsonl", ".json", ".jsonl.gz")):
        return [Unit(path, -1, -1, "jsonl", sha)]
    import pyarrow.parquet as pq
    fs, local = url_to_fs(path)
    try:
        with fs.open(local, "rb") as fh:
            pf = pq.ParquetFile(fh)
            md, schema = pf.metadata, pf.schema_arrow
    except Exception as exc:  # pyarrow raises ArrowInvalid / OSError for damaged files
        raise BadShardError(f"{path}: cannot read the Parquet footer ({type(exc).__name__}: {exc})") from exc
    if entry is not None:
        if md.num_rows != entry["rows"]:
            raise BadShardError(f"{path}: {md.num_rows} rows, {MANIFEST} says {entry['rows']} (another file in "
                                f"its place?)", expected_rows=entry["rows"], actual_rows=md.num_rows)
        size = fs.size(local)
        if "bytes" in entry and size != entry["bytes"]:
            raise BadShardError(f"{path}: {size} bytes, {MANIFEST} says {entry['bytes']}",
                                expected_bytes=entry["bytes"], actual_bytes=size)
    problem = _schema_problem(schema, source)
    if problem:
        raise BadShardError(f"{path}: not a {source} shard: {problem}")
    return [Unit(path, i, md.row_group(i).num_rows, "parquet", sha) for i in range(md.num_row_groups)]


def bad_entry(exc: BadShardError, path: str, **where) -> Dict[str, Any]:
    """A line of ``bad_shards.jsonl``: the path, where in it, the message and what the
    error measured (expected and actual sha256 or rows)."""
    return {"path": path, **where, "error": str(exc), **getattr(exc, "details", {})}


def list_units(paths: List[str], on_bad: str = "skip", verify: bool = True,
               bad: Optional[List[Dict]] = None, source: Optional[str] = None,
               allow_incomplete: bool = False, unverified: Optional[List[Dict]] = None) -> List[Unit]:
    """The units of datasets. A file its manifest lists is checked against it (row
    count and size here, sha256 with ``verify`` when a reader first opens it); a bad
    one is reported in ``bad`` and left out, or raises with ``on_bad="stop"``. Files no
    manifest lists are read unverified: reported once per dataset path
    (:class:`UnverifiedShardWarning`, and in ``unverified``)."""
    units: List[Unit] = []
    for path in paths:
        shards = dataset_shards(path, allow_incomplete)
        loose = [file for file, entry in shards if entry is None]
        if loose:
            note = {"path": path, "files": len(loose),
                    "error": f"{len(loose)} file(s) not listed in a {MANIFEST}: read without checking their "
                             f"row counts or sha256"}
            if unverified is not None:
                unverified.append(note)
            if path not in _WARNED_UNVERIFIED:
                _WARNED_UNVERIFIED.add(path)
                warnings.warn(f"{path}: {note['error']}", UnverifiedShardWarning, stacklevel=2)
        for file, entry in shards:
            try:
                units.extend(file_units(file, source, entry, verify))
            except BadShardError as exc:
                if on_bad == "stop":
                    raise
                log.error("skipping bad shard: %s", exc)
                if bad is not None:
                    bad.append(bad_entry(exc, file, **({"source": source} if source else {})))
    return units


def read_unit(unit: Unit, columns: Optional[List[str]] = None) -> List[Dict[str, Any]]:
    """The rows of a unit, decoded whole (a damaged row group never yields part of
    its rows); a unit that carries its file's sha256 is checked against it first."""
    if unit.sha256 is not None:
        check_sha256(unit.path, unit.sha256)
    fs, local = url_to_fs(unit.path)
    try:
        if unit.kind == "jsonl":
            with fs.open(local, "rt", encoding="utf-8", compression="infer") as fh:
                rows = []
                for n, line in enumerate(fh):
                    if line.strip():
                        try:
                            rows.extend(instruction_rows(json.loads(line)))
                        except (json.JSONDecodeError, KeyError, TypeError) as exc:
                            raise BadShardError(f"{unit.path}: line {n + 1}: {exc}") from exc
                return rows
        import pyarrow.parquet as pq
        with fs.open(local, "rb") as fh:
            pf = pq.ParquetFile(fh)
            names = set(pf.schema_arrow.names)
            cols = [c for c in columns if c in names] if columns else None
            return pf.read_row_group(unit.row_group, columns=cols).to_pylist()
    except BadShardError:
        raise
    except Exception as exc:
        where = f"row group {unit.row_group}" if unit.kind == "parquet" else "file"
        raise BadShardError(f"{unit.path}: {where}: {type(exc).__name__}: {exc}") from exc


def instruction_rows(obj: Dict[str, Any]) -> List[Dict[str, str]]:
    """(instruction, input, output) rows: flat records (Unnatural Instructions / FLAN
    style) or self-instruct's ``instances`` lists."""
    if "instances" in obj:
        return [{"instruction": obj["instruction"], "input": inst.get("input", "") or "",
                 "output": inst["output"]} for inst in obj["instances"]]
    return [{"instruction": obj["instruction"], "input": obj.get("input", "") or "", "output": obj["output"]}]


# --------------------------------------------------------------------------- rows -> chunks
_SENTENCE_END = re.compile(r"(?<=[.!?。！？])[\"'”’)\]]*\s+(?=\S)")


def split_sentences(paragraph: str) -> List[str]:
    return [s for s in (p.strip() for p in _SENTENCE_END.split(paragraph)) if s]


def preprocess_image(data: bytes, size: int = 224) -> torch.Tensor:
    """CLIP's preprocessing: RGB, shorter side to ``size`` (bicubic), centre crop, mean/std."""
    from PIL import Image
    with Image.open(io.BytesIO(data)) as im:
        im = im.convert("RGB")
        w, h = im.size
        scale = size / min(w, h)
        nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
        im = im.resize((nw, nh), Image.BICUBIC)
        left, top = (nw - size) // 2, (nh - size) // 2
        im = im.crop((left, top, left + size, top + size))
        arr = np.asarray(im, dtype=np.float32) / 255.0
    arr = (arr - np.array(CLIP_MEAN, dtype=np.float32)) / np.array(CLIP_STD, dtype=np.float32)
    return torch.from_numpy(arr.transpose(2, 0, 1).copy())


@dataclass
class Chunk:
    ids: List[int]
    labels: List[int]
    images: List[torch.Tensor]

    def __len__(self) -> int:
        return len(self.ids)


# A sentence longer than this many characters is tokenized in pieces cut at whitespace
# (SentencePiece gives a piece that starts a word the same ids either way), and
# sentences are tokenized this many characters at a time: a row of any size costs
# bounded memory, and its first sequences come before the rest of it is read.
PIECE_CHARS = 1 << 16


def _lines(text: str) -> Iterator[str]:
    """``text.split("\\n")``, one line at a time."""
    start = 0
    while True:
        end = text.find("\n", start)
        if end < 0:
            yield text[start:]
            return
        yield text[start:end]
        start = end + 1


def _sentence_pieces(paragraph: str) -> Iterator[Tuple[str, bool]]:
    """``split_sentences(paragraph)`` one at a time, a sentence over ``PIECE_CHARS``
    in pieces: (text, whether it ends its sentence)."""
    pos = 0
    for end, nxt in _sentence_bounds(paragraph):
        sentence = paragraph[pos:end].strip()
        pos = nxt
        at = 0
        while len(sentence) - at > PIECE_CHARS:
            cut = sentence.rfind(" ", at + PIECE_CHARS // 2, at + PIECE_CHARS)
            cut = cut if cut > at else at + PIECE_CHARS     # no whitespace: a hard cut
            yield sentence[at:cut], False
            at = cut
        if at < len(sentence):
            yield sentence[at:], True


def _sentence_bounds(paragraph: str) -> Iterator[Tuple[int, int]]:
    """(end, start of the next) of each segment ``_SENTENCE_END.split`` makes."""
    for m in _SENTENCE_END.finditer(paragraph):
        yield m.start(), m.end()
    yield len(paragraph), len(paragraph)


class Chunker:
    """Rows of one source kind -> chunks. Deterministic: the same row gives the
    same chunks, which is what lets a reader resume in the middle of a row.

    An image that does not decode is left out (a pair without its image is dropped),
    logged and reported once in ``reports`` (drained by the reader), and remembered
    in ``undecodable`` by row and index: later epochs skip it without decoding."""

    COLUMNS = {**{name: list(d.train_columns) for name, d in DATASETS.items()}, "instructions": None}

    def __init__(self, kind: str, tokenizer, num_image_tokens: int, seq_len: int, image_size: int):
        self.kind, self.tok, self.seq_len, self.image_size = kind, tokenizer, seq_len, image_size
        self.ids: SpecialIds = tokenizer.ids
        self.block = self.ids.image_block(num_image_tokens)
        self.block_labels = [IGNORE_INDEX] * (len(self.block) - 1) + [self.ids.image_end]
        self.undecodable: Dict[Tuple[str, int], str] = {}
        self.reports: List[Dict[str, Any]] = []

    def _text(self, text: str) -> Iterator[Tuple[Chunk, bool]]:
        """Sentence chunks of a text (pieces of long sentences, flagged not ending it),
        tokenized ``PIECE_CHARS`` characters at a time."""
        batch: List[Tuple[str, bool]] = []
        size = 0
        for para in _lines(text):
            for piece in _sentence_pieces(para):
                batch.append(piece)
                size += len(piece[0])
                if size >= PIECE_CHARS:
                    yield from self._encode(batch)
                    batch, size = [], 0
        yield from self._encode(batch)

    def _encode(self, batch: List[Tuple[str, bool]]) -> Iterator[Tuple[Chunk, bool]]:
        if batch:
            for ids, (_, ends) in zip(self.tok.encode_batch([t for t, _ in batch]), batch):
                yield Chunk(ids, list(ids), []), ends

    def _image(self, data: bytes, where: str, index: int = 0) -> Optional[Chunk]:
        key = (where, index)
        if key in self.undecodable:
            return None
        try:
            pixels = preprocess_image(data, self.image_size)
        except Exception as exc:
            error = f"undecodable image {index}: {type(exc).__name__}: {exc}"
            self.undecodable[key] = error
            self.reports.append({"where": where, "image": index, "error": error})
            log.error("%s: %s", where, error)
            return None
        return Chunk(list(self.block), list(self.block_labels), [pixels])

    def _fit(self, ch: Chunk) -> Iterator[Chunk]:
        if len(ch) <= self.seq_len:
            yield ch
        elif not ch.images:           # an image block longer than a whole sequence cannot be placed
            for i in range(0, len(ch), self.seq_len):
                yield Chunk(ch.ids[i:i + self.seq_len], ch.labels[i:i + self.seq_len], [])

    def _document(self, parts: Iterable[Tuple[Chunk, bool]]) -> Iterator[Chunk]:
        """<s> first ... last </s>, sentences longer than a sequence cut to fit, from
        their start. ``parts``: (chunk, whether it ends its sentence); image blocks end
        theirs. The sequence-long leading pieces of a long sentence leave as soon as
        more of it follows, so a sentence of any length holds little memory."""
        L = self.seq_len
        held: Optional[Chunk] = None        # a whole chunk: the last one gets </s>
        ids: List[int] = []                 # the sentence being read, less its pieces already out
        labels: List[int] = []
        opened = False
        for ch, ends in parts:
            if not ch.ids and not ids:
                continue
            if held is not None:
                yield from self._fit(held)
                held = None
            if not opened:
                ch, opened = Chunk([self.ids.bos] + ch.ids, [IGNORE_INDEX] + ch.labels, ch.images), True
            if ch.images:
                held = ch
                continue
            ids += ch.ids
            labels += ch.labels
            if ends:
                held, ids, labels = Chunk(ids, labels, []), [], []
            else:
                while len(ids) > L:
                    yield Chunk(ids[:L], labels[:L], [])
                    del ids[:L], labels[:L]
        if ids:                             # (a last piece always ends its sentence)
            held = Chunk(ids, labels, [])
        if held is not None:
            yield from self._fit(Chunk(held.ids + [self.ids.eos], held.labels + [self.ids.eos], held.images))

    def _interleaved(self, row: Dict[str, Any], where: str) -> Iterator[Tuple[Chunk, bool]]:
        for item in row["items"]:
            if item["type"] == ITEM_TEXT and item["text"]:
                yield from self._text(item["text"])
            elif item["type"] == ITEM_IMAGE and item["image"] is not None:
                ch = self._image(row["images"][item["image"]]["data"], where, item["image"])
                if ch is not None:
                    yield ch, True

    def iter_chunks(self, row: Dict[str, Any], where: str) -> Iterator[Chunk]:
        """The chunks of a row, made as they are taken (what the reader uses)."""
        if self.kind == "interleaved":
            yield from self._document(self._interleaved(row, where))
        elif self.kind == "text":
            yield from self._document(self._text(row["text"] or ""))
        elif self.kind == "pairs":
            ch = self._image(row["image"]["data"], where)
            caption = self.tok.encode(row["caption"] or "")
            if ch is None or not caption:
                return
            ids = [self.ids.bos] + ch.ids + caption + [self.ids.eos]
            labels = [IGNORE_INDEX] + ch.labels + caption + [self.ids.eos]
            if len(ids) > self.seq_len:
                ids, labels = ids[:self.seq_len], labels[:self.seq_len]
            yield Chunk(ids, labels, ch.images)
        elif self.kind == "instructions":
            prompt = row["instruction"].strip()
            if row.get("input"):
                prompt += "\n\n" + row["input"].strip()
            p = [self.ids.bos] + self.tok.encode(prompt + "\n\n")
            o = self.tok.encode(row["output"].strip()) + [self.ids.eos]
            ids, labels = p + o, [IGNORE_INDEX] * len(p) + o
            if len(ids) > self.seq_len:
                ids, labels = ids[:self.seq_len], labels[:self.seq_len]
            yield Chunk(ids, labels, [])
        else:
            raise ValueError(f"unknown source kind {self.kind!r}")

    def __call__(self, row: Dict[str, Any], where: str) -> List[Chunk]:
        return list(self.iter_chunks(row, where))


# --------------------------------------------------------------------------- readers
def seeded_order(n: int, *key) -> List[int]:
    return list(np.random.default_rng(seeded_hash(*key)).permutation(n))


Position = Tuple[int, int, int, int]   # (epoch, index in the epoch's unit order, row, chunk)


class SourceStream:
    """One reader of one source: packed sequences, forever (epoch after epoch)."""

    def __init__(self, name: str, units: List[Unit], reader: int, readers: int, chunker: Chunker,
                 seq_len: int, pad_id: int, seed: int, on_bad: str = "skip",
                 position: Optional[Position] = None, epochs: Optional[int] = None):
        self.name, self.chunker, self.seq_len, self.pad_id = name, chunker, seq_len, pad_id
        self.epochs = epochs            # None: forever (training); 1: one pass (held-out data)
        self.seed, self.on_bad = seed, on_bad
        self.reader, self.readers = reader, readers
        if len(units) >= readers:
            self.units = [u for i, u in enumerate(units) if i % readers == reader]
            self.row_stride = False
        else:
            self.units = list(units)
            self.row_stride = True
        self.position: Position = tuple(position) if position else (0, 0, 0, 0)
        self.bad: List[Dict] = []           # bad_shards.jsonl lines: shards, row groups, images left out
        self.bad_units: set = set()
        self.bad_files: set = set()         # files whose sha256 is not the manifest's: all their units
        self.rows_read: List[str] = []      # "path#row_group:row" of rows begun since the last batch
        self._where: Dict[str, Tuple[str, int, int]] = {}

    @property
    def stats(self) -> Dict[str, int]:
        """What this reader left out so far: row groups, whole files, images."""
        return {"bad_units": len(self.bad_units), "bad_files": len(self.bad_files),
                "undecodable_images": len(self.chunker.undecodable)}

    def _drain_image_reports(self) -> None:
        for rep in self.chunker.reports:
            path, row_group, row = self._where[rep["where"]]
            self.bad.append({"path": path, "row_group": row_group, "row": row, "image": rep["image"],
                             "source": self.name, "skipped": "undecodable image", "error": rep["error"]})
        self.chunker.reports.clear()

    def _rows(self, unit: Unit) -> List[Tuple[int, Dict]]:
        rows = read_unit(unit, Chunker.COLUMNS.get(self.chunker.kind))
        if not self.row_stride:
            return list(enumerate(rows))
        # rows numbered across the dataset (Parquet row counts are known from the footers)
        offset = self._row_offsets[unit]
        return [(r, row) for r, row in enumerate(rows) if (offset + r) % self.readers == self.reader]

    @property
    def _row_offsets(self) -> Dict[Unit, int]:
        if not hasattr(self, "_offsets"):
            self._offsets, total = {}, 0
            for u in self.units:
                self._offsets[u] = total
                total += u.rows if u.rows >= 0 else 0
        return self._offsets

    def chunks(self) -> Iterator[Tuple[Position, Chunk]]:
        epoch, start_unit, start_row, start_chunk = self.position
        first = True
        while True:
            produced = False
            order = seeded_order(len(self.units), self.seed, self.name, epoch)
            for k in range(start_unit if first else 0, len(order)):
                unit = self.units[order[k]]
                if unit in self.bad_units or unit.path in self.bad_files:
                    continue
                try:
                    rows = self._rows(unit)
                except BadShardError as exc:
                    if self.on_bad == "stop":
                        raise
                    log.error("skipping bad shard: %s", exc)
                    if "actual_sha256" in getattr(exc, "details", {}):     # the whole file: none of its units
                        self.bad_files.add(unit.path)
                        self.bad.append(bad_entry(exc, unit.path, source=self.name))
                    else:
                        self.bad_units.add(unit)
                        self.bad.append(bad_entry(exc, unit.path, row_group=unit.row_group, source=self.name))
                    continue
                for r, row in rows:
                    if first and k == start_unit and r < start_row:
                        continue
                    where = f"{unit.path} row group {unit.row_group} row {r}"
                    self._where[where] = (unit.path, unit.row_group, r)
                    c0 = start_chunk if (first and k == start_unit and r == start_row) else 0
                    if c0 == 0:
                        self.rows_read.append(f"{unit.path}#{unit.row_group}:{r}")
                    # made as they are taken: a row of any size holds little memory
                    for c, ch in enumerate(self.chunker.iter_chunks(row, where)):
                        if self.chunker.reports:
                            self._drain_image_reports()
                        if c >= c0:
                            produced = True
                            yield (epoch, k, r, c), ch
                    if self.chunker.reports:
                        self._drain_image_reports()
                    del self._where[where]
            if not produced and not first:
                raise RuntimeError(
                    f"source {self.name!r}: reader {self.reader} of {self.readers} has no rows "
                    f"({len(self.units)} units); use fewer ranks x data-loader workers or more data")
            if not produced and first and (start_unit, start_row, start_chunk) == (0, 0, 0):
                raise RuntimeError(
                    f"source {self.name!r}: reader {self.reader} of {self.readers} has no rows "
                    f"({len(self.units)} units, {len(self.bad_units)} unreadable, "
                    f"{len(self.bad_files)} file(s) not matching their manifest)")
            if self.epochs is not None and epoch + 1 >= self.epochs:
                return
            first = False
            epoch += 1

    def sequences(self) -> Iterator[Dict[str, Any]]:
        """Packed sequences; ``self.position`` is where the next one begins."""
        buf: List[Chunk] = []
        used = 0
        for pos, ch in self.chunks():
            if buf and used + len(ch) > self.seq_len:
                seq = self._pack(buf)
                self.position = pos
                yield seq
                buf, used = [], 0
            buf.append(ch)
            used += len(ch)
        if buf:          # a finite stream (``epochs``) ends with its last, partly filled sequence
            self.position = (self.epochs or 0, 0, 0, 0)
            yield self._pack(buf)

    def _pack(self, chunks: List[Chunk]) -> Dict[str, Any]:
        ids = [t for ch in chunks for t in ch.ids]
        labels = [t for ch in chunks for t in ch.labels]
        pad = self.seq_len - len(ids)
        return {"input_ids": ids + [self.pad_id] * pad, "labels": labels + [IGNORE_INDEX] * pad,
                "images": [im for ch in chunks for im in ch.images]}


def held_out_sequences(paths: List[str], source: str, tokenizer, num_image_tokens: int, seq_len: int,
                       image_size: int, limit: int, batch_size: int, rank: int = 0, world_size: int = 1,
                       seed: int = 0) -> Iterator[Dict[str, Any]]:
    """Batches of the first ``limit`` packed sequences of held-out datasets (one pass,
    the same ones every time), this rank's share of them: validation and perplexity."""
    units = list_units(list(paths), "skip", source=source if source in Chunker.COLUMNS else None)
    if not units:
        raise RuntimeError(f"no readable {source} shards in {paths}")
    chunker = Chunker(source, tokenizer, num_image_tokens, seq_len, image_size)
    stream = SourceStream(source, units, rank, world_size, chunker, seq_len, tokenizer.ids.pad, seed,
                          epochs=1)
    mine = -(-limit // world_size)
    buf: List[Dict[str, Any]] = []
    for n, seq in enumerate(stream.sequences()):
        if n >= mine:
            break
        buf.append(seq)
        if len(buf) == batch_size:
            yield collate(buf, tokenizer.ids.pad)
            buf = []
    if buf:
        yield collate(buf, tokenizer.ids.pad)


# --------------------------------------------------------------------------- mixing
class StepPlan:
    """How one optimizer step's sequences are spread over the ranks and packed into
    micro-batches.

    A source's token budget is a global number of sequences per step,
    ``N = round(tokens / seq_len)`` (at least 1), exactly as configured whatever the
    number of ranks ``W``: every rank takes ``N // W`` of them and ``N % W`` ranks one
    more, the ranks taking turns step after step (at step ``t`` the extra ones are
    ranks ``t * (N % W) ... `` modulo ``W``), so over any ``W`` steps each rank reads
    the same amount.

    A rank's share of all sources goes into as few micro-batches as
    ``data.micro_batch_size`` allows: its sequences, source after source, are cut into
    ``K = ceil(most / micro_batch_size)`` micro-batches of nearly equal size, where
    ``most`` is the most sequences any rank can get in a step (every source's share
    rounded up). A micro-batch may hold sequences of several sources; the per-source
    counts are those above, exactly. Every rank runs the same ``K`` micro-batches, so
    FSDP's collectives line up; a micro-batch a rank has no sequence for is an empty
    one (one padding token, no target) that runs the same modules and adds nothing."""

    def __init__(self, cfg: TrainConfig, world_size: int):
        d = cfg.data
        if d.micro_batch_size < 1:
            raise ValueError(f"data.micro_batch_size must be >= 1, not {d.micro_batch_size}")
        self.world = world_size
        self.seq_len = d.seq_len
        self.micro_batch_size = d.micro_batch_size
        self.sequences: Dict[str, int] = {}
        for source in cfg.active_sources():
            self.sequences[source] = max(1, round(getattr(d, f"{source}_tokens") / d.seq_len))
        if not self.sequences:
            raise ValueError("no data source: give at least one of data.text, data.pairs, data.interleaved, "
                             "data.instructions with a token budget > 0")
        self.most = sum(-(-n // world_size) for n in self.sequences.values())
        k = -(-self.most // d.micro_batch_size)
        # ``slots``: the most sequences a rank puts into each micro-batch (their number is K)
        self.slots: List[int] = [self.most // k + (1 if j < self.most % k else 0) for j in range(k)]

    def rank_sequences(self, source: str, step: int, rank: int) -> int:
        """Sequences of ``source`` rank ``rank`` reads at optimizer step ``step``."""
        base, extra = divmod(self.sequences[source], self.world)
        return base + (1 if (rank - step * extra) % self.world < extra else 0)

    def micro_batch(self, step: int, rank: int, j: int) -> List[Tuple[str, int]]:
        """Micro-batch ``j`` of a step on a rank: (source, number of sequences) for each
        source it holds, in source order; empty for an empty micro-batch."""
        k = len(self.slots)
        mine = [(s, self.rank_sequences(s, step, rank)) for s in self.sequences]
        total = sum(n for _, n in mine)
        start = j * (total // k) + min(j, total % k)
        end = start + total // k + (1 if j < total % k else 0)
        out, at = [], 0
        for s, n in mine:
            take = max(0, min(end, at + n) - max(start, at))
            if take:
                out.append((s, take))
            at += n
        return out

    def step_tokens(self, step: int) -> Dict[str, int]:
        """Tokens per source of one step, summed over the ranks (what the config asks)."""
        return {s: sum(self.rank_sequences(s, step, r) for r in range(self.world)) * self.seq_len
                for s in self.sequences}

    def describe(self) -> str:
        per = {s: n * self.seq_len for s, n in self.sequences.items()}
        total = sum(per.values())
        parts = ", ".join(f"{s} {t:,d} ({t / total:.0%})" for s, t in per.items())
        return (f"{len(self.slots)} micro-batches per step per rank (at most {self.most} sequences, "
                f"sources mixed, {max(self.slots)} a micro-batch at most); {total:,d} tokens per step over "
                f"{self.world} rank(s): {parts}")


def plan_table(cfg: TrainConfig, world_sizes: List[int], steps: int = 8) -> str:
    """Tokens per source per step for several numbers of ranks, computed from the plan
    (min and max over ``steps`` consecutive steps), against the configured budgets."""
    sources = cfg.active_sources()
    head = ["ranks", "micro-batches/rank"] + [f"{s} (budget {getattr(cfg.data, f'{s}_tokens'):,d})"
                                              for s in sources] + ["total", "share"]
    rows = [head]
    for w in world_sizes:
        plan = StepPlan(cfg, w)
        per = [plan.step_tokens(t) for t in range(steps)]
        cells = [str(w), str(len(plan.slots))]
        for s in sources:
            lo, hi = min(p[s] for p in per), max(p[s] for p in per)
            cells.append(f"{lo:,d}" if lo == hi else f"{lo:,d}-{hi:,d}")
        total = sum(per[0].values())
        cells.append(f"{total:,d}")
        cells.append(" / ".join(f"{per[0][s] / total:.1%}" for s in sources))
        rows.append(cells)
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    return "\n".join("  ".join(c.rjust(wd) for c, wd in zip(r, widths)) for r in rows)


def collate(seqs: List[Dict[str, Any]], pad_id: int = 1, sources: Optional[List[str]] = None) -> Dict[str, Any]:
    """Sequences as one micro-batch; ``sources`` (one name per sequence) becomes the
    batch's ``sources``, the padding row of an empty micro-batch having ``None``."""
    if sources is not None and len(sources) != len(seqs):
        raise ValueError(f"{len(sources)} source names for {len(seqs)} sequences")
    if not seqs:       # an empty micro-batch of the plan: one padding token, no target
        out = {"input_ids": torch.tensor([[pad_id]], dtype=torch.long),
               "labels": torch.tensor([[IGNORE_INDEX]], dtype=torch.long), "images": None}
        return out if sources is None else dict(out, sources=[None])
    images = [im for s in seqs for im in s["images"]]
    out = {"input_ids": torch.tensor([s["input_ids"] for s in seqs], dtype=torch.long),
           "labels": torch.tensor([s["labels"] for s in seqs], dtype=torch.long),
           "images": torch.stack(images) if images else None}
    return out if sources is None else dict(out, sources=list(sources))


class MixtureDataset(IterableDataset):
    """Micro-batches in schedule order for one rank (see the module docstring); each
    names the source of every row (``sources``)."""

    def __init__(self, cfg: TrainConfig, tokenizer, num_image_tokens: int, rank: int, world_size: int,
                 state: Optional[Dict[str, Any]] = None):
        super().__init__()
        self.cfg, self.tok, self.num_image_tokens = cfg, tokenizer, num_image_tokens
        self.rank, self.world = rank, world_size
        self.workers = max(1, cfg.data.num_workers)
        self.plan = StepPlan(cfg, world_size)
        self.schedule = self.plan.slots
        self.sources = sorted(self.plan.sequences)
        self.bad: List[Dict] = []
        self.units = {s: list_units(getattr(cfg.data, s), cfg.data.on_bad_shard, cfg.data.verify_checksums,
                                    self.bad, s, cfg.data.allow_incomplete_runs) for s in self.sources}
        for s, units in self.units.items():
            if not units:
                raise RuntimeError(f"source {s!r}: no readable shards in {getattr(cfg.data, s)}")
        self.state = {}
        if state:
            self.set_state(state)

    def set_state(self, state: Dict[str, Any]) -> None:
        """Start at a saved position (before iterating)."""
        saved = (state.get("world_size"), state.get("workers"))
        if saved != (self.world, self.workers):
            raise ValueError(f"the checkpoint's data position was saved with world size {saved[0]} and "
                             f"{saved[1]} loader workers; this run has {self.world} and {self.workers}. "
                             "Resume with the same layout.")
        self.state = state

    def initial_state(self) -> Dict[str, Any]:
        return {"next": 0, "world_size": self.world, "workers": self.workers, "roles": {}}

    def __iter__(self):
        info = get_worker_info()
        worker = info.id if info is not None else 0
        nxt = int(self.state.get("next", 0))
        # The loader asks worker 0 first: it plays the role of the reader that owns micro-batch ``nxt``.
        role = (worker + nxt) % self.workers
        saved = self.state.get("roles", {}).get(str(role), {})
        d = self.cfg.data
        streams, iters = {}, {}
        for s in self.sources:
            chunker = Chunker(s, self.tok, self.num_image_tokens, d.seq_len, d.image_size)
            streams[s] = SourceStream(s, self.units[s], self.rank * self.workers + role, self.world * self.workers,
                                      chunker, d.seq_len, self.tok.ids.pad, d.seed, d.on_bad_shard,
                                      saved.get(s))
            iters[s] = streams[s].sequences()
        k = nxt + ((role - nxt) % self.workers)
        reported = 0
        while True:
            step, j = divmod(k, len(self.schedule))
            seqs, names = [], []
            for source, size in self.plan.micro_batch(step, self.rank, j):
                seqs += [next(iters[source]) for _ in range(size)]
                names += [source] * size
            batch = collate(seqs, self.tok.ids.pad, names)
            bad = [b for st in streams.values() for b in st.bad]
            batch.update(index=k, role=role,
                         positions={s: list(st.position) for s, st in streams.items()},
                         bad_shards=bad[reported:],
                         rows={s: st.rows_read for s, st in streams.items()})
            for st in streams.values():
                st.rows_read = []
            reported = len(bad)
            yield batch
            k += self.workers


class MixtureLoader:
    """The torch DataLoader over a ``MixtureDataset`` plus the position bookkeeping;
    ``Stateful`` (its state is this rank's data position), so a checkpoint saves and
    restores it like the model."""

    def __init__(self, dataset: MixtureDataset, pin_memory: bool = False):
        from torch.utils.data import DataLoader
        self.dataset = dataset
        self.state = dict(dataset.state) if dataset.state else dataset.initial_state()
        self.state.setdefault("roles", {})
        n = dataset.cfg.data.num_workers
        # Its own generator: starting an iterator must not draw from the global RNG
        # (that would shift dropout after a resume). Our workers use no randomness.
        self.loader = DataLoader(dataset, batch_size=None, num_workers=n, pin_memory=pin_memory,
                                 prefetch_factor=4 if n else None, persistent_workers=False,
                                 generator=torch.Generator().manual_seed(dataset.cfg.data.seed))
        self._it = None
        self.bad_shards: List[Dict] = list(dataset.bad)

    def next_step(self) -> List[Dict[str, Any]]:
        """The micro-batches of one optimizer step."""
        if self._it is None:
            self._it = iter(self.loader)
        out = []
        for _ in range(len(self.dataset.schedule)):
            b = next(self._it)
            if b["index"] != self.state["next"]:
                raise RuntimeError(f"data loader out of order: got micro-batch {b['index']}, "
                                   f"expected {self.state['next']}")
            self.state["next"] = b["index"] + 1
            self.state["roles"][str(b["role"])] = b["positions"]
            self.bad_shards.extend(b["bad_shards"])
            out.append(b)
        return out

    def state_dict(self) -> Dict[str, Any]:
        return json.loads(json.dumps(self.state))

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if self._it is not None:
            raise RuntimeError("a data position can only be restored before the first step")
        state = json.loads(json.dumps(state))
        self.dataset.set_state(state)
        self.state = dict(state)
        self.state.setdefault("roles", {})


# --------------------------------------------------------------------------- instruction epochs
def measure_instruction_set(path: str, tokenizer, seq_len: int, allow_incomplete: bool = False) -> Dict[str, Any]:
    """One instruction dataset as the loader sees it: its examples, their tokens (the
    chunks ``Chunker`` makes) and the sequences one pass over it packs into (whole
    examples appended until the next does not fit, as ``SourceStream`` packs)."""
    chunker = Chunker("instructions", tokenizer, 0, seq_len, 224)
    examples = tokens = sequences = used = 0
    for unit in list_units([path], on_bad="stop", allow_incomplete=allow_incomplete, source="instructions"):
        for row in read_unit(unit):
            for ch in chunker(row, unit.path):
                examples += 1
                tokens += len(ch)
                if used == 0 or used + len(ch) > seq_len:
                    sequences += 1
                    used = 0
                used += len(ch)
    return {"path": path, "examples": examples, "tokens": tokens, "sequences": sequences}


def instruction_epochs(cfg: TrainConfig, measured: List[Dict[str, Any]]) -> List[str]:
    """Lines of ``kosmos train --show_plan`` on instruction tuning: per instruction set,
    its size and the passes the run makes over it, and the share of pretraining data in
    a step. A source's datasets are read in turn, one pass over all of them per epoch,
    so every set of the source is read the same number of times."""
    steps = cfg.run.max_steps or cfg.optim.steps
    per_step = StepPlan(cfg, 1).step_tokens(0)
    seq = cfg.data.seq_len
    inst = per_step.get("instructions", 0)
    pre = sum(v for s, v in per_step.items() if s != "instructions")
    total = inst + pre
    lines = [f"per step: {inst:,d} instruction tokens ({inst // seq:,d} sequences) and {pre:,d} tokens of "
             f"pretraining data: pretraining data is {pre / total:.1%} of a step" if total else "per step: nothing"]
    known = [m for m in measured if "sequences" in m]
    pass_sequences = sum(m["sequences"] for m in known)
    run_sequences = inst // seq * steps
    for m in measured:
        if "sequences" not in m:
            lines.append(f"  {m['path']}: not measured ({m['error']})")
            continue
        lines.append(f"  {m['path']}: {m['examples']:,d} examples, {m['tokens']:,d} tokens, "
                     f"{m['sequences']:,d} sequences of {seq} a pass")
    if known and len(known) == len(measured) and pass_sequences:
        epochs = run_sequences / pass_sequences
        lines.append(f"over {steps:,d} steps: {run_sequences:,d} instruction sequences, {epochs:.2f} passes over "
                     f"each set ({pass_sequences:,d} sequences a pass over all of them); each example is seen "
                     f"about {epochs:.1f} times")
    return lines
