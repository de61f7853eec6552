"""The training loop: pretraining on the three sources and instruction tuning.

One optimizer step = the data schedule's micro-batches (gradient accumulation up
to the per-step token budget). The loss of a step is the sum of next-token losses
over every target token of the step on all ranks, divided by that number, so
2 ranks x b sequences train exactly as 1 rank x 2b.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import sys
import time
from typing import Any, Dict, List, Optional

import torch
from torch import nn

from contract.tokens import IGNORE_INDEX
from trainer import checkpoint as ckpt
from trainer.config import TrainConfig
from trainer.distributed import Dist, init_distributed, unwrap
from trainer.model.config import get_config
from trainer.model.kosmos import KosmosModel
from trainer.parallelize import parallelize

log = logging.getLogger(__name__)

# Dense bf16 peak FLOP/s for MFU, by substring of torch.cuda.get_device_name().
# Longer names first, so that "H100 PCIe" is not read as an SXM H100 nor "L40" as an L4.
PEAK_BF16 = {"H100 PCIe": 756e12, "H100 NVL": 835e12, "H200": 989e12, "H100": 989e12, "A100": 312e12,
             "L40S": 362e12, "L40": 181e12, "A10G": 70e12, "L4": 121e12}
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


def resolve_activation(cfg: TrainConfig) -> TrainConfig:
    """The run records the CLIP activation it decided from the weights, so that its
    checkpoints load with the same one anywhere (``kosmos generate``, ``kosmos eval``)."""
    import dataclasses

    from trainer.model.vision import quick_gelu_for
    if cfg.model.vision_quick_gelu is not None:
        return cfg
    quick = quick_gelu_for(get_config(cfg.model.name).vision_model, cfg.model.vision_pretrained)
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, vision_quick_gelu=quick))


# The model settings that define the network: a run from run.init takes them from the
# checkpoint's recorded config, and refuses an explicit one that says otherwise.
INHERITED_MODEL_SETTINGS = ("config", "vision_pretrained", "vision_quick_gelu")


def recorded_config(path: str) -> TrainConfig:
    """The settings a checkpoint's run recorded (its ``config.json``)."""
    from trainer.shards import join, url_to_fs
    fs, local = url_to_fs(join(path, "config.json"))
    if not fs.exists(local):
        raise FileNotFoundError(f"{join(path, 'config.json')} missing: run.init must be a checkpoint directory "
                                "(CHECKPOINTS/step-N) written by `kosmos train`")
    with fs.open(local, "r") as fh:
        return TrainConfig.from_dict(json.load(fh))


def inherit_model(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with the model settings of its ``run.init`` checkpoint: every one left
    unset (None) takes the checkpoint's; one set to another value is refused, naming
    both and the checkpoint. Dropout is taken when unset but may differ (no weight
    depends on it)."""
    import dataclasses
    path = cfg.run.init
    theirs = resolve_activation(recorded_config(path)).model      # an old record may leave the activation open
    changes: Dict[str, Any] = {}
    for name in INHERITED_MODEL_SETTINGS:
        mine, recorded = getattr(cfg.model, name), (theirs.name if name == "config" else getattr(theirs, name))
        if mine is None:
            changes[name] = recorded
        elif mine != recorded:
            raise ckpt.CheckpointMismatchError(
                f"model.{name} is {mine!r} here, but the checkpoint run.init={path} was trained with "
                f"model.{name}={recorded!r}; a run from a checkpoint keeps its model: leave "
                f"model.{name} unset to take the checkpoint's")
    if cfg.model.dropout is None:
        changes["dropout"] = theirs.dropout
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, **changes))


def resolve_model(cfg: TrainConfig) -> TrainConfig:
    """Every model setting decided, as the run records it: from ``run.init``'s
    checkpoint when there is one, else the defaults (the model config's name and
    dropout, the CLIP weights' activation)."""
    import dataclasses
    if cfg.run.init:
        cfg = inherit_model(cfg)
    dropout = cfg.model.dropout if cfg.model.dropout is not None else get_config(cfg.model.name).decoder.dropout
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, config=cfg.model.name, dropout=dropout))
    return resolve_activation(cfg)


# Settings of the built model that are not part of what its checkpoint must match:
# dropout (no weight), the context length (xPos has no table of weights), loss chunking,
# and what ``checkpoint_meta`` records from the run's own settings.
_META_FREE = {"name", "vision_pretrained", "vision_quick_gelu", "loss_chunk_tokens", "decoder.dropout",
              "decoder.attention_dropout", "decoder.activation_dropout", "decoder.max_seq_len"}


def checkpoint_meta(cfg: TrainConfig, model: KosmosModel, tokenizer=None) -> Dict[str, Any]:
    """What a checkpoint is a checkpoint of (its ``meta.json``): ``model``, the settings a
    run must share to load it (checked before loading, trainer/checkpoint.py); ``other``,
    recorded only; ``tokenizer``, its path and the sha256 of its .model file."""
    import dataclasses
    built: Dict[str, Any] = {}
    for key, value in dataclasses.asdict(model.cfg).items():
        for k, v in (value.items() if isinstance(value, dict) else [(None, value)]):
            built[f"{key}.{k}" if k else key] = v
    must = {f"model.{n}": getattr(cfg.model, n) for n in INHERITED_MODEL_SETTINGS}
    must.update({k: v for k, v in built.items() if k not in _META_FREE})
    tok = None
    if tokenizer is not None:
        tok = {"path": tokenizer.path, "sha256": tokenizer.sha256, "num_pieces": tokenizer.num_pieces}
    return {"model": must, "tokenizer": tok,
            "other": {"run.stage": cfg.run.stage, "run.init": cfg.run.init, "model.dropout": cfg.model.dropout,
                      "decoder.max_seq_len": built.get("decoder.max_seq_len")}}


def build_model(cfg: TrainConfig, vocab_size: int) -> KosmosModel:
    import dataclasses
    mcfg = get_config(cfg.model.name)
    dec = dataclasses.replace(mcfg.decoder, vocab_size=vocab_size,
                              max_seq_len=max(mcfg.decoder.max_seq_len, cfg.data.seq_len))
    if cfg.model.dropout is not None:
        dec = dataclasses.replace(dec, dropout=cfg.model.dropout)
    mcfg = dataclasses.replace(mcfg, decoder=dec, vision_pretrained=cfg.model.vision_pretrained or None,
                               vision_quick_gelu=cfg.model.vision_quick_gelu)
    model = KosmosModel(mcfg)
    if model.vision is not None and model.vision.image_size != cfg.data.image_size:
        raise ValueError(f"data.image_size is {cfg.data.image_size} but the vision tower {mcfg.vision_model} "
                         f"takes {model.vision.image_size} px images; set data.image_size={model.vision.image_size}")
    return model


class MetricsWriter:
    """Console (progress bar or lines), ``metrics.jsonl`` and TensorBoard, rank 0 only."""

    def __init__(self, output: str, total: int, start: int, enabled: bool, tensorboard: bool, bar: bool):
        self.enabled = enabled
        self.fh = self.tb = self.bar = None
        if not enabled:
            return
        self.fh = open(os.path.join(output, "metrics.jsonl"), "a", encoding="utf-8")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.tb = SummaryWriter(os.path.join(output, "tb"))
            except ImportError as exc:     # tensorboard is optional at run time
                log.warning("TensorBoard disabled: %s", exc)
        if bar and sys.stderr.isatty():
            from tqdm import tqdm
            self.bar = tqdm(total=total, initial=start, unit="step", dynamic_ncols=True)

    def _record(self, m: Dict[str, Any]) -> None:
        """One line of ``metrics.jsonl`` and its numbers in TensorBoard."""
        self.fh.write(json.dumps(m, sort_keys=True) + "\n")
        self.fh.flush()
        if self.tb is not None:
            for k, v in m.items():
                if isinstance(v, (int, float)) and k != "step":
                    self.tb.add_scalar(k.replace(".", "/"), v, m["step"])

    def _say(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, flush=True)

    def write(self, m: Dict[str, Any], line: bool) -> None:
        if not self.enabled:
            return
        self._record(m)
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{m['loss']:.4f}", lr=f"{m['lr']:.2e}", refresh=False)
        if line:
            per = " ".join(f"{k[5:]} {v:.4f}" for k, v in sorted(m.items()) if k.startswith("loss.")
                           and isinstance(v, float))
            mfu = f" mfu {m['mfu']:.1%}" if "mfu" in m else ""
            self._say(f"step {m['step']:>6d}  loss {m['loss']:.4f}  [{per}]  lr {m['lr']:.3e}  "
                      f"grad norm {m['grad_norm']:.3f}  {m['tokens_per_s']:,.0f} tok/s{mfu}")

    def write_validation(self, m: Dict[str, Any]) -> None:
        if not self.enabled:
            return
        self._record(m)
        per = " ".join(f"{k[9:]} {v:.4f}" for k, v in sorted(m.items()) if k.startswith("val_loss."))
        self._say(f"validation at step {m['step']}: loss {m['val_loss']:.4f}  [{per}]"
                  + ("  (best so far)" if m.get("best") else ""))

    def close(self) -> None:
        for x in (self.bar, self.tb, self.fh):
            if x is not None:
                x.close()


class Trainer:
    def __init__(self, cfg: TrainConfig, d: Optional[Dist] = None, tokenizer=None, vocab_size: Optional[int] = None):
        import dataclasses
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
        if cfg.run.init:   # the tower's weights come from the checkpoint: do not fetch the pretrained ones
            model = build_model(dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, vision_pretrained=None)),
                                vocab_size)
            ckpt.load_model_weights(cfg.run.init, model, expected=checkpoint_meta(cfg, model, self.tokenizer))
        else:
            model = build_model(cfg, vocab_size)
        self.meta = checkpoint_meta(cfg, model, self.tokenizer)     # what its checkpoints record and resume checks
        self.counts = model.parameter_counts()
        model.to(dev)
        model, self.parallel = parallelize(model, self.d, cfg.run.parallel, bf16=self.bf16,
                                           activation_checkpointing=cfg.model.activation_checkpointing,
                                           compile=cfg.model.compile, shard_group_size=cfg.run.shard_group_size)
        self.model = model
        self.core: KosmosModel = unwrap(model)
        o = cfg.optim
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(param_groups(model, o.weight_decay, o.weight_decay_scope), lr=lr_at(0, cfg),
                                           betas=tuple(o.betas), eps=o.eps,
                                           fused=True if dev.type == "cuda" else None)
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

    def train_step(self, micro_batches: List[Dict[str, Any]]) -> Dict[str, Any]:
        """Forward/backward every micro-batch, clip, step. Returns the step's metrics
        (summed over ranks).

        A micro-batch may mix sources: ``sources`` names the source of each row (or
        ``source`` that of all of them; ``None``: a padding row of an empty micro-batch).
        The host waits for the device once a step, after the gradients are clipped and
        before the optimizer steps: target counts come from the labels on the host,
        losses are summed per source on the device (the model's ``loss_per_seq``
        splits a mixed micro-batch), and one transfer brings every number back. So
        ``step_time_s`` ends at that wait; the optimizer's update runs on the device
        while the next step is prepared and is counted in the next step's time."""
        from itertools import groupby

        from trainer.config import SOURCES
        t0 = time.perf_counter()
        self.model.train()
        dev = self.d.device
        n_src = len(SOURCES)
        # host: [targets per source..., targets, real tokens] and each micro-batch's runs of one source
        counts = torch.zeros(n_src + 2, dtype=torch.float64)
        runs: List[List[tuple]] = []            # (source index, first row, end row)
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
                    counts[j] += got
                    mine.append((j, start, end))
                start = end
            runs.append(mine)
            counts[n_src] += sum(row_targets)
            counts[n_src + 1] += float((mb["input_ids"] != self.core.ids.pad).sum())
        counts = self.d.all_sum(counts.to(dev))        # queued: NCCL does not make the host wait
        scale = (self.d.world_size / counts[n_src].clamp(min=1)).float()
        losses = torch.zeros(n_src, dtype=torch.float64, device=dev)
        placeholder = None
        for i, mb in enumerate(micro_batches):
            ids = mb["input_ids"].to(dev, non_blocking=True)
            labels = mb["labels"].to(dev, non_blocking=True)
            images = mb.get("images")
            if images is None:
                # the same modules run on every rank in every micro-batch (see KosmosModel.embed)
                if placeholder is None:
                    placeholder = torch.zeros(1, 3, self.image_size, self.image_size, device=dev)
                images = placeholder
            images = images.to(dev, non_blocking=True)
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
        losses = self.d.all_sum(losses)
        # the one wait of the step
        totals = torch.cat([counts, losses, grad_norm.detach().reshape(1).to(counts)]).cpu()
        dt = time.perf_counter() - t0
        target_tokens = int(totals[n_src])
        if target_tokens == 0:
            self.optimizer.zero_grad(set_to_none=True)
            raise RuntimeError("a step without a single target token")
        lr = lr_at(self.step, self.cfg)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        loss_sums = totals[n_src + 2:2 * n_src + 2]
        m: Dict[str, Any] = {"step": self.step, "lr": lr, "grad_norm": float(totals[-1]),
                             "loss": float(loss_sums.sum()) / target_tokens,
                             "target_tokens": target_tokens, "tokens": int(totals[n_src + 1]),
                             "step_time_s": dt, "tokens_per_s": float(totals[n_src + 1]) / dt}
        for j, s in enumerate(SOURCES):
            if totals[j] > 0:
                m[f"loss.{s}"] = float(loss_sums[j] / totals[j])
        if dev.type == "cuda":
            name = torch.cuda.get_device_name(dev)
            peak = next((v for k, v in PEAK_BF16.items() if k in name), None)
            if peak and self.bf16:       # this rank's model FLOPs (KosmosModel.training_flops) over its peak
                flops = sum(self.core.training_flops(
                    int((mb["input_ids"] != self.core.ids.pad).sum()),
                    0 if mb.get("images") is None else int(mb["images"].shape[0]),
                    int(mb["input_ids"].shape[1])) for mb in micro_batches)
                m["mfu"] = flops / (dt * peak)
            m["max_memory_gib"] = torch.cuda.max_memory_allocated(dev) / 2 ** 30
        return m

    # -- validation ----------------------------------------------------------------------
    def validate(self) -> Dict[str, Any]:
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
                local = torch.zeros(2, dtype=torch.float64)
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
        m: Dict[str, Any] = {"step": self.step}
        loss = sum(float(t[0]) for t in totals.values())
        tokens = sum(float(t[1]) for t in totals.values())
        m["val_loss"] = loss / tokens if tokens else float("nan")
        m["val_tokens"] = int(tokens)
        for source, t in totals.items():
            if t[1] > 0:
                m[f"val_loss.{source}"] = float(t[0] / t[1])
        return m


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


def run_training(cfg: TrainConfig, resume: Optional[str] = None) -> List[Dict[str, Any]]:
    """The whole run: data, model, loop, checkpoints. ``resume``: "auto" (the newest
    checkpoint in the output, if any) or a checkpoint path. Returns rank 0's metrics."""
    from trainer.data import MixtureDataset, MixtureLoader

    d = init_distributed()
    cfg.check_stage()
    cfg = resolve_model(cfg)          # run.init's model settings, or the defaults: what config.json records
    out = cfg.run.output
    if "://" in out:
        raise ValueError("run.output holds logs and must be a local (or mounted) path; put checkpoints on "
                         "object storage with run.checkpoint_dir")
    ckpt_root = cfg.run.checkpoint_dir or os.path.join(out, "checkpoints")
    os.makedirs(out, exist_ok=True)          # every rank: nodes may not share a file system
    if d.is_main:
        with open(os.path.join(out, "config.json"), "w", encoding="utf-8") as fh:
            fh.write(cfg.to_json())
    check_held_out(cfg)
    trainer = Trainer(cfg, d)
    dataset = MixtureDataset(cfg, trainer.tokenizer, trainer.core.cfg.num_image_tokens, d.rank, d.world_size)
    loader = MixtureLoader(dataset, pin_memory=d.device.type == "cuda")
    # Everything that survives a restart, as Stateful objects: sharded through DCP, or one file per rank.
    sharded = {"model": ckpt.ModelState(trainer.model), "optim": ckpt.OptimizerState(trainer.model, trainer.optimizer)}
    per_rank = {"train": trainer, "data": loader, "rng": ckpt.RngState()}
    # A checkpoint of another model or tokenizer (meta.json against trainer.meta) is refused
    # before anything is loaded; the newest that loads is taken, a damaged one reported and skipped.
    if resume == "auto":
        path = ckpt.load_newest_intact(ckpt_root, sharded, per_rank, d, expected=trainer.meta)
    else:
        path = resume
        if path:
            ckpt.load(path, sharded, per_rank, d, expected=trainer.meta)
    if path and d.is_main:
        print(f"resumed from {path} at step {trainer.step}", flush=True)
    total = cfg.run.max_steps or cfg.optim.steps
    if d.is_main:
        c = trainer.counts
        print(f"model {cfg.model.config}: {c['total']:,d} parameters ({c['trainable']:,d} trainable); "
              f"{trainer.parallel} on {d.world_size} rank(s), {d.device.type}, "
              f"{'bf16' if trainer.bf16 else 'fp32'}", flush=True)
        print(dataset.plan.describe(), flush=True)
    metrics = MetricsWriter(out, total, trainer.step, d.is_main, cfg.run.tensorboard, cfg.run.progress_bar)
    bad_file = os.path.join(out, "bad_shards.jsonl" if d.is_main else f"bad_shards.rank{d.rank}.jsonl")
    reported = len(loader.bad_shards) if path else 0
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
            m["data_wait_s"] = wait
            if len(loader.bad_shards) > reported:
                with open(bad_file, "a", encoding="utf-8") as fh:
                    for b in loader.bad_shards[reported:]:
                        fh.write(json.dumps({"rank": d.rank, **b}) + "\n")
                        print(f"rank {d.rank}: skipped {b.get('skipped', 'bad shard')} {b['path']}: {b['error']}",
                              file=sys.stderr)
                reported = len(loader.bad_shards)
            if not all(math.isfinite(v) for v in (m["loss"], m["grad_norm"])):
                raise FloatingPointError(f"step {m['step']}: loss {m['loss']} grad norm {m['grad_norm']}")
            history.append(m)
            metrics.write(m, line=m["step"] % max(1, cfg.run.log_every) == 0 or m["step"] == total)
            new_best = False
            if validating and ((cfg.run.eval_every and m["step"] % cfg.run.eval_every == 0) or m["step"] == total):
                v = trainer.validate()
                improved = math.isfinite(v["val_loss"]) and (best is None or v["val_loss"] < best)
                v["best"] = improved
                metrics.write_validation(v)
                if improved:
                    best = v["val_loss"]
                    new_best = cfg.run.keep_best
            # The best is this step's checkpoint, named by CHECKPOINTS/best and kept from pruning
            # (no second copy): a step that improves saves one even off the save_every schedule.
            if new_best or m["step"] % cfg.run.save_every == 0 or m["step"] == total:
                saved = ckpt.save(ckpt_root, trainer.step, sharded, per_rank, d, cfg.run.keep_last, cfg.to_json(),
                                  meta_json, best=best if new_best else None)
                if d.is_main:
                    print(f"checkpoint {saved}" + (f" (best: validation loss {best:.4f})" if new_best else ""),
                          flush=True)
        ckpt.wait_for_saves()            # the last one written and marked complete before the run returns
    except BaseException:
        try:                             # a checkpoint still being written is finished, if it can be
            if d.world_size == 1:
                ckpt.wait_for_saves()
            else:                        # finishing takes barriers that ranks still in a step would never meet
                ckpt.abandon_pending()
        except BaseException as exc:     # the error that stopped the run is the one to report
            log.error("the checkpoint being written when the run stopped failed too: %s", exc)
        raise
    finally:
        metrics.close()
    return history
