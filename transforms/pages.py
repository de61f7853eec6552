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

from contract.reasons import DROPPED, ENTERED, ERROR, PAIR, RECORD, TEXT, AnyReason, Level, Reason, Status
from filters.captions import judge_caption, read_page
from filters.config import CurationConfig
from filters.budget import OverBudget, TimeBoundCalls
from filters.decontaminate import contamination_verdict
from filters.documents import interspersed
from filters.flagged_words import check_flagged_words
from filters.html import (decode_html, has_img_tag, joined_text, language_sample, limit_attributes,
                          prose_of, rough_text, visible_runs)
from filters.images import furniture_url
from filters.language import LanguageIdentifier, language_filter
from filters.opt_out import check_page_opt_out
from filters.pii import PII_SCORE, Redacted, redact_pii
from filters.safety_urls import BlockedSites
from filters.text_quality import english_cuts, filter_document_text, filter_paragraphs
from transforms.accounting import OUTCOMES, AccountedDoFn, ledger
from transforms.progress import ProgressCounters
from transforms.records import SNIPPET_CHARS, Candidate, Outcome, Page, PairCandidate


@dataclass
class DecodedPage:
    page: Page
    text: str
    has_img: bool = True      # False: on its way to the text output only
    crude: str = ""           # the page's visible prose (the cheap check's sample)
    images_opted_out: str = ""   # the signal opting the page's images out (meta robots noimageai, ...)


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
    images_opted_out: str = ""
    scan_failure: Optional[Tuple[str, str, str]] = None   # (status, reason, message) when the <img> scan failed
    texts: List[str] = field(default_factory=list)        # the kept paragraphs
    # filters.text_quality.filter_document_text on ``texts``, judged once for the
    # interleaved and the text-only decisions
    text_verdict: Any = None
    # the kept paragraphs with personal data replaced (filters.pii.Redacted, one each):
    # made once for the interleaved and the text-only outputs, for a page whose text passed
    redacted: List[Any] = field(default_factory=list)

    @property
    def joined(self) -> str:
        return " ".join(self.texts)


def _drop(page: Page, reason: AnyReason, message: str = "", status: Status = DROPPED, scores=None,
          snippet: str = "", level: Level = RECORD) -> Outcome:
    return Outcome.at(level, status, page.provenance, page.url, reason, scores=scores or {}, snippet=snippet,
                      message=message)


class _WithLanguageId(AccountedDoFn):
    def __init__(self, cfg: CurationConfig):
        self.cfg = cfg
        self.lid = None

    def setup(self):
        self.lid = LanguageIdentifier(self.cfg.language.model_path, self.cfg.language.max_chars)
        # rules scoped to a crawler name apply when they name ours (fetch.user_agent's product)
        self.agents = (self.cfg.fetch.user_agent.partition("/")[0],)

    def drops(self, page: Page, reason: AnyReason, has_img: bool = True, **kw):
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
            yield from self.drops(page, Reason.TOO_LARGE, scores={"bytes": len(page.payload)})
            return
        try:
            text, _ = decode_html(page.payload, page.content_type)
        except Exception as exc:
            yield from self.drops(page, Reason.UNDECODABLE_HTML, message=f"{type(exc).__name__}: {exc}", status=ERROR)
            return
        images_opted_out = ""
        if self.cfg.safety.respect_opt_out:   # the response's X-Robots-Tag and TDM headers, the page's <meta>
            opt = check_page_opt_out(page.policy_headers, text, agents=self.agents)
            if not opt.keep:
                yield from self.drops(page, opt.reason, scores=opt.scores)
                return
            images_opted_out = opt.scores.get("image_opt_out") or ""
        has_img = has_img_tag(text)
        runs = visible_runs(text)
        if not has_img:
            yield self.outcome(_drop(page, Reason.NO_IMG_TAG, snippet=joined_text(runs, SNIPPET_CHARS)))
            if not self.cfg.output.text:
                return
        lang = self.cfg.language
        crude = prose_of(runs, lang.max_chars)
        verdict = language_filter(self.lid, crude, lang.language, lang.cheap_min_score)
        if not verdict.keep:
            yield from self.drops(page, verdict.reason, has_img, scores=dict(verdict.scores, stage="cheap"),
                                  snippet=crude)
            return
        yield DecodedPage(page, text, has_img, crude, images_opted_out)


class ExtractPage(_WithLanguageId):
    """Main content in reading order (trafilatura) within the page's time budget,
    spam paragraphs cut, the language of what is left; for an English page with
    images (and pairs on), its ``<img>`` elements and their captions too. The page
    is parsed once for both (``filters.captions.read_page``, one call in the page
    child): one time budget covers the parse, the extraction and the ``<img>`` scan."""

    def setup(self):
        super().setup()
        self.parser = TimeBoundCalls(self.cfg.records.page_time_budget_s)

    def teardown(self):
        self.parser.close()

    def process(self, decoded: DecodedPage, eval_index=None):
        cfg = self.cfg
        page = decoded.page
        has_img = decoded.has_img
        # Only what an HTML parser reads needs its tags' attributes capped: the cheap
        # checks before read tags by regex, whatever their length.
        text = limit_attributes(decoded.text, cfg.records.max_attributes)
        scan = has_img and cfg.output.pairs        # the <img> scan of the pairs, from the same parse
        try:
            read = self.parser.call(read_page, text, page.url, scan)
        except OverBudget as exc:
            yield from self.drops(page, Reason.OVER_TIME_BUDGET, has_img, message=f"extraction {exc}",
                                  scores={"budget_s": cfg.records.page_time_budget_s})
            return
        except Exception as exc:              # ChildFailed: extraction raised in the child
            yield from self.drops(page, Reason.EXTRACTION_FAILED, has_img, message=f"{type(exc).__name__}: {exc}",
                                  status=ERROR)
            return
        content = read.content
        if not content.items:
            yield from self.drops(page, Reason.EXTRACTION_EMPTY, has_img, snippet=rough_text(decoded.text, SNIPPET_CHARS))
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
            # safe to publish: the share of flagged words (OBELICS's rule, on the kept text)
            flagged = check_flagged_words(" ".join(kept_texts), cfg.safety.max_flagged_word_ratio)
            if not flagged.keep:
                yield from self.drops(page, flagged.reason, has_img, scores=flagged.scores,
                                      snippet=" ".join(kept_texts))
                return
        if eval_index is not None:      # a long n-gram of an evaluation text: the page is a leak
            match = eval_index.text_contaminated(" ".join(kept_texts))
            if match:
                leak = contamination_verdict("ngram", match)
                yield from self.drops(page, leak.reason, has_img, scores=leak.scores, snippet=" ".join(kept_texts))
                return
        out = ExtractedPage(page, content.title, content.items, kept, removed,
                            {"language": verdict.scores["language"],
                             "language_score": verdict.scores[f"{lang.language}_score"]},
                            has_img, texts=kept_texts, text_verdict=filter_document_text(kept_texts, cfg.text),
                            images_opted_out=decoded.images_opted_out)
        if out.text_verdict.keep:
            out.redacted = PiiCounts(cfg).redact_each(kept_texts)
        if scan:
            out.images = read.images
            if read.scan_error:
                out.scan_failure = (ERROR, Reason.EXTRACTION_FAILED, f"<img> scan: {read.scan_error}")
        yield out


class PiiCounts:
    """Personal data in a candidate's text replaced by the fixed placeholders
    (filters/pii.py), counted: the row builders count what each corpus keeps."""

    def __init__(self, cfg: CurationConfig):
        s = cfg.safety
        self.emails, self.ips, self.phones = s.redact_emails, s.redact_ips, s.redact_phones
        self.counts: Dict[str, int] = {}

    def _redacted(self, text: str) -> Redacted:
        if not (self.emails or self.ips or self.phones):
            return Redacted(text, {})
        return redact_pii(text, phones=self.phones, emails=self.emails, ips=self.ips)

    def redact_each(self, texts: List[str]) -> List[Redacted]:
        """Each text redacted, nothing counted yet (what several outputs share)."""
        return [self._redacted(t) for t in texts]

    def take(self, out: Redacted) -> str:
        """A redacted text this candidate keeps: its replacements counted."""
        for kind, n in out.counts.items():
            if n:
                self.counts[kind] = self.counts.get(kind, 0) + n
        return out.text

    def redact(self, text: str) -> str:
        return self.take(self._redacted(text))

    def scores(self) -> Dict[str, Any]:
        return {PII_SCORE: dict(self.counts)} if self.counts else {}


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
        flags, paragraphs = iter(ex.kept), iter(ex.redacted)
        pii = PiiCounts(self.cfg)
        for item in ex.items:
            if item.kind == "text":
                if next(flags):
                    items.append({"type": "text", "text": pii.take(next(paragraphs))})
            else:
                items.append({"type": "image", "url": item.url or "", "src": item.src,
                              "alt": pii.redact(item.alt) if item.alt else item.alt,
                              "title": pii.redact(item.title) if item.title else item.title})
        n_images = sum(1 for i in items if i["type"] == "image")
        shape = interspersed(n_images, len(items) - n_images)
        if not shape.keep:
            yield self.outcome(Outcome.of(RECORD, shape, page.provenance, page.url, snippet=ex.joined))
            return
        self.progress.add("candidates")
        title = pii.redact(ex.title) if ex.title else ex.title
        yield Candidate(page.doc_id, page.url, page.date, title, page.provenance, items,
                        {**text_scores(ex, verdict.scores), **pii.scores()}, images_opted_out=ex.images_opted_out)


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
            yield self.outcome(_drop(page, Reason.TOO_FEW_WORDS_FOR_TEXT, level=TEXT, snippet=ex.joined,
                                     scores={"words": words}))
            return
        pii = PiiCounts(self.cfg)
        texts = [{"type": "text", "text": pii.take(r)} for r in ex.redacted]
        yield Candidate(page.doc_id, page.url, page.date, pii.redact(ex.title) if ex.title else ex.title,
                        page.provenance, texts,
                        {**text_scores(ex, verdict.scores), **pii.scores()})


class ToPairs(_WithLanguageId):
    """Every <img> of an English page -> a ``PairCandidate``, or dropped with a reason."""

    def setup(self):
        super().setup()
        self.sites = BlockedSites(self.cfg.safety)     # image URLs on blocked sites

    def process(self, ex: ExtractedPage, eval_index=None):
        page, p = ex.page, ex.page.provenance
        if ex.scan_failure is not None:
            status, reason, message = ex.scan_failure
            yield self.outcome(Outcome.at(PAIR, ENTERED, p, page.url))
            yield self.outcome(Outcome.at(PAIR, status, p, page.url, reason, message=message))
            return
        seen = set()
        # a page repeats its images and captions (a gallery's thumbnails, "logo" in every
        # card): each URL's path and each caption judged once per page (sites are judged
        # once per site by BlockedSites itself)
        furniture: Dict[str, Optional[str]] = {}
        judged: Dict[str, Any] = {}
        for img in ex.images or ():
            url = img.url or img.src
            yield self.outcome(Outcome.at(PAIR, ENTERED, p, url))
            if not img.url or not img.url.lower().startswith(("http://", "https://")):
                yield self.outcome(Outcome.at(PAIR, DROPPED, p, url, Reason.UNSUPPORTED_URL, snippet=img.caption))
                continue
            if ex.images_opted_out:
                yield self.outcome(Outcome.at(PAIR, DROPPED, p, url, Reason.OPTED_OUT_IMAGE, snippet=img.caption,
                                              scores={"opt_out_signal": ex.images_opted_out}))
                continue
            site = self.sites.check_image_url(img.url)
            if not site.keep:
                yield self.outcome(Outcome.of(PAIR, site, p, url, snippet=img.caption))
                continue
            if img.url not in furniture:
                furniture[img.url] = furniture_url(img.url, self.cfg.images.furniture_url_words)
            word = furniture[img.url]
            if word:
                yield self.outcome(Outcome.at(PAIR, DROPPED, p, url, Reason.FURNITURE_URL, scores={"word": word},
                                              snippet=img.caption))
                continue
            verdict = judged.get(img.caption)
            if verdict is None:
                verdict = judged[img.caption] = judge_caption(img.caption, self.cfg.captions, self.lid,
                                                              self.cfg.language.language, page_url=page.url)
            if not verdict.keep:
                yield self.outcome(Outcome.of(PAIR, verdict, p, url, snippet=img.caption))
                continue
            leak = None
            if eval_index is not None:
                if eval_index.caption_contaminated(img.caption):
                    leak = contamination_verdict("caption", img.caption)
                elif (match := eval_index.text_contaminated(img.caption)):
                    leak = contamination_verdict("ngram", match)
            if leak is not None:
                yield self.outcome(Outcome.of(PAIR, leak, p, url, snippet=img.caption))
                continue
            key = (img.url, img.caption.lower())
            if key in seen:
                yield self.outcome(Outcome.at(PAIR, DROPPED, p, url, Reason.DUPLICATE_IN_PAGE, snippet=img.caption))
                continue
            if len(seen) >= self.cfg.captions.max_pairs_per_page:
                yield self.outcome(Outcome.at(PAIR, DROPPED, p, url, Reason.OVER_PAGE_CAP, snippet=img.caption))
                continue
            seen.add(key)
            pii = PiiCounts(self.cfg)
            caption = pii.redact(img.caption)
            yield PairCandidate(page.doc_id, page.url, page.date, p, img.index, img.url, caption, img.source,
                                float(verdict.scores.get("language_score", 0.0)), dict(pii.counts))


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

    def __init__(self, cfg: CurationConfig, progress_dir: Optional[str] = None, eval_index=None):
        super().__init__()
        self.cfg = cfg
        self.progress_dir = progress_dir
        self.eval_index = eval_index      # AsSingleton of filters.decontaminate.DecontaminationIndex, or None

    def expand(self, pages) -> Candidates:
        """``pages``: a PCollection, or a tuple of them (the pages as read, the pages
        of resolved revisits): each part is checked and extracted in the stage that
        made it, so no page waits in a Flatten's buffer; the results are joined."""
        cfg, out = self.cfg, self.cfg.output
        parts = pages if isinstance(pages, tuple) else (pages,)
        documents, sightings, texts, pairs, outcomes = [], [], [], [], []

        side = {} if self.eval_index is None else {"eval_index": self.eval_index}

        def decide(extracted, label: str, dofn, into: list, **kw):
            result = extracted | label >> beam.ParDo(dofn, **kw).with_outputs(OUTCOMES, SIGHTINGS, main="kept")
            into.append(result["kept"])
            outcomes.append(result[OUTCOMES])
            return result

        for n, part in enumerate(parts):
            tag = "" if n == 0 else f" [{n}]"
            cheap = part | f"CheapChecks(size,img,language){tag}" >> beam.ParDo(
                CheapPageChecks(cfg)).with_outputs(OUTCOMES, main="pages")
            extracted = cheap["pages"] | f"ExtractAndCheckLanguage{tag}" >> beam.ParDo(
                ExtractPage(cfg), **side).with_outputs(OUTCOMES, main="pages")
            outcomes += [cheap[OUTCOMES], extracted[OUTCOMES]]
            sightings.append(decide(extracted["pages"], f"CleanTextAndImagesInText{tag}",
                                    ToDocument(cfg, self.progress_dir), documents)[SIGHTINGS])
            if out.text:
                decide(extracted["pages"], f"TextOnlyDocuments{tag}", ToTextDocument(cfg), texts)
            if out.pairs:
                decide(extracted["pages"], f"ImageCaptionPairs{tag}", ToPairs(cfg), pairs, **side)

        def joined(pcolls, label):
            if not pcolls:
                return None
            return pcolls[0] if len(pcolls) == 1 else tuple(pcolls) | label >> beam.Flatten()
        return Candidates(joined(documents, "AllCandidates"), joined(sightings, "AllImageSightings"),
                          joined(texts, "AllTextDocuments"), joined(pairs, "AllPairCandidates"),
                          tuple(map(ledger, outcomes)))
