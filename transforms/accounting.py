"""Accounting: every record and image reference ends in exactly one place.

Steps emit :class:`Outcome` (and :class:`Event`) objects on a tagged output; this
module turns them into Beam metrics (for the runner's UI) and into exact counts,
reject samples and error lines (computed from the PCollections, so they do not
depend on a runner's metrics). pipeline/stats.py makes ``stats.json`` of the counts.
"""

from __future__ import annotations

import hashlib
import json
from typing import Dict, NamedTuple

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.metrics import Metrics

from contract.reasons import ERROR
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
                           | f"OnlyRejects {i}" >> beam.Filter(lambda o: o.is_reject)
                           | f"KeyByReason {i}" >> beam.Map(lambda o: (o.key, (sample_key(o, seed), o)))
                           | f"SmallestHashes {i}" >> beam.combiners.Top.PerKey(n, key=lambda kv: kv[0],
                                                                                 reverse=True))
            errors.append(pc
                          | f"OnlyErrors {i}" >> beam.Filter(lambda o: o.is_reject and o.status == ERROR)
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
