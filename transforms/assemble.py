"""A candidate document meets the verdicts on its images (CoGroupByKey on the
document id) and becomes a row of the interleaved dataset, or is dropped."""

from __future__ import annotations

from collections import Counter
from typing import Dict, List

from contract.reasons import DROPPED, IMAGE, KEPT, RECORD
from contract.schema import SCORE_FIELDS
from filters.config import DocumentConfig
from filters.documents import cap_images, drop_half_of_single_image_docs
from transforms.accounting import AccountedDoFn
from transforms.records import Candidate, ImageResult, Outcome, text_snippet


def image_row(url: str, alt: str, title: str, res: ImageResult) -> Dict:
    """A kept image as the ``IMAGE`` struct of contract/schema.py (documents and pairs)."""
    st = res.stored
    return {"url": url, "alt": alt, "title": title, "data": st.data, "format": st.format,
            "width": st.width, "height": st.height, "original_width": st.original_width,
            "original_height": st.original_height, "original_format": st.original_format,
            "original_bytes": st.original_bytes, "sha256": st.sha256, "source_file": res.source.file,
            "source_offset": res.source.offset}


class AssembleDocument(AccountedDoFn):
    def __init__(self, cfg: DocumentConfig):
        self.cfg = cfg

    def process(self, element):
        yield from self._assemble(element)

    def _assemble(self, element):
        doc_id, groups = element
        candidates: List[Candidate] = list(groups["doc"])
        results: Dict[int, ImageResult] = {r.position: r for r in groups["images"]}
        if not candidates:
            return  # cannot happen: every result comes from a candidate
        cand = min(candidates, key=lambda c: (c.provenance.file, c.provenance.offset))
        prov = cand.provenance

        def image_out(status, reason, url, res=None):
            # Where the image's bytes are, when it has any; the page otherwise.
            src = res.source if res is not None and res.source is not None else prov
            return self.outcome(Outcome.at(IMAGE, status, src, url, reason,
                                           scores=res.scores if res is not None else None, doc_id=doc_id))

        def record_out(status, reason="", scores=None):
            snippet = "" if status == KEPT else text_snippet(cand.items)
            return self.outcome(Outcome.at(RECORD, status, prov, cand.url, reason, snippet=snippet,
                                           scores=scores or {}, doc_id=doc_id))

        positions = [i for i, it in enumerate(cand.items) if it["type"] == "image"]
        good: List[int] = []
        reasons = Counter()
        seen_sha = set()
        for pos in positions:
            res = results.get(pos)
            url = cand.items[pos]["url"]
            if res is None:
                reason = "no_result"   # an image source broke its contract; counted, never silent
            elif res.reason is None and res.stored.sha256 in seen_sha:
                reason = "duplicate_in_document"
            else:
                reason = res.reason
            if reason is not None:
                reasons[reason] += 1
                yield image_out(DROPPED, reason, url, res)
                continue
            seen_sha.add(res.stored.sha256)
            good.append(pos)

        keep_pos, over = cap_images(good, self.cfg.max_images)
        for pos in over:
            yield image_out(DROPPED, "too_many_images", cand.items[pos]["url"], results[pos])

        if not keep_pos:
            kinds = set(reasons)
            reason = f"images_{kinds.pop()}" if len(kinds) == 1 else "no_usable_images"
            yield record_out(DROPPED, reason, dict(reasons))
            return

        single = drop_half_of_single_image_docs(doc_id, len(keep_pos), self.cfg.seed,
                                                self.cfg.drop_single_image_fraction)
        if not single.keep:
            for pos in keep_pos:
                yield image_out(DROPPED, "document_dropped", cand.items[pos]["url"], results[pos])
            yield record_out(DROPPED, single.reason, single.scores)
            return

        keep_set = set(keep_pos)
        items, images = [], []
        for pos, it in enumerate(cand.items):
            if it["type"] == "text":
                items.append({"type": "text", "text": it["text"], "image": None})
            elif pos in keep_set:
                res = results[pos]
                items.append({"type": "image", "text": None, "image": len(images)})
                images.append(image_row(it["url"], it.get("alt", ""), it.get("title", ""), res))
                yield image_out(KEPT, "", it["url"], res)
        scores = dict(cand.scores)
        scores.update(single.scores)
        yield record_out(KEPT)
        yield {
            "doc_id": doc_id, "url": cand.url, "capture_date": cand.date, "title": cand.title,
            "source_file": prov.file, "source_offset": prov.offset, "source_inner_offset": prov.inner_offset,
            "record_id": prov.record_id, "revisit_of": prov.revisit_of or None,
            "items": items, "images": images, "num_images": len(images),
            "scores": {k: scores.get(k) for k in SCORE_FIELDS},
        }
