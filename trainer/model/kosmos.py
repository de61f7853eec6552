"""The Kosmos-1 model: images through CLIP and the resampler, spliced into the
token embeddings of the MAGNETO decoder at the ``<image_slot>`` positions."""

from __future__ import annotations

from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from trainer.model.config import KosmosConfig
from trainer.model.decoder import MagnetoDecoder
from trainer.model.resampler import PerceiverResampler
from trainer.model.vision import CLIPVisionEncoder
from trainer.tokens import IGNORE_INDEX, SpecialIds


class KosmosModel(nn.Module):
    def __init__(self, cfg: KosmosConfig, build_vision: bool = True):
        super().__init__()
        self.cfg = cfg
        d = cfg.decoder
        self.ids = SpecialIds(d.vocab_size - 7)
        self.decoder = MagnetoDecoder(d)
        self.vision = CLIPVisionEncoder(cfg.vision_model, cfg.vision_pretrained,
                                        cfg.vision_trainable_blocks) if build_vision else None
        media_dim = self.vision.width if self.vision is not None else 1024
        self.resampler = PerceiverResampler(media_dim, d.dim, cfg.num_image_tokens, cfg.resampler_depth,
                                            cfg.resampler_heads, cfg.resampler_dim_head, cfg.resampler_ff_mult)

    # -- pieces ------------------------------------------------------------------------
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """[N, 3, H, W] -> [N, num_image_tokens, dim]."""
        return self.resampler(self.vision(images))

    def embed(self, input_ids: torch.Tensor, images: Optional[torch.Tensor] = None,
              image_embeds: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Token embeddings with the image embeddings written over the slots. Images
        are given in reading order: row 0's images first, then row 1's, ..."""
        embeds = self.decoder.embed_tokens(input_ids)
        slots = input_ids == self.ids.image_slot
        n_slots = int(slots.sum())
        if n_slots == 0:
            if images is not None:
                # Images without slots (a placeholder the trainer passes so that every rank
                # runs the same modules in every micro-batch): they take part with weight 0.
                embeds = embeds + 0.0 * self.encode_images(images).sum().to(embeds.dtype)
            return embeds
        if image_embeds is None:
            if images is None:
                raise ValueError("the tokens hold image slots but no images were given")
            image_embeds = self.encode_images(images)
        per_image = self.cfg.num_image_tokens
        if image_embeds.shape[0] * per_image != n_slots:
            raise ValueError(f"{n_slots} image slots for {image_embeds.shape[0]} images of {per_image} embeddings")
        embeds = embeds.clone()
        embeds[slots] = image_embeds.reshape(-1, embeds.shape[-1]).to(embeds.dtype)
        return embeds

    def labels_for(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Targets: every text token; never ``<image>``, the slots or padding."""
        labels = input_ids.clone()
        never = (input_ids == self.ids.image_start) | (input_ids == self.ids.image_slot) | (input_ids == self.ids.pad)
        labels[never] = IGNORE_INDEX
        return labels

    # -- training ----------------------------------------------------------------------
    def forward(self, input_ids: torch.Tensor, images: Optional[torch.Tensor] = None,
                labels: Optional[torch.Tensor] = None, key_mask: Optional[torch.Tensor] = None
                ) -> Dict[str, torch.Tensor]:
        """Logits [B, T, V]; with ``labels`` ([B, T], aligned with the inputs, -100 to
        ignore) also the mean next-token loss and the number of target tokens."""
        logits, _ = self.decoder(embeds=self.embed(input_ids, images), key_mask=key_mask)
        out = {"logits": logits}
        if labels is not None:
            targets = labels[:, 1:]
            loss_sum = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
                                       targets.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum")
            n = (targets != IGNORE_INDEX).sum()
            out["loss"] = loss_sum / n.clamp(min=1)
            out["loss_sum"] = loss_sum
            out["target_tokens"] = n
        return out

    # -- generation --------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, images: Optional[torch.Tensor] = None, max_new_tokens: int = 20,
                 num_beams: int = 1, length_penalty: float = 1.0) -> List[List[int]]:
        """Continue each prompt (a batch of equal-length prompts for greedy search, one
        prompt for beam search) until ``</s>`` or ``max_new_tokens``; returns the new ids."""
        was_training = self.training
        self.eval()
        try:
            if num_beams > 1:
                if input_ids.shape[0] != 1:
                    raise ValueError("beam search takes one prompt at a time")
                return [self._beam(input_ids, images, max_new_tokens, num_beams, length_penalty)]
            return self._greedy(input_ids, images, max_new_tokens)
        finally:
            self.train(was_training)

    def _greedy(self, input_ids, images, max_new_tokens):
        logits, cache = self.decoder(embeds=self.embed(input_ids, images))
        out = [[] for _ in range(input_ids.shape[0])]
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        for _ in range(max_new_tokens):
            nxt = logits[:, -1].argmax(-1)
            for i, t in enumerate(nxt.tolist()):
                if not done[i]:
                    out[i].append(t)
            done |= nxt == self.ids.eos
            if bool(done.all()):
                break
            logits, cache = self.decoder(nxt[:, None], cache=cache)
        return out

    def _beam(self, input_ids, images, max_new_tokens, k, length_penalty):
        logits, cache = self.decoder(embeds=self.embed(input_ids, images))
        logp = F.log_softmax(logits[:, -1].float(), -1)[0]
        scores, first = logp.topk(k)
        beams = [[t] for t in first.tolist()]
        cache = [(kk.repeat(k, 1, 1, 1), vv.repeat(k, 1, 1, 1)) for kk, vv in cache]
        finished = []
        alive = [i for i, b in enumerate(beams) if b[-1] != self.ids.eos]
        for i, b in enumerate(beams):
            if b[-1] == self.ids.eos:
                finished.append((scores[i].item() / len(b) ** length_penalty, b))
        for _ in range(max_new_tokens - 1):
            if not alive:
                break
            idx = torch.tensor(alive, device=input_ids.device)
            cache = [(kk[idx], vv[idx]) for kk, vv in cache]
            last = torch.tensor([[beams[i][-1]] for i in alive], device=input_ids.device)
            logits, cache = self.decoder(last, cache=cache)
            cand = scores[idx][:, None] + F.log_softmax(logits[:, -1].float(), -1)
            flat_scores, flat_idx = cand.view(-1).topk(min(k, cand.numel()))
            vocab = cand.shape[-1]
            new_beams, new_scores, parents = [], [], []
            for s, fi in zip(flat_scores.tolist(), flat_idx.tolist()):
                parent, tok = divmod(fi, vocab)
                seq = beams[alive[parent]] + [tok]
                if tok == self.ids.eos:
                    finished.append((s / len(seq) ** length_penalty, seq))
                else:
                    new_beams.append(seq)
                    new_scores.append(s)
                    parents.append(parent)
            if len(finished) >= k or not new_beams:
                alive = []
                break
            pidx = torch.tensor(parents, device=input_ids.device)
            cache = [(kk[pidx], vv[pidx]) for kk, vv in cache]
            beams = new_beams
            scores = torch.tensor(new_scores, device=input_ids.device)
            alive = list(range(len(beams)))
        for i in alive:
            finished.append((scores[i].item() / len(beams[i]) ** length_penalty, beams[i]))
        return max(finished, key=lambda f: f[0])[1]

    # -- bookkeeping --------------------------------------------------------------------
    def parameter_counts(self) -> Dict[str, int]:
        count = lambda m: sum(p.numel() for p in m.parameters()) if m is not None else 0  # noqa: E731
        counts = {"decoder": count(self.decoder), "vision": count(self.vision), "resampler": count(self.resampler)}
        counts["total"] = sum(counts.values())
        counts["trainable"] = sum(p.numel() for p in self.parameters() if p.requires_grad)
        return counts


def build_on_meta(cfg: KosmosConfig) -> KosmosModel:
    """The model's structure without memory (for counting and planning)."""
    with torch.device("meta"):
        return KosmosModel(cfg)
