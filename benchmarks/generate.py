"""Greedy decoding speed (not a test): new tokens per second of ``KosmosModel.generate``
(key/value cache, batched with padding masks) against a loop that runs the whole
sequence again for every new token, on the tiny config and on a mid-size decoder,
in one run. Random weights: the speed does not depend on what is generated, and
``</s>`` is masked in both loops so both produce exactly ``--new`` tokens.

    scripts/in-venv python benchmarks/generate.py [--new 64] [--prompt 64] [--device cpu]
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch

from trainer.model.config import get_config
from trainer.model.kosmos import KosmosModel


def mid_size():
    """A GPT-2-small-sized decoder (12 x 768, 32k pieces) on the Kosmos code."""
    cfg = get_config("tiny")
    dec = dataclasses.replace(cfg.decoder, layers=12, dim=768, ffn_dim=3072, heads=12, vocab_size=32007,
                              max_seq_len=2048)
    return dataclasses.replace(cfg, name="mid (12 x 768)", decoder=dec)


def uncached(model, prompts, new):
    """The reference: a full forward over prompt + output for every new token."""
    seq = prompts
    for _ in range(new):
        logits, _ = model.decoder(seq)
        lp = logits[:, -1].float()
        lp[:, model.never_generated() + [model.ids.eos]] = float("-inf")
        seq = torch.cat([seq, lp.argmax(-1, keepdim=True)], dim=1)
    return seq[:, prompts.shape[1]:]


def cached(model, prompts, new):
    banned = model.never_generated() + [model.ids.eos]     # the same number of tokens as the reference loop
    model.never_generated = lambda: banned
    try:
        return torch.tensor(model.generate(prompts, None, max_new_tokens=new))
    finally:
        del model.never_generated                           # back to the class's method


def timed(fn, *args, repeat=2):
    best = float("inf")
    out = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn(*args)
        best = min(best, time.perf_counter() - t0)
    return best, out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--prompt", type=int, default=64)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    print(f"greedy decoding, prompt {args.prompt} tokens, {args.new} new tokens, device {args.device}, "
          f"{torch.get_num_threads()} threads")
    print(f"{'model':<16} {'batch':>5} {'cached tok/s':>13} {'uncached tok/s':>15} {'speed-up':>9}  same output")
    for cfg in (get_config("tiny"), mid_size()):
        torch.manual_seed(0)
        model = KosmosModel(cfg, build_vision=False).to(args.device).eval()
        for b in args.batch:
            g = torch.Generator().manual_seed(b)
            prompts = torch.randint(4, 4 + cfg.decoder.vocab_size - 7 - 4, (b, args.prompt), generator=g)
            prompts[:, 0] = model.ids.bos
            prompts = prompts.to(args.device)
            tc, out_c = timed(cached, model, prompts, args.new)
            tu, out_u = timed(uncached, model, prompts, args.new, repeat=1)
            same = torch.equal(out_c.cpu(), out_u.cpu())
            n = b * args.new
            print(f"{cfg.name:<16} {b:>5} {n / tc:>13,.0f} {n / tu:>15,.0f} {tu / tc:>8.1f}x  {same}")


if __name__ == "__main__":
    main()
