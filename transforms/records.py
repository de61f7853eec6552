"""What flows between the steps of the curation job (plain picklable dataclasses)."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

RECORD = "record"      # HTML pages (and other records) on the way to interleaved documents
IMAGE = "image"        # image references of interleaved documents
TEXT = "text"          # HTML pages on the way to text-only documents
PAIR = "pair"          # <img> elements of English pages on the way to image-caption pairs
FETCH = "fetch"        # image decodes (not a funnel: counts of work done)

# Terminal statuses: every record and every image reference ends in exactly one.
KEPT = "kept"
DROPPED = "dropped"
ERROR = "error"
IMAGE_SOURCE = "image_source"   # an image record, handed to the image join
# Entry events that the terminal ones must balance.
READ = "read"
ENTERED = "entered"


@dataclass(frozen=True)
class Outcome:
    level: str                  # RECORD or IMAGE
    status: str                 # READ/ENTERED, or a terminal status
    reason: str = ""
    file: str = ""
    offset: int = -1
    inner_offset: int = 0
    url: str = ""
    message: str = ""
    scores: str = ""            # JSON of the scores that decided a drop (for the audit sample)
    snippet: str = ""           # a little of the text, for the audit sample

    @property
    def key(self) -> str:
        return f"{self.level}/{self.status}/{self.reason}" if self.reason else f"{self.level}/{self.status}"


@dataclass
class Provenance:
    file: str
    offset: int
    inner_offset: int = 0
    record_id: str = ""
    revisit_of: str = ""


@dataclass
class Page:
    url: str
    date: str
    content_type: str
    payload: bytes
    provenance: Provenance
    oversize: bool = False
    truncated: bool = False

    @property
    def doc_id(self) -> str:
        return document_id(self.url, self.date, self.provenance)


@dataclass
class ImageRecord:
    url: str
    date: str
    content_type: str
    payload: bytes
    provenance: Provenance
    oversize: bool = False
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

    @property
    def ref(self) -> str:
        """The key its image reference travels under (beside document ids)."""
        return pair_ref(self.doc_id, self.index)


def pair_ref(doc_id: str, index: int) -> str:
    return f"pair|{doc_id}|{index}"


def is_pair_ref(key: str) -> bool:
    return key.startswith("pair|")


def ref_page(key: str) -> str:
    """The page a reference belongs to: a document id, or the page of a pair."""
    return key.split("|", 2)[1] if key.startswith("pair|") else key


@dataclass
class ImageResult:
    """The verdict on one image reference of one document."""
    position: int                        # index of the image item in Candidate.items
    reason: Optional[str]                # None when kept
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
