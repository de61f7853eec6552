"""The Kosmos model: sizes, parity with torchscale, caching, batching, freezing."""

import math

import pytest
import torch

from trainer.model.config import get_config
from trainer.model.decoder import DecoderConfig, MagnetoDecoder
from trainer.model.kosmos import KosmosModel, build_on_meta
from trainer.model.xpos import XPos
from contract.tokens import IGNORE_INDEX


def test_kosmos_1_sizes_on_the_meta_device():
    counts = build_on_meta(get_config("kosmos-1")).parameter_counts()
    # "about 1.3B" (tied input/output embeddings, 64,007 ids in 64,064 rows: 57 x 2048 padding)
    assert counts["decoder"] == 1_340_180_480 + 57 * 2048
    assert counts["vision"] == 303_966_208         # CLIP ViT-L/14 visual tower
    assert counts["resampler"] == 77_701_120       # 6 Perceiver layers (Flamingo's depth)
    assert counts["total"] == 1_721_964_544        # the paper's "about 1.6B" with a 1-layer resampler
    cfg = get_config("kosmos-1")
    d = cfg.decoder
    assert (d.layers, d.dim, d.ffn_dim, d.heads, d.vocab_size, d.max_seq_len) == \
        (24, 2048, 8192, 32, 64007, 2048)
    assert (d.padded_vocab_size, cfg.resampler_depth) == (64064, 6)


def test_magneto_init_scales_the_four_projections():
    torch.manual_seed(0)
    cfg = DecoderConfig(vocab_size=100, layers=24, dim=64, ffn_dim=256, heads=4)
    dec = MagnetoDecoder(cfg)
    gamma = math.sqrt(math.log(48))
    assert gamma == pytest.approx(1.9675, abs=1e-4)
    bound = 1 / math.sqrt(64)  # PyTorch's default init for a 64-input Linear
    w = dec.layers[0].self_attn.v_proj.weight
    assert bound < w.abs().max() <= bound * gamma
    assert dec.layers[0].self_attn.q_proj.weight.abs().max() <= bound


def test_xpos_matches_torchscale():
    # torchscale 0.3.0 is a test dependency (requirements-nodeps.txt, installed --no-deps).
    from torchscale.component.xpos_relative_position import XPOS
    torch.manual_seed(0)
    ref, ours = XPOS(64, 512), XPos(64, 512)
    x = torch.randn(8, 37, 64)
    assert torch.allclose(ours(x, 37, downscale=True), ref(x, offset=0, downscale=True), atol=1e-5)
    assert torch.allclose(ours(x, 37), ref(x, offset=0), atol=1e-5)
    last = x[:, -1:]
    assert torch.allclose(ours(last, 37), ref(last, offset=36), atol=1e-5)


def torchscale_decoder(vocab, layers=2, dim=64, ffn=256, heads=4):
    from torchscale.architecture.config import DecoderConfig as TSConfig
    from torchscale.architecture.decoder import Decoder
    args = TSConfig(vocab_size=vocab, decoder_layers=layers, decoder_embed_dim=dim, decoder_ffn_embed_dim=ffn,
                    decoder_attention_heads=heads, subln=True, xpos_rel_pos=True, xpos_scale_base=512,
                    dropout=0.0, share_decoder_input_output_embed=True)
    return Decoder(args, embed_tokens=torch.nn.Embedding(vocab, dim))


def test_decoder_matches_torchscale_subln_xpos():
    """Same weights, same logits; ours keeps 20 zero padding rows (300 ids in 320 rows)
    and returns logits for the 300 ids only."""
    torch.manual_seed(0)
    ref = torchscale_decoder(300).eval()
    ours = MagnetoDecoder(DecoderConfig(vocab_size=300, layers=2, dim=64, ffn_dim=256, heads=4, dropout=0.0)).eval()
    assert ours.embed_tokens.weight.shape == (320, 64)
    state = {k: v for k, v in ref.state_dict().items() if "xpos" not in k}
    for key in ("embed_tokens.weight", "output_projection.weight"):
        state[key] = torch.nn.functional.pad(state[key], (0, 0, 0, 20))
    missing, unexpected = ours.load_state_dict(state, strict=False)
    assert not unexpected and not missing
    tokens = torch.randint(4, 300, (3, 41))
    with torch.no_grad():
        want, _ = ref(tokens)
        got, _ = ours(tokens)
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return KosmosModel(get_config("tiny")).eval()


def test_incremental_decoding_matches_full_forward():
    model = tiny_model()
    ids = model.ids
    seq = torch.tensor([[ids.bos, 10, 11] + ids.image_block(8) + [12, 13, 14, 15, 16]])
    images = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        embeds = model.embed(seq, images)
        full, _ = model.decoder(embeds=embeds)
        # Prefill the first 12 positions, then one token at a time.
        logits, cache = model.decoder(embeds=embeds[:, :12])
        steps = [logits]
        for t in range(12, seq.shape[1]):
            logits, cache = model.decoder(embeds=embeds[:, t:t + 1], cache=cache)
            steps.append(logits)
        inc = torch.cat(steps, dim=1)
        # A prefill of several tokens on top of a cache (mask with an offset).
        a, cache2 = model.decoder(embeds=embeds[:, :5])
        b, _ = model.decoder(embeds=embeds[:, 5:], cache=cache2)
    assert torch.allclose(inc, full, atol=1e-5)
    assert torch.allclose(torch.cat([a, b], dim=1), full, atol=1e-5)


def test_batch_with_0_1_and_3_images_matches_rows_alone():
    model = tiny_model()
    ids = model.ids
    block = ids.image_block(8)
    rows = [
        [ids.bos, 20, 21, 22, 23, ids.eos],                                   # text only
        [ids.bos] + block + [30, 31, ids.eos],                                # 1 image
        [ids.bos, 40] + block + [41] + block + [42, 43] + block + [ids.eos],   # 3 images
        [ids.bos, 50, 51],                                                    # short text, no image
    ]
    n_images = [0, 1, 3, 0]
    torch.manual_seed(1)
    images = torch.randn(sum(n_images), 3, 224, 224)
    length = max(map(len, rows))
    batch = torch.tensor([r + [ids.pad] * (length - len(r)) for r in rows])
    with torch.no_grad():
        together = model(batch, images)["logits"]
        start = 0
        for i, row in enumerate(rows):
            alone = model(torch.tensor([row]), images[start:start + n_images[i]] if n_images[i] else None)["logits"]
            start += n_images[i]
            assert torch.allclose(together[i, :len(row)], alone[0], atol=1e-5), i


def test_labels_never_target_image_markers_or_slots():
    model = tiny_model()
    ids = model.ids
    seq = torch.tensor([[ids.bos, 10] + ids.image_block(8) + [11, ids.eos, ids.pad]])
    labels = model.labels_for(seq)[0].tolist()
    assert labels[2] == IGNORE_INDEX and labels[3:11] == [IGNORE_INDEX] * 8
    assert labels[11] == ids.image_end and labels[12] == 11 and labels[-1] == IGNORE_INDEX
    out = model(seq, torch.randn(1, 3, 224, 224), labels=model.labels_for(seq))
    assert int(out["target_tokens"]) == 4   # 10, </image>, 11, </s>


def test_only_the_last_vision_block_trains():
    model = tiny_model().train()
    visual = model.vision.visual
    last = len(visual.transformer.resblocks) - 1
    for name, p in visual.named_parameters():
        expected = name.startswith(f"transformer.resblocks.{last}.") or name.startswith("ln_post")
        assert p.requires_grad == expected, name
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    ids = model.ids
    seq = torch.tensor([[ids.bos, 10] + ids.image_block(8) + [11, 12, ids.eos]])
    out = model(seq, torch.randn(1, 3, 224, 224), labels=model.labels_for(seq))
    out["loss"].backward()
    opt.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    vision_changed = {n for n in changed if n.startswith("vision.")}
    assert vision_changed and all(n.startswith((f"vision.visual.transformer.resblocks.{last}.",
                                                "vision.visual.ln_post")) for n in vision_changed)
    assert any(n.startswith("resampler.") for n in changed)
    assert any(n.startswith("decoder.layers.") for n in changed)


def test_greedy_generation_follows_argmax_and_beam_scores_at_least_as_well():
    model = tiny_model(3)
    ids = model.ids
    prompt = torch.tensor([[ids.bos, 10] + ids.image_block(8) + [11]])
    images = torch.randn(1, 3, 224, 224)
    greedy = model.generate(prompt, images, max_new_tokens=6)[0]
    seq = prompt
    with torch.no_grad():
        for _ in range(len(greedy)):
            logits = model(seq, images)["logits"][0, -1]
            logits[model.never_generated()] = float("-inf")
            nxt = logits.argmax()
            seq = torch.cat([seq, nxt.view(1, 1)], dim=1)
    assert seq[0, prompt.shape[1]:].tolist() == greedy

    def score(new):
        full = torch.cat([prompt, torch.tensor([new])], dim=1)
        with torch.no_grad():
            logp = torch.log_softmax(model(full, images)["logits"][0].float(), -1)
        return sum(logp[prompt.shape[1] - 1 + i, t].item() for i, t in enumerate(new))

    beam = model.generate(prompt, images, max_new_tokens=6, num_beams=4)[0]
    assert len(beam) == len(greedy) == 6
    assert score(beam) >= score(greedy) - 1e-4


def test_model_command_prints_the_counts():
    import subprocess
    import sys
    from conftest import ROOT
    out = subprocess.run([sys.executable, "-m", "pipeline.cli", "model", "--config", "kosmos-1"],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert "1,340,297,216" in out.stdout and "1,721,964,544" in out.stdout
    assert "apache_beam" not in out.stderr


def test_vision_tower_loads_a_local_checkpoint(tmp_path):
    """``pretrained=`` takes a local checkpoint path (the offline way to load CLIP)."""
    import open_clip
    from trainer.model.vision import TINY_VIT, CLIPVisionEncoder, register_tiny_config
    register_tiny_config()
    torch.manual_seed(5)
    clip = open_clip.create_model(TINY_VIT, pretrained=None)
    path = tmp_path / "tiny-clip.pt"
    torch.save(clip.state_dict(), path)
    enc = CLIPVisionEncoder(TINY_VIT, pretrained=str(path))
    for name, p in clip.visual.state_dict().items():
        assert torch.equal(enc.visual.state_dict()[name], p), name
    assert enc(torch.randn(2, 3, 224, 224)).shape == (2, 49, 64)


# ---------------------------------------------------------------------------- generation (issue 16)
def _eos_prone_model(seed=3, boost=6.0):
    """A tiny model whose </s> is likely enough that beams end at different lengths."""
    model = tiny_model(seed)
    with torch.no_grad():
        model.decoder.embed_tokens.weight[model.ids.eos] *= boost
    return model


def _prompts(ids):
    block = ids.image_block(8)
    return [[ids.bos, 10] + block + [11],                 # one image
            [ids.bos, 20, 21, 22, 23, 24, 25, 26, 27],    # longer, text only
            [ids.bos] + block + [30] + block + [31, 32],  # two images
            [ids.bos, 40]]                                # short


def _images_of(prompts, ids, images):
    counts = [p.count(ids.image_start) for p in prompts]
    out, start = [], 0
    for c in counts:
        out.append(images[start:start + c] if c else None)
        start += c
    return out


@pytest.mark.parametrize("beams", [1, 4])
def test_batched_generation_equals_one_at_a_time(beams):
    model = _eos_prone_model()
    ids = model.ids
    prompts = _prompts(ids)
    torch.manual_seed(7)
    images = torch.randn(3, 3, 224, 224)
    together = model.generate(prompts, images, max_new_tokens=8, num_beams=beams)
    alone = [model.generate([p], im, max_new_tokens=8, num_beams=beams)[0]
             for p, im in zip(prompts, _images_of(prompts, ids, images))]
    assert together == alone
    assert len({len(a) for a in alone}) > 1          # the rows really ended at different lengths
    banned = set(model.never_generated())
    assert not any(t in banned for a in together for t in a)


def test_left_padded_logits_equal_the_row_alone():
    model = tiny_model(2)
    ids = model.ids
    short, long_ = [ids.bos, 5, 6], [ids.bos, 7, 8, 9, 10, 11]
    with torch.no_grad():
        lp_batch, _, mask, shift, _ = model._start([short, long_], None)
        lp_alone, *_ = model._start([short], None)
    assert shift.tolist() == [3, 0] and mask[0].tolist() == [False] * 3 + [True] * 3
    assert torch.allclose(lp_batch[0], lp_alone[0], atol=1e-5)


def _reference_beam(model, prompt, images, max_new, k, lenpen=1.0):
    """Beam search the slow way (a full forward per hypothesis, no cache, one prompt),
    with fairseq's rules: 2k candidates, an end among the best k is finished, k live
    hypotheses kept, done at k finished, every live one ends at the length limit."""
    eos = model.ids.eos

    def logprobs(seq):
        with torch.no_grad():
            logits = model(torch.tensor([prompt + seq]), images)["logits"][0, -1].float()
        lp = torch.log_softmax(logits, -1)
        lp[model.never_generated()] = float("-inf")
        return lp

    live, finished = [(0.0, [])], []
    for step in range(max_new + 1):
        cands = []
        for score, seq in live:
            lp = logprobs(seq)
            if step == max_new:
                cands.append((score + max(float(lp[eos]), -1e4), seq + [eos]))
            else:
                cands += [(score + float(v), seq + [t]) for v, t in zip(*lp.topk(2 * k))]
        cands.sort(key=lambda c: -c[0])
        cands = cands[:2 * k]
        live = []
        for j, (s, seq) in enumerate(cands):
            if seq[-1] == eos:
                if j < k:
                    finished.append((s / len(seq) ** lenpen, seq[:-1] if step == max_new else seq))
            elif len(live) < k:
                live.append((s, seq))
        if len(finished) >= k or not live:
            break
    return max(finished, key=lambda f: f[0])[1]


def test_beam_search_equals_the_slow_reference_and_keeps_k_live_beams():
    model = _eos_prone_model(seed=5, boost=5.0)
    ids = model.ids
    torch.manual_seed(11)
    images = torch.randn(1, 3, 224, 224)
    prompt = [ids.bos, 12] + ids.image_block(8) + [13]
    for k in (2, 4):
        fast = model.generate([prompt], images, max_new_tokens=7, num_beams=k)[0]
        assert fast == _reference_beam(model, prompt, images, 7, k)


def test_score_is_the_log_likelihood_of_the_continuation():
    model = tiny_model(4)
    ids = model.ids
    ctx, cont = [ids.bos, 10, 11], [12, 13]
    with torch.no_grad():
        lp = torch.log_softmax(model(torch.tensor([ctx + cont]))["logits"][0].float(), -1)
    expected = float(lp[2, 12] + lp[3, 13])
    got = model.score([ctx, [ids.bos, 5]], [cont, [6, 7, 8]])
    assert got[0] == pytest.approx(expected, abs=1e-4)
    alone = model.score([[ids.bos, 5]], [[6, 7, 8]])
    assert got[1] == pytest.approx(alone[0], abs=1e-4)


def test_quick_gelu_follows_the_weights():
    """OpenAI's CLIP weights were trained with QuickGELU; open_clip's table says so per
    tag, and the tower is built with the activation of its weights."""
    import open_clip
    from open_clip.transformer import QuickGELU
    from trainer.model.vision import TINY_VIT, CLIPVisionEncoder, quick_gelu_for
    assert quick_gelu_for("ViT-L-14", "openai") is True
    assert quick_gelu_for("ViT-L-14", "laion2b_s32b_b82k") is False
    assert quick_gelu_for("ViT-L-14", "laion2b_s32b_b82k", override=True) is True
    assert quick_gelu_for("ViT-L-14", None) is False
    for quick in (True, False):
        enc = CLIPVisionEncoder(TINY_VIT, None, quick_gelu=quick)
        acts = {type(m) for m in enc.visual.modules() if isinstance(m, (QuickGELU, torch.nn.GELU))}
        assert acts == ({QuickGELU} if quick else {torch.nn.GELU})
    with torch.device("meta"):
        big = CLIPVisionEncoder("ViT-L-14", None, quick_gelu=quick_gelu_for("ViT-L-14", "openai"))
    assert any(isinstance(m, QuickGELU) for m in big.visual.modules())
    assert open_clip.get_pretrained_cfg("ViT-L-14", "openai").get("quick_gelu") is True


def test_score_with_precomputed_image_embeddings_equals_score_with_pixels():
    """Zero-shot classification encodes an image once for all its class names."""
    model = tiny_model(6)
    ids = model.ids
    torch.manual_seed(2)
    image = torch.randn(1, 3, 224, 224)
    ctx = [ids.bos] + ids.image_block(8) + [20, 21]
    conts = [[30], [31, 32], [33, 34, 35]]
    slow = model.score([ctx] * 3, conts, images=image.repeat(3, 1, 1, 1))
    with torch.no_grad():
        emb = model.encode_images(image)
    fast = model.score([ctx] * 3, conts, image_embeds=emb.repeat(3, 1, 1))
    assert fast == pytest.approx(slow, abs=1e-5)


def test_parallelize_applies_activation_checkpointing_without_changing_the_model():
    """Activation checkpointing is applied from outside the model (trainer/parallelize.py):
    the same loss and gradients, the same parameter names in a checkpoint, and
    generation (with a cache, no gradients) unchanged."""
    from trainer.checkpoint import ModelState
    from trainer.distributed import Dist
    from trainer.parallelize import parallelize

    def loss_and_grads(model):
        ids = model.ids
        seq = torch.tensor([[ids.bos, 10, 11] + ids.image_block(8) + [12, 13, ids.eos]])
        images = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
        out = model(seq, images, labels=model.labels_for(seq))
        out["loss"].backward()
        return float(out["loss"].detach()), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain = tiny_model().train()
    wrapped, scheme = parallelize(tiny_model().train(), Dist(), "auto", activation_checkpointing=True)
    assert scheme == "none" and type(wrapped.decoder.layers[0]).__name__ == "CheckpointWrapper"
    (l1, g1), (l2, g2) = loss_and_grads(plain), loss_and_grads(wrapped)
    assert l1 == pytest.approx(l2, rel=1e-6)
    assert set(g1) == {n.replace("._checkpoint_wrapped_module", "") for n in g2}
    for name, grad in g2.items():
        assert torch.allclose(g1[name.replace("._checkpoint_wrapped_module", "")], grad, atol=1e-6), name
    assert set(ModelState(wrapped).state_dict()) == set(ModelState(plain).state_dict())
    prompt = torch.tensor([[wrapped.ids.bos, 10, 11]])
    with torch.no_grad():
        assert plain.eval().generate(prompt, max_new_tokens=5) == wrapped.eval().generate(prompt, max_new_tokens=5)
