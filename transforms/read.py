"""Reading archives in Beam: each input file streamed record by record, each record
sorted into pages, image records, revisits, or a named skip."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import NamedTuple, Optional, Tuple

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.io.restriction_trackers import OffsetRange, OffsetRestrictionTracker

from contract.reasons import DROPPED, ERROR, IMAGE_SOURCE, READ, RECORD, Reason
from archives.ranges import archive_layout, iter_archive_range
from archives.records import ArchiveRecord, ReadError
from archives.remote import input_size, is_http
from filters.config import RecordConfig
from filters.opt_out import policy_headers
from filters.records import RecordClass, RecordKind, classify
from transforms.accounting import OUTCOMES, AccountedDoFn, ledger
from transforms.progress import ProgressCounters
from transforms.records import ImageRecord, Outcome, Page, Provenance
from transforms.filesystems import open_input, read_record_at

INPUTS = "inputs"
PAGES = "pages"
IMAGES = "images"
REVISITS = "revisits"
ORIGINALS = "originals"

@dataclass
class Revisit:
    url: str
    date: str
    provenance: Provenance
    policy_headers: Tuple[Tuple[str, str], ...] = ()     # the revisit response's own opt-out headers


@dataclass
class Original:
    """Where a record that revisit records may point at lies, and what it is: no
    payload crosses the digest join; the few needed are read back by offset."""
    cls: RecordClass
    content_type: str
    provenance: Provenance


class HashingReader:
    """A file object that hashes every byte read through it (the input manifest's
    checksum comes for free with the one streaming pass)."""

    def __init__(self, raw):
        self.raw = raw
        self.sha = hashlib.sha256()
        self.bytes = 0
        self.eof = False
        self.closed = False

    def read(self, n=-1):
        data = self.raw.read(n)
        if not data and n != 0:
            self.eof = True
        self.sha.update(data)
        self.bytes += len(data)
        return data

    def close(self):
        if not self.closed:
            self.closed = True
            self.raw.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def finish(self) -> Optional[str]:
        """The sha256 of the whole stream (reading what is left), None if it was
        closed before its end."""
        while not self.closed and not self.eof:
            self.read(1 << 20)
        return self.sha.hexdigest() if self.eof else None


def file_size(path: str) -> int:
    """Bytes of an input file; -1 when unknown (an HTTP server that does not say, a
    file that cannot be found: reading it then reports why)."""
    if is_http(path):
        return input_size(path)
    from apache_beam.io.filesystems import FileSystems
    try:
        return FileSystems.match([path])[0].metadata_list[0].size_in_bytes
    except Exception:     # missing, no permission: the read reports open_failed
        return -1


UNKNOWN_SIZE = 1 << 62      # the restriction of a file whose size is not known: read whole


class ReadArchives(AccountedDoFn, beam.transforms.core.RestrictionProvider):
    """File path -> pages (main), image records, revisits, originals, outcomes.

    Splittable: a file is read in byte ranges (``records.split_bytes``), each from
    its first record boundary (``archives.ranges.iter_archive_range``); every record
    at a boundary is claimed from the restriction tracker, so a runner that splits a
    range while it is read (Dataflow's dynamic work rebalancing) gets every record
    read once. A file read as one range also gets its sha256 in ``inputs.jsonl``."""

    def __init__(self, cfg: RecordConfig, progress_dir: Optional[str] = None):
        self.cfg = cfg
        self.progress_dir = progress_dir
        self.progress = None

    def setup(self):
        self.progress = ProgressCounters(self.progress_dir)
        self.bundle_records = 0

    def start_bundle(self):
        self.bundle_records = 0

    def _bundle_full(self) -> bool:
        limit = self.cfg.bundle_records
        return limit > 0 and self.bundle_records >= limit

    # -- the byte ranges (this DoFn is its own RestrictionProvider) ---------------------
    def initial_restriction(self, path):
        size = file_size(path)
        return OffsetRange(0, size if size > 0 else UNKNOWN_SIZE)

    def create_tracker(self, restriction):
        return OffsetRestrictionTracker(restriction)

    def split(self, path, restriction):
        step = self.cfg.split_bytes
        if step <= 0 or restriction.stop == UNKNOWN_SIZE:
            yield restriction
            return
        yield from restriction.split(step)

    def restriction_size(self, path, restriction):
        return restriction.size() if restriction.stop != UNKNOWN_SIZE else 1 << 30

    # -- reading ---------------------------------------------------------------------------
    def process(self, path: str, tracker=beam.DoFn.RestrictionParam()):
        cfg = self.cfg
        if self._bundle_full():
            # This bundle has read its share: the range goes back to the runner whole,
            # for a later bundle. A range is always read in one pass (no cut inside
            # it), so what is read, and a file's checksum, do not depend on bundles.
            tracker.defer_remainder()
            return
        r = tracker.current_restriction()
        try:
            layout = archive_layout(lambda offset: open_input(path, offset))
        except Exception as exc:  # missing file, permissions, bad URL
            if tracker.try_claim(r.start):
                yield self.outcome(Outcome(RECORD, READ, file=path, offset=r.start))
                yield self.outcome(Outcome(RECORD, ERROR, Reason.OPEN_FAILED, file=path, offset=r.start,
                                           message=f"{type(exc).__name__}: {exc}"))
            tracker.try_claim(r.stop)
            return
        counting: list = []            # (offset, stream) of every open, for bytes read and the checksum
        refused = [False]

        def opener(offset):
            raw = HashingReader(open_input(path, offset))
            counting.append((offset, raw))
            return raw

        def claim(offset):
            if tracker.try_claim(offset):
                return True
            refused[0] = True
            return False

        last = (r.start, 0)
        counted = 0
        try:
            items = iter_archive_range(opener, path, r.start, r.stop, layout=layout, claim=claim,
                                       max_payload_bytes=max(cfg.max_html_bytes, cfg.max_image_bytes))
            for item in items:
                read_now = sum(c.bytes for _, c in counting)
                self.progress.add("records")
                self.progress.add("bytes_read", read_now - counted)
                counted = read_now
                yield self.outcome(Outcome(RECORD, READ, file=path))
                last = (item.offset, item.inner_offset)
                self.bundle_records += 1
                if isinstance(item, ReadError):
                    yield self.outcome(Outcome(RECORD, ERROR, item.kind, file=path, offset=item.offset,
                                               inner_offset=item.inner_offset, message=item.message))
                    continue
                yield from self._route(item)
            if not refused[0]:
                tracker.try_claim(tracker.current_restriction().stop)     # the range is done
            if r.start == 0:
                # read whole: this range reached the end of the file without being cut,
                # and the file ends inside it (not read past its end to a boundary)
                from_start = [c for off, c in counting if off == 0]
                if not refused[0] and from_start and from_start[0].eof and from_start[0].bytes <= r.stop:
                    sha = from_start[0].finish()
                    yield pvalue.TaggedOutput(INPUTS, {"path": path, "bytes": from_start[0].bytes, "sha256": sha})
                else:        # read in ranges: no one pass sees every byte
                    size = file_size(path)
                    yield pvalue.TaggedOutput(INPUTS, {"path": path, "bytes": size, "sha256": None,
                                                       "read_in_ranges": True})
                self.progress.add("files_done")
            self.progress.add("bytes_read", sum(c.bytes for _, c in counting) - counted)
            self.progress.flush(force=True)
        except Exception as exc:  # a reader bug must not take the job down
            self.progress.add("files_done")
            self.progress.flush(force=True)
            yield self.outcome(Outcome(RECORD, READ, file=path))
            yield self.outcome(Outcome(RECORD, ERROR, Reason.READER_FAILED, file=path, offset=last[0],
                                       inner_offset=last[1], message=f"{type(exc).__name__}: {exc}"))
            if r.start == 0:
                yield pvalue.TaggedOutput(INPUTS, {"path": path, "bytes": sum(c.bytes for _, c in counting),
                                                   "sha256": None})
            if not refused[0]:
                tracker.try_claim(tracker.current_restriction().stop)

    def _route(self, rec: ArchiveRecord):
        cfg = self.cfg
        prov = Provenance(rec.file, rec.offset, rec.inner_offset, rec.record_id)

        def dropped(reason):
            return self.outcome(Outcome.at(RECORD, DROPPED, prov, rec.target_uri, reason))

        if rec.rec_type == "revisit":
            if not rec.target_uri.lower().startswith(("http://", "https://")):
                yield dropped(Reason.NOT_HTTP)
            elif not cfg.resolve_revisits:
                yield dropped(Reason.REVISIT_NOT_RESOLVED)
            elif not rec.payload_digest:
                yield dropped(Reason.REVISIT_UNRESOLVED)
            else:
                yield pvalue.TaggedOutput(REVISITS, (rec.payload_digest, Revisit(rec.target_uri, rec.date, prov,
                                                                                       policy_headers(rec.http_headers))))
            return
        cls = classify(rec)
        ctype = rec.http_header("content-type") or rec.block_content_type
        if cls.kind is RecordKind.PAGE:
            self.progress.add("pages")
            if rec.oversize or len(rec.payload) > cfg.max_html_bytes:
                yield dropped(Reason.TOO_LARGE)
                return
            if cfg.resolve_revisits and rec.payload_digest:
                yield pvalue.TaggedOutput(ORIGINALS, (rec.payload_digest, Original(cls, ctype, prov)))
            yield Page(rec.target_uri, rec.date, ctype, rec.payload, prov, truncated=rec.truncated,
                       policy_headers=policy_headers(rec.http_headers))
        elif cls.kind is RecordKind.IMAGE:
            oversize = rec.oversize or len(rec.payload) > cfg.max_image_bytes
            if cfg.resolve_revisits and rec.payload_digest and not oversize:
                yield pvalue.TaggedOutput(ORIGINALS, (rec.payload_digest, Original(cls, ctype, prov)))
            yield self.outcome(Outcome.at(RECORD, IMAGE_SOURCE, prov, rec.target_uri))
            # A record that starts its own gzip member (or an uncompressed file) is cheap
            # to read again by offset: only its location crosses the URL join.
            left = not oversize and rec.inner_offset == 0
            yield pvalue.TaggedOutput(IMAGES, ImageRecord(rec.target_uri, rec.date, ctype,
                                                          b"" if oversize or left else rec.payload, prov, oversize,
                                                          policy_headers=policy_headers(rec.http_headers),
                                                          left_in_archive=left))
        elif cls.kind is RecordKind.BROKEN:
            if cfg.resolve_revisits and rec.payload_digest:
                yield pvalue.TaggedOutput(ORIGINALS, (rec.payload_digest, Original(cls, ctype, prov)))
            yield self.outcome(Outcome.at(RECORD, ERROR, prov, rec.target_uri, cls.reason,
                                          message="; ".join(rec.notes) or "response block is not an HTTP response"))
        else:
            if cfg.resolve_revisits and rec.payload_digest and rec.rec_type in ("response", "resource"):
                # Revisits of this payload get the same verdict, without its bytes.
                yield pvalue.TaggedOutput(ORIGINALS, (rec.payload_digest, Original(cls, ctype, prov)))
            yield dropped(cls.reason)


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
            key=lambda o: (not o.cls.usable, o.provenance.file, o.provenance.offset,
                           o.provenance.inner_offset))
        payload, original_policy = b"", ()
        if chosen is not None and chosen.cls.usable:
            where = chosen.provenance
            try:
                rec = read_record_at(where.file, where.offset, where.inner_offset, self.max_payload_bytes)
            except Exception as exc:            # the file moved or broke since it was read
                rec, why = None, f"{type(exc).__name__}: {exc}"
            else:
                why = "no record there"
            if rec is None:
                message = f"original at {where.file}@{where.offset}+{where.inner_offset}: {why}"[:500]
                for rev in revisits:
                    yield self.outcome(Outcome.at(RECORD, ERROR, rev.provenance, rev.url,
                                                  Reason.REVISIT_ORIGINAL_UNREADABLE, message=message))
                return
            payload = rec.payload
            original_policy = policy_headers(rec.http_headers)   # a 304 revisit may leave them out
        for rev in revisits:
            prov = Provenance(rev.provenance.file, rev.provenance.offset, rev.provenance.inner_offset,
                              rev.provenance.record_id, revisit_of=digest)
            if chosen is None:
                yield self.outcome(Outcome.at(RECORD, DROPPED, prov, rev.url, Reason.REVISIT_UNRESOLVED))
            elif chosen.cls.kind is RecordKind.PAGE:
                yield Page(rev.url, rev.date, chosen.content_type, payload, prov,
                           policy_headers=rev.policy_headers + original_policy)
            elif not chosen.cls.usable:
                yield self.outcome(Outcome.at(RECORD, DROPPED, prov, rev.url, chosen.cls.reason))
            else:
                yield self.outcome(Outcome.at(RECORD, IMAGE_SOURCE, prov, rev.url))
                yield pvalue.TaggedOutput(IMAGES, ImageRecord(rev.url, rev.date, chosen.content_type,
                                                              payload, prov,
                                                              policy_headers=rev.policy_headers + original_policy))


class OriginalsNeeded(beam.PTransform):
    """(originals, revisits), both keyed by payload digest -> the originals whose
    digest some revisit has. The revisits' digests reach every worker as a side input,
    so the other originals never cross a shuffle."""

    def expand(self, pcolls):
        originals, revisits = pcolls
        wanted = beam.pvalue.AsDict(revisits | "RevisitDigests" >> beam.Map(lambda kv: (kv[0], True)))
        return originals | "KeepWanted" >> beam.Filter(lambda kv, wanted: kv[0] in wanted, wanted=wanted)


class Read(NamedTuple):
    """What reading the archives hands on."""
    pages: Tuple[beam.PCollection, ...]      # Page, one PCollection per producer (see below)
    image_records: beam.PCollection          # ImageRecord (locations; bytes only where needed)
    outcomes: Tuple[beam.PCollection, ...]   # Outcome, reduced per stage by AccountOutcomes
    inputs: beam.PCollection                 # one dict per input file: path, size, sha256


class ReadAndResolve(beam.PTransform):
    """Paths -> :class:`Read`, revisits resolved through a CoGroupByKey on the
    payload digest when enabled."""

    def __init__(self, cfg: RecordConfig, progress_dir: Optional[str] = None):
        super().__init__()
        self.cfg = cfg
        self.progress_dir = progress_dir

    def expand(self, paths) -> Read:
        read = paths | "ReadRecords" >> beam.ParDo(ReadArchives(self.cfg, self.progress_dir)).with_outputs(
            IMAGES, REVISITS, ORIGINALS, OUTCOMES, INPUTS, main=PAGES)
        pages, images, outcomes = [read[PAGES]], [read[IMAGES]], [read[OUTCOMES]]
        if self.cfg.resolve_revisits:
            # Only the originals some revisit points at cross the join: the digests of the
            # revisits (a few bytes each; none at all in Common Crawl) go to every reader
            # of ORIGINALS as a side input, and the rest stay where they were read.
            originals = (read[ORIGINALS], read[REVISITS]) | "OriginalsARevisitNeeds" >> OriginalsNeeded()
            resolved = ({"revisits": read[REVISITS], "originals": originals}
                        | "JoinRevisitsOnDigest" >> beam.CoGroupByKey()
                        | "ResolveRevisits" >> beam.ParDo(ResolveRevisit(
                            max(self.cfg.max_html_bytes, self.cfg.max_image_bytes))).with_outputs(
                            IMAGES, OUTCOMES, main=PAGES))
            pages.append(resolved[PAGES])
            images.append(resolved[IMAGES])
            outcomes.append(resolved[OUTCOMES])
        # The pages are handed on as they are, one PCollection per producer: a Flatten of
        # two stages' outputs is a buffer that Beam's local runner holds whole in memory
        # (measured: all pages of the input at once), and pages are the heaviest thing
        # the job moves. ``PagesToCandidates`` processes each part in the stage that
        # made it and joins only the far smaller results.
        return Read(tuple(pages), tuple(images) | "AllImageRecords" >> beam.Flatten(), tuple(map(ledger, outcomes)),
                    read[INPUTS])
