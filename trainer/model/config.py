"""Named model configurations."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Dict, Optional

from contract.tokens import vocab_size_for
from trainer.model.decoder import DecoderConfig


@dataclass
class KosmosConfig:
    name: str
    decoder: DecoderConfig
    vision_model: str = "ViT-L-14"
    vision_pretrained: Optional[str] = None     # "openai", a local checkpoint path, or None
    vision_quick_gelu: Optional[bool] = None    # None: as the weights were trained (OpenAI's: QuickGELU)
    vision_trainable_blocks: int = 1            # paper: frozen except the last layer
    num_image_tokens: int = 64                  # latents per image
    # The paper does not give the resampler's depth; 6 is Flamingo's (Alayrac et al.,
    # 2022, appendix) and OpenFlamingo's default.
    resampler_depth: int = 6
    resampler_heads: int = 16
    resampler_dim_head: int = 64
    resampler_ff_mult: int = 4
    # The next-token loss runs over this many positions at a time (their logits are
    # recomputed in the backward pass rather than kept): see KosmosModel.next_token_loss.
    loss_chunk_tokens: int = 1024

    def to_dict(self) -> Dict:
        return dataclasses.asdict(self)


def kosmos_1() -> KosmosConfig:
    """Paper §3.2: 24 layers, 2048 wide, FFN 8192, 32 heads, 64,007 ids, context 2048,
    CLIP ViT-L/14 at 224 px, 64 image embeddings. The paper calls its resampler an
    attentive pooling and gives no depth; it gets Flamingo's 6 Perceiver layers
    (the class default), which brings the total from ~1.66B to ~1.72B."""
    return KosmosConfig("kosmos-1", DecoderConfig(vocab_size=vocab_size_for(64000)))


def tiny() -> KosmosConfig:
    """A CPU-sized model for tests and the demo (same code paths)."""
    return KosmosConfig(
        "tiny",
        DecoderConfig(vocab_size=vocab_size_for(512), layers=2, dim=64, ffn_dim=256, heads=4, dropout=0.0,
                      max_seq_len=512),
        vision_model="kosmos-tiny-vit", num_image_tokens=8, resampler_depth=1, resampler_heads=2,
        resampler_dim_head=32, resampler_ff_mult=2)


CONFIGS = {"kosmos-1": kosmos_1, "tiny": tiny}


def get_config(name: str) -> KosmosConfig:
    if name not in CONFIGS:
        raise KeyError(f"unknown model config {name!r}; known: {sorted(CONFIGS)}")
    return CONFIGS[name]()
