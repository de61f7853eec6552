"""What each page costs the job's page logic, without Beam (not a test).

Reads a WARC in this process and runs every HTML response through the job's own
page logic, one call at a time, the way the job does: the sites not to be used
(``BlockedSites``, a pure filter on the URL), ``CheapPageChecks``, then for
what passes ``ExtractPage`` and the three decisions (``ToTextDocument``, and for a
page with images ``ToDocument`` and ``ToPairs``). Extraction runs in this process
(``records.page_time_budget_s`` 0), so CPU time splits exactly: trafilatura's own
work (its parse of the page, which the ``<img>`` scan shares, and its extraction with
the XML it writes: what ``trafilatura.extract`` on the page would cost) is timed apart
from ours. Models and trafilatura are loaded before the clock starts. The last line is
issue 31's figure: per page that passed the cheap language check (the pages
trafilatura reads), everything from reading its record to the last decision, and how
much of that is ours beside trafilatura's.

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
    from filters.safety_urls import BlockedSites
    from transforms.pages import CheapPageChecks, ExtractPage, ToDocument, ToPairs, ToTextDocument
    from transforms.records import Page, Provenance
    from archives.records import ArchiveRecord, iter_archive

    cfg = CurationConfig().override({"records.page_time_budget_s": 0})
    stages = {"cheap checks": CheapPageChecks(cfg), "extraction and text filters": ExtractPage(cfg),
              "text-only decision": ToTextDocument(cfg), "interleaved decision": ToDocument(cfg),
              "pair decision": ToPairs(cfg)}
    for dofn in stages.values():
        dofn.setup()
    blocked = BlockedSites(cfg.safety)
    blocked(Page("https://example.com/", "", "", b"", Provenance("warm-up", 0)))   # its lists, read once
    import trafilatura.utils
    import filters.html as html
    from filters.captions import read_page
    warm = "<html><body><p>" + "Words of a page to warm up with. " * 20 + '</p><img src="a.jpg" alt="a"></body></html>'
    read_page(warm, "https://example.com/", True)        # imports trafilatura and its models
    cpu: Counter = Counter()
    calls: Counter = Counter()
    TRAFILATURA = "trafilatura"

    # trafilatura's own work: its parse (load_html, the tree the <img> scan shares) and
    # its extraction with the XML it writes; what trafilatura.extract(page) would cost
    def trafilatura_part(name, fn):
        def timed(*a, **kw):
            t0 = time.process_time()
            try:
                return fn(*a, **kw)
            finally:
                cpu[TRAFILATURA] += time.process_time() - t0
                cpu[f"  {name}"] += time.process_time() - t0
                calls[f"  {name}"] += 1
        return timed
    trafilatura.utils.load_html = trafilatura_part("trafilatura: its parse", trafilatura.utils.load_html)
    html._trafilatura_xml = trafilatura_part("trafilatura: extraction and its XML", html._trafilatura_xml)

    def run(name, element):
        t0 = time.process_time()
        out = [x for x in stages[name].process(element) or () if not isinstance(x, TaggedOutput)]
        cpu[name] += time.process_time() - t0
        calls[name] += 1
        return out

    pages = english = 0
    english_cpu = english_trafilatura = 0.0
    t0 = time.process_time()
    with open(args.input, "rb") as fh:
        records = iter_archive(fh, args.input)
        while True:
            t_read = time.process_time()
            rec = next(records, None)
            read_s = time.process_time() - t_read
            cpu["reading the WARC"] += read_s
            calls["reading the WARC"] += rec is not None
            if rec is None or (args.pages and pages >= args.pages):
                break
            if not isinstance(rec, ArchiveRecord) or rec.rec_type != "response" or rec.mime != "text/html":
                continue
            pages += 1
            t_page, traf_before = time.process_time(), cpu[TRAFILATURA]
            page = Page(rec.target_uri, rec.date, rec.http_header("content-type"), rec.payload,
                        Provenance(args.input, rec.offset))
            t_site = time.process_time()
            site = blocked(page)
            cpu["blocked sites"] += time.process_time() - t_site
            calls["blocked sites"] += 1
            decoded = run("cheap checks", page) if site.keep else None
            if decoded:
                extracted = run("extraction and text filters", decoded[0])
                if extracted:
                    run("text-only decision", extracted[0])
                    if extracted[0].has_img:
                        run("interleaved decision", extracted[0])
                        run("pair decision", extracted[0])
                english += 1        # passed the cheap language check: the pages trafilatura reads
                english_cpu += read_s + time.process_time() - t_page
                english_trafilatura += cpu[TRAFILATURA] - traf_before
    total = time.process_time() - t0
    for dofn in stages.values():
        dofn.teardown()

    print(f"{pages:,d} HTML pages of {args.input}; CPU per page, over all pages")
    print(f"{'stage':<38} {'calls':>7} {'ms/page':>8} {'ms/call':>8}")
    for name in ["reading the WARC", "blocked sites", *stages, "  trafilatura: its parse",
                 "  trafilatura: extraction and its XML"]:
        if name in cpu:
            n = calls[name] or pages
            print(f"{name:<38} {n:>7,d} {1000 * cpu[name] / max(pages, 1):>8.2f} {1000 * cpu[name] / n:>8.2f}")
    print(f"{'all of it':<38} {'':>7} {1000 * total / max(pages, 1):>8.2f}")
    if english:
        per = 1000 / english
        print(f"\nper page that passed the cheap language check ({english:,d}: the pages trafilatura reads), "
              f"reading to the last decision: {per * english_cpu:.2f} ms, of which trafilatura's own work "
              f"{per * english_trafilatura:.2f} ms; ours beside it: {per * (english_cpu - english_trafilatura):.2f} ms")


if __name__ == "__main__":
    main()
