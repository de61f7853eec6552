"""The prepared GPU check (not a test): one script, one JSON file.

    scripts/in-venv python benchmarks/gpu_smoke.py --out gpu_smoke.json

On a GPU it checks, in this order:
1. attention kernels: ``scaled_dot_product_attention`` in bf16 at B=8, T=2048 with
   the flash and the cuDNN backends, each against the math backend in fp32, and
   which kernels one forward of our decoder layer actually launches;
2. 8 optimizer steps of the full kosmos-1 model (FSDP, bf16, activation
   checkpointing) on synthetic batches of all three sources, through the
   trainer's own ``Trainer.train_step``: tokens/s, MFU and peak memory per step;
3. a checkpoint saved after step 4 and resumed in a fresh process: the resumed
   run's step-5 loss must equal this process's;
4. batched beam-5 generation against one prompt at a time (equal ids).

On a CPU it runs the same with the tiny config (the test suite runs it that way);
``--model kosmos-1`` forces the full model anywhere. ``ok`` in the JSON is true
only when every check held. Nothing is downloaded: the vision tower is built
from its architecture (``pretrained=None``); weights do not change the cost.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Dict, List

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from contract.tokens import IGNORE_INDEX  # noqa: E402

SOURCES = ("text", "pairs", "interleaved")


def settings(args) -> Dict[str, Any]:
    """The run's settings as ``TrainConfig.override`` takes them."""
    gpu = args.device == "cuda"
    return {
        "model.config": args.model, "model.vision_quick_gelu": True,
        "model.activation_checkpointing": gpu or args.model != "tiny", "model.compile": args.compile,
        "data.seq_len": args.seq_len, "data.micro_batch_size": args.batch,
        "data.image_size": 224,
        "optim.steps": 1000, "optim.warmup_steps": 2, "optim.lr": 1e-4,
        "run.parallel": args.parallel, "run.precision": "bf16" if gpu else "fp32",
        "run.tensorboard": False, "run.progress_bar": False, "run.seed": 0,
    }


def synthetic_step(step: int, core, batch: int, seq_len: int, image_size: int) -> List[Dict[str, Any]]:
    """One micro-batch per source, the same for a given step in any process: text
    rows, a caption after one image, and text with two images inside."""
    ids = core.ids
    n_img = core.cfg.num_image_tokens
    vocab_text = ids.image_start          # piece ids lie below the image markers
    out = []
    for s, source in enumerate(SOURCES):
        g = torch.Generator().manual_seed(1_000_003 * step + s)
        rows = torch.randint(4, vocab_text, (batch, seq_len), generator=g)
        rows[:, 0] = ids.bos
        images_per_row = {"text": 0, "pairs": 1, "interleaved": 2}[source]
        for r in range(batch):
            for i in range(images_per_row):
                at = 1 + i * (seq_len // 2)
                rows[r, at] = ids.image_start
                rows[r, at + 1:at + 1 + n_img] = ids.image_slot
                rows[r, at + 1 + n_img] = ids.image_end
        labels = core.labels_for(rows)
        mb = {"source": source, "input_ids": rows, "labels": labels, "images": None}
        if images_per_row:
            mb["images"] = torch.randn(batch * images_per_row, 3, image_size, image_size, generator=g)
        out.append(mb)
    return out


def check_attention(device: str) -> Dict[str, Any]:
    """Fused attention kernels in bf16 against the math kernel in fp32."""
    if device != "cuda":
        return {"skipped": "no GPU"}
    from torch.nn.attention import SDPBackend, sdpa_kernel
    import torch.nn.functional as F
    B, H, T, D = 8, 32, 2048, 64
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(B, H, T, D, device="cuda", generator=g) for _ in range(3))
    with sdpa_kernel([SDPBackend.MATH]):
        ref = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    res: Dict[str, Any] = {"shape": [B, H, T, D]}
    for name, backend in (("flash", SDPBackend.FLASH_ATTENTION), ("cudnn", SDPBackend.CUDNN_ATTENTION),
                          ("efficient", SDPBackend.EFFICIENT_ATTENTION)):
        try:
            qb, kb, vb = (t.bfloat16().requires_grad_() for t in (q, k, v))
            with sdpa_kernel([backend]):
                o = F.scaled_dot_product_attention(qb, kb, vb, is_causal=True)
                o.float().sum().backward()
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                for _ in range(5):
                    F.scaled_dot_product_attention(qb, kb, vb, is_causal=True)
                torch.cuda.synchronize()
            res[name] = {"ok": True, "max_abs_err": float((o.float() - ref).abs().max()),
                         "forward_ms": (time.perf_counter() - t0) / 5 * 1e3}
            res[name]["ok"] = res[name]["max_abs_err"] < 5e-2
        except Exception as exc:     # a backend this GPU or build lacks: recorded, not fatal by itself
            res[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:300]}
    # what our own decoder layer launches in bf16
    from torch.profiler import ProfilerActivity, profile
    from trainer.model.decoder import DecoderConfig, MagnetoDecoder
    dec = MagnetoDecoder(DecoderConfig(vocab_size=512, layers=1, dim=H * D, ffn_dim=4 * H * D, heads=H,
                                       dropout=0.0, max_seq_len=T)).cuda()
    x = torch.randn(B, T, H * D, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16), profile(activities=[ProfilerActivity.CUDA]) as prof:
        dec(embeds=x, use_cache=False)
        torch.cuda.synchronize()
    names = sorted({e.key for e in prof.key_averages()})
    res["decoder_kernels"] = [n for n in names if any(w in n.lower() for w in ("flash", "cudnn", "fmha", "attention"))][:10]
    res["decoder_fused"] = any(any(w in n.lower() for w in ("flash", "cudnn", "fmha")) for n in res["decoder_kernels"])
    res["ok"] = bool(res["flash"]["ok"] or res["cudnn"]["ok"]) and res["decoder_fused"]
    return res


def build_trainer(args):
    from trainer.config import TrainConfig
    from trainer.distributed import init_distributed
    from trainer.build import resolve_activation
    from trainer.train import Trainer
    from contract.tokens import vocab_size_for
    cfg = TrainConfig().override({**settings(args), "run.output": args.workdir})
    cfg = resolve_activation(cfg)
    d = init_distributed(args.device)
    vocab = vocab_size_for(64000 if args.model != "tiny" else 512)
    return Trainer(cfg, d, vocab_size=vocab), cfg, d


def states(trainer):
    from trainer import checkpoint as ckpt
    sharded = {"model": ckpt.ModelState(trainer.model),
               "optim": ckpt.OptimizerState(trainer.model, trainer.optimizer)}
    return sharded, {"train": trainer, "rng": ckpt.RngState()}


def run_steps(trainer, first: int, last: int, args) -> List[Dict[str, Any]]:
    out = []
    for step in range(first, last + 1):
        m = trainer.train_step(synthetic_step(step, trainer.core, args.batch, args.seq_len, trainer.image_size))
        out.append({k: v for k, v in m.as_dict().items() if isinstance(v, (int, float))})
    return out


def resume_child(args) -> None:
    """A fresh process: load the step-4 checkpoint, run step 5, print its metrics."""
    from trainer import checkpoint as ckpt
    trainer, cfg, d = build_trainer(args)
    sharded, per_rank = states(trainer)
    ckpt.load(args.resume_from, sharded, per_rank, d)
    assert trainer.step == 4, f"resumed at step {trainer.step}, expected 4"
    print("RESUMED " + json.dumps(run_steps(trainer, 5, 5, args)[0]), flush=True)


def check_beam(trainer, args) -> Dict[str, Any]:
    """Beam-5 over a batch of prompts of different lengths equals each prompt alone
    (``trainer.inference.check_batched_beam``, in fp32: under bf16 a padded batch may
    round differently and flip a near tie, which is not an error)."""
    from trainer.inference import check_batched_beam
    core = trainer.core
    g = torch.Generator().manual_seed(7)
    prompts = [[core.ids.bos] + torch.randint(4, core.ids.image_start, (n,), generator=g).tolist()
               for n in (5, 9, 3, 12)]
    from torch.distributed.fsdp import FSDPModule
    sharded = isinstance(core, FSDPModule)
    try:
        if sharded:     # generation calls the decoder directly: the root's own parameters are gathered first
            core.unshard()
        r = check_batched_beam(core, prompts, None, k=5, max_new_tokens=args.beam_tokens, precision="fp32")
    except Exception as exc:
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:300]}
    finally:
        if sharded:
            core.reshard()
    return {"ok": r["equal"], "equal": [i not in r["mismatches"] for i in range(len(prompts))],
            "prompts": len(prompts), "beams": 5, "new_tokens": args.beam_tokens}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="gpu_smoke.json")
    ap.add_argument("--model", default=None, help="model config (default: kosmos-1 on a GPU, tiny on a CPU)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--parallel", default="fsdp")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--seq_len", type=int, default=None)
    ap.add_argument("--batch", type=int, default=None, help="sequences per source per step")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--beam_tokens", type=int, default=8)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--resume_from", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    gpu = args.device == "cuda"
    args.model = args.model or ("kosmos-1" if gpu else "tiny")
    args.seq_len = args.seq_len or (2048 if args.model != "tiny" else 64)
    args.batch = args.batch or (4 if gpu else 2)
    if args.steps < 5:
        ap.error("--steps must be at least 5 (the resume check runs step 5)")
    if args.resume_from:
        resume_child(args)
        return 0
    report: Dict[str, Any] = {"device": torch.cuda.get_device_name() if gpu else "cpu", "torch": torch.__version__,
                              "model": args.model, "parallel": args.parallel, "seq_len": args.seq_len,
                              "sequences_per_source": args.batch, "steps": args.steps}
    t_start = time.perf_counter()
    try:
        report["attention"] = check_attention(args.device)
    except Exception:
        report["attention"] = {"ok": False, "error": traceback.format_exc()[-1500:]}
    with tempfile.TemporaryDirectory() as tmp:
        args.workdir = args.workdir or tmp
        try:
            from trainer import checkpoint as ckpt
            trainer, cfg, d = build_trainer(args)
            if gpu:
                torch.cuda.reset_peak_memory_stats()
            counts = trainer.counts
            report["parameters"] = counts
            history = run_steps(trainer, 1, 4, args)
            sharded, per_rank = states(trainer)
            saved = ckpt.save(os.path.join(args.workdir, "ckpt"), trainer.step, sharded, per_rank, d, 2,
                              cfg.to_json())
            ckpt.wait_for_saves()
            history += run_steps(trainer, 5, args.steps, args)
            body = history[2:]
            report["train"] = {
                "losses": [m["loss"] for m in history],
                "tokens_per_s_median": statistics.median(m["tokens_per_s"] for m in body),
                "step_time_s_median": statistics.median(m["step_time_s"] for m in body),
                "mfu_median": statistics.median(m["mfu"] for m in body) if "mfu" in body[0] else None,
                "peak_memory_gib": (torch.cuda.max_memory_allocated() / 2 ** 30) if gpu else None,
                "ok": all(torch.isfinite(torch.tensor(m["loss"])) for m in history)}
            env = dict(os.environ)
            for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
                env.pop(k, None)
            child = subprocess.run(
                [sys.executable, __file__, "--resume_from", saved, "--model", args.model, "--device", args.device,
                 "--parallel", args.parallel, "--seq_len", str(args.seq_len), "--batch", str(args.batch),
                 "--workdir", os.path.join(args.workdir, "child")] + (["--compile"] if args.compile else []),
                capture_output=True, text=True, env=env, timeout=1800)
            line = next((x for x in child.stdout.splitlines() if x.startswith("RESUMED ")), None)
            if line is None:
                report["resume"] = {"ok": False, "rc": child.returncode, "stderr": child.stderr[-3000:]}
            else:
                resumed = json.loads(line[len("RESUMED "):])
                here = history[4]["loss"]
                diff = abs(resumed["loss"] - here)
                report["resume"] = {"ok": diff <= (1e-5 * abs(here) if gpu else 0.0), "step": 5,
                                    "loss_here": here, "loss_resumed": resumed["loss"], "abs_diff": diff}
            report["beam"] = check_beam(trainer, args)
        except Exception:
            report.setdefault("train", {"ok": False})
            report["error"] = traceback.format_exc()[-3000:]
    report["wall_s"] = time.perf_counter() - t_start
    parts = [report.get(k, {}) for k in ("train", "resume", "beam")]
    att = report["attention"]
    report["ok"] = "error" not in report and all(p.get("ok") for p in parts) and (att.get("ok") or "skipped" in att)
    Path(args.out).write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    print(json.dumps(report, indent=2, sort_keys=True))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
