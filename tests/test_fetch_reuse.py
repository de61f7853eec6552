"""The downloader's DNS answers kept per host and its kept-alive connections, against
HTTP/1.1 servers on 127.0.0.1 that count the connections they accept."""

import socket
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from filters.config import FetchConfig
from filters.http_fetch import ImageFetcher

BODY = bytes(range(256)) * 40          # 10 KiB; the fetcher does not judge images


class CountingServer:
    """HTTP/1.1 with keep-alive on 127.0.0.1; counts accepted connections, requests per
    path and the requests in flight at once. The answer is chosen by the path."""

    def __init__(self, idle=None):
        self.accepted = 0
        self.hits = Counter()
        self.in_flight = self.most_in_flight = 0
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True
            timeout = idle                          # a kept connection idle this long is closed

            def log_message(self, *args):
                pass

            def setup(self):
                super().setup()
                self.served_here = 0                # requests on this connection

            def answer(self, status, body=BODY, headers=()):
                self.send_response(status)
                self.send_header("Content-Type", "image/jpeg")
                self.send_header("Content-Length", str(len(body)))
                for k, v in headers:
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                path = self.path
                self.served_here += 1
                with server.lock:
                    server.hits[path] += 1
                    server.in_flight += 1
                    server.most_in_flight = max(server.most_in_flight, server.in_flight)
                try:
                    self.route(path)
                finally:
                    with server.lock:
                        server.in_flight -= 1

            def route(self, path):
                if path.startswith("/close"):
                    self.answer(200, headers=[("Connection", "close")])
                elif path.startswith("/missing"):
                    self.answer(404, b"not found")
                elif path.startswith("/big"):
                    self.answer(200, BODY * 10)
                elif path.startswith("/truncated"):       # promises more than it sends, then hangs up
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(BODY)))
                    self.end_headers()
                    self.wfile.write(BODY[:1000])
                    self.close_connection = True
                elif path.startswith("/hang"):            # headers, then nothing until the client gives up
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(BODY)))
                    self.end_headers()
                    self.wfile.flush()
                    time.sleep(3)
                    self.close_connection = True
                elif path.startswith("/once"):            # a second request on a connection: hung up on
                    if self.served_here > 1:
                        self.close_connection = True
                        return
                    self.answer(200)
                elif path.startswith("/slow"):
                    time.sleep(0.3)
                    self.answer(200)
                elif path.startswith("/to-private"):
                    self.send_response(302)
                    self.send_header("Location", "http://private.test/x.jpg")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                else:
                    self.answer(200)

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            request_queue_size = 64                 # the tests connect many at once

            def get_request(self):
                conn, addr = super().get_request()
                with server.lock:
                    server.accepted += 1
                return conn, addr

            def handle_error(self, request, client_address):
                pass

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def url(self, path, host="127.0.0.1"):
        return f"http://{host}:{self.port}{path}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = CountingServer()
    yield s
    s.close()


class CountingResolver:
    """Names of the tests to fixed answers; counts the lookups of each (host, port)."""

    def __init__(self, answers, delay=0.0):
        self.answers, self.delay = answers, delay
        self.calls = Counter()
        self.lock = threading.Lock()

    def __call__(self, host, port):
        with self.lock:
            self.calls[host] += 1
        time.sleep(self.delay)
        answer = self.answers[host]
        if isinstance(answer, Exception):
            raise answer
        return answer() if callable(answer) else list(answer)


def fetcher(resolver=None, max_bytes=1 << 20, **kw):
    cfg = dict(allow_loopback=True, read_timeout=1.0, connect_timeout=1.0, retries=0, backoff_base=0.01)
    extra = {k: kw.pop(k) for k in list(kw) if k in ("dns_ttl", "dns_failure_ttl", "dns_cache_size",
                                                      "keep_alive", "idle_connections", "idle_seconds")}
    cfg.update(kw)
    args = {"resolver": resolver} if resolver is not None else {}
    return ImageFetcher(FetchConfig(**cfg), max_bytes, **args, **extra)


# ------------------------------------------------------------------------------ DNS
def test_a_hosts_answer_is_looked_up_once_and_reused(server):
    dns = CountingResolver({"images.test": ["127.0.0.1"], "other.test": ["127.0.0.1"]})
    f = fetcher(dns)
    for i in range(5):
        r = f.fetch(server.url(f"/a{i}.jpg", "images.test"))
        assert r.reason is None and r.data == BODY
    assert f.fetch(server.url("/b.jpg", "other.test")).reason is None
    assert dns.calls == {"images.test": 1, "other.test": 1}


def test_threads_asking_for_one_host_share_one_lookup(server):
    dns = CountingResolver({"images.test": ["127.0.0.1"]}, delay=0.3)
    f = fetcher(dns, per_host=8)
    results = [None] * 16
    threads = [threading.Thread(target=lambda i=i: results.__setitem__(
        i, f.fetch(server.url(f"/p{i}.jpg", "images.test")))) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [(r.reason, r.message) for r in results if r.reason] == []
    assert dns.calls["images.test"] == 1


def test_a_host_refused_by_its_answer_stays_refused_and_gets_no_request(server):
    """An answer with a private address is refused; the refusal is what is kept, so a
    name that answers differently next time (DNS rebinding) is still refused."""
    answers = iter([["10.1.2.3"], ["127.0.0.1"], ["127.0.0.1"]])
    dns = CountingResolver({"rebind.test": lambda: next(answers), "mixed.test": ["127.0.0.1", "192.168.1.9"]})
    f = fetcher(dns)
    for _ in range(3):
        r = f.fetch(server.url("/x.jpg", "rebind.test"))
        assert r.reason == "blocked_address" and "10.1.2.3" in r.message
        r = f.fetch(server.url("/x.jpg", "mixed.test"))          # every address must be allowed
        assert r.reason == "blocked_address" and "192.168.1.9" in r.message
    assert dns.calls == {"rebind.test": 1, "mixed.test": 1}
    assert f.requests_sent == 0 and server.accepted == 0


def test_the_kept_answer_is_the_pinned_one(server):
    """Once a name's checked answer is kept, a later answer pointing elsewhere is not asked
    for: requests still go to the checked address."""
    answers = iter([["127.0.0.1"], ["169.254.169.254"]])
    dns = CountingResolver({"images.test": lambda: next(answers)})
    f = fetcher(dns)
    assert f.fetch(server.url("/1.jpg", "images.test")).reason is None
    assert f.fetch(server.url("/2.jpg", "images.test")).reason is None
    assert dns.calls["images.test"] == 1 and server.hits["/2.jpg"] == 1


def test_loopback_stays_refused_without_the_test_switch(server):
    dns = CountingResolver({"images.test": ["127.0.0.1"]})
    f = fetcher(dns, allow_loopback=False)
    assert [f.fetch(server.url(f"/{i}.jpg", "images.test")).reason for i in range(2)] == ["blocked_address"] * 2
    assert dns.calls["images.test"] == 1 and server.accepted == 0


def test_a_redirect_to_a_refused_name_is_checked_on_its_hop(server):
    dns = CountingResolver({"images.test": ["127.0.0.1"], "private.test": ["10.0.0.7"]})
    f = fetcher(dns)
    for _ in range(2):
        r = f.fetch(server.url("/to-private.jpg", "images.test"))
        assert r.reason == "blocked_address" and "10.0.0.7" in r.message
    assert server.hits["/to-private.jpg"] == 2 and dns.calls == {"images.test": 1, "private.test": 1}


def test_failed_lookups_and_expired_answers(server):
    dns = CountingResolver({"gone.test": socket.gaierror(-2, "Name or service not known"),
                            "images.test": ["127.0.0.1"]})
    f = fetcher(dns)
    first, second = f.fetch(server.url("/x.jpg", "gone.test")), f.fetch(server.url("/y.jpg", "gone.test"))
    assert (first.reason, first.message) == (second.reason, second.message) == (
        "dns_failed", "gone.test: [Errno -2] Name or service not known")
    assert dns.calls["gone.test"] == 1
    g = fetcher(dns, dns_ttl=0.0, dns_failure_ttl=0.0)                   # nothing kept
    for i in range(3):
        assert g.fetch(server.url(f"/{i}.jpg", "images.test")).reason is None
    assert dns.calls["images.test"] == 3


def test_the_answer_cache_is_bounded(server):
    hosts = [f"h{i}.test" for i in range(5)]
    dns = CountingResolver({h: ["127.0.0.1"] for h in hosts})
    f = fetcher(dns, dns_cache_size=2)
    for h in hosts + hosts[-1:]:
        assert f.fetch(server.url("/x.jpg", h)).reason is None
    assert len(f._dns) == 2 and dns.calls[hosts[-1]] == 1 and dns.calls[hosts[0]] == 1
    assert f.fetch(server.url("/x.jpg", hosts[0])).reason is None and dns.calls[hosts[0]] == 2


# ------------------------------------------------------------------------ keep-alive
def test_a_connection_is_reused_across_fetches_to_one_host(server):
    f = fetcher()
    results = [f.fetch(server.url(f"/img{i}.jpg")) for i in range(4)]
    assert all(r.reason is None and r.data == BODY for r in results)
    assert server.accepted == 1 and sum(server.hits.values()) == 4
    f.close()


def test_no_reuse_without_keep_alive(server):
    f = fetcher(keep_alive=False)
    assert all(f.fetch(server.url(f"/img{i}.jpg")).reason is None for i in range(3))
    assert server.accepted == 3


def test_connection_close_is_obeyed(server):
    f = fetcher()
    assert f.fetch(server.url("/close1.jpg")).reason is None
    assert f.fetch(server.url("/close2.jpg")).reason is None
    assert f.fetch(server.url("/ok.jpg")).reason is None
    assert server.accepted == 3


@pytest.mark.parametrize("path, reason", [("/missing.jpg", "http_404"), ("/big.jpg", "too_large"),
                                          ("/truncated.jpg", "connection_failed"), ("/hang.jpg", "timeout")])
def test_no_reuse_after_an_error(server, path, reason):
    """A fetch that ends with an error, a partial body or a deadline closes its connection;
    the next fetch opens a new one. A body cut short is a failed download (tried again),
    not the bytes that came: a truncated JPEG still decodes."""
    f = fetcher(max_bytes=len(BODY) * 2)
    assert f.fetch(server.url("/first.jpg")).reason is None
    assert server.accepted == 1
    r = f.fetch(server.url(path))
    assert r.reason == reason
    if path == "/truncated.jpg":
        assert r.data is None and "cut short" in r.message
    assert f.fetch(server.url("/after.jpg")).reason is None
    assert f.fetch(server.url("/after2.jpg")).reason is None
    # the failing fetch took the kept one and closed it (its retries each opened one)
    assert server.accepted == 2 + (r.attempts - 1)


def test_a_connection_the_server_closed_is_replaced_without_an_extra_attempt(server):
    """The server hangs up on the second request of a connection without answering: that
    request goes again on a fresh connection, within the same attempt."""
    f = fetcher()
    assert f.fetch(server.url("/once-a.jpg")).attempts == 1
    r = f.fetch(server.url("/once-b.jpg"))
    assert (r.reason, r.attempts, r.data) == (None, 1, BODY)
    assert server.accepted == 2 and server.hits["/once-b.jpg"] == 2


def test_an_idle_connection_the_server_dropped_is_not_used():
    server = CountingServer(idle=0.2)          # hangs up on a connection idle for 0.2 s
    try:
        f = fetcher()
        assert f.fetch(server.url("/a.jpg")).reason is None
        time.sleep(0.6)
        r = f.fetch(server.url("/b.jpg"))
        assert (r.reason, r.attempts) == (None, 1)
        assert server.accepted == 2 and server.hits["/b.jpg"] == 1     # seen closed before it was used
    finally:
        server.close()


def test_idle_connections_expire_and_are_bounded(server):
    f = fetcher(idle_seconds=0.2)
    assert f.fetch(server.url("/a.jpg")).reason is None
    time.sleep(0.4)
    assert f.fetch(server.url("/b.jpg")).reason is None
    assert server.accepted == 2
    dns = CountingResolver({f"h{i}.test": ["127.0.0.1"] for i in range(4)})
    g = fetcher(dns, idle_connections=2)
    for i in range(4):
        assert g.fetch(server.url("/c.jpg", f"h{i}.test")).reason is None
    assert g._idle._count == 2
    g.close()
    assert g._idle._count == 0


def test_the_per_host_limit_counts_requests_not_connections(server):
    f = fetcher(per_host=2)
    threads = [threading.Thread(target=f.fetch, args=(server.url(f"/slow{i}.jpg"),)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(server.hits.values()) == 8 and server.most_in_flight == 2
    assert server.accepted == 2


# ------------------------------------------------------------------ the fetch stage in Beam
def test_the_fetch_stage_hands_on_every_download_across_batches_with_its_side_input(tmp_path):
    """HttpImages in a pipeline, in batches of 3 with the first answer slow, so that
    downloads wait past their batch and the last ones come out at the bundle's end: each
    reference gets its one result, and the evaluation index (a side input) still judges
    the downloads it is carried with."""
    import json
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
    from apache_beam.testing.util import assert_that, equal_to
    from conftest import IN_MEMORY
    from filters.config import ImageConfig
    from filters.decontaminate import build_index
    from test_fetch import book_covers
    from transforms.http_images import HttpImages
    from transforms.records import ImageRef

    covers = book_covers(4)
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "eval.jpg").write_bytes(covers[1])
    (tmp_path / "eval.jsonl").write_text(json.dumps({"image": "eval.jpg", "caption": "a book"}) + "\n")
    index = build_index([str(tmp_path / "eval.jsonl")], images_root=str(tmp_path / "img"))

    class Covers(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def do_GET(self):
            n = int(self.path.rsplit("/", 1)[1].split(".")[0])
            if n == 0:
                time.sleep(1.0)
            body = covers[n % 4]
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Covers)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        urls = [f"http://127.0.0.1:{httpd.server_address[1]}/c/{i}.jpg" for i in range(24)]
        cfg = FetchConfig(source="http", allow_loopback=True, batch_size=3, concurrency=4, per_host=4,
                          retries=0, write_warc=True)
        expected = [(f"p{i}", i, "eval_contaminated" if i % 4 == 1 else "None") for i in range(24)]
        with BeamTestPipeline(options=PipelineOptions(IN_MEMORY)) as p:
            side = beam.pvalue.AsSingleton(p | "Index" >> beam.Create([index]))
            refs = p | beam.Create([(u, (ImageRef(f"p{i}"), i)) for i, u in enumerate(urls)])
            out = refs | HttpImages(cfg, ImageConfig(min_side=10), 1 << 20, eval_index=side)
            assert_that(out.results | beam.Map(lambda kv: (kv[0].page, kv[1].position, str(kv[1].reason))),
                        equal_to(expected), label="OneResultPerReference")
            assert_that(out.fetched | beam.Map(lambda r: r["url"]), equal_to(urls), label="EveryDownloadForTheWarc")
    finally:
        httpd.shutdown()
        httpd.server_close()
