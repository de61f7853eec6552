"""What an archive record is, for the job: a page, an image, or a named skip. Pure
(no Beam, no I/O): the reader (transforms/read.py), the pre-flight image probe and
the report all sort records with this one function."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from contract.reasons import Reason
from archives.records import ArchiveRecord
from filters.images import sniff_format

HTML_TYPES = {"text/html", "application/xhtml+xml"}
VAGUE_TYPES = {"", "text/plain", "application/octet-stream", "unk", "no-type", "unknown", "text/x-unknown"}
SKIPPED_TYPES = {"warcinfo", "request", "metadata", "conversion", "continuation"}
RASTER_FORMATS = ("jpeg", "png", "gif", "webp", "bmp", "tiff")


class RecordKind(enum.Enum):
    PAGE = "page"          # an HTML page: on to the text and document filters
    IMAGE = "image"        # an image: on to the image join
    SKIPPED = "skipped"    # not for this job (its reason says why): dropped
    BROKEN = "broken"      # claims to be a response but is not one: an error


@dataclass(frozen=True)
class RecordClass:
    kind: RecordKind
    reason: str = ""       # for SKIPPED and BROKEN: the reason code (contract.reasons)

    @property
    def usable(self) -> bool:
        return self.kind in (RecordKind.PAGE, RecordKind.IMAGE)


PAGE = RecordClass(RecordKind.PAGE)
IMAGE = RecordClass(RecordKind.IMAGE)


def looks_like_html(payload: bytes) -> bool:
    head = payload[:1024].lstrip().lower()
    return head.startswith((b"<!doctype html", b"<html", b"<head", b"<!--")) and b"<html" in payload[:4096].lower()


def classify(rec: ArchiveRecord) -> RecordClass:
    """A record (its ``rec_type``, ``target_uri``, ``http_status``, ``mime`` and
    ``payload``) sorted for the job."""
    if rec.rec_type in SKIPPED_TYPES:
        return RecordClass(RecordKind.SKIPPED, Reason.WARC_TYPE.of(rec.rec_type))
    if rec.rec_type not in ("response", "resource"):
        return RecordClass(RecordKind.SKIPPED, Reason.WARC_TYPE.of("other"))
    uri = rec.target_uri.lower()
    if not uri.startswith(("http://", "https://")):
        return RecordClass(RecordKind.SKIPPED, Reason.NOT_HTTP)
    if rec.http_status is None and rec.rec_type == "response":
        return RecordClass(RecordKind.BROKEN, Reason.BAD_HTTP)
    if rec.http_status is not None and not 200 <= rec.http_status < 300:
        return RecordClass(RecordKind.SKIPPED, Reason.HTTP_STATUS.of(f"{rec.http_status // 100}xx"))
    mime = rec.mime
    if mime in HTML_TYPES:
        return PAGE
    if mime.startswith("image/"):
        return IMAGE
    if mime in VAGUE_TYPES:
        if looks_like_html(rec.payload):
            return PAGE
        if sniff_format(rec.payload) in RASTER_FORMATS:
            return IMAGE
    return RecordClass(RecordKind.SKIPPED, Reason.NOT_HTML_OR_IMAGE)
