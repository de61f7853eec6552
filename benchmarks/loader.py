"""Data loader throughput (not a test): packed micro-batches per second with 0, 1
and 2 loader workers, against the rate at which the tiny model's training step
consumes them, for the same configuration.

    scripts/in-venv python benchmarks/loader.py [--seconds 20]

The mix is interleaved documents (image decoding + CLIP preprocessing in the
workers) and instruction examples (text only).
"""

from __future__ import annotations

import argparse
import time

import torch

from corpus import INSTRUCTIONS, corpus

from trainer.config import TrainConfig  # noqa: E402


def config(docs, tok, workers, seq_len):
    return TrainConfig().override({
        "model.config": "tiny", "data.interleaved": [docs], "data.instructions": [str(INSTRUCTIONS)],
        "data.interleaved_tokens": 4 * seq_len, "data.instructions_tokens": 4 * seq_len,
        "data.text_tokens": 0, "data.pairs_tokens": 0, "data.seq_len": seq_len, "data.micro_batch_size": 4,
        "data.num_workers": workers, "run.tokenizer": tok})


def loader_rate(cfg, tok, seconds):
    from trainer.data import MixtureDataset, MixtureLoader
    loader = MixtureLoader(MixtureDataset(cfg, tok, 8, 0, 1))
    loader.next_step()                       # start-up (worker fork, first shard) not counted
    n_seq = n_img = 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for mb in loader.next_step():
            n_seq += mb["input_ids"].shape[0]
            n_img += 0 if mb["images"] is None else mb["images"].shape[0]
    dt = time.perf_counter() - t0
    return n_seq / dt, n_img / dt


def step_rate(cfg, tok, seconds):
    from trainer.data import MixtureDataset, MixtureLoader
    from trainer.distributed import Dist
    from trainer.train import Trainer
    loader = MixtureLoader(MixtureDataset(cfg, tok, 8, 0, 1))
    steps = [loader.next_step() for _ in range(4)]   # preloaded: the step alone is timed
    trainer = Trainer(cfg, Dist(), tokenizer=tok)
    trainer.train_step(steps[0])
    n_seq, t0, i = 0, time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        micro = steps[i % len(steps)]
        trainer.train_step(micro)
        n_seq += sum(mb["input_ids"].shape[0] for mb in micro)
        i += 1
    return n_seq / (time.perf_counter() - t0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--seq_len", type=int, default=512)
    args = ap.parse_args()
    from trainer.tokenizer import Tokenizer
    docs, tok_path = corpus()
    tok = Tokenizer(tok_path)
    torch.set_num_threads(2)
    print(f"tiny config, seq_len {args.seq_len}, micro-batches of 4, {torch.get_num_threads()} torch threads, "
          f"{args.seconds:.0f} s per figure")
    step = step_rate(config(docs, tok_path, 0, args.seq_len), tok, args.seconds)
    print(f"training step consumes {step:8.1f} sequences/s")
    for workers in (0, 1, 2):
        seqs, imgs = loader_rate(config(docs, tok_path, workers, args.seq_len), tok, args.seconds)
        print(f"loader, {workers} worker(s): {seqs:8.1f} sequences/s ({imgs:6.1f} images/s)  "
              f"= {seqs / step:5.2f}x the step")


if __name__ == "__main__":
    main()
