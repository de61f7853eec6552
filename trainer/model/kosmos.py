"""The Kosmos-1 model: images through CLIP and the resampler, spliced into the
token embeddings of the MAGNETO decoder at the ``<image_slot>`` positions."""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from contract.tokens import IGNORE_INDEX, SpecialIds
from trainer.model.config import KosmosConfig
from trainer.model.decoder import MagnetoDecoder
from trainer.model.resampler import PerceiverResampler
from trainer.model.vision import CLIPVisionEncoder


def _position_losses(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                     vocab: int) -> torch.Tensor:
    """Next-token loss of each position of one chunk, in fp32 (0 where the target is
    ignored). The padding rows of the output matrix keep the matmul's shape; their
    logits are set to -inf in place (probability 0, so no gradient) rather than sliced
    off, which would copy the chunk."""
    logits = F.linear(hidden, weight).float()
    if logits.shape[-1] > vocab:
        logits[:, vocab:] = float("-inf")
    return F.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX, reduction="none")


class KosmosModel(nn.Module):
    def __init__(self, cfg: KosmosConfig, build_vision: bool = True):
        super().__init__()
        self.cfg = cfg
        d = cfg.decoder
        self.ids = SpecialIds.for_vocab_size(d.vocab_size)
        self.decoder = MagnetoDecoder(d)
        self.vision = CLIPVisionEncoder(cfg.vision_model, cfg.vision_pretrained,
                                        cfg.vision_trainable_blocks, cfg.vision_quick_gelu) if build_vision else None
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
        """Without ``labels``: the logits [B, T, V]. With ``labels`` ([B, T], aligned
        with the inputs, -100 to ignore): the mean next-token loss, its sum, the sum of
        each row (``loss_per_seq`` [B], which splits a micro-batch of mixed sources) and
        the number of target tokens, and no logits (they are never materialised whole:
        see :meth:`next_token_loss`)."""
        if labels is None:
            logits, _ = self.decoder(embeds=self.embed(input_ids, images), key_mask=key_mask, use_cache=False)
            return {"logits": logits}
        # no keys/values kept: validation runs in eval mode, where the decoder would keep them
        hidden, _ = self.decoder(embeds=self.embed(input_ids, images), key_mask=key_mask, features_only=True,
                                 use_cache=False)
        per_position, n = self.next_token_loss(hidden, labels)
        loss_sum = per_position.sum()
        return {"loss": loss_sum / n.clamp(min=1), "loss_sum": loss_sum, "loss_per_seq": per_position.sum(1),
                "target_tokens": n}

    def next_token_loss(self, hidden: torch.Tensor, labels: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(cross-entropy of every position [B, T] in fp32, 0 where there is no
        target; number of targets) of the final features [B, T, dim] against
        ``labels`` shifted by one.

        The positions go through the output projection ``cfg.loss_chunk_tokens`` at a
        time, each chunk under activation checkpointing: only one chunk's logits (and
        their fp32 copy) exist at once, in the forward and again in the backward pass,
        instead of the whole [B*T, V] in both precisions. The last position of each row
        has no target; it is computed and ignored, so the features are never copied."""
        b, t, dim = hidden.shape
        targets = torch.cat([labels[:, 1:], labels.new_full((b, 1), IGNORE_INDEX)], dim=1).reshape(-1)
        flat = hidden.reshape(b * t, dim)
        weight = self.decoder.output_projection.weight
        vocab = self.cfg.decoder.vocab_size
        step = self.cfg.loss_chunk_tokens
        if step < 1:
            raise ValueError(f"KosmosConfig.loss_chunk_tokens must be >= 1, not {step}")
        parts = []
        for start in range(0, b * t, step):
            args = (flat[start:start + step], weight, targets[start:start + step], vocab)
            if torch.is_grad_enabled():
                parts.append(torch.utils.checkpoint.checkpoint(_position_losses, *args, use_reentrant=False))
            else:
                parts.append(_position_losses(*args))
        return torch.cat(parts).view(b, t), (targets != IGNORE_INDEX).sum()

    # -- generation --------------------------------------------------------------------
    def never_generated(self) -> List[int]:
        """Ids that are never outputs: padding, ``<s>``, ``<unk>`` and the image markers."""
        i = self.ids
        return [i.pad, i.bos, i.unk, i.image_start, i.image_end, i.image_slot]

    def _left_pad(self, prompts, device) -> Tuple[torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor]]:
        """(ids [B, T], key_mask or None, shift or None) from id lists of any lengths."""
        if isinstance(prompts, torch.Tensor):
            return prompts.to(device), None, None
        if not prompts or any(len(p) == 0 for p in prompts):
            raise ValueError("every prompt needs at least one token")
        width = max(len(p) for p in prompts)
        pads = [width - len(p) for p in prompts]
        ids = torch.tensor([[self.ids.pad] * n + list(p) for n, p in zip(pads, prompts)], device=device)
        if not any(pads):
            return ids, None, None
        mask = torch.tensor([[0] * n + [1] * len(p) for n, p in zip(pads, prompts)], device=device)
        return ids, mask.bool(), torch.tensor(pads, device=device)

    def _start(self, prompts, images):
        """The prompt's forward: (last logits [B, V] as log-probabilities, cache, key_mask, shift)."""
        device = self.decoder.embed_tokens.weight.device
        ids, mask, shift = self._left_pad(prompts, device)
        if images is not None:
            images = images.to(device)
        logits, cache = self.decoder(embeds=self.embed(ids, images), key_mask=mask, shift=shift)
        return logits[:, -1], cache, mask, shift, ids.shape[0]

    def _next_logprobs(self, logits: torch.Tensor) -> torch.Tensor:
        lp = F.log_softmax(logits.float(), -1)
        lp[:, self.never_generated()] = float("-inf")
        return lp

    @torch.no_grad()
    def generate(self, prompts, images: Optional[torch.Tensor] = None, max_new_tokens: int = 20,
                 num_beams: int = 1, length_penalty: float = 1.0) -> List[List[int]]:
        """Continue a batch of prompts until ``</s>`` or ``max_new_tokens``; returns the
        new ids of each (ending in ``</s>`` when it was produced).

        ``prompts``: a [B, T] tensor of real tokens, or lists of ids of any lengths
        (left-padded here, with a padding mask and per-row positions, so a prompt gets
        the same answer in a batch as alone). ``images``: every image of the batch in
        reading order (row 0's first). Greedy for ``num_beams`` 1, else beam search as
        fairseq does it: ``num_beams`` live hypotheses per prompt, a hypothesis that
        ends is set apart with its score divided by its length ** ``length_penalty``,
        a prompt is done once it has ``num_beams`` finished ones, and every live one
        ends at the length limit (that ``</s>`` is not part of the output). Padding, ``<s>``, ``<unk>`` and the image markers are never
        produced."""
        was_training = self.training
        self.eval()
        try:
            if num_beams > 1:
                return self._beam(prompts, images, max_new_tokens, num_beams, length_penalty)
            return self._greedy(prompts, images, max_new_tokens)
        finally:
            self.train(was_training)

    def _greedy(self, prompts, images, max_new_tokens):
        logits, cache, mask, shift, b = self._start(prompts, images)
        device = logits.device
        out: List[List[int]] = [[] for _ in range(b)]
        done = torch.zeros(b, dtype=torch.bool, device=device)
        for _ in range(max_new_tokens):
            nxt = self._next_logprobs(logits).argmax(-1)
            for i, t in enumerate(nxt.tolist()):
                if not done[i]:
                    out[i].append(t)
            done |= nxt == self.ids.eos
            if bool(done.all()):
                break
            if mask is not None:
                mask = torch.cat([mask, torch.ones(b, 1, dtype=torch.bool, device=device)], 1)
            step_logits, cache = self.decoder(nxt[:, None], cache=cache, key_mask=mask, shift=shift)
            logits = step_logits[:, -1]
        return out

    def _beam(self, prompts, images, max_new_tokens, k, length_penalty):
        logits, cache, mask, shift, b = self._start(prompts, images)
        device = logits.device
        # k copies of every prompt; only the first copy is live at the start
        rows = torch.arange(b, device=device).repeat_interleave(k)
        cache = [(kk[rows], vv[rows]) for kk, vv in cache]
        mask = mask[rows] if mask is not None else None
        shift = shift[rows] if shift is not None else None
        logits = logits[rows]
        scores = torch.full((b, k), float("-inf"), device=device)
        scores[:, 0] = 0.0
        seqs: List[List[List[int]]] = [[[] for _ in range(k)] for _ in range(b)]
        finished: List[List[Tuple[float, List[int]]]] = [[] for _ in range(b)]
        done = [False] * b
        eos = self.ids.eos
        for step in range(max_new_tokens + 1):
            lp = self._next_logprobs(logits)
            if step == max_new_tokens:      # the length limit: every hypothesis ends here (not part of its output)
                forced = torch.full_like(lp, float("-inf"))
                forced[:, eos] = lp[:, eos].clamp(min=-1e4)
                lp = forced
            vocab = lp.shape[-1]
            cand = (scores.view(-1, 1) + lp).view(b, k * vocab)
            top_scores, top_idx = cand.topk(min(2 * k, cand.shape[1]), dim=1)
            parents = torch.zeros(b, k, dtype=torch.long, device=device)
            tokens = torch.full((b, k), eos, dtype=torch.long, device=device)
            new_scores = torch.full((b, k), float("-inf"), device=device)
            new_seqs: List[List[List[int]]] = []
            for i in range(b):
                kept: List[List[int]] = []
                if not done[i]:
                    for j, (s, fi) in enumerate(zip(top_scores[i].tolist(), top_idx[i].tolist())):
                        if s == float("-inf"):
                            break
                        parent, tok = divmod(fi, vocab)
                        seq = seqs[i][parent] + [tok]
                        if tok == eos:
                            if j < k:          # an end among the k best candidates is a finished hypothesis
                                finished[i].append((s / len(seq) ** length_penalty,
                                                    seq[:-1] if step == max_new_tokens else seq))
                            continue
                        parents[i, len(kept)] = parent
                        tokens[i, len(kept)] = tok
                        new_scores[i, len(kept)] = s
                        kept.append(seq)
                        if len(kept) == k:
                            break
                    if len(finished[i]) >= k or not kept:
                        done[i] = True
                new_seqs.append(kept + [[] for _ in range(k - len(kept))])
            seqs, scores = new_seqs, new_scores
            if all(done) or step == max_new_tokens:
                break
            order = (torch.arange(b, device=device)[:, None] * k + parents).view(-1)
            cache = [(kk[order], vv[order]) for kk, vv in cache]
            if mask is not None:
                mask = torch.cat([mask, torch.ones(mask.shape[0], 1, dtype=torch.bool, device=device)], 1)
            step_logits, cache = self.decoder(tokens.view(-1, 1), cache=cache, key_mask=mask, shift=shift)
            logits = step_logits[:, -1]
        out = []
        for i in range(b):
            pool = finished[i] or [(float(scores[i, j]) / max(1, len(seqs[i][j])) ** length_penalty, seqs[i][j])
                                   for j in range(k) if seqs[i][j]]
            out.append(max(pool, key=lambda f: f[0])[1] if pool else [])
        return out

    # -- scoring -----------------------------------------------------------------------
    @torch.no_grad()
    def score(self, contexts: List[List[int]], continuations: List[List[int]],
              images: Optional[torch.Tensor] = None, image_embeds: Optional[torch.Tensor] = None) -> List[float]:
        """Sum of log P(continuation | context) per row (likelihood ranking for
        classification and multiple choice). Rows are right-padded: causal attention
        never sees the padding after a row's last token. ``image_embeds`` (resampled,
        rows' images in order) spares encoding one image again for every candidate."""
        was_training = self.training
        self.eval()
        try:
            device = self.decoder.embed_tokens.weight.device
            full = [list(c) + list(x) for c, x in zip(contexts, continuations)]
            width = max(len(f) for f in full)
            ids = torch.tensor([f + [self.ids.pad] * (width - len(f)) for f in full], device=device)
            logits, _ = self.decoder(embeds=self.embed(ids, None if images is None else images.to(device),
                                                       image_embeds), use_cache=False)
            lp = F.log_softmax(logits.float(), -1)
            out = []
            for r, (c, x) in enumerate(zip(contexts, continuations)):
                pos = torch.arange(len(c) - 1, len(c) + len(x) - 1, device=device)
                tgt = torch.tensor(list(x), device=device)
                out.append(float(lp[r, pos, tgt].sum()))
            return out
        finally:
            self.train(was_training)

    # -- bookkeeping --------------------------------------------------------------------
    def parameter_counts(self) -> Dict[str, int]:
        count = lambda m: sum(p.numel() for p in m.parameters()) if m is not None else 0  # noqa: E731
        counts = {"decoder": count(self.decoder), "vision": count(self.vision), "resampler": count(self.resampler)}
        counts["total"] = sum(counts.values())
        counts["trainable"] = sum(p.numel() for p in self.parameters() if p.requires_grad)
        return counts

    # -- FLOPs (MFU) --------------------------------------------------------------------
    def decoder_flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token of the decoder, counted as torchtitan counts them
        (``get_num_flop_per_token``): 6 x its non-embedding parameters (the lookup is
        no matmul, but the tied output projection's padded_vocab x dim matmul is
        counted) + 12 x layers x dim x seq_len for attention (QK^T and AV, forward and
        backward, causal masking not discounted). Works on the meta device."""
        d = self.cfg.decoder
        n = sum(p.numel() for name, p in self.decoder.named_parameters()
                if not name.startswith(("embed_tokens.", "output_projection.")))
        n += d.padded_vocab_size * d.dim
        return 6 * n + 12 * d.layers * d.dim * seq_len

    def image_flops(self) -> float:
        """Training FLOPs per image: the vision tower and the resampler.

        Tower (T = patches + 1 class token, w = width): a frozen block runs forward
        only, 2 x its parameters per token + 4 x w x T for attention; no gradient goes
        back through it (nothing before it trains). A trainable block (and ln_post)
        counts 6 x parameters + 12 x w x T per token, as the decoder does. The
        positional and class embeddings and the unused pooled-output ``proj`` are no
        matmuls over the tokens and are left out.

        Resampler (trained; P = patches, n = latents, h = heads x dim_head): 6 x its
        parameters x n, except ``to_kv``, which runs over the P + n media and latent
        rows, + 12 x depth x h x n x (P + n) for attention."""
        if self.vision is None:
            raise ValueError("image_flops needs the vision tower (KosmosModel(build_vision=True))")
        visual = self.vision.visual
        patches = int(visual.grid_size[0] * visual.grid_size[1])
        t = patches + 1
        w = self.vision.width
        flops = 0.0
        skip = ("positional_embedding", "class_embedding", "proj")
        for name, p in visual.named_parameters():
            if name in skip or name.startswith("transformer.resblocks."):
                continue
            flops += (6 if p.requires_grad else 2) * p.numel() * t
        for block in visual.transformer.resblocks:
            trained = any(p.requires_grad for p in block.parameters())
            n_block = sum(p.numel() for p in block.parameters())
            flops += ((6 * n_block + 12 * w * t) if trained else (2 * n_block + 4 * w * t)) * t
        r, c = self.resampler, self.cfg
        n_lat = r.num_latents
        kv = sum(p.numel() for name, p in r.named_parameters() if ".to_kv." in name)
        rest = sum(p.numel() for name, p in r.named_parameters() if ".to_kv." not in name and name != "latents")
        inner = c.resampler_heads * c.resampler_dim_head
        flops += 6 * (rest * n_lat + kv * (patches + n_lat)) + 12 * len(r.layers) * inner * n_lat * (patches + n_lat)
        return flops

    def training_flops(self, tokens: int, images: int, seq_len: int) -> float:
        """Model FLOPs of one training step (forward and backward): ``tokens`` decoder
        positions in sequences of ``seq_len`` and ``images`` images, i.e.
        tokens x :meth:`decoder_flops_per_token` + images x :meth:`image_flops`.
        Recomputation (activation checkpointing, the chunked loss) is not counted."""
        flops = tokens * self.decoder_flops_per_token(seq_len)
        if images:
            flops += images * self.image_flops()
        return float(flops)

def build_on_meta(cfg: KosmosConfig) -> KosmosModel:
    """The model's structure without memory (for counting and planning)."""
    with torch.device("meta"):
        return KosmosModel(cfg)
