"""Checkpoints: torch.distributed.checkpoint (DCP) for model and optimizer, the
same format for one process, DDP and FSDP2 (each rank writes its shards; a
checkpoint can be loaded on another number of ranks), plus one small file per
rank for what differs between ranks (data position, RNG).

What is saved is a set of ``Stateful`` objects (torch.distributed.checkpoint's
protocol: ``state_dict()`` / ``load_state_dict()``), as torchtitan keeps them:
the sharded ones (model, optimizer) through DCP, the per-rank ones (train step,
data position, RNG) in one file per rank. Loading puts the state back into the
same objects.

Layout::

    OUTPUT/checkpoints/step-00001000/   .metadata, __0_0.distcp, ... (DCP: model, optim)
                                        trainer-rank00000.pt (train step, data position, RNG)
                                        config.json
    OUTPUT/checkpoints/latest           "step-00001000"

A checkpoint is written to ``step-N.tmp`` and renamed when every rank is done,
so an interrupted save never looks complete. Older ones beyond ``keep_last`` are
deleted. Local paths, or any fsspec URL (DCP's fsspec writer).

A save that cannot fit says so (:class:`CheckpointSpaceError`, before writing when
a local disk's free space is known to be short, and after a failed write when the
disk filled up), and leaves the previous checkpoints as they were. Resuming with
``auto`` takes the newest checkpoint that loads; a damaged one is reported and
the one before it is tried.
"""

from __future__ import annotations

import errno
import io
import logging
import os
import random
import re
import shutil
import sys
import warnings
from typing import Any, Dict, Optional

import numpy as np
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException  # a BaseException, not an Exception
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict, get_optimizer_state_dict,
                                                     set_model_state_dict, set_optimizer_state_dict)
from torch.distributed.checkpoint.stateful import Stateful

from trainer.distributed import Dist
from trainer.shards import join, url_to_fs

log = logging.getLogger(__name__)

STEP_DIR = re.compile(r"^step-(\d+)$")


class CheckpointSpaceError(OSError):
    """No space left for a checkpoint; names the place, the need and what is free."""


def _state_bytes(obj) -> int:
    """Bytes of the tensors this rank holds in a (nested) state dict."""
    if isinstance(obj, torch.Tensor):
        local = obj.to_local() if hasattr(obj, "to_local") else obj
        return local.numel() * local.element_size()
    if isinstance(obj, dict):
        return sum(_state_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_state_bytes(v) for v in obj)
    return 0


def _free_bytes(path: str) -> Optional[int]:
    """Free bytes on the local file system that holds ``path`` (None for URLs)."""
    if "://" in path and not path.startswith("file://"):
        return None
    probe = os.path.abspath(path.replace("file://", "", 1))
    while not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            return None
        probe = parent
    return shutil.disk_usage(probe).free


def _is_out_of_space(exc: BaseException) -> bool:
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left" in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False
# One process without a process group is a supported DCP mode, not a mistake.
warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")


def _writer(path: str):
    if "://" in path and not path.startswith("file://"):
        from torch.distributed.checkpoint._fsspec_filesystem import FsspecWriter
        return FsspecWriter(path)
    return dcp.FileSystemWriter(path)


def _reader(path: str):
    if "://" in path and not path.startswith("file://"):
        from torch.distributed.checkpoint._fsspec_filesystem import FsspecReader
        return FsspecReader(path)
    return dcp.FileSystemReader(path)


class ModelState(Stateful):
    """A model's weights, whatever wraps them (DDP, FSDP2, activation checkpointing):
    fully qualified names as the bare model has them."""

    def __init__(self, model, strict: bool = True):
        self.model, self.strict = model, strict

    def state_dict(self) -> Dict[str, Any]:
        return get_model_state_dict(self.model)

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        set_model_state_dict(self.model, state, options=StateDictOptions(strict=self.strict))


class OptimizerState(Stateful):
    def __init__(self, model, optimizer):
        self.model, self.optimizer = model, optimizer

    def state_dict(self) -> Dict[str, Any]:
        return get_optimizer_state_dict(self.model, self.optimizer)

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        set_optimizer_state_dict(self.model, self.optimizer, state)


class RngState(Stateful):
    """Python's, numpy's, torch's and (when present) CUDA's generators of this process."""

    def state_dict(self) -> Dict[str, Any]:
        state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state()
        return state

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        random.setstate(state["python"])
        np.random.set_state(state["numpy"])
        torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state(state["cuda"])


def save(root: str, step: int, sharded: Dict[str, Stateful], per_rank: Dict[str, Stateful], d: Dist,
         keep_last: int, config_json: str, name: Optional[str] = None) -> str:
    """Write a checkpoint of ``step``: ``sharded`` through DCP, ``per_rank`` in this
    rank's own file. ``name`` (``"best"``) writes it under that name instead: it is
    neither ``latest`` nor counted by ``keep_last``."""
    named = name is not None
    name = name or f"step-{step:08d}"
    final, tmp = join(root, name), join(root, name + ".tmp")
    fs, _ = url_to_fs(root)
    if d.is_main:
        fs.makedirs(url_to_fs(root)[1], exist_ok=True)
        if fs.exists(url_to_fs(tmp)[1]):
            fs.rm(url_to_fs(tmp)[1], recursive=True)
    d.barrier()
    states = {key: s.state_dict() for key, s in sharded.items()}
    buf = io.BytesIO()
    torch.save({key: s.state_dict() for key, s in per_rank.items()}, buf)
    need = _state_bytes(states) + len(buf.getvalue())
    free = _free_bytes(root)
    short = free is not None and need + (1 << 20) > free
    if int(d.all_sum(torch.tensor([float(short)])).item()) > 0:       # every rank stops, or none
        where = (f"needs about {need / 2**20:.1f} MiB, {free / 2**20:.1f} MiB free" if short
                 else "another rank is short of space")
        raise CheckpointSpaceError(errno.ENOSPC, f"no space left for checkpoint {name} in {root}: {where}; "
                                   f"the previous checkpoints are unchanged")
    try:
        dcp.save(states, storage_writer=_writer(tmp))
        with fs.open(url_to_fs(join(tmp, f"trainer-rank{d.rank:05d}.pt"))[1], "wb") as fh:
            fh.write(buf.getvalue())
    except (Exception, CheckpointException) as exc:
        try:                                # free what the failed save took; earlier checkpoints stay
            if fs.exists(url_to_fs(tmp)[1]):
                fs.rm(url_to_fs(tmp)[1], recursive=True)
        except Exception:
            pass
        left = _free_bytes(root)
        if _is_out_of_space(exc) or (left is not None and left < need):
            raise CheckpointSpaceError(errno.ENOSPC, f"no space left on device writing checkpoint {name} to "
                                       f"{root} (needs about {need / 2**20:.1f} MiB); the previous "
                                       f"checkpoints are unchanged") from exc
        raise
    d.barrier()
    if d.is_main:
        with fs.open(url_to_fs(join(tmp, "config.json"))[1], "w") as fh:
            fh.write(config_json)
        if fs.exists(url_to_fs(final)[1]):
            fs.rm(url_to_fs(final)[1], recursive=True)
        fs.mv(url_to_fs(tmp)[1], url_to_fs(final)[1], recursive=True)
        if not named:
            with fs.open(url_to_fs(join(root, "latest"))[1], "w") as fh:
                fh.write(name)
            _prune(root, keep_last)
    d.barrier()
    return final


def _prune(root: str, keep_last: int) -> None:
    if keep_last <= 0:
        return
    fs, local = url_to_fs(root)
    steps = sorted((int(m.group(1)), p) for p in fs.ls(local, detail=False)
                   if (m := STEP_DIR.match(p.rstrip("/").rsplit("/", 1)[-1])))
    for _, path in steps[:-keep_last]:
        fs.rm(path, recursive=True)


def complete_checkpoints(root: str):
    """Complete checkpoints under ``root``, newest first."""
    fs, local = url_to_fs(root)
    if not fs.exists(local):
        return []
    steps = sorted(((int(m.group(1)), p.rstrip("/").rsplit("/", 1)[-1]) for p in fs.ls(local, detail=False)
                    if (m := STEP_DIR.match(p.rstrip("/").rsplit("/", 1)[-1]))), reverse=True)
    return [join(root, name) for _, name in steps]


def load_newest_intact(root: str, sharded: Dict[str, Stateful], per_rank: Dict[str, Stateful],
                       d: Dist) -> Optional[str]:
    """Load the newest checkpoint under ``root`` that loads on every rank; a damaged
    one is reported and skipped. None when there is none; raises when every
    checkpoint there is damaged."""
    damaged = []
    for path in complete_checkpoints(root):
        try:
            load(path, sharded, per_rank, d)
            failed = 0.0
        except (Exception, CheckpointException) as exc:   # bad metadata, a short shard, a missing rank file
            failed, why = 1.0, f"{type(exc).__name__}: {exc}"
        if int(d.all_sum(torch.tensor([failed])).item()) == 0:
            return path
        if failed:
            log.error("checkpoint %s is damaged (%s); trying the one before it", path, why[:500])
            print(f"rank {d.rank}: checkpoint {path} is damaged ({why[:300]}); trying the one before it",
                  file=sys.stderr, flush=True)
        damaged.append(path)
    if damaged:
        raise RuntimeError(f"every checkpoint under {root} is damaged: {', '.join(damaged)}")
    return None


def load(path: str, sharded: Dict[str, Stateful], per_rank: Dict[str, Stateful], d: Dist) -> None:
    """The checkpoint at ``path`` back into the same objects it was saved from. The
    per-rank file is read first: a checkpoint of fewer ranks fails before any state
    has changed."""
    fs, _ = url_to_fs(path)
    extra_path = join(path, f"trainer-rank{d.rank:05d}.pt")
    if not fs.exists(url_to_fs(extra_path)[1]):
        raise FileNotFoundError(f"{extra_path} missing: the checkpoint was written by fewer ranks than "
                                f"this run has ({d.world_size}); resume with the same number of ranks")
    with fs.open(url_to_fs(extra_path)[1], "rb") as fh:
        rank_state = torch.load(io.BytesIO(fh.read()), weights_only=False)
    missing = sorted(set(per_rank) - set(rank_state))
    if missing:
        raise KeyError(f"{extra_path} holds no {', '.join(missing)} state")
    dcp.load(dict(sharded), storage_reader=_reader(path))
    for key, s in per_rank.items():
        s.load_state_dict(rank_state[key])


def load_model_weights(path: str, model) -> None:
    """Only the model's weights (``--init`` for instruction tuning)."""
    dcp.load({"model": ModelState(model)}, storage_reader=_reader(path))
