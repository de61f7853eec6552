"""A run at Common Crawl's shape with images over HTTP (not a test).

Builds a per-record-gzip WARC of N real pages (pages-eval and html/ of
../shared/data, each copied under varied URLs with its text varied so that dedup
keeps the copies apart) holding pages only, as Common Crawl's do; every <img> of
every page points at a local image server: 32 hosts (127.0.0.1 to 127.0.0.32,
one server each, so the per-host limits act as on the web), real images from the
shared archives at their own sizes, a distinct file for every URL, and a share of
404s, slow answers and non-images. Then ``kosmos curate --images http`` with
default settings otherwise (``fetch.allow_loopback`` aside), sampling the peak
RSS of the whole process tree.

Reports pages/s, images/s, HTTP failures by reason, peak RSS, the time split
between the window in which images were being fetched and the rest, and checks
that the stats balance.

    scripts/in-venv python benchmarks/cc_images.py [--pages 5000] [--keep DIR]
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT))

from contract.reasons import FUNNEL_BLOCKS  # noqa: E402
from filters.records import classify  # noqa: E402
from transforms.warc import ArchiveRecord, iter_archive, warc_response_record  # noqa: E402

HOSTS = 32
WORDS = ("river", "garden", "window", "morning", "letter", "market", "island", "teacher", "bridge", "winter",
         "doctor", "village", "summer", "forest", "station", "paper", "kitchen", "mountain", "city", "music",
         "school", "harbor", "engine", "painter", "library", "traveler", "orchard", "valley", "lantern", "meadow",
         "cottage", "signal", "theater", "canvas", "journal", "voyage", "ladder", "pocket", "ribbon", "saddle")
_TEXT = re.compile(r">([^<>]{40,})<")
_IMG_TAG = re.compile(r"<img\b[^>]*>", re.IGNORECASE)
_SRC_ATTR = re.compile(r"""(\s(?:src|data-src|data-lazy-src)\s*=\s*)(["'])(.*?)\2""", re.IGNORECASE | re.DOTALL)


# ------------------------------------------------------------------------------- corpus
def base_pages():
    """(url, html bytes) of the real pages: pages-eval's WARC and html/."""
    out = []
    with open(SHARED / "pages-eval" / "trafilatura-eval-dev-00.warc.gz", "rb") as fh:
        for item in iter_archive(fh, "eval"):
            if isinstance(item, ArchiveRecord) and classify(item).kind.value == "page":
                out.append((item.target_uri, item.payload))
    for path in sorted((SHARED / "html").glob("*.html")):
        out.append((f"https://{path.stem.split('__', 1)[-1]}/", path.read_bytes()))
    return out


def vary_text(html: str, copy: int) -> str:
    """Every 4th word of the page's longer text runs replaced by a word chosen by the
    copy number: each 5-gram changes, so copies are not near-duplicates; still English."""
    def repl(m):
        words = m.group(1).split(" ")
        for i in range(3, len(words), 4):
            if words[i].isalpha():
                words[i] = WORDS[(copy * 7 + i) % len(WORDS)]
        return ">" + " ".join(words) + "<"
    return _TEXT.sub(repl, html)


def image_images():
    """Real images of the shared archives (JPEG, PNG, GIF), at their own sizes."""
    out = []
    for path in sorted((SHARED / "warc").glob("*")):
        with open(path, "rb") as fh:
            for item in iter_archive(fh, str(path)):
                if (isinstance(item, ArchiveRecord) and classify(item).kind.value == "image" and len(item.payload) > 2000
                        and item.mime in ("image/jpeg", "image/png", "image/gif", "image/webp")):
                    out.append((item.mime or "image/jpeg", item.payload))
    return out


def build_warc(path: Path, pages: int, port: int, seed: int = 0):
    rng = random.Random(seed)
    bases = base_pages()
    n_img = 0
    with open(path, "wb") as fh:
        for k in range(pages):
            url, body = bases[k % len(bases)]
            copy = k // len(bases)
            text = body.decode("utf-8", "replace")
            if copy:
                text = vary_text(text, copy)
            host = rng.randrange(HOSTS) + 1

            def src(m):
                nonlocal n_img
                n_img += 1
                return f"{m.group(1)}{m.group(2)}http://127.0.0.{host}:{port}/site{k}/img/{n_img}.jpg{m.group(2)}"
            text = _IMG_TAG.sub(lambda tag: _SRC_ATTR.sub(src, tag.group(0)), text)
            page_url = re.sub(r"^(https?://)([^/]+)", lambda m: f"{m.group(1)}c{copy}.{m.group(2)}", url)
            rec = warc_response_record(page_url, "2024-03-01T00:00:00Z", 200, "text/html; charset=utf-8",
                                       text.encode("utf-8"))
            fh.write(gzip.compress(rec, compresslevel=6, mtime=0))
    return n_img


# ------------------------------------------------------------------------------ image server
class ImageHosts:
    """One threaded server per loopback address; the answer for a path is a pure
    function of the path: 5% 404, 2% slow (1.5 s), 3% an HTML page, else a real
    image made distinct by a trailer after its end (decoders ignore it)."""

    def __init__(self, port: int, images):
        self.images = images
        self.lock = threading.Lock()
        self.served = Counter()
        self.first = self.last = None
        hosts = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_GET(self):
                now = time.monotonic()
                with hosts.lock:
                    hosts.first = hosts.first or now
                    hosts.last = now
                h = int(hashlib.sha256(self.path.encode()).hexdigest()[:8], 16)
                roll = h % 100
                if roll < 5:
                    kind, status, ctype, body = "404", 404, "text/plain", b"not found"
                elif roll < 8:
                    kind, status, ctype, body = "not_image", 200, "image/jpeg", b"<html><body>gone</body></html>" * 30
                else:
                    ctype, img = hosts.images[h % len(hosts.images)]
                    kind, status, body = "image", 200, img + hashlib.sha256(self.path.encode()).digest()
                    if roll < 10:
                        kind = "slow"
                        time.sleep(1.5)
                with hosts.lock:
                    hosts.served[kind] += 1
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        class Server(ThreadingHTTPServer):
            def handle_error(self, request, client_address):
                pass                        # the fetcher closing a kept-alive connection is no news

        self.servers = []
        for i in range(1, HOSTS + 1):
            httpd = Server((f"127.0.0.{i}", port), Handler)
            httpd.daemon_threads = True
            httpd.request_queue_size = 256
            threading.Thread(target=httpd.serve_forever, daemon=True).start()
            self.servers.append(httpd)

    def close(self):
        for s in self.servers:
            s.shutdown()
            s.server_close()


# ----------------------------------------------------------------------------------- RSS
def tree_rss(pid: int) -> int:
    """Resident bytes of ``pid`` and all its descendants (from /proc)."""
    children = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(entry))
        except OSError:
            continue
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/statm") as fh:
                total += int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:
            pass
        todo.extend(children.get(p, []))
    return total


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pages", type=int, default=5000)
    ap.add_argument("--keep", help="keep the WARC and the run here")
    args = ap.parse_args()
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="kosmos-cc-images-"))
    work.mkdir(parents=True, exist_ok=True)
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    warc = work / "CC-BENCH-00000.warc.gz"
    t0 = time.perf_counter()
    n_img = build_warc(warc, args.pages, port)
    print(f"built {warc.name}: {args.pages} pages, {n_img} <img> URLs on {HOSTS} hosts, "
          f"{warc.stat().st_size / 2**20:.1f} MB ({time.perf_counter() - t0:.0f} s)", flush=True)
    hosts = ImageHosts(port, image_images())
    out = work / "run"
    shutil.rmtree(out, ignore_errors=True)
    cmd = [str(ROOT / "bin" / "kosmos"), "curate", "--input", str(warc), "--output", str(out),
           "--images", "http", "--set", "fetch.allow_loopback=true", "--quiet"]
    peak, started = 0, time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        while proc.poll() is None:
            peak = max(peak, tree_rss(proc.pid))
            time.sleep(0.5)
    finally:
        output = proc.stdout.read()
        wall = time.monotonic() - started
        hosts.close()
    if proc.returncode:
        print(output[-4000:])
        raise SystemExit(f"kosmos curate failed with {proc.returncode}")
    stats = json.loads((out / "stats.json").read_text())
    fetched = stats["http"]["fetched"]
    fetch_window = (hosts.last - hosts.first) if hosts.first else 0.0
    balanced = all(stats[k]["balanced"] for k in FUNNEL_BLOCKS if k in stats)
    figures = {
        "pages": args.pages, "wall_s": round(wall, 1), "pages_per_s": round(args.pages / wall, 2),
        "images_fetched": fetched, "images_per_s_in_fetch_window": round(fetched / fetch_window, 1) if fetch_window else None,
        "http_urls": stats["http"]["urls"], "http_failed": stats["http"]["failed"],
        "server_answers": dict(hosts.served),
        "fetch_window_s": round(fetch_window, 1), "rest_s": round(wall - fetch_window, 1),
        "peak_rss_tree_gb": round(peak / 2**30, 2),
        "documents": stats["documents"]["kept"], "document_images": stats["documents"]["images"],
        "text_documents": stats["outputs"].get("text", {}).get("rows"),
        "pairs": stats["outputs"].get("pairs", {}).get("rows"),
        "images_funnel": {"in": stats["images"]["in"], "kept": stats["images"]["kept"],
                          "dropped": stats["images"]["dropped"]},
        "balanced": balanced,
    }
    print(json.dumps(figures, indent=2))
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
