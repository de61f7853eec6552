"""Sizing a Common Crawl snapshot on Dataflow, the paper's 360B-token pretraining, and
the parallel plan of one 1.2M-token step (compute and communication, DDP/FSDP/HSDP).

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
    p = ap.add_argument_group("parallel plan of one step (deploy/SIZING.md, 'One step on 8, 64 and 256 GPUs')")
    p.add_argument("--plan_gpus", type=int, nargs="+", default=[8, 64, 256])
    p.add_argument("--achievable", type=float, default=0.5,
                   help="assumption: fraction of the dense bf16 peak the step's kernels reach when nothing waits "
                        "for communication")
    p.add_argument("--nvlink_gbs", type=float, default=450.0, help="NVLink per GPU per direction, GB/s (H100 SXM)")
    p.add_argument("--network_gbs", type=float, default=50.0, help="between nodes per GPU, GB/s (400 Gb/s)")
    p.add_argument("--gpus_per_node", type=int, default=8)
    p.add_argument("--overlap", type=float, default=0.8,
                   help="assumption: share of the compute (DDP: of the backward pass) that collectives can hide "
                        "behind")
    p.add_argument("--micro_batch_size", type=int, default=8, help="trainer/configs/pretrain-kosmos-1.json")
    ap.add_argument("--check", help="compare with the tables in this markdown file; exit 1 if they differ")
    return ap


def decoder_flops_per_token() -> float:
    """The model's own count (the trainer's MFU uses it) on the real kosmos-1 model, built on the meta device."""
    sys.path.insert(0, str(ROOT))
    from trainer.model.config import kosmos_1
    from trainer.model.kosmos import build_on_meta
    cfg = kosmos_1()
    return build_on_meta(cfg).decoder_flops_per_token(cfg.decoder.max_seq_len)


# ----------------------------------------------------------------------------- one step's parallel plan
STRATEGIES = ("ddp", "fsdp", "hsdp")


def model_parts():
    """Parameter counts of the real kosmos-1 model (meta device) as the plan groups them:
    ``layers`` (trainable, in their own FSDP units: decoder layers, trainable CLIP blocks),
    ``root`` (trainable, the root unit: embeddings, resampler, final norms), ``frozen``
    (CLIP's frozen layers), and the model itself for its FLOP count."""
    sys.path.insert(0, str(ROOT))
    from trainer.model.config import kosmos_1
    from trainer.model.kosmos import build_on_meta
    from trainer.parallelize import trainable_vision_blocks
    model = build_on_meta(kosmos_1())
    units = list(model.decoder.layers) + trainable_vision_blocks(model)
    layers = sum(p.numel() for u in units for p in u.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    return {"layers": layers, "root": trainable - layers, "frozen": frozen, "model": model}


def step_plans(gpus: int, micro_batch_size: int):
    """(sequences a step, the most a rank gets, micro-batches a rank runs before, after):
    the paper's 0.5M / 0.5M / 0.2M tokens at 2,048 a sequence, through the trainer's
    own StepPlan (after) and the plan it replaced (before: one source a micro-batch)."""
    sys.path.insert(0, str(ROOT))
    from trainer.config import TrainConfig
    from trainer.data import StepPlan
    cfg = TrainConfig().override({"data.text": ["-"], "data.pairs": ["-"], "data.interleaved": ["-"],
                                  "data.micro_batch_size": micro_batch_size})
    plan = StepPlan(cfg, gpus)
    before = sum(-(-(-(-n // gpus)) // micro_batch_size) for n in plan.sequences.values())
    return sum(plan.sequences.values()), plan.most, before, len(plan.slots)


def ring(nbytes: float, ranks: int, gbs: float) -> float:
    """Seconds of a ring all-gather or reduce-scatter: (n-1)/n x bytes / bandwidth."""
    return (ranks - 1) / ranks * nbytes / (gbs * 1e9) if ranks > 1 else 0.0


def step_cost(parts, a, gpus: int, strategy: str, plan: str, flops: float, sequences: int, most: int,
              micro: int):
    """One optimizer step on ``gpus`` GPUs: compute, communication, step time, MFU.

    compute: the step's FLOPs spread over the GPUs at ``achievable`` of the peak, scaled
    by the busiest rank's share (``most`` sequences against the mean).
    communication (bytes: bf16 gathers, fp32 gradient reductions; P = trainable):
      DDP   all-reduce 4P over all GPUs: 2 x ring(4P)
      FSDP  per micro-batch: each layer unit gathered twice (forward, backward), the root
            once (FSDP2 keeps the root unsharded until the step ends); before: the frozen
            CLIP layers gathered once more; per step: reduce-scatter 4P. Over NVLink on one
            node, else at the network's bandwidth.
      HSDP  the same gathers and reduce-scatter within a node (NVLink), then an all-reduce
            of each GPU's 1/8 slice across the nodes: 2 x ring(4P/8) over the network.
    step: compute + what ``overlap`` of the compute (DDP: of its backward, 2/3) cannot hide."""
    peak = a.gpu_peak_tflops * 1e12
    compute = flops / gpus / (peak * a.achievable) * (most / (sequences / gpus))
    node = min(gpus, a.gpus_per_node)
    bw = a.nvlink_gbs if gpus <= a.gpus_per_node else a.network_gbs
    trainable = parts["layers"] + parts["root"]
    grads = 4.0 * trainable
    if strategy == "ddp":
        comm = 2 * ring(grads, gpus, bw)
        hide = a.overlap * compute * 2 / 3
        states = 16.0 * trainable + 4.0 * parts["frozen"]
    else:
        gathered = micro * (2 * 2.0 * parts["layers"] + 2.0 * parts["root"])
        if plan == "before":
            gathered += micro * 2.0 * parts["frozen"]
        shard = gpus if strategy == "fsdp" else node
        if strategy == "fsdp":
            comm = ring(gathered, gpus, bw) + ring(grads, gpus, bw)
        else:
            comm = ring(gathered, node, a.nvlink_gbs) + ring(grads, node, a.nvlink_gbs) \
                + 2 * ring(grads / node, gpus // node, a.network_gbs)
        hide = a.overlap * compute
        states = 16.0 * trainable / shard + (4.0 * parts["frozen"] / shard if plan == "before" else 2.0 * parts["frozen"])
    step = compute + max(0.0, comm - hide)
    return {"compute": compute, "comm": comm, "step": step, "exposed": (step - compute) / step,
            "mfu": flops / (step * gpus * peak), "states_gb": states / 1e9}


def parallel_table(a) -> list:
    parts = model_parts()
    rows = ["| GPUs | strategy | plan | micro-batches per rank | compute s | communication s | step s "
            "| exposed communication | MFU | model states GB/GPU |", "|---|---|---|---|---|---|---|---|---|---|"]
    advice = []
    for gpus in a.plan_gpus:
        sequences, most, before, after = step_plans(gpus, a.micro_batch_size)
        flops = parts["model"].training_flops(sequences * 2048, round(a.images_per_step), 2048)
        best = None
        for strategy in STRATEGIES:
            for plan, micro in (("before", before), ("after", after)):
                c = step_cost(parts, a, gpus, strategy, plan, flops, sequences, most, micro)
                rows.append(f"| {gpus} | {strategy} | {plan} | {micro} | {c['compute']:.3f} | {c['comm']:.3f} | "
                            f"{c['step']:.3f} | {c['exposed']:.0%} | {c['mfu']:.1%} | {c['states_gb']:.1f} |")
                if plan == "after" and (best is None or c["step"] < best[1]["step"] * 0.99 or (
                        c["step"] <= best[1]["step"] * 1.01 and c["comm"] < best[1]["comm"])):
                    best = (strategy, c)
        advice.append(f"{gpus} GPUs: {best[0]} ({best[1]['step']:.3f} s a step, MFU {best[1]['mfu']:.1%})")
    return rows + ["", "Recommended (shortest step after the change; within 1%, the least communication, "
                   "which depends least on the overlap assumption): "
                   + "; ".join(advice) + "."]


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
        "",
        f"One 1.2M-token step of kosmos-1 ({a.images_per_step:,.0f} images, micro-batches of {a.micro_batch_size}; "
        f"{a.achievable:.0%} of {a.gpu_peak_tflops:.0f} TFLOP/s reachable, NVLink {a.nvlink_gbs:.0f} GB/s, network "
        f"{a.network_gbs:.0f} GB/s per GPU, {a.overlap:.0%} overlap):",
        "",
        *parallel_table(a),
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
