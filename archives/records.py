"""A streaming reader for WARC (0.17, 0.18, 1.0, 1.1) and ARC v1/v2 files.

No Beam in here: the Beam adapter is ``transforms/read.py``. The reader takes any
binary file object (Beam's ``FileSystems.open`` with compression off, or a plain
``open``), reads it through the gzip member stream of ``archives/gzip_members.py``
(gzip detected by its magic bytes: per-record members and whole-file gzip alike),
parses each record's header and HTTP part (the body's codings are undone by
``archives/decoding.py``), and yields one :class:`ArchiveRecord` at a time, never holding more than one record's
capped payload. Damage is reported as :class:`ReadError` items in the same stream,
carrying the file and offset, and the reader resynchronises and goes on.

Record boundaries that no bad length can cross:

* in a gzip file, a member that starts with a record header ends the record before
  it (per-record gzip: one member, one record);
* in any file, when a block is not followed by its blank-line terminator (or the
  file ends first), a valid WARC header inside the block ends it there;
* a record that is cut, or whose gzip member is damaged or cut short, is one
  :class:`ReadError` item, never a record: a partial page is not processed as whole.
Reading then resumes at the boundary, so undamaged neighbours are never lost.

Reading only the records a byte range of a file owns is ``archives/ranges.py``;
writing a WARC record is ``archives/writer.py``.
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass, field
from typing import BinaryIO, Iterator, List, Optional, Tuple, Union

from contract.reasons import Reason
from archives.decoding import TOO_LARGE, _decode_content, _dechunk
from archives.gzip_members import CHUNK, ReadError, _Stream

MAX_HEADER_BYTES = 256 * 1024       # a WARC header block larger than this is damage, not a record
MAX_ARC_LINE = 4096                 # an ARC header line is a few hundred bytes


@dataclass
class ArchiveRecord:
    file: str
    offset: int                 # raw offset of the gzip member (or of the record, uncompressed)
    inner_offset: int           # offset inside the decompressed member (whole-file gzip)
    format: str                 # "WARC/1.0", "WARC/0.17", "ARC", ...
    rec_type: str               # warcinfo, response, resource, request, revisit, metadata, ...
    headers: List[Tuple[str, str]]
    target_uri: str = ""
    date: str = ""
    record_id: str = ""
    payload_digest: str = ""
    block_content_type: str = ""
    http_status: Optional[int] = None
    http_headers: List[Tuple[str, str]] = field(default_factory=list)
    payload: bytes = b""        # entity body, transfer and content decoding undone
    payload_size: int = 0       # declared or measured size before capping
    oversize: bool = False      # payload beyond the cap: not kept
    truncated: bool = False     # block shorter than its Content-Length, or body decoding cut short
    notes: List[str] = field(default_factory=list)

    def header(self, name: str, default: str = "") -> str:
        lname = name.lower()
        for k, v in self.headers:
            if k.lower() == lname:
                return v
        return default

    def http_header(self, name: str, default: str = "") -> str:
        lname = name.lower()
        for k, v in self.http_headers:
            if k.lower() == lname:
                return v
        return default

    @property
    def mime(self) -> str:
        ctype = self.http_header("content-type") if self.http_headers else self.block_content_type
        return ctype.split(";")[0].strip().lower()


Item = Union[ArchiveRecord, ReadError]


_WARC_VERSION = re.compile(rb"^WARC/(\d+\.\d+)\s*$")
_WARC_VERSION_LINE = re.compile(rb"WARC/\d+\.\d+\r?\n")
_ARC_HEADER = re.compile(rb"^(\S+) (\S+) (\d{8,14}) (\S*) ?.*?(\d+)\s*$")


def _parse_headers(lines: List[bytes]) -> List[Tuple[str, str]]:
    headers: List[Tuple[str, str]] = []
    for raw in lines:
        line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
        if not line:
            continue
        if line[0] in " \t" and headers:
            k, v = headers[-1]
            headers[-1] = (k, v + " " + line.strip())
            continue
        name, sep, value = line.partition(":")
        if sep:
            headers.append((name.strip(), value.strip()))
    return headers


def _split_http(block: bytes) -> Tuple[Optional[int], List[Tuple[str, str]], bytes, bool]:
    """HTTP response block -> (status, headers, body, parsed)."""
    if not block.startswith(b"HTTP/"):
        return None, [], block, False
    end = block.find(b"\r\n\r\n")
    sep = 4
    if end < 0:
        end = block.find(b"\n\n")
        sep = 2
    if end < 0:
        head, body = block, b""
    else:
        head, body = block[:end], block[end + sep:]
    lines = head.split(b"\n")
    status_parts = lines[0].split(None, 2)
    try:
        status = int(status_parts[1])
    except (IndexError, ValueError):
        return None, [], block, False
    return status, _parse_headers(lines[1:]), body, True


def sha1_digest(data: bytes) -> str:
    return "sha1:" + base64.b32encode(hashlib.sha1(data).digest()).decode("ascii")


def _is_warc_start(head: bytes, full_header: bool) -> bool:
    """Do these bytes begin with a WARC version line (and, with ``full_header``, a
    whole header block naming WARC-Type and Content-Length)?"""
    if not _WARC_VERSION_LINE.match(head[:16]):
        return False
    if not full_header:
        return True
    end = head.find(b"\r\n\r\n")
    if end < 0:
        end = head.find(b"\n\n")
    if end < 0:
        return False
    fields = head[:end + 1].lower()
    return b"\ncontent-length:" in fields and b"\nwarc-type:" in fields


class ArchiveReader:
    """Iterate the records of one WARC or ARC file (see module doc)."""

    def __init__(self, raw: BinaryIO, name: str, max_payload_bytes: int = 20 * 1024 * 1024,
                 keep_payload_types=("response", "resource", "revisit"), base: int = 0):
        self.stream = _Stream(raw, name, base)
        self.base = base
        self._line_start = True
        # The last WARC header read: (at a line start, its bytes), for ``last_header_sync``.
        self._last_header: Tuple[bool, bytes] = (False, b"")
        self.name = name
        self.max_payload = max_payload_bytes
        self.keep_types = set(keep_payload_types)
        self.arc_mode = False

    def __iter__(self) -> Iterator[Item]:
        s = self.stream
        bad_at: Optional[Tuple[int, int, int]] = None    # (pos, raw offset, inner) where damage began
        if not s.peek(1):
            if s.errors:
                yield from self._drain_errors(final=True)
            elif self.base == 0:
                yield ReadError(self.name, 0, 0, Reason.EMPTY_FILE, "the file holds no data")
            return
        while True:
            yield from self._drain_errors()
            # Skip blank lines between records.
            head = s.peek(1)
            if not head:
                break
            if head in (b"\r", b"\n"):
                s.readline()
                continue
            start = s.pos
            self._line_start = s.last_byte in (b"", b"\n")
            line = s.readline()
            if line.startswith(b"WARC/"):
                if bad_at is not None:
                    yield self._bad(bad_at)
                    bad_at = None
                yield self._read_warc(line, start)
                continue
            arc = self._arc_match(line)
            if arc and (self.arc_mode or line.startswith(b"filedesc://") or b"://" in line.split(b" ")[0]
                        or line.startswith(b"dns:")):
                if bad_at is not None:
                    yield self._bad(bad_at)
                    bad_at = None
                self.arc_mode = True
                yield self._read_arc(line, start, arc)
                continue
            # Bytes that start no record: remember where the damage began (its address
            # now, while the gzip member table still knows it), resync.
            if bad_at is None:
                bad_at = (start,) + s.address(start)
        yield from self._drain_errors(final=True)
        if bad_at is not None:
            yield self._bad(bad_at)

    def last_header_sync(self) -> bool:
        """Did the last WARC record read begin where a range's reader could start (a
        line start, a whole header with WARC-Type and Content-Length; see ``sync_point``)?"""
        line_start, header = self._last_header
        return line_start and _is_warc_start(header, full_header=True)

    @staticmethod
    def _arc_match(line: bytes):
        if line.startswith(b"<") or len(line) > MAX_ARC_LINE:
            return None
        return _ARC_HEADER.match(line.rstrip(b"\r\n"))

    def _drain_errors(self, final: bool = False):
        """Stream errors so far, except those of a damaged member that the reading
        position has not passed: the record read there reports them as its own."""
        s = self.stream
        ahead = [] if final else [d.error for d in s.damage if d.end > s.pos]
        keep = []
        for err in s.errors:
            if any(err is e for e in ahead):
                keep.append(err)
            else:
                yield err
        s.errors = keep

    def _bad(self, at: Tuple[int, int, int]) -> ReadError:
        pos, off, inner = at
        kind = Reason.NOT_AN_ARCHIVE if pos == 0 and self.base == 0 else Reason.BAD_RECORD_HEADER
        return ReadError(self.name, off, inner, kind,
                         f"bytes at offset {off}+{inner} do not start a WARC or ARC record; skipped to the next record")

    # -- record boundaries -----------------------------------------------------
    def _starts_record(self, rel: int, text_rule: bool) -> bool:
        """Does a record header begin ``rel`` bytes into the buffer? For a gzip member
        start the version line (or an ARC header line) is enough; for a position in
        the middle of a block the whole WARC header must be there and valid."""
        s = self.stream
        head = bytes(s.buf[rel:rel + 16]) if s.buffer(rel + 16) else b""
        if _WARC_VERSION_LINE.match(head):
            if not text_rule:
                return True
            s.buffer(rel + 16384)
            window = bytes(s.buf[rel:rel + 16384])
            end = window.find(b"\r\n\r\n")
            if end < 0:
                end = window.find(b"\n\n")
            if end < 0:
                return False
            fields = window[:end].lower()
            return b"\ncontent-length:" in fields and b"\nwarc-type:" in fields
        if self.arc_mode and not text_rule:
            s.buffer(rel + MAX_ARC_LINE)
            nl = s.buf.find(b"\n", rel, rel + MAX_ARC_LINE)
            return nl >= 0 and self._arc_match(bytes(s.buf[rel:nl + 1])) is not None
        return False

    def _boundary(self, block_pos: int, hi: int, text_rule: bool) -> Optional[int]:
        """The first record boundary at buffer offsets [0, hi), the buffer starting at
        decompressed position ``block_pos``."""
        s = self.stream
        for p in s.member_starts(block_pos - 1, block_pos + hi):
            if self._starts_record(p - block_pos, text_rule=False):
                return p - block_pos
        if not text_rule or self.arc_mode:
            return None
        at = 0
        while True:
            # Anywhere, not only at a line start: a write cut mid-line and resumed with a
            # new record leaves "...half a sentenceWARC/1.1". The full header must validate.
            idx = s.buf.find(b"WARC/", at, hi + 4)      # a record at idx < hi
            if idx < 0:
                return None
            if self._starts_record(idx, text_rule=True):
                return idx
            at = idx + 1

    def _read_block(self, length: int, keep: bool) -> Tuple[bytes, int, bool, bool]:
        """Read a record block of ``length`` bytes, stopping at a record boundary:
        (kept bytes, bytes read, oversize, cut short at a boundary)."""
        s = self.stream
        block_pos = s.pos
        if length <= self.max_payload + 65536:
            # Block and terminator in the buffer, then decide where the block really ends.
            have = s.buffer(length + 4)
            avail = min(length, have)
            after = bytes(s.buf[length:length + 4])
            terminated = avail == length and (after.startswith((b"\r\n\r\n", b"\n\n")) or (
                self.arc_mode and after.startswith(b"\n")) or (have == length and s.eof))
            cut = self._boundary(block_pos, avail, text_rule=not terminated)
            if cut is not None:
                s._consume(cut)
                return b"", cut, False, True
            data = s._consume(avail)
            return (data if keep else b""), avail, False, False
        # Too big to hold: stream through it, looking for a boundary in each piece.
        kept = b""
        done = 0
        while done < length:
            have = s.buffer(min(length - done, CHUNK) + 16)
            if not have:
                break
            span = min(length - done, have)
            cut = self._boundary(block_pos + done, span, text_rule=True)
            take = cut if cut is not None else span
            piece = s._consume(take)
            if keep and len(kept) < 65536:
                kept += piece[:65536 - len(kept)]
            done += take
            if cut is not None:
                return b"", done, keep, True
        return kept, done, keep, False

    def _block_error(self, start: int, end: int, got: int, length: int, cut: bool,
                     what: str) -> Optional[ReadError]:
        """None if the record read whole from undamaged bytes, else its one error."""
        s = self.stream
        s.settle(end + 4)
        off, inner = s.address(start)
        damage = s.damage_in(start, end + 4)
        if damage is not None:
            # Reported as this record's error, not twice.
            s.errors = [e for e in s.errors if e is not damage.error]
            return ReadError(self.name, off, inner, damage.error.kind,
                             f"{what} at offset {off}+{inner} lies in a damaged gzip member: {damage.error.message}")
        if cut:
            return ReadError(self.name, off, inner, Reason.TRUNCATED_RECORD,
                             f"{what} at offset {off}+{inner} declares {length} bytes but the next record "
                             f"starts after {got}; reading resumes there")
        if got < length:
            return ReadError(self.name, off, inner, Reason.TRUNCATED_RECORD,
                             f"{what} at offset {off}+{inner} declares {length} bytes but the file ends after {got}")
        return None

    def _read_warc(self, version_line: bytes, start: int) -> Item:
        s = self.stream
        off, inner = s.address(start)
        lines = []
        size = len(version_line)
        while True:
            if s.peek(5) == b"WARC/" and _WARC_VERSION_LINE.match(s.peek(16)):
                # The next record begins before this header ended: leave it to be read.
                return ReadError(self.name, off, inner, Reason.BAD_RECORD_HEADER,
                                 f"WARC header at offset {off}+{inner} has no blank line before the next record")
            line = s.readline(limit=MAX_HEADER_BYTES)
            if not line:
                return ReadError(self.name, off, inner, Reason.TRUNCATED_RECORD,
                                 f"WARC header at offset {off}+{inner} ends before its blank line")
            if line in (b"\r\n", b"\n"):
                self._last_header = (self._line_start, version_line + b"".join(lines) + line)
                break
            size += len(line)
            if size > MAX_HEADER_BYTES:
                return ReadError(self.name, off, inner, Reason.BAD_RECORD_HEADER,
                                 f"WARC header at offset {off}+{inner} is over {MAX_HEADER_BYTES} bytes")
            lines.append(line)
        headers = _parse_headers(lines)
        hmap = {}
        for k, v in headers:
            hmap.setdefault(k.lower(), v)
        try:
            length = int(hmap.get("content-length", "").strip())
            if length < 0:
                raise ValueError
        except ValueError:
            return ReadError(self.name, off, inner, Reason.BAD_RECORD_HEADER,
                             f"WARC record at offset {off}+{inner} has no valid Content-Length")
        rec_type = hmap.get("warc-type", "").lower() or "unknown"
        keep = rec_type in self.keep_types
        block, got, oversize, cut = self._read_block(length, keep)
        error = self._block_error(start, s.pos, got, length, cut, "WARC record")
        if error is not None:
            return error
        rec = ArchiveRecord(
            file=self.name, offset=off, inner_offset=inner,
            format=version_line.decode("ascii", "replace").strip(), rec_type=rec_type,
            headers=headers, target_uri=hmap.get("warc-target-uri", "").strip("<> "),
            date=hmap.get("warc-date", ""), record_id=hmap.get("warc-record-id", ""),
            payload_digest=hmap.get("warc-payload-digest", ""),
            block_content_type=hmap.get("content-type", ""))
        self._fill_payload(rec, block, length, oversize)
        return rec

    def _read_arc(self, line: bytes, start: int, m) -> Item:
        off, inner = self.stream.address(start)
        fields = line.decode("utf-8", "replace").split()
        url, date, ctype = fields[0], fields[2], fields[3] if len(fields) > 3 else ""
        length = int(fields[-1])
        is_filedesc = url.startswith("filedesc://")
        rec_type = "warcinfo" if is_filedesc else ("response" if "://" in url or url.startswith("dns:") else "unknown")
        keep = rec_type in self.keep_types
        block, got, oversize, cut = self._read_block(length, keep)
        error = self._block_error(start, self.stream.pos, got, length, cut, "ARC record")
        if error is not None:
            return error
        iso = date
        if len(date) >= 14:
            iso = f"{date[0:4]}-{date[4:6]}-{date[6:8]}T{date[8:10]}:{date[10:12]}:{date[12:14]}Z"
        rec = ArchiveRecord(
            file=self.name, offset=off, inner_offset=inner, format="ARC", rec_type=rec_type,
            headers=[("ARC-Header", line.decode("utf-8", "replace").strip())],
            target_uri=url, date=iso, record_id="", block_content_type=ctype)
        if rec_type == "response" and url.startswith("dns:"):
            rec.block_content_type = "text/dns"
        self._fill_payload(rec, block, length, oversize)
        return rec

    def _fill_payload(self, rec: ArchiveRecord, block: bytes, length: int, oversize: bool):
        rec.payload_size = length
        if rec.rec_type not in self.keep_types:
            return
        is_http = rec.block_content_type.lower().startswith("application/http") or (
            rec.format == "ARC" and block.startswith(b"HTTP/")) or (
            rec.rec_type in ("response", "revisit") and block.startswith(b"HTTP/"))
        body = block
        if is_http:
            status, http_headers, body, parsed = _split_http(block)
            if parsed:
                rec.http_status = status
                rec.http_headers = http_headers
            else:
                rec.notes.append("unparsable HTTP header")
        if oversize:
            rec.oversize = True
            rec.payload = b""
            return
        if rec.http_headers:
            te = rec.http_header("transfer-encoding").lower()
            if "chunked" in te:
                dechunked, ok = _dechunk(body)
                if ok or dechunked is not body:
                    body = dechunked
                if not ok:
                    rec.notes.append("chunked body malformed or cut short")
            ce = rec.http_header("content-encoding")
            if ce and body:
                decoded, problem = _decode_content(body, ce, self.max_payload)
                if problem == TOO_LARGE:
                    # a bomb, or just large: stopped at the cap, never held whole
                    rec.notes.append(f"Content-Encoding {ce!r} inflates past {self.max_payload} bytes")
                    rec.oversize = True
                    rec.payload = b""
                    return
                if problem:
                    rec.notes.append(problem)
                    if problem == Reason.CONTENT_TRUNCATED:
                        rec.truncated = True
                body = decoded
        rec.payload = body
        if not rec.payload_digest and rec.rec_type in ("response", "resource"):
            rec.payload_digest = sha1_digest(body)


def iter_archive(raw: BinaryIO, name: str, **kwargs) -> Iterator[Item]:
    return iter(ArchiveReader(raw, name, **kwargs))
