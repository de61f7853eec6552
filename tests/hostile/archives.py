"""Damaged archives made from hand-built records."""

from __future__ import annotations

import gzip
import io
from typing import List, Tuple

from archives.records import ArchiveRecord, ReadError, iter_archive
from archives.writer import warc_response_record

PAGE = (b"<html><head><title>A page</title></head><body><p>" + b"Plain words in a sentence. " * 40
        + b"</p><img src='a.jpg'></body></html>")


def record(uri: str, body: bytes = PAGE, content_length: int = None, extra_headers=None) -> bytes:
    """One WARC response record; ``content_length`` overrides the true block length."""
    rec = warc_response_record(uri, "2024-01-01T00:00:00Z", 200, "text/html", body, extra_headers)
    if content_length is not None:
        head, sep, rest = rec.partition(b"\r\n\r\n")
        lines = [ln for ln in head.split(b"\r\n") if not ln.lower().startswith(b"content-length:")]
        lines.append(b"Content-Length: " + str(content_length).encode())
        rec = b"\r\n".join(lines) + sep + rest
    return rec


def archive(records: List[bytes], gzip_members: bool) -> bytes:
    return b"".join(gzip.compress(r, mtime=0) if gzip_members else r for r in records)


def pages(n: int, prefix: str = "http://example.com/p") -> List[bytes]:
    return [record(f"{prefix}{i}") for i in range(n)]


def read(data: bytes, name: str = "mem") -> Tuple[List[ArchiveRecord], List[ReadError]]:
    items = list(iter_archive(io.BytesIO(data), name))
    return ([i for i in items if isinstance(i, ArchiveRecord)], [i for i in items if isinstance(i, ReadError)])
