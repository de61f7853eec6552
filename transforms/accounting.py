"""Accounting: every record and image reference ends in exactly one place.

Steps emit :class:`Outcome` (and :class:`Event`) objects on a tagged output; this
module turns them into Beam metrics (for the runner's UI) and into exact counts,
reject samples and error lines (computed from the PCollections, so they do not
depend on a runner's metrics). pipeline/stats.py makes ``stats.json`` of the counts.
"""

from __future__ import annotations

import hashlib
import json
from typing import Dict, Iterable, NamedTuple, Optional

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.metrics import Metrics

from contract.reasons import (DEDUP, DROPPED, ERROR, IMAGE_SOURCE, KEPT, RECORD, TEXT, TEXT_DEDUP, count_key,
                              record_stage)
from contract.schema import REJECT_SCHEMA
from transforms.records import Outcome

OUTCOMES = "outcomes"


class Accounted(NamedTuple):
    """What an accounted stage hands on: its main output and its outcomes."""
    output: beam.PCollection
    outcomes: beam.PCollection


class AccountedDoFn(beam.DoFn):
    """A DoFn whose rejects and errors go to the ``outcomes`` output, with a Beam
    counter per level, status and reason (namespace ``kosmos``)."""

    def _counter(self, outcome: Outcome):
        cache = self.__dict__.setdefault("_counters", {})
        name = outcome.key.replace("/", ".")
        if name not in cache:
            cache[name] = Metrics.counter("kosmos", name)
        return cache[name]

    def outcome(self, outcome: Outcome):
        self._counter(outcome).inc()
        return pvalue.TaggedOutput(OUTCOMES, outcome)


class Accounting(NamedTuple):
    counts: beam.PCollection             # singleton dict {"level/status[/reason]": n}
    samples: beam.PCollection            # rows of REJECT_SCHEMA, up to n per reason
    errors: beam.PCollection             # JSON lines of errors.jsonl
    trail: Optional[beam.PCollection]    # rows of OUTCOME_SCHEMA, one per end (None: switched off)


class AccountOutcomes(beam.PTransform):
    """The outcome PCollections of every stage -> :class:`Accounting`. Each stage's
    outcomes are reduced where they are made (counts summed, samples cut to ``n`` per
    reason, errors turned into lines, ends turned into compact audit rows) and only
    those results are flattened: a Flatten of many stages' outcomes is one buffer that
    Beam's local runner holds whole, several outcomes for every record of the input."""

    def __init__(self, n: int, seed: int, trail: bool = True):
        super().__init__()
        self.n = n
        self.seed = seed
        self.trail = trail

    def expand(self, parts):
        seed, n = self.seed, self.n
        counts, samples, errors, trail = [], [], [], []

        def leaves(x):          # parts may nest: a stage hands on its outcomes as a tuple
            if isinstance(x, (tuple, list)):
                for y in x:
                    yield from leaves(y)
            else:
                yield x
        for i, pc in enumerate(leaves(parts)):
            counts.append(pc
                          | f"KeyByOutcome {i}" >> beam.Map(lambda o: (o.key, 1))
                          | f"SumPerOutcome {i}" >> beam.CombinePerKey(sum))
            samples.append(pc
                           | f"OnlyRejects {i}" >> beam.Filter(lambda o: o.is_reject)
                           | f"KeyByReason {i}" >> beam.Map(lambda o: (o.key, (sample_key(o, seed), o)))
                           | f"SmallestHashes {i}" >> beam.combiners.Top.PerKey(n, key=lambda kv: kv[0],
                                                                                 reverse=True))
            errors.append(pc
                          | f"OnlyErrors {i}" >> beam.Filter(lambda o: o.is_reject and o.status == ERROR)
                          | f"ErrorLines {i}" >> beam.Map(error_line))
            if self.trail:
                trail.append(pc | f"AuditRows {i}" >> beam.FlatMap(audit_rows))
        rows_out = None
        if self.trail:
            fated = (tuple(trail) | "AllAuditRows" >> beam.Flatten()) | "SurvivorFates" >> SurvivorFates()
            rows_out = fated.rows
            counts.append(fated.lost
                          | "KeyLostClusters" >> beam.Map(lambda key: (key, 1))
                          | "SumLostClusters" >> beam.CombinePerKey(sum))
        total = (tuple(counts) | "AllStageCounts" >> beam.Flatten()
                 | "SumPerOutcome" >> beam.CombinePerKey(sum)
                 | "AllCounts" >> beam.combiners.ToDict())
        rows = (tuple(samples) | "AllStageSamples" >> beam.Flatten()
                | "Candidates" >> beam.FlatMap(lambda kv: [(kv[0], item) for item in kv[1]])
                | "SmallestHashes" >> beam.combiners.Top.PerKey(n, key=lambda kv: kv[0], reverse=True)
                | "ToRows" >> beam.FlatMap(lambda kv: [sample_row(o, k) for k, o in kv[1]]))
        lines = tuple(errors) | "AllErrorLines" >> beam.Flatten()
        return Accounting(total, rows, lines, rows_out)


TERMINAL = frozenset({KEPT, DROPPED, ERROR, IMAGE_SOURCE})
DEDUP_REASONS = frozenset({"duplicate_url", "duplicate_exact", "near_duplicate"})


def audit_rows(o) -> Iterable[Dict]:
    """The row of ``outcomes/`` for an end (kept, dropped, error, image record);
    nothing for entry events and counted work."""
    if not isinstance(o, Outcome) or o.status not in TERMINAL:
        return
    scores = json.loads(o.scores) if o.scores else {}
    survivor = scores.get("survivor_doc_id", "") if o.reason in DEDUP_REASONS else ""
    row = {"level": o.level, "status": o.status, "reason": o.reason,
           "stage": (record_stage(o.reason) or "") if o.level == RECORD and o.status in (DROPPED, ERROR) else "",
           "url": o.url, "file": o.file, "offset": o.offset, "inner_offset": o.inner_offset, "doc_id": o.doc_id,
           "scores": o.scores, "message": o.message[:500], "survivor_doc_id": survivor,
           "survivor_url": scores.get("survivor_url", "") if survivor else "",
           "survivor_status": "", "survivor_reason": ""}
    # Every field: two rows with one id are the same row, so shards sort alike everywhere.
    row["outcome_id"] = hashlib.sha256(json.dumps(row, sort_keys=True, default=str).encode()).hexdigest()[:32]
    yield row


class Fated(NamedTuple):
    rows: beam.PCollection       # every audit row, duplicates with their survivor's fate
    lost: beam.PCollection       # a count key per duplicate cluster whose survivor was dropped later


class SurvivorFates(beam.PTransform):
    """A duplicate's row meets the end of the copy kept instead (a shuffle of audit
    rows on ``(level, doc id)``; no text). The job does not elect a second survivor
    when the first is dropped later (its images unusable, or the single-image draw):
    the copies share its text, and electing again would mean fetching the images of
    every duplicate, which deduplicating before any fetch exists to avoid. Such
    clusters are counted under ``dedup/survivor_dropped/<reason>`` (``text_dedup/...``
    for the text corpus) so an auditor sees how many there are."""

    def expand(self, rows):
        split = rows | "DuplicatesApart" >> beam.Partition(lambda r, _: 1 if r["survivor_doc_id"] else 0, 2)
        others, duplicates = split[0], split[1]
        fates = (rows
                 | "CandidateEnds" >> beam.Filter(lambda r: bool(r["doc_id"]) and r["level"] in (RECORD, TEXT))
                 | "KeyByDocument" >> beam.Map(lambda r: ((r["level"], r["doc_id"]), (r["status"], r["reason"]))))
        waiting = duplicates | "KeyBySurvivor" >> beam.Map(lambda r: ((r["level"], r["survivor_doc_id"]), r))
        joined = ({"fate": fates, "dup": waiting}
                  | "JoinSurvivors" >> beam.CoGroupByKey()
                  | "WithFate" >> beam.FlatMap(_with_fate).with_outputs("lost", main="rows"))
        return Fated((others, joined.rows) | "AllRows" >> beam.Flatten(), joined.lost)


def _with_fate(element):
    (level, _), groups = element
    dups = list(groups["dup"])
    if not dups:
        return
    fates = sorted(groups["fate"])
    status, reason = fates[0] if fates else ("", "no_outcome")
    if status != KEPT and reason not in DEDUP_REASONS:
        yield pvalue.TaggedOutput("lost", count_key(DEDUP if level == RECORD else TEXT_DEDUP, "survivor_dropped",
                                                    reason))
    for row in dups:
        # the id stays the one audit_rows gave: it names the row, not what was learnt later
        yield {**row, "survivor_status": status, "survivor_reason": reason}


def sample_row(o: Outcome, key: str) -> Dict:
    return {name: key if name == "sample_key" else getattr(o, name) for name in REJECT_SCHEMA.names}


def error_line(o: Outcome) -> str:
    return json.dumps({"level": o.level, "kind": o.reason, "file": o.file, "offset": o.offset,
                       "inner_offset": o.inner_offset, "url": o.url, "message": o.message},
                      sort_keys=True, ensure_ascii=False)


def sample_key(o: Outcome, seed: int) -> str:
    return hashlib.sha256(f"{seed}|{o.level}|{o.reason}|{o.url}|{o.file}|{o.offset}|{o.inner_offset}"
                          .encode("utf-8")).hexdigest()
