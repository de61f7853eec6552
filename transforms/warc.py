"""A streaming reader for WARC (0.17, 0.18, 1.0, 1.1) and ARC v1/v2 files.

No Beam in here: the Beam adapter is ``transforms/read.py``. The reader takes any
binary file object (Beam's ``FileSystems.open`` with compression off), detects
gzip by its magic bytes (per-record members and whole-file gzip alike), and
yields one :class:`ArchiveRecord` at a time, never holding more than one record's
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
MAX_HEADER_BYTES = 256 * 1024       # a WARC header block larger than this is damage, not a record
MAX_ARC_LINE = 4096                 # an ARC header line is a few hundred bytes
RETAIN_RAW = 16 * 1024 * 1024       # raw bytes of the current gzip member kept for resynchronising
SETTLE_BYTES = 1 << 20              # how far past a record its gzip member is read to check its CRC


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


@dataclass
class ReadError:
    file: str
    offset: int
    inner_offset: int
    kind: str        # bad_gzip, truncated_gzip, bad_record_header, truncated_record, not_an_archive
    message: str


Item = Union[ArchiveRecord, ReadError]


@dataclass
class _Damage:
    """A gzip member that failed (bad data or cut short), in decompressed positions."""
    start: int                  # where the member's output began
    end: int                    # where its output stopped
    error: ReadError


class _Stream:
    """Decompressed byte stream over a raw file, remembering where each gzip member
    starts so that records can be addressed as (member offset, offset inside)."""

    def __init__(self, raw: BinaryIO, name: str, base: int = 0):
        self.raw = raw
        self.name = name
        self.base = base                # raw offset of the stream's first byte (a range's sync point)
        head = raw.read(2)
        self.gzip = head == GZIP_MAGIC
        self._pending_raw = head        # raw bytes read but not consumed
        self.raw_pos = base             # raw offset of _pending_raw[0]
        self.buf = bytearray()
        self.buf_start = 0              # decompressed position of buf[0]
        self._members: List[Tuple[int, int]] = [(0, base)]  # (decompressed pos, raw offset)
        self._dec = zlib.decompressobj(31) if self.gzip else None
        self._member_has_input = False   # the current gzip member has been fed bytes
        self._current_member_raw = base  # raw offset where the current member starts
        self._member_pos = 0             # decompressed position where its output starts
        # Its raw bytes so far (for resync), up to RETAIN_RAW: references to the chunks
        # fed, not copies (per-record gzip starts a member every few KB).
        self._member_raw: List[bytes] = []
        self._member_raw_len = 0
        self._member_raw_ok = True
        self.eof = False
        self.errors: List[ReadError] = []
        self.damage: List[_Damage] = []
        self.last_byte = b""            # the last byte consumed (is a position at a line start?)

    # -- position bookkeeping ------------------------------------------------
    def address(self, pos: int) -> Tuple[int, int]:
        """(raw member offset, offset inside member) for a decompressed position."""
        if not self.gzip:
            return self.base + pos, 0
        raw_off, start = self.base, 0
        for mpos, moff in self._members:
            if mpos <= pos:
                start, raw_off = mpos, moff
            else:
                break
        return raw_off, pos - start

    def member_starts(self, lo: int, hi: int) -> List[int]:
        """Decompressed positions in (lo, hi) where a gzip member begins."""
        if not self.gzip:
            return []
        return [p for p, _ in self._members if lo < p < hi]

    def member_ended_after(self, pos: int) -> bool:
        return any(p > pos for p, _ in self._members)

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

    def _damaged(self, kind: str, message: str):
        err = ReadError(self.name, self._current_member_raw, 0, kind, message)
        self.errors.append(err)
        self.damage.append(_Damage(self._member_pos, self.buf_start + len(self.buf), err))
        # Damage reports far behind the reading position are of no further use.
        while len(self.damage) > 64 and self.damage[0].end < self.buf_start:
            self.damage.pop(0)

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
                    self._damaged("truncated_gzip",
                                  f"gzip member at offset {self._current_member_raw} ends before its end marker")
                self.eof = True
                return False
            consumed_start = self.raw_pos
            try:
                out = self._dec.decompress(data)
            except zlib.error as exc:
                self._damaged("bad_gzip",
                              f"corrupt gzip data in member at offset {self._current_member_raw}: {exc}")
                self._resync_gzip(data, consumed_start)
                return True
            self._member_has_input = True
            self.raw_pos += len(data)
            self.buf += out
            if self._member_raw_ok:
                if self._member_raw_len + len(data) <= RETAIN_RAW:
                    self._member_raw.append(data)
                    self._member_raw_len += len(data)
                else:
                    self._member_raw_ok = False
                    self._member_raw, self._member_raw_len = [], 0
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
        self._member_pos = self.buf_start + len(self.buf)
        self._member_has_input = False
        self._member_raw, self._member_raw_len = [], 0
        self._member_raw_ok = True
        self._new_member(raw_offset)

    def _resync_gzip(self, data: bytes, data_raw_pos: int):
        """After corrupt gzip, go on at the next gzip magic after the damaged member's
        own start: its raw bytes are retained, so a member that the damage led the
        decompressor into is found again, not lost."""
        if self._member_raw_ok:
            window = b"".join(self._member_raw) + data
            base = self._current_member_raw
        else:
            window, base = data, data_raw_pos
        search_from = max(1, self._current_member_raw + 1 - base)
        while True:
            idx = window.find(b"\x1f\x8b\x08", search_from)
            if idx >= 0:
                self.raw_pos = base + idx
                self._pending_raw = window[idx:]
                # Mark the break so the top-level scan sees a line end before the next record.
                self.buf += b"\r\n\r\n"
                self._start_member(base + idx)
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
        if out:
            self.last_byte = out[-1:]
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
        self.buffer(n)
        return self._consume(min(n, len(self.buf)))

    def buffer(self, n: int) -> int:
        """Make at least ``n`` bytes available in buf (fewer at the end); returns how many are."""
        while len(self.buf) < n:
            if not self._fill():
                break
        return len(self.buf)

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
        self.buffer(n)
        return bytes(self.buf[:n])

    def settle(self, pos: int):
        """Read on until the gzip member holding ``pos`` has ended (its CRC checked),
        or SETTLE_BYTES past it (whole-file gzip has one member for everything)."""
        if not self.gzip:
            return
        while (not self.eof and not self.member_ended_after(pos)
               and self.buf_start + len(self.buf) - pos < SETTLE_BYTES):
            if not self._fill():
                break

    def damage_in(self, lo: int, hi: int) -> Optional[_Damage]:
        """The first damaged member whose output overlaps [lo, hi)."""
        for d in self.damage:
            if d.start < hi and d.end > lo:
                return d
        return None


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


# Content-Encoding inflates without an output limit of its own: gzip of zeros grows
# 1,000-fold, brotli of zeros 600,000-fold (317 bytes hold 200 MiB). Every decoder
# below stops as soon as its output passes ``limit`` (the reader's payload cap) and
# reports "too_large", holding at most the limit and a step past it.
INFLATE_STEP = 1 << 20                  # output per call, at most (brotli's: about twice that)
_ZLIB_PIECE = 1 << 16                   # input per call for gzip and deflate
_BROTLI_PIECE = 16                      # input per call where brotli cannot cap its output
_ZSTD_PIECE = 64                        # input per call for zstd: at most 2 MiB out of 64 bytes
TOO_LARGE = "too_large"
_CODINGS = frozenset({"gzip", "x-gzip", "deflate", "br", "brotli", "zstd"})


def _inflate_zlib(body: bytes, wbits: int, limit: int) -> Tuple[bytes, Optional[str]]:
    """One zlib, gzip or raw deflate stream; raises zlib.error on bad data. Input in
    pieces of _ZLIB_PIECE (what zlib has not read of a piece comes back as a copy), output
    in steps of INFLATE_STEP: a bomb stops holding no more than the limit and a step."""
    d = zlib.decompressobj(wbits)
    view = memoryview(body)
    chunks: List[bytes] = []
    total = 0
    for at in range(0, len(body), _ZLIB_PIECE):
        data = view[at:at + _ZLIB_PIECE]
        while not d.eof:
            room = min(INFLATE_STEP, limit + 1 - total)
            piece = d.decompress(data, room)
            chunks.append(piece)
            total += len(piece)
            if total > limit:
                return b"", TOO_LARGE
            data = d.unconsumed_tail
            if not data and len(piece) < room:      # the piece read whole, no output held back
                break
        if d.eof:
            break
    return b"".join(chunks), (None if d.eof else "content_truncated")


def _brotli_process(dec, data: bytes):
    """One call of brotli's decoder, its output capped where the installed brotli can."""
    try:
        return dec.process(data, output_buffer_limit=INFLATE_STEP)
    except TypeError:           # brotli before 1.1 takes no output_buffer_limit
        return None


def _inflate_brotli(body: bytes, limit: int) -> Tuple[bytes, Optional[str]]:
    import brotli
    dec = brotli.Decompressor()
    try:
        chunks: List[bytes] = []
        total = 0
        first = _brotli_process(dec, body)
        if first is not None:
            chunks.append(first)
            total = len(first)
            # Output held back by the cap comes with calls on no input, until one gives none.
            piece = first
            while piece and total <= limit and not dec.is_finished():
                piece = dec.process(b"", output_buffer_limit=INFLATE_STEP)
                chunks.append(piece)
                total += len(piece)
        else:
            dec = brotli.Decompressor()
            for at in range(0, len(body), _BROTLI_PIECE):
                piece = dec.process(body[at:at + _BROTLI_PIECE])
                chunks.append(piece)
                total += len(piece)
                if total > limit or dec.is_finished():
                    break
    except Exception:           # brotli.error; junk after the stream's end is one too
        return body, "content_undecodable"
    if total > limit:
        return b"", TOO_LARGE
    return b"".join(chunks), (None if dec.is_finished() else "content_truncated")


def _inflate_zstd(body: bytes, limit: int) -> Tuple[bytes, Optional[str]]:
    import zstandard
    dec = zstandard.ZstdDecompressor().decompressobj()
    chunks: List[bytes] = []
    total = 0
    try:
        for at in range(0, len(body), _ZSTD_PIECE):
            piece = dec.decompress(body[at:at + _ZSTD_PIECE])
            chunks.append(piece)
            total += len(piece)
            if total > limit or dec.eof:
                break
    except zstandard.ZstdError:
        return body, "content_undecodable"
    if total > limit:
        return b"", TOO_LARGE
    return b"".join(chunks), (None if dec.eof else "content_truncated")


def _decode_one(body: bytes, enc: str, limit: int) -> Tuple[bytes, Optional[str]]:
    if enc in ("gzip", "x-gzip", "deflate"):
        for wbits in ((31, 15, -15) if enc != "deflate" else (15, -15, 31)):
            try:
                return _inflate_zlib(body, wbits, limit)
            except zlib.error:
                continue
        return body, "content_undecodable"
    if enc in ("br", "brotli"):
        return _inflate_brotli(body, limit)
    if enc == "zstd":
        return _inflate_zstd(body, limit)
    return body, "content_encoding_unknown"


def _decode_content(body: bytes, encoding: str, limit: int) -> Tuple[bytes, Optional[str]]:
    """Undo Content-Encoding, a list of codings applied in order ("gzip, br") undone
    last first; returns (bytes, problem or None). A truncated stream yields what could
    be decoded; a coding that cannot be undone leaves the body as it came; output past
    ``limit`` bytes, at any stage, stops the decoding: (b"", "too_large")."""
    codings = [c.strip().lower() for c in encoding.split(",")]
    codings = [c for c in codings if c and c not in ("identity", "none")]
    if not codings:
        return body, None
    if any(c not in _CODINGS for c in codings):
        return body, "content_encoding_unknown"
    out, first_problem = body, None
    for coding in reversed(codings):
        out, problem = _decode_one(out, coding, limit)
        if problem in (TOO_LARGE, "content_undecodable"):
            return (b"", problem) if problem == TOO_LARGE else (body, problem)
        first_problem = first_problem or problem
    return out, first_problem


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
        kind = "not_an_archive" if pos == 0 and self.base == 0 else "bad_record_header"
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
            return ReadError(self.name, off, inner, "truncated_record",
                             f"{what} at offset {off}+{inner} declares {length} bytes but the next record "
                             f"starts after {got}; reading resumes there")
        if got < length:
            return ReadError(self.name, off, inner, "truncated_record",
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
                return ReadError(self.name, off, inner, "bad_record_header",
                                 f"WARC header at offset {off}+{inner} has no blank line before the next record")
            line = s.readline(limit=MAX_HEADER_BYTES)
            if not line:
                return ReadError(self.name, off, inner, "truncated_record",
                                 f"WARC header at offset {off}+{inner} ends before its blank line")
            if line in (b"\r\n", b"\n"):
                self._last_header = (self._line_start, version_line + b"".join(lines) + line)
                break
            size += len(line)
            if size > MAX_HEADER_BYTES:
                return ReadError(self.name, off, inner, "bad_record_header",
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
            return ReadError(self.name, off, inner, "bad_record_header",
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
                    if problem == "content_truncated":
                        rec.truncated = True
                body = decoded
        rec.payload = body
        if not rec.payload_digest and rec.rec_type in ("response", "resource"):
            rec.payload_digest = sha1_digest(body)


def iter_archive(raw: BinaryIO, name: str, **kwargs) -> Iterator[Item]:
    return iter(ArchiveReader(raw, name, **kwargs))


# --------------------------------------------------------------------------- byte ranges
# One file read by many workers, the way Beam's splittable sources read text: the
# file is cut into byte ranges, and a range owns the records that begin at a *sync
# point* inside it, plus whatever follows such a record up to the next sync point
# (damage, records found by resynchronising). A sync point is where a reader that
# knows nothing of what came before can start and be sure a record begins:
#
# * in a gzip file, a gzip member whose first decompressed bytes are a WARC version
#   line (per-record gzip: every record; whole-file gzip: only the file's start, so
#   the first range reads it all);
# * in an uncompressed WARC file, a WARC version line at a line start followed by a
#   whole header with WARC-Type and Content-Length;
# * in anything else (ARC files), only the file's start.
#
# The reader of a range starts at its first sync point at or after the range's start
# (none inside the range: it reads nothing) and stops before the first item that
# lies at a sync point at or after the range's end: exactly where the next range's
# reader starts, so every item is read once whatever the cut. (An uncompressed
# record whose body holds a whole WARC file with valid headers is the exception a
# byte range cannot see: such files are better read whole, ``split_bytes=0``.)
SYNC_WINDOW = MAX_HEADER_BYTES + 64     # bytes after a candidate that decide whether it is one


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


def archive_layout(opener) -> str:
    """"gzip" or "plain" for a WARC file that can be read in ranges, else "whole"."""
    with opener(0) as raw:
        head = raw.read(1 << 16)
    if head[:2] == GZIP_MAGIC:
        try:
            out = zlib.decompressobj(31).decompress(head, 64)
        except zlib.error:
            return "whole"
        return "gzip" if _WARC_VERSION_LINE.match(out[:16]) else "whole"
    return "plain" if _WARC_VERSION_LINE.match(head[:16]) else "whole"


def _sync_here(buf: bytes, idx: int, layout: str) -> bool:
    if layout == "gzip":
        try:
            out = zlib.decompressobj(31).decompress(buf[idx:idx + SYNC_WINDOW], 64)
        except zlib.error:
            return False
        return _is_warc_start(out, full_header=False)
    return buf[idx - 1:idx] == b"\n" and _is_warc_start(buf[idx:idx + SYNC_WINDOW], full_header=True)


def sync_point(opener, layout: str, start: int, end: int) -> Optional[int]:
    """The first sync point at raw offsets [start, end), or None."""
    if start == 0:
        return 0 if end > 0 else None
    if layout == "whole":
        return None
    magic = GZIP_MAGIC + b"\x08" if layout == "gzip" else b"WARC/"
    back = 1 if layout == "plain" else 0      # the byte before a candidate is looked at
    with opener(start - back) as raw:
        buf, base, eof, at = b"", start - back, False, back

        def more() -> bool:
            nonlocal buf, eof
            data = raw.read(1 << 16)
            if not data:
                eof = True
                return False
            buf += data
            return True

        more()
        while True:
            idx = buf.find(magic, at)
            if idx < 0:
                if eof or base + len(buf) >= end + len(magic):
                    return None
                at = max(at, len(buf) - len(magic) + 1)     # a magic cut by the buffer's end
                more()
                continue
            if base + idx >= end:
                return None
            while len(buf) - idx < SYNC_WINDOW and not eof:
                more()
            if _sync_here(buf, idx, layout):
                return base + idx
            at = idx + 1
            if at > 4 * SYNC_WINDOW:                      # bounded memory while scanning
                cut = at - back
                buf, base, at = buf[cut:], base + cut, back


def iter_archive_range(opener, name: str, start: int, end: int, layout: Optional[str] = None,
                       claim=None, **kwargs) -> Iterator[Item]:
    """The items of ``name`` that the byte range [start, end) owns (see above).
    ``opener(offset)`` gives a binary file from that raw offset. ``claim(offset)``,
    when given, is asked before each item at a sync point (a Beam restriction
    tracker's ``try_claim``) and reading stops when it says no; otherwise reading
    stops at the first sync point at or after ``end``."""
    layout = layout or archive_layout(opener)
    first = sync_point(opener, layout, start, end)
    if first is None:
        return
    claim = claim or (lambda off: off < end)
    with opener(first) as raw:
        reader = ArchiveReader(raw, name, base=first, **kwargs)
        for item in reader:
            if _at_sync_point(item, layout, reader, opener) and not claim(item.offset):
                return
            yield item


def _at_sync_point(item: Item, layout: str, reader: "ArchiveReader", opener) -> bool:
    """Is this item where a range's reader would start (see ``sync_point``)?"""
    if item.inner_offset != 0:
        return False
    if item.offset == 0:
        return True
    if layout == "whole":
        return False
    if isinstance(item, ArchiveRecord):
        if not item.format.startswith("WARC/"):
            return False
        if layout == "gzip":
            return True      # it was read from the start of a member that begins with its header
        return reader.last_header_sync()
    return sync_point(opener, layout, item.offset, item.offset + 1) == item.offset      # rare: errors


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
