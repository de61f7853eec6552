"""Accounting: every record and image reference ends in exactly one place.

Steps emit :class:`Outcome` events on a tagged output; this module turns them into
Beam metrics (for the runner's UI) and into exact counts for ``stats.json``
(computed from the PCollection, so they do not depend on a runner's metrics).
"""

from __future__ import annotations

import hashlib
import json
from typing import Dict

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.metrics import Metrics

from pipeline.schema import REJECT_SCHEMA
from transforms.records import (DROPPED, ENTERED, ERROR, IMAGE, IMAGE_SOURCE, KEPT, PAIR, READ,
                                RECORD, TEXT, Outcome)

# level -> (its entry event, its block in stats.json)
FUNNELS = {RECORD: (READ, "records"), IMAGE: (ENTERED, "images"), TEXT: (ENTERED, "text_documents"),
           PAIR: (ENTERED, "pairs")}

OUTCOMES = "outcomes"


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


def summarize(counts: Dict[str, int]) -> Dict:
    """Nested statistics with the balance check, from ``{"level/status/reason": n}``."""
    levels = {}
    for level, (entry, name) in FUNNELS.items():
        if level in (TEXT, PAIR) and not any(k.startswith(level + "/") for k in counts):
            continue          # an output that was switched off
        block = {"in": 0, KEPT: 0, IMAGE_SOURCE: 0, DROPPED: {}, ERROR: {}}
        for key, n in counts.items():
            parts = key.split("/", 2)
            if parts[0] != level:
                continue
            status = parts[1]
            reason = parts[2] if len(parts) > 2 else ""
            if status == entry:
                block["in"] += n
            elif status in (KEPT, IMAGE_SOURCE):
                block[status] += n
            elif status in (DROPPED, ERROR):
                block[status][reason] = block[status].get(reason, 0) + n
        if level != RECORD:
            block.pop(IMAGE_SOURCE)
        out_total = block[KEPT] + block.get(IMAGE_SOURCE, 0) + sum(block[DROPPED].values()) + sum(
            block[ERROR].values())
        block[DROPPED] = dict(sorted(block[DROPPED].items()))
        block[ERROR] = dict(sorted(block[ERROR].items()))
        block["out"] = out_total
        block["balanced"] = out_total == block["in"]
        levels[name] = block
    return levels


class AccountOutcomes(beam.PTransform):
    """The outcome PCollections of every stage -> (counts dict, reject sample rows,
    error lines). Each stage's outcomes are reduced where they are made (counts summed,
    samples cut to ``n`` per reason, errors turned into lines) and only those small
    results are flattened: a Flatten of many stages' outcomes is one buffer that Beam's
    local runner holds whole, several outcomes for every record of the input."""

    def __init__(self, n: int, seed: int):
        super().__init__()
        self.n = n
        self.seed = seed

    def expand(self, parts):
        seed, n = self.seed, self.n
        counts, samples, errors = [], [], []

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
                           | f"OnlyRejects {i}" >> beam.Filter(lambda o: o.status in (DROPPED, ERROR))
                           | f"KeyByReason {i}" >> beam.Map(lambda o: (o.key, (sample_key(o, seed), o)))
                           | f"SmallestHashes {i}" >> beam.combiners.Top.PerKey(n, key=lambda kv: kv[0],
                                                                                 reverse=True))
            errors.append(pc
                          | f"OnlyErrors {i}" >> beam.Filter(lambda o: o.status == ERROR)
                          | f"ErrorLines {i}" >> beam.Map(error_line))
        total = (tuple(counts) | "AllStageCounts" >> beam.Flatten()
                 | "SumPerOutcome" >> beam.CombinePerKey(sum)
                 | "AllCounts" >> beam.combiners.ToDict())
        rows = (tuple(samples) | "AllStageSamples" >> beam.Flatten()
                | "Candidates" >> beam.FlatMap(lambda kv: [(kv[0], item) for item in kv[1]])
                | "SmallestHashes" >> beam.combiners.Top.PerKey(n, key=lambda kv: kv[0], reverse=True)
                | "ToRows" >> beam.FlatMap(lambda kv: [sample_row(o, k) for k, o in kv[1]]))
        lines = tuple(errors) | "AllErrorLines" >> beam.Flatten()
        return total, rows, lines


def sample_row(o: Outcome, key: str) -> Dict:
    return {name: key if name == "sample_key" else getattr(o, name) for name in REJECT_SCHEMA.names}


def error_line(o: Outcome) -> str:
    return json.dumps({"level": o.level, "kind": o.reason, "file": o.file, "offset": o.offset,
                       "inner_offset": o.inner_offset, "url": o.url, "message": o.message},
                      sort_keys=True, ensure_ascii=False)


def sample_key(o: Outcome, seed: int) -> str:
    return hashlib.sha256(f"{seed}|{o.level}|{o.reason}|{o.url}|{o.file}|{o.offset}|{o.inner_offset}"
                          .encode("utf-8")).hexdigest()
