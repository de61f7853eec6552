"""Checkpoints: torch.distributed.checkpoint (DCP) for model and optimizer, the
same format for one process, DDP and FSDP2 (each rank writes its shards; a
checkpoint can be loaded on another number of ranks), plus one small file per
rank for what differs between ranks (data position, RNG).

Layout::

    OUTPUT/checkpoints/step-00001000/   .metadata, __0_0.distcp, ... (DCP)
                                        trainer-rank00000.pt (step, data position, RNG)
                                        config.json
    OUTPUT/checkpoints/latest           "step-00001000"

A checkpoint is written to ``step-N.tmp`` and renamed when every rank is done,
so an interrupted save never looks complete. Older ones beyond ``keep_last`` are
deleted. Local paths, or any fsspec URL (DCP's fsspec writer).
"""

from __future__ import annotations

import io
import json
import random
import re
import warnings
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                     get_state_dict, set_model_state_dict, set_state_dict)

from trainer.distributed import Dist
from trainer.shards import join, url_to_fs

STEP_DIR = re.compile(r"^step-(\d+)$")
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


def rng_state() -> Dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def save(root: str, step: int, model, optimizer, extra: Dict[str, Any], d: Dist, keep_last: int,
         config_json: str) -> str:
    name = f"step-{step:08d}"
    final, tmp = join(root, name), join(root, name + ".tmp")
    fs, _ = url_to_fs(root)
    if d.is_main:
        fs.makedirs(url_to_fs(root)[1], exist_ok=True)
        if fs.exists(url_to_fs(tmp)[1]):
            fs.rm(url_to_fs(tmp)[1], recursive=True)
    d.barrier()
    model_sd, optim_sd = get_state_dict(model, optimizer)
    dcp.save({"model": model_sd, "optim": optim_sd}, storage_writer=_writer(tmp))
    buf = io.BytesIO()
    torch.save(extra, buf)
    with fs.open(url_to_fs(join(tmp, f"trainer-rank{d.rank:05d}.pt"))[1], "wb") as fh:
        fh.write(buf.getvalue())
    d.barrier()
    if d.is_main:
        with fs.open(url_to_fs(join(tmp, "config.json"))[1], "w") as fh:
            fh.write(config_json)
        if fs.exists(url_to_fs(final)[1]):
            fs.rm(url_to_fs(final)[1], recursive=True)
        fs.mv(url_to_fs(tmp)[1], url_to_fs(final)[1], recursive=True)
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


def latest(root: str) -> Optional[str]:
    """The newest complete checkpoint under ``root`` (a run's checkpoints/ folder)."""
    fs, local = url_to_fs(root)
    if not fs.exists(local):
        return None
    steps = sorted((int(m.group(1)), p.rstrip("/").rsplit("/", 1)[-1]) for p in fs.ls(local, detail=False)
                   if (m := STEP_DIR.match(p.rstrip("/").rsplit("/", 1)[-1])))
    return join(root, steps[-1][1]) if steps else None


def load(path: str, model, optimizer, d: Dist) -> Tuple[int, Dict[str, Any]]:
    """Model, optimizer and this rank's extra state (its data position, RNG) back."""
    model_sd, optim_sd = get_state_dict(model, optimizer)
    state = {"model": model_sd, "optim": optim_sd}
    dcp.load(state, storage_reader=_reader(path))
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    fs, _ = url_to_fs(path)
    extra_path = join(path, f"trainer-rank{d.rank:05d}.pt")
    if not fs.exists(url_to_fs(extra_path)[1]):
        raise FileNotFoundError(f"{extra_path} missing: the checkpoint was written by fewer ranks than "
                                f"this run has ({d.world_size}); resume with the same number of ranks")
    with fs.open(url_to_fs(extra_path)[1], "rb") as fh:
        extra = torch.load(io.BytesIO(fh.read()), weights_only=False)
    return int(extra["step"]), extra


def load_model_weights(path: str, model) -> None:
    """Only the model's weights (``--init`` for instruction tuning)."""
    sd = get_model_state_dict(model)
    dcp.load({"model": sd}, storage_reader=_reader(path))
    set_model_state_dict(model, sd, options=StateDictOptions(strict=True))


def read_config(path: str) -> Dict[str, Any]:
    fs, _ = url_to_fs(path)
    with fs.open(url_to_fs(join(path, "config.json"))[1], "r") as fh:
        return json.load(fh)
