"""What each page costs the job's page logic, without Beam (not a test).

Reads a WARC in this process and runs every HTML response through the job's own
DoFns, one call at a time, the way the job does: ``CheapPageChecks``, then for
what passes ``ExtractPage`` and the three decisions (``ToTextDocument``, and for a
page with images ``ToDocument`` and ``ToPairs``). Extraction runs in this process
(``records.page_time_budget_s`` 0), so CPU time splits exactly: trafilatura and
the ``<img>`` scan are timed apart from the rest of ``ExtractPage``. Models and
trafilatura are loaded before the clock starts.

The sum is the page logic's CPU per page; ``benchmarks/scale.py`` gives the whole
job's CPU per page on the same WARC, and the difference is what the runner, the
shuffles (dedup, accounting, image joins) and the writers cost.

    scripts/in-venv python benchmarks/page_cost.py --input WARC [--pages N]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--input", required=True, help="a WARC file")
    ap.add_argument("--pages", type=int, default=0, help="stop after this many HTML pages (0: all)")
    args = ap.parse_args()

    from apache_beam.pvalue import TaggedOutput

    from filters.config import CurationConfig
    from transforms.pages import CheapPageChecks, ExtractPage, ToDocument, ToPairs, ToTextDocument
    from transforms.records import Page, Provenance
    from archives.records import ArchiveRecord, iter_archive

    cfg = CurationConfig().override({"records.page_time_budget_s": 0})
    stages = {"cheap checks": CheapPageChecks(cfg), "extraction and text filters": ExtractPage(cfg),
              "text-only decision": ToTextDocument(cfg), "interleaved decision": ToDocument(cfg),
              "pair decision": ToPairs(cfg)}
    for dofn in stages.values():
        dofn.setup()
    from filters.captions import find_image_captions
    from filters.html import extract_content
    warm = "<html><body><p>" + "Words of a page to warm up with. " * 20 + '</p><img src="a.jpg" alt="a"></body></html>'
    extract_content(warm, "https://example.com/")        # imports trafilatura and its models
    find_image_captions(warm, "https://example.com/")
    cpu: Counter = Counter()
    calls: Counter = Counter()

    extract = stages["extraction and text filters"]
    run_in_process = extract.parser.call

    def timed_call(fn, *a):             # trafilatura and the <img> scan, apart from ExtractPage's own work
        t0 = time.process_time()
        try:
            return run_in_process(fn, *a)
        finally:
            cpu[f"  of which {fn.__name__}"] += time.process_time() - t0
            calls[f"  of which {fn.__name__}"] += 1
    extract.parser.call = timed_call

    def run(name, element):
        t0 = time.process_time()
        out = [x for x in stages[name].process(element) or () if not isinstance(x, TaggedOutput)]
        cpu[name] += time.process_time() - t0
        calls[name] += 1
        return out

    pages = 0
    t0 = time.process_time()
    with open(args.input, "rb") as fh:
        records = iter_archive(fh, args.input)
        while True:
            t_read = time.process_time()
            rec = next(records, None)
            cpu["reading the WARC"] += time.process_time() - t_read
            calls["reading the WARC"] += rec is not None
            if rec is None or (args.pages and pages >= args.pages):
                break
            if not isinstance(rec, ArchiveRecord) or rec.rec_type != "response" or rec.mime != "text/html":
                continue
            pages += 1
            page = Page(rec.target_uri, rec.date, rec.http_header("content-type"), rec.payload,
                        Provenance(args.input, rec.offset))
            decoded = run("cheap checks", page)
            if not decoded:
                continue
            extracted = run("extraction and text filters", decoded[0])
            if not extracted:
                continue
            run("text-only decision", extracted[0])
            if extracted[0].has_img:
                run("interleaved decision", extracted[0])
                run("pair decision", extracted[0])
    total = time.process_time() - t0
    for dofn in stages.values():
        dofn.teardown()

    print(f"{pages:,d} HTML pages of {args.input}; CPU per page, over all pages")
    print(f"{'stage':<38} {'calls':>7} {'ms/page':>8} {'ms/call':>8}")
    for name in ["reading the WARC", *stages, "  of which extract_content", "  of which find_image_captions"]:
        if name in cpu:
            n = calls[name] or pages
            print(f"{name:<38} {n:>7,d} {1000 * cpu[name] / max(pages, 1):>8.2f} {1000 * cpu[name] / n:>8.2f}")
    print(f"{'all of it':<38} {'':>7} {1000 * total / max(pages, 1):>8.2f}")


if __name__ == "__main__":
    main()
