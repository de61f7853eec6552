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

import json
from typing import Dict, List, Optional

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from contract.manifest import (DUPLICATES_DIR, ERRORS, FETCH_FAILURES, FETCHED_DIR, INPUTS, REJECT_SAMPLES, STATS,
                               SUCCESS_MARKER, success_record)
from contract.reasons import TEXT
from contract.schema import DOCUMENTS, OUTCOME_TRAIL, PAIRS, TEXTS
from filters.config import CurationConfig
from pipeline.stats import build_stats, reject_samples_parquet
from transforms.accounting import OUTCOMES, AccountOutcomes
from transforms.assemble import AssembleDocument
from transforms.corpora import PairsBeforeImages, PairsWithImages, TextRow
from transforms.dedup import Deduplicate
from transforms.http_images import (HTTP_FAILED, ArchiveThenHttp, HttpImages, WriteFetchedWarcs, failure_line,
                                    read_url_list)
from transforms.images import SETTLED, FetchImages, InArchiveImages, ListImageReferences
from transforms.pages import PagesToCandidates
from transforms.read import ReadAndResolve
from transforms.write import WriteShardedLines, WriteShards, WriteSortedLines, atomic_write


def build_pipeline(p: beam.Pipeline, paths: List[str], output: str, cfg: CurationConfig,
                   progress_dir: Optional[str] = None):
    """The job's graph on ``p``; returns the PCollection that writes ``stats.json``."""
    out = cfg.output

    def at(name: str) -> str:
        return FileSystems.join(output, name)

    def write_shards(rows, label: str, dataset):
        return rows | label >> WriteShards(at(dataset.directory), out.num_shards, out.compression,
                                           out.row_group_size, dataset)

    outcomes, audits = [], []

    # 1. Archives -> records -> HTML pages, revisits resolved; image records by location.
    files = (p
             | "ListInputFiles" >> beam.Create(paths)
             | "SpreadFilesOverWorkers" >> beam.Reshuffle())
    read = files | "ReadArchives" >> ReadAndResolve(cfg.records, progress_dir)
    outcomes.append(read.outcomes)
    (read.inputs
     | "InputLines" >> beam.Map(lambda d: json.dumps(d, sort_keys=True))
     | "WriteInputManifest" >> WriteSortedLines(at(INPUTS)))

    # 2. Cheap checks, extraction, English, spam/gibberish, images in text: once per
    #    page for the three outputs.
    candidates = read.pages | "PagesToCandidates" >> PagesToCandidates(cfg, progress_dir)
    outcomes.append(candidates.outcomes)

    # 3. Dedup on text (URL, exact, near), before any image is fetched or decoded.
    documents = candidates.documents | "Deduplicate" >> Deduplicate(cfg.dedup)
    outcomes.append(documents.outcomes)
    audits.append(documents.audit)

    # 4. Image references meet their bytes: one source for documents and pairs, each
    #    image judged once, images used by many pages (logos, icons) removed.
    refs = documents.kept | "ListImageReferences" >> beam.ParDo(
        ListImageReferences(cfg.documents.max_image_references, cfg.images.furniture_url_words,
                            cfg.captions)).with_outputs(SETTLED, OUTCOMES, main="refs")
    outcomes.append(refs[OUTCOMES])
    all_refs = [refs["refs"]]
    if out.pairs:
        pairs = candidates.pairs | "DistinctPairs" >> PairsBeforeImages()
        outcomes.append(pairs.outcomes)
        all_refs.append(pairs.output | "PairImageReferences" >> beam.Map(lambda c: (c.url, (c.ref, 0))))
    images = (tuple(all_refs)
              | "AllImageReferences" >> beam.Flatten()
              | "FetchImages" >> FetchImages(image_source(p, read.image_records, cfg), cfg.dedup.image_max_repeats,
                                             candidates.sightings))
    outcomes.append(images.events)
    if images.fetched is not None:
        (images.events
         | "OnlyFetchFailures" >> beam.Filter(lambda e: e.name == HTTP_FAILED)
         | "FailureLines" >> beam.Map(failure_line)
         | "WriteFetchFailures" >> WriteSortedLines(at(FETCH_FAILURES)))
        if cfg.fetch.write_warc:
            images.fetched | "WriteFetchedWarcs" >> WriteFetchedWarcs(at(FETCHED_DIR), out.num_shards)
    results = (images.results, refs[SETTLED]) | "AllImageResults" >> beam.Flatten()

    # 5. Documents meet their images: at most 5, half of the single-image ones dropped.
    document_results = (results
                        | "DocumentResults" >> beam.Filter(lambda kv: not kv[0].is_pair)
                        | "KeyResultsByDocId" >> beam.Map(lambda kv: (kv[0].page, kv[1])))
    assembled = ({"doc": documents.kept | "KeyByDocId" >> beam.Map(lambda c: (c.doc_id, c)),
                  "images": document_results}
                 | "JoinDocumentsWithImages" >> beam.CoGroupByKey()
                 | "CapImagesAndDropHalfOfSingleImageDocs" >> beam.ParDo(
                     AssembleDocument(cfg.documents)).with_outputs(OUTCOMES, main="rows"))
    outcomes.append(assembled[OUTCOMES])
    manifests = {"manifest": write_shards(assembled["rows"], "WriteShards", DOCUMENTS)}

    # The other two Kosmos corpora: image-caption pairs and text-only documents.
    if out.pairs:
        pair_results = results | "PairResults" >> beam.Filter(lambda kv: kv[0].is_pair)
        pair_rows = pairs.output | "PairsWithImages" >> PairsWithImages(pair_results)
        outcomes.append(pair_rows.outcomes)
        manifests["pairs_manifest"] = write_shards(pair_rows.output, "WritePairShards", PAIRS)
    if out.text:
        texts = candidates.texts | "DeduplicateText" >> Deduplicate(cfg.dedup, TEXT)
        text_rows = texts.kept | "TextRows" >> beam.ParDo(TextRow()).with_outputs(OUTCOMES, main="rows")
        outcomes += [texts.outcomes, text_rows[OUTCOMES]]
        audits.append(texts.audit)
        manifests["text_manifest"] = write_shards(text_rows["rows"], "WriteTextShards", TEXTS)

    # 6. The audit trail and the accounting: every record and reference in one place.
    (tuple(audits) | "AllDuplicateLines" >> beam.Flatten()
     | "WriteDuplicates" >> WriteShardedLines(at(DUPLICATES_DIR), out.num_shards))
    accounting = (tuple(outcomes)
                  | "AccountOutcomes" >> AccountOutcomes(cfg.audit.samples_per_reason, cfg.audit.seed,
                                                         trail=cfg.audit.outcomes))
    counts = accounting.counts
    accounting.errors | "WriteErrors" >> WriteSortedLines(at(ERRORS))
    if accounting.trail is not None:
        manifests["outcomes_manifest"] = write_shards(accounting.trail, "WriteOutcomes", OUTCOME_TRAIL)
    (accounting.samples
     | "CollectSamples" >> beam.combiners.ToList()
     | "WriteSamples" >> beam.Map(lambda rows: atomic_write(at(REJECT_SAMPLES), reject_samples_parquet(rows))))
    config_json = cfg.to_json()
    image_source_name = cfg.fetch.source

    def write_stats(counts: Dict[str, int], **manifests) -> Dict:
        stats = build_stats(counts, config_json, image_source_name, **manifests)
        atomic_write(at(STATS), json.dumps(stats, indent=2, sort_keys=True).encode())
        # Written last, after every dataset's manifest and the stats: readers (the
        # trainer, the report) take the run's datasets only when this exists.
        atomic_write(at(SUCCESS_MARKER), success_record(stats["outputs"], stats["config_sha256"]))
        return stats

    return counts | "WriteStats" >> beam.Map(
        write_stats, **{name: beam.pvalue.AsSingleton(m) for name, m in manifests.items()})


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
