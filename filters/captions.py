"""Image-caption pairs from a page: every ``<img>`` with the text that describes it
(its alt text, or the caption of the ``<figure>`` around it), and the filters a
caption must pass (LAION/COYO-style alt-text corpora; KOSMOS.md §1).

Pure functions: no Beam, no I/O.
"""

from __future__ import annotations

import hashlib
import html as html_lib
import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from typing import List, Optional

from contract.reasons import Reason
from filters.base import Verdict, drop, keep
from filters.boilerplate import FUNCTION_WORDS
from filters.config import CaptionConfig
from filters.html import (ExtractedContent, base_href, content_of, has_img_tag, img_source, page_tree,
                          resolve_tree_images, resolve_url, shallow_tree)


@dataclass(frozen=True)
class ImageCaption:
    index: int              # position of the <img> in the page
    src: str                # as written
    url: Optional[str]      # resolved, normalised
    caption: str            # whitespace-collapsed, entities decoded ("" when none)
    source: str             # "alt" | "figcaption" | "caption_block" | ""


_SPACES = re.compile(r"\s+")


def _clean(text: Optional[str]) -> str:
    return _SPACES.sub(" ", html_lib.unescape(text or "")).strip()


# The elements whose class names a caption: the node-set of
# //*[contains(translate(@class, 'CAPTION', 'caption'), 'caption')] (an element has one
# @class), its predicate evaluated on the class attributes alone, not on every element.
_CAPTION_CLASSES = "//@class[contains(translate(., 'CAPTION', 'caption'), 'caption')]/.."


@lru_cache(maxsize=1)
def _class_xpaths():
    """(every class attribute as a plain string, the caption-class elements), compiled once."""
    from lxml import etree
    return etree.XPath("//@class", smart_strings=False), etree.XPath(_CAPTION_CLASSES)


def _caption_blocks(root, levels: int = 4) -> dict:
    """Containers -> the first element inside them (at most ``levels`` up) whose class
    names a caption (Wikipedia's "thumbcaption", WordPress's "wp-caption-text",
    "image-caption"): one pass over the page's caption elements, not a search of every
    image's surroundings. Most pages have no such class: their class attributes, read
    as plain strings, say so quicker than the search (``str.lower`` lowers the ASCII
    letters the search's ``translate`` does, one character each, so it misses none)."""
    classes, caption_classes = _class_xpaths()
    if "caption" not in " ".join(classes(root)).lower():
        return {}
    return blocks_around(caption_classes(root), levels)


def blocks_around(elements, levels: int = 4) -> dict:
    """Each of ``elements``' containers (at most ``levels`` up) -> the first of them inside it."""
    blocks = {}
    for el in elements:
        node = el
        for _ in range(levels):
            node = node.getparent()
            if node is None:
                break
            blocks.setdefault(node, el)
    return blocks


def _caption_block(img, blocks: dict, levels: int = 3) -> str:
    """The text of the caption a CMS writes beside an image instead of a <figure>: the
    caption block of one of the image's nearest containers, unless the block is itself
    around the image (an "enlarge" icon inside a caption has none)."""
    node = img
    for _ in range(levels):
        node = node.getparent()
        if node is None:
            return ""
        el = blocks.get(node)
        if el is not None:
            if el is node or any(a is el for a in img.iterancestors()):
                return ""
            return _clean(el.text_content())
    return ""


def find_image_captions(html_text: str, page_url: str) -> List[ImageCaption]:
    """Every ``<img>`` of the page in document order (:func:`image_captions`), the page
    parsed as trafilatura parses it (:func:`filters.html.page_tree`). A page nested
    deeper than libxml2's limit (whose plain parse stops there, every later image lost)
    is read as :func:`filters.html.shallow_tree` reads it for the text, with the huge
    option but not flattened: each image keeps its real ancestors (the last resort of
    flattening merges a deep <figure> away). Raises PageTooDeep where even that loses
    some."""
    tree, _, flattened = page_tree(html_text)
    return _captions_of(tree, flattened, html_text, page_url)


def _captions_of(tree, flattened: bool, html_text: str, page_url: str) -> List[ImageCaption]:
    if flattened:
        tree, _ = shallow_tree(html_text, flatten=False)
    return [] if tree is None else image_captions(tree, html_text, page_url)


def image_captions(root, html_text: str, page_url: str) -> List[ImageCaption]:
    """Every ``<img>`` of a parsed page in document order, from its own attributes.
    The alt text wins; an image without one takes the ``<figcaption>`` of its
    ``<figure>``, else a caption block beside it (:func:`_caption_block`)."""
    base = base_href(html_text)
    blocks = None       # looked for at the first image with neither alt text nor <figcaption>
    out = []
    for i, img in enumerate(root.iter("img")):
        src = img_source(img.attrib)
        caption, source = _clean(img.get("alt")), "alt"
        if not caption:
            fig = next((a for a in img.iterancestors("figure")), None)
            cap = fig.find(".//figcaption") if fig is not None else None
            caption, source = (_clean(cap.text_content()), "figcaption") if cap is not None else ("", "")
        if not caption:
            if blocks is None:
                blocks = _caption_blocks(root)
            if blocks:
                caption, source = _caption_block(img, blocks), "caption_block"
        out.append(ImageCaption(i, src, resolve_url(src, page_url, base) if src else None, caption,
                                source if caption else ""))
    return out


@dataclass
class PageRead:
    """What one parse of a page gives: its main content and, when asked for, every
    ``<img>`` with its caption (or why the scan failed)."""
    content: ExtractedContent
    images: Optional[List[ImageCaption]] = None
    scan_error: str = ""            # "Type: message" when the <img> scan raised


def read_page(html_text: str, page_url: str, scan_images: bool) -> PageRead:
    """:func:`filters.html.extract_content` and, with ``scan_images``,
    :func:`find_image_captions` of a page from one parse: the scan reads the tree's
    ``<img>`` attributes as written, then they are resolved in the tree for
    trafilatura (which extracts from a copy). A page made shallow to be read at all is
    scanned on its own unflattened parse, as before. A scan that raises leaves the
    content as it is (``scan_error``)."""
    tree, flattening, flattened = page_tree(html_text)
    images, scan_error = None, ""
    if scan_images:
        try:
            images = _captions_of(tree, flattened, html_text, page_url)
        except Exception as exc:        # PageTooDeep; the content is judged on its own
            scan_error = f"{type(exc).__name__}: {exc}"
    if tree is not None and has_img_tag(html_text):
        resolve_tree_images(tree, html_text, page_url)
    return PageRead(content_of(tree, flattening, html_text, page_url), images, scan_error)


def normalize_caption(caption: str) -> str:
    """The form two captions are compared in: NFKC, lower case, single spaces."""
    return _SPACES.sub(" ", unicodedata.normalize("NFKC", caption).lower()).strip()


def pair_id(image_key: str, caption: str) -> str:
    return hashlib.sha256(f"{image_key}\n{normalize_caption(caption)}".encode("utf-8")).hexdigest()[:32]


_FILENAME = re.compile(r"^[\w\-.()\[\] ]*\.(jpe?g|png|gif|webp|svg|bmp|tiff?|avif|heic|ico)$", re.IGNORECASE)
_CAMERA = re.compile(r"^(img|dsc|dscn|dcim|pxl|photo|image|screenshot|pic)[\s_\-]*\d+[\w\-]*$", re.IGNORECASE)
_IDENTIFIER = re.compile(r"^(?=[^ ]*_)[\w\-.]+$")          # one token with underscores: a file or asset name
_WORD = re.compile(r"[^\W\d_]+(?:['’][^\W\d_]+)*")


def caption_words(caption: str) -> List[str]:
    return _WORD.findall(caption)


_DOMAIN = re.compile(r"^(?:[a-z0-9](?:[a-z0-9-]*[a-z0-9])?\.)+[a-z]{2,}/?$", re.IGNORECASE)

# What a site's furniture says, not what a picture shows (checked on the lower-cased caption).
_TEASER = re.compile(
    r"^(?:click|tap|subscribe|unsubscribe|download|join|sign up|signup|log ?in|register|buy|shop|order|donate|"
    r"follow|like us|visit|watch|listen|read more|learn more|find out|see more|view more|get (?:involved|it|the|your)"
    r"|continue reading)\b"
    r"|\b(?:click here|read more|learn more|more info|find out more|continue reading|shop now|buy now|"
    r"sponsored|sponsorship|advertisement|advertising|syndicate content)\b"
    r"|^\d+(?:\.\d+)? (?:out )?of \d+ stars?\b"        # a rating widget: "4.50 out of 5 stars"
    r"|(?:\.\.\.|…)$")                                  # a teaser cut short


def host_label(page_url: str) -> str:
    """The name part of a page's host: ``medicalxpress`` for https://www.medicalxpress.com/x."""
    from urllib.parse import urlsplit
    host = (urlsplit(page_url).hostname or "").lower()
    labels = [x for x in host.split(".") if x and x not in ("www", "m", "en", "blog", "news")]
    if len(labels) >= 3 and len(labels[-2]) <= 3:       # example.co.uk, example.com.au
        return labels[-3]
    return labels[-2] if len(labels) >= 2 else (labels[0] if labels else "")


def caption_shape(words: List[str], text: str) -> dict:
    """The scores of the site-name and keyword-list rules."""
    lower = [w.lower() for w in words]
    counts = {}
    for w in lower:
        counts[w] = counts.get(w, 0) + 1
    items = [i for i in re.split(r"[,;|]", text) if i.strip()]
    tokens = [t.strip(".,;:!?()[]\"'") for t in text.lower().split()]     # "Maji-Maji-Allee" stays one
    return {"function_words": sum(1 for w in lower if w in FUNCTION_WORDS),
            "repeated_words": sum(n - 1 for w, n in counts.items() if n > 1 and w not in FUNCTION_WORDS),
            "adjacent_repeat": any(a == b and a and a not in FUNCTION_WORDS for a, b in zip(tokens, tokens[1:])),
            "list_items": len(items),
            "longest_item_words": max((len(caption_words(i)) for i in items), default=0)}


def keyword_list(words: List[str], shape: dict) -> bool:
    """SEO alt text: "jokes for kids kids laughing happy funny puns", "Name, Company,
    Product, Product-Brand". A description has function words; a list has none or
    repeats itself."""
    n = len(words)
    if not n:
        return False
    sparse = shape["function_words"] / n < 0.15
    if shape["adjacent_repeat"] and n >= 4 and (sparse or shape["repeated_words"] >= 3):
        return True         # "kids kids", but not the band "Ra Ra Riot on stage"
    if shape["list_items"] >= 4 and shape["longest_item_words"] <= 3:
        return True
    if n >= 8 and shape["function_words"] == 0:
        return True
    return n >= 6 and shape["repeated_words"] >= 2 and sparse


def says_site_element(words: List[str], cfg: CaptionConfig) -> bool:
    """Alt text that names a site element ("logo", "navigation image", "Follow us on
    Twitter") rather than describing a picture."""
    norm = " ".join(w.lower() for w in words)
    return norm in cfg.boilerplate or (len(words) <= cfg.boilerplate_max_words
                                       and any(w.lower() in cfg.boilerplate_words for w in words))


def judge_caption(caption: str, cfg: CaptionConfig, lid=None, language: str = "en", page_url: str = "") -> Verdict:
    """Keep a caption that describes an image in words of the wanted language."""
    text = caption.strip()
    if not text:
        return drop(Reason.NO_CAPTION)
    if (text.lower().startswith(("http://", "https://", "www.")) or _FILENAME.match(text) or _CAMERA.match(text)
            or _IDENTIFIER.match(text) or _DOMAIN.match(text)):
        return drop(Reason.CAPTION_FILENAME)
    words = caption_words(text)
    norm = " ".join(w.lower() for w in words)
    scores = {"words": len(words)}
    if says_site_element(words, cfg):
        return drop(Reason.BOILERPLATE_CAPTION, **scores)
    if len(words) < cfg.min_words:
        return drop(Reason.CAPTION_TOO_SHORT, **scores)
    if len(words) > cfg.max_words:
        return drop(Reason.CAPTION_TOO_LONG, **scores)
    if _TEASER.search(text.lower()):
        return drop(Reason.CAPTION_TEASER, **scores)
    label = host_label(page_url) if page_url else ""
    joined = "".join(norm.split())
    if len(label) >= 5 and len(words) <= cfg.site_name_max_words and label in joined and (
            joined.startswith(label) or len(label) >= 0.6 * len(joined)):
        # the site's name is what the caption says first, or most of it (not "Michaela
        # Vais from Elavegan chopping carrots" on elavegan.com)
        return drop(Reason.CAPTION_SITE_NAME, site=label, **scores)
    shape = caption_shape(words, text)
    if keyword_list(words, shape):
        return drop(Reason.CAPTION_KEYWORD_LIST, **scores, **shape)
    if lid is not None and cfg.min_language_score > 0:
        # lower case: fastText's lid model misreads Title Case (book titles, headlines)
        top, top_score, wanted = lid.score(text.lower(), language)
        scores.update(language=top, language_score=round(wanted, 4))
        # A short text spreads fastText's mass thin: English as the top label is enough.
        if top != language and wanted < cfg.min_language_score:
            return drop(Reason.CAPTION_NOT.of("english" if language == "en" else language), **scores)
    return keep(**scores)
