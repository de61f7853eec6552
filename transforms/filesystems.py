"""Opening an input by path, for the Beam side: HTTP(S) through ``archives/remote.py``
(streamed, with resume), anything else through Beam's file systems (local, gs://,
s3://); and reading one record back by its offset. Beam is imported only when a
non-HTTP path is opened.
"""

from __future__ import annotations

import io
from typing import BinaryIO

from archives.records import ArchiveRecord, iter_archive
from archives.remote import ResumingHttpReader, is_http


def open_input(path: str, start: int = 0) -> BinaryIO:
    """A binary stream of an input file from byte ``start``: HTTP(S) with resume (a
    Range request), else Beam's file systems, seeked (compression left alone: the
    reader recognises gzip by its magic bytes)."""
    if is_http(path):
        return io.BufferedReader(ResumingHttpReader(path, start=start), buffer_size=1 << 16)
    from apache_beam.io.filesystem import CompressionTypes
    from apache_beam.io.filesystems import FileSystems
    fh = FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)
    if start:
        fh.seek(start)
    return fh


def read_record_at(path: str, offset: int, inner_offset: int = 0, max_payload_bytes: int = 20 * 1024 * 1024):
    """The record of ``path`` that starts at (``offset``, ``inner_offset``): the raw
    offset of its gzip member (or of the record, uncompressed) and its offset inside
    that member. Random access: only that member is read (a whole-file gzip is read
    from its start up to the record). None when no record starts there."""
    with open_input(path, start=offset) as raw:
        for item in iter_archive(raw, path, max_payload_bytes=max_payload_bytes):
            if item.offset != 0 or item.inner_offset > inner_offset:
                return None             # past it: the member or file holds no record there
            if item.inner_offset == inner_offset:
                if not isinstance(item, ArchiveRecord):
                    return None
                item.offset, item.file = offset, path
                return item
    return None
