"""Image acquisition over HTTP: a real server on 127.0.0.1 serving real images taken
from the shared WARCs, and a real article page that references them."""

import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.conftest import IN_MEMORY, read_docs, run_job, shared_warc
from warcgen import article_with_images, http_response, write_warc


def book_covers(n):
    """Real JPEG covers from the books.toscrape archive."""
    from archives.records import ArchiveRecord, iter_archive
    out = []
    with open(shared_warc("node-warc__books.toscrape.warc"), "rb") as fh:
        for item in iter_archive(fh, "books"):
            if (isinstance(item, ArchiveRecord) and "/media/cache/" in item.target_uri
                    and item.target_uri.endswith(".jpg") and len(item.payload) > 1000 and item.payload not in out):
                out.append(item.payload)
                if len(out) == n:
                    return out
    raise AssertionError("not enough covers")


class LocalServer:
    """An HTTP server on 127.0.0.1 with a port of its own, in a thread."""

    def start(self, handler):
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path):
        return f"http://127.0.0.1:{self.port}{path}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


class ImageServer(LocalServer):
    """Serves the scenarios of the issue; counts requests per path."""

    def __init__(self):
        covers = book_covers(4)
        self.hits = Counter()
        self.first_seen = {}
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def send(self, status, body=b"", ctype="image/jpeg", headers=(), length=True):
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                for k, v in headers:
                    self.send_header(k, v)
                if length:
                    self.send_header("Content-Length", str(len(body)))
                else:
                    self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                path = self.path
                with server.lock:
                    server.hits[path] += 1
                    n = server.hits[path]
                    server.first_seen.setdefault(path, time.monotonic())
                if path == "/ok.jpg":
                    self.send(200, covers[0])
                elif path == "/ok2.jpg":
                    self.send(200, covers[3])
                elif path == "/missing.jpg":
                    self.send(404, b"not found", "text/plain")
                elif path == "/flaky.jpg":
                    self.send(500, b"oops", "text/plain") if n == 1 else self.send(200, covers[1])
                elif path == "/busy.jpg":
                    if n == 1:
                        self.send(429, b"slow down", "text/plain", [("Retry-After", "1")])
                    else:
                        server.busy_retry_at = time.monotonic()
                        self.send(200, covers[2])
                elif path == "/slow.jpg":
                    time.sleep(3)
                    self.send(200, covers[3])
                elif path == "/huge.jpg":      # no Content-Length: the limit is enforced while reading
                    self.send(200, covers[3] * 40, length=False)
                elif path == "/page.jpg":
                    self.send(200, b"<html><body><p>this is a web page</p></body></html>" * 20, "image/jpeg")
                elif path == "/noai.jpg":
                    self.send(200, covers[3], headers=[("X-Robots-Tag", "noai")])
                elif path == "/to-private.jpg":
                    self.send(302, b"", "text/plain", [("Location", "http://10.20.30.40/secret.jpg")])
                else:
                    self.send(404, b"", "text/plain")

        self.start(Handler)


@pytest.fixture
def server():
    s = ImageServer()
    yield s
    s.close()


SCENARIOS = ["/ok.jpg", "/missing.jpg", "/flaky.jpg", "/busy.jpg", "/slow.jpg", "/huge.jpg", "/page.jpg",
             "/noai.jpg", "/to-private.jpg"]


FETCH = {"fetch.source": "http", "fetch.read_timeout": 1.0, "fetch.connect_timeout": 1.0, "fetch.retries": 2,
         "fetch.backoff_base": 0.05, "records.max_image_bytes": 200_000, "output.pairs": False}


def test_http_outcomes(server, tmp_path):
    srcs = [server.url(p) for p in SCENARIOS] + ["http://169.254.169.254/latest/meta-data/x.jpg",
                                                 "file:///etc/passwd"]
    warc = write_warc(tmp_path / "page.warc.gz", [
        http_response("https://www.dw.com/en/colonial", article_with_images(srcs), "text/html; charset=utf-8")])
    out = tmp_path / "run"
    stats = run_job([warc], out, beam_args=IN_MEMORY, overrides=dict(FETCH, **{"fetch.allow_loopback": True}))
    images = stats["images"]
    assert images["balanced"] and images["in"] == 11
    assert images["kept"] == 3, images
    assert images["dropped"] == {"http_404": 1, "timeout": 1, "too_large": 1, "not_an_image": 1,
                                 "opted_out": 1, "blocked_address": 2, "unsupported_url": 1}
    assert stats["records"]["balanced"] and stats["records"]["kept"] == 1
    doc = read_docs(out)[0]
    assert [i["url"] for i in doc["images"]] == [server.url("/ok.jpg"), server.url("/flaky.jpg"),
                                                 server.url("/busy.jpg")]
    assert doc["images"][0]["source_file"] == server.url("/ok.jpg") and doc["images"][0]["source_offset"] == -1
    # retries: 500 then success, 429 honoured with its Retry-After
    assert server.hits["/flaky.jpg"] == 2 and server.hits["/busy.jpg"] == 2
    assert server.busy_retry_at - server.first_seen["/busy.jpg"] >= 0.95
    # the redirect to a private address and the metadata address: no request to them (only the 302 hop)
    assert server.hits["/to-private.jpg"] == 1
    assert stats["http"]["failed"]["blocked_address"] == 2 and stats["http"]["urls"] == 10
    # failures are written for a retry run; fetched bytes as a WARC
    import json
    failures = [json.loads(x) for x in (out / "fetch_failures.jsonl").read_text().splitlines()]
    assert sorted(f["reason"] for f in failures) == ["blocked_address", "blocked_address", "http_404",
                                                     "opted_out", "timeout", "too_large"]
    assert len(list((out / "fetched").glob("*.warc.gz"))) >= 1


def test_loopback_is_refused_by_default_and_no_request_is_sent(server, tmp_path):
    srcs = [server.url(p) for p in ("/ok.jpg", "/flaky.jpg", "/busy.jpg")]
    warc = write_warc(tmp_path / "page.warc.gz", [
        http_response("https://www.dw.com/en/colonial", article_with_images(srcs), "text/html; charset=utf-8")])
    stats = run_job([warc], tmp_path / "run", beam_args=IN_MEMORY, overrides=FETCH)
    assert sum(server.hits.values()) == 0
    assert stats["images"]["dropped"] == {"blocked_address": 3} and stats["images"]["balanced"]
    assert stats["records"]["dropped"] == {"images_blocked_address": 1}


def test_retry_run_reads_fetched_warcs_and_downloads_only_failures(server, tmp_path):
    """Run 1 over HTTP; run 2 takes run 1's fetched/*.warc.gz as input, with
    archive_then_http limited to run 1's failures: the images fetched before come from
    the archive, and only the failed URLs are requested again."""
    srcs = [server.url(p) for p in ("/ok.jpg", "/ok2.jpg", "/missing.jpg", "/flaky.jpg")]
    page = write_warc(tmp_path / "page.warc.gz", [
        http_response("https://www.dw.com/en/colonial", article_with_images(srcs), "text/html; charset=utf-8")])
    over = dict(FETCH, **{"fetch.allow_loopback": True, "fetch.retries": 0})
    first = run_job([page], tmp_path / "one", beam_args=IN_MEMORY, overrides=over)
    assert first["images"]["dropped"] == {"http_404": 1, "http_500": 1}
    hits_before = Counter(server.hits)
    fetched = sorted(str(p) for p in (tmp_path / "one" / "fetched").glob("*.warc.gz"))
    second = run_job([page, *fetched], tmp_path / "two", beam_args=IN_MEMORY, overrides=dict(over, **{
        "fetch.source": "archive_then_http", "fetch.only_urls": str(tmp_path / "one" / "fetch_failures.jsonl")}))
    new = server.hits - hits_before
    assert set(new) == {"/missing.jpg", "/flaky.jpg"}          # /ok.jpg, /ok2.jpg came from the archive
    assert second["images"]["kept"] == 3 and second["images"]["dropped"] == {"http_404": 1}
    assert second["records"]["kept"] == 1 and second["http"]["urls"] == 2


def test_policy_units():
    from filters.fetch_policy import address_block_reason, backoff_seconds, retry_after_seconds, robots_opt_out
    assert address_block_reason("169.254.169.254") == "link_local"
    assert address_block_reason("127.0.0.1") == "loopback"
    assert address_block_reason("127.0.0.1", allow_loopback=True) is None
    assert address_block_reason("10.20.30.40", allow_loopback=True) == "private"
    assert address_block_reason("::ffff:192.168.1.1") == "private"
    assert address_block_reason("fd00::1") == "private"
    assert address_block_reason("224.0.0.1") == "multicast"
    assert address_block_reason("100.64.1.1") == "shared_address_space"
    assert address_block_reason("0.0.0.0") == "unspecified"
    assert address_block_reason("93.184.216.34") is None
    assert robots_opt_out(["noai"]) and robots_opt_out(["noindex, noimageai"])
    assert robots_opt_out(["kosmos-curation: noai"], "kosmos-curation/0.1")
    assert not robots_opt_out(["otherbot: noai"], "kosmos-curation/0.1") and not robots_opt_out(["noindex"])
    assert retry_after_seconds("7") == 7.0 and retry_after_seconds(None) is None
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == pytest.approx(10.0)
    assert backoff_seconds(3, 1.0, 30.0) == 4.0 and backoff_seconds(1, 1.0, 30.0, retry_after=100) == 30.0


def test_fetcher_refuses_names_that_resolve_to_private_addresses():
    """DNS is checked: a public-looking name pointing at a private address is refused
    before any connection, as is a non-http scheme."""
    from filters.config import FetchConfig
    from filters.http_fetch import ImageFetcher
    f = ImageFetcher(FetchConfig(retries=0), 1 << 20, resolver=lambda host, port: ["192.168.0.10"])
    r = f.fetch("http://images.example.com/a.jpg")
    assert r.reason == "blocked_address" and "192.168.0.10" in r.message and f.requests_sent == 0
    assert f.fetch("ftp://example.com/a.jpg").reason == "unsupported_scheme"
