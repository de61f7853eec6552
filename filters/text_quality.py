"""Spam and gibberish heuristics on emoji, hashtags and URL links (KOSMOS.md §1, step 4).

Paragraphs that look like spam are cut from a document; a document whose text as
a whole still looks like spam or gibberish is dropped. Scores are returned so that
they can be stored beside the document and thresholds re-run later.
"""

from __future__ import annotations

import re
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


def text_signals(text: str) -> Dict[str, float]:
    words = text.split()             # str.split and the regex \s agree on what a space is
    n_words = len(words)
    n_chars = len(text)
    non_space = sum(map(len, words))
    emoji = len(_EMOJI.findall(text))
    url_chars = sum(len(m.group(0)) for m in _URL.finditer(text))
    hashtags = len(_HASHTAG.findall(text))
    special = len(_SPECIAL.findall(text))
    alpha_words = len(_ALPHA_WORD.findall(text))
    return {
        "words": n_words,
        "emoji_ratio": emoji / non_space if non_space else 0.0,
        "url_char_ratio": url_chars / n_chars if n_chars else 0.0,
        "hashtag_ratio": hashtags / n_words if n_words else 0.0,
        "special_char_ratio": special / non_space if non_space else 0.0,
        "alpha_word_ratio": alpha_words / n_words if n_words else 0.0,
    }


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


def paragraph_cuts(paragraphs: Sequence[str], cfg: TextQualityConfig, english: bool = False
                   ) -> List[Optional[str]]:
    """Paragraph-level pass: for each paragraph, the reason it is cut (None: it stays).
    ``english``: the page is known to be English, so the rules that read English words
    apply too (:func:`english_cuts`); they would cut any other language."""
    cuts: List[Optional[str]] = []
    for p in paragraphs:
        v = filter_paragraph(p, cfg)
        if not v.keep:
            cuts.append(v.reason)
        elif cfg.cut_navigation_paragraphs and navigation_paragraph(p):
            cuts.append("navigation")
        else:
            cuts.append(None)
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
    text = "\n".join(paragraphs)
    sig = _rounded(text_signals(text))
    if sig["words"] < cfg.min_words:
        return drop(Reason.TOO_FEW_WORDS, **sig)
    reason = _spam_reason(sig, cfg, cfg.max_special_char_ratio_document)
    if reason:
        return drop(reason, **sig)
    if sig["alpha_word_ratio"] < cfg.min_alpha_word_ratio:
        return drop(Reason.GIBBERISH, **sig)
    bp = filter_boilerplate(paragraphs, cfg)
    return Verdict(bp.keep, bp.reason, {**sig, **bp.scores})
