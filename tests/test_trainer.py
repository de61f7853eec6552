"""The trainer on shards made by `kosmos curate` from ../shared/data."""

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from tests.conftest import ROOT
from trainer.config import TrainConfig
from contract.tokens import IGNORE_INDEX

INSTRUCTIONS = ROOT / "data" / "sample" / "instructions" / "self-instruct-seed-tasks.jsonl"


def documents_per_image(doc):
    """A kept document cut at its images: one document per image, with the text around
    it (more, smaller rows to spread over readers than the shared archives keep whole)."""
    out, items, images = [], [], []
    for item in doc["items"]:
        if item["type"] == "image" and images:
            out.append((items, images))
            items, images = [], []
        if item["type"] == "image":
            items.append({"type": "image", "text": None, "image": 0})
            images.append(doc["images"][item["image"]])
        else:
            items.append(item)
    if images:
        out.append((items, images))
    return [dict(doc, doc_id=f"{doc['doc_id']}-{k}", items=it, images=im, num_images=len(im))
            for k, (it, im) in enumerate(out)]


def caption_of(doc, image_index):
    """The image's alt text, else the first words of the paragraph after it."""
    im = doc["images"][image_index]
    if im["alt"]:
        return im["alt"]
    items = doc["items"]
    at = next(i for i, it in enumerate(items) if it["type"] == "image" and it["image"] == image_index)
    after = next((it["text"] for it in items[at + 1:] if it["type"] == "text"), "")
    return " ".join(after.split()[:16])


def write_dataset(directory, rows, schema, name, shards=2):
    """Rows as a dataset with its manifest, one row per row group (several units)."""
    from contract.manifest import MANIFEST, build_manifest, manifest_bytes, shard_entry, shard_name
    directory.mkdir()
    entries = []
    for n in range(shards):
        chunk = rows[n::shards]
        buf = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(chunk, schema=schema), buf, row_group_size=1)
        data = buf.getvalue()
        (directory / shard_name(n, shards)).write_bytes(data)
        entries.append(shard_entry(shard_name(n, shards), data, len(chunk),
                                   sum(r.get("num_images", 0) for r in chunk)))
    (directory / MANIFEST).write_bytes(manifest_bytes(build_manifest(name, entries)))
    return str(directory)


@pytest.fixture(scope="module")
def corpus(shared_run, tmp_path_factory):
    """The curated documents of ../shared/data cut at their images, with a text and a
    pair dataset made from them (in the shared schemas), and a tokenizer learned from
    all of it. ``run``: the curation run itself."""
    from contract.schema import DOCUMENT_SCHEMA, PAIR_SCHEMA, TEXT_SCHEMA, document_text
    from trainer.shards import iter_documents
    from trainer.tokenizer import dataset_texts, train_tokenizer

    run, _ = shared_run
    kept = list(iter_documents(str(Path(run) / "documents")))
    assert len(kept) >= 2 and sum(d["num_images"] for d in kept) >= 5
    base = tmp_path_factory.mktemp("corpus")
    docs = [part for d in kept for part in documents_per_image(d)]
    text_rows = [{"doc_id": d["doc_id"], "url": d["url"], "capture_date": d["capture_date"], "title": d["title"],
                  "text": document_text(d), "source_file": d["source_file"], "source_offset": d["source_offset"],
                  "scores": d["scores"]} for d in docs]
    pair_rows = [{"pair_id": f"{d['doc_id']}-{i}", "caption": caption_of(d, i), "caption_source": "alt",
                  "image": im, "page_url": d["url"], "doc_id": d["doc_id"], "capture_date": d["capture_date"],
                  "language_score": 0.9}
                 for d in kept for i, im in enumerate(d["images"])]
    assert len(pair_rows) >= 3 and all(p["caption"] for p in pair_rows)
    interleaved = write_dataset(base / "documents", docs, DOCUMENT_SCHEMA, "interleaved_document")
    text = write_dataset(base / "text", text_rows, TEXT_SCHEMA, "text_document")
    pairs = write_dataset(base / "pairs", pair_rows, PAIR_SCHEMA, "image_caption_pair")
    tok = train_tokenizer(dataset_texts([interleaved, str(INSTRUCTIONS)]), str(base / "tok"), 400, threads=1)
    return {"interleaved": interleaved, "text": text, "pairs": pairs, "run": str(run),
            "tokenizer": str(base / "tok.model"), "tok": tok, "docs": docs, "base": base}


def tiny_cfg(corpus, out, **over):
    data = {"model.config": "tiny", "data.seq_len": 128, "data.micro_batch_size": 2, "data.num_workers": 0,
            "data.interleaved": [corpus["interleaved"]], "data.interleaved_tokens": 256,
            "data.text_tokens": 0, "data.pairs_tokens": 0, "optim.lr": 3e-3, "optim.warmup_steps": 3,
            "optim.steps": 30, "run.output": str(out), "run.tokenizer": corpus["tokenizer"],
            "run.save_every": 1000, "run.tensorboard": False, "run.progress_bar": False}
    data.update(over)
    return TrainConfig().override(data)


# ---------------------------------------------------------------------------- tokenizer
def test_tokenizer_layout_and_no_special_ids_from_text(corpus):
    tok = corpus["tok"]
    ids = tok.ids
    assert tok.vocab_size == tok.num_pieces + 7
    text = "The <image> tag and </s> in a page are text, not markers."
    enc = tok.encode(text)
    assert all(4 <= i < ids.image_start or i == ids.unk for i in enc)
    assert ids.image_start not in enc and ids.eos not in enc
    assert tok.decode(enc) == text
    assert json.loads((corpus["base"] / "tok.json").read_text())["special_ids"]["<image_slot>"] == ids.image_slot


# ---------------------------------------------------------------------------- data
def _stream(corpus, kind, reader=0, readers=1, seq_len=128):
    from trainer.data import Chunker, SourceStream, list_units
    chunker = Chunker(kind, corpus["tok"], 8, seq_len, 224)
    units = list_units([corpus[kind]])
    return SourceStream(kind, units, reader, readers, chunker, seq_len, corpus["tok"].ids.pad, 0)


def test_full_sentence_packing_loses_nothing(corpus):
    """Every sequence is seq_len long, holds whole chunks (sentences, image blocks)
    and the sequences of one epoch are the documents' chunks in order, nothing dropped."""
    from trainer.data import Chunker, read_unit, seeded_order
    st = _stream(corpus, "interleaved")
    ids = corpus["tok"].ids
    chunker = Chunker("interleaved", corpus["tok"], 8, 128, 224)
    expected = []
    for idx in seeded_order(len(st.units), 0, "interleaved", 0):
        for row in read_unit(st.units[idx], Chunker.COLUMNS["interleaved"]):
            expected.extend(chunker(row, "test"))
    starts, pos = {0}, 0
    for ch in expected:
        pos += len(ch)
        starts.add(pos)
    got, images = [], 0
    seqs = st.sequences()
    while st.position[0] == 0:
        seq = next(seqs)
        assert len(seq["input_ids"]) == len(seq["labels"]) == 128
        n = seq["input_ids"].index(ids.pad) if ids.pad in seq["input_ids"] else 128
        assert all(t == ids.pad for t in seq["input_ids"][n:])
        assert all(t == IGNORE_INDEX for t in seq["labels"][n:])
        body = seq["input_ids"][:n]
        assert len(got) in starts or len(got) > pos   # sequences start at a sentence or image block
        assert body.count(ids.image_start) == body.count(ids.image_end) == len(seq["images"])
        assert body.count(ids.image_slot) == 8 * len(seq["images"])
        got.extend(body)
        images += len(seq["images"])
    flat = [t for ch in expected for t in ch.ids]
    # the sequence that ends the epoch may go on with the first chunks of the next one
    assert got[:len(flat)] == flat and len(got) - len(flat) < 128
    assert got.count(ids.bos) >= len(corpus["docs"]) - 1
    assert images > 0


@pytest.mark.parametrize("kind,readers", [("interleaved", 3), ("pairs", 2), ("text", 4)])
def test_readers_are_disjoint_and_complete(corpus, kind, readers):
    from trainer.data import list_units
    units = list_units([corpus[kind]])
    all_rows = {f"{u.path}#{u.row_group}:{r}" for u in units for r in range(u.rows)}
    seen = []
    for g in range(readers):
        st = _stream(corpus, kind, g, readers)
        seqs = st.sequences()
        rows = set()
        while st.position[0] == 0:
            next(seqs)
            rows.update(st.rows_read)
            st.rows_read = []
        seen.append(rows)
    for a in range(readers):
        for b in range(a + 1, readers):
            assert not seen[a] & seen[b]
    assert set().union(*seen) == all_rows


def test_images_are_clip_preprocessed(corpus):
    from trainer.data import preprocess_image
    from trainer.model.vision import CLIP_MEAN
    im = corpus["docs"][0]["images"][0]
    x = preprocess_image(im["data"], 224)
    assert x.shape == (3, 224, 224) and x.dtype == torch.float32
    # a white image maps to (1 - mean) / std
    from io import BytesIO

    from PIL import Image
    buf = BytesIO()
    Image.new("RGB", (300, 100), (255, 255, 255)).save(buf, "PNG")
    w = preprocess_image(buf.getvalue(), 224)
    assert w.shape == (3, 224, 224)
    assert torch.allclose(w[0], torch.full((224, 224), (1 - CLIP_MEAN[0]) / 0.26862954), atol=1e-5)


def test_instruction_loss_counts_only_output_tokens(corpus):
    """Changing a prompt token's target leaves the loss unchanged; changing an output
    token's target changes it. Image slots are never targets."""
    from trainer.data import Chunker, instruction_rows
    from trainer.build import build_model
    row = instruction_rows(json.loads(INSTRUCTIONS.read_text().splitlines()[1]))[0]
    ch = Chunker("instructions", corpus["tok"], 8, 256, 224)(row, "test")[0]
    ids = torch.tensor([ch.ids])
    labels = torch.tensor([ch.labels])
    prompt_len = next(i for i, t in enumerate(ch.labels) if t != IGNORE_INDEX)
    assert prompt_len > 5 and ch.labels[prompt_len:] == ch.ids[prompt_len:]
    torch.manual_seed(0)
    cfg = TrainConfig().override({"model.config": "tiny"})
    model = build_model(cfg, corpus["tok"].vocab_size).eval()
    # what a prompt position would have as target without the mask, changed: the mask still drops it
    full = ids.clone()
    full[0, prompt_len - 2] = (full[0, prompt_len - 2] + 7) % corpus["tok"].num_pieces + 4
    masked = torch.where(labels == IGNORE_INDEX, IGNORE_INDEX, full)
    with torch.no_grad():
        base = model(ids, labels=labels)["loss"]
        same = model(ids, labels=masked)["loss"]
        out_changed = labels.clone()
        out_changed[0, prompt_len + 1] = (out_changed[0, prompt_len + 1] + 7) % corpus["tok"].num_pieces + 4
        diff = model(ids, labels=out_changed)["loss"]
    assert torch.equal(base, same)
    assert not torch.equal(base, diff)
    assert model(ids, labels=labels)["target_tokens"] == len(ch.ids) - prompt_len
    # image slots: a pair chunk's labels ignore <image> and every slot
    pair = pq.read_table(sorted(Path(corpus["pairs"]).glob("part-*.parquet"))[0]).to_pylist()[0]
    pc = Chunker("pairs", corpus["tok"], 8, 256, 224)(pair, "test")[0]
    idsp = corpus["tok"].ids
    for t, lab in zip(pc.ids, pc.labels):
        if t in (idsp.image_start, idsp.image_slot):
            assert lab == IGNORE_INDEX


# ---------------------------------------------------------------------------- training
def test_tiny_training_loss_falls(corpus, tmp_path):
    from trainer.train import run_training
    hist = run_training(tiny_cfg(corpus, tmp_path / "run", **{"run.max_steps": 25}))
    losses = [m["loss"] for m in hist]
    assert len(losses) == 25
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < first - 0.5, losses
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 25 and "loss.interleaved" in json.loads(lines[-1])


def test_exact_resume(corpus, tmp_path):
    """30 steps in one go == 15 steps, stop, resume, 15 more (three sources, a loader
    worker, dropout on so the RNG state matters)."""
    from trainer.train import run_training
    over = {"data.text": [corpus["text"]], "data.pairs": [corpus["pairs"]], "data.text_tokens": 256,
            "data.pairs_tokens": 128, "data.interleaved_tokens": 128, "data.num_workers": 1,
            "model.dropout": 0.1, "run.save_every": 15}
    a = run_training(tiny_cfg(corpus, tmp_path / "a", **over, **{"run.max_steps": 30}))
    b1 = run_training(tiny_cfg(corpus, tmp_path / "b", **over, **{"run.max_steps": 15}))
    assert [m["loss"] for m in b1] == [m["loss"] for m in a[:15]]
    b2 = run_training(tiny_cfg(corpus, tmp_path / "b", **over, **{"run.max_steps": 30}), resume="auto")
    assert [m["step"] for m in b2] == list(range(16, 31))
    assert [m["loss"] for m in b2] == [m["loss"] for m in a[15:]]
    assert [m["loss.pairs"] for m in b2] == [m["loss.pairs"] for m in a[15:]]
    ckpts = sorted(p.name for p in (tmp_path / "b" / "checkpoints").iterdir())
    assert ckpts == ["latest", "step-00000015", "step-00000030"]


def test_checkpoints_and_tokenizer_on_an_object_store_url(corpus, tmp_path):
    """run.checkpoint_dir and run.tokenizer as fsspec URLs (memory:// stands in for gs://)."""
    import fsspec
    from trainer.train import run_training
    fs = fsspec.filesystem("memory")
    with open(corpus["tokenizer"], "rb") as src, fs.open("/bucket/tok.model", "wb") as dst:
        dst.write(src.read())
    over = {"run.checkpoint_dir": "memory://bucket/ckpt", "run.tokenizer": "memory://bucket/tok.model",
            "run.save_every": 2}
    a = run_training(tiny_cfg(corpus, tmp_path / "a", **over, **{"run.max_steps": 4}))
    assert sorted(p.rsplit("/", 1)[-1] for p in fs.ls("/bucket/ckpt", detail=False)) == [
        "latest", "step-00000002", "step-00000004"]
    fs.rm("/bucket/ckpt/step-00000004", recursive=True)
    b = run_training(tiny_cfg(corpus, tmp_path / "b", **over, **{"run.max_steps": 4}), resume="auto")
    assert [m["loss"] for m in b] == [m["loss"] for m in a[2:]]
    # kosmos generate / eval load from the same URL (the root's `latest`, the run's tokenizer)
    from trainer.inference import load_for_inference, resolve_checkpoint
    assert resolve_checkpoint("memory://bucket/ckpt") == "memory://bucket/ckpt/step-00000004"
    model, tok, _ = load_for_inference("memory://bucket/ckpt")
    assert len(model.generate([[tok.ids.bos] + tok.encode("The")], None, max_new_tokens=3)[0]) >= 1


def test_instruct_stage_from_pretrained_checkpoint(corpus, tmp_path):
    from trainer.train import run_training
    run_training(tiny_cfg(corpus, tmp_path / "pre", **{"run.max_steps": 4, "run.save_every": 4}))
    init = tmp_path / "pre" / "checkpoints" / "step-00000004"
    cfg = tiny_cfg(corpus, tmp_path / "inst", **{"run.stage": "instruct", "run.init": str(init),
                                                  "data.instructions": [str(INSTRUCTIONS)],
                                                  "data.instructions_tokens": 512, "run.max_steps": 3})
    hist = run_training(cfg)
    assert {"loss.instructions", "loss.interleaved"} <= set(hist[-1])
    # the initial weights are the checkpoint's, not a fresh init
    from trainer import checkpoint as ckpt
    from trainer.build import build_model
    m = build_model(cfg, corpus["tok"].vocab_size)
    fresh = m.decoder.embed_tokens.weight.clone()
    ckpt.load_model_weights(str(init), m)
    assert not torch.equal(fresh, m.decoder.embed_tokens.weight)


def test_bad_shard_is_reported_and_skipped_or_stops(corpus, tmp_path):
    from trainer.data import BadShardError
    from trainer.train import run_training
    docs = tmp_path / "docs"
    shutil.copytree(corpus["interleaved"], docs)
    shards = sorted(docs.glob("part-*.parquet"))
    victim = shards[0]
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])     # truncated
    (docs / "part-99999.parquet").write_bytes(b"PAR1 this is not parquet")  # not listed: ignored
    cfg = tiny_cfg(corpus, tmp_path / "skip", **{"data.interleaved": [str(docs)], "run.max_steps": 2})
    hist = run_training(cfg)
    assert len(hist) == 2
    bad = [json.loads(x) for x in (tmp_path / "skip" / "bad_shards.jsonl").read_text().splitlines()]
    assert [b["path"] for b in bad] == [str(victim)]
    with pytest.raises(BadShardError, match=str(victim)):
        run_training(tiny_cfg(corpus, tmp_path / "stop", **{"data.interleaved": [str(docs)],
                                                            "data.on_bad_shard": "stop", "run.max_steps": 2}))
    # checksums against the manifest (checked by default) catch a same-size corruption too
    shutil.copy(Path(corpus["interleaved"]) / victim.name, victim)
    shutil.copy(shards[1], tmp_path / "keep.parquet")
    raw = bytearray(shards[1].read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    shards[1].write_bytes(bytes(raw))
    with pytest.raises(BadShardError, match="sha256"):
        run_training(tiny_cfg(corpus, tmp_path / "sum", **{"data.interleaved": [str(docs)],
                                                           "data.on_bad_shard": "stop", "run.max_steps": 1}))


# ---------------------------------------------------------------------------- torchrun
def _torchrun(nproc, *args, timeout=300):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
           "--master_port", str(__import__("tests.conftest", fromlist=["free_port"]).free_port()),
           str(ROOT / "tests" / "dist_train.py"), *map(str, args)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]


@pytest.mark.parametrize("parallel,total", [("ddp", 4), ("fsdp", 4), ("fsdp", 3)])
def test_two_ranks_match_one_rank_with_double_batch(tmp_path, parallel, total):
    """2 ranks x b sequences train as 1 rank x 2b; with an odd total, one rank runs an
    empty micro-batch and the step still equals the one-rank step."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    one = tmp_path / "one.json"
    subprocess.run([sys.executable, str(ROOT / "tests" / "dist_train.py"), "equivalence", "none", str(one),
                    str(total)], env=env, check=True, capture_output=True, timeout=300)
    two = tmp_path / "two.json"
    _torchrun(2, "equivalence", parallel, two, total)
    a, b = json.loads(one.read_text()), json.loads(two.read_text())
    assert b["world"] == 2
    assert a["losses"] == pytest.approx(b["losses"], rel=1e-5)
    assert a["losses"][-1] < a["losses"][0]
    assert set(a["fingerprint"]) == set(b["fingerprint"])
    for k in a["fingerprint"]:
        assert a["fingerprint"][k] == pytest.approx(b["fingerprint"][k], rel=1e-4, abs=1e-4), k


def test_ranks_and_workers_read_disjoint_rows(corpus, tmp_path):
    out = tmp_path / "rows"
    _torchrun(2, "disjoint", corpus["interleaved"], corpus["tokenizer"], out)
    r0 = set(json.loads(Path(f"{out}.rank0").read_text()))
    r1 = set(json.loads(Path(f"{out}.rank1").read_text()))
    assert r0 and r1 and not r0 & r1


# ---------------------------------------------------------------------------- the per-step plan (issue 16)
@pytest.mark.parametrize("world", [1, 2, 3, 8, 64, 256])
def test_every_step_reads_the_configured_budget_on_any_number_of_ranks(world):
    """The paper's 0.5M / 0.5M / 0.2M tokens a step are what a step reads, whatever the
    number of ranks (within the rounding of one sequence), and the ranks take turns."""
    from trainer.data import StepPlan
    cfg = TrainConfig().override({"data.text": ["t"], "data.pairs": ["p"], "data.interleaved": ["i"]})
    plan = StepPlan(cfg, world)
    budgets = {"text": 500_000, "pairs": 500_000, "interleaved": 200_000}
    per_rank = {}
    for step in range(2 * world + 3):
        tokens = plan.step_tokens(step)
        for s, budget in budgets.items():
            assert abs(tokens[s] - budget) <= cfg.data.seq_len / 2, (s, step)
        for r in range(world):
            mbs = [plan.micro_batch(step, r, j) for j in range(len(plan.slots))]   # as many on every rank
            assert all(sum(n for _, n in mb) <= cap for mb, cap in zip(mbs, plan.slots))
            sizes = [part for mb in mbs for part in mb]      # sources may share a micro-batch (issue 27)
            for s in budgets:
                assert sum(n for src, n in sizes if src == s) == plan.rank_sequences(s, step, r)
                per_rank[(r, s)] = per_rank.get((r, s), 0) + plan.rank_sequences(s, step, r)
    for s in budgets:      # over the steps every rank read the same amount, within one sequence
        counts = [per_rank[(r, s)] for r in range(world)]
        assert max(counts) - min(counts) <= 1, s


def test_the_loader_follows_the_plan_and_resumes(corpus, tmp_path):
    """Three interleaved sequences a step over two (simulated) ranks: rank 0 and rank 1
    take turns for the third; the loader's micro-batches carry those sizes, and a
    loader resumed from a saved position continues with the same micro-batches."""
    from trainer.data import MixtureDataset, MixtureLoader
    cfg = tiny_cfg(corpus, tmp_path, **{"data.interleaved_tokens": 3 * 128, "data.micro_batch_size": 1})
    sizes = {}
    for rank in (0, 1):
        loader = MixtureLoader(MixtureDataset(cfg, corpus["tok"], 8, rank, 2))
        steps = [loader.next_step() for _ in range(4)]
        sizes[rank] = [[int((mb["labels"] != IGNORE_INDEX).any(dim=1).sum()) for mb in st] for st in steps]
        state = loader.state_dict()
        resumed = MixtureLoader(MixtureDataset(cfg, corpus["tok"], 8, rank, 2, state))
        fresh = MixtureLoader(MixtureDataset(cfg, corpus["tok"], 8, rank, 2))
        for _ in range(4):
            fresh.next_step()
        a, b = resumed.next_step(), fresh.next_step()
        assert [torch.equal(x["input_ids"], y["input_ids"]) for x, y in zip(a, b)] == [True] * len(a)
    totals = [sum(map(sum, (sizes[0][t], sizes[1][t]))) for t in range(4)]
    assert totals == [3, 3, 3, 3]
    assert sizes[0] == [[1, 1], [1, 0], [1, 1], [1, 0]] and sizes[1] == [[1, 0], [1, 1], [1, 0], [1, 1]]


# ---------------------------------------------------------------------------- hostile inputs (issue 18)
def test_a_killed_curation_run_is_refused_unless_asked(corpus, tmp_path):
    """Shards renamed into place by a run that never finished look whole to pyarrow;
    the run's _SUCCESS marker (written last) is what says they are complete."""
    from trainer.shards import IncompleteRunError, expand_dataset
    run = tmp_path / "run"
    shutil.copytree(corpus["run"], run, ignore=shutil.ignore_patterns("rejects", "duplicates", "fetched", "outcomes"))
    assert expand_dataset(str(run / "documents"))           # finished: read
    (run / "_SUCCESS").unlink()
    (run / "documents" / "_manifest.json").unlink()         # as after kill -9 before the manifest
    with pytest.raises(IncompleteRunError, match="has not finished"):
        expand_dataset(str(run / "documents"))
    from trainer.train import run_training
    with pytest.raises(IncompleteRunError):
        run_training(tiny_cfg(corpus, tmp_path / "t", **{"data.interleaved": [str(run / "documents")],
                                                          "run.max_steps": 1}))
    assert expand_dataset(str(run / "documents"), allow_incomplete=True)
    hist = run_training(tiny_cfg(corpus, tmp_path / "t2", **{"data.interleaved": [str(run / "documents")],
                                                             "data.allow_incomplete_runs": True,
                                                             "run.max_steps": 1}))
    assert len(hist) == 1


def test_a_shard_with_the_wrong_schema_is_reported_and_skipped(corpus, tmp_path):
    from trainer.train import run_training
    docs = tmp_path / "docs"
    docs.mkdir()
    for p in Path(corpus["interleaved"]).glob("part-*.parquet"):
        shutil.copy(p, docs / p.name)
    wrong = docs / "part-zz-wrong.parquet"             # readable Parquet, but text rows, not documents
    shutil.copy(sorted(Path(corpus["text"]).glob("*.parquet"))[0], wrong)
    hist = run_training(tiny_cfg(corpus, tmp_path / "skip", **{"data.interleaved": [str(docs)],
                                                               "run.max_steps": 12}))
    assert len(hist) == 12
    bad = [json.loads(x) for x in (tmp_path / "skip" / "bad_shards.jsonl").read_text().splitlines()]
    assert [b["path"] for b in bad] == [str(wrong)] and "no column 'items'" in bad[0]["error"]


def _tmpfs(path: Path, size: str):
    path.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {proc.stderr.decode()[:200]}")


def test_a_full_disk_says_no_space_left_and_keeps_the_old_checkpoint(corpus, tmp_path, monkeypatch):
    from trainer import checkpoint as ckpt
    from trainer.train import run_training
    disk = tmp_path / "disk"
    _tmpfs(disk, "256k")
    try:
        over = {"run.checkpoint_dir": str(disk / "ckpt"), "run.save_every": 2}
        cfg = tiny_cfg(corpus, tmp_path / "run", **over, **{"run.max_steps": 2, "model.config": "tiny"})
        need = None
        try:
            run_training(cfg)
        except ckpt.CheckpointSpaceError as exc:
            need = str(exc)
        if need is None:
            pytest.skip("the tiny checkpoint fits in the small tmpfs")
        assert "no space left" in need and str(disk / "ckpt") in need           # refused before writing
        assert not list((disk / "ckpt").glob("step-*"))
        # the same disk full mid-write (the estimate told it would fit): still a clear error,
        # the partial step-N.tmp removed
        real, calls = ckpt._free_bytes, []

        def blind_first(path):                  # the check before writing sees nothing; later ones see the disk
            calls.append(path)
            return None if len(calls) == 1 else real(path)
        monkeypatch.setattr(ckpt, "_free_bytes", blind_first)
        with pytest.raises(ckpt.CheckpointSpaceError, match="no space left on device"):
            run_training(cfg)
        assert not list((disk / "ckpt").glob("step-*"))
    finally:
        subprocess.run(["umount", str(disk)])


def test_a_damaged_latest_checkpoint_falls_back_to_the_one_before(corpus, tmp_path, capfd):
    from trainer.train import run_training
    over = {"run.save_every": 2}
    full = run_training(tiny_cfg(corpus, tmp_path / "a", **over, **{"run.max_steps": 6}))
    run_training(tiny_cfg(corpus, tmp_path / "b", **over, **{"run.max_steps": 4}))
    shard = sorted((tmp_path / "b" / "checkpoints" / "step-00000004").glob("*.distcp"))[0]
    shard.write_bytes(shard.read_bytes()[:100])             # the newest checkpoint, damaged
    resumed = run_training(tiny_cfg(corpus, tmp_path / "b", **over, **{"run.max_steps": 6}), resume="auto")
    assert [m["step"] for m in resumed] == [3, 4, 5, 6]      # from step 2
    assert [m["loss"] for m in resumed] == [m["loss"] for m in full[2:]]
    assert "step-00000004 is damaged" in capfd.readouterr().err
