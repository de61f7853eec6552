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
from functools import lru_cache
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


def utf16_by_zeros(body: bytes, sample: int = 4096) -> Optional[str]:
    """"utf-16-le" or "utf-16-be" when the first ``sample`` bytes have the zero bytes of
    UTF-16 without a BOM: markup is ASCII, whose every other byte is 0 in UTF-16. A
    quarter of the bytes at one parity zero, and at most an eighth as many at the
    other (UTF-32 has zeros at both); text in a byte encoding has no zeros at all."""
    head = body[:sample]
    head = head[:len(head) - len(head) % 2]
    if len(head) < 16:
        return None
    even, odd = head[0::2].count(0), head[1::2].count(0)
    half = len(head) // 2
    if odd * 4 >= half and even * 8 <= odd:
        return "utf-16-le"
    if even * 4 >= half and odd * 8 <= even:
        return "utf-16-be"
    return None


def decode_html(body: bytes, content_type: str = "") -> Tuple[str, str]:
    """Bytes to text: BOM, then the zero bytes of UTF-16 (whatever a label says: a
    label the bytes contradict is not trusted), then HTTP charset, then <meta charset>,
    then UTF-8, each only if the bytes decode with it, then Windows-1252 (which accepts
    any byte). Returns (text, encoding used)."""
    if body.startswith(codecs.BOM_UTF8):
        return body[3:].decode("utf-8", errors="replace"), "utf-8-sig"
    if body.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return body.decode("utf-16", errors="replace"), "utf-16"
    utf16 = utf16_by_zeros(body)
    if utf16:
        return body.decode(utf16, errors="replace"), utf16
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
_TITLE_CLOSE = re.compile(r"</title", re.IGNORECASE)


def page_title(text: str) -> str:
    """The first ``<title>``: one search for the opener, one for its closer (a page
    of unclosed titles must not cost a scan to the end for each)."""
    head = text[:200_000]
    m = _TITLE_OPEN.search(head)
    if not m:
        return ""
    # a case-blind search in the page itself: a lowered copy cost a pass over 200 KB,
    # and its offsets are off after a character that lowers to two ("İ")
    close = _TITLE_CLOSE.search(head, m.end())
    if not close:
        return ""
    return _SPACES.sub(" ", html_lib.unescape(head[m.end():close.start()])).strip()[:1000]


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
    if fallback and not _has_distinct_words(sample, min_distinct_words):
        return fallback
    return sample


def _has_distinct_words(text: str, n: int) -> bool:
    """``text`` has at least ``n`` different words (lower-cased); read only that far."""
    if n <= 0:
        return True
    seen = set()
    for m in _WORD.finditer(text):
        seen.add(m.group(0).lower())
        if len(seen) >= n:
            return True
    return False


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


_LONG_ATTRIBUTES = 4096  # the attribute text past which a tag is looked at
_LONG_TAG = re.compile(r"<([A-Za-z][A-Za-z0-9:-]{0,63})([^<>]{%d,})>" % _LONG_ATTRIBUTES)
_ATTRIBUTE = re.compile(r"""[^\s=/>"']+(?:\s*=\s*(?:"[^"]*"|'[^']*'|[^\s>"']+))?""")
_LONG = 1 + _LONG_ATTRIBUTES   # the fewest characters between a _LONG_TAG match's "<" and ">"


def limit_attributes(text: str, max_attributes: int = 256) -> str:
    """Tags with more than ``max_attributes`` attributes keep the first ones.

    libxml2 checks each new attribute against the tag's others (quadratic: one
    ``<img>`` with 40k attributes cost 12 s to parse and 23 s to extract, with
    300k over 300 s). Real tags have a few dozen; only tags over 4 KB are looked
    at, so ordinary pages pass through unchanged.

    What ``_LONG_TAG.sub`` over the page would do, found without a regex scan of the
    whole page (which tries a 4 KB match at every "<" followed by a letter): a match
    can only start at a "<" and ends at the first ">" after it, so it lies in one of
    the pieces between two "<", one that starts with an ASCII letter and has no ">" in
    its first ``_LONG_ATTRIBUTES`` characters after that letter; only those pieces are matched."""
    pieces = text.split("<")
    changed = False
    for i in range(1, len(pieces)):
        piece = pieces[i]
        if len(piece) < _LONG or not ("a" <= piece[0] <= "z" or "A" <= piece[0] <= "Z"):
            continue
        gt = piece.find(">")
        if gt < _LONG:
            continue
        m = _LONG_TAG.match("<" + piece[:gt + 1])
        attrs = _ATTRIBUTE.findall(m.group(2))
        if len(attrs) > max_attributes:
            pieces[i] = m.group(1) + " " + " ".join(attrs[:max_attributes]) + ">" + piece[gt + 1:]
            changed = True
    return "<".join(pieces) if changed else text


# -- nesting depth ---------------------------------------------------------------------
# libxml2 stops parsing at 256 nested elements (a fatal error: everything after is
# lost, the rest of the page too), 2048 with its "huge" option. An article inside 250
# wrapper <div>s came out empty, and 400 unclosed <div><p> kept 252 paragraphs, without
# a word. Pages that may nest that deep are parsed here with the huge option and made
# shallow again before trafilatura reads them: wrappers that hold no text of their own
# are unwrapped (their elements and text stay, in order), and only where that is not
# enough are the elements deeper than MAX_DEPTH merged into their ancestor, their text
# kept. Every other page is handed to trafilatura exactly as before.
LIBXML_MAX_DEPTH = 256           # the deepest tree libxml2 builds whole without XML_PARSE_HUGE
HUGE_MAX_DEPTH = 2048            # and with it
MAX_DEPTH = 200                  # the depth a flattened page is brought under
_TEXT_CAP_DEPTH = 1800           # where even the huge option stops short: tags left out past this
_TAG_NAME = re.compile(r"<(/?)([A-Za-z][A-Za-z0-9:-]*)")
_TAG_FULL = re.compile(r"<(/?)([A-Za-z][A-Za-z0-9:-]*)[^>]*>")
_VOID = frozenset((
    "area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "param", "source", "track",
    "wbr", "keygen", "command", "basefont", "bgsound", "frame", "isindex", "image", "nextid", "spacer"))
# Wrappers that say nothing of their own: unwrapped when they hold no text.
_WRAPPERS = frozenset(("div", "span", "font", "center", "section", "b", "i", "u", "em", "strong", "small",
                       "big", "tt", "s", "strike"))


def nesting_bound(text: str) -> int:
    """An upper bound on the depth of elements the HTML parser builds (less the two or
    three it adds itself, <html>, <body>, an implied <p>): each tag name's openers less
    its closers, never below zero, summed. A closer with no opener of its name is
    ignored, as the parser does; a closer that implicitly closes others, an element
    that another implicitly closes (<p>, <li>), a tag inside a script, all leave the
    bound higher than the depth, never lower. About 0.5 ms for a 200 KB page."""
    open_by_name: dict = {}
    depth = best = 0
    for slash, name in _TAG_NAME.findall(text):
        name = name.lower()
        if name in _VOID:
            continue
        n = open_by_name.get(name, 0)
        if slash:
            if n:
                open_by_name[name] = n - 1
                depth -= 1
        else:
            open_by_name[name] = n + 1
            depth += 1
            if depth > best:
                best = depth
    return best


# Openers that close an open <p> (libxml2's rules, the common part of them).
_CLOSES_P = frozenset(("p", "div", "ul", "ol", "dl", "table", "blockquote", "pre", "form", "h1", "h2", "h3", "h4",
                       "h5", "h6", "section", "article", "aside", "header", "footer", "nav", "main", "figure",
                       "address", "fieldset", "center", "menu", "dir", "hr", "li"))
_SPACE_THEN_TAG = re.compile(r"\s*<[A-Za-z]")


def _cap_tags(text: str, cap: int) -> Tuple[str, int]:
    """The page with tags left out before parsing, for a page that nests past what
    even the huge parser reads: wrapper openers (``_WRAPPERS``) directly followed by
    another opener, if bare or directly after another wrapper's opener (a run keeps its
    first, and its attributes), and then any opener that would nest deeper than
    ``cap``; each with the closer that matches it (a stack of open elements, closed as
    the parser closes them: a closer closes up to its nearest opener, a block opener
    closes an open <p>). The text between tags is kept byte for byte. Returns (page,
    tags left out)."""
    stack: List[Tuple[str, bool]] = []          # (name, written)
    open_names: dict = {}                       # name -> how many in the stack
    written = dropped = 0
    after_wrapper = -1                          # where the last tag ended, if a wrapper's opener
    out, pos = [], 0

    def pop() -> bool:
        nonlocal written
        name, kept = stack.pop()
        open_names[name] -= 1
        written -= kept
        return kept

    for m in _TAG_FULL.finditer(text):
        name = m.group(2).lower()
        if name in _VOID:
            continue
        keep = True
        if m.group(1):
            if open_names.get(name):
                while True:
                    top = stack[-1][0]
                    kept = pop()
                    if top == name:
                        keep = kept
                        break
        else:
            if stack and stack[-1][0] == "p" and name in _CLOSES_P:
                pop()
            # a wrapper opener straight after another's, or a bare one, before another opener
            in_run = (name in _WRAPPERS and _SPACE_THEN_TAG.match(text, m.end()) is not None
                      and (m.end() - m.start() == len(name) + 2
                           or (after_wrapper >= 0 and not text[after_wrapper:m.start()].strip())))
            keep = not in_run and written < cap
            stack.append((name, keep))
            open_names[name] = open_names.get(name, 0) + 1
            written += keep
        after_wrapper = m.end() if not m.group(1) and name in _WRAPPERS else -1
        if not keep:
            out.append(text[pos:m.start()])
            pos = m.end()
            dropped += 1
    out.append(text[pos:])
    return "".join(out), dropped


def _depths(root) -> Tuple[dict, dict]:
    """Each element's depth (the root 1) and height (0 for a leaf), without recursion."""
    depth, height, order = {root: 1}, {}, [root]
    stack = [root]
    while stack:
        el = stack.pop()
        for child in el:
            depth[child] = depth[el] + 1
            order.append(child)
            stack.append(child)
    for el in reversed(order):
        height[el] = max((height[c] + 1 for c in el), default=0)
    return depth, height


def _holds_no_text(el) -> bool:
    return (len(el) > 0 and not (el.text or "").strip()
            and not any((c.tail or "").strip() for c in el))


def _unwrap(root, attributed: bool) -> int:
    """Unwrap the wrappers (``_WRAPPERS``) that hold no text and lie on a path deeper
    than MAX_DEPTH: bare ones, or (``attributed``) those whose parent is one too, so that
    a run of them keeps its outermost element and its class. Returns how many."""
    depth, height = _depths(root)
    chosen = []
    for el, d in depth.items():
        if d + height[el] <= MAX_DEPTH or el is root or not isinstance(el.tag, str):
            continue
        if el.tag.lower() not in _WRAPPERS or not _holds_no_text(el):
            continue
        if attributed:
            parent = el.getparent()
            if parent is None or not _holds_no_text(parent):
                continue
        elif el.attrib:
            continue
        chosen.append(el)
    for el in chosen:
        el.drop_tag()
    return len(chosen)


def _merge_deep(root) -> int:
    """The last resort: elements at MAX_DEPTH or deeper that have elements inside are
    unwrapped, a line break kept where each began and ended, so that their text and
    their innermost elements (paragraphs, images, links) stay, in order, at MAX_DEPTH."""
    depth, height = _depths(root)
    chosen = [el for el, d in depth.items() if d >= MAX_DEPTH and height[el] > 0 and isinstance(el.tag, str)]
    for el in chosen:
        el.text = "\n" + (el.text or "")
        el.tail = "\n" + (el.tail or "")
        el.drop_tag()
    return len(chosen)


class PageTooDeep(ValueError):
    """The page nests deeper than the parser can read even after flattening."""


@dataclass
class Flattening:
    bound: int                  # nesting_bound of the page
    depth: int = 0              # the parsed tree's depth (with the huge option)
    capped_tags: int = 0        # tags left out before parsing (_cap_tags)
    unwrapped: int = 0          # wrappers holding no text, unwrapped
    merged: int = 0             # elements at MAX_DEPTH or deeper merged into their ancestor


def _parse_huge(text: str):
    """(tree, too deep) as trafilatura's ``load_html`` parses a page (its parser's
    settings, trafilatura.utils.HTML_PARSER, and its repairs), with the huge option."""
    from lxml.html import HTMLParser, fromstring
    from trafilatura.utils import repair_faulty_html
    parser = HTMLParser(collect_ids=False, default_doctype=False, encoding="utf-8", remove_comments=True,
                        remove_pis=True, huge_tree=True)
    tree = fromstring(repair_faulty_html(text, text[:50].lower()), parser=parser)
    return tree, any("Excessive depth" in e.message for e in parser.error_log)


def shallow_tree(text: str, flatten: bool = True):
    """(None, None) when the page cannot nest as deep as libxml2's limit (nearly every
    page: trafilatura parses it itself, as always); (None, Flattening) when it could
    but, parsed, does not. Otherwise (tree, Flattening): the tree trafilatura would
    parse, read with the huge option (tags left out first only where even that stops
    short) and flattened under MAX_DEPTH (see above), or with ``flatten`` False left as
    deep as it nests (for a reader that needs an element's real ancestors, such as
    the <figure> around an image, which the last resort merges away). Raises
    PageTooDeep where content would still be lost."""
    bound = nesting_bound(text)
    if bound + 3 <= LIBXML_MAX_DEPTH:
        return None, None
    from trafilatura.utils import is_dubious_html
    note = Flattening(bound)
    try:
        tree, too_deep = _parse_huge(text)
        if too_deep:
            text, note.capped_tags = _cap_tags(text, _TEXT_CAP_DEPTH)
            tree, too_deep = _parse_huge(text)
    except ValueError:          # an encoding declaration in a str: left to trafilatura's own fallbacks
        if note.capped_tags:
            raise PageTooDeep(f"nests {bound} elements deep and cannot be parsed with the huge option")
        return None, note
    if too_deep:
        raise PageTooDeep(f"nests deeper than {HUGE_MAX_DEPTH} elements even with {note.capped_tags} tags "
                          f"left out")
    if tree is None or (is_dubious_html(text[:50].lower()) and len(tree) < 2):
        return None, note           # what trafilatura makes of it: nothing to extract
    note.depth = max(_depths(tree)[0].values())
    if note.depth <= LIBXML_MAX_DEPTH and not note.capped_tags:
        return None, note           # the ordinary parser reads it whole
    if not flatten:
        return tree, note
    note.unwrapped = _unwrap(tree, attributed=False)
    if max(_depths(tree)[0].values()) > MAX_DEPTH:
        note.unwrapped += _unwrap(tree, attributed=True)
    if max(_depths(tree)[0].values()) > MAX_DEPTH:
        note.merged = _merge_deep(tree)
    return tree, note


# Where lazy-loading scripts keep the real image while ``src`` holds a placeholder.
_LAZY_ATTRS = ("data-src", "data-lazy-src", "data-original", "data-lazy", "data-url", "data-hi-res-src")
_SRCSET_ATTRS = ("srcset", "data-srcset", "data-lazy-srcset")


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


@lru_cache(maxsize=4096)
def resolve_url(src: str, page_url: str, base: Optional[str]) -> Optional[str]:
    """Absolute URL of an image source, fragment removed; None if it cannot be. Cached:
    a page asks for each of its images two or three times (the <img> scan, the tree's
    rewrite for trafilatura, the extracted content)."""
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
    flattening: Optional["Flattening"] = None     # a page nested too deep to parse as it came

    @property
    def n_images(self) -> int:
        return sum(1 for i in self.items if i.kind == "image")

    @property
    def n_text(self) -> int:
        return sum(1 for i in self.items if i.kind == "text")


def _inline_code(el) -> bool:
    parent = el.getparent()
    return (parent is not None and parent.tag in _TEXT_BLOCKS and "\n" not in "".join(el.itertext()).strip())


def page_tree(text: str):
    """(tree, flattening, flattened): the one parse of a page that trafilatura and the
    ``<img>`` scan share: trafilatura's own ``load_html`` (its parser's settings and
    repairs: what ``trafilatura.extract`` does with a page's text). Where that parse
    stopped at libxml2's depth limit (its error log says so; exactly the pages
    :func:`shallow_tree` finds nested past it, which is checked in the tests), the page
    is read again by :func:`shallow_tree`, and ``flattened`` says its tree was made
    shallow (its images' real ancestors are gone, so the ``<img>`` scan parses such a
    page for itself). The tree is None where trafilatura finds no document in the text
    (empty, or not HTML)."""
    from trafilatura.utils import HTML_PARSER, load_html
    tree = load_html(text)
    if not any("Excessive depth" in e.message for e in HTML_PARSER.error_log):
        return tree, None, False
    deep, flattening = shallow_tree(text)
    return (tree, flattening, False) if deep is None else (deep, flattening, True)


def resolve_tree_images(root, text: str, page_url: str) -> None:
    """Each ``<img>`` of a parsed page left with one absolute ``src`` (``img_source``,
    resolved against ``<base href>`` and the page's own scheme), then its ``alt`` and
    ``title``, before trafilatura reads the tree; an image with no usable source is left
    as it is. trafilatura alone takes a ``data:`` placeholder's ``data-src`` only in
    some cases, resolves ``//cdn/a.jpg`` to ``http:`` whatever the page's scheme,
    ignores ``srcset``, and drops any image whose URL has no image file extension
    (gravatars, CDN and resizer URLs; issue 15 counted 373 of 3,227 image sources of
    English pages so lost); such a URL gets a fragment that looks like one, which
    ``normalize_url`` removes again afterwards. The attributes are the parser's
    (entities decoded, the first of a repeated name): until issue 31 a regex rewrote the
    page's text instead, and a quoted ``>`` inside a value ended its tag early."""
    from trafilatura.utils import is_image_file
    base = base_href(text)
    for img in root.iter("img"):
        attrs = dict(img.attrib)
        url = resolve_url(img_source(attrs), page_url, base)
        if not url or url.lower().startswith("data:"):
            continue
        if not is_image_file(url):
            url += "#kosmos-image.jpg"
        kept = [(name, attrs[name]) for name in ("alt", "title") if name in attrs]
        img.attrib.clear()
        img.set("src", url)
        for name, value in kept:
            img.set(name, value)


_EXTRACTOR = None


def _trafilatura_xml(source) -> Optional[str]:
    """``trafilatura.extract(source, output_format="xml", include_images=True,
    include_comments=False, include_tables=True, include_links=False,
    with_metadata=False, favor_recall=False, deduplicate=False)``, without the two
    things ``extract`` adds that nothing here reads: the content fingerprint (a hash
    of the whole text, 2 ms a page, written as an attribute of ``<doc>``) and the
    record id. Its options are built once. Metadata extraction (dates, authors) is
    off: it would cost 40% more time."""
    global _EXTRACTOR
    from trafilatura.core import bare_extraction, determine_returnstring
    from trafilatura.settings import DEFAULT_CONFIG, Extractor
    if _EXTRACTOR is None:
        _EXTRACTOR = Extractor(config=DEFAULT_CONFIG, output_format="xml", fast=False, precision=False,
                               recall=False, comments=False, formatting=None, links=False, images=True,
                               tables=True, dedup=False, lang=None, url=None, with_metadata=False,
                               only_with_metadata=False, tei_validation=False, author_blacklist=None,
                               url_blacklist=None, date_params=None)
    document = bare_extraction(source, options=_EXTRACTOR, as_dict=False)
    if document is None:
        return None
    return determine_returnstring(document, _EXTRACTOR)


def extract_content(text: str, page_url: str) -> ExtractedContent:
    """Main content as an ordered sequence of paragraphs and images: the page parsed
    once (:func:`page_tree`), its images resolved in the tree
    (:func:`resolve_tree_images`), then trafilatura, which is given no URL, so their
    ``src`` comes back as we wrote it."""
    tree, flattening, _ = page_tree(text)
    if tree is not None and _IMG_TAG.search(text):
        resolve_tree_images(tree, text, page_url)
    return content_of(tree, flattening, text, page_url)


def content_of(tree, flattening: Optional[Flattening], text: str, page_url: str) -> ExtractedContent:
    """:func:`extract_content` of a page already parsed by :func:`page_tree` and its
    images resolved (trafilatura copies the tree: it is left as it was)."""
    from lxml import etree

    result = ExtractedContent(flattening=flattening)
    if tree is None:
        return result
    xml = _trafilatura_xml(tree)
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
