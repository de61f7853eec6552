"""Decontamination against the evaluation sets (issue 30): an index built once from the
files ``kosmos eval`` reads, small enough to be a Beam side input, and three checks a
filter makes with it (reason ``eval_contaminated``). Pure: no Beam; the index is read
from local files when it is built, never during the job.

What the index holds, all as sorted ``uint64`` arrays (8 bytes an entry):

* the hashes of the normalised evaluation captions, for an exact caption match of a
  pair (most captions are shorter than the n-grams below and would escape them);
* the hashes of every 13-word n-gram of the evaluation texts (captions, VQA questions
  with their answers, multiple-choice contexts with each ending, JSONL ``text``): a
  document is contaminated when it shares one. GPT-3's 13-gram rule, as DataTrove
  applies it: text normalised (lower case, digits to 0, punctuation to spaces, accents
  removed, spaces collapsed), split into words, a text shorter than the n-gram length
  gives no n-gram (it is counted: ``short_texts``);
* the 64-bit pHashes of the evaluation images, when their files are given: an image
  within ``image_max_distance`` bits of one is contaminated (threshold from
  filters/image_hash.py).

Formats, as trainer/evaluate.py reads them: COCO Karpathy / Flickr30k JSON
(``images[].sentences[].raw``, the ``val`` and ``test`` splits by default), COCO
``captions_*.json`` (``annotations[].caption``), VQAv2 questions (``questions[]``, images
``COCO_<subtype>_<id>.jpg``) and annotations (``annotations[].answers``), a VizWiz JSON
list, and JSON lines with ``caption``/``captions``, ``question``/``answers``,
``context``/``choices`` (or HellaSwag's ``ctx``/``endings``), ``text``, ``image``,
``context``/``candidates`` image lists (Raven).

N-gram hashes: each word hashed once (BLAKE2b, 8 bytes), an n-gram's hash a polynomial
of its words' hashes modulo 2^64 with a splitmix64 finaliser, computed for all n-grams
of a text at once (numpy). With a million entries a random 64-bit hash collides with
one in 5e-14 lookups."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import pickle
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from filters.base import Verdict, drop
from filters.config import SafetyConfig
from filters.image_hash import SAME_PICTURE_MAX_DISTANCE, phash_int, phash_of_bytes

NGRAM_WORDS = SafetyConfig.decontaminate_ngram_words      # 13, as GPT-3 and DataTrove (one default: filters/config.py)
# An evaluation text shorter than NGRAM_WORDS (a COCO caption has about 10 words) is
# matched whole, as a window of its own length, from this many words on: DataTrove
# skips such texts, which would let a page quoting a caption through. Shorter ones
# ("a man riding a horse") are common English, not a leak.
MIN_WHOLE_TEXT_WORDS = 8
EVAL_SPLITS = ("val", "test")          # Karpathy splits that are evaluation data
_DIGITS = re.compile(r"\d+(?:[.,]\d+)?")
_NON_WORD = re.compile(r"[\W_]+")
_MULT = np.uint64(0x100000001B3)       # odd: the polynomial's base
_U64 = np.uint64


# -- text normalisation and hashing -------------------------------------------------------
def normalized_words(text: str) -> List[str]:
    """The words n-grams are made of: lower case, numbers as 0, punctuation and symbols
    as spaces, accents removed (NFKD less its combining marks)."""
    text = text.lower()
    if not text.isascii():
        text = "".join(ch for ch in unicodedata.normalize("NFKD", text) if not unicodedata.combining(ch))
    return _NON_WORD.sub(" ", _DIGITS.sub("0", text)).split()


def normalized_caption(caption: str) -> str:
    return " ".join(normalized_words(caption))


@functools.lru_cache(maxsize=1 << 16)
def _hash64(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")


def _splitmix(h: np.ndarray) -> np.ndarray:
    h = h ^ (h >> _U64(30))
    h = h * _U64(0xBF58476D1CE4E5B9)
    h = h ^ (h >> _U64(27))
    h = h * _U64(0x94D049BB133111EB)
    return h ^ (h >> _U64(31))


def ngram_hashes(words: Sequence[str], n: int = NGRAM_WORDS) -> np.ndarray:
    """The uint64 hash of each n-word window of ``words`` (none when fewer than n)."""
    count = len(words) - n + 1
    if count <= 0:
        return np.zeros(0, dtype=np.uint64)
    word_h = np.array([_hash64(w) for w in words], dtype=np.uint64)
    h = np.zeros(count, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for k in range(n):
            h = h * _MULT + word_h[k:k + count]
        return _splitmix(h)


def caption_hash(caption: str) -> Optional[int]:
    norm = normalized_caption(caption)
    return _hash64(norm) if norm else None


# -- reading the evaluation files ---------------------------------------------------------
@dataclass
class EvalItems:
    captions: List[str] = field(default_factory=list)
    texts: List[str] = field(default_factory=list)
    images: List[str] = field(default_factory=list)       # paths (relative to images_root or absolute)


def _load(path: str) -> Tuple[Any, bool]:
    opener = open
    if path.endswith(".gz"):
        import gzip
        opener = gzip.open
    with opener(path, "rt", encoding="utf-8") as fh:
        text = fh.read()
    if path.endswith((".jsonl", ".jsonl.gz")):
        return [json.loads(line) for line in text.splitlines() if line.strip()], True
    return json.loads(text), False


def _answers(raw: Any) -> List[str]:
    out = []
    for a in raw or []:
        a = a.get("answer") if isinstance(a, dict) else a
        if isinstance(a, str) and a.strip():
            out.append(a)
    return out


def _most_common(answers: List[str]) -> List[str]:
    if not answers:
        return []
    counts: Dict[str, int] = {}
    for a in answers:
        counts[a] = counts.get(a, 0) + 1
    return [max(sorted(counts), key=lambda a: counts[a])]


def _strings(value: Any) -> List[str]:
    if isinstance(value, str):
        return [value] if value.strip() else []
    if isinstance(value, list):
        return [v for v in value if isinstance(v, str) and v.strip()]
    return []


def _rows(items: EvalItems, rows: Iterable[Dict[str, Any]]) -> None:
    """JSON lines (and VizWiz's list): whatever text and image fields a row has."""
    for row in rows:
        if not isinstance(row, dict):
            continue
        caps = _strings(row.get("captions")) + _strings(row.get("caption"))
        items.captions += caps
        items.texts += caps + _strings(row.get("text"))
        question = row.get("question")
        if isinstance(question, str) and question.strip():
            items.texts += [f"{question} {a}" for a in _most_common(_answers(row.get("answers")))] or [question]
        context = row.get("context", row.get("ctx"))
        endings = row.get("choices", row.get("endings"))
        if isinstance(context, str) and isinstance(endings, list):
            items.texts += [f"{context} {e}" for e in _strings(endings)] or [context]
        items.images += _strings(row.get("image"))
        for key in ("context", "candidates"):     # Raven: lists of image paths
            if isinstance(row.get(key), list):
                items.images += _strings(row[key])


def read_eval_file(path: str, splits: Sequence[str] = EVAL_SPLITS, annotations: Optional[str] = None) -> EvalItems:
    """The captions, texts and image paths of one evaluation file (see module doc)."""
    data, _ = _load(path)
    items = EvalItems()
    if isinstance(data, dict) and isinstance(data.get("images"), list) and data["images"] \
            and isinstance(data["images"][0], dict) and "sentences" in data["images"][0]:
        for im in data["images"]:                                   # Karpathy / Flickr30k
            if im.get("split") not in tuple(splits) + (None,) and "all" not in splits:
                continue
            caps = [s["raw"] for s in im.get("sentences") or [] if isinstance(s, dict) and isinstance(s.get("raw"), str)]
            items.captions += caps
            items.texts += caps
            if im.get("filename"):
                items.images.append("/".join(p for p in (im.get("filepath", ""), im["filename"]) if p))
    elif isinstance(data, dict) and isinstance(data.get("annotations"), list) and "images" in data:
        caps = [a["caption"] for a in data["annotations"] if isinstance(a, dict) and isinstance(a.get("caption"), str)]
        items.captions += caps                                      # COCO captions_*.json
        items.texts += caps
        items.images += [im["file_name"] for im in data["images"] if isinstance(im, dict) and im.get("file_name")]
    elif isinstance(data, dict) and isinstance(data.get("questions"), list):      # VQAv2
        answers: Dict[Any, List[str]] = {}
        if annotations:
            adata, _ = _load(annotations)
            for a in adata.get("annotations", []):
                answers[a.get("question_id")] = _most_common(_answers(a.get("answers")))
        subtype = data.get("data_subtype", "val2014")
        folder = "test2015" if subtype == "test-dev2015" else subtype
        for q in data["questions"]:
            question = q.get("question")
            if isinstance(question, str) and question.strip():
                items.texts += [f"{question} {a}" for a in answers.get(q.get("question_id"), [])] or [question]
            if q.get("image_id") is not None:
                items.images.append(f"COCO_{folder}_{int(q['image_id']):012d}.jpg")
    elif isinstance(data, list):                                    # JSON lines, VizWiz
        _rows(items, data)
    items.images = sorted(set(items.images))
    return items


# -- the index ----------------------------------------------------------------------------
@dataclass
class DecontaminationIndex:
    """Sorted uint64 arrays of caption hashes, n-gram hashes and image pHashes, and how
    they were made. Picklable (a Beam side input); :attr:`size_bytes` is its pickle."""
    caption_hashes: np.ndarray
    ngram_hashes: np.ndarray
    image_hashes: np.ndarray
    ngram_words: int = NGRAM_WORDS
    # evaluation texts of MIN_WHOLE_TEXT_WORDS .. ngram_words - 1 words, by length
    whole_text_hashes: Dict[int, np.ndarray] = field(default_factory=dict)
    image_max_distance: int = SAME_PICTURE_MAX_DISTANCE
    sources: List[Dict[str, Any]] = field(default_factory=list)

    @property
    def size_bytes(self) -> int:
        return len(pickle.dumps(self, protocol=pickle.HIGHEST_PROTOCOL))

    def summary(self) -> Dict[str, Any]:
        """What a run records about the index it used."""
        return {"captions": int(self.caption_hashes.size), "ngrams": int(self.ngram_hashes.size),
                "whole_short_texts": int(sum(a.size for a in self.whole_text_hashes.values())),
                "images": int(self.image_hashes.size), "ngram_words": self.ngram_words,
                "image_max_distance": self.image_max_distance, "size_bytes": self.size_bytes,
                "sources": self.sources}

    # -- checks ------------------------------------------------------------------------
    def caption_contaminated(self, caption: str) -> bool:
        """The caption, normalised, is an evaluation caption."""
        h = caption_hash(caption)
        return h is not None and _contains(self.caption_hashes, np.array([h], dtype=np.uint64))[0]

    def text_contaminated(self, text: str) -> Optional[str]:
        """The first n-gram of ``text`` (normalised words) that an evaluation text has, or None."""
        words = normalized_words(text)
        for n, table in ((self.ngram_words, self.ngram_hashes), *sorted(self.whole_text_hashes.items())):
            if not table.size:
                continue
            hashes = ngram_hashes(words, n)
            if not hashes.size:
                continue
            hit = np.flatnonzero(_contains(table, hashes))
            if hit.size:
                i = int(hit[0])
                return " ".join(words[i:i + n])
        return None

    def image_contaminated(self, phash: str) -> Optional[int]:
        """The Hamming distance to the nearest evaluation image when within the
        threshold, else None (also for an empty pHash)."""
        if not phash or not self.image_hashes.size:
            return None
        distances = np.bitwise_count(self.image_hashes ^ np.uint64(phash_int(phash)))
        best = int(distances.min())
        return best if best <= self.image_max_distance else None


def _contains(sorted_hashes: np.ndarray, queries: np.ndarray) -> np.ndarray:
    if not sorted_hashes.size:
        return np.zeros(queries.shape, dtype=bool)
    at = np.searchsorted(sorted_hashes, queries)
    return sorted_hashes[np.minimum(at, sorted_hashes.size - 1)] == queries


def _image_path(root: Optional[str], path: str) -> str:
    if os.path.isabs(path) or not root:
        return path
    return os.path.join(root, path)


def build_index(files: Sequence[str], images_root: Optional[str] = None, *, splits: Sequence[str] = EVAL_SPLITS,
                annotations: Optional[str] = None, ngram_words: int = NGRAM_WORDS,
                image_max_distance: int = SAME_PICTURE_MAX_DISTANCE) -> DecontaminationIndex:
    """The index of the evaluation ``files``; with ``images_root``, the pHashes of their
    images too (an image file missing or undecodable is counted, not fatal)."""
    captions, ngrams, images, sources = set(), [], set(), []
    whole: Dict[int, List[np.ndarray]] = {}
    for path in files:
        items = read_eval_file(path, splits, annotations)
        short, found, unreadable = 0, 0, 0
        for cap in items.captions:
            h = caption_hash(cap)
            if h is not None:
                captions.add(h)
        for text in items.texts:
            words = normalized_words(text)
            hashes = ngram_hashes(words, ngram_words)
            if hashes.size:
                ngrams.append(hashes)
            elif len(words) >= MIN_WHOLE_TEXT_WORDS:
                whole.setdefault(len(words), []).append(ngram_hashes(words, len(words)))
            else:
                short += 1
        if images_root is not None:
            for rel in items.images:
                try:
                    with open(_image_path(images_root, rel), "rb") as fh:
                        value = phash_of_bytes(fh.read())
                except OSError:
                    value = None
                if value is None:
                    unreadable += 1
                else:
                    images.add(phash_int(value))
                    found += 1
        sources.append({"file": os.path.basename(path), "captions": len(items.captions), "texts": len(items.texts),
                        "short_texts": short, "images_listed": len(items.images), "images_hashed": found,
                        "images_unreadable": unreadable})
    ngram_arr = np.unique(np.concatenate(ngrams)) if ngrams else np.zeros(0, dtype=np.uint64)
    whole_arr = {n: np.unique(np.concatenate(parts)).astype(np.uint64) for n, parts in sorted(whole.items())}
    return DecontaminationIndex(np.array(sorted(captions), dtype=np.uint64), ngram_arr.astype(np.uint64),
                                np.array(sorted(images), dtype=np.uint64), ngram_words=ngram_words,
                                whole_text_hashes=whole_arr, image_max_distance=image_max_distance, sources=sources)


def contamination_verdict(by: str, match: Any) -> Verdict:
    """``eval_contaminated``, saying how (``caption``, ``ngram`` or ``image``) and what
    matched (the caption, the n-gram, the Hamming distance) for the audit trail."""
    from contract.reasons import Reason
    return drop(Reason.EVAL_CONTAMINATED, contaminated_by=by, contaminated_match=match)
