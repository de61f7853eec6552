"""The Parquet schemas of a curation run's datasets: what the job writes and the
trainer reads. Imports only pyarrow (the trainer reads it without Beam).

One row is one document. ``items`` is the document in reading order: each item
is either a text paragraph (``type == "text"``) or an image (``type == "image"``,
``image`` indexing into ``images``). Images are stored re-encoded (longest side at
most ``images.store_max_side``, 512 by default) with their original size and the
sha256 of the original bytes, their perceptual hash and the image-safety model's score.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

import pyarrow as pa

SCHEMA_VERSION = "3"      # 2: boilerplate scores; 3: images' phash, unsafe_score, source_inner_offset

ITEM_TEXT = "text"
ITEM_IMAGE = "image"

ITEM = pa.struct([
    pa.field("type", pa.string(), nullable=False),      # ITEM_TEXT | ITEM_IMAGE
    pa.field("text", pa.string()),                        # paragraph text (type == "text")
    pa.field("image", pa.int32()),                        # index into ``images`` (type == "image")
])

IMAGE = pa.struct([
    pa.field("url", pa.string(), nullable=False),        # resolved absolute source URL
    pa.field("alt", pa.string()),
    pa.field("title", pa.string()),
    pa.field("data", pa.binary(), nullable=False),       # re-encoded bytes
    pa.field("format", pa.string()),                      # format of ``data`` (jpeg by default)
    pa.field("width", pa.int32()),                        # size of ``data``
    pa.field("height", pa.int32()),
    pa.field("original_width", pa.int32()),
    pa.field("original_height", pa.int32()),
    pa.field("original_format", pa.string()),
    pa.field("original_bytes", pa.int64()),
    pa.field("sha256", pa.string()),                      # of the original bytes
    pa.field("source_file", pa.string()),                 # archive the bytes came from (the URL if downloaded)
    pa.field("source_offset", pa.int64()),                # its record's gzip member there (-1 if downloaded)
    pa.field("source_inner_offset", pa.int64()),          # the record inside that member (whole-file gzip), else 0
    pa.field("phash", pa.string()),                       # 64-bit pHash of the decoded image, 16 hex digits
    pa.field("unsafe_score", pa.float32()),               # the image-safety model's score; null: no model ran
])

SCORES = pa.struct([
    pa.field("language", pa.string()),                    # fastText top label
    pa.field("language_score", pa.float32()),             # fastText score of the kept language
    pa.field("words", pa.int32()),
    pa.field("emoji_ratio", pa.float32()),
    pa.field("hashtag_ratio", pa.float32()),
    pa.field("url_char_ratio", pa.float32()),
    pa.field("special_char_ratio", pa.float32()),
    pa.field("alpha_word_ratio", pa.float32()),
    pa.field("paragraphs_removed", pa.int32()),           # paragraphs cut (spam, menus, lists, closing parts)
    pa.field("duplicate_line_fraction", pa.float32()),    # Gopher: paragraphs repeating another
    pa.field("top_ngram_fraction", pa.float32()),         # Gopher: characters in the top word 2/3/4-gram
    pa.field("stop_words", pa.int32()),                   # Gopher: distinct stop words present (of 8)
    pa.field("short_line_fraction", pa.float32()),        # FineWeb: paragraphs under 30 characters
    pa.field("single_image_hash", pa.float32()),          # the seeded draw, for single-image docs
])

SCORE_FIELDS = tuple(f.name for f in SCORES)

DOCUMENT_SCHEMA = pa.schema([
    pa.field("doc_id", pa.string(), nullable=False),      # stable hash of the capture
    pa.field("url", pa.string(), nullable=False),
    pa.field("capture_date", pa.string()),                # WARC-Date (ISO 8601) as recorded
    pa.field("title", pa.string()),
    pa.field("source_file", pa.string()),                 # WARC/ARC file (as given in the input)
    pa.field("source_offset", pa.int64()),                # raw offset of the record's gzip member
    pa.field("source_inner_offset", pa.int64()),          # offset inside it (whole-file gzip), else 0
    pa.field("record_id", pa.string()),                   # WARC-Record-ID (empty for ARC)
    pa.field("revisit_of", pa.string()),                  # payload digest a revisit resolved to
    pa.field("items", pa.list_(ITEM), nullable=False),
    pa.field("images", pa.list_(IMAGE), nullable=False),
    pa.field("num_images", pa.int32(), nullable=False),
    pa.field("scores", SCORES),
], metadata={b"kosmos.schema": b"interleaved_document", b"kosmos.schema_version": SCHEMA_VERSION.encode()})


# Image-caption pairs (LAION/COYO style): one web image with the text that describes it.
PAIR_SCHEMA = pa.schema([
    pa.field("pair_id", pa.string(), nullable=False),     # stable hash of (image sha256, caption)
    pa.field("caption", pa.string(), nullable=False),
    pa.field("caption_source", pa.string()),              # "alt" | "figcaption" | "caption_block"
    pa.field("image", IMAGE, nullable=False),
    pa.field("page_url", pa.string()),
    pa.field("doc_id", pa.string()),                      # the page's capture id
    pa.field("capture_date", pa.string()),
    pa.field("language_score", pa.float32()),             # fastText English score of the caption
], metadata={b"kosmos.schema": b"image_caption_pair", b"kosmos.schema_version": SCHEMA_VERSION.encode()})

# Text-only documents: the page's extracted text, paragraphs separated by newlines.
TEXT_SCHEMA = pa.schema([
    pa.field("doc_id", pa.string(), nullable=False),
    pa.field("url", pa.string(), nullable=False),
    pa.field("capture_date", pa.string()),
    pa.field("title", pa.string()),
    pa.field("text", pa.string(), nullable=False),
    pa.field("source_file", pa.string()),
    pa.field("source_offset", pa.int64()),
    pa.field("scores", SCORES),
], metadata={b"kosmos.schema": b"text_document", b"kosmos.schema_version": SCHEMA_VERSION.encode()})


# The sampled rejects of a run (``rejects/samples.parquet``): what auditors browse.
REJECT_SCHEMA = pa.schema([
    pa.field("level", pa.string()),          # "record" | "image"
    pa.field("status", pa.string()),         # "dropped" | "error"
    pa.field("reason", pa.string()),
    pa.field("url", pa.string()),
    pa.field("file", pa.string()),           # archive and offset of the record (of the image's record for images)
    pa.field("offset", pa.int64()),
    pa.field("inner_offset", pa.int64()),
    pa.field("scores", pa.string()),         # JSON of the scores that decided
    pa.field("snippet", pa.string()),
    pa.field("message", pa.string()),
    pa.field("sample_key", pa.string()),     # the seeded hash that chose it
], metadata={b"kosmos.schema": b"reject_sample"})


# The audit trail of a run (``outcomes/``): one row for the end of every record, of
# every image reference and of every page in the text and pair funnels. A page's
# record, text and pair rows share its ``file``/``offset``/``inner_offset``; its image
# rows carry its ``doc_id`` (and where the image's bytes lay). ``kosmos explain`` reads them.
OUTCOME_SCHEMA = pa.schema([
    pa.field("outcome_id", pa.string(), nullable=False),  # hash of what it is about; shards and sorts rows
    pa.field("level", pa.string(), nullable=False),       # record | image | text | pair (contract.reasons)
    pa.field("status", pa.string(), nullable=False),      # kept | dropped | error | image_source
    pa.field("reason", pa.string()),
    pa.field("stage", pa.string()),                       # the record funnel's stage that removed it
    pa.field("url", pa.string()),                         # the record's URL; the image's for image and pair rows
    pa.field("file", pa.string()),                        # the record's archive (an image's bytes', if any)
    pa.field("offset", pa.int64()),
    pa.field("inner_offset", pa.int64()),
    pa.field("doc_id", pa.string()),                      # the document id, once the page is a candidate
    pa.field("scores", pa.string()),                      # JSON of the scores that decided
    pa.field("message", pa.string()),
    pa.field("survivor_doc_id", pa.string()),             # duplicates: the copy that was kept instead ...
    pa.field("survivor_url", pa.string()),
    pa.field("survivor_status", pa.string()),             # ... and how that copy ended
    pa.field("survivor_reason", pa.string()),
], metadata={b"kosmos.schema": b"outcome", b"kosmos.schema_version": SCHEMA_VERSION.encode()})


def document_text(row: Dict[str, Any], sep: str = "\n\n") -> str:
    """The text of a document row, paragraphs joined by ``sep``."""
    return sep.join(i["text"] for i in row["items"] if i["type"] == ITEM_TEXT and i["text"])


@dataclass(frozen=True)
class Dataset:
    """One dataset of a run: its directory in the run, its schema, the column rows
    are sharded and sorted by, and the columns a training reader needs."""
    name: str                       # the trainer's name for the source ("interleaved", "text", "pairs")
    directory: str                  # under the run's output directory
    schema: pa.Schema
    key: str
    train_columns: Tuple[str, ...]

    @property
    def schema_name(self) -> str:
        return self.schema.metadata[b"kosmos.schema"].decode()

    def images_in(self, row: Dict[str, Any]) -> int:
        """Images one row carries: a document's ``num_images``, a pair's one, a text's none."""
        if self.name == "interleaved":
            return int(row["num_images"])
        return 1 if self.name == "pairs" else 0

    def text_of(self, row: Dict[str, Any]) -> str:
        """The row's text, as a tokenizer is trained on it."""
        if self.name == "interleaved":
            return document_text(row, "\n")
        if self.name == "pairs":
            return row["caption"] or ""
        return row["text"] or ""


DOCUMENTS = Dataset("interleaved", "documents", DOCUMENT_SCHEMA, "doc_id", ("doc_id", "items", "images"))
TEXTS = Dataset("text", "text", TEXT_SCHEMA, "doc_id", ("doc_id", "text"))
PAIRS = Dataset("pairs", "pairs", PAIR_SCHEMA, "pair_id", ("pair_id", "image", "caption"))
DATASETS: Dict[str, Dataset] = {d.name: d for d in (DOCUMENTS, TEXTS, PAIRS)}
# Not a training dataset: the per-record audit trail, written with the same shards and manifest.
OUTCOME_TRAIL = Dataset("outcomes", "outcomes", OUTCOME_SCHEMA, "outcome_id", ())


def dataset_of_row(row: Dict[str, Any]) -> Optional[Dataset]:
    """The dataset a row read without its schema belongs to (by its distinguishing column)."""
    if "items" in row:
        return DOCUMENTS
    if "caption" in row:
        return PAIRS
    if "text" in row:
        return TEXTS
    return None
