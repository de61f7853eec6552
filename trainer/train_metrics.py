"""What a training run measures and writes: the sums a step brings back from the
device, the metrics of a step and of a validation, and the writer of both (console,
``metrics.jsonl``, TensorBoard). Evaluation metrics are in trainer/metrics.py."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
from typing import Any, Dict, List, NamedTuple, Optional

import torch

from trainer.config import SOURCES

log = logging.getLogger(__name__)

# Dense bf16 peak FLOP/s for MFU, by substring of torch.cuda.get_device_name().
# Longer names first, so that "H100 PCIe" is not read as an SXM H100 nor "L40" as an L4.
PEAK_BF16 = {"H100 PCIe": 756e12, "H100 NVL": 835e12, "H200": 989e12, "H100": 989e12, "A100": 312e12,
             "L40S": 362e12, "L40": 181e12, "A10G": 70e12, "L4": 121e12}


def peak_bf16_flops(device: torch.device) -> Optional[float]:
    """The card's dense bf16 peak, None for a card not in ``PEAK_BF16``."""
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


# --------------------------------------------------------------------------- one transfer a step
class TokenCounts(NamedTuple):
    """A step's tokens, counted from the labels on the host, then summed over the ranks."""
    source_targets: torch.Tensor    # (sources,) target tokens of each source
    targets: torch.Tensor           # () target tokens of the step
    tokens: torch.Tensor            # () real (not padding) tokens


class StepSums(NamedTuple):
    """Every number a step's metrics are made of, summed over the ranks (float64)."""
    counts: TokenCounts
    source_losses: torch.Tensor     # (sources,) summed next-token loss of each source
    grad_norm: torch.Tensor         # () the gradients' norm before clipping

    def to_host(self) -> "StepSums":
        """The same sums on the host, in one transfer: the one wait of a step."""
        return unpack(pack(self).cpu(), self)


def _leaves(parts) -> List[torch.Tensor]:
    return [parts] if isinstance(parts, torch.Tensor) else [t for p in parts for t in _leaves(p)]


def pack(parts) -> torch.Tensor:
    """A (nested) NamedTuple of tensors as one flat tensor, fields in order."""
    return torch.cat([t.reshape(-1) for t in _leaves(parts)])


def unpack(flat: torch.Tensor, like):
    """``flat`` (from :func:`pack`) as a NamedTuple of the structure and shapes of ``like``:
    views of ``flat``, no copy."""
    pieces = iter(flat.split([t.numel() for t in _leaves(like)]))

    def rebuild(x):
        return next(pieces).reshape(x.shape) if isinstance(x, torch.Tensor) else type(x)(*map(rebuild, x))
    return rebuild(like)


# --------------------------------------------------------------------------- metrics
@dataclasses.dataclass
class StepMetrics:
    """One optimizer step, as a line of ``metrics.jsonl`` (:meth:`as_dict`)."""
    step: int
    lr: float
    grad_norm: float
    loss: float                     # over every target token of the step
    target_tokens: int
    tokens: int                     # real (not padding) tokens
    step_time_s: float
    tokens_per_s: float
    loss_by_source: Dict[str, float]          # written as loss.SOURCE, for the sources in the step
    mfu: Optional[float] = None               # a GPU with a known bf16 peak, under bf16
    max_memory_gib: Optional[float] = None    # a GPU
    data_wait_s: Optional[float] = None       # set by the loop: the wait for the step's batches

    @classmethod
    def of(cls, step: int, lr: float, sums: StepSums, seconds: float) -> "StepMetrics":
        """The metrics of host ``sums`` (:meth:`StepSums.to_host`)."""
        c = sums.counts
        return cls(step=step, lr=lr, grad_norm=float(sums.grad_norm),
                   loss=float(sums.source_losses.sum()) / int(c.targets),
                   target_tokens=int(c.targets), tokens=int(c.tokens), step_time_s=seconds,
                   tokens_per_s=float(c.tokens) / seconds,
                   loss_by_source={s: float(sums.source_losses[j] / c.source_targets[j])
                                   for j, s in enumerate(SOURCES) if c.source_targets[j] > 0})

    def as_dict(self) -> Dict[str, Any]:
        m: Dict[str, Any] = {"step": self.step, "lr": self.lr, "grad_norm": self.grad_norm, "loss": self.loss,
                             "target_tokens": self.target_tokens, "tokens": self.tokens,
                             "step_time_s": self.step_time_s, "tokens_per_s": self.tokens_per_s}
        m.update({f"loss.{s}": v for s, v in self.loss_by_source.items()})
        for name in ("mfu", "max_memory_gib", "data_wait_s"):
            if getattr(self, name) is not None:
                m[name] = getattr(self, name)
        return m


@dataclasses.dataclass
class ValidationMetrics:
    """Mean next-token loss on the held-out datasets, as a line of ``metrics.jsonl``."""
    step: int
    val_loss: float                 # over every target token of every held-out dataset (nan: none)
    val_tokens: int
    loss_by_source: Dict[str, float]          # written as val_loss.SOURCE
    best: Optional[bool] = None               # set by the loop: the best validation loss so far

    def as_dict(self) -> Dict[str, Any]:
        m: Dict[str, Any] = {"step": self.step, "val_loss": self.val_loss, "val_tokens": self.val_tokens}
        m.update({f"val_loss.{s}": v for s, v in self.loss_by_source.items()})
        if self.best is not None:
            m["best"] = self.best
        return m


# --------------------------------------------------------------------------- the writer
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

    def write(self, m: StepMetrics, line: bool) -> None:
        if not self.enabled:
            return
        self._record(m.as_dict())
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{m.loss:.4f}", lr=f"{m.lr:.2e}", refresh=False)
        if line:
            per = " ".join(f"{s} {v:.4f}" for s, v in sorted(m.loss_by_source.items()))
            mfu = f" mfu {m.mfu:.1%}" if m.mfu is not None else ""
            self._say(f"step {m.step:>6d}  loss {m.loss:.4f}  [{per}]  lr {m.lr:.3e}  "
                      f"grad norm {m.grad_norm:.3f}  {m.tokens_per_s:,.0f} tok/s{mfu}")

    def write_validation(self, v: ValidationMetrics) -> None:
        if not self.enabled:
            return
        self._record(v.as_dict())
        per = " ".join(f"{s} {loss:.4f}" for s, loss in sorted(v.loss_by_source.items()))
        self._say(f"validation at step {v.step}: loss {v.val_loss:.4f}  [{per}]"
                  + ("  (best so far)" if v.best else ""))

    def close(self) -> None:
        for x in (self.bar, self.tb, self.fh):
            if x is not None:
                x.close()
