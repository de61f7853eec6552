"""The model a run trains: its settings decided (from ``run.init``'s checkpoint or the
defaults, as ``config.json`` records them), what its checkpoints record of it
(``meta.json``), and the network built."""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Dict, Tuple

from trainer import checkpoint as ckpt
from trainer.config import TrainConfig
from trainer.model.config import get_config
from trainer.model.kosmos import KosmosModel


def resolve_activation(cfg: TrainConfig) -> TrainConfig:
    """The run records the CLIP activation it decided from the weights, so that its
    checkpoints load with the same one anywhere (``kosmos generate``, ``kosmos eval``)."""
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


def model_for_run(cfg: TrainConfig, vocab_size: int, tokenizer=None) -> Tuple[KosmosModel, Dict[str, Any]]:
    """The network a run starts from, on the CPU, and its checkpoint meta. With
    ``run.init`` the weights are that checkpoint's (the vision tower's pretrained ones
    are not fetched), after its meta is checked against this run's."""
    if not cfg.run.init:
        model = build_model(cfg, vocab_size)
        return model, checkpoint_meta(cfg, model, tokenizer)
    model = build_model(dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, vision_pretrained=None)),
                        vocab_size)
    ckpt.load_model_weights(cfg.run.init, model, expected=checkpoint_meta(cfg, model, tokenizer))
    return model, checkpoint_meta(cfg, model, tokenizer)
