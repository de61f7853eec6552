"""Opt-outs a page states itself: in its archived HTTP response and in its ``<meta>`` tags.

* ``X-Robots-Tag`` values and ``<meta name="robots">`` (or a meta named after one of our
  agents): ``noai`` opts the page and its images out of AI use, ``noimageai`` its images
  (the DeviantArt/Spawning directives the issue names; img2dataset honours the same two).
  Values scoped to another crawler (``otherbot: noai``) are not for us; the parser is
  ``filters.fetch_policy.robots_directives``, shared with the image downloader.
  ``noindex``/``none``/``noimageindex`` are search-engine rules (Google: keep the page out
  of search results), not a reservation of AI use: they count only with ``indexing=True``
  (img2dataset's default list has them as well).
* TDMRep (W3C TDM Reservation Protocol community report): ``tdm-reservation: 1`` in the
  response headers or ``<meta name="tdm-reservation" content="1">`` reserves text-and-data-
  mining rights (the DSM Directive's Art. 4 opt-out); ``0`` means not reserved; any other
  value is a protocol error read as unset. The meta value supersedes the header's (the
  spec's processing priority: tdmrep.json < header < HTML). ``tdm-policy`` only says where a
  licence may be had: a reserved page stays out, with or without one, and a policy beside
  ``0`` is ignored as the spec asks. HTML metadata covers the page only, not the images it
  references; an image's own response headers decide for the image (``check_image_opt_out``).
  ``/.well-known/tdmrep.json`` needs a fetch from the site and is out of scope here.
"""

from __future__ import annotations

import html as html_lib
import re
from typing import Iterable, List, Mapping, Optional, Sequence, Tuple, Union

from contract.reasons import Reason
from filters.base import Verdict, drop, keep
from filters.fetch_policy import robots_directives

Headers = Union[Mapping[str, str], Iterable[Tuple[str, str]]]

PAGE_OPT_OUTS = ("noai",)
IMAGE_OPT_OUTS = ("noai", "noimageai")
PAGE_INDEXING_OPT_OUTS = ("noindex", "none")
IMAGE_INDEXING_OPT_OUTS = ("noindex", "none", "noimageindex")

_HEAD_END = re.compile(r"</head\s*>|<body[\s>]", re.IGNORECASE)
_HEAD_SCAN = 256 * 1024             # a page with neither </head> nor <body>: its start only
_HIDDEN = re.compile(r"<!--.*?(?:-->|$)|<script\b.*?(?:</script\s*>|$)", re.IGNORECASE | re.DOTALL)
_META = re.compile(r"<meta\b([^>]*)>", re.IGNORECASE)
_HEAD_KEYS = ("noai", "noimageai", "tdm-reservation")
_HEAD_KEYS_INDEXING = _HEAD_KEYS + ("noindex", "none", "noimageindex")
_ATTR = re.compile(r"([^\s=/>\"']+)\s*=\s*(?:\"([^\"]*)\"|'([^']*)'|([^\s>\"']+))")


def _header_values(headers: Headers, name: str) -> List[str]:
    items = headers.items() if isinstance(headers, Mapping) else headers
    return [v for k, v in items if k.strip().lower() == name]


def _tdm_value(values: Sequence[str]) -> Optional[int]:
    """1 reserved, 0 not reserved, None unset (absent or a protocol error)."""
    for v in values:
        v = v.strip()
        if v in ("0", "1"):
            return int(v)
    return None


def _head(page: str) -> str:
    end = _HEAD_END.search(page, 0, _HEAD_SCAN)
    return page[: end.start() if end else _HEAD_SCAN]


def meta_tags(page: str) -> List[Tuple[str, str]]:
    """(name lower-cased, content) of the ``<meta name=... content=...>`` tags of the page's
    head, outside comments and scripts."""
    return _meta_tags_of_head(_head(page))


def _meta_tags_of_head(head: str) -> List[Tuple[str, str]]:
    if "<!--" in head or "<script" in head or "<SCRIPT" in head:
        head = _HIDDEN.sub("", head)
    out = []
    for m in _META.finditer(head):
        attrs = {}
        for a in _ATTR.finditer(m.group(1)):
            key = a.group(1).lower()
            if key not in attrs:
                attrs[key] = next(g for g in a.groups()[1:] if g is not None)
        if "name" in attrs and "content" in attrs:
            content = attrs["content"]
            out.append((attrs["name"].strip().lower(), html_lib.unescape(content) if "&" in content else content))
    return out


def meta_tags_of_tree(root) -> List[Tuple[str, str]]:
    """The same pairs from a parsed lxml tree."""
    out = []
    for el in root.iter("meta"):
        name, content = el.get("name"), el.get("content")
        if name is not None and content is not None:
            out.append((name.strip().lower(), content))
    return out


def _first(found: Iterable[str], wanted: Sequence[str]) -> Optional[str]:
    found = set(found)
    return next((w for w in wanted if w in found), None)


def _robots_meta(tags: Sequence[Tuple[str, str]], agents: Sequence[str]) -> frozenset:
    names = {"robots"} | {a.lower() for a in agents}
    rules = set()
    for name, content in tags:
        if name in names:
            rules.update(p.strip().lower() for p in content.split(",") if p.strip())
    return frozenset(rules)


def page_opt_out(headers: Headers = (), tags: Sequence[Tuple[str, str]] = (), agents: Sequence[str] = (),
                 indexing: bool = False) -> Tuple[Optional[str], Optional[str]]:
    """(signal opting the page out, signal opting its images out): each a short name such
    as ``"x-robots-tag: noai"``, ``"meta robots: noimageai"``, ``"tdm-reservation"``, or None."""
    header_rules = robots_directives(_header_values(headers, "x-robots-tag"), agents=agents)
    meta_rules = _robots_meta(tags, agents)
    page_words = PAGE_OPT_OUTS + (PAGE_INDEXING_OPT_OUTS if indexing else ())
    image_words = IMAGE_OPT_OUTS + (IMAGE_INDEXING_OPT_OUTS if indexing else ())
    page = images = None
    for where, rules in (("x-robots-tag", header_rules), ("meta robots", meta_rules)):
        hit = _first(rules, page_words)
        if hit and page is None:
            page = f"{where}: {hit}"
        hit = _first(rules, image_words)
        if hit and images is None:
            images = f"{where}: {hit}"
    meta_tdm = _tdm_value([c for n, c in tags if n == "tdm-reservation"])
    tdm = meta_tdm if meta_tdm is not None else _tdm_value(_header_values(headers, "tdm-reservation"))
    if tdm == 1 and page is None:
        page = "meta tdm-reservation" if meta_tdm is not None else "tdm-reservation"
    return page, images


def check_page_opt_out(headers: Headers = (), page: str = "", agents: Sequence[str] = (),
                       indexing: bool = False, tags: Optional[Sequence[Tuple[str, str]]] = None) -> Verdict:
    """Drop (``opted_out_page``) a page that opts out; a kept page's ``scores["image_opt_out"]``
    names the signal that opts its images out (``opted_out_image`` for each), or is None."""
    if tags is None:
        tags = ()
        if page:
            head = _head(page)              # most heads' <meta> name no opt-out: skip parsing them
            low = "".join(m.group(0) for m in _META.finditer(head)).lower()
            if any(k in low for k in (_HEAD_KEYS_INDEXING if indexing else _HEAD_KEYS)):
                tags = _meta_tags_of_head(head)
    page_signal, image_signal = page_opt_out(headers, tags, agents, indexing)
    if page_signal:
        return drop(Reason.OPTED_OUT_PAGE, opt_out_signal=page_signal)
    return keep(image_opt_out=image_signal)


def check_image_opt_out(headers: Headers, agents: Sequence[str] = (), indexing: bool = False) -> Verdict:
    """An image's own response: ``X-Robots-Tag`` noai/noimageai or ``tdm-reservation: 1``."""
    rules = robots_directives(_header_values(headers, "x-robots-tag"), agents=agents)
    hit = _first(rules, IMAGE_OPT_OUTS + (IMAGE_INDEXING_OPT_OUTS if indexing else ()))
    if hit:
        return drop(Reason.OPTED_OUT_IMAGE, opt_out_signal=f"x-robots-tag: {hit}")
    if _tdm_value(_header_values(headers, "tdm-reservation")) == 1:
        return drop(Reason.OPTED_OUT_IMAGE, opt_out_signal="tdm-reservation")
    return keep()


POLICY_HEADERS = frozenset({"x-robots-tag", "tdm-reservation", "tdm-policy"})


def policy_headers(headers: Headers) -> Tuple[Tuple[str, str], ...]:
    """The headers of an archived response that state a use policy (what a page or an
    image carries on to the opt-out checks; the rest stay in the archive)."""
    return tuple((k, v) for k, v in headers if k.lower() in POLICY_HEADERS)
