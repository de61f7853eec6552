"""Sizing a Common Crawl snapshot on Dataflow and the paper's 360B-token pretraining.

    scripts/in-venv python deploy/sizing.py            # the tables of deploy/SIZING.md
    scripts/in-venv python deploy/sizing.py --check deploy/SIZING.md

Every input is a flag, so a user re-runs it with their own measurements (pages/s/core
from benchmarks/curate.py on their machines, tokens/s per GPU from metrics.jsonl).
Defaults: our measured figures where we have them, stated assumptions where not.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- sizing:begin -->", "<!-- sizing:end -->"


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    c = ap.add_argument_group("curation (measured here unless noted)")
    c.add_argument("--pages", type=float, default=3.0e9, help="HTML pages in the snapshot (issue: ~3 billion)")
    c.add_argument("--warc_files", type=int, default=90_000)
    c.add_argument("--cheap_ms", type=float, default=2.33, help="ms/page for a page rejected before extraction "
                   "(benchmarks/curate.py)")
    c.add_argument("--extract_ms", type=float, default=125.5, help="ms/page for an extracted page "
                   "(benchmarks/curate.py)")
    c.add_argument("--english_fraction", type=float, default=0.45,
                   help="assumption: share of Common Crawl pages in English (CC's own statistics: ~45%%)")
    c.add_argument("--beam_efficiency", type=float, default=0.8,
                   help="Beam end to end / pure functions, measured on 1 in-process worker (0.80)")
    c.add_argument("--images_per_english_page", type=float, default=2.0,
                   help="assumption: images downloaded per English page after caption/dedup filters")
    c.add_argument("--image_ms", type=float, default=10.0, help="CPU ms per downloaded image (decode, judge, "
                   "re-encode; benchmarks/fetch.py: ~200 images/s on 2 cores)")
    c.add_argument("--machine_vcpus", type=int, default=8, help="n2-standard-8")
    c.add_argument("--machine_gb", type=float, default=32.0)
    c.add_argument("--workers", type=int, default=500, help="max_num_workers")
    c.add_argument("--vcpu_hour_usd", type=float, default=0.056, help="Dataflow batch vCPU-hour (list price, "
                   "us-central1; check the current price)")
    c.add_argument("--gb_hour_usd", type=float, default=0.003557, help="Dataflow batch GB-hour")
    c.add_argument("--shuffle_gb_usd", type=float, default=0.011, help="Dataflow Shuffle, per GB processed")
    c.add_argument("--shuffle_kb_per_english_page", type=float, default=120.0,
                   help="assumption: extracted text + candidate + stored images through the shuffles")
    t = ap.add_argument_group("training")
    t.add_argument("--tokens", type=float, default=360e9, help="paper: 300k steps x 1.2M tokens")
    t.add_argument("--gpu_peak_tflops", type=float, default=989.0, help="H100 SXM dense bf16")
    t.add_argument("--mfu", type=float, default=0.40, help="assumption (KOSMOS.md §3); replace with the mfu of "
                   "metrics.jsonl from a GPU run")
    t.add_argument("--tokens_per_s_per_gpu", type=float, default=None,
                   help="measured tokens/s per GPU (overrides --mfu)")
    t.add_argument("--images_per_step", type=float, default=6200,
                   help="assumption: ~0.5M caption tokens / ~86 tokens a pair + interleaved images")
    t.add_argument("--gpus", type=int, default=256)
    t.add_argument("--gpu_hour_usd", type=float, default=3.0, help="assumption: H100 on-demand-ish price")
    ap.add_argument("--check", help="compare with the tables in this markdown file; exit 1 if they differ")
    return ap


def decoder_flops_per_token() -> float:
    """The model's own count (the trainer's MFU uses it) on the real kosmos-1 model, built on the meta device."""
    sys.path.insert(0, str(ROOT))
    from trainer.model.config import kosmos_1
    from trainer.model.kosmos import build_on_meta
    cfg = kosmos_1()
    return build_on_meta(cfg).decoder_flops_per_token(cfg.decoder.max_seq_len)


def tables(a) -> str:
    english = a.pages * a.english_fraction
    cpu_s = (a.pages * a.cheap_ms + english * a.extract_ms + english * a.images_per_english_page * a.image_ms) / 1e3
    cpu_s /= a.beam_efficiency
    vcpu_h = cpu_s / 3600
    workers_h = vcpu_h / a.machine_vcpus
    hours = workers_h / a.workers
    cost_cpu = vcpu_h * a.vcpu_hour_usd
    cost_mem = workers_h * a.machine_gb * a.gb_hour_usd
    shuffle_gb = english * a.shuffle_kb_per_english_page / 1e6
    cost_shuffle = shuffle_gb * a.shuffle_gb_usd
    pages_per_core = a.pages / cpu_s

    fpt = decoder_flops_per_token()
    vision_flops_per_image = 2 * 303_966_208 * 257          # ViT-L/14 forward at 224 px (frozen but last block)
    flops = a.tokens * fpt + (a.tokens / 1.2e6) * a.images_per_step * vision_flops_per_image
    if a.tokens_per_s_per_gpu:
        tps = a.tokens_per_s_per_gpu
        basis = f"measured {tps:,.0f} tokens/s per GPU"
    else:
        tps = a.mfu * a.gpu_peak_tflops * 1e12 / (flops / a.tokens)
        basis = f"assumed MFU {a.mfu:.0%} of {a.gpu_peak_tflops:.0f} TFLOP/s"
    gpu_h = a.tokens / tps / 3600
    lines = [
        BEGIN,
        "| curation of one snapshot | value |",
        "|---|---|",
        f"| pages / WARC files | {a.pages:,.0f} / {a.warc_files:,d} |",
        f"| English pages extracted ({a.english_fraction:.0%}) | {english:,.0f} |",
        f"| CPU per page: rejected early / extracted / per image | {a.cheap_ms} ms / {a.extract_ms} ms / {a.image_ms} ms |",
        f"| throughput, all pages, Beam overhead included | {pages_per_core:.1f} pages/s per vCPU |",
        f"| vCPU-hours | {vcpu_h:,.0f} |",
        f"| {a.workers} x {a.machine_vcpus}-vCPU workers | {hours:,.1f} hours |",
        f"| cost: vCPU + memory + shuffle ({shuffle_gb:,.0f} GB) | ${cost_cpu:,.0f} + ${cost_mem:,.0f} + ${cost_shuffle:,.0f} = ${cost_cpu + cost_mem + cost_shuffle:,.0f} |",
        "",
        "| pretraining (Kosmos-1, 360B tokens) | value |",
        "|---|---|",
        f"| decoder FLOP per token (6N + attention, context 2048) | {fpt / 1e9:.2f} GFLOP |",
        f"| vision FLOP ({a.images_per_step:,.0f} images per 1.2M-token step, ViT-L/14 forward) | {(flops - a.tokens * fpt) / flops:.1%} of the total |",
        f"| total | {flops:.3e} FLOP |",
        f"| tokens/s per GPU ({basis}) | {tps:,.0f} |",
        f"| GPU-hours | {gpu_h:,.0f} |",
        f"| on {a.gpus} GPUs | {gpu_h / a.gpus / 24:,.1f} days, about ${gpu_h * a.gpu_hour_usd:,.0f} at ${a.gpu_hour_usd}/GPU-hour |",
        END,
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    a = parser().parse_args(argv)
    out = tables(a)
    if a.check:
        text = Path(a.check).read_text(encoding="utf-8")
        if BEGIN not in text or END not in text:
            print(f"{a.check}: no sizing tables", file=sys.stderr)
            return 1
        current = text[text.index(BEGIN):text.index(END) + len(END)]
        if current != out:
            print(f"{a.check} is out of date; regenerate with `scripts/in-venv python deploy/sizing.py`", file=sys.stderr)
            return 1
        print(f"{a.check}: up to date")
        return 0
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
