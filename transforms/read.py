"""Reading archives in Beam: each input file streamed record by record, each record
sorted into pages, image records, revisits, or a named skip."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Optional

import apache_beam as beam
from apache_beam import pvalue

from filters.config import RecordConfig
from filters.images import sniff_format
from transforms.accounting import AccountedDoFn
from transforms.records import (DROPPED, ERROR, IMAGE_SOURCE, READ, RECORD, ImageRecord, Outcome,
                                Page, Provenance)
from transforms.progress import ProgressCounters
from transforms.remote import open_input, read_record_at
from transforms.warc import ArchiveRecord, ReadError, iter_archive

INPUTS = "inputs"
PAGES = "pages"
IMAGES = "images"
REVISITS = "revisits"
ORIGINALS = "originals"

HTML_TYPES = {"text/html", "application/xhtml+xml"}
VAGUE_TYPES = {"", "text/plain", "application/octet-stream", "unk", "no-type", "unknown", "text/x-unknown"}
SKIPPED_TYPES = {"warcinfo", "request", "metadata", "conversion", "continuation"}


@dataclass
class Revisit:
    url: str
    date: str
    provenance: Provenance


@dataclass
class Original:
    """Where a record that revisit records may point at lies, and what it is: no
    payload crosses the digest join; the few needed are read back by offset."""
    kind: str            # "page" | "image" | the reason such records are skipped
    content_type: str
    provenance: Provenance


def looks_like_html(payload: bytes) -> bool:
    head = payload[:1024].lstrip().lower()
    return head.startswith((b"<!doctype html", b"<html", b"<head", b"<!--")) and b"<html" in payload[:4096].lower()


def classify(rec: ArchiveRecord) -> str:
    """'page', 'image', or the reason the record is skipped."""
    if rec.rec_type in SKIPPED_TYPES:
        return f"warc_type_{rec.rec_type}"
    if rec.rec_type not in ("response", "resource"):
        return "warc_type_other"
    uri = rec.target_uri.lower()
    if not uri.startswith(("http://", "https://")):
        return "not_http"
    if rec.http_status is None and rec.rec_type == "response":
        return "error:bad_http"
    if rec.http_status is not None and not 200 <= rec.http_status < 300:
        return f"http_{rec.http_status // 100}xx"
    mime = rec.mime
    if mime in HTML_TYPES:
        return "page"
    if mime.startswith("image/"):
        return "image"
    if mime in VAGUE_TYPES:
        if looks_like_html(rec.payload):
            return "page"
        if sniff_format(rec.payload) in ("jpeg", "png", "gif", "webp", "bmp", "tiff"):
            return "image"
    return "not_html_or_image"


class HashingReader:
    """A file object that hashes every byte read through it (the input manifest's
    checksum comes for free with the one streaming pass)."""

    def __init__(self, raw):
        self.raw = raw
        self.sha = hashlib.sha256()
        self.bytes = 0

    def read(self, n=-1):
        data = self.raw.read(n)
        self.sha.update(data)
        self.bytes += len(data)
        return data

    def finish(self) -> str:
        while True:
            chunk = self.read(1 << 20)
            if not chunk:
                return self.sha.hexdigest()


class ReadArchives(AccountedDoFn):
    """File path -> pages (main), image records, revisits, originals, outcomes."""

    def __init__(self, cfg: RecordConfig, progress_dir: Optional[str] = None):
        self.cfg = cfg
        self.progress_dir = progress_dir
        self.progress = None

    def setup(self):
        self.progress = ProgressCounters(self.progress_dir)

    def process(self, path: str):
        cfg = self.cfg
        try:
            raw = open_input(path)
        except Exception as exc:  # missing file, permissions, bad URL
            yield self.outcome(Outcome(RECORD, READ, file=path, offset=0))
            yield self.outcome(Outcome(RECORD, ERROR, "open_failed", file=path, offset=0,
                                       message=f"{type(exc).__name__}: {exc}"))
            return
        last = (0, 0)
        hashing = HashingReader(raw)
        try:
            with raw:
                reader = iter_archive(hashing, path, max_payload_bytes=max(cfg.max_html_bytes, cfg.max_image_bytes))
                counted = 0
                for item in reader:
                    self.progress.add("records")
                    self.progress.add("bytes_read", hashing.bytes - counted)
                    counted = hashing.bytes
                    yield self.outcome(Outcome(RECORD, READ, file=path))
                    if isinstance(item, ReadError):
                        last = (item.offset, item.inner_offset)
                        yield self.outcome(Outcome(RECORD, ERROR, item.kind, file=path, offset=item.offset,
                                                   inner_offset=item.inner_offset, message=item.message))
                        continue
                    last = (item.offset, item.inner_offset)
                    yield from self._route(item)
                sha = hashing.finish()
            self.progress.add("bytes_read", hashing.bytes - counted)
            self.progress.add("files_done")
            self.progress.flush(force=True)
            yield pvalue.TaggedOutput(INPUTS, {"path": path, "bytes": hashing.bytes, "sha256": sha})
        except Exception as exc:  # a reader bug must not take the job down
            self.progress.add("files_done")
            self.progress.flush(force=True)
            yield self.outcome(Outcome(RECORD, READ, file=path))
            yield self.outcome(Outcome(RECORD, ERROR, "reader_failed", file=path, offset=last[0],
                                       inner_offset=last[1], message=f"{type(exc).__name__}: {exc}"))
            yield pvalue.TaggedOutput(INPUTS, {"path": path, "bytes": hashing.bytes, "sha256": None})

    def _route(self, rec: ArchiveRecord):
        cfg = self.cfg
        prov = Provenance(rec.file, rec.offset, rec.inner_offset, rec.record_id)

        def dropped(reason):
            return self.outcome(Outcome(RECORD, DROPPED, reason, file=rec.file, offset=rec.offset,
                                        inner_offset=rec.inner_offset, url=rec.target_uri))

        if rec.rec_type == "revisit":
            if not rec.target_uri.lower().startswith(("http://", "https://")):
                yield dropped("not_http")
            elif not cfg.resolve_revisits:
                yield dropped("revisit_not_resolved")
            elif not rec.payload_digest:
                yield dropped("revisit_unresolved")
            else:
                yield pvalue.TaggedOutput(REVISITS, (rec.payload_digest, Revisit(rec.target_uri, rec.date, prov)))
            return
        kind = classify(rec)
        ctype = rec.http_header("content-type") or rec.block_content_type
        if kind == "page":
            self.progress.add("pages")
            if rec.oversize or len(rec.payload) > cfg.max_html_bytes:
                yield dropped("too_large")
                return
            if cfg.resolve_revisits and rec.payload_digest:
                yield pvalue.TaggedOutput(ORIGINALS, (rec.payload_digest, Original("page", ctype, prov)))
            yield Page(rec.target_uri, rec.date, ctype, rec.payload, prov, truncated=rec.truncated)
        elif kind == "image":
            oversize = rec.oversize or len(rec.payload) > cfg.max_image_bytes
            if cfg.resolve_revisits and rec.payload_digest and not oversize:
                yield pvalue.TaggedOutput(ORIGINALS, (rec.payload_digest, Original("image", ctype, prov)))
            yield self.outcome(Outcome(RECORD, IMAGE_SOURCE, file=rec.file, offset=rec.offset, url=rec.target_uri))
            yield pvalue.TaggedOutput(IMAGES, ImageRecord(rec.target_uri, rec.date, ctype,
                                                          b"" if oversize else rec.payload, prov, oversize))
        elif kind.startswith("error:"):
            if cfg.resolve_revisits and rec.payload_digest:
                yield pvalue.TaggedOutput(ORIGINALS, (rec.payload_digest, Original(kind[6:], ctype, prov)))
            yield self.outcome(Outcome(RECORD, ERROR, kind[6:], file=rec.file, offset=rec.offset,
                                       inner_offset=rec.inner_offset, url=rec.target_uri,
                                       message="; ".join(rec.notes) or "response block is not an HTTP response"))
        else:
            if cfg.resolve_revisits and rec.payload_digest and rec.rec_type in ("response", "resource"):
                # Revisits of this payload get the same verdict, without its bytes.
                yield pvalue.TaggedOutput(ORIGINALS, (rec.payload_digest, Original(kind, ctype, prov)))
            yield dropped(kind)


class ResolveRevisit(AccountedDoFn):
    """(digest, {revisits, originals}) -> pages (main) and image records for each
    revisit whose payload is in the input; the rest dropped as unresolved. The
    original's payload is read back from its file at its offset, once per digest,
    and only when some revisit needs it."""

    def __init__(self, max_payload_bytes: int = 20 * 1024 * 1024):
        self.max_payload_bytes = max_payload_bytes

    def process(self, element):
        digest, groups = element
        revisits = list(groups["revisits"])
        if revisits:                                # else an original no revisit points at: nothing to do
            yield from self._resolve(digest, revisits, list(groups["originals"]))

    def _resolve(self, digest, revisits, originals):
        # Same digest, same payload: prefer a usable original, then a fixed position.
        chosen: Optional[Original] = min(
            originals, default=None,
            key=lambda o: (o.kind not in ("page", "image"), o.provenance.file, o.provenance.offset,
                           o.provenance.inner_offset))
        payload = b""
        if chosen is not None and chosen.kind in ("page", "image"):
            where = chosen.provenance
            try:
                rec = read_record_at(where.file, where.offset, where.inner_offset, self.max_payload_bytes)
            except Exception as exc:            # the file moved or broke since it was read
                rec, why = None, f"{type(exc).__name__}: {exc}"
            else:
                why = "no record there"
            if rec is None:
                for rev in revisits:
                    p = rev.provenance
                    yield self.outcome(Outcome(RECORD, ERROR, "revisit_original_unreadable", file=p.file,
                                               offset=p.offset, inner_offset=p.inner_offset, url=rev.url,
                                               message=f"original at {where.file}@{where.offset}+"
                                                       f"{where.inner_offset}: {why}"[:500]))
                return
            payload = rec.payload
        for rev in revisits:
            prov = Provenance(rev.provenance.file, rev.provenance.offset, rev.provenance.inner_offset,
                              rev.provenance.record_id, revisit_of=digest)
            if chosen is None:
                yield self.outcome(Outcome(RECORD, DROPPED, "revisit_unresolved", file=prov.file,
                                           offset=prov.offset, inner_offset=prov.inner_offset, url=rev.url))
            elif chosen.kind == "page":
                yield Page(rev.url, rev.date, chosen.content_type, payload, prov)
            elif chosen.kind != "image":
                yield self.outcome(Outcome(RECORD, DROPPED, chosen.kind, file=prov.file, offset=prov.offset,
                                           inner_offset=prov.inner_offset, url=rev.url))
            else:
                yield self.outcome(Outcome(RECORD, IMAGE_SOURCE, file=prov.file, offset=prov.offset, url=rev.url))
                yield pvalue.TaggedOutput(IMAGES, ImageRecord(rev.url, rev.date, chosen.content_type,
                                                              payload, prov))


class ReadAndResolve(beam.PTransform):
    """Paths -> (pages, image records, outcomes), revisits resolved through a
    CoGroupByKey on the payload digest when enabled."""

    def __init__(self, cfg: RecordConfig, progress_dir: Optional[str] = None):
        super().__init__()
        self.cfg = cfg
        self.progress_dir = progress_dir

    def expand(self, paths):
        from transforms.accounting import OUTCOMES
        read = paths | "ReadRecords" >> beam.ParDo(ReadArchives(self.cfg, self.progress_dir)).with_outputs(
            IMAGES, REVISITS, ORIGINALS, OUTCOMES, INPUTS, main=PAGES)
        self.inputs = read[INPUTS]
        pages, images, outcomes = [read[PAGES]], [read[IMAGES]], [read[OUTCOMES]]
        if self.cfg.resolve_revisits:
            resolved = ({"revisits": read[REVISITS], "originals": read[ORIGINALS]}
                        | "JoinRevisitsOnDigest" >> beam.CoGroupByKey()
                        | "ResolveRevisits" >> beam.ParDo(ResolveRevisit(
                            max(self.cfg.max_html_bytes, self.cfg.max_image_bytes))).with_outputs(
                            IMAGES, OUTCOMES, main=PAGES))
            pages.append(resolved[PAGES])
            images.append(resolved[IMAGES])
            outcomes.append(resolved[OUTCOMES])
        return (tuple(pages) | "AllPages" >> beam.Flatten(),
                tuple(images) | "AllImageRecords" >> beam.Flatten(),
                tuple(outcomes) | "ReadOutcomes" >> beam.Flatten())
