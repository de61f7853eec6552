"""HTTP(S) inputs, for Common Crawl's public access (``https://data.commoncrawl.org/...``),
which Beam has no file system for. No Beam here: ``transforms/filesystems.py`` opens
an input by path, through this module for HTTP and Beam's file systems otherwise.

An HTTP input is streamed, never downloaded whole first: one GET, read as the
reader asks. When the connection drops or stalls, the next read reopens it with
``Range: bytes=<position>-`` and goes on from the byte where it stopped, with
backoff, up to ``retries`` times in a row; a server that ignores the range (200
instead of 206) has the bytes already read skipped. requests does the HTTP;
this module adds the resume, which neither requests nor fsspec's HTTP file
system does (fsspec fetches each block in one request and raises when it
breaks, and needs aiohttp).
"""

from __future__ import annotations

import io
import time
from typing import Optional

HTTP_SCHEMES = ("http://", "https://")
USER_AGENT = "kosmos-curation/0.1 (+https://github.com/kosmos-curation; WARC reader)"


def is_http(path: str) -> bool:
    return path.lower().startswith(HTTP_SCHEMES)


class HttpInputError(IOError):
    """An HTTP input that cannot be read (status, or too many failed resumes)."""


class ResumingHttpReader(io.RawIOBase):
    """A read-only, forward-only file object over one URL (see module doc)."""

    def __init__(self, url: str, retries: int = 5, timeout: float = 60.0, backoff: float = 1.0,
                 chunk: int = 1 << 16, session=None, sleep=time.sleep, start: int = 0):
        super().__init__()
        import requests
        self.url, self.retries, self.timeout, self.backoff, self.chunk = url, retries, timeout, backoff, chunk
        self.session = session or requests.Session()
        self.sleep = sleep
        self.pos = start                    # > 0: read from that byte on (a record read back by offset)
        self.size: Optional[int] = None
        self.resumes = 0
        self._resp = None
        self._it = None
        self._pending = b""
        self._open()

    # -- connection ---------------------------------------------------------------
    def _open(self):
        import requests
        failures = 0
        while True:
            headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
            if self.pos:
                headers["Range"] = f"bytes={self.pos}-"
            try:
                resp = self.session.get(self.url, headers=headers, stream=True, timeout=self.timeout)
            except requests.RequestException as exc:
                failures += 1
                if failures > self.retries:
                    raise HttpInputError(f"{self.url}: {type(exc).__name__}: {exc}") from exc
                self.sleep(self.backoff * 2 ** (failures - 1))
                continue
            if resp.status_code in (429, 500, 502, 503, 504) and failures < self.retries:
                resp.close()
                failures += 1
                self.sleep(self.backoff * 2 ** (failures - 1))
                continue
            if self.pos and resp.status_code == 416 and self.size is not None and self.pos >= self.size:
                resp.close()
                self._resp, self._it = None, iter(())
                return
            if resp.status_code not in (200, 206):
                resp.close()
                raise HttpInputError(f"{self.url}: HTTP {resp.status_code}")
            skip = 0
            if self.pos and resp.status_code == 200:       # the range was ignored: skip what we have
                skip = self.pos
            elif resp.status_code == 206:
                start = _range_start(resp.headers.get("Content-Range", ""))
                if start is not None and start != self.pos:
                    resp.close()
                    raise HttpInputError(f"{self.url}: asked for bytes from {self.pos}, got from {start}")
            if self.size is None:
                self.size = _total_size(resp)
            self._resp = resp
            self._it = resp.raw.stream(self.chunk, decode_content=False)
            while skip:
                piece = next(self._it, b"")
                if not piece:
                    raise HttpInputError(f"{self.url}: ended while skipping to byte {self.pos}")
                if len(piece) > skip:
                    self._pending = piece[skip:]
                    break
                skip -= len(piece)
            return

    # -- reading --------------------------------------------------------------------
    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        data = self.read(len(buf))
        buf[:len(data)] = data
        return len(data)

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            parts = []
            while True:
                piece = self.read(1 << 20)
                if not piece:
                    return b"".join(parts)
                parts.append(piece)
        failures = 0
        while True:
            if self._pending:
                out, self._pending = self._pending[:n], self._pending[n:]
                self.pos += len(out)
                return out
            try:
                piece = next(self._it, b"")
            except Exception as exc:                    # the connection dropped or stalled
                piece, error = b"", exc
            else:
                error = None
            if piece:
                self._pending = piece
                continue
            if error is None and (self.size is None or self.pos >= self.size):
                return b""                              # the real end
            failures += 1
            if failures > self.retries:
                why = f"{type(error).__name__}: {error}" if error else f"ended at byte {self.pos} of {self.size}"
                raise HttpInputError(f"{self.url}: gave up after {self.retries} resumes ({why})")
            self.resumes += 1
            self._close_response()
            self.sleep(self.backoff * 2 ** (failures - 1))
            self._open()

    def _close_response(self):
        if self._resp is not None:
            self._resp.close()
            self._resp = None

    def close(self):
        self._close_response()
        super().close()


def _range_start(content_range: str) -> Optional[int]:
    try:
        return int(content_range.split()[1].split("-")[0])
    except (IndexError, ValueError):
        return None


def _total_size(resp) -> Optional[int]:
    if resp.status_code == 206:
        total = resp.headers.get("Content-Range", "").rsplit("/", 1)[-1]
        return int(total) if total.isdigit() else None
    length = resp.headers.get("Content-Length", "")
    return int(length) if length.isdigit() else None


def input_size(path: str) -> int:
    """Size in bytes of an HTTP input (HEAD), -1 when the server does not say."""
    import requests
    try:
        resp = requests.head(path, headers={"User-Agent": USER_AGENT}, timeout=30, allow_redirects=True)
        length = resp.headers.get("Content-Length", "")
        return int(length) if resp.ok and length.isdigit() else -1
    except requests.RequestException:
        return -1
