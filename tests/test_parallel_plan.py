"""The parallel plan (issue 27): one process is a one-rank run of DDP, FSDP or HSDP;
only trainable parameters are sharded; a rank's share of the three sources goes into
as few micro-batches as its budget allows, sources mixed, the per-source budgets kept
exactly; and every layout trains the same run as one process."""

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from tests.conftest import ROOT, free_port
from trainer.config import TrainConfig

DIST = str(ROOT / "tests" / "dist_train.py")
N_TEXT, N_IMAGES = 5, 3          # sequences a step: an odd split over 2 ranks, micro-batches of 2


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)         # one process, no torchrun
    return env


def _one_process(parallel, out):
    proc = subprocess.run([sys.executable, DIST, "mixed", parallel, str(out), str(N_TEXT), str(N_IMAGES)],
                          env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(out.read_text())


def _two_ranks(parallel, out, *extra):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           DIST, "mixed", parallel, str(out), str(N_TEXT), str(N_IMAGES), *map(str, extra)]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(out.read_text())


def _same_run(a, b):
    assert len(a["steps"]) == len(b["steps"]) == 3
    for x, y in zip(a["steps"], b["steps"]):
        assert set(x) == set(y) == {"loss", "loss.text", "loss.interleaved", "target_tokens"}
        assert x["target_tokens"] == y["target_tokens"]
        for k in ("loss", "loss.text", "loss.interleaved"):
            assert x[k] == pytest.approx(y[k], rel=1e-5), k
    assert a["steps"][-1]["loss"] < a["steps"][0]["loss"]
    assert set(a["fingerprint"]) == set(b["fingerprint"])
    for k in a["fingerprint"]:
        assert a["fingerprint"][k] == pytest.approx(b["fingerprint"][k], rel=1e-4, abs=1e-4), k


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One process, no data parallelism: the run every other layout must reproduce."""
    return _one_process("none", tmp_path_factory.mktemp("ref") / "none.json")


# ---------------------------------------------------------------------------- one process, no torchrun
@pytest.mark.parametrize("parallel", ["ddp", "fsdp", "hsdp"])
def test_one_process_runs_ddp_fsdp_and_hsdp_without_torchrun(reference, tmp_path, parallel):
    """Before: FSDP without torchrun died in init_device_mesh ("environment variable RANK
    expected"). Now a one-rank process group; the run equals the unwrapped one."""
    got = _one_process(parallel, tmp_path / f"{parallel}.json")
    assert (got["world"], got["parallel"]) == (1, parallel)
    assert got["mesh"] == ({"ddp": None, "fsdp": [1], "hsdp": [1, 1]}[parallel])
    _same_run(reference, got)
    # a micro-batch holds sequences of both sources (the plan's layout, rank 0, step 0)
    assert any(len(set(mb)) == 2 for mb in got["layout"][0])


# ---------------------------------------------------------------------------- two ranks under torchrun
@pytest.mark.parametrize("parallel,shard,mesh", [("ddp", 0, None), ("fsdp", 0, [2]), ("hsdp", 1, [2, 1]),
                                                 ("hsdp", 2, [1, 2])])
def test_two_ranks_train_as_one_process(reference, tmp_path, parallel, shard, mesh):
    """2 ranks (gloo) with mixed-source micro-batches train exactly the one-process run:
    losses overall and per source, and the weights; HSDP on a 2x1 (replicate) and a 1x2
    (shard) mesh."""
    got = _two_ranks(parallel, tmp_path / "two.json", *([shard] if shard else []))
    assert (got["world"], got["parallel"], got["mesh"]) == (2, parallel, mesh)
    _same_run(reference, got)


# ---------------------------------------------------------------------------- the plan
def _paper_cfg(**over):
    cfg = {"data.text": ["t"], "data.pairs": ["p"], "data.interleaved": ["i"], "data.micro_batch_size": 8}
    cfg.update(over)
    return TrainConfig().override(cfg)


@pytest.mark.parametrize("world", [1, 2, 3, 8, 64, 256])
def test_mixed_micro_batches_keep_every_source_budget_exactly(world):
    """The paper's 244 / 244 / 98 sequences a step: every step reads exactly them over the
    ranks, each rank's micro-batches hold exactly its share of each source, every rank runs
    the same number of micro-batches, as few as micro_batch_size allows."""
    from trainer.data import StepPlan
    plan = StepPlan(_paper_cfg(), world)
    assert plan.sequences == {"text": 244, "pairs": 244, "interleaved": 98}
    k = len(plan.slots)
    assert k == math.ceil(plan.most / 8) and plan.most == sum(math.ceil(n / world) for n in (244, 244, 98))
    for step in range(2 * world + 3):
        for s, n in plan.sequences.items():
            assert sum(plan.rank_sequences(s, step, r) for r in range(world)) == n
        for r in range(world):
            mbs = [plan.micro_batch(step, r, j) for j in range(k)]
            assert all(sum(c for _, c in mb) <= cap <= 8 for mb, cap in zip(mbs, plan.slots))
            for s in plan.sequences:
                assert sum(c for mb in mbs for src, c in mb if src == s) == plan.rank_sequences(s, step, r)
            order = [src for mb in mbs for src, c in mb for _ in range(c)]
            assert order == sorted(order, key=list(plan.sequences).index)     # source after source
            sizes = [sum(c for _, c in mb) for mb in mbs]
            assert max(sizes) - min(sizes) <= 1                                 # nearly equal
        assert plan.step_tokens(step) == {s: n * 2048 for s, n in plan.sequences.items()}


def test_the_paper_batch_takes_one_micro_batch_a_rank_on_256_gpus():
    """Before, every micro-batch held one source: 3 micro-batches of one sequence a rank
    on 256 GPUs, 3 on 64. Now 1 and 2."""
    from trainer.data import StepPlan
    assert [len(StepPlan(_paper_cfg(), w).slots) for w in (8, 64, 256)] == [10, 2, 1]
    plan = StepPlan(_paper_cfg(), 256)
    assert plan.micro_batch(0, 0, 0) == [("text", 1), ("pairs", 1), ("interleaved", 1)]


# ---------------------------------------------------------------------------- the kosmos-1 plan
@pytest.fixture
def one_rank_group():
    """Tests that shard in this process leave no process group behind."""
    import torch.distributed as dist
    yield
    if dist.is_initialized():
        dist.destroy_process_group()


def test_kosmos_1_shards_only_what_trains(one_rank_group):
    """The real kosmos-1 model (meta device) under the run config's FSDP + bf16: the 24
    decoder layers and CLIP's trainable last block are FSDP units, every trainable
    parameter is sharded, and CLIP's 291M frozen parameters are plain bf16 tensors that
    belong to no unit (before: every CLIP block was a unit, gathered each micro-batch)."""
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.tensor import DTensor

    from trainer.distributed import Dist
    from trainer.model.config import kosmos_1
    from trainer.model.kosmos import build_on_meta
    from trainer.parallelize import parallelize
    model, parallel = parallelize(build_on_meta(kosmos_1()), Dist(), "fsdp", bf16=True,
                                  activation_checkpointing=True)
    assert parallel == "fsdp"
    units = {n for n, m in model.named_modules() if isinstance(m, FSDPModule)}
    assert units == {""} | {f"decoder.layers.{i}" for i in range(24)} | {"vision.visual.transformer.resblocks.23"}
    frozen = [p for p in model.parameters() if not p.requires_grad]
    assert sum(p.numel() for p in frozen) == 291_367_936
    assert all(type(p) is torch.nn.Parameter and p.dtype == torch.bfloat16 for p in frozen)
    assert all(isinstance(p, DTensor) for p in model.parameters() if p.requires_grad)


def _mid_model(tmp_path, monkeypatch):
    """A mid-size model with kosmos-1's plan: a 4-block CLIP tower, frozen but its last
    block, and a 3-layer decoder (registered for this test only)."""
    import open_clip

    from contract.tokens import vocab_size_for
    from trainer.model import config as model_config
    from trainer.model.decoder import DecoderConfig
    vit = tmp_path / "kosmos-mid-vit.json"
    vit.write_text(json.dumps({"embed_dim": 64, "vision_cfg": {"image_size": 224, "layers": 4, "width": 128,
                                                                "head_width": 32, "patch_size": 32},
                               "text_cfg": {"context_length": 16, "vocab_size": 512, "width": 32, "heads": 2,
                                            "layers": 1}}))
    open_clip.add_model_config(str(vit))

    def mid():
        return model_config.KosmosConfig(
            "mid", DecoderConfig(vocab_size=vocab_size_for(512), layers=3, dim=128, ffn_dim=512, heads=4,
                                 max_seq_len=256),
            vision_model="kosmos-mid-vit", num_image_tokens=8, resampler_heads=2, resampler_dim_head=32,
            resampler_ff_mult=2)
    monkeypatch.setitem(model_config.CONFIGS, "mid", mid)


def test_the_kosmos_1_run_config_trains_two_steps_in_one_process(tmp_path, monkeypatch, one_rank_group):
    """trainer/configs/pretrain-kosmos-1.json (FSDP, bf16, activation checkpointing,
    micro-batches of 8, the 5:5:2 source shares) with a mid-size model of the same plan,
    one process on the CPU: two steps of mixed-source micro-batches from the StepPlan, a
    loss per source, the frozen CLIP layers untouched and outside FSDP, the rest trained;
    and the host waits for the device once a step."""
    from torch.distributed.tensor import DTensor

    from contract.tokens import IGNORE_INDEX, SpecialIds
    from trainer.data import StepPlan, collate
    from trainer.train import Trainer
    _mid_model(tmp_path, monkeypatch)
    cfg = TrainConfig.load(str(ROOT / "trainer" / "configs" / "pretrain-kosmos-1.json"))
    seq = 128
    cfg = cfg.override({"model.config": "mid", "model.vision_pretrained": None, "model.vision_quick_gelu": False,
                        "data.seq_len": seq, "data.text_tokens": 5 * seq, "data.pairs_tokens": 5 * seq,
                        "data.interleaved_tokens": 2 * seq, "optim.warmup_steps": 0, "optim.lr": 1e-3,
                        "run.output": str(tmp_path / "run"), "run.tokenizer": None})
    assert (cfg.run.parallel, cfg.run.precision, cfg.model.activation_checkpointing, cfg.data.micro_batch_size) \
        == ("fsdp", "bf16", True, 8)
    ids = SpecialIds(512)
    trainer = Trainer(cfg, vocab_size=ids.vocab_size)
    assert trainer.parallel == "fsdp" and trainer.bf16
    frozen = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if not p.requires_grad}
    trained = {n: p.full_tensor().detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert frozen and all(isinstance(p, DTensor) for p in trainer.model.parameters() if p.requires_grad)
    plan = StepPlan(cfg, 1)
    assert len(plan.slots) == 2                      # 12 sequences in micro-batches of 8: 6 + 6

    g = torch.Generator().manual_seed(7)
    block = ids.image_block(trainer.core.cfg.num_image_tokens)

    def row(source):
        toks = torch.randint(4, 4 + 512, (seq,), generator=g).tolist()
        images = []
        if source != "text":
            toks[3:3 + len(block)] = block
            images.append(torch.randn(3, 224, 224, generator=g))
        labels = [t if t not in (ids.image_start, ids.image_slot) else IGNORE_INDEX for t in toks]
        return {"input_ids": toks, "labels": labels, "images": images}

    calls = {"cpu": 0, "item": 0}
    own = tuple(os.path.join("trainer", f) for f in ("train.py", "train_metrics.py"))     # the step's own code
    real_cpu, real_item = torch.Tensor.cpu, torch.Tensor.item

    def counting(name, real):
        def f(self, *a, **k):
            if sys._getframe(1).f_code.co_filename.endswith(own):
                calls[name] += 1         # the trainer's own waits (not the CPU optimizer's step counters)
            return real(self, *a, **k)
        return f
    history = []
    for step in range(2):
        mbs = []
        for j in range(len(plan.slots)):
            names = [s for s, n in plan.micro_batch(step, 0, j) for _ in range(n)]
            mbs.append(collate([row(s) for s in names], ids.pad, names))
        assert any(len(set(mb["sources"])) > 1 for mb in mbs)
        calls.update(cpu=0, item=0)
        monkeypatch.setattr(torch.Tensor, "cpu", counting("cpu", real_cpu))
        monkeypatch.setattr(torch.Tensor, "item", counting("item", real_item))
        m = trainer.train_step(mbs).as_dict()
        monkeypatch.setattr(torch.Tensor, "cpu", real_cpu)
        monkeypatch.setattr(torch.Tensor, "item", real_item)
        assert calls == {"cpu": 1, "item": 0}       # before: one .cpu() a micro-batch and one more, one .item()
        history.append(m)
    for m in history:
        assert all(math.isfinite(m[k]) for k in ("loss", "loss.text", "loss.pairs", "loss.interleaved"))
        assert m["tokens"] == 12 * seq
    assert history[1]["loss"] < history[0]["loss"]
    for n, p in trainer.model.named_parameters():
        if n in frozen:
            assert type(p) is torch.nn.Parameter and p.dtype == torch.bfloat16
            assert torch.equal(p.detach(), frozen[n]), n
    assert all(not torch.equal(p.full_tensor(), trained[n]) for n, p in trainer.model.named_parameters()
               if p.requires_grad and n.startswith("decoder.layers."))
