"""xPos relative positions (Sun et al., 2022, "A Length-Extrapolatable
Transformer"), as Kosmos-1 uses them (KOSMOS.md §2).

A rotary embedding on interleaved pairs (GPT-J style) whose amplitude decays with
distance: the query at position n is scaled by zeta^(n / scale_base), the key at m
by zeta^(-m / scale_base), so their product carries zeta^((n - m) / scale_base),
with zeta_i = (2i + 0.4 d) / (1.4 d). Scales use positions centred on the middle of
the sequence to keep them near 1, and a key/value cache keeps keys unrotated so
that the decode step of length 1 sees exactly the numbers a full forward would.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn


def _rotate_pairs(x: torch.Tensor) -> torch.Tensor:
    """(x0, x1, x2, x3, ...) -> (-x1, x0, -x3, x2, ...)."""
    even, odd = x[..., 0::2], x[..., 1::2]
    return torch.stack((-odd, even), dim=-1).flatten(-2)


class XPos(nn.Module):
    def __init__(self, head_dim: int, scale_base: int = 512, theta: float = 10000.0):
        super().__init__()
        if head_dim % 2:
            raise ValueError("xPos needs an even head dimension")
        self.head_dim = head_dim
        self.scale_base = scale_base
        half = head_dim // 2
        self.register_buffer("zeta", (torch.arange(0, head_dim, 2, dtype=torch.float32) + 0.4 * head_dim)
                             / (1.4 * head_dim), persistent=False)
        self.register_buffer("inv_freq", 1.0 / theta ** (torch.arange(half, dtype=torch.float32) / half),
                             persistent=False)

    def forward(self, x: torch.Tensor, total_len: int, downscale: bool = False,
                shift: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Rotate and scale ``x`` [..., L, head_dim], the last L positions of a
        sequence of ``total_len``. Keys are downscaled, queries upscaled.

        ``shift`` [B] (x is [B, H, L, head_dim]): row b's sequence starts ``shift[b]``
        positions late (left padding), so its positions count from there and its own
        length is ``total_len - shift[b]``: a padded row gets exactly the numbers it
        would get alone."""
        length = x.shape[-2]
        first = total_len - length
        index = torch.arange(first, total_len, device=x.device, dtype=torch.float32)
        if shift is None:
            centred = index - (total_len + 1) // 2        # positions around the middle
        else:
            shift = shift.to(device=x.device, dtype=torch.float32)
            index = index[None, :] - shift[:, None]                                   # [B, L]
            centred = index - torch.div(total_len - shift + 1, 2, rounding_mode="floor")[:, None]
        scale = self.zeta.to(x.device) ** (centred / self.scale_base)[..., None]   # [(B,) L, half]
        if downscale:
            scale = 1.0 / scale
        angles = index[..., None] * self.inv_freq.to(x.device)
        sin = (torch.sin(angles) * scale).repeat_interleave(2, dim=-1).to(x.dtype)
        cos = (torch.cos(angles) * scale).repeat_interleave(2, dim=-1).to(x.dtype)
        if shift is not None:            # [B, L, hd] -> [B, 1, L, hd] over the heads
            sin, cos = sin[:, None], cos[:, None]
        return x * cos + _rotate_pairs(x) * sin
