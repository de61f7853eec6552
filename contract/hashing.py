"""Seeded hashes: numbers drawn from a key, the same on every machine, runner and rerun.

Curation and training both draw from here, so a draw never depends on Python's
per-process ``hash()`` salt nor on the order work arrives in. Each value is the first
8 bytes of the sha256 of a text; the texts and byte orders below are frozen, since
they decide which documents a run keeps (the single-image draw) and the order the
trainer reads its data in: ``tests/test_hashing.py`` pins values of each.
"""

from __future__ import annotations

import hashlib


def hash64(text: str, byteorder: str = "little") -> int:
    """The first 8 bytes of the sha256 of ``text`` (UTF-8), as an unsigned integer."""
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], byteorder)


def seeded_hash(*key) -> int:
    """A 64-bit integer from a tuple of plain values (ints, strings), e.g. a random
    generator's seed from ``(seed, source, epoch)``: ``repr`` of the tuple is hashed."""
    return hash64(repr(key), "little")


def stable_unit_interval(seed: int, key: str) -> float:
    """A number in [0, 1) from a seeded hash of ``key``."""
    return hash64(f"{seed}:{key}", "big") / 2.0 ** 64
