"""The vision tower: CLIP ViT-L/14 from open_clip (KOSMOS.md §2), per-patch
features, frozen except its last residual block and its final norm."""

from __future__ import annotations

import os
from typing import Optional

import torch
from torch import nn

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
TINY_VIT = "kosmos-tiny-vit"


def register_tiny_config() -> None:
    """Make the tiny test tower (width 64, 2 layers) known to open_clip."""
    import open_clip
    if TINY_VIT not in open_clip.list_models():
        open_clip.add_model_config(os.path.join(os.path.dirname(__file__), "configs", f"{TINY_VIT}.json"))


class CLIPVisionEncoder(nn.Module):
    """Images [B, 3, H, W] (CLIP-normalised) -> patch features [B, patches, width].

    ``pretrained`` is what open_clip accepts: a tag such as ``"openai"`` (downloaded
    where a hub is reachable) or the path of a local checkpoint; None starts from
    random weights (tests, or when the checkpoint is loaded later)."""

    def __init__(self, name: str = "ViT-L-14", pretrained: Optional[str] = None, trainable_blocks: int = 1):
        super().__init__()
        import open_clip
        if name == TINY_VIT:
            register_tiny_config()
        # Under ``with torch.device("meta")`` open_clip must not move weights to the CPU.
        device = "meta" if torch.empty(0).device.type == "meta" else "cpu"
        clip = open_clip.create_model(name, pretrained=pretrained, device=device)
        self.visual = clip.visual
        self.visual.output_tokens = True
        self.width = self.visual.transformer.width
        self.name = name
        self.freeze(trainable_blocks)

    def freeze(self, trainable_blocks: int = 1) -> None:
        """Everything frozen but the last ``trainable_blocks`` blocks and the final norm."""
        for p in self.visual.parameters():
            p.requires_grad_(False)
        blocks = self.visual.transformer.resblocks
        for block in list(blocks)[len(blocks) - trainable_blocks:] if trainable_blocks else []:
            for p in block.parameters():
                p.requires_grad_(True)
        for p in self.visual.ln_post.parameters():
            p.requires_grad_(True)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        _, tokens = self.visual(images)
        return tokens
