"""Deduplication logic (KOSMOS.md §1, step 7): URL keys, exact text hashes, and
MinHash signatures with LSH banding for near-duplicates. Pure functions; the
shuffles that make them work at corpus scale are in ``transforms/dedup.py``.

The MinHash is datasketch's (legacy scheme: SHA-1 32-bit shingle hashes and
permutations ``(a * h + b) mod (2^61 - 1)`` truncated to 32 bits, drawn from
``numpy.random.RandomState(seed)``), vectorised over all shingles of a document, so
its signatures equal ``datasketch.MinHash(num_perm, seed, scheme="legacy")`` (the
only scheme before datasketch 2.0) fed the same shingles.
"""

from __future__ import annotations

import hashlib
import re
import struct
import unicodedata
from datetime import datetime, timezone
from typing import Iterable, List, Sequence

import numpy as np

MERSENNE_PRIME = np.uint64((1 << 61) - 1)
MAX_HASH = np.uint64((1 << 32) - 1)

_NON_WORD = re.compile(r"[\W_]+", re.UNICODE)


# -- URLs and captures -------------------------------------------------------------
def capture_time(date: str) -> str:
    """A WARC-Date (or ARC date) as a sortable UTC timestamp; unparsable dates sort first."""
    text = (date or "").strip()
    for fmt in ("%Y-%m-%dT%H:%M:%S.%fZ", "%Y-%m-%dT%H:%M:%SZ", "%Y-%m-%dT%H:%MZ", "%Y-%m-%dT%H:%M",
                "%Y-%m-%dT%H:%M:%S", "%Y%m%d%H%M%S"):
        try:
            return datetime.strptime(text, fmt).replace(tzinfo=timezone.utc).strftime("%Y%m%d%H%M%S%f")
        except ValueError:
            continue
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(timezone.utc).strftime("%Y%m%d%H%M%S%f")
    except ValueError:
        return "0" * 20


# -- text ----------------------------------------------------------------------------
def normalize_text(text: str) -> str:
    """Case, accents' composition, punctuation and spacing do not make a document new."""
    text = unicodedata.normalize("NFKC", text).lower()
    return _NON_WORD.sub(" ", text).strip()


def exact_text_hash(paragraphs: Iterable[str]) -> str:
    return hashlib.sha256(normalize_text("\n".join(paragraphs)).encode("utf-8")).hexdigest()


def word_ngrams(text: str, n: int) -> List[bytes]:
    """Word n-grams of the normalised text (a short text is one shingle)."""
    words = normalize_text(text).split()
    if not words:
        return []
    if len(words) < n:
        return [" ".join(words).encode("utf-8")]
    return [" ".join(words[i:i + n]).encode("utf-8") for i in range(len(words) - n + 1)]


def sha1_hash32(data: bytes) -> int:
    return struct.unpack("<I", hashlib.sha1(data).digest()[:4])[0]


class MinHasher:
    def __init__(self, num_perm: int, seed: int = 1):
        gen = np.random.RandomState(seed)
        perms = np.array([(gen.randint(1, MERSENNE_PRIME, dtype=np.uint64),
                           gen.randint(0, MERSENNE_PRIME, dtype=np.uint64)) for _ in range(num_perm)],
                         dtype=np.uint64).T
        self.a = perms[0][np.newaxis, :]
        self.b = perms[1][np.newaxis, :]
        self.num_perm = num_perm

    def signature(self, shingles: Sequence[bytes]) -> np.ndarray:
        """uint64[num_perm]; all MAX_HASH for an empty set (as datasketch)."""
        if not shingles:
            return np.full(self.num_perm, MAX_HASH, dtype=np.uint64)
        hv = np.fromiter((sha1_hash32(s) for s in set(shingles)), dtype=np.uint64)[:, np.newaxis]
        with np.errstate(over="ignore"):
            phv = (hv * self.a + self.b) % MERSENNE_PRIME & MAX_HASH
        return phv.min(axis=0)


def band_keys(signature: np.ndarray, bands: int, rows: int) -> List[str]:
    """One key per band: documents sharing any key become candidate duplicates."""
    if bands * rows > len(signature):
        raise ValueError(f"{bands} bands x {rows} rows need {bands * rows} hashes, have {len(signature)}")
    return [f"{b}:{hashlib.sha1(signature[b * rows:(b + 1) * rows].tobytes()).hexdigest()[:20]}"
            for b in range(bands)]


def collision_probability(similarity: float, bands: int, rows: int) -> float:
    """P(two documents of Jaccard ``similarity`` share at least one band)."""
    return 1.0 - (1.0 - similarity ** rows) ** bands


def jaccard(a: Iterable, b: Iterable) -> float:
    a, b = set(a), set(b)
    return len(a & b) / len(a | b) if a or b else 1.0
