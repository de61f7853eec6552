"""The Perceiver Resampler (Alayrac et al., 2022, Flamingo): a fixed set of
learned latent queries cross-attends to an image's patch features, so every image
becomes the same number of embeddings (64 in Kosmos-1), projected to the
decoder's width."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PerceiverAttention(nn.Module):
    def __init__(self, dim: int, heads: int, dim_head: int):
        super().__init__()
        inner = heads * dim_head
        self.heads, self.dim_head = heads, dim_head
        self.norm_media = nn.LayerNorm(dim)
        self.norm_latents = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, media: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        media, latents = self.norm_media(media), self.norm_latents(latents)
        b, n, _ = latents.shape
        q = self.to_q(latents)
        # Latents attend to the patches and to themselves (Flamingo's choice).
        k, v = self.to_kv(torch.cat([media, latents], dim=1)).chunk(2, dim=-1)
        split = lambda t: t.view(b, t.shape[1], self.heads, self.dim_head).transpose(1, 2)  # noqa: E731
        out = F.scaled_dot_product_attention(split(q), split(k), split(v))
        return self.to_out(out.transpose(1, 2).reshape(b, n, self.heads * self.dim_head))


class PerceiverResampler(nn.Module):
    def __init__(self, media_dim: int, out_dim: int, num_latents: int = 64, depth: int = 1,
                 heads: int = 16, dim_head: int = 64, ff_mult: int = 4):
        super().__init__()
        self.latents = nn.Parameter(torch.randn(num_latents, media_dim) * 0.02)
        self.layers = nn.ModuleList()
        for _ in range(depth):
            self.layers.append(nn.ModuleList([
                PerceiverAttention(media_dim, heads, dim_head),
                nn.Sequential(nn.LayerNorm(media_dim), nn.Linear(media_dim, ff_mult * media_dim, bias=False),
                              nn.GELU(), nn.Linear(ff_mult * media_dim, media_dim, bias=False)),
            ]))
        self.norm = nn.LayerNorm(media_dim)
        self.proj = nn.Linear(media_dim, out_dim)
        self.num_latents = num_latents

    def forward(self, media: torch.Tensor) -> torch.Tensor:
        """[images, patches, media_dim] -> [images, num_latents, out_dim]."""
        latents = self.latents.unsqueeze(0).expand(media.shape[0], -1, -1)
        for attn, ff in self.layers:
            latents = latents + attn(media, latents)
            latents = latents + ff(latents)
        return self.proj(self.norm(latents))
