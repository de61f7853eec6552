"""The MAGNETO causal decoder (Wang et al., 2022, "Foundation Transformers"), as
configured for Kosmos-1 (KOSMOS.md §2): Sub-LN blocks

    x = x + out_proj(LN(attention(LN(x))))
    x = x + fc2(LN(gelu(fc1(LN(x)))))

a final LayerNorm, xPos in attention, and the Magneto initialisation as torchscale
0.3.0's ``Decoder`` does it (see ``MagnetoDecoder.reset_parameters``).

Module and parameter names follow torchscale's ``Decoder`` so that checkpoints map
one to one (``self_attn.q_proj``, ``ffn.ffn_layernorm``, ...). Attention goes
through ``scaled_dot_product_attention`` so fused kernels are used on GPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from trainer.model.xpos import XPos

KVCache = List[Tuple[torch.Tensor, torch.Tensor]]   # per layer: unrotated keys, values [B, H, S, hd]


@dataclass
class DecoderConfig:
    vocab_size: int
    layers: int = 24
    dim: int = 2048
    ffn_dim: int = 8192
    heads: int = 32
    dropout: float = 0.1
    attention_dropout: float = 0.0
    activation_dropout: float = 0.0
    layernorm_eps: float = 1e-5
    xpos_scale_base: int = 512
    max_seq_len: int = 2048
    tie_embeddings: bool = True
    pad_id: int = 1
    # The embedding and output matrices get rows up to a multiple of this (GEMM-friendly
    # shapes); the extra rows are never looked up, never targets and never outputs.
    vocab_multiple: int = 64

    @property
    def padded_vocab_size(self) -> int:
        """Rows of the embedding and output matrices: ``vocab_size`` rounded up to ``vocab_multiple``."""
        if self.vocab_multiple < 1:
            raise ValueError(f"DecoderConfig.vocab_multiple must be >= 1, not {self.vocab_multiple}")
        return -(-self.vocab_size // self.vocab_multiple) * self.vocab_multiple


class MagnetoSelfAttention(nn.Module):
    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        if cfg.dim % cfg.heads:
            raise ValueError("dim must be a multiple of heads")
        self.heads = cfg.heads
        self.head_dim = cfg.dim // cfg.heads
        self.q_proj = nn.Linear(cfg.dim, cfg.dim)
        self.k_proj = nn.Linear(cfg.dim, cfg.dim)
        self.v_proj = nn.Linear(cfg.dim, cfg.dim)
        self.out_proj = nn.Linear(cfg.dim, cfg.dim)
        self.inner_attn_ln = nn.LayerNorm(cfg.dim, eps=cfg.layernorm_eps)   # Sub-LN
        self.xpos = XPos(self.head_dim, cfg.xpos_scale_base)
        self.attention_dropout = cfg.attention_dropout

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        return x.view(b, t, self.heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor, past: Optional[Tuple[torch.Tensor, torch.Tensor]] = None,
                key_mask: Optional[torch.Tensor] = None, use_cache: bool = True,
                shift: Optional[torch.Tensor] = None):
        b, length, dim = x.shape
        q, k, v = self._split(self.q_proj(x)), self._split(self.k_proj(x)), self._split(self.v_proj(x))
        if past is not None:
            k = torch.cat([past[0], k], dim=2)
            v = torch.cat([past[1], v], dim=2)
        present = (k, v) if use_cache else None
        total = k.shape[2]
        q = self.xpos(q, total, downscale=False, shift=shift)
        k = self.xpos(k, total, downscale=True, shift=shift)
        past_len = total - length
        mask = None
        if key_mask is not None or (past_len and length > 1):
            # Causal with an offset, combined with the padding mask of the keys;
            # a position may always see itself so no row is empty.
            qpos = torch.arange(past_len, total, device=x.device)[:, None]
            kpos = torch.arange(total, device=x.device)[None, :]
            mask = (kpos <= qpos)[None, None]
            if key_mask is not None:
                mask = mask & (key_mask[:, None, None, :].bool() | (kpos == qpos)[None, None])
        attn = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.attention_dropout if self.training else 0.0,
            is_causal=mask is None and past_len == 0 and length > 1)
        attn = attn.transpose(1, 2).reshape(b, length, dim)
        return self.out_proj(self.inner_attn_ln(attn)), present


class MagnetoFeedForward(nn.Module):
    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        self.fc1 = nn.Linear(cfg.dim, cfg.ffn_dim)
        self.fc2 = nn.Linear(cfg.ffn_dim, cfg.dim)
        self.ffn_layernorm = nn.LayerNorm(cfg.ffn_dim, eps=cfg.layernorm_eps)   # Sub-LN
        self.activation_dropout = nn.Dropout(cfg.activation_dropout)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.gelu(self.fc1(x).float()).type_as(x)
        h = self.ffn_layernorm(self.activation_dropout(h))
        return self.dropout(self.fc2(h))


class MagnetoDecoderLayer(nn.Module):
    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        self.self_attn_layer_norm = nn.LayerNorm(cfg.dim, eps=cfg.layernorm_eps)
        self.self_attn = MagnetoSelfAttention(cfg)
        self.final_layer_norm = nn.LayerNorm(cfg.dim, eps=cfg.layernorm_eps)
        self.ffn = MagnetoFeedForward(cfg)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x, past=None, key_mask=None, use_cache=True, shift=None):
        h, present = self.self_attn(self.self_attn_layer_norm(x), past, key_mask, use_cache, shift)
        x = x + self.dropout(h)
        x = x + self.ffn(self.final_layer_norm(x))
        return x, present


class MagnetoDecoder(nn.Module):
    """Token embeddings in, logits out; ``forward`` also takes embeddings directly
    (the Kosmos model splices image embeddings into them). The embedding and output
    matrices have ``cfg.padded_vocab_size`` rows; logits are returned for the
    ``cfg.vocab_size`` real ids only."""

    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        self.cfg = cfg
        rows = cfg.padded_vocab_size
        self.embed_tokens = nn.Embedding(rows, cfg.dim, padding_idx=cfg.pad_id)
        self.dropout = nn.Dropout(cfg.dropout)
        self.layers = nn.ModuleList(MagnetoDecoderLayer(cfg) for _ in range(cfg.layers))
        self.layer_norm = nn.LayerNorm(cfg.dim, eps=cfg.layernorm_eps)
        self.output_projection = nn.Linear(cfg.dim, rows, bias=False)
        if cfg.tie_embeddings:
            self.output_projection.weight = self.embed_tokens.weight
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self):
        """The initialisation of torchscale 0.3.0's ``Decoder`` with ``subln=True`` as
        fairseq builds it for a language model:

        * every Linear keeps PyTorch's default init, U(+-1/sqrt(fan_in)) for weights and
          biases: torchscale's ``MultiheadAttention.reset_parameters`` (xavier, gain
          1/sqrt(2)) exists but nothing calls it, and ``bert_init`` is off;
        * then the weights and biases of fc1, fc2, out_proj and v_proj are multiplied
          by sqrt(ln(2N)) (Magneto, N = layers);
        * token embeddings N(0, dim^-0.5) with the padding row zero (fairseq's
          ``Embedding``); the output projection is the same matrix (tied), or its own
          N(0, dim^-0.5) when untied;
        * the padding rows beyond ``vocab_size`` are zero, and stay zero: they are never
          looked up and their logits are never part of a softmax, so no gradient reaches them.
        """
        if self.embed_tokens.weight.is_meta:
            return
        v = self.cfg.vocab_size
        nn.init.normal_(self.embed_tokens.weight, mean=0.0, std=self.cfg.dim ** -0.5)
        self.embed_tokens.weight[self.cfg.pad_id].zero_()
        self.embed_tokens.weight[v:].zero_()
        if not self.cfg.tie_embeddings:
            nn.init.normal_(self.output_projection.weight, mean=0.0, std=self.cfg.dim ** -0.5)
            self.output_projection.weight[v:].zero_()
        gamma = math.sqrt(math.log(2 * self.cfg.layers))
        for name, p in self.layers.named_parameters():
            if any(part in name for part in ("fc1", "fc2", "out_proj", "v_proj")):
                p.mul_(gamma)

    def forward(self, tokens: Optional[torch.Tensor] = None, embeds: Optional[torch.Tensor] = None,
                cache: Optional[KVCache] = None, key_mask: Optional[torch.Tensor] = None,
                features_only: bool = False, shift: Optional[torch.Tensor] = None,
                use_cache: Optional[bool] = None):
        """Returns (logits [B, L, vocab_size] or features [B, L, dim], new cache); the
        logits are a view that leaves out the padding columns. ``key_mask`` [B, past + L]
        marks real (1) and padding (0) positions; ``shift`` [B], the number of left
        padding positions of each row, makes xPos count each row from its first real
        token (batched generation of prompts of different lengths). ``use_cache``: keep
        each layer's keys and values for a next call (default: with a cache, or in eval
        mode); a forward whose cache nobody reads (a loss, a score) passes False."""
        x = self.embed_tokens(tokens) if embeds is None else embeds
        x = self.dropout(x)
        presents: KVCache = []
        # Training without a cache returns no keys/values (nothing to keep; FSDP2 warns about views).
        if use_cache is None:
            use_cache = cache is not None or not self.training
        for i, layer in enumerate(self.layers):
            x, present = layer(x, None if cache is None else cache[i], key_mask, use_cache, shift)
            presents.append(present)
        x = self.layer_norm(x)
        if features_only:
            return x, presents
        return self.output_projection(x)[..., :self.cfg.vocab_size], presents
