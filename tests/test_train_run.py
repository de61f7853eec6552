"""A training run's life around its checkpoints: instruction tuning from the demo's
tiny configs takes the pretrained model's settings, a resume with another model or
tokenizer is refused (never called damaged), checkpoints are written asynchronously
and the best one is named, not copied. Small text datasets made here; no curation run."""

import dataclasses
import json
import subprocess
import sys
import threading

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import ROOT
from trainer.config import DataSection, ModelSection, RunSection, TrainConfig

INSTRUCTIONS = ROOT / "data" / "sample" / "instructions" / "self-instruct-seed-tasks.jsonl"
CONFIGS = ROOT / "trainer" / "configs"


def _texts():
    """Paragraphs of plain English: the seed tasks' instructions and outputs."""
    out = []
    for line in INSTRUCTIONS.read_text(encoding="utf-8").splitlines():
        task = json.loads(line)
        out.append(" ".join([task["instruction"]] + [i["output"] for i in task["instances"]]))
    return out


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """Two text datasets (train, held out), and three tokenizers: ``tok`` and ``same``
    (another file with as many pieces) and ``other`` (fewer pieces)."""
    from contract.schema import TEXT_SCHEMA
    from trainer.tokenizer import train_tokenizer
    base = tmp_path_factory.mktemp("demo")
    texts = _texts()
    rows = [{"doc_id": f"d{i}", "url": f"https://example.org/{i}", "capture_date": None, "title": None,
             "text": t, "source_file": None, "source_offset": None, "scores": None} for i, t in enumerate(texts)]
    for name, part in (("text", rows[:150]), ("val_text", rows[150:])):
        (base / name).mkdir()
        pq.write_table(pa.Table.from_pylist(part, schema=TEXT_SCHEMA), base / name / "part-0.parquet",
                       row_group_size=25)
    a = train_tokenizer(iter(texts), str(base / "tok"), 500, character_coverage=0.995, threads=1)
    b = train_tokenizer(iter(texts[::-1]), str(base / "same"), 500, model_type="bpe", character_coverage=0.995,
                        threads=1)
    c = train_tokenizer(iter(texts), str(base / "other"), 400, character_coverage=0.995, threads=1)
    assert a.num_pieces == b.num_pieces != c.num_pieces
    assert (base / "tok.model").read_bytes() != (base / "same.model").read_bytes()
    return {"base": base, "text": str(base / "text"), "val_text": str(base / "val_text"),
            "tok": str(base / "tok.model"), "same": str(base / "same.model"), "other": str(base / "other.model")}


def config(demo, name, out, **over):
    """One of trainer/configs/*.json as the demo runs it, on the datasets made here."""
    data = {"data.text": [demo["text"]], "data.pairs": [], "data.interleaved": [], "data.text_tokens": 256,
            "data.seq_len": 128, "data.micro_batch_size": 2, "data.num_workers": 0, "run.output": str(out),
            "run.tokenizer": demo["tok"], "run.tensorboard": False, "run.progress_bar": False}
    if name.startswith("instruct"):
        data.update({"data.instructions": [str(INSTRUCTIONS)], "data.instructions_tokens": 256})
    data.update(over)
    return TrainConfig.load(str(CONFIGS / f"{name}.json")).override(data)


@pytest.fixture(scope="module")
def pretrained(demo, tmp_path_factory):
    """The demo's pretraining config for 2 steps: CHECKPOINTS/step-00000002."""
    from trainer.train import run_training
    out = tmp_path_factory.mktemp("pretrain")
    run_training(config(demo, "pretrain-tiny", out, **{"run.max_steps": 2, "run.save_every": 2}))
    return out / "checkpoints" / "step-00000002"


def _recorded(step_dir):
    return json.loads((step_dir / "config.json").read_text())


# ------------------------------------------------------------------ fine-tuning inherits the model
def test_instruction_tuning_keeps_the_pretrained_model_and_activation(demo, pretrained, tmp_path):
    from trainer.inference import load_for_inference
    from trainer.train import run_training
    pre = _recorded(pretrained)["model"]
    assert pre["config"] == "tiny" and pre["vision_quick_gelu"] is True      # pretrain-tiny.json sets it
    hist = run_training(config(demo, "instruct-tiny", tmp_path / "inst",
                               **{"run.init": str(pretrained), "run.max_steps": 2, "run.save_every": 2}))
    assert "loss.instructions" in hist[-1]
    tuned = tmp_path / "inst" / "checkpoints" / "step-00000002"
    model = _recorded(tuned)["model"]
    for name in ("config", "vision_pretrained", "vision_quick_gelu", "dropout"):
        assert model[name] == pre[name], name
    loaded, _, _ = load_for_inference(str(tuned))
    assert loaded.vision.quick_gelu is True


def test_a_model_setting_that_contradicts_the_init_checkpoint_is_refused(demo, pretrained, tmp_path):
    from trainer.checkpoint import CheckpointMismatchError
    from trainer.build import resolve_model
    from trainer.train import run_training
    cfg = config(demo, "instruct-tiny", tmp_path / "inst", **{"run.init": str(pretrained), "run.max_steps": 1,
                                                              "model.vision_quick_gelu": False})
    with pytest.raises(CheckpointMismatchError) as err:
        run_training(cfg)
    msg = str(err.value)
    assert "model.vision_quick_gelu" in msg and "False" in msg and "True" in msg and str(pretrained) in msg
    assert not (tmp_path / "inst" / "checkpoints").exists()
    with pytest.raises(CheckpointMismatchError, match=r"model.config is 'kosmos-1'.*'tiny'"):
        resolve_model(cfg.override({"model.vision_quick_gelu": None, "model.config": "kosmos-1"}))
    # the same value said again, or a dropout of its own, is no contradiction
    same = resolve_model(cfg.override({"model.vision_quick_gelu": True, "model.config": "tiny", "model.dropout": 0.2}))
    assert same.model.vision_quick_gelu is True and same.model.dropout == 0.2


def test_the_instruct_stage_needs_a_checkpoint_and_instruction_data(demo, pretrained, tmp_path):
    from trainer.train import run_training
    with pytest.raises(ValueError, match="run.stage=instruct starts from a pretrained checkpoint"):
        run_training(config(demo, "instruct-tiny", tmp_path / "a", **{"run.init": None, "run.max_steps": 1}))
    with pytest.raises(ValueError, match="run.stage=instruct needs instruction data"):
        run_training(config(demo, "instruct-tiny", tmp_path / "b", **{"run.init": str(pretrained),
                                                                      "data.instructions_tokens": 0,
                                                                      "run.max_steps": 1}))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_show_plan_prints_the_passes_over_each_instruction_set(demo, pretrained):
    from trainer.data import instruction_rows
    examples = sum(len(instruction_rows(json.loads(x))) for x in INSTRUCTIONS.read_text().splitlines() if x.strip())
    out = subprocess.run([sys.executable, "-m", "pipeline.cli", "train",
                          "--config", str(CONFIGS / "instruct-tiny.json"),
                          "--show_plan", "1,8", "--tokenizer", demo["tok"], "--init", str(pretrained),
                          "--set", "data.seq_len=128", "--set", "data.instructions_tokens=512",
                          "--set", "data.interleaved_tokens=256", "--set", "optim.steps=40"],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert f"{INSTRUCTIONS.relative_to(ROOT)}: {examples:,d} examples" in text
    # 512 instruction tokens a step are 4 sequences of 128, beside 256 tokens of interleaved documents
    assert "per step: 512 instruction tokens (4 sequences) and 256 tokens of pretraining data: " \
           "pretraining data is 33.3% of a step" in text
    line = next(x for x in text.splitlines() if x.startswith("over 40 steps"))
    pass_sequences = int(line.split("(")[1].split(" sequences a pass")[0].replace(",", ""))
    assert f"{4 * 40 / pass_sequences:.2f} passes over each set" in line


# ------------------------------------------------------------------ resume with another model or tokenizer
@pytest.fixture(scope="module")
def stopped(demo, tmp_path_factory):
    """A pretraining run stopped after step 2 (checkpoint step-00000002)."""
    from trainer.train import run_training
    out = tmp_path_factory.mktemp("stopped")
    run_training(config(demo, "pretrain-tiny", out, **{"run.max_steps": 2, "run.save_every": 2}))
    return out


def test_resume_with_another_vocabulary_is_refused_and_the_checkpoint_not_called_damaged(demo, stopped, capfd):
    from trainer.train import run_training
    cfg = config(demo, "pretrain-tiny", stopped, **{"run.max_steps": 4, "run.tokenizer": demo["other"]})
    with pytest.raises(ValueError) as err:         # before: RuntimeError "every checkpoint ... is damaged"
        run_training(cfg, resume="auto")
    assert type(err.value).__name__ == "CheckpointMismatchError"
    msg = str(err.value)
    from trainer.tokenizer import Tokenizer
    ours, theirs = Tokenizer(demo["tok"]).vocab_size, Tokenizer(demo["other"]).vocab_size
    assert "not damaged" in msg and f"decoder.vocab_size: checkpoint {ours}, this run {theirs}" in msg
    assert demo["tok"] in msg and demo["other"] in msg
    assert "damaged (" not in capfd.readouterr().err
    assert (stopped / "checkpoints" / "step-00000002" / ".metadata").exists()


def test_resume_with_another_tokenizer_of_the_same_size_is_refused(demo, stopped):
    from trainer.train import run_training
    cfg = config(demo, "pretrain-tiny", stopped, **{"run.max_steps": 4, "run.tokenizer": demo["same"]})
    with pytest.raises(ValueError, match="tokenizer: the checkpoint's is .*tok.model .*same.model"):  # before: resumed
        run_training(cfg, resume="auto")
    with pytest.raises(ValueError, match="model.vision_quick_gelu: checkpoint True, this run False"):
        run_training(config(demo, "pretrain-tiny", stopped, **{"run.max_steps": 4, "model.vision_quick_gelu": False}),
                     resume=str(stopped / "checkpoints" / "step-00000002"))
    meta = json.loads((stopped / "checkpoints" / "step-00000002" / "meta.json").read_text())
    from trainer.tokenizer import tokenizer_digest
    assert meta["tokenizer"]["sha256"] == tokenizer_digest(demo["tok"])


# ------------------------------------------------------------------ asynchronous saves, the best one
def test_the_complete_marker_waits_for_the_async_write(demo, tmp_path, monkeypatch):
    """The background write is held until released: meanwhile the checkpoint is not
    complete, and the weights changed after the save are not what it holds."""
    import torch
    from trainer import checkpoint as ckpt
    from trainer.distributed import Dist
    from trainer.train import Trainer
    t = Trainer(config(demo, "pretrain-tiny", tmp_path / "run"))
    sharded = {"model": ckpt.ModelState(t.model), "optim": ckpt.OptimizerState(t.model, t.optimizer)}
    per_rank = {"train": t, "rng": ckpt.RngState()}
    release, started = threading.Event(), []

    class HeldWriter(ckpt.dcp.FileSystemWriter):
        def write_data(self, plan, planner):      # runs in DCP's background thread
            started.append(threading.current_thread() is not threading.main_thread())
            assert release.wait(60)
            return super().write_data(plan, planner)
    monkeypatch.setattr(ckpt, "_writer", lambda path: HeldWriter(path))
    root = str(tmp_path / "ckpt")
    weights = t.core.decoder.embed_tokens.weight
    before = weights.detach().clone()
    final = ckpt.save(root, 7, sharded, per_rank, Dist(), 2, "{}", "{}")
    with torch.no_grad():
        weights.add_(1.0)                          # training goes on while the checkpoint is written
    assert ckpt.complete_checkpoints(root) == [] and not (tmp_path / "ckpt" / "latest").exists()
    assert not (tmp_path / "ckpt" / "step-00000007" / "complete").exists()
    release.set()
    assert ckpt.wait_for_saves() == final and started == [True]
    assert ckpt.complete_checkpoints(root) == [final]
    assert (tmp_path / "ckpt" / "step-00000007" / "complete").exists()
    assert (tmp_path / "ckpt" / "latest").read_text() == "step-00000007"
    ckpt.load_model_weights(final, t.core)
    assert torch.equal(t.core.decoder.embed_tokens.weight, before)


def test_best_is_named_not_copied_and_kept_from_pruning(demo, tmp_path, monkeypatch):
    from trainer import checkpoint as ckpt
    from trainer.inference import load_for_inference, resolve_checkpoint
    from trainer.train import run_training
    started = []
    real = ckpt.dcp.async_save
    monkeypatch.setattr(ckpt.dcp, "async_save", lambda *a, **kw: started.append(1) or real(*a, **kw))
    cfg = config(demo, "pretrain-tiny", tmp_path / "run", **{
        "data.val_text": [demo["val_text"]], "run.eval_every": 1, "run.eval_sequences": 4, "run.max_steps": 6,
        "run.save_every": 3, "run.keep_last": 1, "optim.lr": 3e-2})
    run_training(cfg)
    root = tmp_path / "run" / "checkpoints"
    vals = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    vals = [m for m in vals if "val_loss" in m]
    best_step = min(vals, key=lambda m: m["val_loss"])["step"]
    best = json.loads((root / "best.json").read_text())
    assert best["step"] == best_step and best["checkpoint"] == f"step-{best_step:08d}"
    assert (root / "best").is_file() and (root / "best").read_text() == best["checkpoint"]
    kept = sorted(p.name for p in root.iterdir() if p.is_dir())
    assert kept == sorted({f"step-{best_step:08d}", "step-00000006"})       # keep_last 1, and the best
    improved = sum(1 for m in vals if m.get("best"))
    saves = len(set(range(3, 7, 3)) | {m["step"] for m in vals if m.get("best")})
    assert improved >= 1 and len(started) == saves                          # every save went through async_save
    assert resolve_checkpoint(str(root / "best")) == str(root / best["checkpoint"])
    model, _, _ = load_for_inference(str(root / "best"))
    assert model.vision.quick_gelu is True


# ------------------------------------------------------------------ small ones
def test_an_empty_or_foreign_tokenizer_file_is_named(tmp_path):
    from trainer.tokenizer import Tokenizer
    empty, junk = tmp_path / "empty.model", tmp_path / "junk.model"
    empty.write_bytes(b"")
    junk.write_bytes(b"this is not a sentencepiece model")
    with pytest.raises(ValueError, match=f"{empty}: empty file"):
        Tokenizer(str(empty))
    with pytest.raises(ValueError, match=f"{junk}: not a SentencePiece model"):
        Tokenizer(str(junk))


def test_config_fields_carry_real_types():
    """What a --set type check reads: the dataclass fields' types, not strings."""
    types = {f.name: f.type for s in (ModelSection, DataSection, RunSection) for f in dataclasses.fields(s)}
    assert types["allow_incomplete_runs"] is bool and types["seq_len"] is int and types["stage"] is str
    assert all(not isinstance(t, str) for t in types.values())


def test_resume_from_an_async_checkpoint_is_exact(demo, tmp_path):
    """6 steps in one go == 3, stop, resume, 3 more: the state written in the background
    is the state of the step it was taken at (training went on while it was written)."""
    from trainer.train import run_training
    over = {"model.dropout": 0.1, "run.save_every": 1}
    a = run_training(config(demo, "pretrain-tiny", tmp_path / "a", **over, **{"run.max_steps": 6}))
    run_training(config(demo, "pretrain-tiny", tmp_path / "b", **over, **{"run.max_steps": 3}))
    b = run_training(config(demo, "pretrain-tiny", tmp_path / "b", **over, **{"run.max_steps": 6}),
                     resume=str(tmp_path / "b" / "checkpoints" / "step-00000002"))
    assert [m["step"] for m in b] == [3, 4, 5, 6]
    assert [m["loss"] for m in b] == [m["loss"] for m in a[2:]]
    assert sorted(p.name for p in (tmp_path / "b" / "checkpoints").iterdir()) == [
        "latest", "step-00000005", "step-00000006"]                            # keep_last 2
