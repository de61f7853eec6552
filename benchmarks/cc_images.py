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

``--anchor img2dataset`` instead puts every <img> URL of the WARC through our fetch
stage (``FetchBatch``, the worker's thread pool, download and image judging, default
settings, in batches of ``fetch.batch_size``, one bundle) and through img2dataset 1.47.0 (in a
virtual environment of its own that this script builds from PyPI when missing,
``~/.cache/kosmos/anchor-img2dataset``; resize_mode=no, otherwise its defaults: it
still decodes and re-encodes every image), one after the other against the same
hosts, with the same concurrency (``--processes`` x ``--threads``: 1 x 32, our
default ``fetch.concurrency`` on one worker). It prints the images each got, wall
images/s and images per CPU-second of each whole process tree (the servers run in
this process and are not counted), and what each did not keep.

    scripts/in-venv python benchmarks/cc_images.py [--pages 5000] [--keep DIR]
                                                   [--anchor img2dataset [--processes 1] [--threads 32]]
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
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT))

from contract.reasons import FUNNEL_BLOCKS  # noqa: E402
from filters.records import classify  # noqa: E402
from archives.records import ArchiveRecord, iter_archive  # noqa: E402
from archives.writer import warc_response_record  # noqa: E402

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
    return eval_pages() + html_pages()


def eval_pages():
    out = []
    with open(SHARED / "pages-eval" / "trafilatura-eval-dev-00.warc.gz", "rb") as fh:
        for item in iter_archive(fh, "eval"):
            if isinstance(item, ArchiveRecord) and classify(item).kind.value == "page":
                out.append((item.target_uri, item.payload))
    return out


def html_pages():
    return [(f"https://{path.stem.split('__', 1)[-1]}/", path.read_bytes())
            for path in sorted((SHARED / "html").glob("*.html"))]


def vary_text(html: str, copy: int) -> str:
    """Every 4th word of the page's longer text runs replaced by a word chosen by the
    copy number: each 5-gram changes, so copies are not near-duplicates; still English.
    The step from word to word grows every len(WORDS) copies, or copy 41 would repeat copy 1."""
    step = 1 + copy // len(WORDS)

    def repl(m):
        words = m.group(1).split(" ")
        for i in range(3, len(words), 4):
            if words[i].isalpha():
                words[i] = WORDS[(copy * 7 + i * step) % len(WORDS)]
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


def language_pools():
    """(English pages of pages-eval, pages of another language of pages-eval and html/),
    each as base_pages() gives them; the language is lid.176's top label on the page's
    main-content snippets of evaldata.json (on its longer text runs where it has none)."""
    from filters.language import LanguageIdentifier
    lid = LanguageIdentifier()
    snippets = json.loads((SHARED / "pages-eval" / "evaldata.json").read_text())
    english, other = [], []
    for source, pages in (("eval", eval_pages()), ("html", html_pages())):
        for url, body in pages:
            text = " ".join(snippets[url]["with"]) if url in snippets else \
                " ".join(_TEXT.findall(body.decode("utf-8", "replace")))
            top = (lid.predict(text, k=1) or [("", 0.0)])[0][0]
            if top != "en":
                other.append((url, body))
            elif source == "eval":
                english.append((url, body))
    return english, other


def build_warc(path: Path, pages: int, port: int, seed: int = 0, english: Optional[float] = None):
    """``pages`` pages (the real pages in turn, varied copies after the first round) and
    the number of <img> URLs they hold. ``english``: that share of the pages are
    pages-eval's English ones, the rest pages of other languages (language_pools), in
    turn, evenly interleaved (Common Crawl's mix is about 0.45)."""
    rng = random.Random(seed)
    if english is None:
        pools = [base_pages()]
    else:
        pools = list(language_pools())
    used = [0] * len(pools)
    n_img = 0
    with open(path, "wb") as fh:
        for k in range(pages):
            pool = 0 if english is None or int((k + 1) * english) > int(k * english) else 1
            bases = pools[pool]
            url, body = bases[used[pool] % len(bases)]
            copy = used[pool] // len(bases)
            used[pool] += 1
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
            # the payload type Common Crawl's WARCs name (DataTrove's reader trusts it, else sniffs)
            rec = warc_response_record(page_url, "2024-03-01T00:00:00Z", 200, "text/html; charset=utf-8",
                                       text.encode("utf-8"), [("WARC-Identified-Payload-Type", "text/html")])
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
            # TCP_NODELAY, as web servers set it on kept-alive connections: without it the body,
            # written after the headers, waits for the client's delayed ACK (40 ms) on each reuse
            disable_nagle_algorithm = True

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
    from anchor_run import process_tree
    return sum(rss for _, rss in process_tree(pid).values())


# ------------------------------------------------------------------------ img2dataset anchor
# img2dataset 1.47.0 (what a user would pick to download the images of a URL list), in a
# virtual environment of its own (benchmarks/anchor_run.py).
IMG2DATASET_PACKAGES = ["img2dataset==1.47.0"]


def image_urls(warc: Path):
    """Every <img> URL of the WARC, in order (build_warc makes each distinct)."""
    with gzip.open(warc, "rb") as fh:
        data = fh.read()
    return [u.decode() for u in re.findall(rb"http://127\.0\.0\.\d+:\d+/site\d+/img/\d+\.jpg", data)]


def _fetch_share(urls, threads: int):
    """Our fetch stage (FetchBatch with the default settings, ``threads`` in flight) on
    ``urls`` in batches of fetch.batch_size, as one worker runs it: counts of HTTP
    answers fetched, images kept and each reason."""
    from filters.config import FetchConfig, ImageConfig, RecordConfig
    from transforms.http_images import FETCHED, FetchBatch
    from transforms.records import ImageRef
    cfg = FetchConfig(concurrency=threads, allow_loopback=True)
    from apache_beam.transforms.window import GlobalWindow
    from apache_beam.utils.timestamp import MIN_TIMESTAMP
    dofn = FetchBatch(cfg, ImageConfig(), RecordConfig().max_image_bytes)
    dofn.setup()
    counts = Counter()

    def count(outputs):
        for out in outputs:
            tag = getattr(out, "tag", None)
            value = getattr(out, "value", out)          # a TaggedOutput's or a WindowedValue's
            value = getattr(value, "value", value)
            if tag is None and isinstance(value, tuple):
                counts["kept" if value[1].reason is None else f"reason:{value[1].reason}"] += 1
            elif tag == FETCHED:
                counts["fetched"] += 1

    dofn.start_bundle()                                 # one bundle, as the local runner gives one worker
    for i in range(0, len(urls), cfg.batch_size):
        count(dofn.process([(u, [(ImageRef(u), 0)]) for u in urls[i:i + cfg.batch_size]],
                           timestamp=MIN_TIMESTAMP, window=GlobalWindow()))
    count(dofn.finish_bundle())
    dofn.teardown()
    return counts


def fetch_stage(urls_file: str, processes: int, threads: int):
    """``--fetch_stage``: the URLs of ``urls_file`` through our fetch stage on ``processes``
    worker processes of ``threads`` each (each takes every processes-th batch); prints the counts."""
    urls = Path(urls_file).read_text().split()
    if processes == 1:
        counts = _fetch_share(urls, threads)
    else:
        from concurrent.futures import ProcessPoolExecutor
        from filters.config import FetchConfig
        size = FetchConfig().batch_size
        batches = [urls[i:i + size] for i in range(0, len(urls), size)]
        shares = [[u for b in batches[p::processes] for u in b] for p in range(processes)]
        counts = Counter()
        with ProcessPoolExecutor(processes) as pool:
            for c in pool.map(_fetch_share, shares, [threads] * processes):
                counts.update(c)
    print("FETCH " + json.dumps(dict(counts)), flush=True)


def run_ours(urls_file: Path, processes: int, threads: int) -> dict:
    from anchor_run import measured
    cmd = [sys.executable, str(Path(__file__).resolve()), "--fetch_stage", str(urls_file),
           "--processes", str(processes), "--threads", str(threads)]
    r = measured(cmd, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    line = next((ln for ln in r["output"].splitlines() if ln.startswith("FETCH ")), None)
    if r["rc"] or not line:
        raise SystemExit(f"our fetch stage failed ({r['rc']}):\n{r['output'][-4000:]}")
    counts = json.loads(line[len("FETCH "):])
    return dict(r, output="", ok=counts.get("kept", 0), fetched=counts.get("fetched", 0),
                reasons={k[len("reason:"):]: v for k, v in counts.items() if k.startswith("reason:")})


def run_img2dataset(urls_file: Path, out: Path, processes: int, threads: int, n_urls: int) -> dict:
    """img2dataset on the URL list: its defaults but the concurrency (``processes`` x
    ``threads``), resize_mode=no (it still decodes and re-encodes each image to JPEG, its
    default), no retries, webdataset shards of one process each."""
    from anchor_run import anchor_env, anchor_python, measured
    py = anchor_python("img2dataset", IMG2DATASET_PACKAGES)
    job = ("from img2dataset import download; import sys; "
           "download(url_list=sys.argv[1], input_format='txt', output_folder=sys.argv[2], output_format='webdataset', "
           "processes_count=int(sys.argv[3]), thread_count=int(sys.argv[4]), number_sample_per_shard=int(sys.argv[5]), "
           "resize_mode='no', retries=0, timeout=10, distributor='multiprocessing', enable_wandb=False)")
    per_shard = max(1, -(-n_urls // processes))
    env = {k: v for k, v in anchor_env().items() if k.lower() not in ("http_proxy", "https_proxy", "all_proxy")}
    r = measured([str(py), "-c", job, str(urls_file), str(out), str(processes), str(threads), str(per_shard)],
                 env=env, cwd=str(out.parent))
    totals = Counter()
    reasons = Counter()
    for f in out.glob("*_stats.json"):
        st = json.loads(f.read_text())
        for k in ("count", "successes", "failed_to_download", "failed_to_resize"):
            totals[k] += st.get(k, 0)
        reasons.update(st.get("status_dict", {}))
    if r["rc"] or not totals["count"]:
        raise SystemExit(f"img2dataset failed ({r['rc']}):\n{r['output'][-4000:]}")
    return dict(r, output="", ok=totals["successes"], fetched=totals["count"] - totals["failed_to_download"],
                reasons={k: v for k, v in reasons.items() if k != "success"})


def anchor_img2dataset(warc: Path, work: Path, hosts: "ImageHosts", processes: int, threads: int):
    """Our fetch stage and img2dataset, one after the other, on every <img> URL of the WARC
    against the same hosts; the servers run in this process and are not counted."""
    urls = image_urls(warc)
    urls_file = work / "urls.txt"
    urls_file.write_text("\n".join(urls) + "\n")
    rows = {}
    for name in ("kosmos", "img2dataset"):
        before = Counter(hosts.served)
        if name == "kosmos":
            r = run_ours(urls_file, processes, threads)
        else:
            out = work / "img2dataset"
            shutil.rmtree(out, ignore_errors=True)
            r = run_img2dataset(urls_file, out, processes, threads, len(urls))
        r["server_answers"] = dict(Counter(hosts.served) - before)
        rows[name] = r
        print(json.dumps({name: {k: (round(v, 2) if isinstance(v, float) else v) for k, v in r.items()}}), flush=True)
    print(f"\n{len(urls):,d} image URLs on {HOSTS} hosts (5% 404, 3% not an image, 2% 1.5 s slow), "
          f"{processes} process(es) x {threads} threads each")
    print("images ok: kept by our judging (which drops small and extreme images without decoding "
          "their pixels), decoded by img2dataset (which keeps any size); HTTP ok: 200 answers")
    print(f"{'tool':<12} {'images ok':>9} {'HTTP ok':>8} {'wall s':>7} {'CPU s':>7} {'images/s':>9} "
          f"{'images/CPU-s':>12} {'HTTP ok/s':>9} {'HTTP ok/CPU-s':>13} {'peak RSS GB':>11}")
    for name, r in rows.items():
        cpu = max(r["cpu_s"], 1e-9)
        print(f"{name:<12} {r['ok']:>9,d} {r['fetched']:>8,d} {r['wall_s']:>7.1f} {r['cpu_s']:>7.1f} "
              f"{r['ok'] / r['wall_s']:>9.1f} {r['ok'] / cpu:>12.1f} {r['fetched'] / r['wall_s']:>9.1f} "
              f"{r['fetched'] / cpu:>13.1f} {r['peak_rss_gb']:>11.2f}")
    k, i = rows["kosmos"], rows["img2dataset"]
    for what in ("ok", "fetched"):
        if k[what] and i[what]:
            print(f"kosmos, {'images ok' if what == 'ok' else 'HTTP ok'}: x{(k[what] / k['cpu_s']) / (i[what] / i['cpu_s']):.2f}"
                  f" img2dataset's per CPU-second, x{(k[what] / k['wall_s']) / (i[what] / i['wall_s']):.2f} its per second")
    for name, r in rows.items():
        print(f"{name} not kept: " + ", ".join(f"{k} {v}" for k, v in sorted(r["reasons"].items(), key=lambda kv: -kv[1])))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pages", type=int, default=5000)
    ap.add_argument("--keep", help="keep the WARC and the run here")
    ap.add_argument("--anchor", choices=["img2dataset"], default=None,
                    help="img2dataset: our fetch stage and img2dataset on every <img> URL of the WARC, "
                         "side by side, instead of the curate run")
    ap.add_argument("--processes", type=int, default=1, help="with --anchor: worker processes of each")
    ap.add_argument("--threads", type=int, default=32,
                    help="with --anchor: downloads in flight per process (fetch.concurrency; img2dataset's thread_count)")
    ap.add_argument("--fetch_stage", metavar="URLS", help=argparse.SUPPRESS)   # the child of --anchor
    args = ap.parse_args()
    if args.fetch_stage:
        return fetch_stage(args.fetch_stage, args.processes, args.threads)
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
    if args.anchor:
        try:
            anchor_img2dataset(warc, work, hosts, args.processes, args.threads)
        finally:
            hosts.close()
            if not args.keep:
                shutil.rmtree(work, ignore_errors=True)
        return
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
