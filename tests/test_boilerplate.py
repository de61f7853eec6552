"""Boilerplate and low-quality text (filters/boilerplate.py) on real pages."""

from pathlib import Path

import pytest

from conftest import SHARED, shared_warc
from filters.boilerplate import filter_boilerplate, navigation_paragraph
from filters.config import TextQualityConfig
from filters.html import decode_html, extract_content
from filters.text_quality import filter_document_text, filter_paragraphs
from transforms.warc import ArchiveRecord, iter_archive

CFG = TextQualityConfig()


@pytest.mark.parametrize("text,nav", [
    ("Web | Moving Images | Texts | Audio | Software | Education | Patron Info | About IA", True),
    ("UploadAnonymous User (login or join us)", True),
    ("Home", True),
    ("Skip to main content", True),
    ("Your e-mail address *", True),
    ("About | Media | Search | Contact", True),
    ("The register of births was kept in the church.", False),
    ("Please register to comment on the article and join us in the discussion of this week's story.", False),
    ("Fruit and vegetables | Meat and fish | Dairy are the three aisles most shoppers visit first, "
     "the survey found.", False),
])
def test_navigation_paragraphs(text, nav):
    assert navigation_paragraph(text) is nav


def _page_paragraphs(warc: str, url_part: str):
    path = shared_warc(warc)
    for rec in iter_archive(open(path, "rb"), path):
        if isinstance(rec, ArchiveRecord) and rec.rec_type == "response" and rec.target_uri.rstrip("/").endswith(url_part):
            html, _ = decode_html(rec.payload, "text/html")
            texts = [i.text for i in extract_content(html, rec.target_uri).items if i.kind == "text"]
            kept, removed = filter_paragraphs(texts, CFG)
            return [t for t, k in zip(texts, kept) if k], removed
    raise AssertionError(f"{url_part} not in {warc}")


def test_real_navigation_listing_and_shop_pages_are_dropped_articles_kept():
    listing, _ = _page_paragraphs("aut__example.warc.gz", "/details/etree")
    assert filter_boilerplate(listing, CFG).reason == "navigation_heavy"       # "Band Live at Venue on date" lines
    shop, _ = _page_paragraphs("node-warc__books.toscrape.warc", "books.toscrape.com")
    assert filter_document_text(shop, CFG).reason == "repeated_lines"          # "In stock" twenty times
    article, removed = _page_paragraphs("aut__example.warc.gz", "/web/web.php")
    verdict = filter_document_text(article, CFG)
    assert verdict.keep, verdict
    assert removed.get("navigation", 0) >= 2                                   # "Home", "(login or join us)"
    assert not any(navigation_paragraph(p) for p in article)


def test_real_articles_keep_their_text():
    """The English articles of ../shared/data/html pass the document rules (the job
    runs them on English text only: the stop words are English ones)."""
    from filters.language import LanguageIdentifier
    lid = LanguageIdentifier()
    kept = total = 0
    for path in sorted((SHARED / "html").glob("*.html")):
        html, _ = decode_html(Path(path).read_bytes())
        texts = [i.text for i in extract_content(html, "https://example.org/").items if i.kind == "text"]
        if sum(len(t.split()) for t in texts) < 300 or lid.score(" ".join(texts), "en")[0] != "en":
            continue
        flags, _ = filter_paragraphs(texts, CFG)
        total += 1
        kept += filter_boilerplate([t for t, k in zip(texts, flags) if k], CFG).keep
    assert total >= 10 and kept == total
