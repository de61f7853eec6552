"""Image sources over HTTP (the image-source contract of ``transforms/images.py``):
``HttpImages`` downloads every distinct URL once; ``ArchiveThenHttp`` takes the
input archives' image records first and downloads only what they do not hold.

Each worker downloads a batch of URLs with a thread pool (``fetch.concurrency``
in flight, ``fetch.per_host`` per host). Every URL ends fetched or failed with a
reason, as a ``fetch``-level event; failures are written to
``fetch_failures.jsonl`` and fetched bytes to ``fetched/*.warc.gz`` so a later run
can take the latter as input and retry only the former (``fetch.only_urls``).

Downloaded images are judged as the archive's are (transforms/images.py): the
image-safety model (``safety``, loaded once per DoFn in ``setup``) and the evaluation
images (``eval_index``, a side input) before anything is stored.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import json
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from email.utils import parsedate_to_datetime
from typing import Any, Deque, Dict, NamedTuple, Optional, Tuple

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.utils.windowed_value import WindowedValue

from contract.reasons import FETCH, Reason, Work
from archives.writer import warc_response_record
from filters.config import FetchConfig, ImageConfig
from filters.http_fetch import ImageFetcher
from filters.images import judge_image
from filters.urls import normalize_url
from transforms.images import EVENTS, ImageResults, InArchiveImages, decode_events, eval_side_input, load_image_safety
from transforms.records import Event, ImageResult, Provenance
from transforms.write import atomic_write

FETCHED = "fetched"
HTTP_FAILED = Work.HTTP_FAILED
NOT_AN_IMAGE = (Reason.UNDECODABLE, Reason.EMPTY)


def _iso_date(http_date: str) -> str:
    return _parsed_date(http_date) or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@functools.lru_cache(maxsize=1024)
def _parsed_date(http_date: str) -> Optional[str]:
    """A Date header in ISO form, or None; the responses of one second share it."""
    try:
        return parsedate_to_datetime(http_date).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


class _Pending(NamedTuple):
    """A download handed to the pool, and what its outputs carry: the batch's window and side input."""
    url: str
    refs: list
    future: Future
    timestamp: Any
    window: Any
    eval_index: Any


class FetchBatch(beam.DoFn):
    """[(url, [(ref, position), ...]), ...] -> (ref, ImageResult) per reference.

    Within a bundle the pool is kept fed across batches: a batch's downloads are handed
    on, in the order they were asked for, once done, and at most twice ``fetch.batch_size``
    of them wait past the batch that asked for them (the rest at the bundle's end), so a slow
    answer does not leave the pool idle until it comes. Outputs carry their own batch's
    window and timestamp. Called without ``start_bundle`` (as a plain object), ``process``
    hands on a whole batch before it returns."""

    def __init__(self, fetch_cfg: FetchConfig, image_cfg: ImageConfig, max_bytes: int, safety=None):
        self.fetch_cfg, self.image_cfg, self.max_bytes = fetch_cfg, image_cfg, max_bytes
        self.safety = safety                # filters.config.SafetyConfig, or None: no safety model
        self.fetcher = self.pool = self.scorer = None
        self.pending: Optional[Deque[_Pending]] = None
        self.fetched = Metrics.counter("kosmos", "fetch.http_fetched")
        self.failed = Metrics.counter("kosmos", "fetch.http_failed")

    def setup(self):
        self.fetcher = ImageFetcher(self.fetch_cfg, self.max_bytes)
        self.pool = ThreadPoolExecutor(max_workers=max(1, self.fetch_cfg.concurrency))
        self.scorer = load_image_safety(self.safety)

    def teardown(self):
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)
        if self.fetcher is not None:
            self.fetcher.close()            # its kept-alive connections

    def start_bundle(self):
        self.pending = deque()

    def process(self, batch, timestamp=beam.DoFn.TimestampParam, window=beam.DoFn.WindowParam, eval_index=None):
        bundled = self.pending is not None
        pending = self.pending if bundled else deque()
        for url, refs in batch:
            pending.append(_Pending(url, refs, self.pool.submit(self.fetcher.fetch, url), timestamp, window,
                                    eval_index))
        if not bundled:
            while pending:
                yield from self._results(pending.popleft())
            return
        carry = 2 * max(1, self.fetch_cfg.batch_size)
        while pending and (pending[0].future.done() or len(pending) > carry):
            yield from self._windowed(pending.popleft())

    def finish_bundle(self):
        pending, self.pending = self.pending, None
        while pending:
            yield from self._windowed(pending.popleft())

    def _windowed(self, item: _Pending):
        windows = (item.window,)
        for out in self._results(item):
            if isinstance(out, pvalue.TaggedOutput):
                yield pvalue.TaggedOutput(out.tag, WindowedValue(out.value, item.timestamp, windows))
            else:
                yield WindowedValue(out, item.timestamp, windows)

    def _results(self, item: _Pending):
        url, refs = item.url, item.refs
        r = item.future.result()
        prov = Provenance(file=r.final_url or url, offset=-1)
        if r.reason is not None:
            self.failed.inc()
            yield pvalue.TaggedOutput(EVENTS, Event(FETCH, HTTP_FAILED, r.reason, url=url,
                                                    message=r.message, attempts=r.attempts))
            for ref, pos in refs:
                yield ref, ImageResult(pos, r.reason, None, prov, {"attempts": r.attempts}, url=url)
            return
        self.fetched.inc()
        verdict, stored = judge_image(r.data, self.image_cfg, self.scorer, item.eval_index)
        reason = None if verdict.keep else (Reason.NOT_AN_IMAGE if verdict.reason in NOT_AN_IMAGE else verdict.reason)
        yield pvalue.TaggedOutput(EVENTS, Event(FETCH, Work.HTTP_FETCHED, url=url, attempts=r.attempts))
        yield from decode_events(url, refs)
        if self.fetch_cfg.write_warc:
            yield pvalue.TaggedOutput(FETCHED, {"url": url, "final_url": r.final_url, "date": _iso_date(r.date),
                                                "content_type": r.content_type, "data": r.data})
        for ref, pos in refs:
            yield ref, ImageResult(pos, reason, stored, prov, verdict.scores, url=url)


class HttpImages(beam.PTransform):
    """References -> results by download. ``allowed`` (a PCollection of URLs, or None)
    limits downloads to those URLs; the others end with ``not_listed_reason``."""

    def __init__(self, fetch_cfg: FetchConfig, image_cfg: ImageConfig, max_bytes: int, allowed=None,
                 not_listed_reason: Reason = Reason.NOT_RETRIED, safety=None, eval_index=None):
        super().__init__()
        self.fetch_cfg, self.image_cfg, self.max_bytes = fetch_cfg, image_cfg, max_bytes
        self.allowed, self.not_listed_reason = allowed, not_listed_reason
        self.safety, self.eval_index = safety, eval_index      # as InArchiveImages takes them

    def expand(self, refs) -> ImageResults:
        grouped = (refs
                   | "AsKeyValue" >> beam.Map(lambda kv: (kv[0], kv[1])).with_output_types(Tuple[str, Any])
                   | "GroupByUrl" >> beam.GroupByKey())
        settled = None
        if self.allowed is not None:
            reason = self.not_listed_reason

            def split(element):
                url, groups = element
                refs_ = [r for rs in groups["refs"] for r in rs]
                if not refs_:
                    return
                if list(groups["allowed"]):
                    yield url, refs_
                else:
                    for ref, pos in refs_:
                        yield pvalue.TaggedOutput("settled", (ref, ImageResult(pos, reason, url=url)))

            parts = ({"refs": grouped, "allowed": self.allowed | "KeyAllowed" >> beam.Map(lambda u: (u, 1))}
                     | "JoinAllowedUrls" >> beam.CoGroupByKey()
                     | "OnlyListedUrls" >> beam.FlatMap(split).with_outputs("settled", main="fetch"))
            grouped, settled = parts["fetch"], parts["settled"]
        fetched = (grouped
                   | "ListRefs" >> beam.MapTuple(lambda url, rs: (url, list(rs)))
                   | "Batch" >> beam.BatchElements(min_batch_size=1, max_batch_size=self.fetch_cfg.batch_size)
                   | "Download" >> beam.ParDo(FetchBatch(self.fetch_cfg, self.image_cfg, self.max_bytes, self.safety),
                                              **eval_side_input(self.eval_index))
                   .with_outputs(EVENTS, FETCHED, main="results"))
        results = fetched["results"]
        if settled is not None:
            results = (results, settled) | "WithUnlisted" >> beam.Flatten()
        return ImageResults(results, fetched[EVENTS], fetched[FETCHED])


class ArchiveThenHttp(beam.PTransform):
    """The input archives first; what they do not hold is downloaded."""

    def __init__(self, image_records, image_cfg: ImageConfig, fetch_cfg: FetchConfig, max_bytes: int,
                 allowed=None, safety=None, eval_index=None):
        super().__init__()
        self.archive = InArchiveImages(image_records, image_cfg, max_bytes, safety, eval_index,
                                       user_agent=fetch_cfg.user_agent)
        self.http = HttpImages(fetch_cfg, image_cfg, max_bytes, allowed, not_listed_reason=Reason.NOT_IN_ARCHIVE,
                               safety=safety, eval_index=eval_index)

    def expand(self, refs) -> ImageResults:
        archive = refs | "InArchive" >> self.archive
        results = archive.results
        hits = results | "FoundInArchive" >> beam.Filter(lambda kv: kv[1].reason != Reason.NOT_IN_ARCHIVE)
        misses = (results
                  | "NotInArchive" >> beam.Filter(lambda kv: kv[1].reason == Reason.NOT_IN_ARCHIVE)
                  | "RefetchKey" >> beam.Map(lambda kv: (kv[1].url, (kv[0], kv[1].position))))
        http = misses | "Http" >> self.http
        return ImageResults((hits, http.results) | "ArchiveAndHttp" >> beam.Flatten(),
                            (archive.events, http.events) | "AllFetchEvents" >> beam.Flatten(), http.fetched)


def read_url_list(p: beam.Pipeline, path: str):
    """URLs from a fetch_failures.jsonl (its ``url`` field) or a plain list, normalised."""
    def parse(line: str) -> Optional[str]:
        line = line.strip()
        if not line:
            return None
        if line.startswith("{"):
            return normalize_url(json.loads(line)["url"])
        return normalize_url(line)

    return (p
            | "ReadUrlList" >> beam.io.ReadFromText(path)
            | "ParseUrls" >> beam.Map(parse)
            | "DropBlank" >> beam.Filter(lambda u: u is not None)
            | "DistinctUrls" >> beam.Distinct())


def failure_line(e: Event) -> str:
    return json.dumps({"url": e.url, "reason": e.reason, "attempts": e.attempts, "message": e.message},
                      sort_keys=True, ensure_ascii=False)


class WriteFetchedWarcs(beam.PTransform):
    """Fetched images -> ``{out_dir}/part-NNNNN-of-MMMMM.warc.gz`` (per-record gzip members,
    records sorted by URL, atomically renamed): the next run reads them as input."""

    def __init__(self, out_dir: str, num_shards: int):
        super().__init__()
        self.out_dir, self.num_shards = out_dir, num_shards

    def expand(self, fetched):
        n, out_dir = self.num_shards, self.out_dir

        def shard(rec: Dict) -> int:
            return int(hashlib.sha256(rec["url"].encode()).hexdigest()[:8], 16) % n

        def write(element):
            k, recs = element
            recs = sorted(recs, key=lambda r: r["url"])
            data = b"".join(gzip.compress(warc_response_record(
                r["url"], r["date"], 200, r["content_type"], r["data"],
                [("WARC-Kosmos-Final-URI", r["final_url"])] if r["final_url"] != r["url"] else None), mtime=0)
                for r in recs)
            name = f"part-{k:05d}-of-{n:05d}.warc.gz"
            atomic_write(FileSystems.join(out_dir, name), data)
            return name

        return (fetched
                | "KeyByShard" >> beam.Map(lambda r: (shard(r), r))
                | "GroupShards" >> beam.GroupByKey()
                | "WriteWarc" >> beam.Map(write))
