"""A run's accounting as the user sees it: ``stats.json`` made from the exact counts
(keys and blocks named by contract.reasons), the sampled rejects written as Parquet,
the warnings a run gives about itself, and the table ``kosmos curate`` prints."""

from __future__ import annotations

import hashlib
import io
import json
from typing import Dict, List, Optional

from contract.reasons import (DEDUP, DROPPED, ERROR, FETCH, FUNNELS, IMAGE_SOURCE, KEPT, OPTIONAL_LEVELS, TEXT_DEDUP,
                              CountKey, Level, Work)
from contract.schema import DOCUMENTS, OUTCOME_TRAIL, PAIRS, REJECT_SCHEMA, TEXTS
from filters.image_safety import NO_SCORER_WARNING

IMAGES_HINT = ("images come only from the input archives (--images archive), and {what}: Common Crawl "
               "WARCs hold pages, not images, so every document would end as no_usable_images. "
               "Use --images http (download them) or --images archive_then_http.")

Counts = Dict[CountKey, int]


def summarize(counts: Counts) -> Dict:
    """Nested statistics with the balance check, from the run's counts."""
    levels = {}
    present = {key.level for key in counts}
    for funnel in FUNNELS:
        level = funnel.level
        if level in OPTIONAL_LEVELS and level not in present:
            continue          # an output that was switched off
        block = {"in": 0, KEPT: 0, IMAGE_SOURCE: 0, DROPPED: {}, ERROR: {}}
        for key, n in counts.items():
            if key.level != level:
                continue
            if key.status == funnel.entry:
                block["in"] += n
            elif key.status in (KEPT, IMAGE_SOURCE):
                block[key.status] += n
            elif key.status in (DROPPED, ERROR):
                block[key.status][key.code] = block[key.status].get(key.code, 0) + n
        if level != Level.RECORD:
            block.pop(IMAGE_SOURCE)
        out_total = block[KEPT] + block.get(IMAGE_SOURCE, 0) + sum(block[DROPPED].values()) + sum(
            block[ERROR].values())
        block[DROPPED] = dict(sorted(block[DROPPED].items()))
        block[ERROR] = dict(sorted(block[ERROR].items()))
        block["out"] = out_total
        block["balanced"] = out_total == block["in"]
        levels[funnel.block] = {str(k): v for k, v in block.items()}
    return levels


def _details(counts: Counts, level: Level, work: Work) -> Dict[str, int]:
    """The counts of one kind of counted work, by detail."""
    return {key.code: n for key, n in counts.items() if key.level == level and key.status == work and key.code}


def no_images_warning(image_source: str, image_records: int, image_references: int) -> List[str]:
    """The run's own words when its image source could give it no image at all."""
    if image_source != "archive" or image_records or not image_references:
        return []
    return [IMAGES_HINT.format(what=f"the input held no image record for the {image_references} image "
                                    f"references of its pages")]


def build_stats(counts: Counts, config_json: str, image_source: str, manifest: Dict,
                text_manifest: Optional[Dict] = None, pairs_manifest: Optional[Dict] = None,
                outcomes_manifest: Optional[Dict] = None) -> Dict:
    """``stats.json``: the funnels, what each output holds, the work counted beside them."""
    stats = summarize(counts)
    stats["documents"] = {"kept": manifest["rows"], "images": manifest["images"],
                          "shards": len(manifest["shards"])}
    stats["outputs"] = {DOCUMENTS.directory: {"rows": manifest["rows"], "shards": len(manifest["shards"])}}
    for dataset, m in ((TEXTS, text_manifest), (PAIRS, pairs_manifest), (OUTCOME_TRAIL, outcomes_manifest)):
        if m is not None:
            stats["outputs"][dataset.directory] = {"rows": m["rows"], "shards": len(m["shards"])}
    decoded = {key.status.value: n for key, n in counts.items()
               if key.level == FETCH and key.status in (Work.DECODED, Work.DECODED_SHARED)}
    stats["image_decodes"] = dict(sorted(decoded.items()))
    if image_source != "archive":
        http = {"fetched": counts.get(CountKey(FETCH, Work.HTTP_FETCHED), 0),
                "failed": dict(sorted(_details(counts, FETCH, Work.HTTP_FAILED).items()))}
        http["urls"] = http["fetched"] + sum(http["failed"].values())
        stats["http"] = http
    unsettled = Work.UNSETTLED.value
    stats["dedup"] = {unsettled: counts.get(CountKey(DEDUP, Work.UNSETTLED), 0)}
    if text_manifest is not None:
        stats["dedup"]["text_" + unsettled] = counts.get(CountKey(TEXT_DEDUP, Work.UNSETTLED), 0)
    if outcomes_manifest is not None:
        # duplicate clusters whose kept copy was dropped later (transforms/accounting.SurvivorFates)
        for level, name in ((DEDUP, "clusters_survivor_dropped"), (TEXT_DEDUP, "text_clusters_survivor_dropped")):
            stats["dedup"][name] = dict(sorted(_details(counts, level, Work.SURVIVOR_DROPPED).items()))
    # personal data replaced in what each corpus keeps (filters/pii.py)
    stats["pii_replaced"] = {name: dict(sorted(_details(counts, level, Work.PII_REPLACED).items()))
                             for level, name in ((Level.RECORD, DOCUMENTS.directory), (Level.TEXT, TEXTS.directory),
                                                 (Level.PAIR, PAIRS.directory))}
    warnings = no_images_warning(image_source, stats["records"].get(IMAGE_SOURCE, 0),
                                 stats.get("images", {}).get("in", 0))
    if json.loads(config_json).get("safety", {}).get("image_scorer") == "none":
        warnings.append(NO_SCORER_WARNING)
    if warnings:
        stats["warnings"] = warnings
    stats["counts"] = dict(sorted((key.render(), n) for key, n in counts.items()))
    stats["config_sha256"] = hashlib.sha256(config_json.encode()).hexdigest()
    return stats


def reject_samples_parquet(rows: List[Dict]) -> bytes:
    """The sampled rejects as one small Parquet file, in a fixed order."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    # the whole row breaks ties: two outcomes of one record (two captions of a page) share a key
    rows = sorted(rows, key=lambda r: (r["level"], r["status"], r["reason"], r["sample_key"],
                                       json.dumps(r, sort_keys=True, default=str)))
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=REJECT_SCHEMA), buf, compression="zstd")
    return buf.getvalue()


def format_stats(stats: Dict) -> str:
    """The table ``kosmos curate`` prints at the end of a run."""
    lines = []
    for funnel in FUNNELS:
        if funnel.block not in stats:
            continue
        block = stats[funnel.block]
        lines.append(f"{funnel.block:<40} {'count':>10}")
        lines.append(f"  {'in':<38} {block['in']:>10}")
        lines.append(f"  {'kept':<38} {block['kept']:>10}")
        if IMAGE_SOURCE in block:
            lines.append(f"  {'image records (to the image join)':<38} {block[IMAGE_SOURCE]:>10}")
        for status in (DROPPED, ERROR):
            for reason, n in block[status].items():
                lines.append(f"  {status + ': ' + reason:<38} {n:>10}")
        mark = "balanced" if block["balanced"] else "NOT BALANCED"
        lines.append(f"  {'out (' + mark + ')':<38} {block['out']:>10}")
    d = stats["documents"]
    lines.append(f"documents written: {d['kept']} with {d['images']} images in {d['shards']} shards")
    for name, o in stats.get("outputs", {}).items():
        if name != DOCUMENTS.directory:
            lines.append(f"{name} written: {o['rows']} rows in {o['shards']} shards")
    dec = stats.get("image_decodes", {})
    if dec:
        lines.append(f"images decoded: {dec.get('decoded', 0)} "
                     f"({dec.get('decoded_once_for_documents_and_pairs', 0)} shared by a document and a pair)")
    for warning in stats.get("warnings", []):
        lines.append(f"WARNING: {warning}")
    return "\n".join(lines)
