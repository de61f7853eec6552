"""Downloading one image safely (no Beam here; ``transforms/http_images.py`` runs it).

It sits in ``filters/`` beside what it obeys: the fetch policy
(``filters/fetch_policy.py``), the URL normal form (``filters/urls.py``) and
``filters.config.FetchConfig``. Unlike the filters it does network I/O.

Every request goes to an address checked after DNS resolution: the connection is
made to that very address (the Host header and TLS SNI carry the name), so a
name that resolves differently a moment later cannot redirect us (DNS
rebinding). Redirects are followed by hand, each hop checked again.

A host's checked answer is kept for the run (``dns_ttl``; a failed lookup for
``dns_failure_ttl``): the addresses it allowed, or the refusal it earned, so one
lookup serves every image of a host and a refused host stays refused. A
connection whose response was read to its end, without error and without
``Connection: close``, is kept alive for the next request to the same scheme,
host, port and checked address (``idle_connections`` in all, each idle at most
``idle_seconds``); anything else closes it. The per-host limit counts requests in
flight, as before: a kept connection is only used inside a host slot.

Every URL is sent in its percent-encoded form (``filters.urls.normalize_url``),
and a response has a hard deadline (``connect_timeout + 3 * read_timeout``) kept by
one watchdog thread that shuts the socket down: a server that sends one byte a
second, in the headers or the body, cannot hold a fetch past it.
"""

from __future__ import annotations

import http.client
import select
import socket
import ssl
import threading
import time
from collections import OrderedDict, defaultdict, deque
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Dict, List, NamedTuple, Optional, Tuple
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
    def __init__(self, host, port, ip, connect_timeout, read_timeout, context=None):
        super().__init__(host, port, timeout=connect_timeout, context=context or ssl.create_default_context())
        self._ip, self._read_timeout = ip, read_timeout

    def connect(self):
        sock = socket.create_connection((self._ip, self.port), self.timeout)
        sock.settimeout(self._read_timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


Resolver = Callable[[str, int], List[str]]
ConnKey = Tuple[str, str, int, str]         # scheme, host, port, the checked address connected to


def resolve(host: str, port: int) -> List[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({info[4][0] for info in infos})


class _Answer(NamedTuple):
    """A host's checked DNS answer: its addresses, every one allowed, or why it is refused."""
    until: float                            # time.monotonic() after which it is asked again
    ips: Tuple[str, ...] = ()
    reason: Optional[str] = None            # dns_failed or blocked_address
    message: str = ""


class _Deadline:
    __slots__ = ("at", "on_expiry", "expired", "settled")

    def __init__(self, at: float, on_expiry: Callable[[], None]):
        self.at, self.on_expiry, self.expired, self.settled = at, on_expiry, False, False


class _Deadlines:
    """Every response deadline of one fetcher, kept by one thread (a timer thread per
    request costs more CPU than a request to a fast host). All have the same length, so
    they come due in the order they were armed: a queue, not a heap."""

    IDLE_EXIT = 30.0                        # seconds with nothing armed before the thread ends

    def __init__(self, seconds: float):
        self.seconds = seconds
        self._cond = threading.Condition()
        self._queue: deque = deque()
        self._thread: Optional[threading.Thread] = None

    def arm(self, on_expiry: Callable[[], None]) -> _Deadline:
        """``on_expiry`` (which must not block) runs once ``seconds`` have passed, unless settled first."""
        with self._cond:
            queue = self._queue
            while queue and queue[0].settled:
                queue.popleft()
            deadline = _Deadline(time.monotonic() + self.seconds, on_expiry)
            queue.append(deadline)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="fetch-deadlines", daemon=True)
                self._thread.start()
            elif len(queue) == 1:
                self._cond.notify()
        return deadline

    def settle(self, deadline: _Deadline) -> bool:
        """The wait is over; True if the deadline passed first (its socket was shut down)."""
        with self._cond:
            deadline.settled = True
            return deadline.expired

    def _run(self):
        with self._cond:
            while True:
                queue = self._queue
                while queue and queue[0].settled:
                    queue.popleft()
                if not queue:
                    if not self._cond.wait(self.IDLE_EXIT) and not self._queue:
                        self._thread = None
                        return
                    continue
                wait = queue[0].at - time.monotonic()
                if wait > 0:
                    self._cond.wait(wait)
                    continue
                deadline = queue.popleft()
                deadline.expired = True
                try:
                    deadline.on_expiry()
                except Exception:       # the reader still sees ``expired``; the thread keeps the others
                    pass


def _dropped(conn: http.client.HTTPConnection) -> bool:
    """An idle kept-alive connection the server has closed (or sent something unasked on)."""
    sock = conn.sock
    if sock is None:
        return True
    try:
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        return bool(poller.poll(0))
    except (OSError, ValueError):
        return True


class _IdleConnections:
    """Kept-alive connections by (scheme, host, port, address): at most ``size`` in all
    (the least recently returned host's oldest goes first), none idle longer than ``max_idle``."""

    def __init__(self, size: int, max_idle: float):
        self.size, self.max_idle = size, max_idle
        self._lock = threading.Lock()
        self._idle: "OrderedDict[ConnKey, List[Tuple[float, http.client.HTTPConnection]]]" = OrderedDict()
        self._count = 0

    def take(self, key: ConnKey) -> Optional[http.client.HTTPConnection]:
        found, stale = None, []
        now = time.monotonic()
        with self._lock:
            conns = self._idle.get(key)
            while conns:
                since, conn = conns.pop()       # the most recently used is the least likely closed
                self._count -= 1
                if now - since <= self.max_idle:
                    found = conn
                    break
                stale.append(conn)
            if conns is not None and not conns:
                del self._idle[key]
        for conn in stale:
            conn.close()
        if found is not None and _dropped(found):
            found.close()
            found = None
        return found

    def put(self, key: ConnKey, conn: http.client.HTTPConnection):
        evicted = []
        now = time.monotonic()
        with self._lock:
            self._idle.setdefault(key, []).append((now, conn))
            self._idle.move_to_end(key)
            self._count += 1
            while self._idle:
                oldest_key, conns = next(iter(self._idle.items()))
                if self._count <= self.size and now - conns[0][0] <= self.max_idle:
                    break
                evicted.append(conns.pop(0)[1])
                self._count -= 1
                if not conns:
                    del self._idle[oldest_key]
        for old in evicted:
            old.close()

    def close(self):
        with self._lock:
            conns = [c for entries in self._idle.values() for _, c in entries]
            self._idle.clear()
            self._count = 0
        for conn in conns:
            conn.close()


_CLOSED_WHILE_IDLE = (ConnectionError, ssl.SSLEOFError, ssl.SSLZeroReturnError)


class _Stale(Exception):
    """A kept-alive connection the server had closed before answering: the request goes
    again on a fresh connection (it is not an attempt of its own)."""


class ImageFetcher:
    """Thread-safe: one per worker, shared by its download threads.

    ``dns_ttl``/``dns_failure_ttl``: seconds a host's checked answer / failed lookup is
    kept (``dns_cache_size`` hosts at most); ``keep_alive``: connections are reused,
    ``idle_connections`` of them kept (default twice ``cfg.concurrency``), each at most
    ``idle_seconds`` idle."""

    def __init__(self, cfg: FetchConfig, max_bytes: int, resolver: Resolver = resolve,
                 sleep: Callable[[float], None] = time.sleep, *, dns_ttl: float = 600.0,
                 dns_failure_ttl: float = 60.0, dns_cache_size: int = 10_000, keep_alive: bool = True,
                 idle_connections: Optional[int] = None, idle_seconds: float = 10.0):
        self.cfg, self.max_bytes, self.resolver, self.sleep = cfg, max_bytes, resolver, sleep
        self._lock = threading.Lock()
        self._hosts: Dict[str, threading.BoundedSemaphore] = defaultdict(
            lambda: threading.BoundedSemaphore(cfg.per_host))
        self.requests_sent = 0
        self.dns_ttl, self.dns_failure_ttl, self.dns_cache_size = dns_ttl, dns_failure_ttl, dns_cache_size
        self._dns: "OrderedDict[Tuple[str, int], _Answer]" = OrderedDict()
        self._resolving: Dict[Tuple[str, int], threading.Event] = {}
        self.keep_alive = keep_alive
        self._idle = _IdleConnections(idle_connections if idle_connections is not None
                                      else 2 * max(1, cfg.concurrency), idle_seconds)
        self._budget = cfg.connect_timeout + 3 * cfg.read_timeout
        self._deadlines = _Deadlines(self._budget)
        self._tls: Optional[ssl.SSLContext] = None

    def close(self):
        """Closes the kept-alive connections (the fetcher stays usable)."""
        self._idle.close()

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

    # -- DNS: one checked answer per host for the run ----------------------------------
    def _addresses(self, host: str, port: int) -> Tuple[str, ...]:
        """The host's addresses, every one allowed; else FetchError (dns_failed, blocked_address).
        Threads asking for a host being looked up wait for that lookup."""
        key = (host, port)
        while True:
            with self._lock:
                answer = self._dns.get(key)
                if answer is not None and answer.until > time.monotonic():
                    self._dns.move_to_end(key)
                    break
                pending = self._resolving.get(key)
                if pending is None:
                    mine = self._resolving[key] = threading.Event()
                    answer = None
                    break
            pending.wait()
        if answer is None:
            try:
                answer = self._lookup(host, port)
            finally:
                with self._lock:
                    if answer is not None:
                        self._dns[key] = answer
                        self._dns.move_to_end(key)
                        while len(self._dns) > self.dns_cache_size:
                            self._dns.popitem(last=False)
                    del self._resolving[key]
                mine.set()
        if answer.reason is not None:
            raise FetchError(answer.reason, answer.message)
        return answer.ips

    def _lookup(self, host: str, port: int) -> _Answer:
        failed = time.monotonic() + self.dns_failure_ttl
        try:
            ips = self.resolver(host, port)
        except (socket.gaierror, UnicodeError, OSError) as exc:
            return _Answer(failed, reason=Reason.DNS_FAILED, message=f"{host}: {exc}")
        if not ips:
            return _Answer(failed, reason=Reason.DNS_FAILED, message=f"{host}: no address")
        until = time.monotonic() + self.dns_ttl
        for ip in ips:      # every address the name has must be allowed, not just the one we use
            why = address_block_reason(ip, self.cfg.allow_loopback)
            if why:
                return _Answer(until, reason=Reason.BLOCKED_ADDRESS, message=f"{host} -> {ip} ({why})")
        return _Answer(until, tuple(ips))

    # -- one request ----------------------------------------------------------------
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
        ips = self._addresses(host, port)
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        if not path.isascii() or any(c in path for c in " \t\r\n"):
            raise FetchError(Reason.BAD_URL, f"not a sendable request target: {path[:200]!r}")
        key: ConnKey = (scheme, host, port, ips[0])
        with self._host_slot(host):
            conn = self._idle.take(key) if self.keep_alive else None
            if conn is not None:
                try:
                    return self._exchange(conn, key, path, reused=True)
                except _Stale:
                    pass
            return self._exchange(self._connection(key), key, path, reused=False)

    def _connection(self, key: ConnKey) -> http.client.HTTPConnection:
        scheme, host, port, ip = key
        if scheme == "https":
            with self._lock:
                if self._tls is None:
                    self._tls = ssl.create_default_context()
            return _PinnedHTTPS(host, port, ip, self.cfg.connect_timeout, self.cfg.read_timeout, self._tls)
        return _PinnedHTTP(host, port, ip, self.cfg.connect_timeout, self.cfg.read_timeout)

    def _exchange(self, conn: http.client.HTTPConnection, key: ConnKey, path: str,
                  reused: bool) -> Tuple[int, Dict[str, str], Optional[bytes]]:
        """One request on ``conn``; it is kept alive afterwards only if its response was read
        to the end without error or deadline and did not ask to close."""
        budget = self._budget
        held = {}                           # the socket, kept: http.client drops conn.sock for a
                                            # response that closes, while the response reads on

        def expire():                       # unblocks any read, in the headers or the body
            sock = held.get("sock") or conn.sock
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

        deadline = self._deadlines.arm(expire)
        answered = keep = False
        try:
            with self._lock:
                self.requests_sent += 1
            conn.request("GET", path, headers={"User-Agent": self.cfg.user_agent, "Accept": "image/*,*/*;q=0.5",
                                               "Accept-Encoding": "identity"})
            held["sock"] = conn.sock
            resp = conn.getresponse()
            answered = True
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
                if deadline.expired:
                    raise FetchError(Reason.TIMEOUT, f"response took longer than {budget:g} s")
                if not chunk:
                    break
                size += len(chunk)
                if size > self.max_bytes:
                    raise FetchError(Reason.TOO_LARGE, f"more than {self.max_bytes} bytes")
                chunks.append(chunk)
            # http.client ends a body cut short by the server like a whole one, leaving
            # ``length`` (what Content-Length still promised) above 0: those bytes are a
            # damaged image that may well still decode (a JPEG missing its last rows), so
            # the download failed and is tried again like any broken connection
            if resp.length:
                raise FetchError(Reason.CONNECTION_FAILED, f"body cut short: {size} of the {length} bytes "
                                 f"its Content-Length promised", retryable=True)
            keep = (self.keep_alive and resp.isclosed() and not resp.will_close and conn.sock is not None)
            return status, headers, b"".join(chunks)
        except FetchError:
            raise
        except Exception as exc:
            if deadline.expired:            # whatever the shut socket raised: the deadline passed
                raise FetchError(Reason.TIMEOUT, f"response took longer than {budget:g} s") from exc
            if reused and not answered and isinstance(exc, _CLOSED_WHILE_IDLE):
                raise _Stale() from exc     # closed by the server while it sat idle
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
            if self._deadlines.settle(deadline) or not keep:
                conn.close()
            else:
                self._idle.put(key, conn)
