"""Content-Encoding bombs through the archive reader (not a test).

Builds WARC files, each holding one response whose body inflates to ``--gib`` GiB
of zeros (gzip, "gzip, gzip", br, zstd) and one ordinary page after it, then reads
each in a fresh child process with the reader's job settings (the cap is
max(records.max_html_bytes, records.max_image_bytes) = 20 MiB) and prints the
child's peak RSS next to that of a child reading the page alone. Flat means: the
baseline plus about the cap, whatever ``--gib``. With ``--job``, also a
``kosmos curate`` run over the gzip bomb (peak RSS of its process tree).

    scripts/in-venv python benchmarks/bomb.py [--gib 10] [--job] [--code DIR] [--json]

``--code DIR`` reads with another checkout's reader (e.g. /work/baseline, which
inflates the whole body: keep ``--gib`` within the machine's memory there).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from hostile.archives import PAGE, record  # noqa: E402
from hostile.bombs import MIB, encoded_response, gzip_of_zeros  # noqa: E402

READER = """
import sys, time
sys.path.insert(0, sys.argv[1])
from archives.records import ArchiveRecord, iter_archive
t0 = time.monotonic()
with open(sys.argv[2], "rb") as fh:
    items = [(i.target_uri, i.oversize, len(i.payload), i.notes) if isinstance(i, ArchiveRecord) else (i.kind,)
             for i in iter_archive(fh, sys.argv[2], max_payload_bytes=20 * 1024 * 1024)]
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec from the forked parent
hwm = [int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:")][0]
print(repr((items, time.monotonic() - t0, hwm)))
"""


def bodies(gib: int):
    """(encoding, body) for each bomb: ``gib`` GiB of zeros once inflated."""
    import brotli
    import zstandard
    n = gib * 1024
    inner = gzip_of_zeros(n)
    yield "gzip", inner
    yield "gzip, gzip", gzip.compress(inner, mtime=0)
    c = brotli.Compressor(quality=1)
    zero = bytes(MIB)
    yield "br", b"".join(c.process(zero) for _ in range(n)) + c.finish()
    z = zstandard.ZstdCompressor(level=3).compressobj()
    yield "zstd", b"".join(z.compress(zero) for _ in range(n)) + z.flush()


def child_peak(code: str, path: str):
    out = subprocess.run([sys.executable, "-c", READER, code, path], capture_output=True, text=True)
    if out.returncode:
        return {"failed": out.stderr.strip().splitlines()[-1:]}
    items, seconds, rss_kib = eval(out.stdout.strip())      # our own child's repr
    return {"items": items, "seconds": round(seconds, 2), "peak_rss_mib": round(rss_kib / 1024, 1)}


TREE = """
import resource, subprocess, sys
rc = subprocess.run(sys.argv[1:], capture_output=True).returncode
print(rc, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def run_job(path: str, out: Path):
    """``kosmos curate`` under a small fresh Python that reports the largest peak RSS
    among its descendants (the job's processes: the driver and its workers)."""
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", TREE, str(ROOT / "bin" / "kosmos"), "curate", "--input", path,
                           "--output", str(out), "--quiet"], capture_output=True, text=True, check=True)
    rc, peak = map(int, proc.stdout.split())
    stats = json.loads((out / "stats.json").read_text()) if (out / "stats.json").exists() else {}
    return {"rc": rc, "seconds": round(time.monotonic() - t0, 1), "peak_rss_mib_of_tree": round(peak / 1024, 1),
            "records_dropped": stats.get("records", {}).get("dropped"),
            "balanced": stats.get("records", {}).get("balanced")}


ENCODINGS = ("gzip", "gzip, gzip", "br", "zstd")


def build(tmp: Path, gib: int):
    """The WARC files, written by a child of their own: the bodies it holds while it
    builds them would otherwise count in the measured children's peak (a forked
    child's ru_maxrss starts at its parent's)."""
    page = record("http://example.com/after", PAGE)
    (tmp / "page.warc").write_bytes(page)
    for encoding, body in bodies(gib):
        path = tmp / f"bomb-{encoding.replace(', ', '-')}.warc"
        path.write_bytes(encoded_response("http://example.com/bomb", body, encoding) + page)
        if encoding == "gzip":
            (tmp / "bomb.warc.gz").write_bytes(gzip.compress(path.read_bytes(), mtime=0))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gib", type=int, default=10, help="GiB each bomb inflates to")
    ap.add_argument("--job", action="store_true", help="also run kosmos curate on the gzip bomb")
    ap.add_argument("--code", default=str(ROOT), help="the checkout whose reader is measured")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--build", help=argparse.SUPPRESS)      # internal: write the files into this folder
    args = ap.parse_args()
    if args.build:
        build(Path(args.build), args.gib)
        return
    report = {"gib": args.gib, "code": args.code}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        subprocess.run([sys.executable, __file__, "--build", str(tmp), "--gib", str(args.gib)], check=True)
        report["page_alone"] = dict(child_peak(args.code, str(tmp / "page.warc")),
                                    warc_bytes=(tmp / "page.warc").stat().st_size)
        for encoding in ENCODINGS:
            path = tmp / f"bomb-{encoding.replace(', ', '-')}.warc"
            report[encoding] = dict(child_peak(args.code, str(path)), warc_bytes=path.stat().st_size)
        if args.job:
            (tmp / "page.warc.gz").write_bytes(gzip.compress((tmp / "page.warc").read_bytes(), mtime=0))
            report["job_page_alone"] = run_job(str(tmp / "page.warc.gz"), tmp / "job-page")
            gz = tmp / "bomb.warc.gz"
            report["job"] = dict(run_job(str(gz), tmp / "job-bomb"), warc_gz_bytes=gz.stat().st_size)
    if args.json:
        print(json.dumps(report, indent=1))
        return
    alone = report["page_alone"].get("peak_rss_mib")
    print(f"reader: {args.code}; each bomb inflates to {args.gib} GiB; cap 20 MiB")
    print(f"{'body':<12} {'WARC bytes':>12} {'peak RSS MiB':>13} {'over page alone':>16} {'seconds':>8}  result")
    print(f"{'page alone':<12} {report['page_alone']['warc_bytes']:>12} {alone:>13} {'':>16} "
          f"{report['page_alone']['seconds']:>8}")
    for encoding in ENCODINGS:
        r = report[encoding]
        if "failed" in r:
            print(f"{encoding:<12} {r['warc_bytes']:>12} failed: {r['failed']}")
            continue
        bomb = r["items"][0]
        result = "too_large (oversize)" if bomb[1] else f"kept {bomb[2]} bytes"
        print(f"{encoding:<12} {r['warc_bytes']:>12} {r['peak_rss_mib']:>13} "
              f"{r['peak_rss_mib'] - alone:>16.1f} {r['seconds']:>8}  {result}; then {r['items'][1][0]}")
    if "job" in report:
        for name, j in (("the page alone", report["job_page_alone"]), ("page + gzip bomb", report["job"])):
            print(f"kosmos curate on {name}: rc {j['rc']}, {j['seconds']} s, peak RSS of the job's processes "
                  f"{j['peak_rss_mib_of_tree']} MiB; records dropped {j['records_dropped']}, "
                  f"balanced {j['balanced']}")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
