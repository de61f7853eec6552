"""Using a trained checkpoint: load it for inference, turn a prompt that mixes text
and images into ids and pixels, generate, score.

A prompt is text with images marked inline, ``"<image:photo.jpg> An image of"``,
or a JSON list of parts, ``["Here is", {"image": "a.jpg"}, "and", {"image": "b.jpg"}]``.
Image paths are local paths or any fsspec URL. Every prompt starts with ``<s>``;
each image becomes ``<image>``, the slots and ``</image>``, as in training.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple, Union

import torch

from trainer.shards import join, url_to_fs

_INLINE_IMAGE = re.compile(r"<image:([^>]+)>")


@dataclass(frozen=True)
class ImagePart:
    path: str


Part = Union[str, ImagePart]


def parse_prompt(text: str) -> List[Part]:
    """Parts of a prompt: a JSON list (strings and ``{"image": path}``) or text with
    ``<image:path>`` marks."""
    stripped = text.strip()
    if stripped.startswith("["):
        parts: List[Part] = []
        for item in json.loads(stripped):
            if isinstance(item, str):
                parts.append(item)
            elif isinstance(item, dict) and "image" in item:
                parts.append(ImagePart(str(item["image"])))
            elif isinstance(item, dict) and "text" in item:
                parts.append(str(item["text"]))
            else:
                raise ValueError(f"prompt part {item!r}: expected a string, {{'text': ...}} or {{'image': ...}}")
        return parts
    parts, pos = [], 0
    for m in _INLINE_IMAGE.finditer(text):
        if text[pos:m.start()].strip():
            parts.append(text[pos:m.start()].strip())
        parts.append(ImagePart(m.group(1).strip()))
        pos = m.end()
    if text[pos:].strip():
        parts.append(text[pos:].strip())
    return parts


def read_bytes(path: str) -> bytes:
    fs, local = url_to_fs(path)
    with fs.open(local, "rb") as fh:
        return fh.read()


class Prompter:
    """Ids and pixels of prompts for one model and tokenizer."""

    def __init__(self, tokenizer, num_image_tokens: int, image_size: int = 224):
        self.tok = tokenizer
        self.ids = tokenizer.ids
        self.block = self.ids.image_block(num_image_tokens)
        self.image_size = image_size

    def pixels(self, image: Union[str, bytes, ImagePart]) -> torch.Tensor:
        from trainer.data import preprocess_image
        data = image if isinstance(image, bytes) else read_bytes(image.path if isinstance(image, ImagePart) else image)
        return preprocess_image(data, self.image_size)

    def encode(self, parts: Sequence[Union[Part, bytes]], bos: bool = True) -> Tuple[List[int], List[torch.Tensor]]:
        ids: List[int] = [self.ids.bos] if bos else []
        images: List[torch.Tensor] = []
        for part in parts:
            if isinstance(part, str):
                ids += self.tok.encode(part)
            else:
                images.append(self.pixels(part))
                ids += self.block
        return ids, images

    def batch(self, prompts: Sequence[Sequence[Union[Part, bytes]]]) -> Tuple[List[List[int]], Optional[torch.Tensor]]:
        """Id lists and every image in reading order (what ``generate`` takes)."""
        all_ids, all_images = [], []
        for parts in prompts:
            ids, images = self.encode(parts)
            all_ids.append(ids)
            all_images += images
        return all_ids, (torch.stack(all_images) if all_images else None)


def resolve_checkpoint(path: str) -> str:
    """A checkpoint directory from what a user has at hand: the step directory itself,
    a checkpoint root (its ``latest``), or a training run's output (``checkpoints/latest``)."""
    fs, local = url_to_fs(path)
    if fs.exists(url_to_fs(join(path, ".metadata"))[1]):
        return path
    if fs.isfile(local):          # a pointer beside the checkpoints: CHECKPOINTS/best, CHECKPOINTS/latest
        with fs.open(local, "r") as fh:
            return join(path.rstrip("/").rsplit("/", 1)[0], fh.read().strip())
    for root in (path, join(path, "checkpoints")):
        latest = url_to_fs(join(root, "latest"))[1]
        if fs.exists(latest):
            with fs.open(latest, "r") as fh:
                return join(root, fh.read().strip())
    raise FileNotFoundError(f"{path}: no checkpoint there (no .metadata, latest or checkpoints/latest)")


def load_for_inference(path: str, tokenizer: Optional[str] = None, device: str = "cpu"):
    """(model in eval mode, tokenizer, the run's TrainConfig) of a checkpoint. The
    tokenizer is the run's (``run.tokenizer`` in the checkpoint's config.json) unless
    given. CLIP is built without downloading: its weights come from the checkpoint."""
    from trainer import checkpoint as ckpt
    from trainer.config import TrainConfig
    from trainer.tokenizer import Tokenizer
    from trainer.build import build_model, resolve_activation
    step_dir = resolve_checkpoint(path)
    fs, _ = url_to_fs(step_dir)
    with fs.open(url_to_fs(join(step_dir, "config.json"))[1], "r") as fh:
        cfg = TrainConfig.from_dict(json.load(fh))
    tok_path = tokenizer or cfg.run.tokenizer
    if not tok_path:
        raise ValueError(f"{step_dir}: the run recorded no tokenizer; pass --tokenizer")
    tok = Tokenizer(tok_path)
    # the checkpoint holds the tower's weights: do not fetch the pretrained ones again
    # (the run recorded the tower's activation in model.vision_quick_gelu)
    # (a run recorded before it wrote vision_quick_gelu down: decided from vision_pretrained first)
    cfg = resolve_activation(cfg)
    cfg_local = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, vision_pretrained=None))
    model = build_model(cfg_local, tok.vocab_size)
    ckpt.load_model_weights(step_dir, model)
    model.to(device).eval()
    return model, tok, cfg


def images_per_prompt(prompts: Sequence[Sequence[int]], images: Optional[torch.Tensor], image_start: int
                      ) -> List[Optional[torch.Tensor]]:
    """Each prompt's own images out of a batch's (given in reading order), by its ``<image>`` marks."""
    out: List[Optional[torch.Tensor]] = []
    start = 0
    for p in prompts:
        n = list(p).count(image_start)
        out.append(images[start:start + n] if n else None)
        start += n
    if start != (0 if images is None else images.shape[0]):
        raise ValueError(f"the prompts mark {start} images, {0 if images is None else images.shape[0]} were given")
    return out


def check_batched_beam(model, prompts: Sequence[Sequence[int]], images: Optional[torch.Tensor] = None, k: int = 5,
                       max_new_tokens: int = 20, precision: str = "fp32") -> dict:
    """Generate ``prompts`` (id lists of any lengths; their images in reading order)
    all at once with ``k`` beams and again one prompt at a time: {"batched", "alone"
    (the new ids of each prompt), "equal", "mismatches" (indices of the prompts that
    differ)}. In fp32 the two agree exactly; under bf16 autocast ("bf16") a padded
    batch may round differently and flip a near tie."""
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision {precision!r}: expected fp32 or bf16")
    ctx = torch.autocast(model.decoder.embed_tokens.weight.device.type, dtype=torch.bfloat16) \
        if precision == "bf16" else contextlib.nullcontext()
    with ctx:
        batched = model.generate([list(p) for p in prompts], images, max_new_tokens=max_new_tokens, num_beams=k)
        alone = [model.generate([list(p)], im, max_new_tokens=max_new_tokens, num_beams=k)[0]
                 for p, im in zip(prompts, images_per_prompt(prompts, images, model.ids.image_start))]
    mismatches = [i for i, (a, b) in enumerate(zip(batched, alone)) if a != b]
    return {"batched": batched, "alone": alone, "equal": not mismatches, "mismatches": mismatches}
