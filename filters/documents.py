"""Document-level rules (KOSMOS.md §1, steps 2, 5, 6)."""

from __future__ import annotations

from typing import List, Sequence, Tuple

from contract.reasons import Reason
from contract.hashing import stable_unit_interval
from filters.base import Verdict, drop, keep


def interspersed(n_images: int, n_text_items: int) -> Verdict:
    """Step 2: images interspersed with text: at least one image and some text."""
    if n_images == 0:
        return drop(Reason.NO_IMAGES_IN_CONTENT, images=n_images, text_items=n_text_items)
    if n_text_items == 0:
        return drop(Reason.NO_TEXT_IN_CONTENT, images=n_images, text_items=n_text_items)
    return keep(images=n_images, text_items=n_text_items)


def cap_images(image_positions: Sequence[int], max_images: int) -> Tuple[List[int], List[int]]:
    """Step 5: keep the first ``max_images`` images in reading order."""
    ordered = sorted(image_positions)
    return ordered[:max_images], ordered[max_images:]


def drop_half_of_single_image_docs(doc_id: str, n_images: int, seed: int,
                                   fraction: float = 0.5) -> Verdict:
    """Step 6: of the documents left with exactly one image, drop ``fraction``,
    chosen by a seeded hash of the document id."""
    if n_images != 1:
        return keep()
    u = stable_unit_interval(seed, doc_id)
    if u < fraction:
        return drop(Reason.SINGLE_IMAGE_DROPPED, single_image_hash=round(u, 6))
    return keep(single_image_hash=round(u, 6))
