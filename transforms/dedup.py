"""Deduplication through Beam's shuffle, so no worker needs to see the corpus:

* ``DedupByUrl``: GroupByKey on the normalised URL; the newest capture survives.
* ``DedupExactText``: GroupByKey on a hash of the normalised text.
* ``DedupNearDuplicates``: MinHash signatures, a GroupByKey on each LSH band key,
  candidate edges, connected components by alternating large-star / small-star
  rounds (each a GroupByKey), one survivor per component.

Each removal is an outcome with its reason (``duplicate_url``, ``duplicate_exact``,
``near_duplicate``) and an audit line naming the survivor.

The stages decide on a :class:`DedupKey` per candidate (where it lies, its URL,
capture date, text hash, LSH band keys and a snippet; no text), made where the
candidate is made. The candidates themselves cross one shuffle, to meet the ids
that survived all three stages.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import NamedTuple, Tuple

import apache_beam as beam
from apache_beam import pvalue

from contract.reasons import DEDUP, DROPPED, RECORD, TEXT, TEXT_DEDUP, Level, Reason, Work
from filters.config import DedupConfig
from filters.dedup import MinHasher, band_keys, capture_time, exact_text_hash, text_hash_and_shingles
from filters.urls import url_key
from transforms.accounting import OUTCOMES, AccountedDoFn, ledger
from transforms.records import Candidate, Event, Outcome, Provenance, text_snippet

AUDIT = "audit"


@dataclass(frozen=True)
class DedupKey:
    """What deduplication decides on for one candidate: everything but its text."""
    doc_id: str
    url: str
    date: str
    provenance: Provenance
    text_hash: str
    bands: Tuple[str, ...]        # LSH band keys of its MinHash signature (none: no shingle, or near off)
    snippet: str                  # for the outcome of a removal


class MakeDedupKeys(beam.DoFn):
    def __init__(self, cfg: DedupConfig):
        self.cfg = cfg
        self.hasher = None

    def setup(self):
        if self.cfg.near:
            self.hasher = MinHasher(self.cfg.bands * self.cfg.rows, self.cfg.seed)

    def process(self, c: Candidate):
        texts = [i["text"] for i in c.items if i["type"] == "text"]
        bands: Tuple[str, ...] = ()
        if self.hasher is not None:
            # The exact hash and the shingles read the same normalised words: one pass.
            text_hash, hashes = text_hash_and_shingles("\n".join(texts), self.cfg.ngram)
            if len(hashes):
                bands = tuple(band_keys(self.hasher.of_hashes(hashes), self.cfg.bands, self.cfg.rows))
        else:
            text_hash = exact_text_hash(texts)
        yield DedupKey(c.doc_id, c.url, c.date, c.provenance, text_hash, bands, text_snippet(c.items))


def capture_rank(c: DedupKey):
    """Sort key: newest capture first, then a fixed position (file name, offset), so
    ties resolve the same way on every runner."""
    inverted = "".join(chr(ord("9") - ord(ch) + ord("0")) if ch.isdigit() else ch for ch in capture_time(c.date))
    return (inverted, os.path.basename(c.provenance.file), c.provenance.offset, c.provenance.inner_offset, c.doc_id)


def audit_line(reason: str, removed: DedupKey, survivor_id: str, survivor_url: str, level: str = RECORD) -> str:
    return json.dumps({"output": "text" if level == TEXT else "documents", "reason": reason, "doc_id": removed.doc_id, "url": removed.url,
                       "file": removed.provenance.file, "offset": removed.provenance.offset,
                       "survivor_doc_id": survivor_id, "survivor_url": survivor_url}, sort_keys=True)


class KeepBestOfGroup(AccountedDoFn):
    """(key, dedup keys) -> the best-ranked one; the others dropped with ``reason``."""

    def __init__(self, reason: str, level: str = RECORD):
        self.reason = reason
        self.level = level

    def process(self, element):
        _, group = element
        ranked = sorted(group, key=capture_rank)
        best = ranked[0]
        yield best
        for other in ranked[1:]:
            yield self.outcome(Outcome.at(self.level, DROPPED, other.provenance, other.url, self.reason,
                                          message=f"survivor {best.doc_id}", snippet=other.snippet,
                                          doc_id=other.doc_id,
                                          scores={"survivor_doc_id": best.doc_id, "survivor_url": best.url}))
            yield pvalue.TaggedOutput(AUDIT, audit_line(self.reason, other, best.doc_id, best.url, self.level))


class _GroupDedup(beam.PTransform):
    def __init__(self, key_fn, reason: str, level: str = RECORD):
        super().__init__()
        self.key_fn = key_fn
        self.reason = reason
        self.level = level

    def expand(self, candidates):
        key_fn = self.key_fn
        out = (candidates
               | "Key" >> beam.Map(lambda c: (key_fn(c), c))
               | "Group" >> beam.GroupByKey()
               | "KeepOne" >> beam.ParDo(KeepBestOfGroup(self.reason, self.level)).with_outputs(OUTCOMES, AUDIT, main="kept"))
        return out["kept"], out[OUTCOMES], out[AUDIT]


def DedupByUrl(level: str = RECORD):
    return _GroupDedup(lambda c: url_key(c.url), Reason.DUPLICATE_URL, level)


def DedupExactText(level: str = RECORD):
    return _GroupDedup(lambda k: k.text_hash, Reason.DUPLICATE_EXACT, level)


# -- near duplicates -----------------------------------------------------------------
Node = Tuple[str, str, str]     # (url, capture time, document id)


def node_id(c: DedupKey) -> Node:
    """Graph node of a document. Components keep their smallest node, so the survivor
    is chosen by URL, then capture date, then id: content of the capture, not where
    it sits in the input, so the choice does not depend on how the input is split."""
    return (c.url, capture_time(c.date), c.doc_id)


def band_nodes(k: DedupKey):
    node = node_id(k)
    for band in k.bands:
        yield band, node


def star_edges(element):
    """A bucket of documents sharing a band -> edges from its smallest node to the rest."""
    _, nodes = element
    nodes = sorted(set(nodes))
    for other in nodes[1:]:
        yield nodes[0], other


def _large_star(element):
    """Large-star at ``u``: each larger neighbour linked to the smallest node it sees,
    as ``(larger, smaller)`` (``m <= u < v``), keyed for the small-star step."""
    u, nbrs = element
    nbrs = set(nbrs)
    m = min(nbrs | {u})
    for v in nbrs:
        if v > u:
            yield v, m


def _small_star(element):
    """Small-star at ``u``: ``u`` and its smaller neighbours linked to their smallest;
    each edge both ways, the adjacency the next round (or the labels) groups."""
    u, nbrs = element
    smaller = {v for v in nbrs if v <= u}
    m = min(smaller | {u})
    for v in smaller | {u}:
        if v != m:
            yield v, m
            yield m, v


def _both_ways(edge):
    a, b = edge
    yield a, b
    yield b, a


class ConnectedComponents(beam.PTransform):
    """Undirected edges -> (node, component minimum) for every node with an edge.

    Alternating large-star and small-star rounds (Kiveris et al., "Connected
    Components in MapReduce and Beyond", 2014): each round is two GroupByKeys, and the
    result is a function of the edge set only: not of its partitioning, nor of how
    often an edge comes (every step reads a node's neighbours as a set, so no round
    needs a Distinct of its own: 4 transforms a round instead of 15). The graph
    converges to stars around each component's minimum in O(log^2 n) rounds.
    ``rounds`` pairs are unrolled; edges still unsettled afterwards are counted."""

    def __init__(self, rounds: int):
        super().__init__()
        self.rounds = rounds

    def expand(self, edges):
        adjacency = edges | "Adjacency" >> beam.FlatMap(_both_ways)
        for r in range(self.rounds):
            adjacency = (adjacency
                         | f"LargeStarGroup{r}" >> beam.GroupByKey()
                         | f"LargeStar{r}" >> beam.FlatMap(_large_star)
                         | f"SmallStarGroup{r}" >> beam.GroupByKey()
                         | f"SmallStar{r}" >> beam.FlatMap(_small_star))
        # Converged: every edge is (leaf, root) and no root is itself a leaf.
        return (adjacency
                | "FinalGroup" >> beam.GroupByKey()
                | "Label" >> beam.Map(lambda kv: (kv[0], min(set(kv[1]) | {kv[0]}))))


class FlagUnsettled(beam.DoFn):
    """(node, label) pairs whose label is itself labelled lower: rounds ran out."""

    def process(self, element):
        label, groups = element
        own = list(groups["own"])
        if own and own[0] != label and groups["members"]:
            yield 1


class DedupNearDuplicates(beam.PTransform):
    def __init__(self, cfg: DedupConfig, level: str = RECORD):
        super().__init__()
        self.cfg = cfg
        self.level = level

    def expand(self, candidates):
        # a pair sharing several bands gives its edge once per band: the components read
        # edges as a set, so no Distinct here either
        edges = (candidates
                 | "MinHashBands" >> beam.FlatMap(band_nodes)
                 | "GroupByBand" >> beam.GroupByKey()
                 | "CandidateEdges" >> beam.FlatMap(star_edges))
        labels = edges | "Components" >> ConnectedComponents(self.cfg.cc_rounds)
        unsettled = ({"own": labels, "members": labels | "ByLabel" >> beam.Map(lambda nl: (nl[1], nl[0]))}
                     | "JoinLabels" >> beam.CoGroupByKey()
                     | "FlagUnsettled" >> beam.ParDo(FlagUnsettled())
                     | "CountUnsettled" >> beam.Map(lambda _, level=unsettled_level(self.level): Event(
                         level, Work.UNSETTLED)))
        removed = (labels
                   | "OnlyNonSurvivors" >> beam.Filter(lambda nl: nl[0] != nl[1])
                   | "KeyByDocId" >> beam.Map(lambda nl: (nl[0][2], nl[1])))
        out = ({"doc": candidates | "KeyCandidates" >> beam.Map(lambda k: (k.doc_id, k)), "survivor": removed}
               | "JoinVerdicts" >> beam.CoGroupByKey()
               | "DropNearDuplicates" >> beam.ParDo(DropNearDuplicates(self.level)).with_outputs(OUTCOMES, AUDIT, main="kept"))
        outcomes = (out[OUTCOMES], unsettled) | "NearDupOutcomes" >> beam.Flatten()
        return out["kept"], outcomes, out[AUDIT]


def unsettled_level(level: Level) -> Level:
    """The counted level of a funnel's dedup facts (``dedup``, ``text_dedup``)."""
    return DEDUP if level == RECORD else TEXT_DEDUP


class DropNearDuplicates(AccountedDoFn):
    def __init__(self, level: str = RECORD):
        self.level = level

    def process(self, element):
        _, groups = element
        survivors = list(groups["survivor"])
        for c in groups["doc"]:
            if not survivors:
                yield c
                continue
            survivor_url, _, survivor_id = survivors[0]
            yield self.outcome(Outcome.at(self.level, DROPPED, c.provenance, c.url, Reason.NEAR_DUPLICATE,
                                          message=f"survivor {survivor_id}", snippet=c.snippet,
                                          doc_id=c.doc_id,
                                          scores={"survivor_doc_id": survivor_id, "survivor_url": survivor_url}))
            yield pvalue.TaggedOutput(AUDIT, audit_line(Reason.NEAR_DUPLICATE, c, survivor_id, survivor_url, self.level))


class Deduplicated(NamedTuple):
    kept: beam.PCollection           # the unique candidates
    outcomes: beam.PCollection       # Outcome for each removal, Event for unsettled components
    audit: beam.PCollection          # JSON lines: what each removed one was a copy of


class Deduplicate(beam.PTransform):
    """Candidates -> :class:`Deduplicated`, stages (URL, exact text, near) as configured."""

    def __init__(self, cfg: DedupConfig, level: str = RECORD):
        super().__init__()
        self.cfg = cfg
        self.level = level

    def expand(self, candidates):
        outcomes, audits = [], []
        lv = self.level
        stages = [("ByUrl", self.cfg.url, lambda: DedupByUrl(lv)),
                  ("ExactText", self.cfg.exact, lambda: DedupExactText(lv)),
                  ("NearDuplicates", self.cfg.near, lambda: DedupNearDuplicates(self.cfg, lv))]
        p = candidates.pipeline
        if not any(enabled for _, enabled, _ in stages):
            empty = p | "NoDedup" >> beam.Create([])
            return Deduplicated(candidates, ledger(empty), empty)
        keys = candidates | "DedupKeys" >> beam.ParDo(MakeDedupKeys(self.cfg))
        for name, enabled, make in stages:
            if not enabled:
                continue
            keys, o, a = keys | f"Dedup{name}" >> make()
            outcomes.append(o)
            audits.append(a)
        kept = ({"doc": candidates | "KeyByDocId" >> beam.Map(lambda c: (c.doc_id, c)),
                 "kept": keys | "SurvivingIds" >> beam.Map(lambda k: (k.doc_id, None))}
                | "JoinSurvivors" >> beam.CoGroupByKey()
                | "OnlySurvivors" >> beam.FlatMap(lambda kv: kv[1]["doc"] if kv[1]["kept"] else []))
        return Deduplicated(kept, ledger(tuple(outcomes) | "DedupOutcomes" >> beam.Flatten()),
                            tuple(audits) | "DedupAudit" >> beam.Flatten())
