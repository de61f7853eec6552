"""Curation speed on the real archives of ../shared/data/warc (not a test).

Reports, from one run on this machine:
  * the cost of each stage per page, single process, pure functions (no Beam);
  * the cost of a page rejected as non-English by the cheap check against the cost
    of a page that goes through the full extraction;
  * pages per second per core end to end through Beam's local runner;
  * what the per-page time budget costs: the same in-memory run with parsing in
    the child process (the default) and in-process (``records.page_time_budget_s=0``).

    scripts/in-venv python benchmarks/curate.py [--warcs DIR] [--json OUT]
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from filters.config import CurationConfig  # noqa: E402
from filters.html import decode_html, extract_content, has_img_tag, rough_text  # noqa: E402
from filters.images import judge_image  # noqa: E402
from filters.language import LanguageIdentifier, language_filter  # noqa: E402
from filters.text_quality import filter_document_text, filter_paragraphs  # noqa: E402
from filters.records import classify  # noqa: E402
from archives.records import ArchiveRecord, iter_archive  # noqa: E402


def stage_costs(files, cfg: CurationConfig):
    lid = LanguageIdentifier()
    t = defaultdict(float)
    n = defaultdict(int)
    cheap_rejected_non_english, full_pages = [], []
    for path in files:
        t0 = time.perf_counter()
        records = list(iter_archive(open(path, "rb"), path))
        t["read+parse records"] += time.perf_counter() - t0
        n["records"] += len(records)
        for rec in records:
            if not isinstance(rec, ArchiveRecord) or rec.rec_type not in ("response", "resource"):
                continue
            kind = classify(rec).kind.value
            if kind == "image":
                t0 = time.perf_counter()
                judge_image(rec.payload, cfg.images)
                t["image decode+filter"] += time.perf_counter() - t0
                n["images"] += 1
                continue
            if kind != "page":
                continue
            n["pages"] += 1
            start = time.perf_counter()
            text, _ = decode_html(rec.payload, rec.http_header("content-type"))
            t1 = time.perf_counter()
            t["decode html"] += t1 - start
            has_img = has_img_tag(text)
            rough = rough_text(text)
            cheap = language_filter(lid, rough, "en", cfg.language.cheap_min_score)
            t2 = time.perf_counter()
            t["cheap checks (img tag, crude text, fastText)"] += t2 - t1
            if not cheap.keep:
                cheap_rejected_non_english.append(t2 - start)
            if not has_img or not cheap.keep:
                continue
            content = extract_content(text, rec.target_uri)
            t3 = time.perf_counter()
            t["extraction (trafilatura)"] += t3 - t2
            texts = [i.text for i in content.items if i.kind == "text"]
            flags, _ = filter_paragraphs(texts, cfg.text)
            kept = [x for x, f in zip(texts, flags) if f]
            language_filter(lid, " ".join(kept), "en", cfg.language.min_score)
            filter_document_text(kept, cfg.text)
            t4 = time.perf_counter()
            t["text filters (spam, language)"] += t4 - t3
            full_pages.append(t4 - start)
            n["pages extracted"] += 1
    return t, n, cheap_rejected_non_english, full_pages


def end_to_end(files, workers: int, mode: str, cfg: CurationConfig = None):
    from pipeline.run import run_curation
    out = tempfile.mkdtemp(prefix="kosmos-bench-")
    try:
        args = ["--runner=DirectRunner", f"--direct_num_workers={workers}", f"--direct_running_mode={mode}"]
        t0 = time.perf_counter()
        stats = run_curation(files, out, cfg or CurationConfig(), args, worker_log=os.path.join(out, "log"))
        return time.perf_counter() - t0, stats
    finally:
        shutil.rmtree(out, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--warcs", default=str(ROOT.parent / "shared" / "data" / "warc"))
    ap.add_argument("--json", help="write the figures here")
    ap.add_argument("--skip_beam", action="store_true")
    args = ap.parse_args()
    files = sorted(glob.glob(os.path.join(args.warcs, "*")))
    cfg = CurationConfig()

    t, n, rejected, full = stage_costs(files, cfg)
    total = sum(t.values())
    print(f"stage costs over {len(files)} files, {n['records']} records, {n['pages']} HTML pages, "
          f"{n['images']} image records (one process):")
    for stage, secs in sorted(t.items(), key=lambda kv: -kv[1]):
        print(f"  {stage:<46} {secs:8.3f} s  {100 * secs / total:5.1f} %")
    pages_per_s_core = n["pages"] / total
    print(f"  pure-function throughput: {pages_per_s_core:.1f} pages/s on one core")
    ratio = statistics.mean(rejected) / statistics.mean(full) if rejected and full else float("nan")
    print(f"non-English page rejected by the cheap check: {1000 * statistics.mean(rejected):.2f} ms "
          f"(n={len(rejected)}); fully extracted page: {1000 * statistics.mean(full):.2f} ms (n={len(full)}); "
          f"ratio {ratio:.3f}")
    figures = {"stage_seconds": dict(t), "counts": dict(n), "pages_per_second_one_core_pure": pages_per_s_core,
               "cheap_reject_ms": 1000 * statistics.mean(rejected), "full_extraction_ms": 1000 * statistics.mean(full),
               "cheap_to_full_ratio": ratio}
    if not args.skip_beam:
        cores = os.cpu_count() or 1
        for workers, mode in ((1, "in_memory"), (cores, "multi_processing")):
            secs, stats = end_to_end(files, workers, mode)
            pages = n["pages"]
            print(f"Beam DirectRunner {mode} x{workers}: {secs:.1f} s wall, {pages / secs:.1f} pages/s, "
                  f"{pages / secs / workers:.1f} pages/s/core; {stats['records']['in']} records, "
                  f"{stats['documents']['kept']} documents")
            figures[f"beam_{mode}_{workers}"] = {"seconds": secs, "pages_per_s": pages / secs,
                                                 "pages_per_s_per_core": pages / secs / workers}
        in_process, _ = end_to_end(files, 1, "in_memory", cfg.override({"records.page_time_budget_s": 0}))
        budgeted = figures["beam_in_memory_1"]["seconds"]
        print(f"per-page time budget: {budgeted:.1f} s with parsing in a child process, {in_process:.1f} s "
              f"in-process: x{budgeted / in_process:.2f}")
        figures["time_budget_cost_ratio"] = budgeted / in_process
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
