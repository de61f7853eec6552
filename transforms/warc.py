"""A streaming reader for WARC (0.17, 0.18, 1.0, 1.1) and ARC v1/v2 files.

No Beam in here: the Beam adapter is ``transforms/read.py``. The reader takes any
binary file object (Beam's ``FileSystems.open`` with compression off), detects
gzip by its magic bytes (per-record members and whole-file gzip alike), and
yields one :class:`ArchiveRecord` at a time, never holding more than one record's
capped payload. Damage is reported as :class:`ReadError` items in the same stream,
carrying the file and offset, and the reader resynchronises and goes on.
"""

from __future__ import annotations

import base64
import hashlib
import re
import zlib
from dataclasses import dataclass, field
from typing import BinaryIO, Iterator, List, Optional, Tuple, Union

GZIP_MAGIC = b"\x1f\x8b"
CHUNK = 1 << 16


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
    refers_to_uri: str = ""
    refers_to_date: str = ""
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


@dataclass
class ReadError:
    file: str
    offset: int
    inner_offset: int
    kind: str        # bad_gzip, truncated_gzip, bad_record_header, truncated_record, not_an_archive
    message: str


Item = Union[ArchiveRecord, ReadError]


class _Stream:
    """Decompressed byte stream over a raw file, remembering where each gzip member
    starts so that records can be addressed as (member offset, offset inside)."""

    def __init__(self, raw: BinaryIO, name: str):
        self.raw = raw
        self.name = name
        head = raw.read(2)
        self.gzip = head == GZIP_MAGIC
        self._pending_raw = head        # raw bytes read but not consumed
        self.raw_pos = 0                # raw offset of _pending_raw[0]
        self.buf = bytearray()
        self.buf_start = 0              # decompressed position of buf[0]
        self.member_start_raw = 0       # raw offset of the current gzip member
        self.member_start_pos = 0       # decompressed position where that member began
        self._members: List[Tuple[int, int]] = [(0, 0)]  # (decompressed pos, raw offset)
        self._dec = zlib.decompressobj(31) if self.gzip else None
        self._member_has_input = False   # the current gzip member has been fed bytes
        self._current_member_raw = 0     # raw offset where the current member starts
        self.eof = False
        self.errors: List[ReadError] = []

    # -- position bookkeeping ------------------------------------------------
    def address(self, pos: int) -> Tuple[int, int]:
        """(raw member offset, offset inside member) for a decompressed position."""
        if not self.gzip:
            return pos, 0
        raw_off, start = 0, 0
        for mpos, moff in self._members:
            if mpos <= pos:
                start, raw_off = mpos, moff
            else:
                break
        return raw_off, pos - start

    def _new_member(self, raw_offset: int):
        pos = self.buf_start + len(self.buf)
        if self._members and self._members[-1][0] == pos:
            self._members[-1] = (pos, raw_offset)
        else:
            self._members.append((pos, raw_offset))
        # Keep the table short: positions before the buffer are never asked for again.
        while len(self._members) > 2 and self._members[1][0] <= self.buf_start:
            self._members.pop(0)
        self._dec = zlib.decompressobj(31)

    def _fill(self) -> bool:
        """Read more into buf; False at end of input."""
        if self.eof:
            return False
        if not self.gzip:
            data = self._pending_raw + self.raw.read(CHUNK)
            self._pending_raw = b""
            if not data:
                self.eof = True
                return False
            self.raw_pos += len(data)
            self.buf += data
            return True
        while True:
            data = self._pending_raw or self.raw.read(CHUNK)
            self._pending_raw = b""
            if not data:
                if self._dec is not None and not self._dec.eof and self._member_has_input:
                    self.errors.append(ReadError(
                        self.name, self._current_member_raw, 0, "truncated_gzip",
                        f"gzip member at offset {self._current_member_raw} ends before its end marker"))
                self.eof = True
                return False
            consumed_start = self.raw_pos
            try:
                out = self._dec.decompress(data)
            except zlib.error as exc:
                self.errors.append(ReadError(
                    self.name, self._current_member_raw, 0, "bad_gzip",
                    f"corrupt gzip data in member at offset {self._current_member_raw}: {exc}"))
                self._resync_gzip(data, consumed_start)
                return True
            self._member_has_input = True
            self.raw_pos += len(data)
            self.buf += out
            if self._dec.eof:
                rest = self._dec.unused_data
                next_raw = self.raw_pos - len(rest)
                self.raw_pos = next_raw
                self._pending_raw = rest
                self._start_member(next_raw)
            if out:
                return True

    def _start_member(self, raw_offset: int):
        self._current_member_raw = raw_offset
        self._member_has_input = False
        self._new_member(raw_offset)

    def _resync_gzip(self, data: bytes, data_raw_pos: int):
        """After corrupt gzip, skip to the next gzip magic and start a member there."""
        search_from = max(1, self._current_member_raw + 1 - data_raw_pos)
        window = data
        base = data_raw_pos
        while True:
            idx = window.find(b"\x1f\x8b\x08", search_from)
            if idx >= 0:
                self.raw_pos = base + idx
                self._pending_raw = window[idx:]
                self._start_member(base + idx)
                # Mark the break so a record straddling it is not glued to the next one.
                self.buf += b"\r\n\r\n"
                return
            tail = window[-2:]
            more = self.raw.read(CHUNK)
            if not more:
                self.raw_pos = base + len(window)
                self.eof = True
                return
            base = base + len(window) - len(tail)
            window = tail + more
            search_from = 0

    # -- reading -------------------------------------------------------------
    @property
    def pos(self) -> int:
        return self.buf_start

    def _consume(self, n: int) -> bytes:
        out = bytes(self.buf[:n])
        del self.buf[:n]
        self.buf_start += n
        return out

    def readline(self, limit: int = 1 << 20) -> bytes:
        while True:
            idx = self.buf.find(b"\n", 0, limit)
            if idx >= 0:
                return self._consume(idx + 1)
            if len(self.buf) >= limit:
                return self._consume(limit)
            if not self._fill():
                return self._consume(len(self.buf))

    def read(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not self._fill():
                break
        return self._consume(min(n, len(self.buf)))

    def skip(self, n: int) -> int:
        skipped = 0
        while skipped < n:
            if not self.buf and not self._fill():
                break
            take = min(n - skipped, len(self.buf))
            self._consume(take)
            skipped += take
        return skipped

    def peek(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not self._fill():
                break
        return bytes(self.buf[:n])


_WARC_VERSION = re.compile(rb"^WARC/(\d+\.\d+)\s*$")
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


def _dechunk(body: bytes) -> Tuple[bytes, bool]:
    """Undo chunked transfer coding; (body, ok). On malformed input returns the
    input unchanged, since some archives store the body already de-chunked."""
    out = bytearray()
    pos = 0
    while True:
        end = body.find(b"\r\n", pos)
        if end < 0:
            return body, False
        size_field = body[pos:end].split(b";")[0].strip()
        try:
            size = int(size_field, 16)
        except ValueError:
            return body, False
        pos = end + 2
        if size == 0:
            return bytes(out), True
        if pos + size > len(body):
            out += body[pos:]
            return bytes(out), False
        out += body[pos:pos + size]
        pos += size + 2


def _decode_content(body: bytes, encoding: str) -> Tuple[bytes, Optional[str]]:
    """Undo Content-Encoding; returns (bytes, problem or None). A truncated stream
    yields what could be decoded."""
    enc = encoding.strip().lower()
    if not enc or enc in ("identity", "none"):
        return body, None
    if enc in ("gzip", "x-gzip", "deflate"):
        for wbits in ((31, 15, -15) if enc != "deflate" else (15, -15, 31)):
            d = zlib.decompressobj(wbits)
            try:
                out = d.decompress(body)
            except zlib.error:
                continue
            return out, (None if d.eof else "content_truncated")
        return body, "content_undecodable"
    if enc in ("br", "brotli"):
        try:
            import brotli
            return brotli.decompress(body), None
        except Exception:
            try:
                import brotli
                dec = brotli.Decompressor()
                return dec.process(body), "content_truncated"
            except Exception:
                return body, "content_undecodable"
    return body, "content_encoding_unknown"


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


class ArchiveReader:
    """Iterate the records of one WARC or ARC file (see module doc)."""

    def __init__(self, raw: BinaryIO, name: str, max_payload_bytes: int = 20 * 1024 * 1024,
                 keep_payload_types=("response", "resource", "revisit")):
        self.stream = _Stream(raw, name)
        self.name = name
        self.max_payload = max_payload_bytes
        self.keep_types = set(keep_payload_types)
        self.arc_mode = False

    def __iter__(self) -> Iterator[Item]:
        s = self.stream
        bad_start: Optional[int] = None
        if not s.peek(1):
            if s.errors:
                yield from self._drain_errors()
            else:
                yield ReadError(self.name, 0, 0, "empty_file", "the file holds no data")
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
            line = s.readline()
            if line.startswith(b"WARC/"):
                if bad_start is not None:
                    yield self._bad(bad_start)
                    bad_start = None
                yield from self._drain_errors()
                yield self._read_warc(line, start)
                continue
            arc = _ARC_HEADER.match(line.rstrip(b"\r\n")) if not line.startswith(b"<") else None
            if arc and (self.arc_mode or line.startswith(b"filedesc://") or b"://" in line.split(b" ")[0]
                        or line.startswith(b"dns:")):
                if bad_start is not None:
                    yield self._bad(bad_start)
                    bad_start = None
                self.arc_mode = True
                yield self._read_arc(line, start, arc)
                continue
            # Bytes that start no record: remember where the damage began, resync.
            if bad_start is None:
                bad_start = start
        yield from self._drain_errors()
        if bad_start is not None:
            yield self._bad(bad_start)

    def _drain_errors(self):
        while self.stream.errors:
            yield self.stream.errors.pop(0)

    def _bad(self, pos: int) -> ReadError:
        off, inner = self.stream.address(pos)
        kind = "not_an_archive" if pos == 0 else "bad_record_header"
        return ReadError(self.name, off, inner, kind,
                         f"bytes at offset {off}+{inner} do not start a WARC or ARC record; skipped to the next record")

    def _read_block(self, length: int, keep: bool) -> Tuple[bytes, int, bool]:
        """Read a record block of ``length`` bytes: (kept bytes, bytes read, oversize)."""
        s = self.stream
        if keep and length <= self.max_payload + 65536:
            data = s.read(length)
            return data, len(data), False
        kept = s.read(min(length, 65536)) if keep else b""
        skipped = s.skip(length - len(kept))
        return kept, len(kept) + skipped, keep

    def _read_warc(self, version_line: bytes, start: int) -> Item:
        s = self.stream
        off, inner = s.address(start)
        lines = []
        while True:
            line = s.readline()
            if not line:
                return ReadError(self.name, off, inner, "truncated_record",
                                 f"WARC header at offset {off}+{inner} ends before its blank line")
            if line in (b"\r\n", b"\n"):
                break
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
            return ReadError(self.name, off, inner, "bad_record_header",
                             f"WARC record at offset {off}+{inner} has no valid Content-Length")
        rec_type = hmap.get("warc-type", "").lower() or "unknown"
        keep = rec_type in self.keep_types
        block, got, oversize = self._read_block(length, keep)
        rec = ArchiveRecord(
            file=self.name, offset=off, inner_offset=inner,
            format=version_line.decode("ascii", "replace").strip(), rec_type=rec_type,
            headers=headers, target_uri=hmap.get("warc-target-uri", "").strip("<> "),
            date=hmap.get("warc-date", ""), record_id=hmap.get("warc-record-id", ""),
            payload_digest=hmap.get("warc-payload-digest", ""),
            refers_to_uri=hmap.get("warc-refers-to-target-uri", "").strip("<> "),
            refers_to_date=hmap.get("warc-refers-to-date", ""),
            block_content_type=hmap.get("content-type", ""))
        if got < length:
            rec.truncated = True
            rec.notes.append(f"block has {got} of {length} bytes")
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
        block, got, oversize = self._read_block(length, keep)
        iso = date
        if len(date) >= 14:
            iso = f"{date[0:4]}-{date[4:6]}-{date[6:8]}T{date[8:10]}:{date[10:12]}:{date[12:14]}Z"
        rec = ArchiveRecord(
            file=self.name, offset=off, inner_offset=inner, format="ARC", rec_type=rec_type,
            headers=[("ARC-Header", line.decode("utf-8", "replace").strip())],
            target_uri=url, date=iso, record_id="", block_content_type=ctype)
        if got < length:
            rec.truncated = True
            rec.notes.append(f"block has {got} of {length} bytes")
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
                decoded, problem = _decode_content(body, ce)
                if problem:
                    rec.notes.append(problem)
                    if problem == "content_truncated":
                        rec.truncated = True
                body = decoded
        rec.payload = body
        if not rec.payload_digest and rec.rec_type in ("response", "resource"):
            rec.payload_digest = sha1_digest(body)


def iter_archive(raw: BinaryIO, name: str, **kwargs) -> Iterator[Item]:
    return iter(ArchiveReader(raw, name, **kwargs))


def warc_response_record(uri: str, date: str, http_status: int, content_type: str, body: bytes,
                         extra_headers: Optional[List[Tuple[str, str]]] = None) -> bytes:
    """One WARC/1.1 ``response`` record (uncompressed; gzip it to make a member)."""
    import uuid
    http_block = (f"HTTP/1.1 {http_status} OK\r\nContent-Type: {content_type or 'application/octet-stream'}\r\n"
                  f"Content-Length: {len(body)}\r\n\r\n").encode("latin-1") + body
    rid = uuid.UUID(hashlib.sha256(f"{uri}\n{date}".encode() + hashlib.sha256(body).digest()).hexdigest()[:32])
    headers = [("WARC-Type", "response"), ("WARC-Target-URI", uri), ("WARC-Date", date),
               ("WARC-Record-ID", f"<urn:uuid:{rid}>"), ("WARC-Payload-Digest", sha1_digest(body)),
               ("Content-Type", "application/http; msgtype=response")]
    headers += list(extra_headers or [])
    headers.append(("Content-Length", str(len(http_block))))
    head = "WARC/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\n"
    return head.encode("utf-8") + http_block + b"\r\n\r\n"
