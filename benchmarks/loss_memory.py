"""Peak memory of one micro-batch's loss, forward and backward, on the CPU (not a test).

Each variant runs in a fresh subprocess and reports the process's peak resident
size (``ru_maxrss``) after building the model and its inputs, and again after one
forward + backward of the next-token loss; the difference is what the step added.

* ``full-logits``: the loss as computed before issue 27: the whole [B, T, V] logits,
  sliced ``[:, :-1]`` (a copy), upcast to fp32, one cross-entropy;
* ``chunked``: ``KosmosModel.forward(labels=...)``: the output projection and the
  cross-entropy ``loss_chunk_tokens`` positions at a time under checkpointing;
* ``tree``: ``KosmosModel.forward(labels=...)`` of another checkout (``--tree DIR``,
  e.g. a worktree of the commit before issue 27), the same sizes.

Text only (no vision tower), fp32, dropout 0.

    scripts/in-venv python benchmarks/loss_memory.py [--dim 1024] [--layers 2] [--vocab 64007] \\
        [--seq 2048] [--batch 2] [--chunk 1024] [--tree DIR] [--variants full-logits,chunked]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(args) -> None:
    """One variant in this (fresh) process; prints one JSON line."""
    import dataclasses

    import torch
    import torch.nn.functional as F

    from contract.tokens import IGNORE_INDEX
    from trainer.model.config import get_config
    from trainer.model.kosmos import KosmosModel

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    cfg = get_config("kosmos-1")
    dec = dataclasses.replace(cfg.decoder, vocab_size=args.vocab, layers=args.layers, dim=args.dim,
                              ffn_dim=4 * args.dim, heads=args.dim // 64, dropout=0.0, max_seq_len=args.seq)
    changes = {"decoder": dec, "resampler_depth": 1}
    if "loss_chunk_tokens" in {f.name for f in dataclasses.fields(cfg)}:
        changes["loss_chunk_tokens"] = args.chunk
    model = KosmosModel(dataclasses.replace(cfg, **changes), build_vision=False).train()
    ids = torch.randint(4, args.vocab - 8, (args.batch, args.seq))
    labels = ids.clone()
    before = _peak_mib()
    t0 = time.perf_counter()
    if args.variant == "full-logits":
        logits, _ = model.decoder(ids)
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), labels[:, 1:].reshape(-1),
                               ignore_index=IGNORE_INDEX, reduction="sum")
    else:
        loss = model(ids, labels=labels)["loss_sum"]
    loss.backward()
    seconds = time.perf_counter() - t0
    print(json.dumps({"variant": args.variant, "loss_sum": float(loss.detach()), "seconds": round(seconds, 1),
                      "peak_before_mib": round(before), "peak_mib": round(_peak_mib()),
                      "added_mib": round(_peak_mib() - before)}), flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--vocab", type=int, default=64007)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--chunk", type=int, default=1024, help="loss_chunk_tokens of the chunked variant")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--variants", default="full-logits,chunked")
    ap.add_argument("--tree", default=None, help="another checkout whose KosmosModel.forward runs as 'tree'")
    ap.add_argument("--variant", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.variant:
        return child(args)
    variants = [v for v in args.variants.split(",") if v]
    if args.tree:
        variants.append("tree")
    known = {"full-logits", "chunked", "tree"}
    if set(variants) - known:
        ap.error(f"unknown variants {sorted(set(variants) - known)}; known: {sorted(known)}")
    print(f"d={args.dim} layers={args.layers} vocab={args.vocab} seq={args.seq} micro-batch={args.batch} "
          f"chunk={args.chunk} fp32 CPU", flush=True)
    for v in variants:
        tree = Path(args.tree).resolve() if v == "tree" else ROOT
        argv = [sys.executable, str(Path(__file__).resolve()), "--variant", "chunked" if v == "tree" else v]
        for name in ("dim", "layers", "vocab", "seq", "batch", "chunk", "threads"):
            argv += [f"--{name}", str(getattr(args, name))]
        env = dict(os.environ, PYTHONPATH=str(tree))
        out = subprocess.run(argv, capture_output=True, text=True, cwd=tree, env=env)
        if out.returncode != 0:
            sys.exit(f"variant {v} failed:\n{out.stderr[-3000:]}")
        r = json.loads(out.stdout.strip().splitlines()[-1])
        label = f"tree {tree}" if v == "tree" else v
        print(f"{label:<28} peak {r['peak_mib']:>7,d} MiB  (+{r['added_mib']:,d} MiB over the model and inputs, "
              f"{r['peak_before_mib']:,d} MiB)  loss_sum {r['loss_sum']:.2f}  {r['seconds']} s", flush=True)


if __name__ == "__main__":
    main()
