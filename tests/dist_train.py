"""Run under torchrun by tests/test_trainer.py (CPU, gloo).

``equivalence``: a fixed global batch of ``2b`` sequences (text and image rows),
rank r trains on its slice; rank 0 writes the step losses and a fingerprint of the
weights, which must match one rank training on the whole batch.

``disjoint``: every rank runs the real data loader (2 workers) over one epoch of
a dataset and writes the rows it read; the rows of all ranks must not overlap.
"""

from __future__ import annotations

import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from trainer.config import TrainConfig  # noqa: E402
from trainer.distributed import init_distributed  # noqa: E402
from trainer.tokens import IGNORE_INDEX, SpecialIds  # noqa: E402


def fixed_batch(n: int, seq_len: int, vocab_pieces: int, num_image_tokens: int):
    g = torch.Generator().manual_seed(1234)
    ids = SpecialIds(vocab_pieces)
    rows = []
    for i in range(n):
        toks = torch.randint(4, 4 + vocab_pieces, (seq_len,), generator=g).tolist()
        imgs = []
        if i % 2 == 0:       # every other row carries an image block
            block = ids.image_block(num_image_tokens)
            toks[5:5 + len(block)] = block
            imgs.append(torch.randn(3, 224, 224, generator=g))
        labels = [t if t not in (ids.image_start, ids.image_slot) else IGNORE_INDEX for t in toks]
        rows.append((toks, labels, imgs))
    return rows


def batch_of(rows):
    images = [im for _, _, imgs in rows for im in imgs]
    return {"input_ids": torch.tensor([r[0] for r in rows]), "labels": torch.tensor([r[1] for r in rows]),
            "images": torch.stack(images) if images else None, "source": "interleaved"}


def equivalence(parallel: str, out: str, per_rank: int) -> None:
    from trainer.train import Trainer
    d = init_distributed("cpu")
    cfg = TrainConfig().override({"model.config": "tiny", "run.parallel": parallel, "optim.lr": 1e-3,
                                  "optim.warmup_steps": 0, "optim.steps": 100, "data.seq_len": 64})
    pieces = 256
    trainer = Trainer(cfg, d, vocab_size=SpecialIds(pieces).vocab_size)
    rows = fixed_batch(per_rank * d.world_size, 64, pieces, trainer.core.cfg.num_image_tokens)
    mine = rows[d.rank * per_rank:(d.rank + 1) * per_rank]
    # two micro-batches per step: gradient accumulation and the no-sync path run too
    half = max(1, per_rank // 2)
    losses = []
    for _ in range(3):
        m = trainer.train_step([batch_of(mine[:half]), batch_of(mine[half:])])
        losses.append(m["loss"])
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    sd = get_model_state_dict(trainer.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if d.rank == 0:
        fp = {k: float(v.double().sum()) for k, v in sorted(sd.items()) if v.dtype.is_floating_point}
        with open(out, "w") as fh:
            json.dump({"losses": losses, "fingerprint": fp, "world": d.world_size}, fh)


def disjoint(dataset: str, tokenizer: str, out: str) -> None:
    from trainer.data import MixtureDataset, MixtureLoader
    from trainer.tokenizer import Tokenizer
    d = init_distributed("cpu")
    cfg = TrainConfig().override({"data.interleaved": [dataset], "data.interleaved_tokens": 256,
                                  "data.seq_len": 128, "data.micro_batch_size": 2, "data.num_workers": 2,
                                  "data.text_tokens": 0, "data.pairs_tokens": 0})
    tok = Tokenizer(tokenizer)
    ds = MixtureDataset(cfg, tok, 8, d.rank, d.world_size)
    loader = MixtureLoader(ds)
    rows = []
    for _ in range(12):
        for mb in loader.next_step():
            rows.extend(mb["rows"]["interleaved"])
    with open(f"{out}.rank{d.rank}", "w") as fh:
        json.dump(rows, fh)


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "equivalence":
        equivalence(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    else:
        disjoint(sys.argv[2], sys.argv[3], sys.argv[4])
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
