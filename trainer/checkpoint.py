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
                                        config.json (the run's settings)
                                        meta.json (the model's settings, the tokenizer's sha256)
                                        complete (written last)
    OUTPUT/checkpoints/latest           "step-00001000"
    OUTPUT/checkpoints/best             "step-00000800" (the lowest validation loss; best.json)

Saving is asynchronous (DCP ``async_save``): the state is copied to CPU memory at
the step and written by a background thread while training goes on; the next save,
and the end of the run (:func:`wait_for_saves`), wait for it first. A checkpoint is
written to ``step-N.tmp``, renamed when every rank is done and marked ``complete``
only then, so an interrupted save never looks complete (also where a rename is a
copy, as on object stores). Older ones beyond ``keep_last`` are deleted, never the
one ``best`` names. Local paths, or any fsspec URL (DCP's fsspec writer).

A save that cannot fit says so (:class:`CheckpointSpaceError`, before writing when
a local disk's free space is known to be short, and after a failed write when the
disk filled up), and leaves the previous checkpoints as they were. Resuming with
``auto`` takes the newest checkpoint that loads; a damaged one is reported and
the one before it is tried. A checkpoint of another model or tokenizer (its
``meta.json`` against the run's) is not damaged: the run is refused with what differs
(:class:`CheckpointMismatchError`), before anything is loaded.
"""

from __future__ import annotations

import errno
import io
import json
import logging
import os
import random
import re
import shutil
import sys
import warnings
from typing import Any, Dict, List, Optional

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
META = "meta.json"            # what the checkpoint is a checkpoint of (model settings, tokenizer)
COMPLETE = "complete"         # written after everything else: a directory without it is unfinished


class CheckpointSpaceError(OSError):
    """No space left for a checkpoint; names the place, the need and what is free."""


class CheckpointMismatchError(ValueError):
    """A checkpoint of another model or tokenizer than the run's: not damaged, not loadable here."""


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


class _PendingSave:
    """A checkpoint whose tensors a background thread is writing; :meth:`finish`
    waits for it and makes it complete."""

    def __init__(self, root, name, tmp, final, future, d, keep_last, config_json, meta_json, best, need):
        self.root, self.name, self.tmp, self.final, self.future = root, name, tmp, final, future
        self.d, self.keep_last, self.config_json, self.meta_json = d, keep_last, config_json, meta_json
        self.best, self.need = best, need

    def finish(self) -> str:
        fs, _ = url_to_fs(self.root)
        try:
            self.future.result()
        except (Exception, CheckpointException) as exc:
            _remove_quietly(fs, self.tmp)
            left = _free_bytes(self.root)
            if _is_out_of_space(exc) or (left is not None and left < self.need):
                raise CheckpointSpaceError(errno.ENOSPC, f"no space left on device writing checkpoint {self.name} "
                                           f"to {self.root} (needs about {self.need / 2**20:.1f} MiB); the "
                                           f"previous checkpoints are unchanged") from exc
            raise
        self.d.barrier()
        if self.d.is_main:
            _write_text(fs, join(self.tmp, "config.json"), self.config_json)
            if self.meta_json is not None:
                _write_text(fs, join(self.tmp, META), self.meta_json)
            if fs.exists(url_to_fs(self.final)[1]):
                fs.rm(url_to_fs(self.final)[1], recursive=True)
            fs.mv(url_to_fs(self.tmp)[1], url_to_fs(self.final)[1], recursive=True)
            _write_text(fs, join(self.final, COMPLETE), f"{self.name}\n")
            _write_text(fs, join(self.root, "latest"), self.name)
            if self.best is not None:
                _write_best(self.root, self.name, self.best)
            _prune(self.root, self.keep_last, self.name)
        self.d.barrier()
        return self.final


_pending: Optional[_PendingSave] = None
_groups: Dict[int, Any] = {}


def wait_for_saves() -> Optional[str]:
    """Wait for the checkpoint being written, if any, and make it complete; its path.
    Every rank calls it at the same point (it ends with a barrier)."""
    global _pending
    pending, _pending = _pending, None
    return pending.finish() if pending is not None else None


def abandon_pending() -> None:
    """Forget the checkpoint being written without finishing it (a run stopping on an
    error with other ranks possibly still inside a step: finishing takes barriers).
    Its ``.tmp`` directory stays unrenamed, so no run ever takes it for complete."""
    global _pending
    _pending = None


def _save_group(d: Dist):
    """The process group of the background writes: gloo (async_save stages on the CPU)
    and its own, so that its collectives never interleave with training's."""
    import torch.distributed as dist
    if not dist.is_initialized():
        return None
    if not d.enabled and torch.device("cpu") in dist.group.WORLD._device_types:
        return None          # one rank on gloo: nothing to interleave with
    # one rank on NCCL (a one-process GPU run) has no CPU backend, which async_save needs
    key = id(dist.group.WORLD)
    if key not in _groups:
        _groups[key] = dist.new_group(backend="gloo")
    return _groups[key]


def _write_text(fs, path: str, text: str) -> None:
    with fs.open(url_to_fs(path)[1], "w") as fh:
        fh.write(text)


def _remove_quietly(fs, path: str) -> None:
    try:                                # free what a failed save took; earlier checkpoints stay
        if fs.exists(url_to_fs(path)[1]):
            fs.rm(url_to_fs(path)[1], recursive=True)
    except Exception:
        pass


def save(root: str, step: int, sharded: Dict[str, Stateful], per_rank: Dict[str, Stateful], d: Dist,
         keep_last: int, config_json: str, meta_json: Optional[str] = None, best: Optional[float] = None) -> str:
    """Start writing the checkpoint of ``step``: ``sharded`` through DCP's
    ``async_save`` (copied to CPU memory now, written in the background), ``per_rank``
    in this rank's own file. Waits for the previous save first. ``best``: this step's
    validation loss, the lowest so far (``best`` and ``best.json`` will name it).
    Returns the path the checkpoint will have; it is complete after the next save or
    :func:`wait_for_saves`."""
    global _pending
    wait_for_saves()
    name = f"step-{step:08d}"
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
        fs.makedirs(url_to_fs(tmp)[1], exist_ok=True)
        with fs.open(url_to_fs(join(tmp, f"trainer-rank{d.rank:05d}.pt"))[1], "wb") as fh:
            fh.write(buf.getvalue())
        future = dcp.async_save(states, storage_writer=_writer(tmp), process_group=_save_group(d))
    except (Exception, CheckpointException) as exc:
        _remove_quietly(fs, tmp)
        left = _free_bytes(root)
        if _is_out_of_space(exc) or (left is not None and left < need):
            raise CheckpointSpaceError(errno.ENOSPC, f"no space left on device writing checkpoint {name} to "
                                       f"{root} (needs about {need / 2**20:.1f} MiB); the previous "
                                       f"checkpoints are unchanged") from exc
        raise
    if hasattr(future, "upload_completion"):          # AsyncSaveResponse (a custom stager)
        future = future.upload_completion
    _pending = _PendingSave(root, name, tmp, final, future, d, keep_last, config_json, meta_json, best, need)
    return final


def _read_pointer(root: str, name: str) -> Optional[str]:
    """The checkpoint a pointer file (``latest``, ``best``) names, or None."""
    fs, local = url_to_fs(join(root, name))
    if not fs.exists(local) or fs.isdir(local):
        return None
    with fs.open(local, "r") as fh:
        return fh.read().strip() or None


def best_so_far(root: str) -> Optional[float]:
    """The validation loss of the checkpoint ``best`` names (a resumed run keeps
    improving on it)."""
    fs, local = url_to_fs(join(root, "best.json"))
    if not fs.exists(local):
        return None
    with fs.open(local, "r") as fh:
        return float(json.load(fh)["val_loss"])


def _write_best(root: str, name: str, loss: float) -> None:
    fs, _ = url_to_fs(root)
    pointer = url_to_fs(join(root, "best"))[1]
    if fs.exists(pointer) and fs.isdir(pointer):     # the full copy older runs kept: the pointer replaces it
        fs.rm(pointer, recursive=True)
    _write_text(fs, join(root, "best.json"), json.dumps({"checkpoint": name, "step": int(STEP_DIR.match(name).group(1)),
                                                         "val_loss": loss}))
    _write_text(fs, join(root, "best"), name)


def _prune(root: str, keep_last: int, newest: Optional[str] = None) -> None:
    """Keep the last ``keep_last`` checkpoints up to ``newest`` (the one just written)
    and the one ``best`` names. Step directories above ``newest`` (left by a run this
    one rewound from) are neither counted nor removed here, so they never push this
    run's own checkpoints out."""
    if keep_last <= 0:
        return
    fs, local = url_to_fs(root)
    best = _read_pointer(root, "best")
    steps = sorted((int(m.group(1)), p) for p in fs.ls(local, detail=False)
                   if (m := STEP_DIR.match(p.rstrip("/").rsplit("/", 1)[-1])))
    if newest is not None and (m := STEP_DIR.match(newest)):
        steps = [s for s in steps if s[0] <= int(m.group(1))]
    for _, path in steps[:-keep_last]:
        if path.rstrip("/").rsplit("/", 1)[-1] != best:
            fs.rm(path, recursive=True)


def _is_complete(fs, path: str) -> bool:
    """Marked complete; or written before the marker existed (no meta.json either),
    when the rename alone told."""
    if fs.exists(url_to_fs(join(path, COMPLETE))[1]):
        return True
    return not fs.exists(url_to_fs(join(path, META))[1])


def complete_checkpoints(root: str):
    """Complete checkpoints under ``root``, newest first."""
    fs, local = url_to_fs(root)
    if not fs.exists(local):
        return []
    steps = sorted(((int(m.group(1)), p.rstrip("/").rsplit("/", 1)[-1]) for p in fs.ls(local, detail=False)
                    if (m := STEP_DIR.match(p.rstrip("/").rsplit("/", 1)[-1]))), reverse=True)
    return [join(root, name) for _, name in steps if _is_complete(fs, join(root, name))]


# ------------------------------------------------------------------ what a checkpoint is of
def read_meta(path: str) -> Optional[Dict[str, Any]]:
    """The checkpoint's ``meta.json``; None for one written before it existed."""
    fs, local = url_to_fs(join(path, META))
    if not fs.exists(local):
        return None
    with fs.open(local, "r") as fh:
        return json.load(fh)


def _legacy_meta(path: str) -> Dict[str, Any]:
    """What an older checkpoint's config.json tells of its model (no tokenizer digest)."""
    fs, local = url_to_fs(join(path, "config.json"))
    with fs.open(local, "r") as fh:
        model = json.load(fh).get("model", {})
    return {"model": {f"model.{k}": model[k] for k in ("config", "vision_pretrained", "vision_quick_gelu")
                      if model.get(k) is not None}}


def fit_problems(path: str, expected: Dict[str, Any]) -> List[str]:
    """How the checkpoint at ``path`` differs from what this run would write
    (``expected``: a meta dict, see ``trainer.build.checkpoint_meta``): one line per
    setting of ``model`` that both record and that differs, and the tokenizer's digest."""
    meta = read_meta(path)
    legacy = meta is None
    if legacy:
        meta = _legacy_meta(path)
    problems = []
    ours, theirs = expected.get("model", {}), meta.get("model", {})
    for key in sorted(set(ours) & set(theirs)):
        if ours[key] != theirs[key]:
            problems.append(f"{key}: checkpoint {theirs[key]!r}, this run {ours[key]!r}")
    a, b = meta.get("tokenizer") or {}, expected.get("tokenizer") or {}
    if a.get("sha256") and b.get("sha256") and a["sha256"] != b["sha256"]:
        problems.append(f"tokenizer: the checkpoint's is {a.get('path')} (sha256 {a['sha256'][:16]}...), this "
                        f"run's {b.get('path')} (sha256 {b['sha256'][:16]}...)")
    elif legacy and b.get("sha256"):
        log.warning("%s records no tokenizer digest (written before meta.json); cannot check that %s is its "
                    "tokenizer", path, b.get("path"))
    return problems


def check_fits(path: str, expected: Dict[str, Any]) -> None:
    """Refuse (:class:`CheckpointMismatchError`) a checkpoint of another model or
    tokenizer than the run's, naming every difference."""
    problems = fit_problems(path, expected)
    if problems:
        raise CheckpointMismatchError(
            f"checkpoint {path} is not damaged, but it was written with other settings than this run's:\n  "
            + "\n  ".join(problems)
            + "\nrun with the checkpoint's settings and tokenizer, or give this run another run.output / "
              "run.checkpoint_dir")


def _shape_mismatch(exc: BaseException) -> Optional[str]:
    """The 'size mismatch' lines of a failed load (a checkpoint of other shapes), if any."""
    text, seen = "", set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        text += "\n" + str(exc)
        exc = exc.__cause__ or exc.__context__
    lines = sorted({ln.strip() for ln in text.splitlines() if "size mismatch" in ln or "shape" in ln.lower()
                    and "mismatch" in ln.lower() or "Missing key" in ln or "Unexpected key" in ln})
    return "; ".join(lines)[:2000] or None


def load_newest_intact(root: str, sharded: Dict[str, Stateful], per_rank: Dict[str, Stateful],
                       d: Dist, expected: Optional[Dict[str, Any]] = None) -> Optional[str]:
    """Load the newest checkpoint under ``root`` that loads on every rank; a damaged
    one is reported and skipped. One of another model or tokenizer than ``expected``
    is refused (:class:`CheckpointMismatchError`), never taken for damaged. None when
    there is none; raises when every checkpoint there is damaged."""
    damaged = []
    for path in complete_checkpoints(root):
        try:
            load(path, sharded, per_rank, d, expected)
            failed = 0.0
        except CheckpointMismatchError:
            raise
        except (Exception, CheckpointException) as exc:   # bad metadata, a short shard, a missing rank file
            failed, why = 1.0, f"{type(exc).__name__}: {exc}"
        if int(d.all_sum(torch.tensor([failed])).item()) == 0:
            return path
        if failed:
            log.error("checkpoint %s is damaged (%s); trying the one before it", path, why)
            print(f"rank {d.rank}: checkpoint {path} is damaged ({why[:1000]}); trying the one before it",
                  file=sys.stderr, flush=True)
        damaged.append(path)
    if damaged:
        raise RuntimeError(f"every checkpoint under {root} is damaged: {', '.join(damaged)}")
    return None


def load(path: str, sharded: Dict[str, Stateful], per_rank: Dict[str, Stateful], d: Dist,
         expected: Optional[Dict[str, Any]] = None) -> None:
    """The checkpoint at ``path`` back into the same objects it was saved from. With
    ``expected`` (the run's meta), one of another model or tokenizer is refused first
    (:class:`CheckpointMismatchError`). The per-rank file is read next: a checkpoint
    of fewer ranks fails before any state has changed."""
    if expected is not None:
        check_fits(path, expected)
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
    try:
        dcp.load(dict(sharded), storage_reader=_reader(path))
    except (Exception, CheckpointException) as exc:
        shapes = _shape_mismatch(exc)
        if shapes:            # an older checkpoint without meta.json, of another model
            raise CheckpointMismatchError(f"checkpoint {path} is not damaged, but it holds tensors of other "
                                          f"shapes than this run's model: {shapes}") from exc
        raise
    for key, s in per_rank.items():
        s.load_state_dict(rank_state[key])


def load_model_weights(path: str, model, expected: Optional[Dict[str, Any]] = None) -> None:
    """Only the model's weights (``--init`` for instruction tuning), after checking the
    checkpoint is one of this model and tokenizer when ``expected`` (see :func:`check_fits`)."""
    if expected is not None:
        check_fits(path, expected)
    try:
        dcp.load({"model": ModelState(model)}, storage_reader=_reader(path))
    except (Exception, CheckpointException) as exc:
        shapes = _shape_mismatch(exc)
        if shapes:
            raise CheckpointMismatchError(f"checkpoint {path} holds tensors of other shapes than this run's "
                                          f"model: {shapes}") from exc
        raise
