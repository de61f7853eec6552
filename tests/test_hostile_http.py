"""Hostile image servers and image URLs (all on 127.0.0.1): non-ASCII and malformed
URLs, servers that drip bytes, pages with thousands of images."""

import time
from collections import Counter
from http.server import BaseHTTPRequestHandler

import pytest

from tests.conftest import IN_MEMORY, run_job
from test_fetch import FETCH, LocalServer, article_with_images, book_covers
from warcgen import http_response, write_warc


def drip(wfile, data: bytes, every: float = 0.3):
    """Send one byte at a time; stop when the client hangs up."""
    for b in data:
        try:
            wfile.write(bytes([b]))
            wfile.flush()
        except OSError:
            return
        time.sleep(every)


class HostileServer(LocalServer):
    def __init__(self):
        cover = book_covers(1)[0]
        self.hits = Counter()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                server.hits[self.path] += 1
                if self.path.startswith("/drip-head"):          # the status line and headers, dripped
                    drip(self.wfile, b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nX-Pad: " + b"a" * 200)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.send_header("Content-Length", str(len(cover)))
                self.end_headers()
                if self.path.startswith("/drip-body"):          # the body, dripped
                    drip(self.wfile, cover)
                    return
                self.wfile.write(cover)

        self.start(Handler)


@pytest.fixture
def server():
    s = HostileServer()
    yield s
    s.close()


def fetcher(**kw):
    from filters.config import FetchConfig
    from filters.http_fetch import ImageFetcher
    cfg = dict(allow_loopback=True, read_timeout=1.0, connect_timeout=1.0, retries=2, backoff_base=0.01)
    cfg.update(kw)
    return ImageFetcher(FetchConfig(**cfg), 1 << 20)


def test_non_ascii_and_spaced_urls_are_sent_percent_encoded(server):
    f = fetcher()
    assert f.fetch(server.url("/café.png")).reason is None
    assert f.fetch(server.url("/a b.png")).reason is None
    assert server.hits["/caf%C3%A9.png"] == 1 and server.hits["/a%20b.png"] == 1


def test_malformed_urls_fail_once_without_retries(server):
    f = fetcher()
    bad_port = f.fetch("http://127.0.0.1:99999/x.png")
    assert (bad_port.reason, bad_port.attempts) == ("bad_url", 1)
    sent = f.requests_sent
    control = f.fetch(f"http://127.0.0.1:{server.port}/x\x00y.png")
    assert control.attempts == 1 and control.reason in ("bad_url", None)
    assert f.requests_sent - sent <= 1


@pytest.mark.parametrize("path", ["/drip-head.jpg", "/drip-body.jpg"])
def test_a_dripping_server_cannot_hold_a_fetch_past_its_deadline(server, path):
    f = fetcher()          # deadline: connect 1 s + 3 x read 1 s = 4 s; no single read ever waits 1 s
    t0 = time.monotonic()
    r = f.fetch(server.url(path))
    elapsed = time.monotonic() - t0
    assert r.reason == "timeout" and "longer than 4 s" in r.message
    assert r.attempts == 1                     # a server that drips is not asked again
    assert elapsed < 6, elapsed


def test_a_non_ascii_image_url_in_a_page_does_not_crash_the_http_run(server, tmp_path):
    srcs = [server.url("/café.png"), server.url("/with space.png"), server.url("/ok.png")]
    warc = write_warc(tmp_path / "page.warc.gz", [
        http_response("https://www.dw.com/en/colonial", article_with_images(srcs), "text/html; charset=utf-8")])
    stats = run_job([warc], tmp_path / "run", beam_args=IN_MEMORY,
                    overrides=dict(FETCH, **{"fetch.allow_loopback": True}))
    images = stats["images"]
    assert images["balanced"] and images["in"] == 3
    # All three fetched; the server gives one picture for every path, so two are repeats
    # in the document and the single-image document goes to the seeded half-drop.
    assert set(images["dropped"]) <= {"duplicate_in_document", "document_dropped"}, images
    assert images["kept"] + sum(images["dropped"].values()) == 3
    assert stats["http"]["fetched"] == 3 and not stats["http"]["failed"]
    assert server.hits["/caf%C3%A9.png"] == 1 and server.hits["/with%20space.png"] == 1


def test_a_page_with_2000_images_sends_a_bounded_number_of_requests(server, tmp_path):
    srcs = [server.url(f"/many/{i}.jpg") for i in range(2000)]
    warc = write_warc(tmp_path / "page.warc.gz", [
        http_response("https://www.dw.com/en/colonial", article_with_images(srcs), "text/html; charset=utf-8")])
    stats = run_job([warc], tmp_path / "run", beam_args=IN_MEMORY,
                    overrides=dict(FETCH, **{"fetch.allow_loopback": True, "output.pairs": True,
                                             "dedup.image_max_repeats": 0}))
    requests = sum(n for p, n in server.hits.items() if p.startswith("/many/"))
    assert requests <= 20 + 50, requests       # documents.max_image_references + captions.max_pairs_per_page
    images = stats["images"]
    assert images["balanced"] and images["in"] == 2000
    assert images["dropped"]["over_reference_cap"] == 1980
    assert stats["pairs"]["balanced"] and stats["pairs"]["dropped"]["over_page_cap"] >= 1950   # + the page's own <img>


def test_ipv6_forms_that_wrap_private_ipv4_are_refused():
    from filters.fetch_policy import address_block_reason as why
    assert why("2002:7f00:1::1", allow_loopback=True) == "wrapped_loopback"     # 6to4 of 127.0.0.1
    assert why("2002:0a00:0001::1") == "wrapped_private"                       # 6to4 of 10.0.0.1
    assert why("64:ff9b::10.0.0.1") == "wrapped_private"                       # NAT64
    assert why("64:ff9b:1::a9fe:a9fe") == "wrapped_link_local"                 # local-use NAT64 of the metadata IP
    assert why("2001:0:4136:e378:8000:63bf:80ff:fffe") == "wrapped_loopback"   # Teredo client 127.0.0.1
    assert why("2002:0808:0808::1") is None and why("64:ff9b::8.8.8.8") is None   # public IPv4 behind them
    assert why("::ffff:127.0.0.1") == "loopback" and why("::ffff:127.0.0.1", allow_loopback=True) is None
