"""The accounting vocabulary of a curation run, in one place: the levels things are
counted at, the statuses they end in, and every reason code with the funnel stage
that removes it. ``stats.json`` is keyed by these names, the job emits them and the
report reads them; a reason missing here fails the job's tests (tests/test_reasons.py)
instead of landing silently in an "other" row.

A key of ``stats.json["counts"]`` is ``level/status[/reason]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

# -- levels: what is counted --------------------------------------------------------------
RECORD = "record"      # archive records, on the way to interleaved documents
IMAGE = "image"        # image references of interleaved documents
TEXT = "text"          # HTML pages on the way to text-only documents
PAIR = "pair"          # <img> elements of English pages on the way to image-caption pairs
FETCH = "fetch"        # work done (image decodes, downloads): counted, not a funnel
DEDUP = "dedup"        # facts about dedup (unsettled components): counted, not a funnel
TEXT_DEDUP = "text_dedup"

# -- statuses -----------------------------------------------------------------------------
# Terminal: every record and every image reference ends in exactly one.
KEPT = "kept"
DROPPED = "dropped"
ERROR = "error"
IMAGE_SOURCE = "image_source"   # an image record, handed to the image join
# Entry events that the terminal ones must balance.
READ = "read"
ENTERED = "entered"


@dataclass(frozen=True)
class Funnel:
    level: str
    entry: str          # the status that counts what came in
    block: str          # its block in stats.json


FUNNELS: Tuple[Funnel, ...] = (Funnel(RECORD, READ, "records"), Funnel(IMAGE, ENTERED, "images"),
                               Funnel(TEXT, ENTERED, "text_documents"), Funnel(PAIR, ENTERED, "pairs"))
FUNNEL_BLOCKS = tuple(f.block for f in FUNNELS)
OPTIONAL_LEVELS = (TEXT, PAIR)     # funnels of outputs that can be switched off


def count_key(level: str, status: str, reason: str = "") -> str:
    return f"{level}/{status}/{reason}" if reason else f"{level}/{status}"


# -- reasons ------------------------------------------------------------------------------
# The stages of the record funnel (the paper's steps, KOSMOS.md §1), in order. Each
# holds its reason codes; a code ending in "*" names a family (``http_4xx``,
# ``warc_type_request``, ``images_too_small``: the reason every image of a document had).
RECORD_STAGES: Tuple[Tuple[str, Tuple[str, ...]], ...] = (
    ("HTML pages (2xx, revisits resolved)", (
        "warc_type_*", "not_http", "http_*", "bad_http", "not_html_or_image", "too_large",
        "revisit_unresolved", "revisit_not_resolved", "revisit_original_unreadable",
        # the archive reader (transforms/warc.py): the record could not be read
        "bad_gzip", "truncated_gzip", "bad_record_header", "truncated_record", "content_truncated",
        "content_undecodable", "content_encoding_unknown", "not_an_archive", "empty_file", "open_failed",
        "reader_failed")),
    ("pages with an <img>", ("no_img_tag", "undecodable_html")),
    ("English, clean, images in text", (
        "non_english", "no_text", "extraction_empty", "extraction_failed", "over_time_budget", "too_few_words",
        "spam_*", "special_characters", "gibberish", "repeated_lines", "repeated_ngrams", "no_stop_words",
        "navigation_heavy", "no_images_in_content", "no_text_in_content")),
    ("unique (URL, text, near-dup)", ("duplicate_url", "duplicate_exact", "near_duplicate")),
    ("documents with usable images", ("images_*", "no_usable_images")),
    ("half of single-image docs dropped", ("single_image_dropped",)),
)

# What an image (of a document or of a pair) can end as, beside kept.
IMAGE_REASONS: Tuple[str, ...] = (
    # the bytes (filters/images.py)
    "empty", "too_small", "single_color", "near_uniform", "extreme_aspect_ratio", "undecodable",
    "decompression_bomb", "not_an_image", "too_large", "too_many_frames",
    # where they come from
    "not_in_archive", "unreadable_in_archive", "unsupported_url", "not_retried",
    # site furniture by its URL or alt text, before any download (transforms/images.py)
    "furniture_url", "furniture_alt",
    # downloading (transforms/http_fetch.py)
    "bad_url", "blocked_address", "client_error", "connection_failed", "dns_failed", "opted_out", "timeout",
    "tls_error", "too_many_redirects", "unsupported_scheme", "http_*",
    # the document's own rules (transforms/assemble.py, transforms/images.py)
    "repeated_image", "too_many_images", "document_dropped", "duplicate_in_document", "over_reference_cap",
    "no_result",
)
# Image reasons decided on the image's own bytes or use: the report shows a
# thumbnail of such a reject (re-read from its archive) beside the reason.
IMAGE_FILTER_REASONS = frozenset({"too_small", "single_color", "near_uniform", "extreme_aspect_ratio",
                                  "undecodable", "decompression_bomb", "too_many_frames",
                                  "repeated_image", "too_many_images", "document_dropped",
                                  "duplicate_in_document", "over_reference_cap"})

TEXT_REASONS: Tuple[str, ...] = (
    "too_large", "undecodable_html", "non_english", "no_text", "extraction_empty", "extraction_failed",
    "over_time_budget", "too_few_words", "too_few_words_for_text", "spam_*", "special_characters", "gibberish",
    "repeated_lines", "repeated_ngrams", "no_stop_words", "navigation_heavy", "duplicate_url", "duplicate_exact",
    "near_duplicate")

PAIR_REASONS: Tuple[str, ...] = (
    "too_large", "undecodable_html", "extraction_failed", "over_time_budget", "non_english",
    "no_caption", "caption_filename", "boilerplate_caption", "caption_teaser", "caption_site_name",
    "caption_keyword_list", "caption_too_short", "caption_too_long",
    "caption_not_*", "duplicate_in_page", "over_page_cap", "duplicate_pair", "no_image_result",
    *IMAGE_REASONS)

REASONS: Dict[str, Tuple[str, ...]] = {
    RECORD: tuple(code for _, codes in RECORD_STAGES for code in codes),
    IMAGE: IMAGE_REASONS,
    TEXT: TEXT_REASONS,
    PAIR: PAIR_REASONS,
}


def _matches(code: str, reason: str) -> bool:
    return reason.startswith(code[:-1]) if code.endswith("*") else reason == code


def is_known(level: str, reason: str) -> bool:
    """Whether ``reason`` is a registered reason of a funnel level."""
    return any(_matches(code, reason) for code in REASONS.get(level, ()))


def record_stage(reason: str) -> Optional[str]:
    """The record funnel's stage that removes ``reason``; None for an unregistered one."""
    for stage, codes in RECORD_STAGES:
        if any(_matches(code, reason) for code in codes):
            return stage
    return None
