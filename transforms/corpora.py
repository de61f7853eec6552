"""The other two Kosmos corpora of the same pass: image-caption pairs and text-only
documents. Every ``<img>`` that entered the pair funnel and every page that entered
the text funnel ends kept or dropped with a reason (levels ``pair`` and ``text``).
"""

from __future__ import annotations

import json

import apache_beam as beam

from filters.captions import normalize_caption, pair_id
from filters.html import normalize_url
from pipeline.schema import SCORE_FIELDS
from transforms.assemble import image_row
from transforms.accounting import OUTCOMES, AccountedDoFn
from transforms.records import DROPPED, KEPT, PAIR, SNIPPET_CHARS, TEXT, Candidate, Outcome, PairCandidate



def pair_rank(c: PairCandidate):
    """Which of several identical pairs is kept: a fixed rule, whatever the order."""
    return (c.page_url, c.doc_id, c.index)


def _pair_outcome(c: PairCandidate, status: str, reason: str = "", **kw) -> Outcome:
    p = c.provenance
    return Outcome(PAIR, status, reason, file=p.file, offset=p.offset, inner_offset=p.inner_offset, url=c.url,
                   snippet=c.caption[:SNIPPET_CHARS], **kw)


class KeepOnePair(AccountedDoFn):
    """(key, pairs) -> the first by ``pair_rank``; the others ``duplicate_pair``."""

    def process(self, element):
        _, group = element
        # elements are pair candidates, or (candidate, image result) after the image join
        cand = lambda x: x if isinstance(x, PairCandidate) else x[0]  # noqa: E731
        ranked = sorted(group, key=lambda x: pair_rank(cand(x)))
        yield ranked[0]
        for other in ranked[1:]:
            yield self.outcome(_pair_outcome(cand(other), DROPPED, "duplicate_pair",
                                             message=f"kept the pair of page {cand(ranked[0]).doc_id}"))


class JoinPairWithImage(AccountedDoFn):
    """(ref, {pair, image}) -> (pair, stored image), or the image's reason."""

    def process(self, element):
        _, groups = element
        pairs, results = list(groups["pair"]), list(groups["image"])
        for c in pairs:
            res = results[0] if results else None
            if res is None:
                yield self.outcome(_pair_outcome(c, DROPPED, "no_image_result"))
            elif res.reason is not None:
                yield self.outcome(_pair_outcome(c, DROPPED, res.reason,
                                                 scores=json.dumps(res.scores or {}, sort_keys=True, default=str)))
            else:
                yield c, res


class PairRow(AccountedDoFn):
    def process(self, element):
        c, res = element
        yield self.outcome(_pair_outcome(c, KEPT))
        yield {
            "pair_id": pair_id(res.stored.sha256, c.caption), "caption": c.caption,
            "caption_source": c.caption_source,
            "image": image_row(c.url, c.caption if c.caption_source == "alt" else "", "", res),
            "page_url": c.page_url, "doc_id": c.doc_id, "capture_date": c.date,
            "language_score": c.language_score,
        }


class PairsBeforeImages(beam.PTransform):
    """Pair candidates -> (distinct pairs, outcomes): the same image URL with the same
    caption is one pair (no second fetch for it)."""

    def expand(self, pairs):
        out = (pairs
               | "KeyByUrlAndCaption" >> beam.Map(lambda c: ((normalize_url(c.url), normalize_caption(c.caption)), c))
               | "GroupSamePairs" >> beam.GroupByKey()
               | "KeepOnePerUrlAndCaption" >> beam.ParDo(KeepOnePair()).with_outputs(OUTCOMES, main="pairs"))
        return out["pairs"], out[OUTCOMES]


class PairsWithImages(beam.PTransform):
    """(distinct pairs, image results keyed by pair ref) -> (rows, outcomes); the same
    image bytes with the same caption under two URLs is one pair too."""

    def __init__(self, results):
        super().__init__()
        self.results = results

    def expand(self, pairs):
        joined = ({"pair": pairs | "KeyPairsByRef" >> beam.Map(lambda c: (c.ref, c)), "image": self.results}
                  | "JoinPairsWithImages" >> beam.CoGroupByKey()
                  | "JoinPairWithImage" >> beam.ParDo(JoinPairWithImage()).with_outputs(OUTCOMES, main="ok"))
        distinct = (joined["ok"]
                    | "KeyByContentAndCaption" >> beam.Map(
                        lambda cr: ((cr[1].stored.sha256, normalize_caption(cr[0].caption)), cr))
                    | "GroupSameContent" >> beam.GroupByKey()
                    | "KeepOnePerContentAndCaption" >> beam.ParDo(KeepOnePair()).with_outputs(OUTCOMES, main="ok"))
        rows = distinct["ok"] | "PairRows" >> beam.ParDo(PairRow()).with_outputs(OUTCOMES, main="rows")
        outcomes = (joined[OUTCOMES], distinct[OUTCOMES], rows[OUTCOMES]) | "PairOutcomes" >> beam.Flatten()
        return rows["rows"], outcomes


class TextRow(AccountedDoFn):
    """A deduplicated text candidate -> a row of ``pipeline.schema.TEXT_SCHEMA``."""

    def process(self, c: Candidate):
        p = c.provenance
        yield self.outcome(Outcome(TEXT, KEPT, file=p.file, offset=p.offset, inner_offset=p.inner_offset, url=c.url))
        yield {"doc_id": c.doc_id, "url": c.url, "capture_date": c.date, "title": c.title,
               "text": "\n".join(i["text"] for i in c.items if i["type"] == "text"),
               "source_file": p.file, "source_offset": p.offset,
               "scores": {k: c.scores.get(k) for k in SCORE_FIELDS}}
