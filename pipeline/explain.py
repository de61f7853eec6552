"""``kosmos explain``: the whole path of one record through a curation run, read from
the run's ``outcomes/`` dataset (contract.schema.OUTCOME_SCHEMA). No Beam.

A record is named by its URL or by where it lies (``--file`` and ``--offset``). The
answer is every end the record reached: how the record funnel ended (the stage that
removed it, the reason, the scores), how the page ended in the text and pair
funnels, every image reference of its document, and for a duplicate the copy kept
instead and how that copy ended.
"""

from __future__ import annotations

import json
import os
from typing import Dict, List, Optional, Sequence

from contract.manifest import join, shard_files
from contract.reasons import IMAGE, PAIR, RECORD, TEXT
from contract.schema import OUTCOME_TRAIL


class NoTrail(RuntimeError):
    """The run wrote no ``outcomes/`` (``audit.outcomes`` off, or an older run)."""


def _dataset(run_dir: str):
    import pyarrow.dataset as ds
    try:
        files = shard_files(join(run_dir, OUTCOME_TRAIL.directory))
    except FileNotFoundError as e:
        raise NoTrail(f"{run_dir} has no {OUTCOME_TRAIL.directory}/ (run with audit.outcomes=true): {e}") from e
    return ds.dataset(files, format="parquet", schema=OUTCOME_TRAIL.schema)


def _rows(dataset, expression) -> List[Dict]:
    return dataset.to_table(filter=expression).to_pylist()


def find(run_dir: str, url: Optional[str] = None, file: Optional[str] = None,
         offset: Optional[int] = None) -> List[Dict]:
    """Every outcome row of the record(s) named: the rows at its location (record,
    text and pair ends), the rows of its document (image references) and, for a URL
    that is an image, its rows as an image of other pages."""
    import pyarrow.compute as pc
    data = _dataset(run_dir)
    if url is not None:
        from filters.urls import normalize_url
        urls = sorted({url, normalize_url(url) or url})
        direct = _rows(data, pc.field("url").isin(urls))
    else:
        where = pc.field("offset") == offset
        direct = [r for r in _rows(data, where) if _same_file(r["file"], file)]
    locations = {(r["file"], r["offset"], r["inner_offset"]) for r in direct if r["level"] in (RECORD, TEXT, PAIR)}
    doc_ids = {r["doc_id"] for r in direct if r["doc_id"] and r["level"] != IMAGE}
    rows = {r["outcome_id"]: r for r in direct}
    if locations:
        offsets = sorted({o for _, o, _ in locations})
        for r in _rows(data, pc.field("offset").isin(offsets)):
            if (r["file"], r["offset"], r["inner_offset"]) in locations:
                rows[r["outcome_id"]] = r
                if r["doc_id"] and r["level"] != IMAGE:
                    doc_ids.add(r["doc_id"])
    if doc_ids:
        for r in _rows(data, pc.field("doc_id").isin(sorted(doc_ids))):
            rows[r["outcome_id"]] = r
    return sorted(rows.values(), key=_order)


def _same_file(recorded: str, asked: Optional[str]) -> bool:
    """``--file`` as given to the job, or just its name."""
    return asked is None or recorded == asked or os.path.basename(recorded) == os.path.basename(asked)


_LEVEL_ORDER = {RECORD: 0, TEXT: 1, IMAGE: 2, PAIR: 3}


def _order(r: Dict):
    return (r["file"], r["offset"], r["inner_offset"], _LEVEL_ORDER.get(r["level"], 9), r["url"], r["outcome_id"])


def final_record_rows(rows: Sequence[Dict]) -> List[Dict]:
    """The record-level ends among ``rows``: one per archive record."""
    return [r for r in rows if r["level"] == RECORD]


def _end(r: Dict) -> str:
    text = r["status"] + (f": {r['reason']}" if r["reason"] else "")
    if r["stage"]:
        text += f" (at '{r['stage']}')"
    return text


def _scores(r: Dict, limit: int = 240) -> str:
    if not r["scores"]:
        return ""
    scores = {k: v for k, v in json.loads(r["scores"]).items() if not k.startswith("survivor_")}
    text = json.dumps(scores, sort_keys=True)
    return "" if text == "{}" else "      scores " + (text if len(text) <= limit else text[:limit] + "...")


def describe(rows: Sequence[Dict]) -> str:
    """The path of the named record(s), as ``kosmos explain`` prints it."""
    lines: List[str] = []
    records = final_record_rows(rows)
    by_doc: Dict[str, List[Dict]] = {}
    for r in rows:
        if r["level"] == IMAGE:
            by_doc.setdefault(r["doc_id"], []).append(r)
    shown_images = set()
    for rec in records:
        lines.append(f"{rec['url']}")
        lines.append(f"  archive {rec['file']} @ {rec['offset']}"
                     + (f" +{rec['inner_offset']}" if rec["inner_offset"] else "")
                     + (f"  document {rec['doc_id']}" if rec["doc_id"] else ""))
        lines.append(f"  interleaved documents: {_end(rec)}")
        if rec["status"] == "image_source":
            lines.append("      an image record: its bytes wait for the pages that show it")
        if _scores(rec):
            lines.append(_scores(rec))
        if rec["message"] and not rec["survivor_doc_id"]:
            lines.append(f"      {rec['message']}")
        if rec["survivor_doc_id"]:
            lines.append(f"      kept instead: {rec['survivor_url']} (document {rec['survivor_doc_id']}), which ended "
                         f"{rec['survivor_status'] or '?'}" + (f": {rec['survivor_reason']}" if rec["survivor_reason"]
                                                              else ""))
        here = (rec["file"], rec["offset"], rec["inner_offset"])
        for r in rows:
            if (r["file"], r["offset"], r["inner_offset"]) != here or r["level"] == RECORD:
                continue
            if r["level"] == TEXT:
                lines.append(f"  text corpus: {_end(r)}")
                if r["survivor_doc_id"]:
                    lines.append(f"      kept instead: {r['survivor_url']}, which ended {r['survivor_status']}"
                                 + (f": {r['survivor_reason']}" if r["survivor_reason"] else ""))
            elif r["level"] == PAIR:
                lines.append(f"  pair of image {r['url']}: {_end(r)}")
        for r in by_doc.get(rec["doc_id"], []) if rec["doc_id"] else []:
            shown_images.add(r["outcome_id"])
            lines.append(f"  image {r['url']}: {_end(r)}")
            if _scores(r):
                lines.append(_scores(r))
    for r in rows:
        if r["level"] == IMAGE and r["outcome_id"] not in shown_images:
            lines.append(f"{r['url']} as an image of document {r['doc_id']}: {_end(r)}")
            if _scores(r):
                lines.append(_scores(r))
    return "\n".join(lines)
