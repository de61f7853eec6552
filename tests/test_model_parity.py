"""Issue 27: the initialisation as torchscale's, the chunked loss equal to the
full-logits one, the padded vocabulary, the FLOP count and the weight-decay scope."""

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from contract.tokens import IGNORE_INDEX
from trainer.model.config import get_config
from trainer.model.decoder import DecoderConfig, MagnetoDecoder
from trainer.model.kosmos import KosmosModel, build_on_meta

# ------------------------------------------------------------------------------ initialisation
INIT = dict(vocab=1000, layers=4, dim=256, ffn=1024, heads=4)


def _torchscale_lm_decoder(seed):
    """torchscale 0.3.0's Decoder as its fairseq language model builds it: the
    embedding is fairseq's ``Embedding`` (N(0, dim^-0.5), padding row 1 zero) and the
    output projection is tied to it."""
    from torchscale.architecture.config import DecoderConfig as TSConfig
    from torchscale.architecture.decoder import Decoder
    torch.manual_seed(seed)
    c = INIT
    args = TSConfig(vocab_size=c["vocab"], decoder_layers=c["layers"], decoder_embed_dim=c["dim"],
                    decoder_ffn_embed_dim=c["ffn"], decoder_attention_heads=c["heads"], subln=True,
                    xpos_rel_pos=True, xpos_scale_base=512, dropout=0.0, share_decoder_input_output_embed=True)
    embed = torch.nn.Embedding(c["vocab"], c["dim"], padding_idx=1)
    torch.nn.init.normal_(embed.weight, mean=0.0, std=c["dim"] ** -0.5)
    with torch.no_grad():
        embed.weight[1].zero_()
    return Decoder(args, embed_tokens=embed)


def _ours(seed):
    torch.manual_seed(seed)
    c = INIT
    return MagnetoDecoder(DecoderConfig(vocab_size=c["vocab"], layers=c["layers"], dim=c["dim"],
                                        ffn_dim=c["ffn"], heads=c["heads"], dropout=0.0))


def _stat_mismatches(ours, ref):
    """Names whose mean or std differ by more than sampling allows (5 sigma), each
    tensor's first ``vocab`` rows for the embedding. Constant tensors must be equal."""
    vocab = INIT["vocab"]
    bad = []
    theirs = dict(ref.named_parameters())
    for name, p in ours.named_parameters():
        a, b = p.detach().double(), theirs[name].detach().double()
        if name == "embed_tokens.weight":
            a = a[:vocab]
        if a.shape != b.shape:
            bad.append((name, "shape", tuple(a.shape), tuple(b.shape)))
            continue
        n = a.numel()
        sd = float(b.std())
        if sd == 0.0:
            if not torch.equal(a, b):
                bad.append((name, "constant", float(a.mean()), float(b.mean())))
            continue
        mean_tol = 5 * sd * math.sqrt(2 / n)
        std_tol = 5 * sd * math.sqrt(1 / n)
        if abs(float(a.mean()) - float(b.mean())) > mean_tol or abs(float(a.std()) - sd) > std_tol:
            bad.append((name, "stats", round(float(a.std()), 5), round(sd, 5)))
    return bad


def test_initialisation_matches_torchscale_decoder_statistically():
    """No weight is copied: both models are drawn from their own initialisations (with
    different seeds), and every parameter's mean and std must agree within sampling
    error. torchscale 0.3.0 never calls MultiheadAttention.reset_parameters (its xavier
    init), so its projections keep PyTorch's default init before the Magneto scaling."""
    ours, ref = _ours(1), _torchscale_lm_decoder(2)
    assert {n for n, _ in ours.named_parameters()} == {n for n, _ in ref.named_parameters()}
    assert _stat_mismatches(ours, ref) == []
    # the padding rows beyond the vocabulary start at zero
    assert not ours.embed_tokens.weight[INIT["vocab"]:].any()


def test_the_initialisation_check_sees_an_xavier_attention_init():
    """The comparison above has the power to fail: torchscale's unused xavier
    reset (q/k/v gain 1/sqrt(2), out_proj gain 1, out_proj bias 0) is caught."""
    ours, ref = _ours(1), _torchscale_lm_decoder(2)
    gamma = math.sqrt(math.log(2 * INIT["layers"]))
    with torch.no_grad():
        for layer in ours.layers:
            a = layer.self_attn
            for proj in (a.q_proj, a.k_proj, a.v_proj):
                torch.nn.init.xavier_uniform_(proj.weight, gain=1 / math.sqrt(2))
            torch.nn.init.xavier_uniform_(a.out_proj.weight)
            a.out_proj.bias.zero_()
            a.v_proj.weight.mul_(gamma)
            a.out_proj.weight.mul_(gamma)
    bad = {name for name, *_ in _stat_mismatches(ours, ref)}
    for i in range(INIT["layers"]):
        assert {f"layers.{i}.self_attn.{p}.weight" for p in ("q_proj", "k_proj", "v_proj", "out_proj")} <= bad
        assert f"layers.{i}.self_attn.out_proj.bias" in bad


# ------------------------------------------------------------------------------ chunked loss
def _tiny(chunk=5, seed=0):
    torch.manual_seed(seed)
    cfg = dataclasses.replace(get_config("tiny"), loss_chunk_tokens=chunk)
    return KosmosModel(cfg).train()


def _batch(model):
    ids = model.ids
    block = ids.image_block(8)
    rows = [[ids.bos, 10, 11] + block + [12, 13, 14, ids.eos],
            [ids.bos, 20] + block + [21] + block + [22, ids.eos],
            [ids.bos, 30, 31, 32, ids.eos]]
    width = max(map(len, rows))
    seq = torch.tensor([r + [ids.pad] * (width - len(r)) for r in rows])
    images = torch.randn(3, 3, 224, 224, generator=torch.Generator().manual_seed(3))
    return seq, images, model.labels_for(seq)


def _old_loss(model, seq, images, labels):
    """The loss before issue 27: whole logits, sliced, upcast, one cross-entropy."""
    logits, _ = model.decoder(embeds=model.embed(seq, images))
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
                           labels[:, 1:].reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum")


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("chunk", [1, 5, 7, 4096])
def test_chunked_loss_equals_the_full_logits_loss_and_gradients(chunk):
    model = _tiny(chunk)
    seq, images, labels = _batch(model)
    want = _old_loss(model, seq, images, labels)
    want.backward()
    g_want = _grads(model)
    model.zero_grad(set_to_none=True)
    out = model(seq, images, labels=labels)
    out["loss_sum"].backward()
    g_got = _grads(model)
    out = {k: v.detach() for k, v in out.items()}
    want = want.detach()
    assert "logits" not in out
    assert out["loss_sum"].dtype == torch.float32
    with torch.no_grad():
        logits, _ = model.decoder(embeds=model.embed(seq, images))
    rows = [F.cross_entropy(logits[r, :-1].float(), labels[r, 1:], ignore_index=IGNORE_INDEX, reduction="sum")
            for r in range(seq.shape[0])]
    assert torch.allclose(out["loss_per_seq"], torch.stack(rows), rtol=1e-5)
    assert float(out["loss_sum"]) == pytest.approx(float(want), rel=1e-5)
    assert int(out["target_tokens"]) == int((labels[:, 1:] != IGNORE_INDEX).sum())
    assert float(out["loss"]) == pytest.approx(float(want) / int(out["target_tokens"]), rel=1e-5)
    assert set(g_got) == set(g_want)
    for name, g in g_want.items():      # fp32 sums in another order: within 1e-5 of the largest entry
        assert float((g_got[name] - g).abs().max()) <= 1e-5 * float(g.abs().max()) + 1e-9, name


def test_chunked_loss_under_bf16_autocast_matches_the_old_path():
    model = _tiny(6)
    seq, images, labels = _batch(model)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want = _old_loss(model, seq, images, labels)
        got = model(seq, images, labels=labels)["loss_sum"]
    assert got.dtype == torch.float32
    assert float(got.detach()) == pytest.approx(float(want.detach()), rel=1e-3)


def test_the_loss_keeps_no_whole_logits_for_the_backward_pass():
    """What autograd keeps from the forward for the backward pass: the old path keeps
    logit-sized tensors of every position; the chunked one none (each chunk's are
    recomputed in the backward pass)."""
    model = _tiny(4)
    seq, images, labels = _batch(model)
    widths = {model.cfg.decoder.vocab_size, model.cfg.decoder.padded_vocab_size}

    def logit_rows_saved(fn):
        rows = [0]

        def pack(t):
            if t.ndim and t.shape[-1] in widths:
                rows.append(t.numel() // t.shape[-1])
            return t
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            fn()
        return max(rows)
    assert logit_rows_saved(lambda: _old_loss(model, seq, images, labels)) >= seq.shape[0] * (seq.shape[1] - 1)
    assert logit_rows_saved(lambda: model(seq, images, labels=labels)["loss_sum"]) == 0


def test_forward_without_labels_returns_the_logits_of_the_real_ids():
    model = _tiny().eval()
    seq, images, _ = _batch(model)
    with torch.no_grad():
        logits = model(seq, images)["logits"]
    assert logits.shape == (*seq.shape, model.cfg.decoder.vocab_size)


# ------------------------------------------------------------------------------ padded vocabulary
def test_padding_rows_are_never_looked_up_generated_or_trained():
    model = _tiny()
    d = model.cfg.decoder
    assert (d.vocab_size, d.padded_vocab_size) == (519, 576)
    assert model.decoder.embed_tokens.weight.shape == (576, 64)
    assert model.ids.vocab_size == 519                     # the tokenizer's count is unchanged
    assert max(model.never_generated()) < d.vocab_size
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1)
    seq, images, labels = _batch(model)
    for _ in range(2):
        model(seq, images, labels=labels)["loss_sum"].backward()
        assert not model.decoder.embed_tokens.weight.grad[d.vocab_size:].any()
        opt.step()
        opt.zero_grad()
    assert not model.decoder.embed_tokens.weight[d.vocab_size:].any()
    out = model.generate([[model.ids.bos, 10, 11]], max_new_tokens=5)[0]
    assert all(t < d.vocab_size for t in out)


def test_vocab_multiple_one_pads_nothing():
    cfg = DecoderConfig(vocab_size=519, layers=1, dim=32, ffn_dim=64, heads=2, vocab_multiple=1)
    assert cfg.padded_vocab_size == 519
    with pytest.raises(ValueError, match="vocab_multiple"):
        _ = DecoderConfig(vocab_size=519, vocab_multiple=0).padded_vocab_size


def test_a_tiny_checkpoint_loads_back_through_dcp(tmp_path):
    """The padded rows are part of the checkpoint: the model's state goes through DCP
    and comes back into a fresh model (``ModelState``, as every checkpoint loads it)."""
    import torch.distributed.checkpoint as dcp
    from trainer import checkpoint as ckpt
    a, b = _tiny(seed=1).eval(), _tiny(seed=2).eval()
    dcp.save({"model": ckpt.ModelState(a)}, storage_writer=dcp.FileSystemWriter(str(tmp_path)))
    ckpt.load_model_weights(str(tmp_path), b)
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), name
    assert b.decoder.embed_tokens.weight.shape[0] == 576


# ------------------------------------------------------------------------------ FLOPs
def test_flops_follow_the_documented_formula():
    model = build_on_meta(get_config("kosmos-1"))
    d = model.cfg.decoder
    counts = model.parameter_counts()
    non_embedding = counts["decoder"] - d.padded_vocab_size * d.dim
    per_token = 6 * (non_embedding + d.padded_vocab_size * d.dim) + 12 * d.layers * d.dim * 2048
    assert model.decoder_flops_per_token(2048) == per_token
    assert per_token == pytest.approx(9.2497e9, rel=1e-4)
    # ViT-L/14 at 224 px: 257 tokens; 23 frozen blocks forward only, the last one and ln_post trained
    visual = model.vision.visual
    block = sum(p.numel() for p in visual.transformer.resblocks[0].parameters())
    t, w = 257, 1024
    pre = visual.conv1.weight.numel() + sum(p.numel() for p in visual.ln_pre.parameters())
    post = sum(p.numel() for p in visual.ln_post.parameters())
    vision = (2 * pre + 23 * (2 * block + 4 * w * t) + (6 * block + 12 * w * t) + 6 * post) * t
    r = model.resampler
    kv = sum(layer[0].to_kv.weight.numel() for layer in r.layers)
    rest = counts["resampler"] - kv - r.latents.numel()
    resampler = 6 * (rest * 64 + kv * (256 + 64)) + 12 * 6 * 1024 * 64 * (256 + 64)
    assert model.image_flops() == pytest.approx(vision + resampler, rel=1e-12)
    step = model.training_flops(tokens=10_000, images=7, seq_len=2048)
    assert step == pytest.approx(10_000 * per_token + 7 * (vision + resampler), rel=1e-12)
    assert model.training_flops(tokens=10_000, images=0, seq_len=2048) == pytest.approx(10_000 * per_token)


# ------------------------------------------------------------------------------ weight decay
def _groups(scope):
    from trainer.optim import param_groups
    model = _tiny()
    groups = param_groups(model, 0.01, scope)
    names = {id(p): n for n, p in model.named_parameters()}
    return model, [{names[id(p)] for p in g["params"]} for g in groups], [g["weight_decay"] for g in groups]


def test_weight_decay_all_decays_every_trainable_parameter():
    model, (decay, no_decay), rates = _groups("all")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert decay == trainable and not no_decay and rates == [0.01, 0.0]
    assert {"decoder.embed_tokens.weight", "resampler.latents", "decoder.layer_norm.weight",
            "decoder.layers.0.self_attn.q_proj.bias"} <= decay


def test_weight_decay_matrices_leaves_out_norms_biases_embeddings_latents():
    model, (decay, no_decay), _ = _groups("matrices")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert decay | no_decay == trainable and not decay & no_decay
    assert {"decoder.embed_tokens.weight", "resampler.latents", "decoder.layer_norm.weight",
            "decoder.layers.0.self_attn.q_proj.bias"} <= no_decay
    assert "decoder.layers.0.self_attn.q_proj.weight" in decay


def test_weight_decay_scope_is_a_validated_setting():
    from trainer.config import TrainConfig
    from trainer.optim import param_groups
    assert TrainConfig().optim.weight_decay_scope == "all"
    assert TrainConfig().override({"optim.weight_decay_scope": "matrices"}).optim.weight_decay_scope == "matrices"
    with pytest.raises(ValueError, match="optim.weight_decay_scope"):
        TrainConfig().override({"optim.weight_decay_scope": "norms"})
    with pytest.raises(ValueError, match="optim.weight_decay_scope"):
        param_groups(_tiny(), 0.01, "everything")
