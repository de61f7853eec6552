"""How the model is spread over the machine, in one place and one order (as
torchtitan arranges it): activation checkpointing, then ``torch.compile``, then
FSDP2, HSDP or DDP. The model itself (trainer/model/) knows nothing of any of them.

The plan for Kosmos-1 (1.6B parameters, 0.3B of them CLIP's frozen layers):

* only what trains is sharded: each decoder layer and each trainable CLIP block is
  its own all-gather unit, the rest of the trainable parameters (embeddings,
  resampler, final norms) the root's;
* the frozen CLIP layers stay outside every FSDP group, whole on every rank: they
  are read, never updated, so gathering them again for every micro-batch (as the
  earlier plan did) was communication for nothing. Under bf16 they are kept in
  bf16, the values FSDP used to gather them in;
* ``hsdp`` shards within a group of ``shard_group_size`` ranks (a node: NVLink) and
  replicates across the groups (the network carries one all-reduce of a
  1/shard_group_size slice of the gradients per step), on a 2-D device mesh
  (replicate, shard).
"""

from __future__ import annotations

from typing import List, Optional, Set, Tuple

import torch
from torch import nn

from trainer.distributed import Dist

PARALLEL = ("auto", "none", "ddp", "fsdp", "hsdp")


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


def frozen_parameters(model: nn.Module) -> Set[nn.Parameter]:
    """The parameters that never train (CLIP's frozen layers): kept whole on every rank."""
    return {p for p in model.parameters() if not p.requires_grad}


def trainable_vision_blocks(model: nn.Module) -> List[nn.Module]:
    """The CLIP blocks that train (the paper: the last one), each its own FSDP unit.
    A block that is partly frozen would put frozen weights into a group: refused."""
    if model.vision is None:
        return []
    out = []
    for i, block in enumerate(model.vision.visual.transformer.resblocks):
        flags = {p.requires_grad for p in block.parameters()}
        if flags == {True, False}:
            raise ValueError(f"CLIP block {i} is partly frozen; freeze or train whole blocks "
                             "(CLIPVisionEncoder.freeze)")
        if flags == {True}:
            out.append(block)
    return out


def shard_group_size(d: Dist, requested: Optional[int]) -> int:
    """``run.shard_group_size`` (default: the ranks of one node), checked against the world."""
    size = requested or d.local_world_size
    if size < 1 or d.world_size % size:
        raise ValueError(f"run.shard_group_size={size} must divide the world size {d.world_size} "
                         "(HSDP shards within groups of that many ranks and replicates across them)")
    return size


def device_mesh(d: Dist, parallel: str, group: Optional[int] = None):
    """1-D (fsdp: all ranks) or 2-D (hsdp: replicate x shard) mesh."""
    from torch.distributed.device_mesh import init_device_mesh
    if parallel == "hsdp":
        size = shard_group_size(d, group)
        return init_device_mesh(d.device.type, (d.world_size // size, size), mesh_dim_names=("replicate", "shard"))
    return init_device_mesh(d.device.type, (d.world_size,), mesh_dim_names=("shard",))


def apply_fsdp(model: nn.Module, d: Dist, bf16: bool, parallel: str = "fsdp",
               group: Optional[int] = None) -> nn.Module:
    """FSDP2 (or HSDP on a 2-D mesh) over the trainable parameters only. Parameters
    stay fp32; with bf16 they are gathered in bf16 and gradients reduced in fp32."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = device_mesh(d, parallel, group)
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 \
        else MixedPrecisionPolicy()
    frozen = frozen_parameters(model)
    if bf16:
        # FSDP casts the root's inputs (the images) to bf16; the frozen layers read them in bf16
        for p in frozen:
            p.data = p.data.to(torch.bfloat16)
    for layer in model.decoder.layers:
        fully_shard(layer, mesh=mesh, mp_policy=mp)
    for block in trainable_vision_blocks(model):
        fully_shard(block, mesh=mesh, mp_policy=mp)
    fully_shard(model, mesh=mesh, mp_policy=mp, ignored_params=frozen or None)
    return model


def apply_ddp(model: nn.Module, d: Dist) -> nn.Module:
    from torch.nn.parallel import DistributedDataParallel as DDP

    # the model has no buffers that change in training (xPos tables are constants)
    return DDP(model, device_ids=[d.local_rank] if d.device.type == "cuda" else None)


def resolve_parallel(parallel: str, d: Dist) -> str:
    """``run.parallel``: "auto" is DDP on more than one rank, nothing on one."""
    if parallel == "auto":
        return "ddp" if d.enabled else "none"
    if parallel not in PARALLEL:
        raise ValueError(f"run.parallel must be one of {', '.join(PARALLEL)}, not {parallel!r}")
    if parallel == "none" and d.enabled:
        # no gradient sync: every rank would step on its own share and the replicas drift apart
        raise ValueError(f"run.parallel=none runs one rank, but this run has {d.world_size}; "
                         "use ddp, fsdp or hsdp (or auto)")
    return parallel


def parallelize(model: nn.Module, d: Dist, parallel: str, *, activation_checkpointing: bool = False,
                compile: bool = False, bf16: bool = False, shard_group_size: Optional[int] = None
                ) -> Tuple[nn.Module, str]:
    """The model (already on its device) made ready for training; returns it (DDP
    wraps it, FSDP2 shards it in place) and the data-parallel scheme in use. DDP,
    FSDP and HSDP run in one process too (a one-rank process group)."""
    parallel = resolve_parallel(parallel, d)
    if shard_group_size is not None and parallel != "hsdp":
        raise ValueError(f"run.shard_group_size is set ({shard_group_size}) but run.parallel is {parallel!r}; "
                         "it only applies to hsdp")
    if activation_checkpointing:
        apply_activation_checkpointing(model)
    if compile:
        apply_compile(model)
    if parallel != "none":
        d.ensure_process_group()
    if parallel in ("fsdp", "hsdp"):
        model = apply_fsdp(model, d, bf16, parallel, shard_group_size)
    elif parallel == "ddp":
        model = apply_ddp(model, d)
    return model, parallel
