"""A run's accounting as the user sees it: ``stats.json`` made from the exact counts
(keys and blocks named by contract.reasons), the sampled rejects written as Parquet,
the warnings a run gives about itself, and the table ``kosmos curate`` prints."""

from __future__ import annotations

import hashlib
import io
import json
from typing import Dict, List, Optional

from contract.reasons import (DEDUP, DROPPED, ERROR, FETCH, FUNNELS, IMAGE_SOURCE, KEPT, OPTIONAL_LEVELS, RECORD,
                              TEXT_DEDUP, count_key)
from contract.schema import DOCUMENTS, OUTCOME_TRAIL, PAIRS, REJECT_SCHEMA, TEXTS

IMAGES_HINT = ("images come only from the input archives (--images archive), and {what}: Common Crawl "
               "WARCs hold pages, not images, so every document would end as no_usable_images. "
               "Use --images http (download them) or --images archive_then_http.")


def summarize(counts: Dict[str, int]) -> Dict:
    """Nested statistics with the balance check, from ``{"level/status/reason": n}``."""
    levels = {}
    for funnel in FUNNELS:
        level = funnel.level
        if level in OPTIONAL_LEVELS and not any(k.startswith(level + "/") for k in counts):
            continue          # an output that was switched off
        block = {"in": 0, KEPT: 0, IMAGE_SOURCE: 0, DROPPED: {}, ERROR: {}}
        for key, n in counts.items():
            parts = key.split("/", 2)
            if parts[0] != level:
                continue
            status = parts[1]
            reason = parts[2] if len(parts) > 2 else ""
            if status == funnel.entry:
                block["in"] += n
            elif status in (KEPT, IMAGE_SOURCE):
                block[status] += n
            elif status in (DROPPED, ERROR):
                block[status][reason] = block[status].get(reason, 0) + n
        if level != RECORD:
            block.pop(IMAGE_SOURCE)
        out_total = block[KEPT] + block.get(IMAGE_SOURCE, 0) + sum(block[DROPPED].values()) + sum(
            block[ERROR].values())
        block[DROPPED] = dict(sorted(block[DROPPED].items()))
        block[ERROR] = dict(sorted(block[ERROR].items()))
        block["out"] = out_total
        block["balanced"] = out_total == block["in"]
        levels[funnel.block] = block
    return levels


def no_images_warning(image_source: str, image_records: int, image_references: int) -> List[str]:
    """The run's own words when its image source could give it no image at all."""
    if image_source != "archive" or image_records or not image_references:
        return []
    return [IMAGES_HINT.format(what=f"the input held no image record for the {image_references} image "
                                    f"references of its pages")]


def build_stats(counts: Dict[str, int], config_json: str, image_source: str, manifest: Dict,
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
    decoded = count_key(FETCH, "decoded")
    stats["image_decodes"] = {k.split("/", 1)[1]: v for k, v in counts.items() if k.startswith(decoded)}
    if image_source != "archive":
        failed = count_key(FETCH, "http_failed") + "/"
        http = {"fetched": counts.get(count_key(FETCH, "http_fetched"), 0), "failed": {}}
        for k, v in counts.items():
            if k.startswith(failed):
                http["failed"][k.rsplit("/", 1)[1]] = v
        http["urls"] = http["fetched"] + sum(http["failed"].values())
        stats["http"] = http
    unsettled = "cc_unsettled_components"
    stats["dedup"] = {unsettled: counts.get(count_key(DEDUP, unsettled), 0)}
    if text_manifest is not None:
        stats["dedup"]["text_" + unsettled] = counts.get(count_key(TEXT_DEDUP, unsettled), 0)
    if outcomes_manifest is not None:
        # duplicate clusters whose kept copy was dropped later (transforms/accounting.SurvivorFates)
        for level, name in ((DEDUP, "clusters_survivor_dropped"), (TEXT_DEDUP, "text_clusters_survivor_dropped")):
            prefix = count_key(level, "survivor_dropped") + "/"
            stats["dedup"][name] = {k[len(prefix):]: v for k, v in counts.items() if k.startswith(prefix)}
    warnings = no_images_warning(image_source, stats["records"].get(IMAGE_SOURCE, 0),
                                 stats.get("images", {}).get("in", 0))
    if warnings:
        stats["warnings"] = warnings
    stats["counts"] = dict(sorted(counts.items()))
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
