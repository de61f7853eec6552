"""The vision tower: CLIP ViT-L/14 from open_clip (KOSMOS.md §2), per-patch
features, frozen except its last residual block and its final norm."""

from __future__ import annotations

import logging
import os
import zipfile
from typing import Optional

import torch
from torch import nn

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
TINY_VIT = "kosmos-tiny-vit"

log = logging.getLogger(__name__)


def _is_torchscript_archive(path: str) -> bool:
    """OpenAI's own CLIP release files (``ViT-L-14.pt``) are TorchScript archives."""
    try:
        with zipfile.ZipFile(path) as zf:
            return any(n.endswith("constants.pkl") or "/code/" in n for n in zf.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def quick_gelu_for(name: str, pretrained: Optional[str], override: Optional[bool] = None) -> bool:
    """The activation the weights were trained with: QuickGELU for OpenAI's CLIP
    weights, GELU for most others (open_clip's pretrained table says which per tag).

    ``override`` (``model.vision_quick_gelu``) wins. A known tag answers from open_clip's
    table; a local file in OpenAI's TorchScript release format means QuickGELU; any
    other local checkpoint cannot tell and is taken as GELU, with a warning saying how
    to choose. Without weights (``None``), GELU, as open_clip builds the name."""
    if override is not None:
        return bool(override)
    if not pretrained:
        return False
    import open_clip
    if os.path.isfile(pretrained):
        if _is_torchscript_archive(pretrained):
            return True
        log.warning("%s: a local CLIP checkpoint does not say which activation it was trained with; "
                    "using GELU. For OpenAI's weights set model.vision_quick_gelu=true.", pretrained)
        return False
    cfg = open_clip.get_pretrained_cfg(name, pretrained) or {}
    return bool(cfg.get("quick_gelu", False))


def register_tiny_config() -> None:
    """Make the tiny test tower (width 64, 2 layers) known to open_clip."""
    import open_clip
    if TINY_VIT not in open_clip.list_models():
        open_clip.add_model_config(os.path.join(os.path.dirname(__file__), "configs", f"{TINY_VIT}.json"))


class CLIPVisionEncoder(nn.Module):
    """Images [B, 3, H, W] (CLIP-normalised) -> patch features [B, patches, width].

    ``pretrained`` is what open_clip accepts: a tag such as ``"openai"`` (downloaded
    where a hub is reachable) or the path of a local checkpoint; None starts from
    random weights (tests, or when the checkpoint is loaded later). ``quick_gelu``:
    None decides from the weights (:func:`quick_gelu_for`)."""

    def __init__(self, name: str = "ViT-L-14", pretrained: Optional[str] = None, trainable_blocks: int = 1,
                 quick_gelu: Optional[bool] = None):
        super().__init__()
        import open_clip
        if name == TINY_VIT:
            register_tiny_config()
        self.quick_gelu = quick_gelu_for(name, pretrained, quick_gelu)
        # Under ``with torch.device("meta")`` open_clip must not move weights to the CPU.
        device = "meta" if torch.empty(0).device.type == "meta" else "cpu"
        clip = open_clip.create_model(name, pretrained=pretrained, device=device,
                                      force_quick_gelu=self.quick_gelu)
        self.visual = clip.visual
        self.visual.output_tokens = True
        self.width = self.visual.transformer.width
        self.image_size = int(self.visual.image_size[0])     # the input side the tower was built for
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
