"""Boilerplate and low-quality text (filters/boilerplate.py) on real pages."""

from pathlib import Path

import pytest

from conftest import SHARED, shared_warc
from filters.boilerplate import filter_boilerplate, navigation_paragraph
from filters.config import TextQualityConfig
from filters.html import decode_html, extract_content
from filters.text_quality import filter_document_text, filter_paragraphs
from archives.records import ArchiveRecord, iter_archive

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
    # pages-eval's pluralsight page: a directory tree in a code block
    ("venv/ |-- bin/ | |-- python | |-- pip | |-- activate | |-- <other binaries/CLI tools> |-- lib/ | |-- "
     "python3.7/ | | |-- site-packages/ | | | |-- <pip-installed packages> |-- include/ | |-- <config files>", False),
])
def test_navigation_paragraphs(text, nav):
    assert navigation_paragraph(text) is nav


def _page_paragraphs(warc: str, url_part: str):
    path = shared_warc(warc)
    for rec in iter_archive(open(path, "rb"), path):
        if (isinstance(rec, ArchiveRecord) and rec.rec_type == "response"
                and rec.target_uri.rstrip("/").endswith(url_part)):
            html, _ = decode_html(rec.payload, "text/html")
            texts = [i.text for i in extract_content(html, rec.target_uri).items if i.kind == "text"]
            kept, removed = filter_paragraphs(texts, CFG)
            return [t for t, k in zip(texts, kept) if k], removed
    raise AssertionError(f"{url_part} not in {warc}")


def test_real_navigation_listing_and_shop_pages_are_dropped_articles_kept():
    listing, _ = _page_paragraphs("aut__example.warc.gz", "/details/etree")
    # "Band Live at Venue on date, N downloads" lines, "Average rating" repeated
    assert filter_boilerplate(listing, CFG).reason in ("navigation_heavy", "repeated_lines")
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


def _english_paragraphs(path: str, url: str):
    """The paragraphs the job keeps of an English page: the cuts of every page, then
    those that read English words."""
    from filters.text_quality import paragraph_cuts
    for rec in iter_archive(open(path, "rb"), path):
        if isinstance(rec, ArchiveRecord) and rec.rec_type == "response" and rec.target_uri == url:
            html, _ = decode_html(rec.payload, "text/html")
            texts = [i.text for i in extract_content(html, url).items if i.kind == "text"]
            return texts, paragraph_cuts(texts, CFG, english=True)
    raise AssertionError(f"{url} not in {path}")


def test_a_credits_list_is_cut_and_prose_of_any_language_is_not():
    from filters.boilerplate import word_list_paragraph
    texts, cuts = _english_paragraphs(shared_warc("aut__example.warc.gz"), "http://www.archive.org/web/web.php")
    names = [t for t in texts if t.startswith("Aaron Parkening Aaron Stewart")]
    assert len(names) == 1 and len(names[0].split()) > 200
    assert cuts[texts.index(names[0])] == "word_list"
    assert sum(c == "word_list" for c in cuts) == 1
    assert not word_list_paragraph(
        "Verträge über die Belieferung von Haushaltskunden mit Energie außerhalb der Grundversorgung werden als "
        "Sonderverträge bezeichnet. Diese Sonderverträge unterliegen einer Kontrolle nach den Vorschriften über "
        "Allgemeine Geschäftsbedingungen, die Preisanpassungsklauseln müssen transparent und angemessen sein.")
    assert not word_list_paragraph(
        "FROM python:3.7 RUN pip install pipenv COPY Pipfile* /tmp RUN cd /tmp && pipenv lock --requirements > "
        "requirements.txt RUN pip install -r /tmp/requirements.txt COPY . /tmp/myapp RUN pip install /tmp/myapp "
        "CMD flask run exampleapp:app")


def test_the_closing_sections_of_an_article_are_cut():
    """Wikipedia's Mona Lisa: from "See also" on (citations, link lists, navigation
    boxes), nothing is prose; everything before it stays."""
    texts, cuts = _english_paragraphs(shared_warc("webarchive-discovery__flashfrozen-jwat-recompressed.warc.gz"),
                                      "http://en.wikipedia.org/wiki/Mona_Lisa")
    start = texts.index("See also")
    assert cuts[start] == "tail_section" and all(cuts[start:])       # some were cut as navigation first
    assert "tail_section" not in cuts[:start]
    assert any(t.startswith("^ ") for t in texts[start:])           # the citations are among them
    # "References" early in a page is a heading of its content, not its end
    from filters.text_quality import english_cuts
    early = ["References", "An essay on how the citations of this page work, and why. " * 8,
             "Then the rest of the article follows, for a good while, as it would. " * 8]
    assert english_cuts(early, [True] * 3, CFG) == [None, None, None]


def test_a_table_of_settings_is_not_repetition_when_the_page_is_prose():
    """pages-eval's FIFA settings page, as a recall-minded extraction reads it: its 18
    prose paragraphs and a settings table whose cells ("On", "Off", "Default") come out
    one paragraph each. The cells repeat one another; the page is still prose."""
    path = str(SHARED / "pages-eval" / "trafilatura-eval-dev-00.warc.gz")
    texts, cuts = _english_paragraphs(path, "https://www.fifplay.com/fifa-21-game-settings/")
    prose = [t for t, c in zip(texts, cuts) if c is None and len(t.split()) >= 20]
    assert len(prose) >= 10
    table = [cell for row in range(30) for cell in (f"Setting {row + 1}", ("On", "Off", "Default")[row % 3])]
    verdict = filter_document_text(prose + table, CFG)
    assert verdict.keep, verdict
    assert verdict.scores["duplicate_line_fraction"] > CFG.max_duplicate_line_fraction
    # the same table with one sentence around it is a listing of repeats
    assert filter_document_text(prose[:1] + table, CFG).reason == "repeated_lines"
