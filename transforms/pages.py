"""Pages to candidates for the three outputs: the cheap checks first, then
extraction, then the text filters. Each step sends its rejects, with the reason,
to ``outcomes``, once per output the page was on its way to:

* interleaved documents (level ``record``): pages with an ``<img>`` that pass
  everything, including "images interspersed with text";
* text-only documents (level ``text``): English pages with clean text, with or
  without images;
* image-caption pairs (level ``pair``): every ``<img>`` of a page whose extracted
  text is English, whatever becomes of the page otherwise."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Optional, Tuple

import apache_beam as beam
from apache_beam import pvalue

from contract.reasons import DROPPED, ENTERED, ERROR, PAIR, RECORD, TEXT
from filters.captions import find_image_captions, judge_caption
from filters.config import CurationConfig
from filters.documents import interspersed
from filters.html import decode_html, extract_content, has_img_tag, limit_attributes, rough_text
from filters.language import LanguageIdentifier, language_filter
from filters.text_quality import filter_document_text, filter_paragraphs
from transforms.accounting import OUTCOMES, AccountedDoFn
from transforms.budget import ChildFailed, OverBudget, TimeBoundCalls
from transforms.progress import ProgressCounters
from transforms.records import Candidate, Outcome, Page, PairCandidate

TEXT_DOCS = "text_documents"
PAIRS = "pairs"


@dataclass
class DecodedPage:
    page: Page
    text: str
    has_img: bool = True      # False: on its way to the text output only


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
        text = limit_attributes(text, self.cfg.records.max_attributes)
        has_img = has_img_tag(text)
        if not has_img:
            yield self.outcome(_drop(page, "no_img_tag", snippet=rough_text(text, 20_000)))
            if not self.cfg.output.text:
                return
        lang = self.cfg.language
        crude = rough_text(text)
        verdict = language_filter(self.lid, crude, lang.language, lang.cheap_min_score)
        if not verdict.keep:
            yield from self.drops(page, verdict.reason, has_img, scores=dict(verdict.scores, stage="cheap"),
                                  snippet=crude)
            return
        yield DecodedPage(page, text, has_img)


class ExtractDocuments(_WithLanguageId):
    """Main content in reading order (trafilatura), spam paragraphs cut, then the
    language, spam/gibberish and "images interspersed with text" checks."""

    def __init__(self, cfg: CurationConfig, progress_dir: Optional[str] = None):
        super().__init__(cfg)
        self.progress_dir = progress_dir

    def setup(self):
        super().setup()
        self.parser = TimeBoundCalls(self.cfg.records.page_time_budget_s)
        self.progress = ProgressCounters(self.progress_dir)

    def teardown(self):
        self.parser.close()

    def process(self, decoded: DecodedPage):
        cfg = self.cfg
        page = decoded.page
        has_img = decoded.has_img
        try:
            content = self.parser.call(extract_content, decoded.text, page.url)
        except OverBudget as exc:
            yield from self.drops(page, "over_time_budget", has_img, message=f"extraction {exc}",
                                  scores={"budget_s": cfg.records.page_time_budget_s})
            return
        except Exception as exc:              # ChildFailed: extraction raised in the child
            yield from self.drops(page, "extraction_failed", has_img, message=f"{type(exc).__name__}: {exc}",
                                  status=ERROR)
            return
        if not content.items:
            yield from self.drops(page, "extraction_empty", has_img, snippet=rough_text(decoded.text, 20_000))
            return
        texts = [i.text for i in content.items if i.kind == "text"]
        kept_flags, removed = filter_paragraphs(texts, cfg.text)
        kept_texts = [t for t, k in zip(texts, kept_flags) if k]

        lang = cfg.language
        joined = " ".join(kept_texts)
        verdict = language_filter(self.lid, joined, lang.language, lang.min_score)
        if not verdict.keep:
            yield from self.drops(page, verdict.reason, has_img, scores=dict(verdict.scores, stage="extracted"),
                                  snippet=joined)
            return
        scores = {"language": verdict.scores["language"],
                  "language_score": verdict.scores[f"{lang.language}_score"]}
        if has_img and cfg.output.pairs:
            yield from self.pairs(page, decoded.text)
        text_verdict = filter_document_text(kept_texts, cfg.text)
        if not text_verdict.keep:
            yield from self.drops(page, text_verdict.reason, has_img, scores=text_verdict.scores, snippet=joined)
            return
        scores.update({k: v for k, v in text_verdict.scores.items()})
        scores["paragraphs_removed"] = sum(removed.values())
        if cfg.output.text and scores.get("words", 0) < cfg.text.min_words_text_only:
            yield self.outcome(_drop(page, "too_few_words_for_text", level=TEXT, snippet=joined,
                                     scores={"words": scores.get("words", 0)}))
        elif cfg.output.text:
            yield pvalue.TaggedOutput(TEXT_DOCS, Candidate(
                page.doc_id, page.url, page.date, content.title, page.provenance,
                [{"type": "text", "text": t} for t in kept_texts], dict(scores)))
        if not has_img:
            return

        items = []
        flags = iter(kept_flags)
        for item in content.items:
            if item.kind == "text":
                if next(flags):
                    items.append({"type": "text", "text": item.text})
            else:
                items.append({"type": "image", "url": item.url or "", "src": item.src,
                              "alt": item.alt, "title": item.title})
        n_images = sum(1 for i in items if i["type"] == "image")
        shape = interspersed(n_images, len(items) - n_images)
        if not shape.keep:
            yield self.outcome(_drop(page, shape.reason, scores=shape.scores, snippet=joined))
            return
        self.progress.add("candidates")
        yield Candidate(page.doc_id, page.url, page.date, content.title, page.provenance, items, scores)

    def pairs(self, page: Page, html_text: str):
        """Every <img> of the (English) page: a pair candidate, or dropped with a reason."""
        p = page.provenance
        seen = set()
        try:
            images = self.parser.call(find_image_captions, html_text, page.url)
        except (OverBudget, ChildFailed) as exc:
            yield self.outcome(Outcome.at(PAIR, ENTERED, p, page.url))
            over = isinstance(exc, OverBudget)
            yield self.outcome(Outcome.at(PAIR, DROPPED if over else ERROR, p, page.url,
                                          "over_time_budget" if over else "extraction_failed",
                                          message=f"<img> scan: {exc}"))
            return
        for img in images:
            url = img.url or img.src
            yield self.outcome(Outcome.at(PAIR, ENTERED, p, url))
            if not img.url or not img.url.lower().startswith(("http://", "https://")):
                yield self.outcome(Outcome.at(PAIR, DROPPED, p, url, "unsupported_url", snippet=img.caption))
                continue
            verdict = judge_caption(img.caption, self.cfg.captions, self.lid, self.cfg.language.language)
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
            yield pvalue.TaggedOutput(PAIRS, PairCandidate(
                page.doc_id, page.url, page.date, p, img.index, img.url, img.caption, img.source,
                float(verdict.scores.get("language_score", 0.0))))


class Candidates(NamedTuple):
    """The pages that passed, per output, and what became of the others."""
    documents: beam.PCollection              # Candidate: interleaved documents awaiting images
    texts: beam.PCollection                  # Candidate: text-only documents (output.text)
    pairs: beam.PCollection                  # PairCandidate (output.pairs)
    outcomes: Tuple[beam.PCollection, ...]   # Outcome, reduced per stage by AccountOutcomes


class PagesToCandidates(beam.PTransform):
    """Pages -> :class:`Candidates`: the cheap checks, then extraction and the text
    filters, once per page for all three outputs."""

    def __init__(self, cfg: CurationConfig, progress_dir: Optional[str] = None):
        super().__init__()
        self.cfg = cfg
        self.progress_dir = progress_dir

    def expand(self, pages) -> Candidates:
        """``pages``: a PCollection, or a tuple of them (the pages as read, the pages
        of resolved revisits): each part is checked and extracted in the stage that
        made it, so no page waits in a Flatten's buffer; the results are joined."""
        parts = pages if isinstance(pages, tuple) else (pages,)
        candidates, outcomes, texts, pairs = [], [], [], []
        for n, part in enumerate(parts):
            tag = "" if n == 0 else f" [{n}]"
            cheap = part | f"CheapChecks(size,img,language){tag}" >> beam.ParDo(
                CheapPageChecks(self.cfg)).with_outputs(OUTCOMES, main="pages")
            extracted = cheap["pages"] | f"ExtractAndFilterText{tag}" >> beam.ParDo(
                ExtractDocuments(self.cfg, self.progress_dir)).with_outputs(
                    OUTCOMES, TEXT_DOCS, PAIRS, main="candidates")
            candidates.append(extracted["candidates"])
            outcomes += [cheap[OUTCOMES], extracted[OUTCOMES]]
            texts.append(extracted[TEXT_DOCS])
            pairs.append(extracted[PAIRS])

        def joined(pcolls, label):
            return pcolls[0] if len(pcolls) == 1 else tuple(pcolls) | label >> beam.Flatten()
        return Candidates(joined(candidates, "AllCandidates"), joined(texts, "AllTextDocuments"),
                          joined(pairs, "AllPairCandidates"), tuple(outcomes))
