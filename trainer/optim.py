"""The optimizer of a run: AdamW over its parameter groups, and the learning-rate
schedule the loop sets before every step (KOSMOS.md §3: 375 warm-up steps to the
peak, then linear decay to 0)."""

from __future__ import annotations

from typing import Any, Dict, List

import torch
from torch import nn

from trainer.config import TrainConfig

NO_DECAY_NAMES = ("embed_tokens", "latents", "positional_embedding", "class_embedding")


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up to the peak over ``warmup_steps``, then linear decay to 0 at ``steps``."""
    o = cfg.optim
    if o.warmup_steps > 0 and step < o.warmup_steps:
        return o.lr * (step + 1) / o.warmup_steps
    span = max(1, o.steps - o.warmup_steps)
    return o.lr * max(0.0, (o.steps - step) / span)


def param_groups(model: nn.Module, weight_decay: float, scope: str = "all") -> List[Dict[str, Any]]:
    """The optimizer's parameter groups (``optim.weight_decay_scope``): "all" decays
    every trainable parameter, as fairseq's Adam did for Kosmos-1; "matrices" leaves
    out norms, biases, embeddings and latents (1-D tensors and ``NO_DECAY_NAMES``)."""
    if scope not in ("all", "matrices"):
        raise ValueError(f"optim.weight_decay_scope must be 'all' or 'matrices', not {scope!r}")
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if scope == "matrices" and (p.ndim < 2 or any(n in name for n in NO_DECAY_NAMES)):
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW at the schedule's first learning rate (fused on a GPU)."""
    o = cfg.optim
    return torch.optim.AdamW(param_groups(model, o.weight_decay, o.weight_decay_scope), lr=lr_at(0, cfg),
                             betas=tuple(o.betas), eps=o.eps, fused=True if device.type == "cuda" else None)
