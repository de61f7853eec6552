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
from typing import List, Optional

from filters.base import Verdict, drop, keep
from filters.config import CaptionConfig
from filters.html import base_href, img_source, resolve_url


@dataclass(frozen=True)
class ImageCaption:
    index: int              # position of the <img> in the page
    src: str                # as written
    url: Optional[str]      # resolved, normalised
    caption: str            # whitespace-collapsed, entities decoded ("" when none)
    source: str             # "alt" | "figcaption" | ""


_SPACES = re.compile(r"\s+")


def _clean(text: Optional[str]) -> str:
    return _SPACES.sub(" ", html_lib.unescape(text or "")).strip()


def find_image_captions(html_text: str, page_url: str) -> List[ImageCaption]:
    """Every ``<img>`` of the page in document order. The alt text wins; an image
    without one takes the ``<figcaption>`` of its ``<figure>``."""
    import lxml.html
    try:
        root = lxml.html.fromstring(html_text)
    except Exception:          # empty or unparsable document
        return []
    base = base_href(html_text)
    out = []
    for i, img in enumerate(root.iter("img")):
        src = img_source(img.attrib)
        caption, source = _clean(img.get("alt")), "alt"
        if not caption:
            fig = next((a for a in img.iterancestors("figure")), None)
            cap = fig.find(".//figcaption") if fig is not None else None
            caption, source = (_clean(cap.text_content()), "figcaption") if cap is not None else ("", "")
        out.append(ImageCaption(i, src, resolve_url(src, page_url, base) if src else None, caption,
                                source if caption else ""))
    return out


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


def judge_caption(caption: str, cfg: CaptionConfig, lid=None, language: str = "en") -> Verdict:
    """Keep a caption that describes an image in words of the wanted language."""
    text = caption.strip()
    if not text:
        return drop("no_caption")
    if (text.lower().startswith(("http://", "https://", "www.")) or _FILENAME.match(text) or _CAMERA.match(text)
            or _IDENTIFIER.match(text)):
        return drop("caption_filename")
    words = caption_words(text)
    norm = " ".join(w.lower() for w in words)
    scores = {"words": len(words)}
    if norm in cfg.boilerplate or (len(words) <= cfg.boilerplate_max_words
                                   and any(w.lower() in cfg.boilerplate_words for w in words)):
        return drop("boilerplate_caption", **scores)
    if len(words) < cfg.min_words:
        return drop("caption_too_short", **scores)
    if len(words) > cfg.max_words:
        return drop("caption_too_long", **scores)
    if lid is not None and cfg.min_language_score > 0:
        # lower case: fastText's lid model misreads Title Case (book titles, headlines)
        top, top_score, wanted = lid.score(text.lower(), language)
        scores.update(language=top, language_score=round(wanted, 4))
        # A short text spreads fastText's mass thin: English as the top label is enough.
        if top != language and wanted < cfg.min_language_score:
            return drop("caption_not_english" if language == "en" else f"caption_not_{language}", **scores)
    return keep(**scores)
