"""Main-content extraction measured on ../shared/data/pages-eval (not a test).

For the English pages (English by fastText on trafilatura's full extraction with
default settings), what the job would write for each page, scored as trafilatura's
own evaluation scores: a ``with`` snippet found in the text is a true positive,
missing a false negative; a ``without`` snippet found is a false positive. Beside
``trafilatura.extract(html)`` with default settings on the same pages:

* text corpus: the job's own DoFns (cheap checks, extraction, paragraph cuts,
  language, the text-only decision) run on each page in this process; a page they
  drop counts as an empty extraction;
* interleaved-document text: the same, through the interleaved decision
  (``ToDocument``) up to "images interspersed with text" (pages-eval holds no
  image records, so the image join is left out; a page without an ``<img>`` has no
  document and is left out of this line). A page the interleaved rules drop (its
  images outside the main content, say) counts as empty, so its recall measures the
  rules as much as extraction; the line after it scores extraction alone, on the
  pages that became documents.

    scripts/in-venv python benchmarks/extraction.py [--misses]

``--misses`` lists, for the text corpus, every page where a main-content snippet is
missing and why: the page dropped (with its reason), the paragraph holding it cut
(with the cut's reason), or the extraction never had it.
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data" / "pages-eval"
_SPACES = re.compile(r"\s+")


def norm(text: str) -> str:
    return _SPACES.sub(" ", text or "").strip()


class Score:
    def __init__(self):
        self.tp = self.fn = self.fp = self.tn = 0

    def add(self, text: str, truth: dict) -> None:
        text = norm(text)
        for s in truth.get("with", []):
            if norm(s) in text:
                self.tp += 1
            else:
                self.fn += 1
        for s in truth.get("without", []):
            if norm(s) in text:
                self.fp += 1
            else:
                self.tn += 1

    def row(self, name: str, pages: int) -> str:
        p = self.tp / (self.tp + self.fp) if self.tp + self.fp else 0.0
        r = self.tp / (self.tp + self.fn) if self.tp + self.fn else 0.0
        f = 2 * p * r / (p + r) if p + r else 0.0
        return f"{name:<44} {pages:>5} {p:>9.3f} {r:>7.3f} {f:>6.3f}"


def run_dofn(dofn, element):
    """The elements a DoFn yields for one input, its outcomes set apart."""
    from apache_beam.pvalue import TaggedOutput
    out, outcomes = [], []
    for x in dofn.process(element) or ():
        (outcomes if isinstance(x, TaggedOutput) else out).append(x)
    return out, outcomes


def explain_misses(url: str, truth: dict, text: str, outcomes, extracted) -> list:
    """Why the text corpus lacks each ``with`` snippet of a page."""
    from filters.text_quality import paragraph_cuts
    missing = [s for s in truth.get("with", []) if norm(s) not in norm(text)]
    if not missing:
        return []
    drops = [o.value.reason for o in outcomes if getattr(o.value, "status", "") in ("dropped", "error")]
    if drops:
        return [f"{url}: page dropped ({', '.join(sorted(set(drops)))}), {len(missing)} snippets lost"]
    lines = []
    paragraphs = [i.text for i in extracted.items if i.kind == "text"] if extracted else []
    cuts = paragraph_cuts(paragraphs, extracted.cfg_text) if extracted else []
    for snippet in missing:
        where = [c for p, c in zip(paragraphs, cuts) if norm(snippet) in norm(p)]
        why = f"paragraph cut: {where[0]}" if where and where[0] else (
            "kept paragraph (split across paragraphs?)" if where else "not in the extraction")
        lines.append(f"{url}: {why}: {snippet[:80]!r}")
    return lines


def main() -> None:
    import trafilatura
    from filters.config import CurationConfig
    from filters.html import decode_html
    from filters.language import LanguageIdentifier
    from transforms.pages import CheapPageChecks, ExtractPage, ToDocument, ToTextDocument
    from transforms.records import Page, Provenance
    from archives.records import ArchiveRecord, iter_archive

    truth = json.loads((DATA / "evaldata.json").read_text())
    cfg = CurationConfig()
    lid = LanguageIdentifier(None, 10 ** 9)
    cheap, extract, to_doc, to_text = CheapPageChecks(cfg), ExtractPage(cfg), ToDocument(cfg), ToTextDocument(cfg)
    for dofn in (cheap, extract, to_doc, to_text):
        dofn.setup()
    ours_text, ours_docs, theirs, theirs_docs = Score(), Score(), Score(), Score()
    ours_kept, theirs_kept = Score(), Score()
    pages = doc_pages = kept_pages = 0
    misses = []
    cheap_drops = []                    # English pages the cheap check (before extraction) dropped
    t_ours = t_theirs = 0.0
    path = str(DATA / "trafilatura-eval-dev-00.warc.gz")
    for rec in iter_archive(open(path, "rb"), path):
        if not isinstance(rec, ArchiveRecord) or rec.rec_type != "response" or rec.target_uri not in truth:
            continue
        html, _ = decode_html(rec.payload, rec.http_header("content-type"))
        t0 = time.perf_counter()
        reference = trafilatura.extract(html) or ""
        t_theirs += time.perf_counter() - t0
        if not reference or lid.score(reference, "en")[0] != "en":
            continue
        pages += 1
        theirs.add(reference, truth[rec.target_uri])
        t0 = time.perf_counter()
        page = Page(rec.target_uri, rec.date, rec.http_header("content-type"), rec.payload,
                    Provenance(path, rec.offset))
        text, document, outcomes, ex = "", None, [], None
        decoded, outcomes = run_dofn(cheap, page)
        if not decoded:
            cheap_drops.append(f"{rec.target_uri}: {[o.value.reason for o in outcomes]}")
        if decoded:
            extracted, outcomes = run_dofn(extract, decoded[0])
            if extracted:
                ex = extracted[0]
                rows, outcomes = run_dofn(to_text, extracted[0])
                text = "\n".join(i["text"] for i in rows[0].items) if rows else ""
                if extracted[0].has_img:
                    docs, _ = run_dofn(to_doc, extracted[0])
                    document = "\n".join(i["text"] for i in docs[0].items if i["type"] == "text") if docs else ""
        t_ours += time.perf_counter() - t0
        ours_text.add(text, truth[rec.target_uri])
        if "--misses" in sys.argv:
            if ex is not None:
                ex.cfg_text = cfg.text
            misses.extend(explain_misses(rec.target_uri, truth[rec.target_uri], text, outcomes, ex))
        if decoded and decoded[0].has_img:
            doc_pages += 1
            ours_docs.add(document or "", truth[rec.target_uri])
            theirs_docs.add(reference, truth[rec.target_uri])
            if document:
                kept_pages += 1
                ours_kept.add(document, truth[rec.target_uri])
                theirs_kept.add(reference, truth[rec.target_uri])
    extract.teardown()
    print(f"pages-eval, English pages (fastText on trafilatura's full extraction): {pages}")
    print(f"{'':<44} {'pages':>5} {'precision':>9} {'recall':>7} {'F1':>6}")
    print(ours_text.row("text corpus (kosmos curate's decisions)", pages))
    print(theirs.row("trafilatura.extract(html), defaults", pages))
    print(ours_docs.row("interleaved-document text (pages with <img>)", doc_pages))
    print(theirs_docs.row("trafilatura.extract(html), same pages", doc_pages))
    print(ours_kept.row("interleaved, pages that became documents", kept_pages))
    print(theirs_kept.row("trafilatura.extract(html), same pages", kept_pages))
    print(f"time: ours {t_ours:.1f} s (cheap checks, extraction, filters), trafilatura {t_theirs:.1f} s")
    print(f"English pages dropped by the cheap check: {len(cheap_drops)} of {pages}")
    for line in cheap_drops:
        print("  " + line)
    if misses:
        print("\nmain-content snippets missing from the text corpus, and why:")
        print("\n".join(misses))


if __name__ == "__main__":
    main()
