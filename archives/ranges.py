"""Byte ranges of one archive file: where a range's reader starts and stops.

One file read by many workers, the way Beam's splittable sources read text: the
file is cut into byte ranges, and a range owns the records that begin at a *sync
point* inside it, plus whatever follows such a record up to the next sync point
(damage, records found by resynchronising). A sync point is where a reader that
knows nothing of what came before can start and be sure a record begins:

* in a gzip file, a gzip member whose first decompressed bytes are a WARC version
  line (per-record gzip: every record; whole-file gzip: only the file's start, so
  the first range reads it all);
* in an uncompressed WARC file, a WARC version line at a line start followed by a
  whole header with WARC-Type and Content-Length;
* in anything else (ARC files), only the file's start.

The reader of a range starts at its first sync point at or after the range's start
(none inside the range: it reads nothing) and stops before the first item that
lies at a sync point at or after the range's end: exactly where the next range's
reader starts, so every item is read once whatever the cut. (An uncompressed
record whose body holds a whole WARC file with valid headers is the exception a
byte range cannot see: such files are better read whole, ``split_bytes=0``.)
"""

from __future__ import annotations

import zlib
from typing import Iterator, Optional

from archives.gzip_members import GZIP_MAGIC
from archives.records import (_WARC_VERSION_LINE, MAX_HEADER_BYTES, ArchiveReader, ArchiveRecord, Item,
                              _is_warc_start)

SYNC_WINDOW = MAX_HEADER_BYTES + 64     # bytes after a candidate that decide whether it is one


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
