"""Accounting: every record and image reference ends in exactly one place.

Steps emit :class:`Outcome` (and :class:`Event`) objects on a tagged output; this
module turns them into Beam metrics (for the runner's UI) and into exact counts,
reject samples and error lines (computed from the PCollections, so they do not
depend on a runner's metrics). pipeline/stats.py makes ``stats.json`` of the counts.
"""

from __future__ import annotations

import hashlib
import heapq
import json
from json.encoder import encode_basestring_ascii as _encode_str
from typing import Callable, Dict, Iterable, NamedTuple, Optional, Tuple

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import GlobalWindows

from contract.reasons import DEDUP, ERROR, KEPT, RECORD, TEXT, TEXT_DEDUP, CountKey, Level, Reason, Work, parse_reason
from contract.schema import REJECT_SCHEMA
from transforms.records import Outcome

OUTCOMES = "outcomes"


class Accounted(NamedTuple):
    """What an accounted stage hands on: its main output and its outcomes."""
    output: beam.PCollection
    outcomes: beam.PCollection


# -- the ledger: every stage's outcomes, gathered without a hand-kept list -------------------
def ledger(outcomes: beam.PCollection) -> beam.PCollection:
    """Enter a stage's outcomes (and counted events) in its pipeline's ledger; returns them.
    Every accounted composite calls this once on what it hands on as ``outcomes``;
    :func:`ledger_of` gives them all to :class:`AccountOutcomes`."""
    p = outcomes.pipeline
    entries = p.__dict__.setdefault("_kosmos_ledger", [])     # it lives and dies with its pipeline
    if not any(e is outcomes for e in entries):
        entries.append(outcomes)
    return outcomes


def ledger_of(p: beam.Pipeline) -> Tuple[beam.PCollection, ...]:
    return tuple(p.__dict__.get("_kosmos_ledger", ()))


class AccountedDoFn(beam.DoFn):
    """A DoFn whose rejects and errors go to the ``outcomes`` output, with a Beam
    counter per level, status and reason (namespace ``kosmos``)."""

    def _counter(self, outcome: Outcome):
        cache = self.__dict__.setdefault("_counters", {})
        key = outcome.key
        if key not in cache:
            cache[key] = Metrics.counter("kosmos", metric_name(key))
        return cache[key]

    def outcome(self, outcome: Outcome):
        self._counter(outcome).inc()
        return pvalue.TaggedOutput(OUTCOMES, outcome)


def metric_name(key: CountKey) -> str:
    """A count's name among the runner's metrics (``record.dropped.non_english``)."""
    return ".".join(str(part) for part in key if str(part))


class AccountedParDo(beam.PTransform):
    """``beam.ParDo(dofn)`` of an :class:`AccountedDoFn` with its ``outcomes`` entered in
    the ledger: returns the ParDo's outputs (``main`` and each of ``tags``)."""

    def __init__(self, dofn: AccountedDoFn, *tags: str, main: str = "main"):
        super().__init__()
        self.dofn, self.tags, self.main = dofn, tags, main

    def expand(self, pcoll):
        out = pcoll | beam.ParDo(self.dofn).with_outputs(OUTCOMES, *self.tags, main=self.main)
        ledger(out[OUTCOMES])
        return out


class _FilterDoFn(AccountedDoFn):
    def __init__(self, fn: Callable, level: Level, provenance: Callable, url: Callable):
        self.fn, self.level, self.provenance, self.url = fn, level, provenance, url

    def process(self, element):
        verdict = self.fn(element)
        if verdict.keep:
            yield element
        else:
            yield self.outcome(Outcome.of(self.level, verdict, self.provenance(element), self.url(element)))


def _provenance(element):
    return element.provenance


def _url(element):
    return element.url


class ApplyFilter(beam.PTransform):
    """A pure filter (``fn(element) -> filters.base.Verdict``) as a step of the graph, the
    way DataTrove's BaseFilter wraps a filter: kept elements pass on; a dropped one ends
    as an outcome at ``level`` with the verdict's reason and scores, counted, sampled and
    in the trail. Elements carry ``provenance`` and ``url`` (pages, captures, candidates)
    unless other accessors are given. ``fn`` is pickled to the workers: one that needs
    a large resource loads it on first use. Applied to a tuple of PCollections (the pages
    as each producer made them), it filters each where it is and returns a tuple.
    Returns :class:`Accounted`."""

    def __init__(self, fn: Callable, level: Level = RECORD, *,
                 provenance: Callable = _provenance, url: Callable = _url):
        super().__init__()
        self.fn, self.level, self.provenance_of, self.url_of = fn, level, provenance, url

    def _one(self, pcoll, label: str):
        out = pcoll | label >> beam.ParDo(_FilterDoFn(self.fn, self.level, self.provenance_of, self.url_of)
                                          ).with_outputs(OUTCOMES, main="kept")
        return out["kept"], ledger(out[OUTCOMES])

    def expand(self, pcoll) -> Accounted:
        if isinstance(pcoll, tuple):
            parts = [self._one(part, f"Filter{'' if i == 0 else f' [{i}]'}") for i, part in enumerate(pcoll)]
            return Accounted(tuple(k for k, _ in parts), tuple(o for _, o in parts))
        return Accounted(*self._one(pcoll, "Filter"))


class Accounting(NamedTuple):
    counts: beam.PCollection             # singleton dict {CountKey: n}
    samples: beam.PCollection            # rows of REJECT_SCHEMA, up to n per reason
    errors: beam.PCollection             # JSON lines of errors.jsonl
    trail: Optional[beam.PCollection]    # rows of OUTCOME_SCHEMA, one per end (None: switched off)


def _keep(items, n: int):
    """The ``n`` samples of one key with the smallest seeded hashes, ties broken by the
    whole outcome (so every runner, and every way of cutting the input, picks the same).
    Exactly ``heapq.nsmallest(n, items, key=(hash, repr(outcome)))``: only the items whose
    hash is at most the ``n``-th smallest can be among them, and their outcomes are written
    out (a repr costs ~20 µs) only where two of them share a hash."""
    if len(items) > n:
        bound = heapq.nsmallest(n, (item[0] for item in items))[-1]
        kept = [item for item in items if item[0] <= bound]
    else:
        kept = list(items)
    kept.sort(key=_sample_hash)                     # stable: equal hashes keep their order
    if any(a[0] == b[0] for a, b in zip(kept, kept[1:])):
        kept.sort(key=lambda item: (item[0], repr(item[1])))
    return kept[:n]


def _sample_hash(item):
    return item[0]


class TallyOutcomes(beam.CombineFn):
    """Outcomes and events -> a tally ``(counts, samples)``: each count key's count and
    samples of the rejects (up to ``n`` per count key, the smallest seeded hashes, ties
    broken by the whole outcome) in one accumulator, so
    one pass over a stage's outcomes makes both. :meth:`add_tally` takes another
    tally as an input: the partial tallies of a stage's bundles (and the lost
    clusters of the trail) merge into the run's with the same combiner."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed = n, seed

    def create_accumulator(self):
        return {}, {}

    def add_input(self, acc, o):
        counts, samples = acc
        key = o.key
        counts[key] = counts.get(key, 0) + 1
        if o.is_reject:
            items = samples.get(key)
            if items is None:
                items = samples[key] = []
            items.append((sample_key(o, self.seed), o))
            if len(items) > 2 * self.n:
                samples[key] = _keep(items, self.n)
        return acc

    def add_tally(self, acc, tally):
        """Another tally into ``acc`` (in place; a key's samples cut to ``n`` once
        they pass ``2 n``, as :meth:`add_input` does)."""
        counts, samples = acc
        for key, n in tally[0].items():
            counts[key] = counts.get(key, 0) + n
        for key, items in tally[1].items():
            mine = samples.get(key)
            if mine is None:
                samples[key] = list(items)
            else:
                mine.extend(items)
                if len(mine) > 2 * self.n:
                    samples[key] = _keep(mine, self.n)
        return acc

    def merge_accumulators(self, accs):
        counts, samples = {}, {}
        for acc_counts, acc_samples in accs:
            for key, n in acc_counts.items():
                counts[key] = counts.get(key, 0) + n
            for key, items in acc_samples.items():
                samples.setdefault(key, []).extend(items)
        return counts, {key: _keep(items, self.n) for key, items in samples.items()}

    def extract_output(self, acc):
        counts, samples = acc
        return counts, {key: _keep(items, self.n) for key, items in samples.items()}


class MergeTallies(TallyOutcomes):
    """Partial tallies (of every stage's bundles, and of the trail's lost clusters) -> the run's."""

    def __init__(self, n: int):
        super().__init__(n, 0)

    def add_input(self, acc, tally):
        return self.add_tally(acc, tally)


# the tagged outputs of a stage's accounting step (the main output is its partial tallies)
ERRORS, ROWS, JOIN = "errors", "rows", "join"
_FATE, _DUP = "fate", "dup"     # what a value of the survivor join is


class AccountStage(beam.DoFn):
    """One stage's outcomes in one pass, where they are made: each bundle's tally
    (:class:`TallyOutcomes`: counts and reject samples) on the main output when the
    bundle finishes; an error's line on ``errors``; and, with the trail, each end's
    audit row, already sorted for :class:`SurvivorFates`: a duplicate's row goes to
    ``join`` keyed by its survivor, a candidate's end also sends its fate to ``join``
    keyed by its document, and every row that waits for no survivor goes straight on
    (``rows``), out of any join."""

    def __init__(self, n: int, seed: int, trail: bool = True):
        self.n, self.seed, self.trail = n, seed, trail

    def setup(self):
        self._tally = TallyOutcomes(self.n, self.seed)

    def start_bundle(self):
        self._acc = self._tally.create_accumulator()

    def process(self, o):
        self._tally.add_input(self._acc, o)
        if o.is_reject and o.status == ERROR:
            yield pvalue.TaggedOutput(ERRORS, error_line(o))
        if not self.trail:
            return
        row = audit_row(o)
        if row is not None:
            yield from route(row)

    def finish_bundle(self):
        if self._acc[0]:
            yield GlobalWindows.windowed_value(self._acc)
        self._acc = None


class AccountOutcomes(beam.PTransform):
    """The outcome PCollections of every stage (the pipeline's ledger) -> :class:`Accounting`.
    Each stage's outcomes are reduced where they are made, in one step per stage
    (:class:`AccountStage`: counts and samples tallied per bundle, errors turned into
    lines, ends into compact audit rows) and only those results are flattened: a
    Flatten of many stages' outcomes is one buffer that Beam's local runner holds
    whole, several outcomes for every record of the input. The trail's rows that wait
    for no survivor go from there straight to the trail's output."""

    def __init__(self, n: int, seed: int, trail: bool = True):
        super().__init__()
        self.n = n
        self.seed = seed
        self.trail = trail

    def expand(self, parts):
        seed, n = self.seed, self.n
        tallies, errors, rows, join = [], [], [], []

        def leaves(x):          # parts may nest: a stage hands on its outcomes as a tuple
            if isinstance(x, (tuple, list)):
                for y in x:
                    yield from leaves(y)
            else:
                yield x
        tags = (ERRORS, ROWS, JOIN) if self.trail else (ERRORS,)
        for i, pc in enumerate(leaves(parts)):
            out = pc | f"Account {i}" >> beam.ParDo(AccountStage(n, seed, self.trail)).with_outputs(*tags, main="tally")
            tallies.append(out.tally)
            errors.append(out[ERRORS])
            if self.trail:
                rows.append(out[ROWS])
                join.append(out[JOIN])
        if self.trail:
            fated = tuple(join) | "SurvivorFates" >> SurvivorFates()
            rows_out = (tuple(rows) + (fated.rows,)) | "AllRows" >> beam.Flatten()
            tallies.append(fated.lost)
        else:
            rows_out = None
        tally = (tuple(tallies) | "AllStageTallies" >> beam.Flatten()
                 | "AllTallies" >> beam.CombineGlobally(MergeTallies(n)))
        total = tally | "Counts" >> beam.Map(lambda t: t[0])
        samples = tally | "ToRows" >> beam.FlatMap(lambda t: [sample_row(o, k) for items in t[1].values()
                                                              for k, o in items])
        lines = tuple(errors) | "AllErrorLines" >> beam.Flatten()
        return Accounting(total, samples, lines, rows_out)


DEDUP_REASONS = frozenset({Reason.DUPLICATE_URL, Reason.DUPLICATE_EXACT, Reason.NEAR_DUPLICATE,
                           Reason.DUPLICATE_IMAGE_SET})


def audit_row(o) -> Optional[Dict]:
    """The row of ``outcomes/`` for an end (kept, dropped, error, image record);
    None for entry events and counted work."""
    if not isinstance(o, Outcome) or not o.status.terminal:
        return None
    reason = o.reason
    survivor = survivor_url = ""
    if reason in DEDUP_REASONS and o.scores:     # only a duplicate's scores name a survivor
        scores = json.loads(o.scores)
        survivor = scores.get("survivor_doc_id", "")
        survivor_url = scores.get("survivor_url", "") if survivor else ""
    # the trail is written with the codes as strings: the one place an outcome becomes text
    row = {"level": o.level.value, "status": o.status.value, "reason": str(reason),
           "stage": reason.stage.label if o.level == RECORD and o.status.rejects and reason.stage else "",
           "url": o.url, "file": o.file, "offset": o.offset, "inner_offset": o.inner_offset, "doc_id": o.doc_id,
           "scores": o.scores, "message": o.message[:500], "survivor_doc_id": survivor,
           "survivor_url": survivor_url, "survivor_status": "", "survivor_reason": ""}
    # Every field: two rows with one id are the same row, so shards sort alike everywhere.
    row["outcome_id"] = hashlib.sha256(_row_json(row).encode()).hexdigest()[:32]
    return row


_ROW_KEYS = ("doc_id", "file", "inner_offset", "level", "message", "offset", "reason", "scores", "stage", "status",
             "survivor_doc_id", "survivor_reason", "survivor_status", "survivor_url", "url")   # sorted
_ROW_HEADS = tuple(f'"{k}": ' for k in _ROW_KEYS)


def _row_json(row: Dict) -> str:
    """``json.dumps(row, sort_keys=True, default=str)`` of an audit row (what its id hashes),
    written directly where every value is a plain str or int (always, for an outcome's
    row): the same text in about 60% of the time. Anything else goes to ``json.dumps``."""
    if len(row) != len(_ROW_KEYS):
        return json.dumps(row, sort_keys=True, default=str)
    parts = []
    for key, head in zip(_ROW_KEYS, _ROW_HEADS):
        value = row.get(key, _ROW_KEYS)
        kind = type(value)
        if kind is str:
            parts.append(head + _encode_str(value))
        elif kind is int:
            parts.append(head + int.__repr__(value))
        else:
            return json.dumps(row, sort_keys=True, default=str)
    return "{" + ", ".join(parts) + "}"


def audit_rows(o) -> Iterable[Dict]:
    """:func:`audit_row` as an iterable (none or one row)."""
    row = audit_row(o)
    if row is not None:
        yield row


class Fated(NamedTuple):
    rows: beam.PCollection       # the duplicates' audit rows, each with its survivor's fate
    lost: beam.PCollection       # a tally (MergeTallies) counting a duplicate cluster whose survivor was dropped later


class SurvivorFates(beam.PTransform):
    """A duplicate's row meets the end of the copy kept instead (a shuffle on
    ``(level, doc id)`` of duplicates' rows and candidates' fates, as :func:`route`
    keys them; no text). The job does not elect a second survivor when the first is
    dropped later (its images unusable, or the single-image draw): the copies share its
    text, and electing again would mean fetching the images of every duplicate, which
    deduplicating before any fetch exists to avoid. Such clusters are counted under
    ``dedup/survivor_dropped/<reason>`` (``text_dedup/...`` for the text corpus) so an
    auditor sees how many there are. Takes the join's values (one PCollection, or a
    tuple: every stage's); the rows that wait for no survivor never come here."""

    def expand(self, join) -> Fated:
        if isinstance(join, tuple):
            join = join | "AllJoinValues" >> beam.Flatten()
        joined = (join
                  | "JoinSurvivors" >> beam.GroupByKey()
                  | "WithFate" >> beam.FlatMap(_with_fate).with_outputs("lost", main="rows"))
        return Fated(joined.rows, joined.lost)


def route(row: Dict):
    """Where an audit row goes (tagged outputs): a candidate's end (a document id at
    the record or text level) also sends its fate to ``join`` keyed by its document;
    a duplicate's row goes to ``join`` keyed by its survivor, to learn the survivor's
    fate there; every other row goes straight on to ``rows``."""
    level = row["level"]
    if row["doc_id"] and level in (RECORD, TEXT):
        yield pvalue.TaggedOutput(JOIN, ((level, row["doc_id"]), (_FATE, (row["status"], row["reason"]))))
    if row["survivor_doc_id"]:
        yield pvalue.TaggedOutput(JOIN, ((level, row["survivor_doc_id"]), (_DUP, row)))
    else:
        yield pvalue.TaggedOutput(ROWS, row)


def _with_fate(element):
    (level, _), values = element
    dups, fates = [], []
    for what, value in values:
        (dups if what == _DUP else fates).append(value)
    if not dups:
        return
    fates.sort()
    status, reason = fates[0] if fates else ("", "no_outcome")
    if status != KEPT and reason not in DEDUP_REASONS:
        lost = CountKey(DEDUP if level == RECORD else TEXT_DEDUP, Work.SURVIVOR_DROPPED, parse_reason(reason) or reason)
        yield pvalue.TaggedOutput("lost", ({lost: 1}, {}))
    for row in dups:
        # the id stays the one audit_row gave: it names the row, not what was learnt later
        yield {**row, "survivor_status": status, "survivor_reason": reason}


def sample_row(o: Outcome, key: str) -> Dict:
    """A reject sample as the row ``rejects/samples.parquet`` writes (codes as strings)."""
    return {name: key if name == "sample_key" else _plain(getattr(o, name)) for name in REJECT_SCHEMA.names}


def _plain(value):
    return str(value) if isinstance(value, (str, tuple)) else value


def error_line(o: Outcome) -> str:
    return json.dumps({"level": o.level.value, "kind": str(o.reason), "file": o.file, "offset": o.offset,
                       "inner_offset": o.inner_offset, "url": o.url, "message": o.message},
                      sort_keys=True, ensure_ascii=False)


def sample_key(o: Outcome, seed: int) -> str:
    return hashlib.sha256(f"{seed}|{o.level}|{o.reason}|{o.url}|{o.file}|{o.offset}|{o.inner_offset}"
                          .encode("utf-8")).hexdigest()
