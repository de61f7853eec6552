"""The curation job: Common Crawl style archives to interleaved image-text
documents (Kosmos-1, paper §3.1; ../shared/KOSMOS.md §1).

Read top to bottom, the graph is the paper's recipe:

    archives -> records -> HTML pages (revisits resolved) -> cheap checks
      -> extraction + English + spam/gibberish + images-in-text
      -> dedup: URL (newest capture), exact text, near-duplicates (MinHash LSH)
      -> image references join image bytes (shuffle on URL), each image judged once,
         images used by more than 10 documents (logos, icons) removed
      -> documents meet their images (shuffle on document id): <= 5 images,
         half of the single-image documents dropped -> Parquet shards
    and every record and image reference is accounted for in stats.json.

The same pass also cuts the other two Kosmos corpora (``output.text``,
``output.pairs``): English pages with clean text, deduplicated on their own, go to
``text/``; every ``<img>`` of an English page with a usable caption goes, through
the same image source (one decode per image for both outputs), to ``pairs/``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import platform
import shutil
import subprocess
import tempfile
import time
from typing import Dict, List, Optional

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from filters.config import CurationConfig
from pipeline.inputs import DEFAULT_PATHS_PREFIX, expand_inputs
from transforms.accounting import OUTCOMES, AccountOutcomes, summarize
from pipeline.schema import PAIR_SCHEMA, SUCCESS_MARKER, TEXT_SCHEMA
from transforms.assemble import AssembleDocument
from transforms.corpora import PairsBeforeImages, PairsWithImages, TextRow
from transforms.dedup import Deduplicate
from transforms.http_images import (ArchiveThenHttp, HttpImages, WriteFetchedWarcs, failure_line,
                                    read_url_list)
from transforms.images import SETTLED, FetchImages, InArchiveImages, ListImageReferences
from transforms.pages import PagesToCandidates
from transforms.progress import ProgressPrinter, open_terminal
from transforms.read import ReadAndResolve
from transforms.records import TEXT, is_pair_ref
from transforms.write import WriteShardedLines, WriteShards, WriteSortedLines, atomic_write

DOCUMENTS_DIR = "documents"
TEXT_DIR = "text"
PAIRS_DIR = "pairs"
FETCHED_DIR = "fetched"
FETCH_FAILURES = "fetch_failures.jsonl"


def build_pipeline(p: beam.Pipeline, paths: List[str], output: str, cfg: CurationConfig,
                   progress_dir: Optional[str] = None):
    files = (p
             | "ListInputFiles" >> beam.Create(paths)
             | "SpreadFilesOverWorkers" >> beam.Reshuffle())

    reader = ReadAndResolve(cfg.records, progress_dir)
    pages, image_records, read_outcomes = files | "ReadArchives" >> reader
    (reader.inputs
     | "InputLines" >> beam.Map(lambda d: json.dumps(d, sort_keys=True))
     | "WriteInputManifest" >> WriteSortedLines(FileSystems.join(output, "inputs.jsonl")))
    to_candidates = PagesToCandidates(cfg, progress_dir)
    candidates, page_outcomes = pages | "PagesToCandidates" >> to_candidates
    # Dedup runs on text, before any image is fetched or decoded.
    candidates, dedup_outcomes, dedup_audit = candidates | "Deduplicate" >> Deduplicate(cfg.dedup)
    out = cfg.output
    extra_outcomes, audits = [], [dedup_audit]

    refs = candidates | "ListImageReferences" >> beam.ParDo(
        ListImageReferences(cfg.documents.max_image_references)).with_outputs(SETTLED, OUTCOMES, main="refs")
    all_refs = [refs["refs"]]
    if out.pairs:
        pairs, pair_outcomes = to_candidates.pairs | "DistinctPairs" >> PairsBeforeImages()
        extra_outcomes.append(pair_outcomes)
        all_refs.append(pairs | "PairImageReferences" >> beam.Map(lambda c: (c.url, (c.ref, 0))))
    # One image source for both outputs: an image a document and a pair share is decoded once.
    source = image_source(p, image_records, cfg)
    fetch = FetchImages(source, cfg.dedup.image_max_repeats)
    fetched = tuple(all_refs) | "AllImageReferences" >> beam.Flatten() | "FetchImages" >> fetch
    if fetch.events is not None:
        extra_outcomes.append(fetch.events)
    if getattr(source, "fetched", None) is not None:
        fetch_events = source.events
        (fetch_events
         | "OnlyFetchFailures" >> beam.Filter(lambda o: o.status == "http_failed")
         | "FailureLines" >> beam.Map(failure_line)
         | "WriteFetchFailures" >> WriteSortedLines(FileSystems.join(output, FETCH_FAILURES)))
        if cfg.fetch.write_warc:
            (source.fetched
             | "WriteFetchedWarcs" >> WriteFetchedWarcs(FileSystems.join(output, FETCHED_DIR), cfg.output.num_shards))
    results = (fetched, refs[SETTLED]) | "AllImageResults" >> beam.Flatten()
    if out.pairs:
        pair_results = results | "PairResults" >> beam.Filter(lambda kv: is_pair_ref(kv[0]))
        results = results | "DocumentResults" >> beam.Filter(lambda kv: not is_pair_ref(kv[0]))
        pair_rows, pair_row_outcomes = pairs | "PairsWithImages" >> PairsWithImages(pair_results)
        extra_outcomes.append(pair_row_outcomes)
        pairs_manifest = pair_rows | "WritePairShards" >> WriteShards(
            FileSystems.join(output, PAIRS_DIR), out.num_shards, out.compression, out.row_group_size,
            PAIR_SCHEMA, "pair_id")
    if out.text:
        texts, text_dedup_outcomes, text_audit = (to_candidates.text_documents
                                                  | "DeduplicateText" >> Deduplicate(cfg.dedup, TEXT))
        text_rows = texts | "TextRows" >> beam.ParDo(TextRow()).with_outputs(OUTCOMES, main="rows")
        extra_outcomes += [text_dedup_outcomes, text_rows[OUTCOMES]]
        audits.append(text_audit)
        text_manifest = text_rows["rows"] | "WriteTextShards" >> WriteShards(
            FileSystems.join(output, TEXT_DIR), out.num_shards, out.compression, out.row_group_size,
            TEXT_SCHEMA, "doc_id")

    assembled = ({"doc": candidates | "KeyByDocId" >> beam.Map(lambda c: (c.doc_id, c)),
                  "images": results}
                 | "JoinDocumentsWithImages" >> beam.CoGroupByKey()
                 | "CapImagesAndDropHalfOfSingleImageDocs" >> beam.ParDo(
                     AssembleDocument(cfg.documents)).with_outputs(OUTCOMES, main="rows"))

    manifest = assembled["rows"] | "WriteShards" >> WriteShards(
        FileSystems.join(output, DOCUMENTS_DIR), out.num_shards, out.compression, out.row_group_size)

    (tuple(audits) | "AllDuplicateLines" >> beam.Flatten()
     | "WriteDuplicates" >> WriteShardedLines(FileSystems.join(output, "duplicates"), out.num_shards))
    counts, samples, error_lines = ((read_outcomes, page_outcomes, dedup_outcomes, refs[OUTCOMES],
                                     assembled[OUTCOMES], *extra_outcomes)
                                    | "AccountOutcomes" >> AccountOutcomes(cfg.audit.samples_per_reason,
                                                                           cfg.audit.seed))
    error_lines | "WriteErrors" >> WriteSortedLines(FileSystems.join(output, "errors.jsonl"))
    (samples
     | "CollectSamples" >> beam.combiners.ToList()
     | "WriteSamples" >> beam.Map(write_reject_samples, FileSystems.join(output, "rejects", "samples.parquet")))
    config_json = cfg.to_json()

    def write_stats(counts: Dict[str, int], manifest: Dict, text_manifest=None, pairs_manifest=None) -> Dict:
        stats = summarize(counts)
        stats["documents"] = {"kept": manifest["rows"], "images": manifest["images"],
                              "shards": len(manifest["shards"])}
        stats["outputs"] = {DOCUMENTS_DIR: {"rows": manifest["rows"], "shards": len(manifest["shards"])}}
        for name, m in ((TEXT_DIR, text_manifest), (PAIRS_DIR, pairs_manifest)):
            if m is not None:
                stats["outputs"][name] = {"rows": m["rows"], "shards": len(m["shards"])}
        stats["image_decodes"] = {k.split("/", 1)[1]: v for k, v in counts.items()
                                  if k.startswith("fetch/decoded")}
        if cfg.fetch.source != "archive":
            http = {"fetched": counts.get("fetch/http_fetched", 0), "failed": {}}
            for k, v in counts.items():
                if k.startswith("fetch/http_failed/"):
                    http["failed"][k.rsplit("/", 1)[1]] = v
            http["urls"] = http["fetched"] + sum(http["failed"].values())
            stats["http"] = http
        stats["dedup"] = {"cc_unsettled_components": counts.get("dedup/cc_unsettled_components", 0)}
        if out.text:
            stats["dedup"]["text_cc_unsettled_components"] = counts.get("text_dedup/cc_unsettled_components", 0)
        warnings = no_images_warning(cfg, stats["records"].get("image_source", 0),
                                     stats.get("images", {}).get("in", 0))
        if warnings:
            stats["warnings"] = warnings
        stats["counts"] = dict(sorted(counts.items()))
        stats["config_sha256"] = hashlib.sha256(config_json.encode()).hexdigest()
        atomic_write(FileSystems.join(output, "stats.json"),
                     json.dumps(stats, indent=2, sort_keys=True).encode())
        # Written last, after every dataset's manifest and the stats: readers (the
        # trainer, the report) take the run's datasets only when this exists.
        atomic_write(FileSystems.join(output, SUCCESS_MARKER),
                     json.dumps({"stats": "stats.json", "outputs": stats["outputs"],
                                 "config_sha256": stats["config_sha256"]}, sort_keys=True).encode())
        return stats

    side = {}
    if out.text:
        side["text_manifest"] = beam.pvalue.AsSingleton(text_manifest)
    if out.pairs:
        side["pairs_manifest"] = beam.pvalue.AsSingleton(pairs_manifest)
    return counts | "WriteStats" >> beam.Map(write_stats, beam.pvalue.AsSingleton(manifest), **side)


IMAGES_HINT = ("images come only from the input archives (--images archive), and {what}: Common Crawl "
               "WARCs hold pages, not images, so every document would end as no_usable_images. "
               "Use --images http (download them) or --images archive_then_http.")


def no_images_warning(cfg: CurationConfig, image_records: int, image_references: int) -> List[str]:
    """The run's own words when its image source could give it no image at all."""
    if cfg.fetch.source != "archive" or image_records or not image_references:
        return []
    return [IMAGES_HINT.format(what=f"the input held no image record for the {image_references} image "
                                    f"references of its pages")]


def probe_for_images(paths: List[str], max_records: int = 600, max_files: int = 2) -> Dict[str, int]:
    """Pages and image records among the first records of the first inputs: enough to
    tell a Common Crawl WARC (pages only) from a browser crawl before the job starts."""
    from transforms.read import classify
    from transforms.remote import open_input
    from transforms.warc import ArchiveRecord, iter_archive
    seen = {"records": 0, "pages": 0, "images": 0}
    for path in paths[:max_files]:
        try:
            with open_input(path) as raw:
                for n, item in enumerate(iter_archive(raw, path)):
                    if n >= max_records:
                        break
                    seen["records"] += 1
                    if isinstance(item, ArchiveRecord) and item.rec_type in ("response", "resource"):
                        kind = classify(item)
                        seen["pages"] += kind == "page"
                        seen["images"] += kind == "image"
        except Exception:       # the job itself reports unreadable inputs, with their offsets
            continue
    return seen


def image_source(p: beam.Pipeline, image_records, cfg: CurationConfig) -> beam.PTransform:
    """The image source chosen by ``fetch.source`` (all follow one contract)."""
    f = cfg.fetch
    allowed = read_url_list(p, f.only_urls) if f.only_urls else None
    if f.source == "archive":
        return InArchiveImages(image_records, cfg.images, cfg.records.max_image_bytes)
    if f.source == "http":
        return HttpImages(f, cfg.images, cfg.records.max_image_bytes, allowed)
    if f.source == "archive_then_http":
        return ArchiveThenHttp(image_records, cfg.images, f, cfg.records.max_image_bytes, allowed)
    raise ValueError(f"fetch.source must be archive, http or archive_then_http, not {f.source!r}")


def write_reject_samples(rows: List[Dict], path: str) -> int:
    """The sampled rejects as one small Parquet file, in a fixed order."""
    import io
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.schema import REJECT_SCHEMA
    # the whole row breaks ties: two outcomes of one record (two captions of a page) share a key
    rows = sorted(rows, key=lambda r: (r["level"], r["status"], r["reason"], r["sample_key"],
                                       json.dumps(r, sort_keys=True, default=str)))
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=REJECT_SCHEMA), buf, compression="zstd")
    atomic_write(path, buf.getvalue())
    return len(rows)


def code_version() -> Dict[str, str]:
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    version = {"package": _package_version()}
    try:
        sha = subprocess.run(["git", "-C", here, "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "-C", here, "status", "--porcelain"], capture_output=True,
                               text=True, timeout=5).stdout.strip()
        if sha:
            version["git_commit"] = sha + ("-dirty" if dirty else "")
    except Exception:
        pass
    return version


def _package_version() -> str:
    try:
        from importlib.metadata import version
        return version("kosmos-curation")
    except Exception:
        return "unknown"


MULTI_WORKER_WARNING = (
    "Beam's local runner with more than one worker (direct_num_workers > 1, multi_processing or "
    "multi_threading) can drop elements where a PCollection is a Flatten of two stages' outputs: seen "
    "here with Beam 2.77 on a single 6,000-page input (46-235 pages lost in 5 of 7 runs with two "
    "worker processes, also with the code from before this was found; never in-process). The run's "
    "accounting reports such a loss (NOT BALANCED, exit code 3). The default is one in-process worker; use Dataflow or Flink to scale out.")


def _arg_value(args: List[str], name: str) -> Optional[str]:
    """The value of ``--name=value`` or ``--name value`` in a Beam argument list."""
    for i, a in enumerate(args):
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
        if a == name and i + 1 < len(args):
            return args[i + 1]
    return None


def default_beam_args(beam_args: List[str], num_workers: Optional[int]) -> List[str]:
    """Beam's local runner, one in-process worker unless told otherwise (see
    MULTI_WORKER_WARNING); naming the runner keeps Beam from trying to download
    Prism first."""
    args = list(beam_args)
    if not any(a.startswith("--runner") for a in args):
        args.append("--runner=DirectRunner")
    runner = _arg_value(args, "--runner")
    if runner in ("DirectRunner", "direct"):
        if not any(a.startswith("--direct_num_workers") for a in args):
            args.append(f"--direct_num_workers={num_workers or 1}")
        workers = int(_arg_value(args, "--direct_num_workers") or 1)
        if not any(a.startswith("--direct_running_mode") for a in args):
            args.append("--direct_running_mode=" + ("multi_processing" if workers > 1 else "in_memory"))
        if workers > 1:
            print(f"warning: {MULTI_WORKER_WARNING}", file=sys.stderr, flush=True)
    return args


@contextlib.contextmanager
def stderr_to(path: Optional[str]):
    """Send file descriptor 2 to ``path`` for the duration: the local runner's
    worker processes inherit it and log their start-up and shut-down there."""
    if not path:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(fd)
        os.close(saved)


OUTPUTS = (SUCCESS_MARKER, DOCUMENTS_DIR, TEXT_DIR, PAIRS_DIR, FETCHED_DIR, FETCH_FAILURES, "duplicates", "rejects", "stats.json", "errors.jsonl", "inputs.jsonl", "run.json",
           "report.html", "report.json")


def prepare_output(output: str, overwrite: bool) -> None:
    """Refuse to mix two runs in one directory (a stale shard would be read by any
    Parquet dataset reader); with ``overwrite`` the previous run's outputs go."""
    present = [name for name in OUTPUTS if FileSystems.exists(FileSystems.join(output, name))]
    if not present:
        return
    if not overwrite:
        raise FileExistsError(f"{output} already holds a run ({', '.join(present)}); "
                              f"choose another --output or pass --overwrite")
    for name in present:
        path = FileSystems.join(output, name)
        if name.endswith((".json", ".jsonl", ".html")):
            FileSystems.delete([path])
        else:
            matches = FileSystems.match([FileSystems.join(path, "*")])[0].metadata_list
            if matches:
                FileSystems.delete([m.path for m in matches])
            try:
                FileSystems.delete([path])
            except Exception:
                pass  # object stores have no directories to delete


def run_curation(inputs: List[str], output: str, cfg: CurationConfig, beam_args: List[str],
                 num_workers: Optional[int] = None, paths_prefix: str = DEFAULT_PATHS_PREFIX,
                 wait: bool = True, worker_log: Optional[str] = None, overwrite: bool = False,
                 progress: bool = False, progress_out=None) -> Optional[Dict]:
    """Run the job; ``progress``: a line on ``progress_out`` (the terminal's standard
    error by default) while a local runner works."""
    files = expand_inputs(inputs, paths_prefix)
    prepare_output(output, overwrite)
    args = default_beam_args(beam_args, num_workers)
    options = PipelineOptions(args)
    started = time.time()
    run_record = {
        "kind": "curation",
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "config": cfg.to_dict(),
        "code": code_version(),
        "inputs": files,
        "output": output,
        "beam_args": args,
        "python": platform.python_version(),
        "beam": beam.__version__,
    }
    if cfg.fetch.source == "archive":
        seen = probe_for_images([f["path"] for f in files])
        if seen["pages"] and not seen["images"]:
            warning = IMAGES_HINT.format(what=f"the first {seen['records']} records of the input hold "
                                              f"{seen['pages']} pages and no image")
            run_record["warnings"] = [warning]
            print(f"warning: {warning}", file=sys.stderr, flush=True)
    atomic_write(FileSystems.join(output, "run.json"), json.dumps(run_record, indent=2).encode())

    progress_dir = tempfile.mkdtemp(prefix="kosmos-progress-") if progress and wait else None
    p = beam.Pipeline(options=options)
    build_pipeline(p, [f["path"] for f in files], output, cfg, progress_dir)
    printer = None
    if progress_dir:
        sizes = [f["size"] for f in files]           # -1: not known (entries of a listing)
        total = sum(sizes) if all(size > 0 for size in sizes) else -1
        terminal = progress_out or open_terminal()
        printer = ProgressPrinter(progress_dir, len(files), total, terminal).start()
    try:
        with stderr_to(worker_log):
            result = p.run()
            if not wait:
                return None
            state = result.wait_until_finish()
    finally:
        if printer is not None:
            printer.stop()
            if progress_out is None:
                terminal.close()            # our own copy of the terminal's descriptor
        if progress_dir:
            shutil.rmtree(progress_dir, ignore_errors=True)
    run_record["state"] = str(state)
    run_record["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    run_record["seconds"] = round(time.time() - started, 3)
    try:  # the checksums the workers computed while streaming the inputs
        with FileSystems.open(FileSystems.join(output, "inputs.jsonl")) as fh:
            run_record["inputs"] = [json.loads(l) for l in fh.read().decode().splitlines() if l.strip()]
    except Exception:
        pass
    atomic_write(FileSystems.join(output, "run.json"), json.dumps(run_record, indent=2).encode())
    with FileSystems.open(FileSystems.join(output, "stats.json")) as fh:
        return json.loads(fh.read())


def format_stats(stats: Dict) -> str:
    lines = []
    for level in ("records", "images", "text_documents", "pairs"):
        if level not in stats:
            continue
        block = stats[level]
        lines.append(f"{level:<40} {'count':>10}")
        lines.append(f"  {'in':<38} {block['in']:>10}")
        lines.append(f"  {'kept':<38} {block['kept']:>10}")
        if "image_source" in block:
            lines.append(f"  {'image records (to the image join)':<38} {block['image_source']:>10}")
        for status in ("dropped", "error"):
            for reason, n in block[status].items():
                lines.append(f"  {status + ': ' + reason:<38} {n:>10}")
        mark = "balanced" if block["balanced"] else "NOT BALANCED"
        lines.append(f"  {'out (' + mark + ')':<38} {block['out']:>10}")
    d = stats["documents"]
    lines.append(f"documents written: {d['kept']} with {d['images']} images in {d['shards']} shards")
    for name, o in stats.get("outputs", {}).items():
        if name != DOCUMENTS_DIR:
            lines.append(f"{name} written: {o['rows']} rows in {o['shards']} shards")
    dec = stats.get("image_decodes", {})
    if dec:
        lines.append(f"images decoded: {dec.get('decoded', 0)} "
                     f"({dec.get('decoded_once_for_documents_and_pairs', 0)} shared by a document and a pair)")
    for warning in stats.get("warnings", []):
        lines.append(f"WARNING: {warning}")
    return "\n".join(lines)
