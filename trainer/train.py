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
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12, "L4": 121e12}
NO_DECAY_NAMES = ("embed_tokens", "latents", "positional_embedding", "class_embedding")


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up to the peak over ``warmup_steps``, then linear decay to 0 at ``steps``."""
    o = cfg.optim
    if o.warmup_steps > 0 and step < o.warmup_steps:
        return o.lr * (step + 1) / o.warmup_steps
    span = max(1, o.steps - o.warmup_steps)
    return o.lr * max(0.0, (o.steps - step) / span)


def param_groups(model: nn.Module, weight_decay: float) -> List[Dict[str, Any]]:
    """Weight decay on matrices only: not on norms, biases, embeddings or latents."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim < 2 or any(n in name for n in NO_DECAY_NAMES):
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
    quick = quick_gelu_for(get_config(cfg.model.config).vision_model, cfg.model.vision_pretrained)
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, vision_quick_gelu=quick))


def build_model(cfg: TrainConfig, vocab_size: int) -> KosmosModel:
    import dataclasses
    mcfg = get_config(cfg.model.config)
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
        model = build_model(cfg, vocab_size)
        if cfg.run.init:
            ckpt.load_model_weights(cfg.run.init, model)
        self.flops_per_token = model.decoder_flops_per_token(cfg.data.seq_len)
        self.counts = model.parameter_counts()
        model.to(dev)
        model, self.parallel = parallelize(model, self.d, cfg.run.parallel, bf16=self.bf16,
                                           activation_checkpointing=cfg.model.activation_checkpointing,
                                           compile=cfg.model.compile)
        self.model = model
        self.core: KosmosModel = unwrap(model)
        o = cfg.optim
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(param_groups(model, o.weight_decay), lr=lr_at(0, cfg),
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
        if self.bf16 and self.parallel != "fsdp":
            return torch.autocast(self.d.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _sync(self, last: bool):
        if self.parallel == "ddp" and self.d.enabled and not last:
            return self.model.no_sync()
        if self.parallel == "fsdp":
            self.model.set_requires_gradient_sync(last)
        return contextlib.nullcontext()

    def train_step(self, micro_batches: List[Dict[str, Any]]) -> Dict[str, Any]:
        """Forward/backward every micro-batch, clip, step. Returns the step's metrics
        (summed over ranks)."""
        t0 = time.perf_counter()
        self.model.train()
        dev = self.d.device
        sources = sorted({mb.get("source", "data") for mb in micro_batches})
        local = torch.zeros(2 * len(sources) + 2, dtype=torch.float64)
        targets = [(mb["labels"][:, 1:] != IGNORE_INDEX).sum() for mb in micro_batches]
        local[-2] = float(sum(int(t) for t in targets))
        local[-1] = float(sum(int((mb["input_ids"] != self.core.ids.pad).sum()) for mb in micro_batches))
        global_targets = self.d.all_sum(local[-2:].to(dev))[0].item()
        if global_targets == 0:
            raise RuntimeError("a step without a single target token")
        scale = self.d.world_size / global_targets
        for i, mb in enumerate(micro_batches):
            ids = mb["input_ids"].to(dev, non_blocking=True)
            labels = mb["labels"].to(dev, non_blocking=True)
            images = mb.get("images")
            if images is None:
                # the same modules run on every rank in every micro-batch (see KosmosModel.embed)
                images = torch.zeros(1, 3, self.image_size, self.image_size)
            images = images.to(dev, non_blocking=True)
            with self._sync(i == len(micro_batches) - 1), self._autocast():
                out = self.model(ids, images=images, labels=labels)
                (out["loss_sum"] * scale).backward()
            j = sources.index(mb.get("source", "data"))
            local[2 * j] += out["loss_sum"].detach().double().cpu()
            local[2 * j + 1] += float(out["target_tokens"])
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.cfg.optim.grad_clip)
        if hasattr(grad_norm, "full_tensor"):
            grad_norm = grad_norm.full_tensor()
        lr = lr_at(self.step, self.cfg)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        totals = self.d.all_sum(local.to(dev)).cpu()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        m: Dict[str, Any] = {"step": self.step, "lr": lr, "grad_norm": float(grad_norm),
                             "loss": float(sum(totals[2 * j] for j in range(len(sources))) / totals[-2]),
                             "target_tokens": int(totals[-2]), "tokens": int(totals[-1]),
                             "step_time_s": dt, "tokens_per_s": float(totals[-1]) / dt}
        for j, s in enumerate(sources):
            if totals[2 * j + 1] > 0:
                m[f"loss.{s}"] = float(totals[2 * j] / totals[2 * j + 1])
        if dev.type == "cuda":
            name = torch.cuda.get_device_name(dev)
            peak = next((v for k, v in PEAK_BF16.items() if k in name), None)
            if peak:
                m["mfu"] = self.flops_per_token * m["tokens_per_s"] / (peak * self.d.world_size)
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
    cfg = resolve_activation(cfg)
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
    if resume == "auto":        # the newest checkpoint that loads; a damaged one is reported and skipped
        path = ckpt.load_newest_intact(ckpt_root, sharded, per_rank, d)
    else:
        path = resume
        if path:
            ckpt.load(path, sharded, per_rank, d)
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
    best = _best_so_far(ckpt_root) if validating else None
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
                        print(f"rank {d.rank}: skipped bad shard {b['path']}: {b['error']}", file=sys.stderr)
                reported = len(loader.bad_shards)
            if not all(math.isfinite(v) for v in (m["loss"], m["grad_norm"])):
                raise FloatingPointError(f"step {m['step']}: loss {m['loss']} grad norm {m['grad_norm']}")
            history.append(m)
            metrics.write(m, line=m["step"] % max(1, cfg.run.log_every) == 0 or m["step"] == total)
            if validating and ((cfg.run.eval_every and m["step"] % cfg.run.eval_every == 0) or m["step"] == total):
                v = trainer.validate()
                improved = math.isfinite(v["val_loss"]) and (best is None or v["val_loss"] < best)
                v["best"] = improved
                metrics.write_validation(v)
                if improved:
                    best = v["val_loss"]
                    if cfg.run.keep_best:
                        saved = ckpt.save(ckpt_root, trainer.step, sharded, per_rank, d, cfg.run.keep_last,
                                          cfg.to_json(), name="best")
                        if d.is_main:
                            _write_best(ckpt_root, trainer.step, best)
                            print(f"best checkpoint {saved} (validation loss {best:.4f})", flush=True)
            if m["step"] % cfg.run.save_every == 0 or m["step"] == total:
                saved = ckpt.save(ckpt_root, trainer.step, sharded, per_rank, d, cfg.run.keep_last, cfg.to_json())
                if d.is_main:
                    print(f"checkpoint {saved}", flush=True)
    finally:
        metrics.close()
    return history


def _best_so_far(root: str) -> Optional[float]:
    """The validation loss of CHECKPOINTS/best (a resumed run keeps improving on it)."""
    from trainer.shards import join, url_to_fs
    fs, local = url_to_fs(join(root, "best.json"))
    if not fs.exists(local):
        return None
    with fs.open(local, "r") as fh:
        return float(json.load(fh)["val_loss"])


def _write_best(root: str, step: int, loss: float) -> None:
    from trainer.shards import join, url_to_fs
    fs, local = url_to_fs(join(root, "best.json"))
    with fs.open(local, "w") as fh:
        json.dump({"checkpoint": "best", "step": step, "val_loss": loss}, fh)
