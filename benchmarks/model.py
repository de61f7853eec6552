"""Forward+backward speed of the decoder on CPU (not a test), side by side with
torchscale's Decoder of the same size (Sub-LN, xPos), in the same run.

    scripts/in-venv python benchmarks/model.py [--steps 5]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainer.model.decoder import DecoderConfig, MagnetoDecoder  # noqa: E402

SIZES = {
    "tiny": dict(layers=2, dim=64, ffn_dim=256, heads=4, vocab=519, batch=8, seq=256),
    "mid": dict(layers=6, dim=512, ffn_dim=2048, heads=8, vocab=32007, batch=4, seq=512),
}


def ours(size):
    return MagnetoDecoder(DecoderConfig(vocab_size=size["vocab"], layers=size["layers"], dim=size["dim"],
                                        ffn_dim=size["ffn_dim"], heads=size["heads"], dropout=0.0))


def reference(size):
    from torchscale.architecture.config import DecoderConfig as TSConfig
    from torchscale.architecture.decoder import Decoder
    args = TSConfig(vocab_size=size["vocab"], decoder_layers=size["layers"], decoder_embed_dim=size["dim"],
                    decoder_ffn_embed_dim=size["ffn_dim"], decoder_attention_heads=size["heads"], subln=True,
                    xpos_rel_pos=True, dropout=0.0, share_decoder_input_output_embed=True)
    return Decoder(args, embed_tokens=torch.nn.Embedding(size["vocab"], size["dim"]))


def tokens_per_second(model, size, steps):
    tokens = torch.randint(4, size["vocab"], (size["batch"], size["seq"]))
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)

    def step():
        logits, _ = model(tokens)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), tokens.reshape(-1))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # warm-up
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * tokens.numel() / (time.perf_counter() - t0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=5)
    args = ap.parse_args()
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU, float32")
    for name, size in SIZES.items():
        a = tokens_per_second(ours(size), size, args.steps)
        b = tokens_per_second(reference(size), size, args.steps)
        print(f"{name:<5} {size['layers']} layers x {size['dim']}, batch {size['batch']} x {size['seq']}: "
              f"ours {a:,.0f} tok/s, torchscale {b:,.0f} tok/s, ratio {a / b:.2f}")


if __name__ == "__main__":
    main()
