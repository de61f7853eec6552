"""Run under torchrun by tests/test_trainer.py (CPU, gloo).

``equivalence``: a fixed global batch of sequences (text and image rows), spread
over the ranks as the data plan does; rank 0 writes the step losses and a
fingerprint of the weights, which must match one rank training on the whole batch.

``mixed``: two sources (text rows, rows with an image) laid out by the real
``StepPlan``: a rank's share of both sources in as few micro-batches as
``data.micro_batch_size`` allows, sources mixed within one; rank 0 writes the
losses (overall and per source) and the weights' fingerprint. Any ``run.parallel``
(``hsdp`` with a shard group size), one process without torchrun or several under it.

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
from contract.tokens import IGNORE_INDEX, SpecialIds  # noqa: E402


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


def equivalence(parallel: str, out: str, total: int) -> None:
    """``total`` sequences a step over all ranks, spread as the data plan spreads them
    (``StepPlan``): every rank runs the same two micro-batch slots; a rank with fewer
    sequences than slots gets an empty micro-batch (one padding token, no target)."""
    from trainer.data import collate
    from trainer.train import Trainer
    d = init_distributed("cpu")
    cfg = TrainConfig().override({"model.config": "tiny", "run.parallel": parallel, "optim.lr": 1e-3,
                                  "optim.warmup_steps": 0, "optim.steps": 100, "data.seq_len": 64})
    pieces = 256
    trainer = Trainer(cfg, d, vocab_size=SpecialIds(pieces).vocab_size)
    rows = fixed_batch(total, 64, pieces, trainer.core.cfg.num_image_tokens)
    base, extra = divmod(total, d.world_size)
    start = d.rank * base + min(d.rank, extra)
    mine = rows[start:start + base + (1 if d.rank < extra else 0)]
    most = base + (1 if extra else 0)
    slots = [(most + 1) // 2, most // 2]
    losses = []
    for _ in range(3):
        mbs, used = [], 0
        for cap in slots:
            part = mine[used:used + cap]
            used += len(part)
            mbs.append(batch_of(part) if part else dict(collate([], SpecialIds(pieces).pad), source="interleaved"))
        losses.append(trainer.train_step(mbs).loss)
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    sd = get_model_state_dict(trainer.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if d.rank == 0:
        fp = {k: float(v.double().sum()) for k, v in sorted(sd.items()) if v.dtype.is_floating_point}
        with open(out, "w") as fh:
            json.dump({"losses": losses, "fingerprint": fp, "world": d.world_size}, fh)


def text_rows(n: int, seq_len: int, vocab_pieces: int):
    g = torch.Generator().manual_seed(4321)
    rows = []
    for _ in range(n):
        toks = torch.randint(4, 4 + vocab_pieces, (seq_len,), generator=g).tolist()
        rows.append((toks, list(toks), []))
    return rows


def mixed(parallel: str, out: str, n_text: int, n_images: int, shard: int = 0) -> None:
    """``n_text`` text rows and ``n_images`` rows with an image a step, spread by the
    plan; every step trains on the same rows, so any layout must give the same run."""
    from trainer.data import StepPlan, collate
    from trainer.train import Trainer
    d = init_distributed("cpu")
    seq_len, pieces = 64, 256
    over = {"model.config": "tiny", "run.parallel": parallel, "optim.lr": 1e-3, "optim.warmup_steps": 0,
            "optim.steps": 100, "data.seq_len": seq_len, "data.micro_batch_size": 2,
            "data.text": ["unread"], "data.interleaved": ["unread"], "data.pairs_tokens": 0,
            "data.text_tokens": n_text * seq_len, "data.interleaved_tokens": n_images * seq_len}
    if shard:
        over["run.shard_group_size"] = shard
    cfg = TrainConfig().override(over)
    trainer = Trainer(cfg, d, vocab_size=SpecialIds(pieces).vocab_size)
    plan = StepPlan(cfg, d.world_size)
    rows = {"text": text_rows(n_text, seq_len, pieces),
            "interleaved": fixed_batch(2 * n_images, seq_len, pieces, trainer.core.cfg.num_image_tokens)[::2]}
    history, layouts = [], []
    for step in range(3):
        # this rank's rows of each source: after those of the ranks before it
        start = {s: sum(plan.rank_sequences(s, step, r) for r in range(d.rank)) for s in rows}
        mbs, layout = [], []
        for j in range(len(plan.slots)):
            part, names = [], []
            for s, n in plan.micro_batch(step, d.rank, j):
                part += rows[s][start[s]:start[s] + n]
                names += [s] * n
                start[s] += n
            layout.append(names)
            if part:
                mbs.append(dict(batch_of(part), sources=names))
            else:
                mbs.append(dict(collate([], SpecialIds(pieces).pad), sources=[None]))
        m = trainer.train_step(mbs).as_dict()
        history.append({k: v for k, v in m.items() if k.startswith("loss") or k == "target_tokens"})
        layouts.append(layout)
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    sd = get_model_state_dict(trainer.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if d.rank == 0:
        fp = {k: float(v.double().sum()) for k, v in sorted(sd.items()) if v.dtype.is_floating_point}
        with open(out, "w") as fh:
            mesh = next((list(p.device_mesh.shape) for p in trainer.model.parameters() if hasattr(p, "device_mesh")),
                        None)
            json.dump({"steps": history, "fingerprint": fp, "world": d.world_size, "parallel": trainer.parallel,
                       "layout": layouts, "mesh": mesh}, fh)


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
    elif mode == "mixed":
        mixed(sys.argv[2], sys.argv[3], *map(int, sys.argv[4:]))
    else:
        disjoint(sys.argv[2], sys.argv[3], sys.argv[4])
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
