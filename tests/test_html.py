"""Decoding, cheap checks and ordered extraction on real pages."""


from conftest import SHARED, shared_warc
from filters.html import base_href, decode_html, extract_content, has_img_tag, resolve_url, rough_text
from filters.urls import normalize_url
from filters.records import classify
from archives.records import ArchiveRecord, iter_archive


def test_resolve_against_base_href_and_page_url():
    assert resolve_url("img/a.png", "http://example.com/dir/page.html", None) == "http://example.com/dir/img/a.png"
    assert resolve_url("img/a.png", "http://example.com/dir/page.html", "http://cdn.example.net/static/") == \
        "http://cdn.example.net/static/img/a.png"
    assert resolve_url("/a.png#frag", "HTTP://Example.COM/x", None) == "http://example.com/a.png"
    assert resolve_url("//other.org/b.jpg", "https://example.com/", None) == "https://other.org/b.jpg"
    assert resolve_url("", "http://example.com/", None) is None
    assert normalize_url("HTTP://WWW.Example.com/A.png#x") == "http://www.example.com/A.png"


def test_base_href_parsed_from_head():
    html = '<html><head><BASE HREF="http://static.example.org/root/"></head><body><img src="x.png"></body></html>'
    assert base_href(html) == "http://static.example.org/root/"
    assert has_img_tag(html) and not has_img_tag("<p>no images</p>")


def test_decoding_follows_http_then_meta_charset():
    body = "<html><head><meta charset='iso-8859-1'></head><body>Æblegrød</body></html>".encode("latin-1")
    text, enc = decode_html(body)
    assert "Æblegrød" in text and enc == "iso8859-1"
    text, enc = decode_html("naïve".encode("utf-8"), "text/html; charset=UTF-8")
    assert text == "naïve" and enc == "utf-8"
    text, enc = decode_html(b"caf\xe9 au lait")   # undeclared, not UTF-8
    assert text == "café au lait" and enc == "cp1252"


def test_rough_text_drops_scripts_and_tags():
    html = "<html><script>var x = 'hidden';</script><style>p{}</style><p>Hello &amp; welcome</p></html>"
    assert rough_text(html) == "Hello & welcome"


def mona_lisa_page():
    path = shared_warc("webarchive-discovery__flashfrozen-jwat-recompressed.warc.gz")
    for rec in iter_archive(open(path, "rb"), path):
        if isinstance(rec, ArchiveRecord) and rec.rec_type == "response" and classify(rec).kind.value == "page":
            return rec
    raise AssertionError("no page")


def test_article_images_stay_in_reading_order():
    """Wikipedia's Mona Lisa: each picture between the paragraphs it stands between on
    the page, its protocol-relative URL taking the page's scheme."""
    rec = mona_lisa_page()
    text, _ = decode_html(rec.payload, rec.http_header("content-type"))
    content = extract_content(text, rec.target_uri)
    items = content.items
    images = [i.url for i in items if i.kind == "image"]
    assert any(u.endswith("220px-Mona_Lisa_stolen-1911.jpg") for u in images)
    assert all(u.startswith("http://upload.wikimedia.org/") for u in images if "upload.wikimedia" in u)
    # the photograph of the empty wall comes after the section's heading, before its first paragraph
    at = next(n for n, i in enumerate(items) if i.kind == "image" and i.url.endswith("Mona_Lisa_stolen-1911.jpg"))
    before = [i.text for i in items[:at] if i.kind == "text"]
    after = [i.text for i in items[at + 1:] if i.kind == "text"]
    assert before[-1] == "Theft and vandalism"
    assert after[0].startswith("The painting's fame was emphasized when it was stolen on 21 August 1911.")
    # the page's images keep the order of their <img> tags
    order = [u for u in images if "upload.wikimedia" in u]
    positions = [text.find(u.split(":", 1)[1]) for u in order]
    assert all(p >= 0 for p in positions) and positions == sorted(positions)


def test_real_article_has_images_between_paragraphs():
    raw = (SHARED / "html" / "trafilatura__theverge.com.ios13.html").read_bytes()
    text, _ = decode_html(raw)
    content = extract_content(text, "https://www.theverge.com/2019/7/3/20680681/ios-13")
    kinds = [i.kind for i in content.items]
    first_img = kinds.index("image")
    assert "text" in kinds[first_img + 1:] and content.n_images == 3


def test_inline_code_stays_in_its_sentence_and_code_blocks_stay_blocks():
    html = ("<html><body><article><p>For JavaScript you can use <code>string.js</code>, or simply <code>S</code>, "
            "which is a lightweight library with many helper methods for strings in the browser and in Node.</p>"
            "<pre><code>var S = require('string');\nS('hello').capitalize();</code></pre>"
            "<p>Another paragraph of ordinary prose explains how the library is installed with one command.</p>"
            "</article></body></html>")
    texts = [i.text for i in extract_content(html, "https://example.org/a").items if i.kind == "text"]
    assert texts[0].startswith("For JavaScript you can use string.js, or simply S, which is a lightweight library")
    assert texts[1].startswith("var S = require('string');") and len(texts) == 3


LAZY_PAGE = ("<html><body><article><h1>Title here</h1>" + "<p>{p}</p>"
             "<img src='//cdn.example.com/photos/garden.jpg' alt='A garden with trees in spring'><p>{p}</p>"
             "<img src='data:image/gif;base64,R0lGODlhAQABAAAAACw=' data-src='https://cdn.example.com/photos/tree.jpg' "
             "alt='An old oak tree in a field'><p>{p}</p>"
             "<img src='https://secure.gravatar.com/avatar/abc123?s=200&amp;d=mm' alt='A portrait of the author'><p>{p}</p>"
             "<img srcset='https://cdn.example.com/a-320.jpg 320w, https://cdn.example.com/a-1024.jpg 1024w' "
             "alt='A flower bed full of tulips'><p>{p}</p></article></body></html>").format(
    p="This is a long paragraph of ordinary English prose about gardens and trees and the weather in spring. " * 3)
LAZY_URLS = ["https://cdn.example.com/photos/garden.jpg", "https://cdn.example.com/photos/tree.jpg",
             "https://secure.gravatar.com/avatar/abc123?s=200&d=mm", "https://cdn.example.com/a-1024.jpg"]


def test_lazy_extensionless_srcset_and_protocol_relative_images_for_documents_and_pairs():
    """A data: placeholder loses to data-src, //host takes the page's https, an image URL
    without a file extension is kept, srcset gives its largest candidate: in the
    interleaved document and in the pairs alike."""
    from filters.captions import find_image_captions
    doc = [i.url for i in extract_content(LAZY_PAGE, "https://www.example.com/post").items if i.kind == "image"]
    assert doc == LAZY_URLS
    assert [c.url for c in find_image_captions(LAZY_PAGE, "https://www.example.com/post")] == LAZY_URLS
    assert extract_content(LAZY_PAGE, "http://www.example.com/post").items[2].url == \
        "http://cdn.example.com/photos/garden.jpg"


def test_cheap_check_reads_the_article_not_a_cut_style_block_or_foreign_chrome():
    """A page whose head holds 400 KB of inline CSS and fonts, and an English article
    inside a German theme whose menus come first: the cheap language check reads the
    article's prose in both."""
    from filters.html import prose_sample
    from filters.language import LanguageIdentifier
    lid = LanguageIdentifier()
    article = "".join(f"<p>{p}</p>" for p in [
        "The telescope in southern China has spent three years in testing and is now open to astronomers.",
        "Researchers from around the world will be able to propose observations of pulsars and radio bursts.",
        "The dish is five hundred meters across and sits in a natural basin in the mountains of Guizhou."])
    font = "@font-face{src:url(data:font/woff2;base64," + "d09GMgABAAAAA" * 30_000 + ")}"
    heavy = f"<html><head><style>{font}</style></head><body>{article}</body></html>"
    assert len(heavy) > 300_000 and "base64" not in rough_text(heavy)
    assert lid.score(prose_sample(heavy), "en")[0] == "en"
    menus = "".join(f"<li><a href='/k{i}'>{w}</a></li>" for i, w in enumerate(
        ["Startseite", "Über uns", "Kontakt", "Impressum", "Datenschutzerklärung", "Anmelden", "Suche",
         "Nachrichten", "Veranstaltungen", "Mitgliedschaft", "Häufige Fragen", "Warenkorb"] * 40))
    themed = f"<html><body><nav><ul>{menus}</ul></nav><main>{article}</main><footer>{menus}</footer></body></html>"
    assert lid.score(rough_text(themed)[:4000], "en")[0] != "en"      # what the check read before
    assert lid.score(prose_sample(themed), "en")[0] == "en"


def test_language_is_read_on_prose_not_on_lists_of_names():
    from filters.html import language_sample
    names = ("Aaron Parkening Aaron Stewart Abagail Thorne-Lyman Adam Tuttle Adrian Scott Adrian Blakey Adrianne "
             "Hurndell Alan Rath Alan Wen Alexis Rossi Alicia Coryell Alzbeta Smith Amber Shipley Amy Vecchione "
             "Andy Jenks Andy Jewell Ann Stramer Anna Naruta Anne-miek Hamelinck Anthony Kwok Avi Hangad")
    sentence = "Thanks to a generous grant, the archive completed a web crawl of two billion pages in 2007."
    assert language_sample([names, sentence]) == sentence
    assert language_sample([names]) == names                     # nothing else to read
    # a page that says almost nothing is judged on its visible prose instead
    listing = ["£51.77", "In stock", "£53.74", "In stock"]
    assert language_sample(listing, fallback="A Light in the Attic Tipping the Velvet") == \
        "A Light in the Attic Tipping the Velvet"
