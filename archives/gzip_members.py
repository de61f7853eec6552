"""The decompressed byte stream under the archive reader: gzip members and their resync.

No Beam, no records here. :class:`_Stream` reads any binary file object, detects
gzip by its magic bytes (per-record members and whole-file gzip alike) and hands
out decompressed bytes, remembering where each gzip member starts so that a record
can be addressed as (raw offset of its member, offset inside that member). A member
whose data is corrupt or cut short becomes a :class:`ReadError` (``bad_gzip``,
``truncated_gzip``) and a damaged span of output; reading then resynchronises at
the next gzip magic after the damaged member's own start, so a member that the
damage led the decompressor into is found again, not lost.

:class:`ReadError` is the reader's one damage item: the stream makes the gzip ones,
``archives/records.py`` (which reads records from this stream) the others.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import BinaryIO, List, Optional, Tuple

from contract.reasons import Reason

GZIP_MAGIC = b"\x1f\x8b"
CHUNK = 1 << 16
RETAIN_RAW = 16 * 1024 * 1024       # raw bytes of the current gzip member kept for resynchronising
SETTLE_BYTES = 1 << 20              # how far past a record its gzip member is read to check its CRC


@dataclass
class ReadError:
    file: str
    offset: int
    inner_offset: int
    kind: str        # bad_gzip, truncated_gzip, bad_record_header, truncated_record, not_an_archive
    message: str


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
                    self._damaged(Reason.TRUNCATED_GZIP,
                                  f"gzip member at offset {self._current_member_raw} ends before its end marker")
                self.eof = True
                return False
            consumed_start = self.raw_pos
            try:
                out = self._dec.decompress(data)
            except zlib.error as exc:
                self._damaged(Reason.BAD_GZIP,
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
