"""Pages to candidates for the three outputs. Two stages every page goes through
once, whatever output it is on its way to, then one decision per output:

1. ``CheapPageChecks``: size, decoding, "has any <img>", a crude language check;
2. ``ExtractPage``: the main content in reading order (trafilatura), spam
   paragraphs cut, the language of what is left and, for an English page with
   images, the ``<img>`` elements with their captions;
3. one DoFn per output, each sending its rejects, with the reason, to ``outcomes``:

   * ``ToDocument`` (level ``record``): pages with an ``<img>`` that pass the text
     filters and have images interspersed with text -> interleaved ``Candidate``;
   * ``ToTextDocument`` (level ``text``): English pages with clean text, with or
     without images -> text ``Candidate``;
   * ``ToPairs`` (level ``pair``): every ``<img>`` of an English page with a usable
     caption, whatever becomes of the page otherwise -> ``PairCandidate``.

A page dropped by the first two stages ends once for every output it was on its
way to."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

import apache_beam as beam
from apache_beam import pvalue

from contract.reasons import DROPPED, ENTERED, ERROR, PAIR, RECORD, TEXT
from filters.captions import find_image_captions, judge_caption
from filters.config import CurationConfig
from filters.documents import interspersed
from filters.html import (decode_html, extract_content, has_img_tag, joined_text, language_sample, limit_attributes,
                          prose_of, rough_text, visible_runs)
from filters.images import furniture_url
from filters.language import LanguageIdentifier, language_filter
from filters.text_quality import english_cuts, filter_document_text, filter_paragraphs
from transforms.accounting import OUTCOMES, AccountedDoFn
from transforms.budget import OverBudget, TimeBoundCalls
from transforms.progress import ProgressCounters
from transforms.records import SNIPPET_CHARS, Candidate, Outcome, Page, PairCandidate


@dataclass
class DecodedPage:
    page: Page
    text: str
    has_img: bool = True      # False: on its way to the text output only
    crude: str = ""           # the page's visible prose (the cheap check's sample)


@dataclass
class ExtractedPage:
    """An English page's main content, for the three outputs to decide on."""
    page: Page
    title: str
    items: List[Any]                      # filters.html.ContentItem, in reading order
    kept: List[bool]                      # per text item: survived the paragraph cut
    removed: Dict[str, int]               # paragraphs cut, by reason
    language: Dict[str, Any]              # {"language", "language_score"}
    has_img: bool
    images: Optional[List[Any]] = None    # filters.captions.ImageCaption of every <img> (pairs on)
    scan_failure: Optional[Tuple[str, str, str]] = None   # (status, reason, message) when the <img> scan failed
    texts: List[str] = field(default_factory=list)        # the kept paragraphs
    # filters.text_quality.filter_document_text on ``texts``, judged once for the
    # interleaved and the text-only decisions
    text_verdict: Any = None

    @property
    def joined(self) -> str:
        return " ".join(self.texts)


def _drop(page: Page, reason: str, message: str = "", status: str = DROPPED, scores=None,
          snippet: str = "", level: str = RECORD) -> Outcome:
    return Outcome.at(level, status, page.provenance, page.url, reason, scores=scores or {}, snippet=snippet,
                      message=message)


class _WithLanguageId(AccountedDoFn):
    def __init__(self, cfg: CurationConfig):
        self.cfg = cfg
        self.lid = None

    def setup(self):
        self.lid = LanguageIdentifier(self.cfg.language.model_path, self.cfg.language.max_chars)

    def drops(self, page: Page, reason: str, has_img: bool = True, **kw):
        """The same end for every output the page was still on its way to."""
        if has_img:
            yield self.outcome(_drop(page, reason, **kw))
        if self.cfg.output.text:
            yield self.outcome(_drop(page, reason, level=TEXT, **kw))


class CheapPageChecks(_WithLanguageId):
    """Size, decoding, "has any <img>" and a crude language check: decided before
    the expensive extraction, so imageless or foreign pages cost little."""

    def process(self, page: Page):
        if self.cfg.output.text:
            yield self.outcome(Outcome.at(TEXT, ENTERED, page.provenance, page.url))
        if len(page.payload) > self.cfg.records.max_html_bytes:
            yield from self.drops(page, "too_large", scores={"bytes": len(page.payload)})
            return
        try:
            text, _ = decode_html(page.payload, page.content_type)
        except Exception as exc:
            yield from self.drops(page, "undecodable_html", message=f"{type(exc).__name__}: {exc}", status=ERROR)
            return
        has_img = has_img_tag(text)
        runs = visible_runs(text)
        if not has_img:
            yield self.outcome(_drop(page, "no_img_tag", snippet=joined_text(runs, SNIPPET_CHARS)))
            if not self.cfg.output.text:
                return
        lang = self.cfg.language
        crude = prose_of(runs, lang.max_chars)
        verdict = language_filter(self.lid, crude, lang.language, lang.cheap_min_score)
        if not verdict.keep:
            yield from self.drops(page, verdict.reason, has_img, scores=dict(verdict.scores, stage="cheap"),
                                  snippet=crude)
            return
        yield DecodedPage(page, text, has_img, crude)


class ExtractPage(_WithLanguageId):
    """Main content in reading order (trafilatura) within the page's time budget,
    spam paragraphs cut, the language of what is left; for an English page with
    images (and pairs on), its ``<img>`` elements and their captions too."""

    def setup(self):
        super().setup()
        self.parser = TimeBoundCalls(self.cfg.records.page_time_budget_s)

    def teardown(self):
        self.parser.close()

    def process(self, decoded: DecodedPage):
        cfg = self.cfg
        page = decoded.page
        has_img = decoded.has_img
        # Only what an HTML parser reads needs its tags' attributes capped: the cheap
        # checks before read tags by regex, whatever their length.
        text = limit_attributes(decoded.text, cfg.records.max_attributes)
        try:
            content = self.parser.call(extract_content, text, page.url)
        except OverBudget as exc:
            yield from self.drops(page, "over_time_budget", has_img, message=f"extraction {exc}",
                                  scores={"budget_s": cfg.records.page_time_budget_s})
            return
        except Exception as exc:              # ChildFailed: extraction raised in the child
            yield from self.drops(page, "extraction_failed", has_img, message=f"{type(exc).__name__}: {exc}",
                                  status=ERROR)
            return
        if not content.items:
            yield from self.drops(page, "extraction_empty", has_img, snippet=rough_text(decoded.text, SNIPPET_CHARS))
            return
        texts = [i.text for i in content.items if i.kind == "text"]
        kept, removed = filter_paragraphs(texts, cfg.text)
        kept_texts = [t for t, k in zip(texts, kept) if k]
        lang = cfg.language
        joined = " ".join(kept_texts)
        verdict = language_filter(self.lid, language_sample(kept_texts, fallback=decoded.crude), lang.language,
                                  lang.min_score)
        if not verdict.keep:
            yield from self.drops(page, verdict.reason, has_img, scores=dict(verdict.scores, stage="extracted"),
                                  snippet=joined)
            return
        if lang.language == "en":      # the cuts that read English words, now that the page is English
            for i, cut in enumerate(english_cuts(texts, kept, cfg.text)):
                if cut:
                    kept[i] = False
                    removed[cut] = removed.get(cut, 0) + 1
            kept_texts = [t for t, k in zip(texts, kept) if k]
        out = ExtractedPage(page, content.title, content.items, kept, removed,
                            {"language": verdict.scores["language"],
                             "language_score": verdict.scores[f"{lang.language}_score"]},
                            has_img, texts=kept_texts, text_verdict=filter_document_text(kept_texts, cfg.text))
        if has_img and cfg.output.pairs:
            try:
                out.images = self.parser.call(find_image_captions, text, page.url)
            except OverBudget as exc:
                out.scan_failure = (DROPPED, "over_time_budget", f"<img> scan: {exc}")
            except Exception as exc:          # ChildFailed
                out.scan_failure = (ERROR, "extraction_failed", f"<img> scan: {exc}")
        yield out


def text_scores(ex: ExtractedPage, text_scores: Dict[str, Any]) -> Dict[str, Any]:
    """The scores a kept page carries (contract.schema.SCORES)."""
    return {**ex.language, **text_scores, "paragraphs_removed": sum(ex.removed.values())}


SIGHTINGS = "sightings"


class ToDocument(AccountedDoFn):
    """An extracted page with images -> an interleaved ``Candidate``: clean text
    (spam, gibberish, too few words), then images interspersed with text. Every
    image the page's content shows is also reported as ``(image url, page url)`` on
    ``sightings``, kept or not: how many pages use an image is counted over them."""

    def __init__(self, cfg: CurationConfig, progress_dir: Optional[str] = None):
        self.cfg = cfg
        self.progress_dir = progress_dir

    def setup(self):
        self.progress = ProgressCounters(self.progress_dir)

    def process(self, ex: ExtractedPage):
        if not ex.has_img:
            return
        page = ex.page
        for url in {item.url for item in ex.items if item.kind == "image" and item.url}:
            yield pvalue.TaggedOutput(SIGHTINGS, (url, page.url))
        verdict = ex.text_verdict
        if not verdict.keep:
            yield self.outcome(Outcome.of(RECORD, verdict, page.provenance, page.url, snippet=ex.joined))
            return
        items = []
        flags = iter(ex.kept)
        for item in ex.items:
            if item.kind == "text":
                if next(flags):
                    items.append({"type": "text", "text": item.text})
            else:
                items.append({"type": "image", "url": item.url or "", "src": item.src,
                              "alt": item.alt, "title": item.title})
        n_images = sum(1 for i in items if i["type"] == "image")
        shape = interspersed(n_images, len(items) - n_images)
        if not shape.keep:
            yield self.outcome(Outcome.of(RECORD, shape, page.provenance, page.url, snippet=ex.joined))
            return
        self.progress.add("candidates")
        yield Candidate(page.doc_id, page.url, page.date, ex.title, page.provenance, items,
                        text_scores(ex, verdict.scores))


class ToTextDocument(AccountedDoFn):
    """An extracted page -> a text-only ``Candidate``: clean text, and more words
    than ``text.min_words_text_only``."""

    def __init__(self, cfg: CurationConfig):
        self.cfg = cfg

    def process(self, ex: ExtractedPage):
        page = ex.page
        verdict = ex.text_verdict
        if not verdict.keep:
            yield self.outcome(Outcome.of(TEXT, verdict, page.provenance, page.url, snippet=ex.joined))
            return
        words = verdict.scores.get("words", 0)
        if words < self.cfg.text.min_words_text_only:
            yield self.outcome(_drop(page, "too_few_words_for_text", level=TEXT, snippet=ex.joined,
                                     scores={"words": words}))
            return
        yield Candidate(page.doc_id, page.url, page.date, ex.title, page.provenance,
                        [{"type": "text", "text": t} for t in ex.texts], text_scores(ex, verdict.scores))


class ToPairs(_WithLanguageId):
    """Every <img> of an English page -> a ``PairCandidate``, or dropped with a reason."""

    def process(self, ex: ExtractedPage):
        page, p = ex.page, ex.page.provenance
        if ex.scan_failure is not None:
            status, reason, message = ex.scan_failure
            yield self.outcome(Outcome.at(PAIR, ENTERED, p, page.url))
            yield self.outcome(Outcome.at(PAIR, status, p, page.url, reason, message=message))
            return
        seen = set()
        for img in ex.images or ():
            url = img.url or img.src
            yield self.outcome(Outcome.at(PAIR, ENTERED, p, url))
            if not img.url or not img.url.lower().startswith(("http://", "https://")):
                yield self.outcome(Outcome.at(PAIR, DROPPED, p, url, "unsupported_url", snippet=img.caption))
                continue
            word = furniture_url(img.url, self.cfg.images.furniture_url_words)
            if word:
                yield self.outcome(Outcome.at(PAIR, DROPPED, p, url, "furniture_url", scores={"word": word},
                                              snippet=img.caption))
                continue
            verdict = judge_caption(img.caption, self.cfg.captions, self.lid, self.cfg.language.language,
                                    page_url=page.url)
            if not verdict.keep:
                yield self.outcome(Outcome.of(PAIR, verdict, p, url, snippet=img.caption))
                continue
            key = (img.url, img.caption.lower())
            if key in seen:
                yield self.outcome(Outcome.at(PAIR, DROPPED, p, url, "duplicate_in_page", snippet=img.caption))
                continue
            if len(seen) >= self.cfg.captions.max_pairs_per_page:
                yield self.outcome(Outcome.at(PAIR, DROPPED, p, url, "over_page_cap", snippet=img.caption))
                continue
            seen.add(key)
            yield PairCandidate(page.doc_id, page.url, page.date, p, img.index, img.url, img.caption, img.source,
                                float(verdict.scores.get("language_score", 0.0)))


class Candidates(NamedTuple):
    """The pages that passed, per output, and what became of the others."""
    documents: beam.PCollection              # Candidate: interleaved documents awaiting images
    sightings: beam.PCollection              # (image url, page url) of every extracted page with images
    texts: Optional[beam.PCollection]        # Candidate: text-only documents (output.text)
    pairs: Optional[beam.PCollection]        # PairCandidate (output.pairs)
    outcomes: Tuple[beam.PCollection, ...]   # Outcome, reduced per stage by AccountOutcomes


class PagesToCandidates(beam.PTransform):
    """Pages -> :class:`Candidates`: the cheap checks, then extraction, once per page
    for all three outputs, then each output's own decision."""

    def __init__(self, cfg: CurationConfig, progress_dir: Optional[str] = None):
        super().__init__()
        self.cfg = cfg
        self.progress_dir = progress_dir

    def expand(self, pages) -> Candidates:
        """``pages``: a PCollection, or a tuple of them (the pages as read, the pages
        of resolved revisits): each part is checked and extracted in the stage that
        made it, so no page waits in a Flatten's buffer; the results are joined."""
        cfg, out = self.cfg, self.cfg.output
        parts = pages if isinstance(pages, tuple) else (pages,)
        documents, sightings, texts, pairs, outcomes = [], [], [], [], []

        def decide(extracted, label: str, dofn, into: list):
            result = extracted | label >> beam.ParDo(dofn).with_outputs(OUTCOMES, SIGHTINGS, main="kept")
            into.append(result["kept"])
            outcomes.append(result[OUTCOMES])
            return result

        for n, part in enumerate(parts):
            tag = "" if n == 0 else f" [{n}]"
            cheap = part | f"CheapChecks(size,img,language){tag}" >> beam.ParDo(
                CheapPageChecks(cfg)).with_outputs(OUTCOMES, main="pages")
            extracted = cheap["pages"] | f"ExtractAndCheckLanguage{tag}" >> beam.ParDo(
                ExtractPage(cfg)).with_outputs(OUTCOMES, main="pages")
            outcomes += [cheap[OUTCOMES], extracted[OUTCOMES]]
            sightings.append(decide(extracted["pages"], f"CleanTextAndImagesInText{tag}",
                                    ToDocument(cfg, self.progress_dir), documents)[SIGHTINGS])
            if out.text:
                decide(extracted["pages"], f"TextOnlyDocuments{tag}", ToTextDocument(cfg), texts)
            if out.pairs:
                decide(extracted["pages"], f"ImageCaptionPairs{tag}", ToPairs(cfg), pairs)

        def joined(pcolls, label):
            if not pcolls:
                return None
            return pcolls[0] if len(pcolls) == 1 else tuple(pcolls) | label >> beam.Flatten()
        return Candidates(joined(documents, "AllCandidates"), joined(sightings, "AllImageSightings"),
                          joined(texts, "AllTextDocuments"), joined(pairs, "AllPairCandidates"), tuple(outcomes))
