"""The Kosmos model: sizes, parity with torchscale, caching, batching, freezing."""

import math

import pytest
import torch

from trainer.model.config import get_config
from trainer.model.decoder import DecoderConfig, MagnetoDecoder
from trainer.model.kosmos import KosmosModel, build_on_meta
from trainer.model.xpos import XPos
from trainer.tokens import IGNORE_INDEX


def test_kosmos_1_sizes_on_the_meta_device():
    counts = build_on_meta(get_config("kosmos-1")).parameter_counts()
    assert counts["decoder"] == 1_340_180_480      # "about 1.3B" (tied input/output embeddings)
    assert counts["vision"] == 303_966_208         # CLIP ViT-L/14 visual tower
    assert counts["resampler"] == 14_755_840
    assert counts["total"] == 1_658_902_528        # "about 1.6B"
    cfg = get_config("kosmos-1").decoder
    assert (cfg.layers, cfg.dim, cfg.ffn_dim, cfg.heads, cfg.vocab_size, cfg.max_seq_len) == \
        (24, 2048, 8192, 32, 64007, 2048)


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
    torch.manual_seed(0)
    ref = torchscale_decoder(300).eval()
    ours = MagnetoDecoder(DecoderConfig(vocab_size=300, layers=2, dim=64, ffn_dim=256, heads=4, dropout=0.0)).eval()
    state = {k: v for k, v in ref.state_dict().items() if "xpos" not in k}
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
            nxt = model(seq, images)["logits"][0, -1].argmax()
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
    assert "1,340,180,480" in out.stdout and "1,658,902,528" in out.stdout
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
