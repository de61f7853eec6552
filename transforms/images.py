"""Images: the references of candidate documents meet their bytes through Beam's
shuffle, each distinct image is judged once, and the verdict goes back to every
document that uses it.

An image source is any PTransform from ``(url, (ref, position))`` references to
an :class:`ImageResults`: ``(ref, ImageResult)`` results, one per reference, and the
``fetch``-level events counting its work. ``InArchiveImages`` takes the bytes from
the image records of the input archives; the HTTP sources (transforms/http_images.py)
plug in beside it with the same contract.

A ``ref`` is a :class:`transforms.records.ImageRef`: a document, or the pair of
one <img> of a page.

Safe to publish (issue 30): every image a source judges is scored by the image-safety
model (``safety``, the curation config's section; the model is loaded once per DoFn
instance, in ``setup``) and, with ``eval_index`` (a side input holding a
filters.decontaminate.DecontaminationIndex, or None), compared with the evaluation
images, after it is decoded and before it is stored. The same picture under several
URLs is one image for the repeated-image rule: results are grouped by the image's
pHash (``StoredImage.identity``), an exact 64-bit equality since a shuffle key cannot
be a Hamming radius; an image without a pHash is grouped by its sha256.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.metrics import Metrics

from contract.reasons import ENTERED, FETCH, IMAGE, Reason, Work
from filters.captions import caption_words, says_site_element
from filters.config import ImageConfig
from filters.image_safety import load_safety, scorer_config
from filters.images import furniture_url, judge_image
from filters.opt_out import check_image_opt_out
from filters.safety_urls import BlockedSites
from filters.urls import normalize_url
from transforms.accounting import AccountedDoFn, ledger
from transforms.records import Candidate, Event, ImageRef, ImageResult, Outcome

SETTLED = "settled"
EVENTS = "events"


class ImageRefCoder(beam.coders.Coder):
    """A deterministic coder for the image join's keys (Beam's fallback for a
    NamedTuple pickles its type with every key and warns about it)."""

    def encode(self, ref: ImageRef) -> bytes:
        return f"{ref.pair_index}\t{ref.page}".encode("utf-8")

    def decode(self, data: bytes) -> ImageRef:
        index, page = data.decode("utf-8").split("\t", 1)
        return ImageRef(page, int(index))

    def is_deterministic(self) -> bool:
        return True


beam.coders.registry.register_coder(ImageRef, ImageRefCoder)


class ImageResults(NamedTuple):
    """What an image source returns: one result per reference, its work counted, and
    (a downloading source) the downloaded bytes, for ``fetch.write_warc``."""
    results: beam.PCollection                     # (ImageRef, ImageResult)
    events: beam.PCollection                      # Event (level fetch)
    fetched: Optional[beam.PCollection] = None    # {"url", "final_url", "date", "content_type", "data"}


def repeated_kinds(refs, max_repeats: int) -> set:
    """The outputs ("pair" / "doc") in which more than ``max_repeats`` pages use the image."""
    pages = {"pair": set(), "doc": set()}
    for ref in refs:
        pages[ref.output].add(ref.page)
    return {k for k, v in pages.items() if max_repeats and len(v) > max_repeats}


def decode_events(url: str, refs) -> list:
    """``fetch``-level events for one decode of the image at ``url`` serving ``refs``."""
    events = [pvalue.TaggedOutput(EVENTS, Event(FETCH, Work.DECODED, url=url))]
    if len({ref.output for ref, _ in refs}) > 1:
        events.append(pvalue.TaggedOutput(EVENTS, Event(FETCH, Work.DECODED_SHARED, url=url)))
    return events


def load_image_safety(safety):
    """The image-safety scorer of a curation config's ``safety`` section, its model
    session made now (a DoFn's ``setup``); None without a section or with scorer none."""
    if safety is None:
        return None
    scorer = load_safety(scorer_config(safety))
    if scorer is not None:
        scorer.scorer.session()
    return scorer


def eval_side_input(eval_index) -> dict:
    """The keyword a judging ParDo takes the evaluation index by (none when there is none)."""
    return {} if eval_index is None else {"eval_index": eval_index}


class ListImageReferences(AccountedDoFn):
    """Candidate -> one reference per image to fetch (main output); references that
    need no fetch (a repeat of an earlier URL in the same document, a URL no source
    can serve, a logo or button by its URL or alt text, one past the first
    ``max_references`` of the document) are settled at once: a page with 2,000 images
    sends a handful of requests, not 2,000."""

    def __init__(self, max_references: int = 0, furniture_words: tuple = (), captions=None, safety=None):
        self.max_references = max_references
        self.furniture_words = furniture_words
        self.captions = captions            # CaptionConfig: alt texts that name a site element
        self.sites = BlockedSites(safety) if safety is not None else None   # image URLs on blocked sites

    def process(self, cand: Candidate):
        seen = set()
        for pos, item in enumerate(cand.items):
            if item["type"] != "image":
                continue
            url = item["url"]
            yield self.outcome(Outcome.at(IMAGE, ENTERED, cand.provenance, url))
            ref = ImageRef(cand.doc_id)
            site = self.sites.check_image_url(url) if self.sites is not None and url else None
            if not url or not url.lower().startswith(("http://", "https://")):
                yield pvalue.TaggedOutput(SETTLED, (ref, ImageResult(pos, Reason.UNSUPPORTED_URL)))
            elif cand.images_opted_out:     # the page's noimageai: none of its images is used
                yield pvalue.TaggedOutput(SETTLED, (ref, ImageResult(pos, Reason.OPTED_OUT_IMAGE, scores={
                    "opt_out_signal": cand.images_opted_out})))
            elif site is not None and not site.keep:
                yield pvalue.TaggedOutput(SETTLED, (ref, ImageResult(pos, site.reason, scores=site.scores)))
            elif url in seen:
                yield pvalue.TaggedOutput(SETTLED, (ref, ImageResult(pos, Reason.DUPLICATE_IN_DOCUMENT)))
            elif self.furniture_words and (word := furniture_url(url, self.furniture_words)):
                yield pvalue.TaggedOutput(SETTLED, (ref, ImageResult(pos, Reason.FURNITURE_URL, scores={"word": word})))
            elif self.captions is not None and item.get("alt") and says_site_element(
                    caption_words(item["alt"]), self.captions):
                yield pvalue.TaggedOutput(SETTLED, (ref, ImageResult(pos, Reason.FURNITURE_ALT,
                                                                     scores={"alt": item["alt"][:100]})))
            elif self.max_references and len(seen) >= self.max_references:
                yield pvalue.TaggedOutput(SETTLED, (ref, ImageResult(pos, Reason.OVER_REFERENCE_CAP)))
            else:
                seen.add(url)
                yield url, (ref, pos)


class JudgeEachImageOnce(beam.DoFn):
    """(url, {refs, records}) -> (ImageRef, ImageResult) for every reference. Records
    carry where their bytes are; the chosen one is read back by offset."""

    def __init__(self, cfg: ImageConfig, max_bytes: int, safety=None, user_agent: str = ""):
        self.cfg = cfg
        self.max_bytes = max_bytes          # records.max_image_bytes
        self.safety = safety                # filters.config.SafetyConfig, or None: no safety model
        self.respect_opt_out = safety is not None and safety.respect_opt_out
        self.agents = (user_agent.partition("/")[0],) if user_agent else ()
        self.scorer = None
        self.decoded = Metrics.counter("kosmos", "images.decoded")
        self.shared = Metrics.counter("kosmos", "images.results_shared")

    def setup(self):
        self.scorer = load_image_safety(self.safety)

    def process(self, element, eval_index=None):
        yield from self._judge(element, eval_index)

    def _judge(self, element, eval_index=None):
        url, groups = element
        refs = groups["refs"]
        records = list(groups["records"])
        first = next(iter(refs), None)
        if first is None:
            return  # an image record no kept document asks for: never decoded
        if not records:
            for ref, pos in refs:
                yield ref, ImageResult(pos, Reason.NOT_IN_ARCHIVE, url=url)
            return
        # The same URL captured more than once: a fixed choice, whatever the order.
        rec = min(records, key=lambda r: (r.oversize, r.provenance.file, r.provenance.offset,
                                          r.provenance.inner_offset))
        if self.respect_opt_out:            # an archived response of the image opts out of AI use
            opt = next((v for v in (check_image_opt_out(r.policy_headers, agents=self.agents) for r in records)
                        if not v.keep), None)
            if opt is not None:
                for ref, pos in refs:
                    yield ref, ImageResult(pos, opt.reason, None, rec.provenance, opt.scores)
                return
        payload = rec.payload
        if rec.left_in_archive:
            payload = self._read_back(rec)
            if payload is None:
                for ref, pos in refs:
                    yield ref, ImageResult(pos, Reason.UNREADABLE_IN_ARCHIVE, None, rec.provenance)
                return
        if rec.oversize:
            verdict, stored = None, None
            reason, scores = Reason.TOO_LARGE, {}
        else:
            verdict, stored = judge_image(payload, self.cfg, self.scorer, eval_index)
            self.decoded.inc()
            reason, scores = (None if verdict.keep else verdict.reason), verdict.scores
        refs = list(refs)
        for ref, pos in refs:
            yield ref, ImageResult(pos, reason, stored, rec.provenance, scores)
        if len(refs) > 1:
            self.shared.inc(len(refs) - 1)
        if not rec.oversize:
            yield from decode_events(url, refs)

    def _read_back(self, rec):
        """The image's bytes from its archive, or None when they cannot be read there
        any more (the file moved or changed since the job read it)."""
        from transforms.filesystems import read_record_at
        where = rec.provenance
        try:
            back = read_record_at(where.file, where.offset, where.inner_offset, self.max_bytes)
        except Exception:  # noqa: BLE001 - any I/O failure ends as the reason below
            return None
        return back.payload if back is not None else None


class InArchiveImages(beam.PTransform):
    """Image source: the image records of the input archives, joined on URL (their
    locations, not their bytes: see ``ImageRecord.left_in_archive``)."""

    def __init__(self, image_records, cfg: ImageConfig, max_bytes: int, safety=None, eval_index=None,
                 user_agent: str = ""):
        super().__init__()
        self.user_agent = user_agent        # fetch.user_agent: opt-outs scoped to our crawler apply
        self.image_records = image_records
        self.cfg = cfg
        self.max_bytes = max_bytes
        self.safety = safety                # filters.config.SafetyConfig (cfg.safety), or None
        self.eval_index = eval_index        # AsSingleton of a DecontaminationIndex (or of None), or None

    def expand(self, refs):
        keyed = self.image_records | "KeyImageRecordsByUrl" >> beam.Map(
            lambda r: (normalize_url(r.url), r))
        judged = ({"refs": refs, "records": keyed}
                  | "JoinReferencesWithRecords" >> beam.CoGroupByKey()
                  | "JudgeEachImageOnce" >> beam.ParDo(JudgeEachImageOnce(self.cfg, self.max_bytes, self.safety,
                                                                                  self.user_agent),
                                                       **eval_side_input(self.eval_index)).with_outputs(
                      EVENTS, main="results"))
        return ImageResults(judged["results"], judged[EVENTS])


class DistinctUpTo(beam.CombineFn):
    """Distinct values, at most ``cap`` of them (enough to tell "more than cap - 1")."""

    def __init__(self, cap: int):
        self.cap = cap

    def create_accumulator(self):
        return set()

    def add_input(self, acc, value):
        if len(acc) < self.cap:
            acc.add(value)
        return acc

    def merge_accumulators(self, accs):
        out = set()
        for acc in accs:
            for value in acc:
                if len(out) >= self.cap:
                    return out
                out.add(value)
        return out

    def extract_output(self, acc):
        return sorted(acc)


class SettleRepeatedUrls(beam.DoFn):
    """(url, {refs, pages}) -> refs to fetch (main), or, for a URL used by more than
    ``max_repeats`` documents (logos, icons, buttons), ``repeated_image`` results
    settled without any download or decode. ``pages``: the URLs of the English pages
    whose content shows the image (up to max_repeats + 1 of them), whatever the text
    filters and dedup made of it (counting only the documents still standing would let
    a site's logo through once the rest of its pages are filtered out)."""

    def __init__(self, max_repeats: int):
        self.max_repeats = max_repeats
        self.skipped = Metrics.counter("kosmos", "images.repeated_url_not_fetched")

    def process(self, element):
        url, groups = element
        refs = list(groups["refs"])
        repeated = repeated_kinds((ref for ref, _ in refs), self.max_repeats)
        if self.max_repeats and sum(len(p) for p in groups["pages"]) > self.max_repeats:
            repeated.add("doc")
        if repeated:
            self.skipped.inc()
        for ref, pos in refs:
            if ref.output in repeated:
                yield pvalue.TaggedOutput(SETTLED, (ref, ImageResult(pos, Reason.REPEATED_IMAGE)))
            else:
                yield url, (ref, pos)


class SettleRepeatedContent(beam.DoFn):
    """(identity, results) -> results, with ``repeated_image`` for a picture used by
    more than ``max_repeats`` documents under different URLs (the same pHash: resized
    and re-encoded copies count together; see ``StoredImage.identity``)."""

    def __init__(self, max_repeats: int):
        self.max_repeats = max_repeats

    def process(self, element):
        _, results = element
        results = list(results)
        repeated = repeated_kinds((ref for ref, _ in results), self.max_repeats)
        for ref, res in results:
            if ref.output in repeated and res.reason is None:
                yield ref, ImageResult(res.position, Reason.REPEATED_IMAGE, None, res.source, res.scores)
            else:
                yield ref, res


class FetchImages(beam.PTransform):
    """References -> one result per reference: repeated URLs settled first, the
    rest through ``source``, then pictures repeated across the corpus (by pHash)
    settled."""

    def __init__(self, source: beam.PTransform, max_repeats: int, sightings=None):
        super().__init__()
        self.source = source
        self.max_repeats = max_repeats
        self.sightings = sightings        # (image url, page url) of every English page (documents)

    def expand(self, refs) -> ImageResults:
        n = self.max_repeats
        if not n:
            source = refs | "FromSource" >> self.source
            ledger(source.events)
            return source
        if self.sightings is None:
            pages = refs.pipeline | "NoSightings" >> beam.Create([])
        else:
            # each URL's distinct pages, kept to n + 1 of them in a combiner: what crosses
            # the shuffle is small and bounded however many pages show a logo
            pages = self.sightings | "DistinctPagesPerUrl" >> beam.CombinePerKey(DistinctUpTo(n + 1))
        split = ({"refs": refs, "pages": pages}
                 | "GroupByUrl" >> beam.CoGroupByKey()
                 | "OnlyReferenced" >> beam.Filter(lambda kv: bool(kv[1]["refs"]))
                 | "SettleRepeatedUrls" >> beam.ParDo(SettleRepeatedUrls(n)).with_outputs(SETTLED, main="fetch"))
        source = split["fetch"] | "FromSource" >> self.source
        fetched = source.results
        # Only images that passed carry bytes to count; failures skip the shuffle
        # (grouped under one key they would make a hot key as large as the failures).
        with_bytes = fetched | "WithBytes" >> beam.Filter(lambda kv: kv[1].stored is not None)
        without = fetched | "WithoutBytes" >> beam.Filter(lambda kv: kv[1].stored is None)
        checked = (with_bytes
                   | "KeyByPicture" >> beam.Map(lambda kv: (kv[1].stored.identity, kv))
                   | "GroupByPicture" >> beam.GroupByKey()
                   | "SettleRepeatedContent" >> beam.ParDo(SettleRepeatedContent(n)))
        ledger(source.events)
        return source._replace(results=(checked, without, split[SETTLED]) | "AllFetchResults" >> beam.Flatten())
