"""Downloading one image safely (no Beam here; ``transforms/http_images.py`` runs it).

It sits in ``filters/`` beside what it obeys: the fetch policy
(``filters/fetch_policy.py``), the URL normal form (``filters/urls.py``) and
``filters.config.FetchConfig``. Unlike the filters it does network I/O.

Every request goes to an address checked after DNS resolution: the connection is
made to that very address (the Host header and TLS SNI carry the name), so a
name that resolves differently a moment later cannot redirect us (DNS
rebinding). Redirects are followed by hand, each hop checked again.

Every URL is sent in its percent-encoded form (``filters.urls.normalize_url``),
and a response has a hard deadline (``connect_timeout + 3 * read_timeout``) kept by
a timer that shuts the socket down: a server that sends one byte a second, in
the headers or the body, cannot hold a fetch past it.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import threading
import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple
from urllib.parse import urljoin, urlsplit

from contract.reasons import Reason
from filters.config import FetchConfig
from filters.fetch_policy import (REDIRECT_STATUS, RETRY_STATUS, address_block_reason, backoff_seconds,
                                  retry_after_seconds, robots_opt_out)
from filters.urls import normalize_url


@dataclass
class FetchResult:
    url: str                      # as asked
    reason: Optional[str]         # None: fetched; else timeout, http_404, too_large, opted_out, ...
    data: Optional[bytes] = None
    final_url: str = ""
    status: Optional[int] = None
    content_type: str = ""
    attempts: int = 0
    message: str = ""
    date: str = ""                # when the bytes were received (the response's Date header, else ours)


class FetchError(Exception):
    def __init__(self, reason: str, message: str = "", retryable: bool = False,
                 retry_after: Optional[float] = None):
        super().__init__(message or reason)
        self.reason, self.message, self.retryable, self.retry_after = reason, message, retryable, retry_after


class _PinnedHTTP(http.client.HTTPConnection):
    def __init__(self, host, port, ip, connect_timeout, read_timeout):
        super().__init__(host, port, timeout=connect_timeout)
        self._ip, self._read_timeout = ip, read_timeout

    def connect(self):
        self.sock = socket.create_connection((self._ip, self.port), self.timeout)
        self.sock.settimeout(self._read_timeout)


class _PinnedHTTPS(http.client.HTTPSConnection):
    def __init__(self, host, port, ip, connect_timeout, read_timeout):
        super().__init__(host, port, timeout=connect_timeout, context=ssl.create_default_context())
        self._ip, self._read_timeout = ip, read_timeout

    def connect(self):
        sock = socket.create_connection((self._ip, self.port), self.timeout)
        sock.settimeout(self._read_timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


Resolver = Callable[[str, int], List[str]]


def resolve(host: str, port: int) -> List[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({info[4][0] for info in infos})


class ImageFetcher:
    """Thread-safe: one per worker, shared by its download threads."""

    def __init__(self, cfg: FetchConfig, max_bytes: int, resolver: Resolver = resolve,
                 sleep: Callable[[float], None] = time.sleep):
        self.cfg, self.max_bytes, self.resolver, self.sleep = cfg, max_bytes, resolver, sleep
        self._lock = threading.Lock()
        self._hosts: Dict[str, threading.BoundedSemaphore] = defaultdict(
            lambda: threading.BoundedSemaphore(cfg.per_host))
        self.requests_sent = 0

    @contextmanager
    def _host_slot(self, host: str):
        with self._lock:
            sem = self._hosts[host]
        with sem:
            yield

    def fetch(self, url: str) -> FetchResult:
        attempts = 0
        while True:
            attempts += 1
            try:
                result = self._follow(url)
                result.attempts = attempts
                return result
            except FetchError as exc:
                if exc.retryable and attempts <= self.cfg.retries:
                    self.sleep(backoff_seconds(attempts, self.cfg.backoff_base, self.cfg.backoff_max,
                                               exc.retry_after))
                    continue
                return FetchResult(url, exc.reason, attempts=attempts, message=exc.message)
            except Exception as exc:    # a case no branch above knows: this URL fails, the run goes on
                return FetchResult(url, Reason.CLIENT_ERROR, attempts=attempts,
                                   message=f"{type(exc).__name__}: {exc}"[:300])

    # -- one attempt: the redirect chain ---------------------------------------------
    def _follow(self, url: str) -> FetchResult:
        current = normalize_url(url)
        for _ in range(self.cfg.max_redirects + 1):
            status, headers, body = self._request(current)
            if status in REDIRECT_STATUS:
                location = headers.get("location")
                if not location:
                    raise FetchError(Reason.HTTP_STATUS.of(str(status)), "redirect without Location")
                try:
                    current = normalize_url(urljoin(current, location))
                except ValueError as exc:
                    raise FetchError(Reason.BAD_URL, f"redirect to {location[:200]!r}: {exc}") from exc
                continue
            if status in RETRY_STATUS:
                raise FetchError(Reason.HTTP_STATUS.of(str(status)), retryable=True,
                                 retry_after=retry_after_seconds(headers.get("retry-after")))
            if not 200 <= status < 300:
                raise FetchError(Reason.HTTP_STATUS.of(str(status)))
            return FetchResult(url, None, body, current, status, headers.get("content-type", ""),
                               date=headers.get("date", ""))
        raise FetchError(Reason.TOO_MANY_REDIRECTS, f"more than {self.cfg.max_redirects} redirects")

    def _request(self, url: str) -> Tuple[int, Dict[str, str], Optional[bytes]]:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https"):
            raise FetchError(Reason.UNSUPPORTED_SCHEME, f"{scheme or 'no'} scheme: {url[:200]}")
        host = parts.hostname
        if not host:
            raise FetchError(Reason.BAD_URL, url[:200])
        try:
            port = parts.port or (443 if scheme == "https" else 80)
        except ValueError as exc:
            raise FetchError(Reason.BAD_URL, f"{url[:200]}: {exc}") from exc
        try:
            ips = self.resolver(host, port)
        except (socket.gaierror, UnicodeError, OSError) as exc:
            raise FetchError(Reason.DNS_FAILED, f"{host}: {exc}") from exc
        if not ips:
            raise FetchError(Reason.DNS_FAILED, f"{host}: no address")
        for ip in ips:      # every address the name has must be allowed, not just the one we use
            why = address_block_reason(ip, self.cfg.allow_loopback)
            if why:
                raise FetchError(Reason.BLOCKED_ADDRESS, f"{host} -> {ip} ({why})")
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        if not path.isascii() or any(c in path for c in " \t\r\n"):
            raise FetchError(Reason.BAD_URL, f"not a sendable request target: {path[:200]!r}")
        conn_cls = _PinnedHTTPS if scheme == "https" else _PinnedHTTP
        budget = self.cfg.connect_timeout + 3 * self.cfg.read_timeout
        with self._host_slot(host):
            conn = conn_cls(host, port, ips[0], self.cfg.connect_timeout, self.cfg.read_timeout)
            expired = threading.Event()
            held = {}                       # the socket, kept: http.client drops conn.sock for a
                                            # response that closes, while the response reads on

            def expire():                   # unblocks any read, in the headers or the body
                expired.set()
                sock = held.get("sock") or conn.sock
                if sock is not None:
                    try:
                        sock.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass

            watchdog = threading.Timer(budget, expire)
            watchdog.daemon = True
            watchdog.start()
            try:
                with self._lock:
                    self.requests_sent += 1
                conn.request("GET", path, headers={"User-Agent": self.cfg.user_agent, "Accept": "image/*,*/*;q=0.5",
                                                   "Accept-Encoding": "identity"})
                held["sock"] = conn.sock
                resp = conn.getresponse()
                headers = {k.lower(): v for k, v in resp.getheaders()}
                status = resp.status
                if status in REDIRECT_STATUS or not 200 <= status < 300:
                    return status, headers, None
                if self.cfg.respect_noai and robots_opt_out(resp.headers.get_all("X-Robots-Tag") or [],
                                                            self.cfg.user_agent):
                    raise FetchError(Reason.OPTED_OUT, "X-Robots-Tag forbids AI use")
                if self.cfg.respect_noai and headers.get("tdm-reservation", "").strip() == "1":
                    raise FetchError(Reason.OPTED_OUT, "tdm-reservation: 1 (TDM rights reserved)")
                length = headers.get("content-length")
                if length and length.isdigit() and int(length) > self.max_bytes:
                    raise FetchError(Reason.TOO_LARGE, f"Content-Length {length} > {self.max_bytes}")
                chunks, size = [], 0
                while True:
                    chunk = resp.read(65536)
                    if expired.is_set():
                        raise FetchError(Reason.TIMEOUT, f"response took longer than {budget:g} s")
                    if not chunk:
                        break
                    size += len(chunk)
                    if size > self.max_bytes:
                        raise FetchError(Reason.TOO_LARGE, f"more than {self.max_bytes} bytes")
                    chunks.append(chunk)
                return status, headers, b"".join(chunks)
            except FetchError:
                raise
            except Exception as exc:
                if expired.is_set():        # whatever the shut socket raised: the deadline passed
                    raise FetchError(Reason.TIMEOUT, f"response took longer than {budget:g} s") from exc
                if isinstance(exc, (socket.timeout, TimeoutError)):
                    raise FetchError(Reason.TIMEOUT, str(exc) or "timed out", retryable=True) from exc
                if isinstance(exc, ssl.SSLError):
                    raise FetchError(Reason.TLS_ERROR, str(exc)[:200]) from exc
                if isinstance(exc, (http.client.InvalidURL, UnicodeError)):
                    raise FetchError(Reason.BAD_URL, f"{type(exc).__name__}: {exc}"[:200]) from exc
                if isinstance(exc, (ConnectionError, http.client.HTTPException, OSError)):
                    raise FetchError(Reason.CONNECTION_FAILED, f"{type(exc).__name__}: {exc}"[:200],
                                     retryable=True) from exc
                raise
            finally:
                watchdog.cancel()
                conn.close()
