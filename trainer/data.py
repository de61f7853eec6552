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
  global number of sequences per optimizer step, the same for any number of ranks;
  every rank runs the same micro-batches (each from one source), the ranks taking
  turns for the sequences that do not divide evenly. Micro-batch ``k`` of the run
  is made by worker ``k mod num_workers``, so the data loader's in-order round
  robin hands them out in plan order.

The position of every reader (epoch, unit, row, chunk of the first chunk of its
next sequence) travels with each micro-batch; the trainer keeps the positions of
what it consumed and puts them in the checkpoint, so ``--resume`` continues with
exactly the next micro-batch.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from contract.schema import DATASETS, ITEM_IMAGE, ITEM_TEXT
from contract.tokens import IGNORE_INDEX, SpecialIds
from trainer.config import TrainConfig
from trainer.model.vision import CLIP_MEAN, CLIP_STD
from trainer.shards import BadShardError, expand_dataset, url_to_fs

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- units
@dataclass(frozen=True)
class Unit:
    path: str
    row_group: int      # -1 for a whole JSONL file
    rows: int
    kind: str           # "parquet" | "jsonl"


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


def file_units(path: str, source: Optional[str] = None) -> List[Unit]:
    if path.endswith((".jsonl", ".json", ".jsonl.gz")):
        return [Unit(path, -1, -1, "jsonl")]
    import pyarrow.parquet as pq
    fs, local = url_to_fs(path)
    try:
        with fs.open(local, "rb") as fh:
            pf = pq.ParquetFile(fh)
            md, schema = pf.metadata, pf.schema_arrow
    except Exception as exc:  # pyarrow raises ArrowInvalid / OSError for damaged files
        raise BadShardError(f"{path}: cannot read the Parquet footer ({type(exc).__name__}: {exc})") from exc
    problem = _schema_problem(schema, source)
    if problem:
        raise BadShardError(f"{path}: not a {source} shard: {problem}")
    return [Unit(path, i, md.row_group(i).num_rows, "parquet") for i in range(md.num_row_groups)]


def list_units(paths: List[str], on_bad: str = "skip", verify: bool = False,
               bad: Optional[List[Dict]] = None, source: Optional[str] = None,
               allow_incomplete: bool = False) -> List[Unit]:
    units: List[Unit] = []
    for path in paths:
        for file in expand_dataset(path, verify, allow_incomplete):
            try:
                units.extend(file_units(file, source))
            except BadShardError as exc:
                if on_bad == "stop":
                    raise
                log.error("skipping bad shard: %s", exc)
                if bad is not None:
                    bad.append({"path": file, "error": str(exc)})
    return units


def read_unit(unit: Unit, columns: Optional[List[str]] = None) -> List[Dict[str, Any]]:
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


class Chunker:
    """Rows of one source kind -> chunks. Deterministic: the same row gives the
    same chunks, which is what lets a reader resume in the middle of a row."""

    COLUMNS = {**{name: list(d.train_columns) for name, d in DATASETS.items()}, "instructions": None}

    def __init__(self, kind: str, tokenizer, num_image_tokens: int, seq_len: int, image_size: int):
        self.kind, self.tok, self.seq_len, self.image_size = kind, tokenizer, seq_len, image_size
        self.ids: SpecialIds = tokenizer.ids
        self.block = self.ids.image_block(num_image_tokens)
        self.block_labels = [IGNORE_INDEX] * (len(self.block) - 1) + [self.ids.image_end]

    def _text(self, text: str) -> List[Chunk]:
        out = []
        for para in text.split("\n"):
            sentences = split_sentences(para)
            if not sentences:
                continue
            for ids in self.tok.encode_batch(sentences):
                if ids:
                    out.append(Chunk(ids, list(ids), []))
        return out

    def _image(self, data: bytes, where: str) -> Optional[Chunk]:
        try:
            pixels = preprocess_image(data, self.image_size)
        except Exception as exc:
            log.error("undecodable image in %s: %s", where, exc)
            return None
        return Chunk(list(self.block), list(self.block_labels), [pixels])

    def _document(self, chunks: List[Chunk]) -> List[Chunk]:
        """<s> first ... last </s>, sentences longer than a sequence cut to fit."""
        if not chunks:
            return []
        chunks[0] = Chunk([self.ids.bos] + chunks[0].ids, [IGNORE_INDEX] + chunks[0].labels, chunks[0].images)
        last = chunks[-1]
        chunks[-1] = Chunk(last.ids + [self.ids.eos], last.labels + [self.ids.eos], last.images)
        out = []
        for ch in chunks:
            if len(ch) <= self.seq_len:
                out.append(ch)
            elif ch.images:
                continue          # an image block longer than a whole sequence cannot be placed
            else:
                for i in range(0, len(ch), self.seq_len):
                    out.append(Chunk(ch.ids[i:i + self.seq_len], ch.labels[i:i + self.seq_len], []))
        return out

    def __call__(self, row: Dict[str, Any], where: str) -> List[Chunk]:
        if self.kind == "interleaved":
            chunks: List[Chunk] = []
            for item in row["items"]:
                if item["type"] == ITEM_TEXT and item["text"]:
                    chunks.extend(self._text(item["text"]))
                elif item["type"] == ITEM_IMAGE and item["image"] is not None:
                    ch = self._image(row["images"][item["image"]]["data"], where)
                    if ch is not None:
                        chunks.append(ch)
            out = self._document(chunks)
        elif self.kind == "text":
            out = self._document(self._text(row["text"] or ""))
        elif self.kind == "pairs":
            ch = self._image(row["image"]["data"], where)
            caption = self.tok.encode(row["caption"] or "")
            if ch is None or not caption:
                return []
            ids = [self.ids.bos] + ch.ids + caption + [self.ids.eos]
            labels = [IGNORE_INDEX] + ch.labels + caption + [self.ids.eos]
            if len(ids) > self.seq_len:
                ids, labels = ids[:self.seq_len], labels[:self.seq_len]
            out = [Chunk(ids, labels, ch.images)]
        elif self.kind == "instructions":
            prompt = row["instruction"].strip()
            if row.get("input"):
                prompt += "\n\n" + row["input"].strip()
            p = [self.ids.bos] + self.tok.encode(prompt + "\n\n")
            o = self.tok.encode(row["output"].strip()) + [self.ids.eos]
            ids, labels = p + o, [IGNORE_INDEX] * len(p) + o
            if len(ids) > self.seq_len:
                ids, labels = ids[:self.seq_len], labels[:self.seq_len]
            out = [Chunk(ids, labels, [])]
        else:
            raise ValueError(f"unknown source kind {self.kind!r}")
        return out


# --------------------------------------------------------------------------- readers
def seeded_order(n: int, *key) -> List[int]:
    seed = int.from_bytes(hashlib.sha256(repr(key).encode()).digest()[:8], "little")
    return list(np.random.default_rng(seed).permutation(n))


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
        self.bad: List[Dict] = []
        self.bad_units: set = set()
        self.rows_read: List[str] = []      # "path#row_group:row" of rows begun since the last batch

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
                if unit in self.bad_units:
                    continue
                try:
                    rows = self._rows(unit)
                except BadShardError as exc:
                    if self.on_bad == "stop":
                        raise
                    log.error("skipping bad shard: %s", exc)
                    self.bad_units.add(unit)
                    self.bad.append({"path": unit.path, "row_group": unit.row_group, "error": str(exc)})
                    continue
                for r, row in rows:
                    if first and k == start_unit and r < start_row:
                        continue
                    chs = self.chunker(row, f"{unit.path} row group {unit.row_group} row {r}")
                    c0 = start_chunk if (first and k == start_unit and r == start_row) else 0
                    if c0 == 0:
                        self.rows_read.append(f"{unit.path}#{unit.row_group}:{r}")
                    for c in range(c0, len(chs)):
                        produced = True
                        yield (epoch, k, r, c), chs[c]
            if not produced and not first:
                raise RuntimeError(
                    f"source {self.name!r}: reader {self.reader} of {self.readers} has no rows "
                    f"({len(self.units)} units); use fewer ranks x data-loader workers or more data")
            if not produced and first and (start_unit, start_row, start_chunk) == (0, 0, 0):
                raise RuntimeError(
                    f"source {self.name!r}: reader {self.reader} of {self.readers} has no rows "
                    f"({len(self.units)} units, {len(self.bad_units)} unreadable)")
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
    """How one optimizer step's sequences are spread over the ranks.

    A source's token budget is a global number of sequences per step,
    ``N = round(tokens / seq_len)`` (at least 1), exactly as configured whatever the
    number of ranks ``W``: every rank takes ``N // W`` of them and ``N % W`` ranks one
    more, the ranks taking turns step after step (at step ``t`` the extra ones are
    ranks ``t * (N % W) ... `` modulo ``W``), so over any ``W`` steps each rank reads
    the same amount. Every rank runs the same micro-batches (``slots``: the source and
    its most sequences), so FSDP's collectives line up; a slot a rank has no sequence
    for at a step is an empty micro-batch (one padding token, no target) that runs the
    same modules and adds nothing to the loss."""

    def __init__(self, cfg: TrainConfig, world_size: int):
        d = cfg.data
        self.world = world_size
        self.seq_len = d.seq_len
        self.sequences: Dict[str, int] = {}
        self.slots: List[Tuple[str, int]] = []
        for source in cfg.active_sources():
            n = max(1, round(getattr(d, f"{source}_tokens") / d.seq_len))
            self.sequences[source] = n
            most = -(-n // world_size)
            full, rest = divmod(most, d.micro_batch_size)
            self.slots += [(source, d.micro_batch_size)] * full + ([(source, rest)] if rest else [])
        if not self.slots:
            raise ValueError("no data source: give at least one of data.text, data.pairs, data.interleaved, "
                             "data.instructions with a token budget > 0")

    def rank_sequences(self, source: str, step: int, rank: int) -> int:
        """Sequences of ``source`` rank ``rank`` reads at optimizer step ``step``."""
        base, extra = divmod(self.sequences[source], self.world)
        return base + (1 if (rank - step * extra) % self.world < extra else 0)

    def micro_batch(self, step: int, rank: int, j: int) -> Tuple[str, int]:
        """The source and the number of sequences of micro-batch ``j`` of a step on a rank."""
        source, cap = self.slots[j]
        before = sum(c for s, c in self.slots[:j] if s == source)
        return source, max(0, min(cap, self.rank_sequences(source, step, rank) - before))

    def step_tokens(self, step: int) -> Dict[str, int]:
        """Tokens per source of one step, summed over the ranks (what the config asks)."""
        return {s: sum(self.rank_sequences(s, step, r) for r in range(self.world)) * self.seq_len
                for s in self.sequences}

    def describe(self) -> str:
        per = {s: n * self.seq_len for s, n in self.sequences.items()}
        total = sum(per.values())
        parts = ", ".join(f"{s} {t:,d} ({t / total:.0%})" for s, t in per.items())
        return (f"{len(self.slots)} micro-batches per step per rank; {total:,d} tokens per step over "
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


def collate(seqs: List[Dict[str, Any]], pad_id: int = 1) -> Dict[str, Any]:
    if not seqs:       # an empty micro-batch of the plan: one padding token, no target
        return {"input_ids": torch.tensor([[pad_id]], dtype=torch.long),
                "labels": torch.tensor([[IGNORE_INDEX]], dtype=torch.long), "images": None}
    images = [im for s in seqs for im in s["images"]]
    return {"input_ids": torch.tensor([s["input_ids"] for s in seqs], dtype=torch.long),
            "labels": torch.tensor([s["labels"] for s in seqs], dtype=torch.long),
            "images": torch.stack(images) if images else None}


class MixtureDataset(IterableDataset):
    """Micro-batches in schedule order for one rank (see the module docstring)."""

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
            source, size = self.plan.micro_batch(step, self.rank, j)
            seqs = [next(iters[source]) for _ in range(size)]
            batch = collate(seqs, self.tok.ids.pad)
            bad = [b for st in streams.values() for b in st.bad]
            batch.update(source=source, index=k, role=role,
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
