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
from filters.decontaminate import build_index
from filters.safety_urls import BlockedSites
from pipeline.stats import build_stats, reject_samples_parquet
from transforms.accounting import AccountedParDo, AccountOutcomes, ApplyFilter, ledger_of
from transforms.assemble import AssembleDocuments
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

    audits = []

    # The evaluation sets to keep out (--decontaminate), hashed once here into a side
    # input every worker reads: captions, 13-word n-grams, images' perceptual hashes.
    eval_index = None
    if cfg.safety.decontaminate:
        index = build_index(list(cfg.safety.decontaminate), cfg.safety.decontaminate_images_root,
                            ngram_words=cfg.safety.decontaminate_ngram_words,
                            image_max_distance=cfg.safety.same_image_max_distance)
        eval_index = beam.pvalue.AsSingleton(p | "EvaluationIndex" >> beam.Create([index]))

    # 1. Archives -> records -> HTML pages, revisits resolved; image records by location.
    files = (p
             | "ListInputFiles" >> beam.Create(paths)
             | "SpreadFilesOverWorkers" >> beam.Reshuffle())
    read = files | "ReadArchives" >> ReadAndResolve(cfg.records, progress_dir)
    (read.inputs
     | "InputLines" >> beam.Map(lambda d: json.dumps(d, sort_keys=True))
     | "WriteInputManifest" >> WriteSortedLines(at(INPUTS)))

    # 2. Sites not to be used (adult domains, banned words in the URL, the user's own
    #    lists), decided on the URL before anything reads the page; then the cheap
    #    checks, extraction, English, spam/gibberish, images in text: once per page for
    #    the three outputs.
    pages = read.pages | "BlockedSites" >> ApplyFilter(BlockedSites(cfg.safety))
    candidates = pages.output | "PagesToCandidates" >> PagesToCandidates(cfg, progress_dir, eval_index)

    # 3. Dedup on text (URL, exact, near), before any image is fetched or decoded.
    documents = candidates.documents | "Deduplicate" >> Deduplicate(cfg.dedup)
    audits.append(documents.audit)

    # 4. Image references meet their bytes: one source for documents and pairs, each
    #    image judged once, images used by many pages (logos, icons) removed.
    refs = documents.kept | "ListImageReferences" >> AccountedParDo(
        ListImageReferences(cfg.documents.max_image_references, cfg.images.furniture_url_words,
                            cfg.captions, cfg.safety), SETTLED, main="refs")
    all_refs = [refs["refs"]]
    if out.pairs:
        pairs = candidates.pairs | "DistinctPairs" >> PairsBeforeImages()
        all_refs.append(pairs.output | "PairImageReferences" >> beam.Map(lambda c: (c.url, (c.ref, 0))))
    images = (tuple(all_refs)
              | "AllImageReferences" >> beam.Flatten()
              | "FetchImages" >> FetchImages(image_source(p, read.image_records, cfg, eval_index), cfg.dedup.image_max_repeats,
                                             candidates.sightings))
    if images.fetched is not None:
        (images.events
         | "OnlyFetchFailures" >> beam.Filter(lambda e: e.name == HTTP_FAILED)
         | "FailureLines" >> beam.Map(failure_line)
         | "WriteFetchFailures" >> WriteSortedLines(at(FETCH_FAILURES)))
        if cfg.fetch.write_warc:
            images.fetched | "WriteFetchedWarcs" >> WriteFetchedWarcs(at(FETCHED_DIR), out.num_shards)
    results = (images.results, refs[SETTLED]) | "AllImageResults" >> beam.Flatten()

    # 5. Documents meet their images: at most 5, one of each set of images (the newest),
    #    half of the single-image ones dropped.
    document_results = (results
                        | "DocumentResults" >> beam.Filter(lambda kv: not kv[0].is_pair)
                        | "KeyResultsByDocId" >> beam.Map(lambda kv: (kv[0].page, kv[1])))
    assembled = ((documents.kept, document_results)
                 | "AssembleDocuments" >> AssembleDocuments(cfg.documents, cfg.safety.dedup_image_sets))
    manifests = {"manifest": write_shards(assembled["rows"], "WriteShards", DOCUMENTS)}

    # The other two Kosmos corpora: image-caption pairs and text-only documents.
    if out.pairs:
        pair_results = results | "PairResults" >> beam.Filter(lambda kv: kv[0].is_pair)
        pair_rows = pairs.output | "PairsWithImages" >> PairsWithImages(pair_results)
        manifests["pairs_manifest"] = write_shards(pair_rows.output, "WritePairShards", PAIRS)
    if out.text:
        texts = candidates.texts | "DeduplicateText" >> Deduplicate(cfg.dedup, TEXT)
        text_rows = texts.kept | "TextRows" >> AccountedParDo(TextRow(), main="rows")
        audits.append(texts.audit)
        manifests["text_manifest"] = write_shards(text_rows["rows"], "WriteTextShards", TEXTS)

    # 6. The audit trail and the accounting: every record and reference in one place
    #    (every accounted step entered its outcomes in the pipeline's ledger).
    (tuple(audits) | "AllDuplicateLines" >> beam.Flatten()
     | "WriteDuplicates" >> WriteShardedLines(at(DUPLICATES_DIR), out.num_shards))
    accounting = (ledger_of(p)
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


def image_source(p: beam.Pipeline, image_records, cfg: CurationConfig, eval_index=None) -> beam.PTransform:
    """The image source chosen by ``fetch.source`` (all follow one contract; the
    config refused any other value when it was loaded)."""
    f = cfg.fetch
    allowed = read_url_list(p, f.only_urls) if f.only_urls else None
    if f.source == "archive":
        return InArchiveImages(image_records, cfg.images, cfg.records.max_image_bytes, safety=cfg.safety,
                               eval_index=eval_index, user_agent=f.user_agent)
    if f.source == "http":
        return HttpImages(f, cfg.images, cfg.records.max_image_bytes, allowed, safety=cfg.safety,
                          eval_index=eval_index)
    return ArchiveThenHttp(image_records, cfg.images, f, cfg.records.max_image_bytes, allowed,  # archive_then_http
                           safety=cfg.safety, eval_index=eval_index)
