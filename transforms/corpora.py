"""The other two Kosmos corpora of the same pass: image-caption pairs and text-only
documents. Every ``<img>`` that entered the pair funnel and every page that entered
the text funnel ends kept or dropped with a reason (levels ``pair`` and ``text``).
"""

from __future__ import annotations

import apache_beam as beam

from typing import Any, Dict

from contract.reasons import DROPPED, KEPT, PAIR, TEXT, Reason, Work
from contract.schema import SCORE_FIELDS
from filters.captions import normalize_caption, pair_id
from filters.pii import PII_SCORE
from filters.urls import normalize_url
from transforms.accounting import OUTCOMES, Accounted, AccountedDoFn, ledger
from transforms.assemble import image_row
from transforms.records import Candidate, Event, Outcome, PairCandidate


def pair_rank(c: PairCandidate):
    """Which of several identical pairs is kept: a fixed rule, whatever the order."""
    return (c.page_url, c.doc_id, c.index)


def _pair_outcome(c: PairCandidate, status: str, reason: str = "", **kw) -> Outcome:
    return Outcome.at(PAIR, status, c.provenance, c.url, reason, snippet=c.caption, **kw)


class KeepOnePair(AccountedDoFn):
    """(key, pairs) -> the first by ``pair_rank``; the others ``duplicate_pair``."""

    def process(self, element):
        _, group = element
        # elements are pair candidates, or (candidate, image result) after the image join
        cand = lambda x: x if isinstance(x, PairCandidate) else x[0]  # noqa: E731
        ranked = sorted(group, key=lambda x: pair_rank(cand(x)))
        yield ranked[0]
        for other in ranked[1:]:
            yield self.outcome(_pair_outcome(cand(other), DROPPED, Reason.DUPLICATE_PAIR,
                                             message=f"kept the pair of page {cand(ranked[0]).doc_id}"))


class JoinPairWithImage(AccountedDoFn):
    """(ref, {pair, image}) -> (pair, stored image), or the image's reason."""

    def process(self, element):
        _, groups = element
        pairs, results = list(groups["pair"]), list(groups["image"])
        for c in pairs:
            res = results[0] if results else None
            if res is None:
                yield self.outcome(_pair_outcome(c, DROPPED, Reason.NO_IMAGE_RESULT))
            elif res.reason is not None:
                yield self.outcome(_pair_outcome(c, DROPPED, res.reason, scores=res.scores or {}))
            else:
                yield c, res


class PairRow(AccountedDoFn):
    def process(self, element):
        c, res = element
        yield self.outcome(_pair_outcome(c, KEPT))
        yield from pii_events(self, PAIR, {PII_SCORE: c.pii_replaced})
        yield {
            "pair_id": pair_id(res.stored.sha256, c.caption), "caption": c.caption,
            "caption_source": c.caption_source,
            "image": image_row(c.url, c.caption if c.caption_source == "alt" else "", "", res),
            "page_url": c.page_url, "doc_id": c.doc_id, "capture_date": c.date,
            "language_score": c.language_score,
        }


class PairsBeforeImages(beam.PTransform):
    """Pair candidates -> ``Accounted`` (distinct pairs, outcomes): the same image URL
    with the same caption is one pair (no second fetch for it)."""

    def expand(self, pairs) -> Accounted:
        out = (pairs
               | "KeyByUrlAndCaption" >> beam.Map(lambda c: ((normalize_url(c.url), normalize_caption(c.caption)), c))
               | "GroupSamePairs" >> beam.GroupByKey()
               | "KeepOnePerUrlAndCaption" >> beam.ParDo(KeepOnePair()).with_outputs(OUTCOMES, main="pairs"))
        return Accounted(out["pairs"], ledger(out[OUTCOMES]))


class PairsWithImages(beam.PTransform):
    """(distinct pairs, image results keyed by ``ImageRef``) -> ``Accounted`` (rows,
    outcomes); the same image bytes with the same caption under two URLs is one pair too."""

    def __init__(self, results):
        super().__init__()
        self.results = results

    def expand(self, pairs) -> Accounted:
        joined = ({"pair": pairs | "KeyPairsByRef" >> beam.Map(lambda c: (c.ref, c)), "image": self.results}
                  | "JoinPairsWithImages" >> beam.CoGroupByKey()
                  | "JoinPairWithImage" >> beam.ParDo(JoinPairWithImage()).with_outputs(OUTCOMES, main="ok"))
        distinct = (joined["ok"]
                    | "KeyByContentAndCaption" >> beam.Map(
                        lambda cr: ((cr[1].stored.identity, normalize_caption(cr[0].caption)), cr))
                    | "GroupSameContent" >> beam.GroupByKey()
                    | "KeepOnePerContentAndCaption" >> beam.ParDo(KeepOnePair()).with_outputs(OUTCOMES, main="ok"))
        rows = distinct["ok"] | "PairRows" >> beam.ParDo(PairRow()).with_outputs(OUTCOMES, main="rows")
        outcomes = (joined[OUTCOMES], distinct[OUTCOMES], rows[OUTCOMES]) | "PairOutcomes" >> beam.Flatten()
        return Accounted(rows["rows"], ledger(outcomes))


def pii_events(dofn: AccountedDoFn, level, scores: Dict[str, Any]):
    """One counted event per personal-data item replaced in a kept row's text."""
    for kind, n in sorted((scores.get(PII_SCORE) or {}).items()):
        for _ in range(n):
            yield dofn.outcome(Event(level, Work.PII_REPLACED, kind))


class TextRow(AccountedDoFn):
    """A deduplicated text candidate -> a row of ``contract.schema.TEXT_SCHEMA``."""

    def process(self, c: Candidate):
        yield self.outcome(Outcome.at(TEXT, KEPT, c.provenance, c.url, doc_id=c.doc_id))
        yield from pii_events(self, TEXT, c.scores)
        yield {"doc_id": c.doc_id, "url": c.url, "capture_date": c.date, "title": c.title,
               "text": "\n".join(i["text"] for i in c.items if i["type"] == "text"),
               "source_file": c.provenance.file, "source_offset": c.provenance.offset,
               "scores": {k: c.scores.get(k) for k in SCORE_FIELDS}}
