"""Pages to candidate documents: the cheap checks first, then extraction, then the
text filters. Each step sends its rejects, with the reason, to ``outcomes``."""

from __future__ import annotations

import json
from dataclasses import dataclass

import apache_beam as beam

from filters.config import CurationConfig
from filters.documents import interspersed
from filters.html import decode_html, extract_content, has_img_tag, rough_text
from filters.language import LanguageIdentifier, language_filter
from filters.text_quality import filter_document_text, filter_paragraphs
from transforms.accounting import OUTCOMES, AccountedDoFn
from transforms.records import DROPPED, ERROR, RECORD, SNIPPET_CHARS, Candidate, Outcome, Page


@dataclass
class DecodedPage:
    page: Page
    text: str


def _drop(page: Page, reason: str, message: str = "", status: str = DROPPED, scores=None,
          snippet: str = "") -> Outcome:
    p = page.provenance
    return Outcome(RECORD, status, reason, file=p.file, offset=p.offset, inner_offset=p.inner_offset,
                   url=page.url, message=message, scores=json.dumps(scores or {}, sort_keys=True),
                   snippet=snippet[:SNIPPET_CHARS])


class _WithLanguageId(AccountedDoFn):
    def __init__(self, cfg: CurationConfig):
        self.cfg = cfg
        self.lid = None

    def setup(self):
        self.lid = LanguageIdentifier(self.cfg.language.model_path, self.cfg.language.max_chars)


class CheapPageChecks(_WithLanguageId):
    """Size, decoding, "has any <img>" and a crude language check: decided before
    the expensive extraction, so imageless or foreign pages cost little."""

    def process(self, page: Page):
        if len(page.payload) > self.cfg.records.max_html_bytes:
            yield self.outcome(_drop(page, "too_large", scores={"bytes": len(page.payload)}))
            return
        try:
            text, _ = decode_html(page.payload, page.content_type)
        except Exception as exc:
            yield self.outcome(_drop(page, "undecodable_html", f"{type(exc).__name__}: {exc}", ERROR))
            return
        if not has_img_tag(text):
            yield self.outcome(_drop(page, "no_img_tag", snippet=rough_text(text, 20_000)))
            return
        lang = self.cfg.language
        crude = rough_text(text)
        verdict = language_filter(self.lid, crude, lang.language, lang.cheap_min_score)
        if not verdict.keep:
            yield self.outcome(_drop(page, verdict.reason, scores=dict(verdict.scores, stage="cheap"),
                                     snippet=crude))
            return
        yield DecodedPage(page, text)


class ExtractDocuments(_WithLanguageId):
    """Main content in reading order (trafilatura), spam paragraphs cut, then the
    language, spam/gibberish and "images interspersed with text" checks."""

    def process(self, decoded: DecodedPage):
        cfg = self.cfg
        page = decoded.page
        try:
            content = extract_content(decoded.text, page.url)
        except Exception as exc:
            yield self.outcome(_drop(page, "extraction_failed", f"{type(exc).__name__}: {exc}", ERROR))
            return
        if not content.items:
            yield self.outcome(_drop(page, "extraction_empty", snippet=rough_text(decoded.text, 20_000)))
            return
        texts = [i.text for i in content.items if i.kind == "text"]
        kept_flags, removed = filter_paragraphs(texts, cfg.text)
        kept_texts = [t for t, k in zip(texts, kept_flags) if k]

        lang = cfg.language
        joined = " ".join(kept_texts)
        verdict = language_filter(self.lid, joined, lang.language, lang.min_score)
        if not verdict.keep:
            yield self.outcome(_drop(page, verdict.reason, scores=dict(verdict.scores, stage="extracted"),
                                     snippet=joined))
            return
        scores = {"language": verdict.scores["language"],
                  "language_score": verdict.scores[f"{lang.language}_score"]}
        text_verdict = filter_document_text(kept_texts, cfg.text)
        if not text_verdict.keep:
            yield self.outcome(_drop(page, text_verdict.reason, scores=text_verdict.scores, snippet=joined))
            return
        scores.update({k: v for k, v in text_verdict.scores.items()})
        scores["paragraphs_removed"] = sum(removed.values())

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
        yield Candidate(page.doc_id, page.url, page.date, content.title, page.provenance, items, scores)


class PagesToCandidates(beam.PTransform):
    def __init__(self, cfg: CurationConfig):
        super().__init__()
        self.cfg = cfg

    def expand(self, pages):
        cheap = pages | "CheapChecks(size,img,language)" >> beam.ParDo(
            CheapPageChecks(self.cfg)).with_outputs(OUTCOMES, main="pages")
        extracted = cheap["pages"] | "ExtractAndFilterText" >> beam.ParDo(
            ExtractDocuments(self.cfg)).with_outputs(OUTCOMES, main="candidates")
        outcomes = (cheap[OUTCOMES], extracted[OUTCOMES]) | "PageOutcomes" >> beam.Flatten()
        return extracted["candidates"], outcomes
