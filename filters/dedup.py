"""Deduplication logic (KOSMOS.md §1, step 7): exact text hashes, and MinHash
signatures with LSH banding for near-duplicates. Pure functions; the shuffles that
make them work at corpus scale are in ``transforms/dedup.py`` (URL keys: filters/urls.py).

The MinHash is datasketch's classic scheme (``datasketch.MinHash(num_perm, seed,
scheme="legacy", hashfunc=shingle_hash32)``): 32-bit shingle hashes and
permutations ``(a * h + b) mod (2^61 - 1)`` truncated to 32 bits, drawn from
``numpy.random.RandomState(seed)``; the tests hold our signatures equal to it. Two
things make it fast (about 10x datasketch's ``update_batch``, measured by
benchmarks/dedup.py):

* the shingle hash is a polynomial hash of the word n-gram's code points with a
  splitmix64 finaliser, computed for every n-gram of a document at once from prefix
  sums over the normalised text (numpy), instead of one SHA-1 call per shingle;
* the permutations run in a compiled loop (numba) that keeps the running minimum,
  instead of a shingles x permutations array.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from datetime import datetime, timezone
from typing import Iterable, List, Sequence, Tuple

import numba
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
    """Case, accents' composition, punctuation and spacing do not make a document new:
    NFKC, lower case, then the words (runs of characters outside ``_NON_WORD``) joined
    by one space. The words are read in one compiled pass over the code points
    (``_words``, the pass that also reads the shingles): the same string as
    ``_NON_WORD.sub(" ", text).strip()`` at a fraction of its cost."""
    norm, _, _ = _words(*_code_points(_folded(text), "surrogatepass"))
    return _text_of(norm)


def exact_text_hash(paragraphs: Iterable[str]) -> str:
    return _sha256_of(normalize_text("\n".join(paragraphs)))


def text_hash_and_shingles(text: str, n: int) -> Tuple[str, np.ndarray]:
    """``(exact_text_hash([text]), shingle_hashes(text, n))`` from one pass over the
    text: both read the same words (what ``shingle_hashes`` refuses, this refuses)."""
    norm, starts, ends = _words(*_code_points(_folded(text), "strict"))
    return _sha256_of(_text_of(norm)), _hashes_of_words(norm, starts, ends, n)


def _folded(text: str) -> str:
    return unicodedata.normalize("NFKC", text).lower()


def _sha256_of(normalized: str) -> str:
    return hashlib.sha256(normalized.encode("utf-8")).hexdigest()


def _text_of(norm: np.ndarray) -> str:
    """The normalised text from its code points (words and single spaces: no surrogate)."""
    return norm.tobytes().decode("utf-32-le")


def word_ngrams(text: str, n: int) -> List[bytes]:
    """Word n-grams of the normalised text (a short text is one shingle)."""
    words = normalize_text(text).split()
    if not words:
        return []
    if len(words) < n:
        return [" ".join(words).encode("utf-8")]
    return [" ".join(words[i:i + n]).encode("utf-8") for i in range(len(words) - n + 1)]


def _compiled(fn):
    """numba-compiled, cached on disk beside the module (or in numba's user cache); where
    neither is writable (a read-only install), compiled once per process instead."""
    try:
        return numba.njit(nogil=True, cache=True)(fn)
    except RuntimeError:
        return numba.njit(nogil=True)(fn)


# -- shingle hashes ----------------------------------------------------------------------
_M64 = (1 << 64) - 1
_BASE = 0x9E3779B97F4A7C15                    # odd, so invertible mod 2^64
_BASE_INV = pow(_BASE, -1, 1 << 64)
_LENGTH_MIX = 0xC2B2AE3D27D4EB4F
_MIX1, _MIX2 = 0xBF58476D1CE4E5B9, 0x94D049BB133111EB      # splitmix64's finaliser


def shingle_hash32(shingle) -> int:
    """The 32-bit hash of one shingle (``str``, or UTF-8 ``bytes``): the polynomial
    sum of its code points c_j * BASE^j mod 2^64, its length mixed in, splitmix64's
    finaliser, the high 32 bits. The reference for the vectorised form (and the
    ``hashfunc`` that makes datasketch's MinHash equal ours)."""
    text = shingle.decode("utf-8", "surrogateescape") if isinstance(shingle, (bytes, bytearray)) else shingle
    h, p = 0, 1
    for ch in text:
        h = (h + ord(ch) * p) & _M64
        p = (p * _BASE) & _M64
    z = (h ^ (len(text) * _LENGTH_MIX)) & _M64
    z = ((z ^ (z >> 30)) * _MIX1) & _M64
    z = ((z ^ (z >> 27)) * _MIX2) & _M64
    return (z ^ (z >> 31)) >> 32


_ASCII_WORD = np.array([chr(c).isalnum() for c in range(128)], dtype=np.bool_)   # \w minus "_", ASCII part


class _Powers:
    """BASE^i and BASE^-i mod 2^64, grown as longer texts arrive."""

    def __init__(self):
        self.up = self.down = np.ones(0, dtype=np.uint64)

    def get(self, n: int) -> Tuple[np.ndarray, np.ndarray]:
        if len(self.up) < n:
            size = max(n, 2 * len(self.up), 4096)
            up = np.full(size, _BASE, dtype=np.uint64)
            down = np.full(size, _BASE_INV, dtype=np.uint64)
            up[0] = down[0] = 1
            self.up, self.down = np.cumprod(up, dtype=np.uint64), np.cumprod(down, dtype=np.uint64)
        return self.up, self.down


_POWERS = _Powers()


def _code_points(folded: str, errors: str) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A folded text's code points, the ASCII word table, and its non-ASCII code points
    that are not word characters (sorted). ``errors`` for a lone surrogate: "strict"
    refuses it (UnicodeEncodeError), "surrogatepass" reads it (not a word character)."""
    cp = np.frombuffer(folded.encode("utf-32-le", errors), dtype=np.uint32)
    if folded.isascii():
        not_word = np.empty(0, dtype=np.uint32)
    else:
        high = np.unique(cp[cp > 127])
        not_word = np.array([c for c in high.tolist() if not chr(c).isalnum()], dtype=np.uint32)
    return cp, _ASCII_WORD, not_word


@_compiled
def _words(cp, ascii_word, not_word):
    """One pass over the code points: the words (runs of word characters, as ``\\w``
    without "_") joined by one space. (normalised code points, each word's start,
    each word's end), starts and ends as positions in the normalised code points."""
    norm = np.empty(cp.shape[0], dtype=np.uint32)
    starts = np.empty(cp.shape[0], dtype=np.int64)
    ends = np.empty(cp.shape[0], dtype=np.int64)
    m = 0
    words = 0
    inside = False
    for i in range(cp.shape[0]):
        c = cp[i]
        if c < 128:
            is_word = ascii_word[c]
        else:
            k = np.searchsorted(not_word, c)
            is_word = not (k < not_word.shape[0] and not_word[k] == c)
        if is_word:
            if not inside:
                if words > 0:
                    norm[m] = np.uint32(32)
                    m += 1
                starts[words] = m
                words += 1
                inside = True
            norm[m] = c
            m += 1
        elif inside:
            ends[words - 1] = m
            inside = False
    if inside:
        ends[words - 1] = m
    return norm[:m], starts[:words], ends[:words]


@_compiled
def _ngram_hashes(norm, starts, ends, n, up, down):
    """``shingle_hash32`` of each word n-gram, from prefix sums of c_j * BASE^j over
    the normalised code points."""
    words = starts.shape[0]
    if words == 0:
        return np.empty(0, dtype=np.uint64)
    m = norm.shape[0]
    prefix = np.empty(m + 1, dtype=np.uint64)
    prefix[0] = np.uint64(0)
    for j in range(m):
        prefix[j + 1] = prefix[j] + np.uint64(norm[j]) * up[j]
    count = words - n + 1 if words >= n else 1
    span = n if words >= n else words
    out = np.empty(count, dtype=np.uint64)
    for g in range(count):
        s = starts[g]
        e = ends[g + span - 1]
        z = (prefix[e] - prefix[s]) * down[s]
        z ^= np.uint64(e - s) * np.uint64(_LENGTH_MIX)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(_MIX1)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(_MIX2)
        out[g] = (z ^ (z >> np.uint64(31))) >> np.uint64(32)
    return out


def _hashes_of_words(norm: np.ndarray, starts: np.ndarray, ends: np.ndarray, n: int) -> np.ndarray:
    up, down = _POWERS.get(len(norm) + 1)
    return _ngram_hashes(norm, starts, ends, n, up, down)


def shingle_hashes(text: str, n: int) -> np.ndarray:
    """``shingle_hash32`` of every word n-gram of ``normalize_text(text)`` (a text of
    fewer than n words is one shingle), uint64, in text order, repeats included."""
    return _hashes_of_words(*_words(*_code_points(_folded(text), "strict")), n)


@_compiled
def _min_permuted(hashes, a, b):
    """min over hashes of ((a * h + b) mod (2^61 - 1)) & (2^32 - 1), per permutation;
    the products wrap at 2^64 as numpy's (and so datasketch's) do."""
    prime = np.uint64((1 << 61) - 1)
    low = np.uint64((1 << 32) - 1)
    out = np.full(a.shape[0], low, dtype=np.uint64)
    for i in range(hashes.shape[0]):
        h = hashes[i]
        for j in range(a.shape[0]):
            x = h * a[j] + b[j]
            r = (x & prime) + (x >> np.uint64(61))
            if r >= prime:
                r -= prime
            r &= low
            if r < out[j]:
                out[j] = r
    return out


class MinHasher:
    def __init__(self, num_perm: int, seed: int = 1):
        gen = np.random.RandomState(seed)
        perms = np.array([(gen.randint(1, MERSENNE_PRIME, dtype=np.uint64),
                           gen.randint(0, MERSENNE_PRIME, dtype=np.uint64)) for _ in range(num_perm)],
                         dtype=np.uint64).T
        self.a = np.ascontiguousarray(perms[0])
        self.b = np.ascontiguousarray(perms[1])
        self.num_perm = num_perm

    def of_hashes(self, hashes: np.ndarray) -> np.ndarray:
        """uint64[num_perm] from 32-bit shingle hashes; all MAX_HASH for none (as datasketch)."""
        if not len(hashes):
            return np.full(self.num_perm, MAX_HASH, dtype=np.uint64)
        return _min_permuted(np.ascontiguousarray(hashes, dtype=np.uint64), self.a, self.b)

    def of_text(self, text: str, n: int) -> np.ndarray:
        """The signature of a document's word n-grams (``word_ngrams(text, n)``)."""
        return self.of_hashes(shingle_hashes(text, n))

    def signature(self, shingles: Sequence) -> np.ndarray:
        """The signature of given shingles (``str`` or ``bytes``), hashed one by one."""
        return self.of_hashes(np.fromiter((shingle_hash32(s) for s in set(shingles)), dtype=np.uint64))


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
