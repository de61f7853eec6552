"""Spam and gibberish heuristics on emoji, hashtags and URL links (KOSMOS.md §1, step 4).

Paragraphs that look like spam are cut from a document; a document whose text as
a whole still looks like spam or gibberish is dropped. Scores are returned so that
they can be stored beside the document and thresholds re-run later.
"""

from __future__ import annotations

import operator
import re
import threading
from itertools import compress
from typing import Dict, List, Optional, Sequence, Tuple

from contract.reasons import Reason
from filters.base import Verdict, drop, keep
from filters.boilerplate import filter_boilerplate, navigation_paragraph, tail_heading, word_list_paragraph
from filters.config import TextQualityConfig

# Pictographs, dingbats, flags, symbols and the joiners/selectors that build emoji sequences.
_EMOJI = re.compile(
    "[\U0001F000-\U0001FAFF\U00002600-\U000027BF\U0001F1E6-\U0001F1FF"
    "\U00002B00-\U00002BFF\U0000FE0F\U0000200D\U000E0020-\U000E007F]")
_URL = re.compile(r"(?:\b[a-z][a-z0-9+.-]*://|\bwww\.)[^\s<>\"']+", re.IGNORECASE)
_HASHTAG = re.compile(r"(?:^|\s)#\w*[^\W\d_]\w*", re.UNICODE)     # "#3" is a number, not a hashtag
# A word (a run of non-space) with a letter in it, matched once, at its start: a
# letter is a word character that is neither a digit nor "_".
_ALPHA_WORD = re.compile(r"(?<!\S)\S*?[^\W\d_]", re.UNICODE)


# Punctuation and symbols (and "_"): neither a word character nor a space. Over the
# non-space characters, so that spacing and numbers do not count: the OBELICS /
# BigScience ratio counts whitespace and digits too, which on the English pages of
# ../shared/data/pages-eval cut 269 paragraphs of 6 words or more, nearly all ordinary
# prose ("If you would like to speak to the assisted travel team ... please call
# 0800 528 2100"). Measured there: prose paragraphs median 0.03, 99th percentile 0.31
# (short dialogue in quotes, code); whole English documents at most 0.09.
_SPECIAL = re.compile(r"[^\w\s]|_", re.UNICODE)


# On ASCII text (most paragraphs) the classes are read from its bytes, with tables built
# from the patterns themselves: what deleting every byte _SPECIAL does not match leaves.
_ASCII_NOT_SPECIAL = bytes(c for c in range(128) if not _SPECIAL.match(chr(c)))
# Letters ("a"), spaces (" ") and nothing else: a word has a letter when it leaves an "a".
_ASCII_LETTERS = bytes(c for c in range(128) if re.fullmatch(r"[^\W\d_]", chr(c)))
_ASCII_SPACES = bytes(c for c in range(128) if chr(c).isspace())
_ASCII_WORD_SHAPE = bytes.maketrans(_ASCII_LETTERS + _ASCII_SPACES,
                                    b"a" * len(_ASCII_LETTERS) + b" " * len(_ASCII_SPACES))
_ASCII_NEITHER = bytes(c for c in range(256) if c not in _ASCII_LETTERS and c not in _ASCII_SPACES)


def _counts(text: str) -> Tuple[int, int, int, int, int, int]:
    """(words, non-space characters, emoji, URL characters, hashtags, special characters)
    of ``text``. No match spans a space and a text's start reads as a space would, so the
    counts of paragraphs joined by "\n" are the sums of theirs."""
    words = text.split()             # str.split and the regex \s agree on what a space is
    ascii_ = text.isascii()
    emoji = 0 if ascii_ else len(_EMOJI.findall(text))      # every emoji is outside ASCII
    # a URL has "://" or "www." (no character but "w" and "W" matches "w" ignoring case)
    url_chars = sum(m.end() - m.start() for m in _URL.finditer(text)) \
        if "://" in text or "w." in text or "W." in text else 0
    hashtags = len(_HASHTAG.findall(text)) if "#" in text else 0
    special = len(text.encode("ascii").translate(None, _ASCII_NOT_SPECIAL)) if ascii_ \
        else len(_SPECIAL.findall(text))
    return len(words), sum(map(len, words)), emoji, url_chars, hashtags, special


def _alpha_words(text: str) -> int:
    """The words (runs of non-space) with a letter in them."""
    if text.isascii():
        shape = text.encode("ascii").translate(_ASCII_WORD_SHAPE, _ASCII_NEITHER)   # "a" and " " left
        return shape.count(b" a") + shape.startswith(b"a")
    return len(_ALPHA_WORD.findall(text))


def _signals(counts: Tuple[int, int, int, int, int, int], n_chars: int, alpha_words: int) -> Dict[str, float]:
    n_words, non_space, emoji, url_chars, hashtags, special = counts
    return {
        "words": n_words,
        "emoji_ratio": emoji / non_space if non_space else 0.0,
        "url_char_ratio": url_chars / n_chars if n_chars else 0.0,
        "hashtag_ratio": hashtags / n_words if n_words else 0.0,
        "special_char_ratio": special / non_space if non_space else 0.0,
        "alpha_word_ratio": alpha_words / n_words if n_words else 0.0,
    }


def text_signals(text: str) -> Dict[str, float]:
    return _signals(_counts(text), len(text), _alpha_words(text))


# The counts of the paragraphs of this thread's last page (text -> _counts), so that the
# document pass on the paragraphs kept reads none of them again. A cache by text: a miss
# (another page, another thread) only costs the scan.
_recent = threading.local()


def _document_signals(paragraphs: Sequence[str]) -> Dict[str, float]:
    """``text_signals`` of the paragraphs joined by "\n", from their counts."""
    text = "\n".join(paragraphs)
    known = getattr(_recent, "counts", None) or {}
    rows = [known.get(p) or _counts(p) for p in paragraphs]
    totals = tuple(map(sum, zip(*rows))) if rows else (0, 0, 0, 0, 0, 0)
    # a word never spans a "\n": the ASCII paragraphs are read apart, quickly
    if text.isascii():
        alpha = _alpha_words(text)
    else:
        ascii_ = [p.isascii() for p in paragraphs]
        alpha = _alpha_words("\n".join(compress(paragraphs, ascii_))) + \
            len(_ALPHA_WORD.findall("\n".join(compress(paragraphs, map(operator.not_, ascii_)))))
    return _signals(totals, len(text), alpha)


def _spam_reason(sig: Dict[str, float], cfg: TextQualityConfig, max_special: float):
    if sig["emoji_ratio"] > cfg.max_emoji_ratio:
        return Reason.SPAM.of("emoji")
    if sig["hashtag_ratio"] > cfg.max_hashtag_ratio:
        return Reason.SPAM.of("hashtags")
    if sig["url_char_ratio"] > cfg.max_url_char_ratio:
        return Reason.SPAM.of("urls")
    if sig["special_char_ratio"] > max_special:
        return Reason.SPECIAL_CHARACTERS
    return None


def _rounded(sig: Dict[str, float]) -> Dict[str, float]:
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in sig.items()}


def filter_paragraph(text: str, cfg: TextQualityConfig) -> Verdict:
    sig = text_signals(text)
    reason = _spam_reason(sig, cfg, cfg.max_special_char_ratio_paragraph)
    return drop(reason, **_rounded(sig)) if reason else keep(**_rounded(sig))


def _paragraph_spam(counts: Tuple[int, int, int, int, int, int], n_chars: int, cfg: TextQualityConfig):
    """``_spam_reason`` of a paragraph's signals, from its counts."""
    n_words, non_space, emoji, url_chars, hashtags, special = counts
    if (emoji / non_space if non_space else 0.0) > cfg.max_emoji_ratio:
        return Reason.SPAM.of("emoji")
    if (hashtags / n_words if n_words else 0.0) > cfg.max_hashtag_ratio:
        return Reason.SPAM.of("hashtags")
    if (url_chars / n_chars if n_chars else 0.0) > cfg.max_url_char_ratio:
        return Reason.SPAM.of("urls")
    if (special / non_space if non_space else 0.0) > cfg.max_special_char_ratio_paragraph:
        return Reason.SPECIAL_CHARACTERS
    return None


def paragraph_cuts(paragraphs: Sequence[str], cfg: TextQualityConfig, english: bool = False
                   ) -> List[Optional[str]]:
    """Paragraph-level pass: for each paragraph, the reason it is cut (None: it stays).
    ``english``: the page is known to be English, so the rules that read English words
    apply too (:func:`english_cuts`); they would cut any other language."""
    cuts: List[Optional[str]] = []
    counts: Dict[str, Tuple[int, int, int, int, int, int]] = {}
    judged: Dict[str, Optional[str]] = {}           # a page repeats paragraphs ("In stock")
    navigation = cfg.cut_navigation_paragraphs
    for p in paragraphs:
        if p in judged:
            cuts.append(judged[p])
            continue
        c = counts[p] = _counts(p)
        cut = _paragraph_spam(c, len(p), cfg)
        if cut is None and navigation and navigation_paragraph(p):
            cut = "navigation"
        cuts.append(cut)
        judged[p] = cut
    _recent.counts = counts
    if english:
        more = english_cuts(paragraphs, [c is None for c in cuts], cfg)
        cuts = [c or m for c, m in zip(cuts, more)]
    return cuts


def english_cuts(paragraphs: Sequence[str], kept: Sequence[bool], cfg: TextQualityConfig
                 ) -> List[Optional[str]]:
    """The cuts of a page known to be English, among the paragraphs still ``kept``:
    ``word_list`` paragraphs, and ``tail_section``: everything from a closing section's
    heading ("References", "See also", "Related posts") in the second half of the text."""
    cuts: List[Optional[str]] = [None] * len(paragraphs)
    if not cfg.cut_navigation_paragraphs:
        return cuts
    total = sum(len(p) for p, k in zip(paragraphs, kept) if k) or 1
    seen = 0
    for i, (p, k) in enumerate(zip(paragraphs, kept)):
        if not k:
            continue
        if seen >= 0.5 * total and tail_heading(p):
            for j in range(i, len(paragraphs)):
                cuts[j] = "tail_section" if kept[j] else None
            return cuts
        seen += len(p)
        if word_list_paragraph(p):
            cuts[i] = "word_list"
    return cuts


def filter_paragraphs(paragraphs: Sequence[str], cfg: TextQualityConfig
                      ) -> Tuple[List[bool], Dict[str, int]]:
    """Which paragraphs survive, and removals counted by reason."""
    cuts = paragraph_cuts(paragraphs, cfg)
    removed: Dict[str, int] = {}
    for reason in cuts:
        if reason is not None:
            removed[reason] = removed.get(reason, 0) + 1
    return [c is None for c in cuts], removed


def filter_document_text(paragraphs: Sequence[str], cfg: TextQualityConfig) -> Verdict:
    """Document-level pass on the text that survived the paragraph pass."""
    sig = _rounded(_document_signals(paragraphs))
    if sig["words"] < cfg.min_words:
        return drop(Reason.TOO_FEW_WORDS, **sig)
    reason = _spam_reason(sig, cfg, cfg.max_special_char_ratio_document)
    if reason:
        return drop(reason, **sig)
    if sig["alpha_word_ratio"] < cfg.min_alpha_word_ratio:
        return drop(Reason.GIBBERISH, **sig)
    bp = filter_boilerplate(paragraphs, cfg)
    return Verdict(bp.keep, bp.reason, {**sig, **bp.scores})
