"""Training step throughput (not a test): tokens per second of the full step
(loader, forward, backward, clipping, AdamW) on the tiny config, and the share of
the step spent waiting for data.

    scripts/in-venv python benchmarks/train.py [--steps 30]

On a GPU the same run prints MFU and memory (metrics.jsonl has them per step).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile

import torch

from corpus import INSTRUCTIONS, corpus

from trainer.config import TrainConfig  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--seq_len", type=int, default=512)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--activation_checkpointing", action="store_true")
    args = ap.parse_args()
    from trainer.train import run_training
    docs, tok = corpus()
    with tempfile.TemporaryDirectory() as out:
        cfg = TrainConfig().override({
            "model.config": "tiny", "model.activation_checkpointing": args.activation_checkpointing,
            "data.interleaved": [docs], "data.instructions": [str(INSTRUCTIONS)],
            "data.interleaved_tokens": 8 * args.seq_len, "data.instructions_tokens": 8 * args.seq_len,
            "data.text_tokens": 0, "data.pairs_tokens": 0, "data.seq_len": args.seq_len,
            "data.micro_batch_size": 4, "data.num_workers": args.workers, "optim.steps": args.steps,
            "optim.warmup_steps": 2, "optim.lr": 1e-3, "run.output": out, "run.tokenizer": tok,
            "run.save_every": 10 ** 9, "run.tensorboard": False, "run.progress_bar": False,
            "run.log_every": 10 ** 9})
        hist = run_training(cfg)
    body = hist[3:]                           # after warm-up
    tps = statistics.median(m["tokens_per_s"] for m in body)
    wait = sum(m["data_wait_s"] for m in body) / sum(m["step_time_s"] + m["data_wait_s"] for m in body)
    print(f"tiny, seq_len {args.seq_len}, 16 sequences per step, {args.workers} loader worker(s), "
          f"{torch.get_num_threads()} torch threads")
    print(f"training step: median {tps:,.0f} tokens/s (non-padding tokens) over {len(body)} steps; "
          f"data wait {wait:.1%} of wall time")
    print(f"loss {hist[0]['loss']:.3f} -> {hist[-1]['loss']:.3f}")


if __name__ == "__main__":
    main()
