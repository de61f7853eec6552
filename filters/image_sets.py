"""Documents with the same set of images (issue 30, reason ``duplicate_image_set``):
OBELICS removes them, keeping one. Pure: the key of a document's image set and the
choice of the survivor; the shuffle that groups documents by key is in
transforms/assemble.py (``AssembleDocuments``).

An image's identity is its 64-bit pHash (``StoredImage.identity``; the sha256 of its
original bytes when it has none): the same picture under any URL, resized or
re-encoded. The hash must be equal, not within a Hamming distance: a key is what a
shuffle groups on, and "within 8 bits" is not transitive. Two different pictures of a
template (plain banners, charts) can share a pHash; a document is only dropped when
its whole set matches. Order and repeats inside a document do not matter."""

from __future__ import annotations

import hashlib
import os
from typing import Iterable, Optional, Sequence, Tuple

from filters.dedup import capture_time

ImageSetKey = Tuple[str, ...]


def image_set_key(image_ids: Iterable[str]) -> Optional[ImageSetKey]:
    """The sorted distinct identities of a document's kept images; None for a document
    without images (it has no image set to share)."""
    ids = sorted({i for i in image_ids if i})
    return tuple(ids) if ids else None


def image_set_digest(key: ImageSetKey) -> str:
    """A fixed-size shuffle key for an image set (32 hex digits of its sha256)."""
    return hashlib.sha256("\n".join(key).encode("utf-8")).hexdigest()[:32]


def survivor_rank(date: str, file: str, offset: int, inner_offset: int, doc_id: str) -> tuple:
    """Sort key of a document among those with its image set: newest capture first,
    then a fixed position (file name, offsets, id), so every runner keeps the same one.
    The same order as transforms/dedup.py's ``capture_rank``."""
    file = os.path.basename(file)
    newest_first = "".join(chr(ord("9") - ord(ch) + ord("0")) if ch.isdigit() else ch for ch in capture_time(date))
    return (newest_first, file, offset, inner_offset, doc_id)


def choose_survivor(ranks: Sequence[tuple]) -> int:
    """The index of the document kept among those sharing an image set (the others
    are ``duplicate_image_set``), given each one's :func:`survivor_rank`."""
    if not ranks:
        raise ValueError("no documents to choose from")
    return min(range(len(ranks)), key=lambda i: ranks[i])
