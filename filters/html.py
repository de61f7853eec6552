"""The HTML side: decoding, the cheap pre-extraction checks, and main-content
extraction into an ordered sequence of text paragraphs and images.

Pure functions; trafilatura does the boilerplate removal and keeps ``<graphic>``
elements in document order in its XML output.
"""

from __future__ import annotations

import codecs
import html as html_lib
import re
from dataclasses import dataclass, field
from typing import List, Mapping, Optional, Tuple
from urllib.parse import urljoin

from filters.boilerplate import word_list_paragraph
from filters.urls import normalize_url

_CHARSET_HTTP = re.compile(r"charset\s*=\s*[\"']?([A-Za-z0-9_\-:.]+)", re.IGNORECASE)
_CHARSET_META = re.compile(
    rb"<meta[^>]+charset\s*=\s*[\"']?\s*([A-Za-z0-9_\-:.]+)", re.IGNORECASE)
_IMG_TAG = re.compile(r"<img\b", re.IGNORECASE)
_BASE_HREF = re.compile(r"<base\b[^>]*?\bhref\s*=\s*(?:\"([^\"]*)\"|'([^']*)'|([^\s>]+))",
                        re.IGNORECASE)
_BLOCK_NAMES = ("script", "style", "noscript", "svg", "template", "iframe")
_BLOCK_OPEN = re.compile(r"<(?:(" + "|".join(_BLOCK_NAMES) + r")\b|!--)", re.IGNORECASE)
_BLOCK_CLOSE = {name: re.compile("</" + name, re.IGNORECASE) for name in _BLOCK_NAMES}
_TAG = re.compile(r"<[^>]{0,2000}>", re.DOTALL)
_SPACES = re.compile(r"\s+")

BLOCK_TAGS = {"p", "head", "item", "quote", "code", "cell", "row", "list", "table",
              "main", "doc", "comments", "div"}
# Elements a paragraph's text lives in: a <code> inside one, on one line, is inline
# code ("use string.js, or S, ...") and stays in the sentence; elsewhere it is a block.
_TEXT_BLOCKS = {"p", "head", "item", "quote", "cell"}


# The encodings a browser decodes web pages with (the WHATWG Encoding Standard's list,
# as Python names them). Any other codec a label names is refused: Python also knows
# punycode, idna, utf-7, rot13 and bytes-to-bytes codecs, some quadratic on hostile
# input (punycode: 88 s for 1 MB) and none of them a web page's encoding.
_WEB_ENCODINGS = frozenset(codecs.lookup(n).name for n in (
    "utf-8", "utf-16-le", "utf-16-be", "ibm866", "iso-8859-2", "iso-8859-3", "iso-8859-4", "iso-8859-5",
    "iso-8859-6", "iso-8859-7", "iso-8859-8", "iso-8859-10", "iso-8859-13", "iso-8859-14", "iso-8859-15",
    "iso-8859-16", "koi8-r", "koi8-u", "mac-roman", "cp874", "cp1250", "cp1251", "cp1252", "cp1253",
    "cp1254", "cp1255", "cp1256", "cp1257", "cp1258", "mac-cyrillic", "gbk", "gb18030", "gb2312", "big5",
    "big5hkscs", "euc-jp", "iso-2022-jp", "shift_jis", "cp932", "euc-kr", "cp949", "latin-1", "ascii"))


def _charset_ok(name: Optional[str]) -> Optional[str]:
    if not name:
        return None
    try:
        enc = codecs.lookup(name.strip().lower()).name
    except LookupError:
        return None
    return enc if enc in _WEB_ENCODINGS else None


def decode_html(body: bytes, content_type: str = "") -> Tuple[str, str]:
    """Bytes to text: BOM, then HTTP charset, then <meta charset>, then UTF-8,
    then Windows-1252 (which accepts any byte). Returns (text, encoding used)."""
    if body.startswith(codecs.BOM_UTF8):
        return body[3:].decode("utf-8", errors="replace"), "utf-8-sig"
    if body.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return body.decode("utf-16", errors="replace"), "utf-16"
    candidates = []
    m = _CHARSET_HTTP.search(content_type or "")
    if m:
        candidates.append(_charset_ok(m.group(1)))
    m = _CHARSET_META.search(body[:4096])
    if m:
        candidates.append(_charset_ok(m.group(1).decode("ascii", "ignore")))
    candidates += ["utf-8"]
    for enc in candidates:
        if not enc:
            continue
        try:
            return body.decode(enc), enc
        except (UnicodeError, LookupError):
            continue
    return body.decode("cp1252", errors="replace"), "cp1252"


def has_img_tag(text: str) -> bool:
    return _IMG_TAG.search(text) is not None


def base_href(text: str) -> Optional[str]:
    m = _BASE_HREF.search(text[:65536])
    if not m:
        return None
    value = next(g for g in m.groups() if g is not None).strip()
    return html_lib.unescape(value) or None


_TITLE_OPEN = re.compile(r"<title\b[^>]{0,500}>", re.IGNORECASE)


def page_title(text: str) -> str:
    """The first ``<title>``: one search for the opener, one for its closer (a page
    of unclosed titles must not cost a scan to the end for each)."""
    head = text[:200_000]
    m = _TITLE_OPEN.search(head)
    if not m:
        return ""
    end = head.lower().find("</title", m.end())
    if end < 0:
        return ""
    return _SPACES.sub(" ", html_lib.unescape(head[m.end():end])).strip()[:1000]


def strip_blocks(body: str) -> str:
    """Scripts, styles, SVG, templates, iframes and comments removed, in one pass:
    each opener's closer is found by a plain search, and an opener never closed
    drops the rest of the page, as a browser does (a regex with a lazy ``.*?``
    scans to the end once per unclosed opener: quadratic). The closers are found
    case-blind in the page itself: a lowered copy costs a pass over the whole page
    and is not always the same length (``"İ".lower()`` is two characters), so its
    offsets would cut the page in the wrong places."""
    out, pos = [], 0
    while True:
        m = _BLOCK_OPEN.search(body, pos)
        if not m:
            out.append(body[pos:])
            break
        out.append(body[pos:m.start()])
        out.append(" ")
        if m.group(1) is None:
            close = body.find("-->", m.end())
            pos = -1 if close < 0 else close + 3
        else:
            closer = _BLOCK_CLOSE[m.group(1).lower()].search(body, m.end())
            gt = body.find(">", closer.end()) if closer else -1
            pos = -1 if gt < 0 else gt + 1
        if pos < 0:
            break
    return "".join(out)


def visible_runs(text: str) -> List[str]:
    """The page's text between tags, scripts, styles and comments removed from the
    whole page first (a cut inside a ``<style>`` would leave CSS and inline fonts as
    "text"). An order of magnitude cheaper than a DOM parse; computed once per page
    for both ``joined_text`` and ``prose_of``."""
    return _TAG.split(strip_blocks(text))


def joined_text(runs: List[str], max_chars: int = 300_000) -> str:
    """The runs as one text, entities unescaped, spaces collapsed; at most ``max_chars``,
    read only as far as those need (a snippet costs its own length, not the page's)."""
    out, size = [], 0
    for raw in runs:
        if not raw or raw.isspace():
            continue
        run = _SPACES.sub(" ", html_lib.unescape(raw)).strip()    # an entity never spans two runs
        if run:
            out.append(run)
            size += len(run) + 1
            if size > max_chars:
                break
    return " ".join(out)[:max_chars]


def rough_text(text: str, max_chars: int = 300_000) -> str:
    """Visible text by regex (``visible_runs`` joined)."""
    return joined_text(visible_runs(text), max_chars)


_PROSE_WORDS = 8          # a run of text between tags with this many words reads as prose, not chrome
_WORD = re.compile(r"[^\W\d_]+")


def language_sample(paragraphs: List[str], min_chars: int = 200, fallback: str = "",
                    min_distinct_words: int = 10) -> str:
    """The text a page's language is judged on: its prose paragraphs (``_PROSE_WORDS``
    words or more), so that a run of captions, figure labels or buttons ("Figure 12.")
    cannot outweigh the article, and without lists of names or tags run together (no
    language to read in them); all of it when there is too little prose. When even
    that has under ``min_distinct_words`` different words (a shop listing extracted as
    "£51.77 In stock" twenty times, which fastText reads as Chinese), ``fallback``: the
    page's own visible prose, which at least names the books."""
    text = [p for p in paragraphs if not word_list_paragraph(p)] or list(paragraphs)
    prose = [p for p in text if p.count(" ") + 1 >= _PROSE_WORDS]
    sample = " ".join(prose) if sum(len(p) for p in prose) >= min_chars else " ".join(text)
    if fallback and len({w.lower() for w in _WORD.findall(sample)}) < min_distinct_words:
        return fallback
    return sample


def prose_sample(text: str, max_chars: int = 4000) -> str:
    """``prose_of`` the page's visible runs."""
    return prose_of(visible_runs(text), max_chars)


def prose_of(runs: List[str], max_chars: int = 4000) -> str:
    """What the cheap language check reads: the runs of visible text between tags
    that have at least ``_PROSE_WORDS`` words, in page order, up to ``max_chars``.
    Menus, buttons and footers are runs of one to a few words, so a theme's chrome
    in another language cannot fill the sample ahead of the article; a page with
    too little prose is judged on its whole visible text."""
    sample, size = [], 0
    # Most runs are the blanks and one-word labels between tags: a run of _PROSE_WORDS
    # words needs 2 * _PROSE_WORDS - 1 characters, and unescaping and collapsing
    # spaces never lengthen a run, so shorter or blank runs are passed over unread.
    shortest = 2 * _PROSE_WORDS - 1
    for raw in runs:
        if len(raw) < shortest or raw.isspace():
            continue
        run = _SPACES.sub(" ", html_lib.unescape(raw)).strip()
        if run.count(" ") + 1 >= _PROSE_WORDS:
            sample.append(run)
            size += len(run) + 1
            if size >= max_chars:
                break
    joined = " ".join(sample)
    return joined[:max_chars] if len(joined) >= 200 else joined_text(runs, max_chars)


_LONG_TAG = re.compile(r"<([A-Za-z][A-Za-z0-9:-]{0,63})([^<>]{4096,})>")
_ATTRIBUTE = re.compile(r"""[^\s=/>"']+(?:\s*=\s*(?:"[^"]*"|'[^']*'|[^\s>"']+))?""")
# Any _LONG_TAG match starts with this; most pages have none, and this simpler
# pattern rules that out in about half the time.
_LONG_TAG_START = re.compile(r"<[A-Za-z][^<>]{4096}")


def limit_attributes(text: str, max_attributes: int = 256) -> str:
    """Tags with more than ``max_attributes`` attributes keep the first ones.

    libxml2 checks each new attribute against the tag's others (quadratic: one
    ``<img>`` with 40k attributes cost 12 s to parse and 23 s to extract, with
    300k over 300 s). Real tags have a few dozen; only tags over 4 KB are looked
    at, so ordinary pages pass through unchanged."""
    def cap(m):
        attrs = _ATTRIBUTE.findall(m.group(2))
        if len(attrs) <= max_attributes:
            return m.group(0)
        return "<" + m.group(1) + " " + " ".join(attrs[:max_attributes]) + ">"
    if not _LONG_TAG_START.search(text):
        return text
    return _LONG_TAG.sub(cap, text)


# Where lazy-loading scripts keep the real image while ``src`` holds a placeholder.
_LAZY_ATTRS = ("data-src", "data-lazy-src", "data-original", "data-lazy", "data-url", "data-hi-res-src")
_SRCSET_ATTRS = ("srcset", "data-srcset", "data-lazy-srcset")
_IMG = re.compile(r"<img\b[^>]*>", re.IGNORECASE)
_ATTR = re.compile(r"""([^\s=/>"']+)(?:\s*=\s*("[^"]*"|'[^']*'|[^\s>]+))?""")


def largest_srcset_candidate(srcset: Optional[str]) -> str:
    """The candidate of a ``srcset`` with the largest width (``800w``) or density (``2x``)."""
    best, best_size = "", -1.0
    for part in (srcset or "").split(","):
        fields = part.split()
        if not fields:
            continue
        size = 1.0
        if len(fields) > 1 and fields[1][:-1].replace(".", "", 1).isdigit() and fields[1][-1] in "wx":
            size = float(fields[1][:-1])
        if size > best_size:
            best, best_size = fields[0], size
    return best


def img_source(attrs: Mapping[str, str]) -> str:
    """The image an ``<img>`` shows once loaded: a lazy-loading attribute, else its
    ``src`` unless that is a ``data:`` placeholder, else the largest candidate of its
    ``srcset``; the ``data:`` URI or "" when there is nothing else."""
    for name in _LAZY_ATTRS:
        value = (attrs.get(name) or "").strip()
        if value and not value.lower().startswith("data:"):
            return value
    src = (attrs.get("src") or "").strip()
    if src and not src.lower().startswith("data:"):
        return src
    for name in _SRCSET_ATTRS:
        best = largest_srcset_candidate(attrs.get(name))
        if best and not best.lower().startswith("data:"):
            return best
    return src


def resolve_images(text: str, page_url: str) -> str:
    """Each ``<img>`` tag rewritten to one absolute ``src`` (``img_source``, resolved
    against ``<base href>`` and the page's own scheme), its ``alt`` and ``title`` kept,
    before trafilatura reads the page. trafilatura alone takes a ``data:`` placeholder's
    ``data-src`` only in some cases, resolves ``//cdn/a.jpg`` to ``http:`` whatever the
    page's scheme, ignores ``srcset``, and drops any image whose URL has no image file
    extension (gravatars, CDN and resizer URLs; issue 15 counted 373 of 3,227 image sources
    of English pages so lost); such a URL gets a fragment that looks like one, which
    ``normalize_url`` removes again afterwards. The rest of the page is left byte for byte."""
    from trafilatura.utils import is_image_file     # the test trafilatura drops images by
    base = base_href(text)

    def rewrite(m: "re.Match") -> str:
        attrs = {}
        for name, value in _ATTR.findall(m.group(0)[4:-1]):
            name = name.lower()
            if name not in attrs:
                attrs[name] = html_lib.unescape(value[1:-1] if value[:1] in "\"'" else value)
        url = resolve_url(img_source(attrs), page_url, base)
        if not url or url.lower().startswith("data:"):
            return m.group(0)
        if not is_image_file(url):
            url += "#kosmos-image.jpg"
        kept = "".join(f' {name}="{html_lib.escape(attrs[name], quote=True)}"' for name in ("alt", "title")
                       if name in attrs)
        return f'<img src="{html_lib.escape(url, quote=True)}"{kept}>'

    return _IMG.sub(rewrite, text)


def resolve_url(src: str, page_url: str, base: Optional[str]) -> Optional[str]:
    """Absolute URL of an image source, fragment removed; None if it cannot be."""
    src = (src or "").strip()
    if not src:
        return None
    if src.lower().startswith("data:"):
        return src  # kept as is; image sources decide what they can do with it
    root = urljoin(page_url, base) if base else page_url
    try:
        absolute = urljoin(root, src)
    except ValueError:
        return None
    return normalize_url(absolute)


@dataclass
class ContentItem:
    kind: str                      # "text" or "image"
    text: str = ""
    src: str = ""                  # the src attribute as written
    url: Optional[str] = None      # resolved absolute URL
    alt: str = ""
    title: str = ""


@dataclass
class ExtractedContent:
    title: str = ""
    items: List[ContentItem] = field(default_factory=list)

    @property
    def n_images(self) -> int:
        return sum(1 for i in self.items if i.kind == "image")

    @property
    def n_text(self) -> int:
        return sum(1 for i in self.items if i.kind == "text")


def _inline_code(el) -> bool:
    parent = el.getparent()
    return (parent is not None and parent.tag in _TEXT_BLOCKS and "\n" not in "".join(el.itertext()).strip())


def extract_content(text: str, page_url: str) -> ExtractedContent:
    """Main content as an ordered sequence of paragraphs and images.

    The images are resolved before trafilatura reads the page (``resolve_images``);
    trafilatura is given no URL, so their ``src`` comes back as we wrote it."""
    import trafilatura
    from lxml import etree

    xml = trafilatura.extract(
        resolve_images(text, page_url) if _IMG_TAG.search(text) else text, output_format="xml", include_images=True, include_comments=False,
        include_tables=True, include_links=False, with_metadata=False, favor_recall=False,
        deduplicate=False)  # metadata extraction (dates, authors) would cost 40% more time
    result = ExtractedContent()
    if not xml:
        return result
    root = etree.fromstring(xml.encode("utf-8"), parser=etree.XMLParser(recover=True, huge_tree=False))
    if root is None:
        return result
    result.title = page_title(text)
    base = base_href(text)
    main = root.find("main")
    if main is None:
        main = root

    buf: List[str] = []

    def flush():
        joined = _SPACES.sub(" ", "".join(buf)).strip()
        buf.clear()
        if joined:
            result.items.append(ContentItem("text", text=joined))

    def walk(el):
        tag = el.tag if isinstance(el.tag, str) else ""
        if tag == "graphic":
            flush()
            src = el.get("src") or ""
            result.items.append(ContentItem(
                "image", src=src, url=resolve_url(src, page_url, base),
                alt=(el.get("alt") or "").strip(), title=(el.get("title") or "").strip()))
            return
        if tag == "lb":
            buf.append("\n")
            return
        block = tag in BLOCK_TAGS and not (tag == "code" and _inline_code(el))
        if block:
            flush()
        if el.text:
            buf.append(el.text)
        for child in el:
            walk(child)
            if child.tail:
                buf.append(child.tail)
        if block:
            flush()

    walk(main)
    flush()
    return result
