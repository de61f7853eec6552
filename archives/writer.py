"""Writing WARC: one ``response`` record at a time, uncompressed (gzip each to make
a per-record member). The HTTP image fetcher stores what it downloaded this way
(``transforms/http_images.py``); tests and benchmarks build archives with it.
"""

from __future__ import annotations

import hashlib
from typing import List, Optional, Tuple

from archives.records import sha1_digest


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
