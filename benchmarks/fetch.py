"""HTTP image download throughput of one worker (not a test): images per second
against a local server that adds 100 ms to every request, as the worker's
concurrency grows; the ideal is concurrency / latency until the CPU (decoding,
judging, re-encoding each image) becomes the limit.

    scripts/in-venv python benchmarks/fetch.py [--latency 0.1] [--max_concurrency 128]

It runs the worker's own code: ``FetchBatch`` (thread pool, per-host limit,
address checks, download, image judging) on batches of distinct URLs.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def serve(image: bytes, latency: float):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):
            pass

        def do_GET(self):
            time.sleep(latency)
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(image)))
            self.end_headers()
            self.wfile.write(image)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    httpd.request_queue_size = 1024
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--latency", type=float, default=0.1)
    ap.add_argument("--max_concurrency", type=int, default=128)
    ap.add_argument("--seconds", type=float, default=4.0, help="rough duration of each measurement")
    args = ap.parse_args()
    from filters.config import FetchConfig, ImageConfig
    from cc_images import image_images
    from transforms.http_images import FetchBatch

    image = next(data for mime, data in image_images() if mime == "image/jpeg")
    httpd = serve(image, args.latency)
    port = httpd.server_address[1]
    print(f"one worker, one host (127.0.0.1), {args.latency * 1000:.0f} ms added per request, "
          f"a {len(image):,}-byte JPEG, judged and re-encoded like every fetched image; the server runs in this process")
    print(f"{'concurrency':>11} {'images/s':>9} {'ideal':>7} {'ratio':>6}")
    c, run = 1, 0
    while c <= args.max_concurrency:
        cfg = FetchConfig(concurrency=c, per_host=c, allow_loopback=True, retries=0, write_warc=False)
        dofn = FetchBatch(cfg, ImageConfig(), 20 << 20)
        dofn.setup()
        ideal = c / args.latency
        n = max(c * 2, int(ideal * args.seconds))
        run += 1
        batch = [(f"http://127.0.0.1:{port}/r{run}/{i}.jpg", [(f"doc{i}", 0)]) for i in range(n)]
        t0 = time.perf_counter()
        results = [r for r in dofn.process(batch) if isinstance(r, tuple)]
        dt = time.perf_counter() - t0
        dofn.teardown()
        ok = sum(1 for _, res in results if res.reason is None)
        rate = ok / dt
        print(f"{c:>11} {rate:>9.1f} {ideal:>7.0f} {rate / ideal:>6.2f}")
        c *= 2
    httpd.shutdown()


if __name__ == "__main__":
    main()
