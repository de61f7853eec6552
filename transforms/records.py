"""What flows between the steps of the curation job (plain picklable dataclasses)."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, NamedTuple, Optional, Tuple, Union

from contract.reasons import DROPPED, KEPT, AnyReason, CountKey, Level, Status, Work, typed_reason


@dataclass(frozen=True)
class Outcome:
    """One step of one thing through a funnel (contract.reasons): a record read, a
    page entering the text funnel, an image reference dropped with its reason."""
    level: Level                # a funnel level: RECORD, IMAGE, TEXT or PAIR
    status: Status              # READ/ENTERED, or a terminal status
    reason: Union[AnyReason, str] = ""    # a Reason for a drop or an error; "" otherwise
    file: str = ""              # where the record lies (of the page, for an image reference)
    offset: int = -1
    inner_offset: int = 0
    url: str = ""
    message: str = ""
    scores: str = ""            # JSON of the scores that decided a drop (for the audit sample)
    snippet: str = ""           # a little of the text, for the audit sample
    doc_id: str = ""            # the document id, for a page that became a candidate

    def __post_init__(self):
        if type(self.level) is not Level or type(self.status) is not Status:
            raise TypeError(f"an outcome's level and status are contract.reasons members, "
                            f"not {self.level!r}, {self.status!r}")
        if self.status.rejects:
            typed_reason(self.reason)
            if self.level not in self.reason.levels:
                raise ValueError(f"reason {self.reason} is not registered for level {self.level} "
                                 f"(contract/reasons.py)")
        elif self.reason:
            raise ValueError(f"a {self.status} outcome carries no reason, got {self.reason!r}")

    @property
    def key(self) -> CountKey:
        return CountKey(self.level, self.status, self.reason)

    @property
    def is_reject(self) -> bool:
        return self.status.rejects

    @classmethod
    def at(cls, level: str, status: str, prov: "Provenance", url: str, reason: str = "", *,
           scores: Optional[Dict[str, Any]] = None, snippet: str = "", message: str = "",
           doc_id: str = "") -> "Outcome":
        """The outcome of something at ``prov``: the one adapter every step uses to
        turn a verdict into what the accounting counts and samples."""
        scores_json = "" if scores is None else json.dumps(scores, sort_keys=True, default=str)
        return cls(level, status, reason, file=prov.file, offset=prov.offset, inner_offset=prov.inner_offset,
                   url=url, message=message, scores=scores_json, snippet=snippet[:SNIPPET_CHARS], doc_id=doc_id)

    @classmethod
    def of(cls, level: str, verdict, prov: "Provenance", url: str, **kw) -> "Outcome":
        """A filter's :class:`filters.base.Verdict` as an outcome (kept or dropped, with its scores)."""
        if verdict.keep:
            return cls.at(level, KEPT, prov, url, **kw)
        return cls.at(level, DROPPED, prov, url, verdict.reason, scores=kw.pop("scores", verdict.scores), **kw)


@dataclass(frozen=True)
class Event:
    """Work counted beside the funnels (level FETCH, DEDUP or TEXT_DEDUP): an image
    decoded, a download that failed after ``attempts`` tries, a dedup component
    left unsettled. Counted under ``level/name[/reason]``; never a record's end."""
    level: Level
    name: Work
    reason: Union[AnyReason, str] = ""    # a download's failure (a Reason), or counted work's detail
    url: str = ""
    attempts: int = 0
    message: str = ""

    def __post_init__(self):
        if type(self.level) is not Level or type(self.name) is not Work:
            raise TypeError(f"an event's level and name are contract.reasons members, not {self.level!r}, "
                            f"{self.name!r}")

    @property
    def key(self) -> CountKey:
        return CountKey(self.level, self.name, self.reason)

    is_reject = False


@dataclass
class Provenance:
    file: str
    offset: int
    inner_offset: int = 0
    record_id: str = ""
    revisit_of: str = ""


@dataclass
class Capture:
    """One capture of a URL as the reader found it (what pages and image records share)."""
    url: str
    date: str
    content_type: str
    payload: bytes
    provenance: Provenance
    oversize: bool = False
    # the response's headers stating a use policy (X-Robots-Tag, tdm-reservation): the
    # opt-out checks read them (filters/opt_out.py)
    policy_headers: Tuple[Tuple[str, str], ...] = ()


@dataclass
class Page(Capture):
    truncated: bool = False

    @property
    def doc_id(self) -> str:
        return document_id(self.url, self.date, self.provenance)


@dataclass
class ImageRecord(Capture):
    # The bytes stayed in the archive (``payload`` empty): the URL join moves only
    # where they are, and the one record chosen for a referenced URL is read back by
    # offset (transforms/images.py). Records inside a whole-file gzip carry them.
    left_in_archive: bool = False


@dataclass
class Candidate:
    """A page that passed the text filters, waiting for its images."""
    doc_id: str
    url: str
    date: str
    title: str
    provenance: Provenance
    items: List[Dict[str, Any]]          # {"type": "text", "text"} | {"type": "image", "url", "alt", "title"}
    scores: Dict[str, Any] = field(default_factory=dict)
    images_opted_out: str = ""           # the page's signal opting its images out (noimageai): none is used


@dataclass
class PairCandidate:
    """An <img> of an English page with a caption that passed the caption filters."""
    doc_id: str                          # the page's capture id
    page_url: str
    date: str
    provenance: Provenance
    index: int                           # position of the <img> in the page
    url: str                             # resolved image URL
    caption: str
    caption_source: str
    language_score: float
    pii_replaced: Dict[str, int] = field(default_factory=dict)    # personal data replaced in the caption

    @property
    def ref(self) -> "ImageRef":
        """The key its image reference travels under."""
        return ImageRef(self.doc_id, self.index)


class ImageRef(NamedTuple):
    """Who asked for an image: a candidate document, or the pair cut from one <img>
    of a page. Both go through one image source, so an image a document and a pair
    share is decoded once; repeats across the corpus are counted per output."""
    page: str                   # the page's capture id (the document id)
    pair_index: int = -1        # the <img>'s index in the page for a pair; -1 for the document

    @property
    def is_pair(self) -> bool:
        return self.pair_index >= 0

    @property
    def output(self) -> str:
        return "pair" if self.is_pair else "doc"


@dataclass
class ImageResult:
    """The verdict on one image reference of one document."""
    position: int                        # index of the image item in Candidate.items
    reason: Optional[AnyReason]          # None when kept
    stored: Any = None                   # filters.images.StoredImage when kept
    source: Optional[Provenance] = None
    scores: Dict[str, Any] = field(default_factory=dict)
    url: str = ""                        # the image URL (set where a later source may retry it)


SNIPPET_CHARS = 300   # text kept with a reject for the audit sample


def text_snippet(items: List[Dict[str, Any]], limit: int = SNIPPET_CHARS) -> str:
    """The first ``limit`` characters of a document's paragraphs, without joining all of them."""
    parts, size = [], 0
    for item in items:
        if item["type"] == "text":
            parts.append(item["text"])
            size += len(item["text"]) + 1
            if size >= limit:
                break
    return " ".join(parts)[:limit]


def document_id(url: str, date: str, prov: Provenance) -> str:
    """Stable across runs and runners: the capture and where it sits in its archive
    (file name without the directory, so moving the inputs keeps the ids)."""
    where = f"{prov.record_id}\n{os.path.basename(prov.file)}@{prov.offset}+{prov.inner_offset}"
    return hashlib.sha256(f"{url}\n{date}\n{where}".encode("utf-8")).hexdigest()[:32]
