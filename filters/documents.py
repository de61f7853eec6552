"""Document-level rules (KOSMOS.md §1, steps 2, 5, 6)."""

from __future__ import annotations

import hashlib
from typing import List, Sequence, Tuple

from filters.base import Verdict, drop, keep


def stable_unit_interval(seed: int, key: str) -> float:
    """A number in [0, 1) from a seeded hash: the same on every runner and rerun."""
    digest = hashlib.sha256(f"{seed}:{key}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0 ** 64


def interspersed(n_images: int, n_text_items: int) -> Verdict:
    """Step 2: images interspersed with text: at least one image and some text."""
    if n_images == 0:
        return drop("no_images_in_content", images=n_images, text_items=n_text_items)
    if n_text_items == 0:
        return drop("no_text_in_content", images=n_images, text_items=n_text_items)
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
        return drop("single_image_dropped", single_image_hash=round(u, 6))
    return keep(single_image_hash=round(u, 6))
