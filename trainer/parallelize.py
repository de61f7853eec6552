"""How the model is spread over the machine, in one place and one order (as
torchtitan arranges it): activation checkpointing, then ``torch.compile``, then
FSDP2 or DDP. The model itself (trainer/model/) knows nothing of any of them."""

from __future__ import annotations

from typing import Tuple

import torch
from torch import nn

from trainer.distributed import Dist


def apply_activation_checkpointing(model: nn.Module) -> None:
    """Each decoder layer recomputes its activations in the backward pass (the RNG
    state is kept, so dropout draws the same masks the second time)."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper
    layers = model.decoder.layers
    for i, layer in enumerate(layers):
        layers[i] = checkpoint_wrapper(layer)


def apply_compile(model: nn.Module) -> None:
    """``torch.compile`` per decoder layer: the layers are alike, so one graph serves all."""
    for layer in model.decoder.layers:
        layer.compile()


def apply_fsdp(model: nn.Module, d: Dist, bf16: bool) -> nn.Module:
    """FSDP2: each decoder layer and each CLIP block is its own all-gather unit; the
    rest (embeddings, resampler, final norms) is the root's. Parameters stay fp32;
    with bf16 they are gathered in bf16 and gradients reduced in fp32."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(d.device.type, (d.world_size,))
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 \
        else MixedPrecisionPolicy()
    for layer in model.decoder.layers:
        fully_shard(layer, mesh=mesh, mp_policy=mp)
    if model.vision is not None:
        for block in model.vision.visual.transformer.resblocks:
            fully_shard(block, mesh=mesh, mp_policy=mp)
    fully_shard(model, mesh=mesh, mp_policy=mp)
    return model


def apply_ddp(model: nn.Module, d: Dist) -> nn.Module:
    from torch.nn.parallel import DistributedDataParallel as DDP

    # the model has no buffers that change in training (xPos tables are constants)
    return DDP(model, device_ids=[d.local_rank] if d.device.type == "cuda" else None)


def resolve_parallel(parallel: str, d: Dist) -> str:
    """``run.parallel``: "auto" is DDP on more than one rank, nothing on one."""
    if parallel == "auto":
        return "ddp" if d.enabled else "none"
    if parallel not in ("none", "ddp", "fsdp"):
        raise ValueError(f"run.parallel must be auto, none, ddp or fsdp, not {parallel!r}")
    return parallel


def parallelize(model: nn.Module, d: Dist, parallel: str, *, activation_checkpointing: bool = False,
                compile: bool = False, bf16: bool = False) -> Tuple[nn.Module, str]:
    """The model (already on its device) made ready for training; returns it (DDP
    wraps it, FSDP2 shards it in place) and the data-parallel scheme in use."""
    parallel = resolve_parallel(parallel, d)
    if activation_checkpointing:
        apply_activation_checkpointing(model)
    if compile:
        apply_compile(model)
    if parallel == "fsdp":
        model = apply_fsdp(model, d, bf16)
    elif parallel == "ddp" and d.enabled:
        model = apply_ddp(model, d)
    return model, parallel
