"""``kosmos report``: what a curation run read, what each filter removed and why.

One self-contained HTML file (inline SVG charts, inline thumbnails; no script, font
or stylesheet from anywhere: it opens from disk with no network) and a JSON
summary whose numbers are those of ``stats.json``. ``kosmos report A B`` compares
two runs filter by filter.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
import re
from collections import Counter
from typing import Dict, List, Optional, Sequence, Tuple

from contract.manifest import MANIFEST, REJECT_SAMPLES, RUN_RECORD, STATS, SUCCESS_MARKER
from contract.reasons import (DROPPED, ERROR, FUNNEL_BLOCKS, IMAGE, IMAGE_SOURCE, KEPT, RECORD, TEXT, CountKey, Reason,
                              Stage, parse_reason, record_stage)
from contract.schema import DOCUMENTS


# -- reading a run ----------------------------------------------------------------------
def _read_json(path: str):
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


class IncompleteRun(RuntimeError):
    """A run directory whose job never finished (no ``_SUCCESS``)."""


def load_run(run_dir: str, max_docs: int = 100_000, allow_incomplete: bool = False) -> Dict:
    if not allow_incomplete and not os.path.exists(os.path.join(run_dir, SUCCESS_MARKER)):
        raise IncompleteRun(f"{run_dir}: the run has not finished (no {SUCCESS_MARKER}: killed, failed or still "
                            f"running); its figures would be partial. Pass --allow_incomplete to report anyway.")
    stats = _read_json(os.path.join(run_dir, STATS))
    run = _read_json(os.path.join(run_dir, RUN_RECORD)) if os.path.exists(os.path.join(run_dir, RUN_RECORD)) else {}
    samples = []
    sample_path = os.path.join(run_dir, REJECT_SAMPLES)
    if os.path.exists(sample_path):
        import pyarrow.parquet as pq
        samples = pq.read_table(sample_path).to_pylist()
    documents_dir = os.path.join(run_dir, DOCUMENTS.directory)
    return {"dir": run_dir, "stats": stats, "run": run, "samples": samples,
            "distributions": document_distributions(documents_dir, max_docs),
            "shown": shown_documents(documents_dir)}


def shown_documents(documents_dir: str, n: int = 12) -> List[Dict]:
    """The kept documents the report shows as a reader sees them: ``n`` of them,
    spread over the shards (the first rows of each, in turn), with their images."""
    manifest = os.path.join(documents_dir, MANIFEST)
    if not os.path.exists(manifest):
        return []
    import pyarrow.parquet as pq
    per_shard = []
    for entry in _read_json(manifest)["shards"]:
        pf = pq.ParquetFile(os.path.join(documents_dir, entry["file"]))
        rows = []
        for batch in pf.iter_batches(columns=["doc_id", "url", "title", "items", "images", "scores"], batch_size=8):
            rows.extend(batch.to_pylist())
            if len(rows) >= n:
                break
        per_shard.append(rows[:n])
    shown = []
    for i in range(n):
        for rows in per_shard:
            if i < len(rows) and len(shown) < n:
                shown.append(rows[i])
    return shown


def document_distributions(documents_dir: str, max_docs: int) -> Dict[str, List[float]]:
    """Per-document figures of the kept documents (the first ``max_docs`` in shard order)."""
    out = {"images_per_document": [], "image_width": [], "image_height": [], "language_score": [], "words": []}
    manifest = os.path.join(documents_dir, MANIFEST)
    if not os.path.exists(manifest):
        return out
    import pyarrow.parquet as pq
    seen = 0
    for entry in _read_json(manifest)["shards"]:
        pf = pq.ParquetFile(os.path.join(documents_dir, entry["file"]))
        for batch in pf.iter_batches(columns=["num_images", "images", "scores"], batch_size=256):
            for row in batch.to_pylist():
                out["images_per_document"].append(row["num_images"])
                for im in row["images"]:
                    out["image_width"].append(im["original_width"])
                    out["image_height"].append(im["original_height"])
                out["language_score"].append(row["scores"]["language_score"])
                out["words"].append(row["scores"]["words"])
                seen += 1
                if seen >= max_docs:
                    return out
    return out


def funnel(stats: Dict) -> List[Tuple[str, int]]:
    """(stage, records remaining after it) down the record funnel, stages and reasons
    as contract.reasons names them. A reason the registry does not know (a run made
    by other code) gets a row of its own, named, after the stages."""
    rec = stats["records"]
    removed = dict(rec[DROPPED])
    for reason, n in rec[ERROR].items():
        removed[reason] = removed.get(reason, 0) + n
    gone = {stage: 0 for stage in Stage}
    gone[Stage.HTML] += rec.get(IMAGE_SOURCE, 0)      # image records leave with the HTML pages
    unregistered = {}
    for reason, n in removed.items():
        stage = record_stage(reason)
        if stage is None:
            unregistered[reason] = n
        else:
            gone[stage] += n
    rows = [("records read", rec["in"])]
    remaining = rec["in"]
    for stage in Stage:
        remaining -= gone[stage]
        rows.append((stage.label, remaining))
    for reason, n in sorted(unregistered.items()):
        remaining -= n
        rows.append((f"unregistered reason {reason}", remaining))
    rows.append(("documents kept", rec[KEPT]))
    return rows


def levels_of(stats: Dict) -> List[str]:
    """The accounting blocks a run has (text and pairs only when those outputs were on)."""
    return [b for b in FUNNEL_BLOCKS if b in stats]


def summary(run: Dict) -> Dict:
    stats = run["stats"]
    drops = {}
    for level in levels_of(stats):
        block = stats[level]
        total = block["in"] or 1
        drops[level] = {f"{status}:{reason}": {"count": n, "rate": n / total}
                        for status in (DROPPED, ERROR) for reason, n in block[status].items()}
    d = run["distributions"]
    return {
        "run_dir": run["dir"],
        "accounting": {level: {"in": stats[level]["in"], "out": stats[level]["out"],
                               "kept": stats[level][KEPT], "balanced": stats[level]["balanced"]}
                       for level in levels_of(stats)},
        "documents": stats["documents"],
        "outputs": stats.get("outputs", {}),
        "image_decodes": stats.get("image_decodes", {}),
        "funnel": [{"stage": s, "remaining": n} for s, n in funnel(stats)],
        "drops": drops,
        "samples_per_reason": dict(Counter(CountKey.of_codes(s["level"], s["status"], s["reason"]).render()
                                         for s in run["samples"])),
        "distributions": {k: {"n": len(v), "mean": (sum(v) / len(v)) if v else None} for k, v in d.items()},
    }


# -- drawing ------------------------------------------------------------------------------
def _esc(x) -> str:
    return html.escape(str(x), quote=True)


_WEB_URL = re.compile(r"https?://", re.IGNORECASE)


def _link(url, shown: int) -> str:
    """An archived URL as a link only when it is http(s): a page's URI is the crawl's
    data, and a ``javascript:`` (or ``data:``) one would run when clicked."""
    url = str(url or "")
    text = _esc(url[:shown])
    return f"<a href='{_esc(url)}'>{text}</a>" if _WEB_URL.match(url) else f"<span class='url'>{text}</span>"


def bar_chart(items: Sequence[Tuple[str, float]], width: int = 720, bar_h: int = 22, color: str = "#3b6ea8",
              label_w: int = 300, fmt=lambda v: f"{v:,.0f}") -> str:
    if not items:
        return "<p class='muted'>nothing to show</p>"
    top = max(v for _, v in items) or 1
    h = bar_h * len(items) + 10
    parts = [f"<svg class='chart' role='img' width='{width}' height='{h}' viewBox='0 0 {width} {h}' "
             f"xmlns='http://www.w3.org/2000/svg'>"]
    for i, (label, v) in enumerate(items):
        y = 5 + i * bar_h
        w = max(1, int((width - label_w - 90) * v / top)) if v else 0
        parts.append(f"<text x='{label_w - 6}' y='{y + bar_h * 0.68}' text-anchor='end' font-size='12'>"
                     f"{_esc(label)}</text>")
        parts.append(f"<rect x='{label_w}' y='{y + 3}' width='{w}' height='{bar_h - 6}' fill='{color}'/>")
        parts.append(f"<text x='{label_w + w + 6}' y='{y + bar_h * 0.68}' font-size='12'>{_esc(fmt(v))}</text>")
    parts.append("</svg>")
    return "".join(parts)


def histogram(values: Sequence[float], bins: int = 12, integer: bool = False, color: str = "#5a9a5a") -> str:
    if not values:
        return "<p class='muted'>no kept documents</p>"
    lo, hi = min(values), max(values)
    if integer:
        counts = Counter(int(v) for v in values)
        items = [(str(k), counts[k]) for k in range(int(lo), int(hi) + 1)]
    else:
        if hi == lo:
            hi = lo + 1
        step = (hi - lo) / bins
        counts = Counter(min(int((v - lo) / step), bins - 1) for v in values)
        items = [(f"{lo + i * step:,.2f} - {lo + (i + 1) * step:,.2f}", counts[i]) for i in range(bins)]
    return bar_chart(items, width=560, bar_h=18, color=color, label_w=170)


def _thumbnail(sample: Dict, max_side: int = 96) -> Optional[str]:
    """Re-read the dropped image's record from its archive and shrink it; None when
    the archive is not at hand or the bytes do not decode."""
    reason = parse_reason(sample["reason"])
    if sample["level"] != IMAGE or reason is None or not reason.judged_on_image:
        return None
    rec = _read_record(sample)
    if rec is None:
        return None
    from filters.records import RecordKind, classify
    if classify(rec).kind is not RecordKind.IMAGE:
        return None
    return _data_uri(rec.payload, max_side, png=True)


def _data_uri(data: bytes, max_side: int, png: bool = False) -> Optional[str]:
    """Image bytes shrunk to an inline data URI (the report never links out): PNG
    keeps a reject's transparency (a spacer shows as what it is), JPEG keeps kept
    documents' photographs small. None when the bytes do not decode."""
    try:
        from PIL import Image
        img = Image.open(io.BytesIO(data))
        img.seek(0)
        img = img.convert("RGBA" if png else "RGB")
        img.thumbnail((max_side, max_side))
        buf = io.BytesIO()
        img.save(buf, format="PNG") if png else img.save(buf, format="JPEG", quality=80)
        mime = "png" if png else "jpeg"
        return f"data:image/{mime};base64," + base64.b64encode(buf.getvalue()).decode()
    except Exception:
        return None


def _reader_html(paragraphs: Sequence[Tuple[str, object]], max_chars: int = 2500) -> str:
    """Text and images in reading order. ``paragraphs``: (kind, value) where kind is
    "text", "cut" (a paragraph the job removed: value (text, reason)), or "image" (a
    data URI or None, and a caption). Past ``max_chars`` of text, runs of paragraphs
    fold into a "[... N paragraphs, W words ...]" line; every image is still shown."""
    out: List[str] = []
    size = 0
    folded = [0, 0]                          # paragraphs and words folded since the last shown item

    def unfold():
        if folded[0]:
            out.append(f"<p class='muted'>[... {folded[0]} paragraphs, {folded[1]:,} words ...]</p>")
            folded[0] = folded[1] = 0

    for kind, value in paragraphs:
        if kind in ("text", "cut"):
            text, reason = (value, None) if kind == "text" else value
            if size >= max_chars:
                folded[0] += 1
                folded[1] += len(text.split())
                continue
            size += len(text)
            out.append(f"<p>{_esc(text)}</p>" if reason is None else
                       f"<p class='cut' title='cut: {_esc(reason)}'><span class='tag'>cut: {_esc(reason)}</span> "
                       f"{_esc(text)}</p>")
        elif kind == "image":
            unfold()
            uri, caption = value
            out.append(f"<figure><img class='inline' src='{uri}' alt='{_esc(caption)}'>"
                       f"<figcaption>{_esc(caption[:120])}</figcaption></figure>" if uri else
                       f"<figure class='noimg'><span>image</span><figcaption>{_esc(caption[:120])}"
                       f"</figcaption></figure>")
    unfold()
    return "<div class='reader'>" + "".join(out) + "</div>"


def _kept_documents_html(shown: List[Dict]) -> str:
    """Kept documents as a trainer reads them: the paragraphs, with each image where it stands."""
    if not shown:
        return "<p class='muted'>no document was kept</p>"
    parts = []
    for row in shown:
        seq: List[Tuple[str, object]] = []
        for item in row["items"]:
            if item["type"] == "text":
                seq.append(("text", item["text"]))
            else:
                im = row["images"][item["image"]]
                seq.append(("image", (_data_uri(im["data"], 240), im.get("alt") or im["url"])))
        words = (row.get("scores") or {}).get("words")
        parts.append(f"<details class='doc' open data-doc='{_esc(row['doc_id'])}'><summary>"
                     f"<b>{_esc(row['title'] or '')}"
                     f"</b> {_link(row['url'], 100)} <span class='muted'>"
                     f"{len(row['images'])} images, {words} words</span></summary>{_reader_html(seq)}</details>")
    return "\n".join(parts)



def reject_reader(sample: Dict, text_cfg=None) -> Optional[str]:
    """A page rejected after extraction, re-read from its archive and extracted again:
    its paragraphs in reading order (the ones the job cut marked with their reason) and
    where its images stand. None when the archive is not at hand or the reason is
    decided before extraction."""
    stage = record_stage(sample["reason"])
    if sample["level"] not in (RECORD, TEXT) or stage is None or not stage.reads_as_document:
        return None
    rec = _read_record(sample)
    if rec is None:
        return None
    from filters.config import TextQualityConfig
    from filters.html import decode_html, extract_content
    from filters.text_quality import paragraph_cuts
    try:
        text, _ = decode_html(rec.payload, rec.http_header("content-type"))
        content = extract_content(text, rec.target_uri)
    except Exception:
        return None
    cuts = iter(paragraph_cuts([i.text for i in content.items if i.kind == "text"], text_cfg or TextQualityConfig(),
                               english=sample["reason"] != Reason.NON_ENGLISH))
    seq: List[Tuple[str, object]] = []
    for item in content.items:
        if item.kind == "text":
            cut = next(cuts)
            seq.append(("text", item.text) if cut is None else ("cut", (item.text, cut)))
        else:
            seq.append(("image", (None, item.alt or item.url or "")))
    return _reader_html(seq, max_chars=1500)


def _text_config(meta: Dict):
    """The run's own text settings (run.json), for re-reading its rejects; None: defaults."""
    try:
        from filters.config import CurationConfig
        return CurationConfig.from_dict(meta["config"]).text
    except Exception:
        return None


def _read_record(sample: Dict):
    path, offset = sample["file"], sample["offset"]
    if not path or offset is None or offset < 0 or sample.get("inner_offset") or not os.path.exists(path):
        return None
    try:
        from archives.records import ArchiveRecord, iter_archive
        with open(path, "rb") as fh:
            fh.seek(offset)
            rec = next(iter(iter_archive(fh, path)), None)
        return rec if isinstance(rec, ArchiveRecord) else None
    except Exception:
        return None


CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:24px;color:#222;max-width:1100px}
h1{font-size:22px} h2{font-size:18px;margin-top:28px;border-bottom:1px solid #ddd;padding-bottom:4px}
table{border-collapse:collapse;font-size:13px} td,th{border:1px solid #ddd;padding:3px 8px;text-align:left}
td.num,th.num{text-align:right} .muted{color:#777} .ok{background:#e7f5e7;border:1px solid #7bb27b;padding:10px}
.bad{background:#fde2e2;border:3px solid #c0392b;padding:14px;font-size:20px;font-weight:bold;color:#8e1b10}
details{margin:4px 0} summary{cursor:pointer} .snippet{max-width:520px;font-size:12px;color:#444}
.grid{display:grid;grid-template-columns:1fr 1fr;gap:8px 24px} img.thumb{border:1px solid #ccc}
.pos{color:#1b7a1b} .neg{color:#b03a2e}
.reader{max-width:760px;font-family:Georgia,serif;font-size:15px;line-height:1.45;border-left:3px solid #ddd;
padding:2px 14px;margin:6px 0 14px} .reader p{margin:6px 0} .reader figure{margin:8px 0}
.reader img.inline{max-width:240px;max-height:240px;border:1px solid #ccc;display:block}
.reader figcaption{font-size:12px;color:#666} .reader .noimg span{display:inline-block;width:120px;height:60px;
background:#eee;border:1px dashed #aaa;color:#888;font-size:12px;text-align:center;line-height:60px}
.reader .cut{color:#999;text-decoration:line-through} .reader .tag{text-decoration:none;display:inline-block;
font-size:11px;background:#f3e0c8;color:#7a4a10;padding:0 4px;margin-right:4px}
"""


def _accounting_html(stats: Dict) -> str:
    out = []
    for level in levels_of(stats):
        b = stats[level]
        if b["balanced"]:
            out.append(f"<div class='ok' data-balanced='true'>{level}: balanced. {b['in']:,} in = {b['kept']:,} kept"
                       + (f" + {b.get('image_source', 0):,} image records" if level == "records" else "")
                       + f" + {sum(b['dropped'].values()):,} dropped + {sum(b['error'].values()):,} errors</div>")
        else:
            out.append(f"<div class='bad' data-balanced='false'>{level}: ACCOUNTING DOES NOT BALANCE: "
                       f"{b['in']:,} in, {b['out']:,} accounted for, {b['in'] - b['out']:+,} unexplained</div>")
    return "\n".join(out)


def _drops_table(stats: Dict, level: str) -> str:
    b = stats[level]
    total = b["in"] or 1
    rows = sorted(((s, r, n) for s in (DROPPED, ERROR) for r, n in b[s].items()), key=lambda x: -x[2])
    body = "".join(f"<tr><td>{_esc(s)}</td><td>{_esc(r)}</td><td class='num'>{n:,}</td>"
                   f"<td class='num'>{100 * n / total:.2f}%</td></tr>" for s, r, n in rows)
    return (f"<table><tr><th>status</th><th>reason</th><th class='num'>count</th><th class='num'>rate</th></tr>"
            f"{body}</table>")


def _samples_html(samples: List[Dict], text_cfg=None, readers_per_reason: int = 2) -> str:
    """The sampled rejects per reason; the first ``readers_per_reason`` pages of a
    reason decided on extracted text are shown as the job read them."""
    by_reason: Dict[Tuple[str, str, str], List[Dict]] = {}
    for s in samples:
        by_reason.setdefault((s["level"], s["status"], s["reason"]), []).append(s)
    parts = []
    for (level, status, reason), rows in sorted(by_reason.items()):
        trs = []
        readers = 0
        for s in rows:
            thumb = _thumbnail(s)
            img = f"<img class='thumb' src='{thumb}' alt='thumbnail'>" if thumb else ""
            trs.append(f"<tr><td>{img}{_link(s['url'], 90)}</td>"
                       f"<td>{_esc(os.path.basename(s['file']))}@{s['offset']}</td>"
                       f"<td><code>{_esc(s['scores'][:200])}</code></td>"
                       f"<td class='snippet'>{_esc((s['snippet'] or s['message'])[:300])}</td></tr>")
            reader = reject_reader(s, text_cfg) if readers < readers_per_reason else None
            if reader:
                readers += 1
                trs.append(f"<tr><td colspan='4'><details class='page'><summary>the page as the job read it"
                           f"</summary>{reader}</details></td></tr>")
        parts.append(f"<details data-reason='{_esc(reason)}'><summary>{_esc(level)} / {_esc(status)} / "
                     f"<b>{_esc(reason)}</b> ({len(rows)} sampled)</summary><table><tr><th>URL</th>"
                     f"<th>where</th><th>scores</th><th>text</th></tr>{''.join(trs)}</table></details>")
    return "\n".join(parts) or "<p class='muted'>no sampled rejects in this run</p>"


def _other_outputs_html(stats: Dict) -> str:
    parts = []
    titles = {"text_documents": ("text", "Text-only documents dropped, by reason"),
              "pairs": ("pairs", "Image-caption pairs (&lt;img&gt; elements of English pages) dropped, by reason")}
    for level, (out_name, title) in titles.items():
        if level not in stats:
            continue
        items = sorted(((f"{r}", n) for r, n in stats[level][DROPPED].items()), key=lambda x: -x[1])
        rows = stats.get("outputs", {}).get(out_name, {}).get("rows", stats[level][KEPT])
        parts.append(f"<h2>{title}</h2><p>{rows:,} written to <code>{out_name}/</code>.</p>"
                     f"<div class='grid'><div>{bar_chart(items, width=560, label_w=220, color='#2e86c1')}</div>"
                     f"<div>{_drops_table(stats, level)}</div></div>")
    dec = stats.get("image_decodes", {})
    if dec:
        parts.append(f"<p>Images decoded: {dec.get('decoded', 0):,}, of which "
                     f"{dec.get('decoded_once_for_documents_and_pairs', 0):,} served a document and a pair "
                     f"with one decode.</p>")
    return "\n".join(parts)


def render_report(run: Dict) -> str:
    stats, meta = run["stats"], run["run"]
    d = run["distributions"]
    inputs = meta.get("inputs", [])
    total_bytes = sum((i.get("bytes") or i.get("size") or 0) for i in inputs)
    drop_items = sorted(((f"{r}", n) for r, n in stats["records"][DROPPED].items()), key=lambda x: -x[1])
    image_items = sorted(((f"{r}", n) for r, n in stats["images"][DROPPED].items()), key=lambda x: -x[1])
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Curation report: {_esc(run['dir'])}</title>
<style>{CSS}</style></head><body>
<h1>Curation report</h1>
<p>Run <code>{_esc(run['dir'])}</code>, started {_esc(meta.get('started_at', '?'))}, finished
{_esc(meta.get('finished_at', '?'))}; code {_esc(meta.get('code', {}))}; Beam {_esc(meta.get('beam', '?'))};
{len(inputs)} input files, {total_bytes:,} bytes; config sha256 <code>{_esc(stats.get('config_sha256', '')[:16])}</code>.</p>
<h2>Accounting</h2>
{_accounting_html(stats)}
<h2>Funnel: from records read to documents kept</h2>
{bar_chart(funnel(stats))}
<p>{stats['documents']['kept']:,} documents with {stats['documents']['images']:,} images in
{stats['documents']['shards']} shards.</p>
<h2>Records dropped, by reason</h2>
<div class="grid"><div>{bar_chart(drop_items, width=560, label_w=220, color="#b5651d")}</div>
<div>{_drops_table(stats, 'records')}</div></div>
<h2>Image references dropped, by reason</h2>
<div class="grid"><div>{bar_chart(image_items, width=560, label_w=220, color="#7d5ba6")}</div>
<div>{_drops_table(stats, 'images')}</div></div>
{_other_outputs_html(stats)}
<h2>Kept documents</h2>
<div class="grid">
<div><h3>images per document</h3>{histogram(d['images_per_document'], integer=True)}</div>
<div><h3>English score (fastText)</h3>{histogram(d['language_score'])}</div>
<div><h3>words per document</h3>{histogram(d['words'])}</div>
<div><h3>original image width (px)</h3>{histogram(d['image_width'])}</div>
<div><h3>original image height (px)</h3>{histogram(d['image_height'])}</div>
</div>
<h2>Kept documents, as a trainer reads them</h2>
<p class="muted">{len(run.get('shown', []))} of {stats['documents']['kept']:,}, spread over the shards: the text
and images of each in reading order, as they are in the shards.</p>
{_kept_documents_html(run.get('shown', []))}
<h2>Sampled rejects, per reason</h2>
<p class="muted">Up to {meta.get('config', {}).get('audit', {}).get('samples_per_reason', '?')} per reason,
chosen by a seeded hash; image thumbnails are re-read from the archives when they are at hand, and the first
pages of a reason decided on extracted text are shown as the job read them (paragraphs it cut struck through).</p>
{_samples_html(run['samples'], _text_config(meta))}
</body></html>
"""


def compare(a: Dict, b: Dict) -> Dict:
    rows = []
    for level in [lv for lv in levels_of(a["stats"]) if lv in b["stats"]]:
        keys = set()
        for run in (a, b):
            for status in (DROPPED, ERROR):
                keys |= {(status.value, r) for r in run["stats"][level][status]}
            keys.add((KEPT.value, ""))
        for status, reason in sorted(keys):
            get = (lambda s: s["stats"][level][KEPT]) if status == KEPT else \
                (lambda s: s["stats"][level][status].get(reason, 0))
            na, nb = get(a), get(b)
            rows.append({"level": level, "status": status, "reason": reason, "a": na, "b": nb, "diff": nb - na})
    return {"a": a["dir"], "b": b["dir"], "rows": rows, "changed": [r for r in rows if r["diff"]]}


def render_compare(cmp: Dict, a: Dict, b: Dict) -> str:
    def cls(v):
        return "pos" if v > 0 else "neg" if v < 0 else "muted"
    body = "".join(f"<tr data-changed='{str(bool(r['diff'])).lower()}'><td>{_esc(r['level'])}</td><td>{_esc(r['status'])}</td>"
                   f"<td>{_esc(r['reason'])}</td><td class='num'>{r['a']:,}</td><td class='num'>{r['b']:,}</td>"
                   f"<td class='num {cls(r['diff'])}'>{r['diff']:+,}</td></tr>" for r in cmp["rows"])
    changed = bar_chart([(f"{r['level']}: {r['reason'] or r['status']}", abs(r["diff"])) for r in cmp["changed"]],
                        color="#c0392b")
    cfg_a, cfg_b = a["run"].get("config", {}), b["run"].get("config", {})
    cfg_diff = [f"{sec}.{k}: {cfg_a[sec][k]!r} -> {cfg_b.get(sec, {}).get(k)!r}"
                for sec in sorted(cfg_a) if isinstance(cfg_a[sec], dict)
                for k in sorted(cfg_a[sec]) if cfg_a[sec][k] != cfg_b.get(sec, {}).get(k)]
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Curation runs compared</title><style>{CSS}</style></head><body>
<h1>Curation runs compared</h1>
<p>A: <code>{_esc(cmp['a'])}</code><br>B: <code>{_esc(cmp['b'])}</code></p>
<h2>Settings that differ</h2>
<ul>{''.join(f'<li><code>{_esc(c)}</code></li>' for c in cfg_diff) or '<li class="muted">none</li>'}</ul>
<h2>What changed (|B - A|)</h2>{changed}
<h2>Every filter</h2>
<table><tr><th>level</th><th>status</th><th>reason</th><th class='num'>A</th><th class='num'>B</th>
<th class='num'>B - A</th></tr>{body}</table>
</body></html>
"""


def write_report(run_dirs: List[str], output: Optional[str] = None, max_docs: int = 100_000,
                 allow_incomplete: bool = False) -> Tuple[str, str]:
    """Write the HTML report (and its JSON summary beside it); returns both paths."""
    runs = [load_run(d, max_docs, allow_incomplete) for d in run_dirs]
    if len(runs) == 1:
        html_text = render_report(runs[0])
        data = summary(runs[0])
        default = os.path.join(run_dirs[0], "report.html")
    elif len(runs) == 2:
        data = compare(runs[0], runs[1])
        html_text = render_compare(data, runs[0], runs[1])
        default = os.path.join(run_dirs[1], "compare.html")
    else:
        raise ValueError("give one run directory, or two to compare")
    out = output or default
    with open(out, "w", encoding="utf-8") as fh:
        fh.write(html_text)
    json_path = os.path.splitext(out)[0] + ".json"
    with open(json_path, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=2, sort_keys=True)
    return out, json_path
