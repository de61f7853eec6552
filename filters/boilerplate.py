"""Boilerplate and low-quality text: the public practice of web-corpus builders,
as pure functions over a document's paragraphs (no Beam, no I/O).

Per paragraph (cut from the document, counted in ``paragraphs_removed``):

* ``navigation``: a run of short items between separators ("Web | Moving Images |
  Texts | Audio"), or a form field label ("Your e-mail address *"), or one of the
  phrases pages repeat around their content ("Skip to main content");
* ``tail_section`` (English pages): everything from a closing section's heading
  ("References", "See also", "External links", "Related posts", "Leave a reply") in
  the second half of the text: citation lists, link lists and teasers;
* ``word_list`` (English pages): 30 words or more with under 3% (English) function words and
  almost no punctuation: names or tags run together (a credits page's 250
  sponsors), which prose in no language is;

Per document (the document dropped, the score stored):

* ``repeated_lines``: Gopher's repetition rules (Rae et al. 2021, table A1): more
  than 30% of the paragraphs, or 20% of their characters, are repeats of another
  paragraph ("In stock" twenty times on a shop's listing). The paragraph share is
  not applied to a document with 5 prose paragraphs or more: there the repeats are a
  table's cells (pages-eval's game-settings page, "On"/"Off" down 14 rows);
* ``repeated_ngrams``: Gopher's share of characters in the most frequent word 2-,
  3- and 4-gram (20%, 18%, 16%);
* ``no_stop_words``: Gopher's stop-word presence (at least 2 of "the", "be", "to",
  "of", "and", "that", "have", "with"): lists of names and links have none;
* ``navigation_heavy``: FineWeb's line rules: more than 67% of the paragraphs
  under 30 characters, or fewer than 12% ending in terminal punctuation (menus,
  link lists, listings of items, buttons), unless the document has 3 paragraphs of
  prose (20 words or more): an article with a long table of names (pages-eval's
  Daily Mail page with the 650 MPs' addresses) is not a menu. Also a portal or
  listing page: under 20% of its characters in prose paragraphs and fewer than 5
  of them (an archive's collection page of "Band Live at Venue on date, N
  downloads" lines; a page of 13 one-paragraph jokes stays).

The thresholds are in ``TextQualityConfig``; each verdict carries its scores.
"""

from __future__ import annotations

import re
from collections import Counter
from itertools import chain, islice
from operator import itemgetter
from typing import Dict, List, Sequence, Tuple

from contract.reasons import Reason
from filters.base import Verdict, drop, keep

STOP_WORDS = frozenset({"the", "be", "to", "of", "and", "that", "have", "with"})
# Words that bind a sentence together (English): a long run of words with almost none
# is a list (names, tags, keywords), not prose.
FUNCTION_WORDS = frozenset(
    "a an the of in on at by for from to with into onto over under near about and or but not is are was were "
    "be has have had do does can will i me my we our you your you're he him his she her it it's its they them "
    "their this that these those as while during after before behind above below between who which where when "
    "what why how".split())
_SEPARATORS = re.compile(r"\s+(?:\||·|•|»|›|/|–|-)\s+|\s*\|\s*")
_WORDS = re.compile(r"[^\W_]+(?:['’][^\W_]+)*")
_TERMINAL = ("." , "!", "?", "\"", "”", "’", "'", ":", ";", ")", "…")
_FORM_FIELD = re.compile(r"^[\w\s'’()/-]{1,40}\s?\*$")
_CHROME = re.compile(
    r"^(home|menu|search|skip to (main )?content|skip to navigation|jump to navigation|toggle navigation|main menu|"
    r"you are here:?|back to top|all rights reserved\.?|log ?in|sign ?in|sign up|register|subscribe|"
    r"share this:?|follow us:?|related posts:?|leave a (reply|comment)|cookie settings|accept( all)? cookies)$",
    re.IGNORECASE)


_ACCOUNT = re.compile(r"\b(log ?in|log ?out|sign ?in|sign ?up|join us|register|my account|anonymous user)\b",
                      re.IGNORECASE)


# The longest text each anchored pattern can match (tests/test_text_filters_equivalence.py
# checks them against the patterns): longer paragraphs are not read by them.
_CHROME_MAX_CHARS = 20
_FORM_FIELD_MAX_CHARS = 42
# Every separator has one of these: a paragraph with fewer than min_items - 1 of them has
# fewer than min_items items.
_SEPARATOR_CHARS = "|·•»›/–-"
_ASCII_SEPARATOR_CHARS = "".join(c for c in _SEPARATOR_CHARS if c.isascii())


# ASCII text as the shape _WORDS reads: a letter or digit "a", an apostrophe "q", else " ".
_ASCII_WORD_SHAPE = bytes.maketrans(bytes(range(128)), bytes(
    b"a"[0] if re.fullmatch(r"[^\W_]", chr(c)) else b"q"[0] if re.fullmatch("['’]", chr(c)) else b" "[0]
    for c in range(128)))


def _word_count(text: str) -> int:
    """``len(_WORDS.findall(text))``. On ASCII text, from its shape: a word starts at each
    run of "a" but one that follows a single "q" after an "a" (which joins it to the word
    before: "it's")."""
    if not text.isascii():
        return len(_WORDS.findall(text))
    shape = text.encode("ascii").translate(_ASCII_WORD_SHAPE)
    return (shape.count(b" a") + shape.count(b" qa") + shape.count(b"qqa")
            + shape.startswith(b"a") + shape.startswith(b"qa"))


def _at_most_words(text: str, limit: int) -> bool:
    """``len(_WORDS.findall(text)) <= limit``: n words need 2n - 1 characters (each but
    the last is followed by one that is none); else counted, on other than ASCII text no
    further than the word after the limit."""
    if len(text) <= 2 * limit:
        return True
    if text.isascii():
        return _word_count(text) <= limit
    return next(islice(_WORDS.finditer(text), limit, None), None) is None


def navigation_paragraph(text: str, min_items: int = 4, max_item_words: float = 3.0) -> bool:
    """A menu, a form field label or a chrome phrase rather than prose (an account
    link such as "Anonymous User (login or join us)" among them)."""
    stripped = text.strip()
    size = len(stripped)
    if size <= _CHROME_MAX_CHARS and _CHROME.match(stripped):
        return True
    if size <= _FORM_FIELD_MAX_CHARS and stripped.endswith("*") and _FORM_FIELD.match(stripped):
        return True
    if _at_most_words(stripped, 6) and _ACCOUNT.search(stripped):
        return True
    seps = _ASCII_SEPARATOR_CHARS if stripped.isascii() else _SEPARATOR_CHARS
    if sum(map(stripped.count, seps)) + 1 < min_items:
        return False
    items = [i.strip() for i in _SEPARATORS.split(stripped) if i.strip()]
    if len(items) < min_items:
        return False
    if sum(1 for i in items if not i[0].isalnum()) > 0.3 * len(items):
        return False        # a directory tree or ASCII table ("|-- bin/", "<config files>"): not a menu
    words = [len(_WORDS.findall(i)) for i in items]
    return sum(words) / len(words) <= max_item_words and not stripped.endswith((".", "!", "?"))


def _lower_words(text: str) -> List[str]:
    """``_WORDS`` of ``text``, lower-cased (on ASCII text lower-casing first is the same)."""
    if text.isascii():
        return _WORDS.findall(text.lower())
    return list(map(str.lower, _WORDS.findall(text)))


def word_list_paragraph(text: str, min_words: int = 30, max_function_share: float = 0.03) -> bool:
    """A long paragraph that is a list of names or tags run together ("Aaron Parkening
    Aaron Stewart Abagail Thorne-Lyman ..." down a credits page): prose of 30 words
    carries a function word in every few."""
    if len(text) < 2 * min_words - 1:
        return False            # n words need 2n - 1 characters
    punctuation = sum(map(text.count, ".,;:!?"))
    if punctuation > 0.05 * ((len(text) + 1) // 2):
        return False            # more punctuation than the most words it can have allow
    if text.isascii():
        n = _word_count(text)                       # counted before the words are made
        words = None
    else:
        words = _WORDS.findall(text)
        n = len(words)
    if n < min_words:
        return False
    if punctuation > 0.05 * n:
        return False            # sentences (of any language): a list has no punctuation to speak of
    words = _WORDS.findall(text.lower()) if words is None else list(map(str.lower, words))
    return sum(map(FUNCTION_WORDS.__contains__, words)) / len(words) < max_function_share


TAIL_HEADINGS = frozenset({
    "references", "see also", "external links", "further reading", "bibliography", "footnotes", "citations",
    "related posts", "related articles", "related stories", "you may also like", "you might also like",
    "more stories", "leave a reply", "leave a comment", "share this", "share this article", "share this post"})


_TAIL_HEADING_MAX_CHARS = max(map(len, TAIL_HEADINGS))


def tail_heading(text: str) -> bool:
    """A heading that opens the closing sections of a page: references, link lists,
    related stories, the comment form."""
    heading = text.strip().rstrip(":").strip()
    # lower-casing never shortens a text
    return len(heading) <= _TAIL_HEADING_MAX_CHARS and heading.lower() in TAIL_HEADINGS


def ngram_top_fraction(words: List[str], n: int) -> float:
    """Characters covered by the most frequent word n-gram over all characters of words."""
    if len(words) < n:
        return 0.0
    grams = Counter(zip(*(words[i:] for i in range(n))))
    gram, count = grams.most_common(1)[0]
    if count < 2:
        return 0.0
    total = sum(len(w) for w in words)
    return count * sum(len(w) for w in gram) / total if total else 0.0


# Word n-grams are counted with numpy from this many words on (below, a Counter is quicker).
_NUMPY_NGRAM_WORDS = 160


def _top_ngram_fractions(words: List[str]) -> Tuple[float, float, float]:
    """``ngram_top_fraction(words, n)`` for n = 2, 3, 4. An n-gram seen twice has its
    (n-1)-gram prefix seen twice: when no (n-1)-gram repeats, no n-gram does."""
    total = sum(map(len, words))
    out = [0.0, 0.0, 0.0]
    if len(words) >= _NUMPY_NGRAM_WORDS:
        if len(words) ** 4 < 2 ** 63:           # a 4-gram's code fits an int64
            first_seen: Dict[str, int] = {}     # ids: where each word is first seen
            ids = list(map(first_seen.setdefault, words, range(len(words))))
            return _top_ngram_fractions_numpy(words, ids, len(words), total)
        dense: Dict[str, int] = {}              # ids: 0, 1, 2... in the order words are first seen
        ids = [dense.setdefault(w, len(dense)) for w in words]
        if len(dense) ** 4 < 2 ** 63:
            return _top_ngram_fractions_numpy(words, ids, len(dense), total)
    for k, n in enumerate((2, 3, 4)):
        if len(words) < n:
            break
        gram, count = max(Counter(zip(*(words[i:] for i in range(n)))).items(), key=itemgetter(1))
        if count < 2:
            break
        out[k] = count * sum(map(len, gram)) / total if total else 0.0
    return out[0], out[1], out[2]


def _top_ngram_fractions_numpy(words: List[str], word_ids: List[int], base: int, total: int
                               ) -> Tuple[float, float, float]:
    """The same with each n-gram coded as an integer: its words' ids (one per distinct
    word, each below ``base``) as digits in base ``base``. A Counter's most common n-gram
    is, among the most frequent, the one first seen: the smallest first position, which a
    stable sort gives."""
    import numpy as np

    ids = np.array(word_ids, dtype=np.int64)
    codes = ids
    out = [0.0, 0.0, 0.0]
    for k, n in enumerate((2, 3, 4)):
        if len(words) < n:
            break
        codes = codes[:-1] * base + ids[n - 1:]
        order = np.argsort(codes, kind="stable")
        ordered = codes[order]
        starts = np.flatnonzero(np.concatenate(([True], ordered[1:] != ordered[:-1])))
        counts = np.diff(np.append(starts, len(ordered)))
        count = int(counts.max())
        if count < 2:
            break
        first = int(order[starts[counts == count]].min())
        out[k] = count * sum(map(len, words[first:first + n])) / total if total else 0.0
    return out[0], out[1], out[2]


def boilerplate_scores(paragraphs: Sequence[str]) -> Dict[str, float]:
    lines = [line for line in map(str.strip, paragraphs) if line]
    seen, dup_lines, dup_chars = set(), 0, 0
    for line in lines:
        if line in seen:
            dup_lines += 1
            dup_chars += len(line)
        seen.add(line)
    chars = sum(map(len, lines)) or 1
    # a word never spans the " " the lines were once joined with: the words of the
    # joined lines are those of each line in turn
    line_words = [_lower_words(line) for line in lines]
    words = list(chain.from_iterable(line_words))
    grams = dict(zip((2, 3, 4), (round(f, 4) for f in _top_ngram_fractions(words))))
    prose = [line for line, ws in zip(lines, line_words) if len(ws) >= 20]
    return {
        "duplicate_line_fraction": round(dup_lines / len(lines), 4) if lines else 0.0,
        "duplicate_line_char_fraction": round(dup_chars / chars, 4),
        "top_ngram_fraction": max(grams.values()),
        "top_2gram_fraction": grams[2],
        "top_3gram_fraction": grams[3],
        "top_4gram_fraction": grams[4],
        "stop_words": len(STOP_WORDS.intersection(words)),
        "short_line_fraction": round(sum(1 for line in lines if len(line) < 30) / len(lines), 4) if lines else 0.0,
        "punctuated_line_fraction": round(sum(1 for line in lines if line.endswith(_TERMINAL)) / len(lines), 4)
        if lines else 0.0,
        "prose_paragraphs": len(prose),
        "prose_char_fraction": round(sum(len(line) for line in prose) / chars, 4),
    }


def filter_boilerplate(paragraphs: Sequence[str], cfg) -> Verdict:
    """The document-level rules above on the paragraphs that survived the paragraph cut."""
    s = boilerplate_scores(paragraphs)
    # Extraction makes a table's cells paragraphs ("On", "Off", "Default" down a column of
    # settings): the share of repeated paragraphs counts only where prose is scarce.
    if (s["duplicate_line_fraction"] > cfg.max_duplicate_line_fraction
            and s["prose_paragraphs"] < cfg.listing_max_prose_paragraphs) or \
            s["duplicate_line_char_fraction"] > cfg.max_duplicate_line_char_fraction:
        return drop(Reason.REPEATED_LINES, **s)
    if s["top_2gram_fraction"] > cfg.max_top_2gram_fraction or s["top_3gram_fraction"] > cfg.max_top_3gram_fraction \
            or s["top_4gram_fraction"] > cfg.max_top_4gram_fraction:
        return drop(Reason.REPEATED_NGRAMS, **s)
    if s["stop_words"] < cfg.min_stop_words:
        return drop(Reason.NO_STOP_WORDS, **s)
    if s["prose_paragraphs"] < 3 and (s["short_line_fraction"] > cfg.max_short_line_fraction or
                                      s["punctuated_line_fraction"] < cfg.min_punctuated_line_fraction):
        return drop(Reason.NAVIGATION_HEAVY, **s)
    if (s["prose_char_fraction"] < cfg.min_prose_char_fraction
            and s["prose_paragraphs"] < cfg.listing_max_prose_paragraphs):
        return drop(Reason.NAVIGATION_HEAVY, **s)
    return keep(**s)
