"""Flagged words: the share of a document's words that are on a flagged-word list.

OBELICS (Laurençon et al. 2023, obelics/configs/config_filter_web_documents.yaml) drops a
document whose flagged-word ratio is above 0.01 (``flagged_word_ratio_doc_level_max_cutoff``;
a ratio equal to it is kept), with words taken as BigScience's ROOTS filtering does: split on
spaces, newlines and tabs, lower-cased, special characters stripped from both ends, empty
words dropped; the ratio is flagged words / words.

The list: OBELICS used the English LDNOOBW list ("List of Dirty, Naughty, Obscene and
Otherwise Bad Words", CC BY 4.0) as in ROOTS. A per-word ratio can only ever match its
one-word entries, and DataTrove ships exactly those, split in two files for its URL filter:
``banned_words.txt`` (one is enough to block a URL) and ``soft_banned_words.txt`` (two are
needed). Ours is the hard file alone, read from the installed package (Apache-2.0): the soft
words (``sex``, ``rape``, ``lesbian``, ``sexuality``, ``bitch``) are the words of sex
education, of reporting on violence and of a feminist magazine's own name, and with them 39
harmless real pages of ../shared/data went over the threshold. better-profanity (MIT) ships
a chat-profanity list with leetspeak variants, a different list than the one OBELICS used;
alt-profanity-check ships a trained model, not a list.
"""

from __future__ import annotations

import string
from collections import Counter
from functools import lru_cache
from pathlib import Path
from typing import FrozenSet, Optional, Tuple

from contract.reasons import Reason
from filters.base import Verdict, drop, keep
from filters.config import SafetyConfig

MAX_FLAGGED_RATIO = SafetyConfig.max_flagged_word_ratio     # 0.01, OBELICS, document level (filters/config.py)

# Stripped from both ends of a word. ROOTS strips digits too; we keep them, so that the
# list's own entries with digits ("2g1c", "18abused") can match.
_STRIP = string.punctuation + "«»‘’‚‛“”„‟‹›–—―…·•¡¿°©®™§¶"


@lru_cache(maxsize=1)
def flagged_word_list(assets: Optional[Path] = None) -> FrozenSet[str]:
    """DataTrove's hard-banned one-word list (from LDNOOBW English), ``#`` lines skipped,
    lower case. Its soft list (``sex``, ``rape``, ``lesbian``, ``sexuality``, ``bitch``...)
    is left out: DataTrove itself needs two of those in a URL before it blocks, and in
    running text they are the words of sex education, reporting on violence and a
    feminist magazine's own name (39 real pages of bitchmagazine.org in ../shared/data
    went over OBELICS's 0.01 with them, none with the hard list)."""
    from filters.safety_urls import datatrove_assets
    assets = Path(assets) if assets else datatrove_assets()
    words = set()
    for name in ("banned_words.txt",):
        for line in (assets / name).read_text(encoding="utf-8").splitlines():
            line = line.strip().lower()
            if line and line[0] != "#":
                words.add(line)
    return frozenset(words)


def flagged_ratio(text: str, words: Optional[FrozenSet[str]] = None) -> Tuple[float, int, int]:
    """(ratio, flagged words, words) of ``text``."""
    flagged = flagged_word_list() if words is None else words
    tokens = Counter(text.lower().split())      # split() on all whitespace: ROOTS splits on " \n\t"
    n = sum(tokens.values())
    hits = 0
    strip = _STRIP
    for w, c in tokens.items():                 # each distinct token once
        s = w.strip(strip)
        if not s:
            n -= c                              # only special characters: no word
        elif s in flagged:
            hits += c
    return (hits / n if n else 0.0), hits, n


def check_flagged_words(text: str, max_ratio: float = MAX_FLAGGED_RATIO,
                        words: Optional[FrozenSet[str]] = None) -> Verdict:
    """Drop (``flagged_words``) a document whose flagged-word ratio is above ``max_ratio``."""
    ratio, hits, n = flagged_ratio(text, words)
    scores = {"flagged_word_ratio": round(ratio, 6), "flagged_words": hits}
    if ratio > max_ratio:
        return drop(Reason.FLAGGED_WORDS, **scores)
    return keep(**scores)
