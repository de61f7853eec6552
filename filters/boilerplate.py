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
from typing import Dict, List, Sequence

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


def navigation_paragraph(text: str, min_items: int = 4, max_item_words: float = 3.0) -> bool:
    """A menu, a form field label or a chrome phrase rather than prose (an account
    link such as "Anonymous User (login or join us)" among them)."""
    stripped = text.strip()
    if _CHROME.match(stripped) or _FORM_FIELD.match(stripped):
        return True
    if len(_WORDS.findall(stripped)) <= 6 and _ACCOUNT.search(stripped):
        return True
    items = [i.strip() for i in _SEPARATORS.split(stripped) if i.strip()]
    if len(items) < min_items:
        return False
    if sum(1 for i in items if not i[0].isalnum()) > 0.3 * len(items):
        return False        # a directory tree or ASCII table ("|-- bin/", "<config files>"): not a menu
    words = [len(_WORDS.findall(i)) for i in items]
    return sum(words) / len(words) <= max_item_words and not stripped.endswith((".", "!", "?"))


def word_list_paragraph(text: str, min_words: int = 30, max_function_share: float = 0.03) -> bool:
    """A long paragraph that is a list of names or tags run together ("Aaron Parkening
    Aaron Stewart Abagail Thorne-Lyman ..." down a credits page): prose of 30 words
    carries a function word in every few."""
    words = [w.lower() for w in _WORDS.findall(text)]
    if len(words) < min_words:
        return False
    if sum(text.count(c) for c in ".,;:!?") > 0.05 * len(words):
        return False            # sentences (of any language): a list has no punctuation to speak of
    return sum(1 for w in words if w in FUNCTION_WORDS) / len(words) < max_function_share


TAIL_HEADINGS = frozenset({
    "references", "see also", "external links", "further reading", "bibliography", "footnotes", "citations",
    "related posts", "related articles", "related stories", "you may also like", "you might also like",
    "more stories", "leave a reply", "leave a comment", "share this", "share this article", "share this post"})


def tail_heading(text: str) -> bool:
    """A heading that opens the closing sections of a page: references, link lists,
    related stories, the comment form."""
    return text.strip().rstrip(":").strip().lower() in TAIL_HEADINGS


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


def boilerplate_scores(paragraphs: Sequence[str]) -> Dict[str, float]:
    lines = [p.strip() for p in paragraphs if p.strip()]
    seen, dup_lines, dup_chars = set(), 0, 0
    for line in lines:
        if line in seen:
            dup_lines += 1
            dup_chars += len(line)
        seen.add(line)
    chars = sum(len(line) for line in lines) or 1
    words = [w.lower() for w in _WORDS.findall(" ".join(lines))]
    grams = {n: round(ngram_top_fraction(words, n), 4) for n in (2, 3, 4)}
    prose = [line for line in lines if len(_WORDS.findall(line)) >= 20]
    return {
        "duplicate_line_fraction": round(dup_lines / len(lines), 4) if lines else 0.0,
        "duplicate_line_char_fraction": round(dup_chars / chars, 4),
        "top_ngram_fraction": max(grams.values()),
        "top_2gram_fraction": grams[2],
        "top_3gram_fraction": grams[3],
        "top_4gram_fraction": grams[4],
        "stop_words": sum(1 for w in set(words) if w in STOP_WORDS),
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
