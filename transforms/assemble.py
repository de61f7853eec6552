"""A candidate document meets the verdicts on its images (CoGroupByKey on the
document id) and becomes a row of the interleaved dataset, or is dropped.

Documents with the same set of images (OBELICS; ``duplicate_image_set``): beside the
join, :class:`AssembleDocuments` works out each document's kept images from what
the images' results say of them (their pHash identities, no bytes), groups the
documents by the set (a shuffle of keys and capture ranks) and picks the newest of
each set. The others' document ids (with the survivor's) enter the same join as a
third input, so a duplicate is dropped where it is assembled: its images end
``document_dropped`` and its row is never made. The same rule picks the kept images
in both places (:func:`usable_images`), so the two cannot disagree."""

from __future__ import annotations

from collections import Counter
from typing import Dict, Iterable, List, Optional, Sequence, Set, Tuple

import apache_beam as beam

from contract.reasons import DROPPED, IMAGE, KEPT, RECORD, Reason, Work
from contract.schema import SCORE_FIELDS
from filters.config import DocumentConfig
from filters.documents import cap_images, drop_half_of_single_image_docs
from filters.image_sets import choose_survivor, image_set_digest, image_set_key, survivor_rank
from filters.pii import PII_SCORE
from transforms.accounting import AccountedDoFn, AccountedParDo
from transforms.records import Candidate, Event, ImageResult, Outcome, text_snippet

DUPLICATE_OF = "duplicate_of"


def usable_images(positions: Sequence[int], identities: Dict[int, Optional[str]],
                  max_images: int) -> Tuple[List[int], List[int], Set[int]]:
    """Which image items of a document are stored: ``identities`` gives, per position,
    the identity of an image its source kept (None for one it dropped; a missing
    position has no result). Returns (kept, over the cap, repeats of an earlier
    picture in the document)."""
    good: List[int] = []
    seen: Set[str] = set()
    repeats: Set[int] = set()
    for pos in positions:
        ident = identities.get(pos)
        if ident is None:
            continue
        if ident in seen:
            repeats.add(pos)
            continue
        seen.add(ident)
        good.append(pos)
    keep_pos, over = cap_images(good, max_images)
    return keep_pos, over, repeats


def _identity(res: Optional[ImageResult]) -> Optional[str]:
    return res.stored.identity if res is not None and res.reason is None and res.stored is not None else None


def image_positions(cand: Candidate) -> List[int]:
    return [i for i, it in enumerate(cand.items) if it["type"] == "image"]


def chosen_candidate(candidates: Iterable[Candidate]) -> Candidate:
    """The one of several candidates with a document id (there is one) that is assembled."""
    return min(candidates, key=lambda c: (c.provenance.file, c.provenance.offset))


def image_row(url: str, alt: str, title: str, res: ImageResult) -> Dict:
    """A kept image as the ``IMAGE`` struct of contract/schema.py (documents and pairs)."""
    st = res.stored
    return {"url": url, "alt": alt, "title": title, "data": st.data, "format": st.format,
            "width": st.width, "height": st.height, "original_width": st.original_width,
            "original_height": st.original_height, "original_format": st.original_format,
            "original_bytes": st.original_bytes, "sha256": st.sha256, "source_file": res.source.file,
            "source_offset": res.source.offset, "source_inner_offset": res.source.inner_offset,
            "phash": st.phash or None, "unsafe_score": st.unsafe_score}


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
        cand = chosen_candidate(candidates)
        prov = cand.provenance
        duplicate_of = sorted(groups.get(DUPLICATE_OF) or ())

        def image_out(status, reason, url, res=None):
            # Where the image's bytes are, when it has any; the page otherwise.
            src = res.source if res is not None and res.source is not None else prov
            return self.outcome(Outcome.at(IMAGE, status, src, url, reason,
                                           scores=res.scores if res is not None else None, doc_id=doc_id))

        def record_out(status, reason="", scores=None):
            snippet = "" if status == KEPT else text_snippet(cand.items)
            return self.outcome(Outcome.at(RECORD, status, prov, cand.url, reason, snippet=snippet,
                                           scores=scores or {}, doc_id=doc_id))

        positions = image_positions(cand)
        keep_pos, over, repeats = usable_images(positions, {p: _identity(r) for p, r in results.items()},
                                                self.cfg.max_images)
        usable = set(keep_pos) | set(over)
        reasons = Counter()
        for pos in positions:
            if pos in usable:
                continue
            res = results.get(pos)
            if res is None:
                reason = Reason.NO_RESULT   # an image source broke its contract; counted, never silent
            elif pos in repeats:
                reason = Reason.DUPLICATE_IN_DOCUMENT   # the same picture (pHash) earlier in the document
            else:
                reason = res.reason
            reasons[reason] += 1
            yield image_out(DROPPED, reason, cand.items[pos]["url"], res)

        for pos in over:
            yield image_out(DROPPED, Reason.TOO_MANY_IMAGES, cand.items[pos]["url"], results[pos])

        if not keep_pos:
            kinds = set(reasons)
            reason = Reason.ALL_IMAGES.of(kinds.pop()) if len(kinds) == 1 else Reason.NO_USABLE_IMAGES
            yield record_out(DROPPED, reason, dict(reasons))
            return

        if duplicate_of:
            # another document has this set of images and is newer (AssembleDocuments)
            survivor_id, survivor_url = duplicate_of[0]
            for pos in keep_pos:
                yield image_out(DROPPED, Reason.DOCUMENT_DROPPED, cand.items[pos]["url"], results[pos])
            yield record_out(DROPPED, Reason.DUPLICATE_IMAGE_SET,
                             {"survivor_doc_id": survivor_id, "survivor_url": survivor_url, "images": len(keep_pos)})
            return

        single = drop_half_of_single_image_docs(doc_id, len(keep_pos), self.cfg.seed,
                                                self.cfg.drop_single_image_fraction)
        if not single.keep:
            for pos in keep_pos:
                yield image_out(DROPPED, Reason.DOCUMENT_DROPPED, cand.items[pos]["url"], results[pos])
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
        for kind, n in sorted((cand.scores.get(PII_SCORE) or {}).items()):    # personal data replaced in it
            for _ in range(n):
                yield self.outcome(Event(RECORD, Work.PII_REPLACED, kind))
        yield {
            "doc_id": doc_id, "url": cand.url, "capture_date": cand.date, "title": cand.title,
            "source_file": prov.file, "source_offset": prov.offset, "source_inner_offset": prov.inner_offset,
            "record_id": prov.record_id, "revisit_of": prov.revisit_of or None,
            "items": items, "images": images, "num_images": len(images),
            "scores": {k: scores.get(k) for k in SCORE_FIELDS},
        }


# -- documents with the same images (duplicate_image_set) ---------------------------------
def image_set_summary(cand: Candidate) -> Tuple:
    """What the image-set dedup needs of a candidate: where it lies (to choose among
    candidates of one id as the join does), its image positions, its rank, its URL."""
    prov = cand.provenance
    return ((prov.file, prov.offset), tuple(image_positions(cand)),
            survivor_rank(cand.date, prov.file, prov.offset, prov.inner_offset, cand.doc_id), cand.url)


class KeyByImageSet(beam.DoFn):
    """(doc_id, {doc: summaries, images: (position, identity)}) -> (set digest,
    (rank, doc_id, url)) for a document with at least one image to store."""

    def __init__(self, max_images: int):
        self.max_images = max_images

    def process(self, element):
        doc_id, groups = element
        summaries = list(groups["doc"])
        if not summaries:
            return
        _, positions, rank, url = min(summaries, key=lambda s: s[0])
        identities = dict(groups["images"])
        keep_pos, _, _ = usable_images(positions, identities, self.max_images)
        key = image_set_key(identities[p] for p in keep_pos)
        if key is not None:
            yield image_set_digest(key), (rank, doc_id, url)


def duplicates_in_set(element):
    """(set digest, members) -> (doc_id, (survivor doc_id, survivor url)) for every
    member but the newest."""
    _, members = element
    members = list(members)
    if len(members) < 2:
        return
    best = choose_survivor([m[0] for m in members])
    _, survivor_id, survivor_url = members[best]
    for i, (_, doc_id, _) in enumerate(members):
        if i != best:
            yield doc_id, (survivor_id, survivor_url)


class AssembleDocuments(beam.PTransform):
    """(candidates, (doc_id, ImageResult)) -> the outputs of :class:`AssembleDocument`
    (``rows``; its outcomes are in the ledger). With ``dedup_image_sets``, documents
    whose stored images are the same pictures as a newer document's end
    ``duplicate_image_set`` (module doc)."""

    def __init__(self, cfg: DocumentConfig, dedup_image_sets: bool = True):
        super().__init__()
        self.cfg = cfg
        self.dedup_image_sets = dedup_image_sets

    def expand(self, inputs):
        documents, results = inputs
        join = {"doc": documents | "KeyByDocId" >> beam.Map(lambda c: (c.doc_id, c)), "images": results}
        if self.dedup_image_sets:
            summaries = documents | "ImageSetSummaries" >> beam.Map(lambda c: (c.doc_id, image_set_summary(c)))
            identities = results | "ImageIdentities" >> beam.Map(
                lambda kv: (kv[0], (kv[1].position, _identity(kv[1]))))
            join[DUPLICATE_OF] = ({"doc": summaries, "images": identities}
                                  | "JoinSummariesWithIdentities" >> beam.CoGroupByKey()
                                  | "KeyByImageSet" >> beam.ParDo(KeyByImageSet(self.cfg.max_images))
                                  | "GroupByImageSet" >> beam.GroupByKey()
                                  | "AllButTheNewest" >> beam.FlatMap(duplicates_in_set))
        return (join
                | "JoinDocumentsWithImages" >> beam.CoGroupByKey()
                | "CapImagesAndDropHalfOfSingleImageDocs" >> AccountedParDo(AssembleDocument(self.cfg), main="rows"))
