"""The training loop: pretraining on the three sources and instruction tuning.

One optimizer step = the data schedule's micro-batches (gradient accumulation up
to the per-step token budget). The loss of a step is the sum of next-token losses
over every target token of the step on all ranks, divided by that number, so
2 ranks x b sequences train exactly as 1 rank x 2b.

The parts: trainer/build.py (the model a run trains), trainer/optim.py (AdamW and
the learning-rate schedule), trainer/train_metrics.py (what a step measures and the
writer of it), trainer/checkpoint.py (what survives a restart).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import sys
import time
from itertools import groupby
from typing import Any, Dict, List, Optional, Tuple

import torch

from contract.tokens import IGNORE_INDEX
from trainer import checkpoint as ckpt
from trainer.build import model_for_run, resolve_model
from trainer.config import SOURCES, TrainConfig
from trainer.distributed import Dist, init_distributed, unwrap
from trainer.model.kosmos import KosmosModel
from trainer.optim import lr_at, make_optimizer
from trainer.parallelize import parallelize
from trainer.train_metrics import (MetricsWriter, StepMetrics, StepSums, TokenCounts, ValidationMetrics,
                                   pack, peak_bf16_flops, unpack)

log = logging.getLogger(__name__)

Run = Tuple[int, int, int]      # (source index, first row, end row): rows of one source in a micro-batch


def count_targets(micro_batches: List[Dict[str, Any]], pad: int) -> Tuple[TokenCounts, List[List[Run]]]:
    """The step's token counts on the host, from the labels, and each micro-batch's
    runs of rows of one source. A micro-batch names the source of each row in
    ``sources`` (or of all of them in ``source``; ``None``: a padding row)."""
    source_targets, targets, tokens = [0] * len(SOURCES), 0, 0.0
    runs: List[List[Run]] = []
    for mb in micro_batches:
        rows = mb["labels"].shape[0]
        names = mb.get("sources")
        if names is None:
            names = [mb.get("source")] * rows
        if len(names) != rows:
            raise ValueError(f"a micro-batch of {rows} rows names the sources of {len(names)}")
        row_targets = (mb["labels"][:, 1:] != IGNORE_INDEX).sum(1).tolist()
        mine, start = [], 0
        for name, group in groupby(names):
            end = start + len(list(group))
            got = sum(row_targets[start:end])
            if name is None:
                if got:
                    raise ValueError(f"rows {start}-{end - 1} have {got} target tokens but no source")
            elif name not in SOURCES:
                raise ValueError(f"unknown source {name!r} in a micro-batch; sources are {', '.join(SOURCES)}")
            else:
                j = SOURCES.index(name)
                source_targets[j] += got
                mine.append((j, start, end))
            start = end
        runs.append(mine)
        targets += sum(row_targets)
        tokens += float((mb["input_ids"] != pad).sum())
    f64 = torch.float64
    return TokenCounts(torch.tensor(source_targets, dtype=f64), torch.tensor(targets, dtype=f64),
                       torch.tensor(tokens, dtype=f64)), runs


class Trainer:
    def __init__(self, cfg: TrainConfig, d: Optional[Dist] = None, tokenizer=None, vocab_size: Optional[int] = None):
        cfg = resolve_model(cfg)       # as run_training records it (idempotent)
        self.cfg = cfg
        self.d = d or init_distributed()
        self.tokenizer = tokenizer
        if tokenizer is None and cfg.run.tokenizer:
            from trainer.tokenizer import Tokenizer
            self.tokenizer = Tokenizer(cfg.run.tokenizer)
        if vocab_size is None:
            if self.tokenizer is None:
                raise ValueError("run.tokenizer is required (a SentencePiece .model from `kosmos tokenizer train`)")
            vocab_size = self.tokenizer.vocab_size
        dev = self.d.device
        self.bf16 = cfg.run.precision == "bf16" or (cfg.run.precision == "auto" and dev.type == "cuda")
        torch.manual_seed(cfg.run.seed)          # the same initial weights on every rank
        model, self.meta = model_for_run(cfg, vocab_size, self.tokenizer)   # meta: what its checkpoints record
        self.counts = model.parameter_counts()
        model.to(dev)
        model, self.parallel = parallelize(model, self.d, cfg.run.parallel, bf16=self.bf16,
                                           activation_checkpointing=cfg.model.activation_checkpointing,
                                           compile=cfg.model.compile, shard_group_size=cfg.run.shard_group_size)
        self.model = model
        self.core: KosmosModel = unwrap(model)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = make_optimizer(model, cfg, dev)
        self.step = 0
        self.image_size = cfg.data.image_size

    # -- Stateful: the train state a checkpoint carries per rank --------------------------
    def state_dict(self) -> Dict[str, Any]:
        return {"step": self.step}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.step = int(state["step"])

    # -- one optimizer step --------------------------------------------------------------
    def _autocast(self):
        if self.bf16 and self.parallel not in ("fsdp", "hsdp"):     # FSDP2's policy casts instead
            return torch.autocast(self.d.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _sync(self, last: bool):
        """Gradients are reduced over the ranks in the last micro-batch of a step only."""
        if self.parallel == "ddp" and not last:
            return self.model.no_sync()
        if self.parallel in ("fsdp", "hsdp"):
            self.model.set_requires_gradient_sync(last)
        return contextlib.nullcontext()

    def _images(self, mb: Dict[str, Any], placeholder: List[torch.Tensor]) -> torch.Tensor:
        """The micro-batch's images, or one blank image: the same modules run on every
        rank in every micro-batch (see KosmosModel.embed)."""
        images = mb.get("images")
        if images is None:
            if not placeholder:
                placeholder.append(torch.zeros(1, 3, self.image_size, self.image_size, device=self.d.device))
            images = placeholder[0]
        return images.to(self.d.device, non_blocking=True)

    def train_step(self, micro_batches: List[Dict[str, Any]]) -> StepMetrics:
        """Forward/backward every micro-batch, clip, step. Returns the step's metrics
        (summed over ranks).

        A micro-batch may mix sources (see :func:`count_targets`). The host waits for
        the device once a step, after the gradients are clipped and before the optimizer
        steps: target counts come from the labels on the host, losses are summed per
        source on the device (the model's ``loss_per_seq`` splits a mixed micro-batch),
        and one transfer brings every number back (:class:`StepSums`). So
        ``step_time_s`` ends at that wait; the optimizer's update runs on the device
        while the next step is prepared and is counted in the next step's time."""
        t0 = time.perf_counter()
        self.model.train()
        dev = self.d.device
        host_counts, runs = count_targets(micro_batches, self.core.ids.pad)
        counts = unpack(self.d.all_sum(pack(host_counts).to(dev)), host_counts)   # queued: NCCL does not wait
        scale = (self.d.world_size / counts.targets.clamp(min=1)).float()
        losses = torch.zeros(len(SOURCES), dtype=torch.float64, device=dev)
        placeholder: List[torch.Tensor] = []
        for i, mb in enumerate(micro_batches):
            ids = mb["input_ids"].to(dev, non_blocking=True)
            labels = mb["labels"].to(dev, non_blocking=True)
            images = self._images(mb, placeholder)
            with self._sync(i == len(micro_batches) - 1), self._autocast():
                out = self.model(ids, images=images, labels=labels)
                (out["loss_sum"] * scale).backward()
            per_row = out.get("loss_per_seq")
            if per_row is None and len(runs[i]) > 1:
                raise RuntimeError("a micro-batch mixes sources but the model's forward returns no loss_per_seq "
                                   "to split its loss by")
            for j, a, b in runs[i]:
                part = out["loss_sum"] if per_row is None else per_row[a:b].sum()
                losses[j] += part.detach().double()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.cfg.optim.grad_clip)
        if hasattr(grad_norm, "full_tensor"):
            grad_norm = grad_norm.full_tensor()
        sums = StepSums(counts, self.d.all_sum(losses), grad_norm.detach().to(dev, torch.float64))
        sums = sums.to_host()            # the one wait of the step
        dt = time.perf_counter() - t0
        if int(sums.counts.targets) == 0:
            self.optimizer.zero_grad(set_to_none=True)
            raise RuntimeError("a step without a single target token")
        lr = lr_at(self.step, self.cfg)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        m = StepMetrics.of(self.step, lr, sums, dt)
        if dev.type == "cuda":
            peak = peak_bf16_flops(dev)
            if peak and self.bf16:       # this rank's model FLOPs (KosmosModel.training_flops) over its peak
                flops = sum(self.core.training_flops(
                    int((mb["input_ids"] != self.core.ids.pad).sum()),
                    0 if mb.get("images") is None else int(mb["images"].shape[0]),
                    int(mb["input_ids"].shape[1])) for mb in micro_batches)
                m.mfu = flops / (dt * peak)
            m.max_memory_gib = torch.cuda.max_memory_allocated(dev) / 2 ** 30
        return m

    # -- validation ----------------------------------------------------------------------
    def validate(self) -> ValidationMetrics:
        """Mean next-token loss on the held-out datasets (``data.val_*``), per source and
        over all, on the same ``run.eval_sequences`` sequences every time. Every rank runs
        the same number of forward passes (a rank short of data runs empty ones)."""
        from trainer.data import collate, held_out_sequences
        cfg, dev = self.cfg, self.d.device
        sources = cfg.validation_sources()
        self.model.eval()
        totals = {}
        try:
            for source, paths in sorted(sources.items()):
                batches = list(held_out_sequences(
                    paths, source, self.tokenizer, self.core.cfg.num_image_tokens, cfg.data.seq_len,
                    cfg.data.image_size, cfg.run.eval_sequences, cfg.data.micro_batch_size, self.d.rank,
                    self.d.world_size, cfg.data.seed))
                most = int(self.d.all_max(torch.tensor([float(len(batches))], device=dev)).item())
                batches += [collate([], self.core.ids.pad)] * (most - len(batches))
                local = torch.zeros(2, dtype=torch.float64)       # (loss, target tokens)
                for mb in batches:
                    images = mb["images"]
                    if images is None:
                        images = torch.zeros(1, 3, self.image_size, self.image_size)
                    with torch.no_grad(), self._autocast():
                        out = self.model(mb["input_ids"].to(dev), images=images.to(dev), labels=mb["labels"].to(dev))
                    local[0] += out["loss_sum"].double().cpu()
                    local[1] += float(out["target_tokens"])
                totals[source] = self.d.all_sum(local.to(dev)).cpu()
        finally:
            self.model.train()
        loss = sum(float(t[0]) for t in totals.values())
        tokens = sum(float(t[1]) for t in totals.values())
        return ValidationMetrics(step=self.step, val_loss=loss / tokens if tokens else float("nan"),
                                 val_tokens=int(tokens),
                                 loss_by_source={s: float(t[0] / t[1]) for s, t in totals.items() if t[1] > 0})


# --------------------------------------------------------------------------- the run
def check_held_out(cfg: TrainConfig) -> None:
    """A held-out dataset must not share a file with the training data of its source."""
    from trainer.shards import expand_dataset

    def files(paths):
        return {f if "://" in f else os.path.abspath(f) for p in paths for f in expand_dataset(p, False, True)}
    for source, val_paths in cfg.validation_sources().items():
        shared = sorted(files(getattr(cfg.data, source)) & files(val_paths))
        if shared:
            raise ValueError(f"data.val_{source} shares {len(shared)} file(s) with data.{source} "
                             f"(e.g. {shared[0]}): held-out data must be held out")


def prepare_run(cfg: TrainConfig, d: Dist) -> TrainConfig:
    """The settings as the run records them (``config.json``, rank 0), checked."""
    cfg.check_stage()
    cfg = resolve_model(cfg)          # run.init's model settings, or the defaults: what config.json records
    if "://" in cfg.run.output:
        raise ValueError("run.output holds logs and must be a local (or mounted) path; put checkpoints on "
                         "object storage with run.checkpoint_dir")
    os.makedirs(cfg.run.output, exist_ok=True)          # every rank: nodes may not share a file system
    if d.is_main:
        with open(os.path.join(cfg.run.output, "config.json"), "w", encoding="utf-8") as fh:
            fh.write(cfg.to_json())
    check_held_out(cfg)
    return cfg


class BadShardLog:
    """The shards the loader skipped, as they are found: one JSON line each in the
    output (rank 0: ``bad_shards.jsonl``; others one file per rank) and on stderr."""

    def __init__(self, output: str, d: Dist, loader, resumed: bool):
        self.path = os.path.join(output, "bad_shards.jsonl" if d.is_main else f"bad_shards.rank{d.rank}.jsonl")
        self.rank, self.loader = d.rank, loader
        self.reported = len(loader.bad_shards) if resumed else 0     # a resumed loader's were reported before

    def report(self) -> None:
        new = self.loader.bad_shards[self.reported:]
        if not new:
            return
        with open(self.path, "a", encoding="utf-8") as fh:
            for b in new:
                fh.write(json.dumps({"rank": self.rank, **b}) + "\n")
                print(f"rank {self.rank}: skipped {b.get('skipped', 'bad shard')} {b['path']}: {b['error']}",
                      file=sys.stderr)
        self.reported = len(self.loader.bad_shards)


def _stop_saves(d: Dist) -> None:
    """A run that fails finishes the checkpoint still being written, if it can."""
    try:
        if d.world_size == 1:
            ckpt.wait_for_saves()
        else:                        # finishing takes barriers that ranks still in a step would never meet
            ckpt.abandon_pending()
    except BaseException as exc:     # the error that stopped the run is the one to report
        log.error("the checkpoint being written when the run stopped failed too: %s", exc)


def run_training(cfg: TrainConfig, resume: Optional[str] = None) -> List[Dict[str, Any]]:
    """The whole run: data, model, loop, checkpoints. ``resume``: "auto" (the newest
    checkpoint in the output, if any) or a checkpoint path. Returns rank 0's metrics."""
    from trainer.data import MixtureDataset, MixtureLoader

    d = init_distributed()
    cfg = prepare_run(cfg, d)
    r = cfg.run
    ckpt_root = r.checkpoint_dir or os.path.join(r.output, "checkpoints")
    trainer = Trainer(cfg, d)
    dataset = MixtureDataset(cfg, trainer.tokenizer, trainer.core.cfg.num_image_tokens, d.rank, d.world_size)
    loader = MixtureLoader(dataset, pin_memory=d.device.type == "cuda")
    # Everything that survives a restart, as Stateful objects: sharded through DCP, or one file per rank.
    sharded = {"model": ckpt.ModelState(trainer.model), "optim": ckpt.OptimizerState(trainer.model, trainer.optimizer)}
    per_rank = {"train": trainer, "data": loader, "rng": ckpt.RngState()}
    # A checkpoint of another model or tokenizer (meta.json against trainer.meta) is refused
    # before anything is loaded; the newest that loads is taken, a damaged one reported and skipped.
    path = resume
    if resume == "auto":
        path = ckpt.load_newest_intact(ckpt_root, sharded, per_rank, d, expected=trainer.meta)
    elif resume:
        ckpt.load(resume, sharded, per_rank, d, expected=trainer.meta)
    total = r.max_steps or cfg.optim.steps
    if d.is_main:
        if path:
            print(f"resumed from {path} at step {trainer.step}", flush=True)
        c = trainer.counts
        print(f"model {cfg.model.config}: {c['total']:,d} parameters ({c['trainable']:,d} trainable); "
              f"{trainer.parallel} on {d.world_size} rank(s), {d.device.type}, "
              f"{'bf16' if trainer.bf16 else 'fp32'}", flush=True)
        print(dataset.plan.describe(), flush=True)
    metrics = MetricsWriter(r.output, total, trainer.step, d.is_main, r.tensorboard, r.progress_bar)
    bad_shards = BadShardLog(r.output, d, loader, resumed=bool(path))
    history = []
    validating = bool(cfg.validation_sources())
    best = ckpt.best_so_far(ckpt_root) if validating else None
    meta_json = json.dumps(trainer.meta, sort_keys=True, indent=2)
    try:
        while trainer.step < total:
            t0 = time.perf_counter()
            micro = loader.next_step()
            wait = time.perf_counter() - t0
            m = trainer.train_step(micro)
            m.data_wait_s = wait
            bad_shards.report()
            if not (math.isfinite(m.loss) and math.isfinite(m.grad_norm)):
                raise FloatingPointError(f"step {m.step}: loss {m.loss} grad norm {m.grad_norm}")
            history.append(m.as_dict())
            metrics.write(m, line=m.step % max(1, r.log_every) == 0 or m.step == total)
            new_best = False
            if validating and ((r.eval_every and m.step % r.eval_every == 0) or m.step == total):
                v = trainer.validate()
                v.best = math.isfinite(v.val_loss) and (best is None or v.val_loss < best)
                metrics.write_validation(v)
                if v.best:
                    best, new_best = v.val_loss, r.keep_best
            # The best is this step's checkpoint, named by CHECKPOINTS/best and kept from pruning
            # (no second copy): a step that improves saves one even off the save_every schedule.
            if new_best or m.step % r.save_every == 0 or m.step == total:
                saved = ckpt.save(ckpt_root, trainer.step, sharded, per_rank, d, r.keep_last, cfg.to_json(),
                                  meta_json, best=best if new_best else None)
                if d.is_main:
                    print(f"checkpoint {saved}" + (f" (best: validation loss {best:.4f})" if new_best else ""),
                          flush=True)
        ckpt.wait_for_saves()            # the last one written and marked complete before the run returns
    except BaseException:
        _stop_saves(d)
        raise
    finally:
        metrics.close()
    return history
