"""Every setting of a training run, in one object that the run records.

Defaults are the paper's recipe (../shared/KOSMOS.md §3): AdamW (0.9, 0.98),
eps 1e-6, weight decay 0.01, 2e-4 peak after 375 warm-up steps then linear
decay to 0 over 300k steps, clipping at 2.0, and 1.2M tokens a step split
0.5M text / 0.5M image-caption / 0.2M interleaved. ``trainer/configs/*.json``
scale them down for a CPU or up for a cluster; ``--set section.name=value``
changes one.

The fields' annotations are real types (no ``from __future__ import annotations``
here), so ``dataclasses.fields(...)[i].type`` can check a ``--set`` value.
"""

from dataclasses import dataclass, field
from typing import Dict, List, Optional

from contract.settings import SectionedConfig

SOURCES = ("text", "pairs", "interleaved", "instructions")
DEFAULT_MODEL = "kosmos-1"
STAGES = ("pretrain", "instruct")
# ``kosmos eval --task`` (trainer/evaluate.py): here, so the command line lists them without loading torch
EVAL_TASKS = ("caption", "vqa", "raven", "classify", "perplexity", "choice")


@dataclass(frozen=True)
class ModelSection:
    # The first four define the network. None takes run.init's recorded value when the
    # run starts from a checkpoint, else the default (kosmos-1, the weights' activation,
    # the model config's dropout); the run records what it decided. A value that
    # contradicts run.init's is refused (only dropout may differ: it is no weight).
    config: Optional[str] = None             # trainer.model.config name: kosmos-1 | tiny
    vision_pretrained: Optional[str] = None  # open_clip tag ("openai") or a local checkpoint path
    vision_quick_gelu: Optional[bool] = None  # None: the weights' own (QuickGELU for OpenAI's); true | false
    dropout: Optional[float] = None          # None: the model config's (kosmos-1: 0.1)
    activation_checkpointing: bool = False   # recompute each decoder layer in the backward pass
    compile: bool = False                    # torch.compile each decoder layer

    @property
    def name(self) -> str:
        """The model config's name (``config``, or the default when unset)."""
        return self.config or DEFAULT_MODEL


@dataclass(frozen=True)
class DataSection:
    # Datasets (directories with a _manifest.json, Parquet files or globs; local or
    # any fsspec URL). A source with no dataset or no token budget is left out.
    text: List[str] = field(default_factory=list)
    pairs: List[str] = field(default_factory=list)
    interleaved: List[str] = field(default_factory=list)
    instructions: List[str] = field(default_factory=list)   # JSONL or Parquet
    # Held-out datasets per source for the validation loss (none: no validation).
    # They must not share a file with the training datasets of the same source.
    val_text: List[str] = field(default_factory=list)
    val_pairs: List[str] = field(default_factory=list)
    val_interleaved: List[str] = field(default_factory=list)
    val_instructions: List[str] = field(default_factory=list)
    # Tokens per optimizer step over all ranks, per source (paper: 0.5M / 0.5M / 0.2M).
    text_tokens: int = 500_000
    pairs_tokens: int = 500_000
    interleaved_tokens: int = 200_000
    instructions_tokens: int = 0
    seq_len: int = 2048
    micro_batch_size: int = 4                # sequences per forward pass on one rank
    num_workers: int = 2                     # data-loader processes per rank (0: in the trainer)
    image_size: int = 224                    # pixels a side the loader resizes to; must be the vision tower's input
    seed: int = 0                            # shard order per epoch
    on_bad_shard: str = "skip"               # "skip" (report path, go on) | "stop"
    # A shard's row count and size are always checked against its _manifest.json; this
    # checks its sha256 too, once per loader process before the first of its rows
    # (a mismatch is a bad shard: on_bad_shard). false skips it (one read of each shard less).
    verify_checksums: bool = True
    # A curation run's datasets are read only once the run wrote its _SUCCESS marker
    # (a killed run leaves shards that look whole); true reads them anyway.
    allow_incomplete_runs: bool = False


WEIGHT_DECAY_SCOPES = ("all", "matrices")


@dataclass(frozen=True)
class OptimSection:
    lr: float = 2e-4
    betas: List[float] = field(default_factory=lambda: [0.9, 0.98])
    eps: float = 1e-6
    weight_decay: float = 0.01
    # Which trainable parameters decay: "all" (fairseq's Adam, which trained Kosmos-1 with
    # torchscale, decays every one) | "matrices" (not norms, biases, embeddings, latents).
    weight_decay_scope: str = "all"
    warmup_steps: int = 375
    steps: int = 300_000                     # the schedule decays linearly to 0 here
    grad_clip: float = 2.0

    def __post_init__(self):
        if self.weight_decay_scope not in WEIGHT_DECAY_SCOPES:
            raise ValueError(f"optim.weight_decay_scope must be one of {', '.join(WEIGHT_DECAY_SCOPES)}, "
                             f"not {self.weight_decay_scope!r}")


@dataclass(frozen=True)
class RunSection:
    output: str = "runs/kosmos"              # local: metrics.jsonl, tb/, config.json, bad_shards.jsonl
    # Checkpoints: local or any fsspec URL (gs://, s3://); default OUTPUT/checkpoints.
    checkpoint_dir: Optional[str] = None
    tokenizer: Optional[str] = None          # SentencePiece .model (kosmos tokenizer train)
    # pretrain | instruct. instruct needs run.init (the pretrained checkpoint) and
    # instruction data (data.instructions with data.instructions_tokens > 0); pretrain
    # takes no instruction data (see TrainConfig.check_stage).
    stage: str = "pretrain"
    init: Optional[str] = None               # checkpoint whose model weights (and model settings) start the run
    max_steps: Optional[int] = None          # stop here (default: optim.steps)
    seed: int = 0                            # model init and dropout
    precision: str = "auto"                  # auto (bf16 on GPU, fp32 on CPU) | bf16 | fp32
    parallel: str = "auto"                   # auto (ddp when WORLD_SIZE > 1) | none | ddp | fsdp | hsdp
    shard_group_size: Optional[int] = None   # hsdp: ranks a shard group spans (default: one node's)
    log_every: int = 1
    eval_every: int = 0                      # validation every N steps (0: only at the end); needs data.val_*
    eval_sequences: int = 64                 # held-out sequences per source, over all ranks
    # CHECKPOINTS/best names the step checkpoint of the lowest validation loss so far
    # (a pointer like `latest`, no second copy); keep_last never prunes it.
    keep_best: bool = True
    save_every: int = 1000
    keep_last: int = 3
    tensorboard: bool = True
    progress_bar: bool = True


@dataclass(frozen=True)
class TrainConfig(SectionedConfig):
    """Every setting of a training run (``kosmos train --print_config`` shows them);
    recorded in the run's ``config.json`` and in each checkpoint."""

    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    run: RunSection = field(default_factory=RunSection)

    def validate(self) -> None:
        if self.data.on_bad_shard not in ("skip", "stop"):
            raise ValueError("data.on_bad_shard must be 'skip' or 'stop'")
        if self.run.stage not in STAGES:
            raise ValueError(f"run.stage must be 'pretrain' or 'instruct', not {self.run.stage!r}")
        if self.run.precision not in ("auto", "bf16", "fp32"):
            raise ValueError("run.precision must be auto, bf16 or fp32")
        if self.run.parallel not in ("auto", "none", "ddp", "fsdp", "hsdp"):
            raise ValueError("run.parallel must be auto, none, ddp, fsdp or hsdp")
        for name in SOURCES:
            if getattr(self.data, f"{name}_tokens") < 0:
                raise ValueError(f"data.{name}_tokens must be >= 0")

    def check_stage(self) -> None:
        """What ``run.stage`` asks of a run that is about to train (not checked on
        loading: a checkpoint's recorded config is read whatever its stage).
        instruct: a starting checkpoint (whose model settings the run takes) and
        instruction data with a token budget; a config of pretraining sources only is
        refused. pretrain asks nothing."""
        if self.run.stage != "instruct":
            return
        if not self.run.init:
            raise ValueError("run.stage=instruct starts from a pretrained checkpoint: set run.init "
                             "(--init CHECKPOINT)")
        if not (self.data.instructions and self.data.instructions_tokens > 0):
            raise ValueError("run.stage=instruct needs instruction data: data.instructions (e.g. --set "
                             "data.instructions='[\"FILE.jsonl\"]') and data.instructions_tokens > 0 (now "
                             f"{len(self.data.instructions)} dataset(s), {self.data.instructions_tokens:,d} tokens)")

    def validation_sources(self) -> Dict[str, List[str]]:
        return {s: getattr(self.data, f"val_{s}") for s in SOURCES if getattr(self.data, f"val_{s}")}

    def active_sources(self) -> List[str]:
        return [s for s in SOURCES if getattr(self.data, s) and getattr(self.data, f"{s}_tokens") > 0]
