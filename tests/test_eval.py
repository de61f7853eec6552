"""Using a trained model (issue 16): validation during training, `kosmos generate`,
`kosmos eval` on tiny sets made from ../shared/data, and the metrics on known values."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from tests.conftest import ROOT
from trainer.config import TrainConfig

VQA = ROOT / "data" / "sample" / "eval" / "vqa.jsonl"
CHOICE = ROOT / "data" / "sample" / "eval" / "choice.jsonl"


# ---------------------------------------------------------------------------- metrics on known values
def test_vqa_accuracy_official_values():
    from trainer.metrics import normalize_vqa_answer, vqa_accuracy
    # min(1, matches / 3) averaged over the ten leave-one-out subsets
    assert vqa_accuracy("yes", ["yes"] * 1 + ["no"] * 9) == pytest.approx(0.3)
    assert vqa_accuracy("yes", ["yes"] * 2 + ["no"] * 8) == pytest.approx(0.6)
    assert vqa_accuracy("yes", ["yes"] * 3 + ["no"] * 7) == pytest.approx(0.9)
    assert vqa_accuracy("yes", ["yes"] * 4 + ["no"] * 6) == pytest.approx(1.0)
    assert vqa_accuracy("maybe", ["yes"] * 10) == 0.0
    # the prediction's normalisation: number words, articles, punctuation, contractions
    assert vqa_accuracy("two", ["2"] * 5 + ["two"] * 5) == 1.0
    assert vqa_accuracy("A dog.", ["dog"] * 4 + ["a dog"] * 6) == 1.0
    assert normalize_vqa_answer("I dont know!") == "i don't know"
    assert normalize_vqa_answer("red, white") == "red white"
    assert normalize_vqa_answer("1,000") == "1000"
    # the official script always normalises the prediction, also when the humans agree
    # (tests/test_eval_official.py has the full table)
    assert vqa_accuracy("two", ["2"] * 10) == 1.0
    assert vqa_accuracy("Yes", ["yes"] * 10) == 1.0
    assert vqa_accuracy("yes.", ["yes"] * 10) == 1.0
    # ... and the humans' answers get the punctuation step only, and only when they disagree
    assert vqa_accuracy("2", ["two"] * 10) == 0.0
    assert vqa_accuracy("dog", ["a dog"] * 10) == 0.0


def test_caption_metrics_of_identical_and_different_captions():
    from trainer.metrics import caption_scores
    refs = {"1": ["a man riding a horse on a beach"], "2": ["two cats sleeping on a red sofa"],
            "3": ["a plate of pasta with tomato sauce"]}
    same = caption_scores(refs, {k: v[0] for k, v in refs.items()}, meteor=False)
    assert same["CIDEr"] == pytest.approx(10.0)            # CIDEr-D's scale: identical captions score 10
    assert same["BLEU-4"] == pytest.approx(1.0)
    other = caption_scores(refs, {"1": "a dog", "2": "two cats sleeping on a sofa", "3": "pasta"}, meteor=False)
    assert 0 < other["CIDEr"] < 10 and other["BLEU-4"] < 1


def test_captions_are_tokenized_without_java_too(monkeypatch):
    import trainer.metrics as m
    monkeypatch.setattr(m, "java_available", lambda: False)
    toks = m.tokenize_captions({"a": ["A man, riding a horse."]})
    assert toks == {"a": ["a man riding a horse"]}
    refs = {"1": ["a man riding a horse"], "2": ["two cats on a sofa"]}
    assert m.caption_scores(refs, {"1": "A man riding a horse.", "2": "Two cats on a sofa!"})["CIDEr"] == \
        pytest.approx(10.0)


def test_demonstrations_are_seeded_and_never_the_query():
    from trainer.evaluate import pick_demos
    pool = [{"id": str(i)} for i in range(10)]
    a = pick_demos("3", pool, 4, seed=0)
    assert len(a) == 4 and all(d["id"] != "3" for d in a)
    assert a == pick_demos("3", pool, 4, seed=0)
    assert [d["id"] for d in a] != [d["id"] for d in pick_demos("3", pool, 4, seed=1)]


# ---------------------------------------------------------------------------- a tiny trained model
@pytest.fixture(scope="module")
def trained(shared_run, tmp_path_factory):
    """A tokenizer and a tiny model trained for a few steps on the curated shards of
    ../shared/data, with a held-out half of the text corpus for validation."""
    from contract.schema import TEXT_SCHEMA
    from trainer.data import list_units, read_unit
    from trainer.evaluate import write_caption_set
    from trainer.tokenizer import dataset_texts, train_tokenizer
    from trainer.train import run_training
    run, _ = shared_run
    base = tmp_path_factory.mktemp("trained")
    rows = [r for u in list_units([str(run / "text")]) for r in read_unit(u)]
    assert len(rows) >= 4
    half = len(rows) // 2
    for name, part in (("train_text", rows[:half]), ("val_text", rows[half:])):
        (base / name).mkdir()
        pq.write_table(pa.Table.from_pylist(part, schema=TEXT_SCHEMA), base / name / "part-0.parquet")
    train_tokenizer(dataset_texts([str(run / "documents"), str(run / "pairs"), str(base / "train_text")]),
                    str(base / "tok"), 400, threads=1)
    cfg = TrainConfig().override({
        "model.config": "tiny", "data.seq_len": 128, "data.micro_batch_size": 2, "data.num_workers": 0,
        "data.interleaved": [str(run / "documents")], "data.pairs": [str(run / "pairs")],
        "data.text": [str(base / "train_text")], "data.val_text": [str(base / "val_text")],
        "data.interleaved_tokens": 256, "data.pairs_tokens": 256,
        "data.text_tokens": 256, "data.allow_incomplete_runs": False, "optim.lr": 3e-3,
        "optim.warmup_steps": 2, "optim.steps": 6, "run.output": str(base / "train"),
        "run.tokenizer": str(base / "tok.model"), "run.save_every": 1000, "run.eval_every": 2,
        "run.eval_sequences": 4, "run.tensorboard": False, "run.progress_bar": False})
    history = run_training(cfg)
    evalset = base / "evalset"
    write_caption_set([str(run / "pairs")], str(evalset), limit=6)
    return {"run": run, "base": base, "cfg": cfg, "history": history, "train": base / "train",
            "evalset": evalset, "tokenizer": str(base / "tok.model")}


def test_validation_is_logged_and_the_best_checkpoint_kept(trained):
    lines = [json.loads(x) for x in (trained["train"] / "metrics.jsonl").read_text().splitlines()]
    val = [m for m in lines if "val_loss" in m]
    assert [m["step"] for m in val] == [2, 4, 6]
    assert all(math.isfinite(m["val_loss"]) and m["val_tokens"] > 0 and "val_loss.text" in m for m in val)
    best = json.loads((trained["train"] / "checkpoints" / "best.json").read_text())
    assert best["val_loss"] == pytest.approx(min(m["val_loss"] for m in val))
    # CHECKPOINTS/best names the step checkpoint (no second copy)
    assert (trained["train"] / "checkpoints" / "best").read_text() == best["checkpoint"]
    assert (trained["train"] / "checkpoints" / best["checkpoint"] / ".metadata").exists()
    assert (trained["train"] / "checkpoints" / "latest").read_text().strip() == "step-00000006"


def test_validation_loss_is_the_same_on_every_call(trained):
    from trainer.train import Trainer
    t = Trainer(trained["cfg"])
    a, b = t.validate(), t.validate()
    assert a.val_loss == b.val_loss and a.val_tokens == b.val_tokens > 0


def test_held_out_data_may_not_be_training_data(trained, tmp_path):
    from trainer.train import check_held_out
    cfg = trained["cfg"].override({"data.val_text": [str(trained["base"] / "train_text")]})
    with pytest.raises(ValueError, match="held-out data must be held out"):
        check_held_out(cfg)


def _kosmos(*args):
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)


def test_generate_command_answers_a_prompt_with_an_image(trained):
    image = sorted((trained["evalset"] / "images").iterdir())[0]
    out = _kosmos("generate", trained["train"], f"<image:{image}> An image of", "--json", "--max_new_tokens", 8)
    assert out.returncode == 0, out.stderr
    row = json.loads(out.stdout.strip().splitlines()[-1])
    assert row["prompt"].endswith("An image of") and 0 < len(row["ids"]) <= 8
    again = _kosmos("generate", trained["train"], f'[{{"image": "{image}"}}, "An image of"]', "--json",
                    "--max_new_tokens", 8)
    assert json.loads(again.stdout.strip().splitlines()[-1])["ids"] == row["ids"]    # same prompt, same answer
    beam = _kosmos("generate", str(trained["train"] / "checkpoints" / "best"), f"<image:{image}> An image of",
                   "--beams", 3, "--max_new_tokens", 8)
    assert beam.returncode == 0, beam.stderr


def test_prompt_parsing():
    from trainer.inference import ImagePart, parse_prompt
    assert parse_prompt("<image:a.jpg> An image of") == [ImagePart("a.jpg"), "An image of"]
    assert parse_prompt("Here: <image: s3://b/c.png > and <image:d.jpg>") == \
        ["Here:", ImagePart("s3://b/c.png"), "and", ImagePart("d.jpg")]
    assert parse_prompt('["x", {"image": "a.jpg"}, {"text": "y"}]') == ["x", ImagePart("a.jpg"), "y"]


def _eval(trained, out, **kw):
    from trainer.evaluate import EvalSettings, run_eval
    s = EvalSettings(meteor=False, **kw)
    return run_eval(str(trained["train"]), s, str(out))


def test_caption_and_vqa_scores_are_finite_and_deterministic(trained, tmp_path):
    ev = trained["evalset"]
    a = _eval(trained, tmp_path / "a", task="caption", data=[str(ev / "captions.json")], images_root=str(ev),
              max_new_tokens=6)
    b = _eval(trained, tmp_path / "b", task="caption", data=[str(ev / "captions.json")], images_root=str(ev),
              max_new_tokens=6)
    assert a["examples"] == 6 and a["failed"] == 0
    assert all(math.isfinite(a["scores"][k]) for k in ("CIDEr", "BLEU-4"))
    assert a["scores"] == b["scores"]
    assert (tmp_path / "a" / "predictions.jsonl").read_text() == (tmp_path / "b" / "predictions.jsonl").read_text()
    # VQA: the hand-made questions refer to images by content hash; the set here holds some of them
    names = {p.name for p in (ev / "images").iterdir()}
    rows = [json.loads(x) for x in VQA.read_text().splitlines()]
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image at all")
    rows = [r for r in rows if Path(r["image"]).name in names] + [
        {"id": "missing", "image": "images/nowhere.jpg", "question": "What?", "answers": ["x"] * 10},
        {"id": "undecodable", "image": str(bad), "question": "What?", "answers": ["x"] * 10}]
    vqa = tmp_path / "vqa.jsonl"
    vqa.write_text("".join(json.dumps(r) + "\n" for r in rows))
    v1 = _eval(trained, tmp_path / "v1", task="vqa", data=[str(vqa)], images_root=str(ev))
    v2 = _eval(trained, tmp_path / "v2", task="vqa", data=[str(vqa)], images_root=str(ev), batch_size=1)
    assert v1["examples"] == len(rows) and v1["failed"] == 2          # reported, not fatal
    assert 0.0 <= v1["scores"]["accuracy"] <= 1.0
    assert v1["scores"] == v2["scores"]                               # batched == one at a time
    errors = [json.loads(x) for x in (tmp_path / "v1" / "predictions.jsonl").read_text().splitlines()
              if "error" in json.loads(x)]
    assert [e["id"] for e in errors] == ["missing", "undecodable"] and "nowhere.jpg" in errors[0]["error"]


def test_few_shot_prompts_carry_the_demonstrations(trained, tmp_path):
    from trainer.evaluate import EvalSettings, Evaluator
    from trainer.inference import load_for_inference
    ev = trained["evalset"]
    model, tok, cfg = load_for_inference(str(trained["train"]))
    s = EvalSettings(task="caption", data=[str(ev / "captions.json")], images_root=str(ev), shots=2, meteor=False,
                     max_new_tokens=4)
    seen = []
    evaluator = Evaluator(model, tok, s, cfg.data.image_size, cfg.data.seq_len)
    real = evaluator.prompter.encode

    def spy(parts, bos=True):
        seen.append(list(parts))
        return real(parts, bos)
    evaluator.prompter.encode = spy
    rows, summary = evaluator.run()
    assert summary["shots"] == 2 and summary["failed"] == 0 and len(seen) == summary["examples"]
    # two demonstrations (image + "An image of {caption}.") then the query (image + "An image of")
    assert all(len(p) == 6 and p[-1] == "An image of" and p[1].startswith("An image of ") for p in seen)


def _shape_image(path, shape, colour):
    from PIL import Image, ImageDraw
    im = Image.new("RGB", (96, 96), "white")
    d = ImageDraw.Draw(im)
    if shape == "circle":
        d.ellipse((16, 16, 80, 80), fill=colour)
    else:
        d.rectangle((16, 16, 80, 80), fill=colour)
    im.save(path)
    return str(path)


def test_raven_classify_choice_and_perplexity_tasks(trained, tmp_path):
    colours = ["red", "green", "blue"]
    imgs = {(s, c): _shape_image(tmp_path / f"{s}-{c}.png", s, c) for s in ("circle", "square") for c in colours}
    raven = tmp_path / "raven.jsonl"
    raven.write_text(json.dumps({"id": "r1", "context": [imgs[("circle", c)] for c in colours[:2]],
                                 "candidates": [imgs[("circle", "blue")], imgs[("square", "blue")]],
                                 "answer": 0}) + "\n")
    r = _eval(trained, tmp_path / "raven", task="raven", data=[str(raven)])
    pred = json.loads((tmp_path / "raven" / "predictions.jsonl").read_text())
    assert r["examples"] == 1 and pred["prediction"] in (0, 1) and len(pred["p_yes"]) == 2
    assert all(0 < p < 1 for p in pred["p_yes"])
    cls = tmp_path / "cls.jsonl"
    cls.write_text("".join(json.dumps({"image": imgs[(s, "red")], "label": s}) + "\n" for s in ("circle", "square")))
    desc = tmp_path / "desc.json"
    desc.write_text(json.dumps({"circle": "a round shape", "square": "a shape with four equal sides"}))
    c1 = _eval(trained, tmp_path / "c1", task="classify", data=[str(cls)])
    c2 = _eval(trained, tmp_path / "c2", task="classify", data=[str(cls)], descriptions=str(desc))
    assert c1["scores"]["classes"] == 2 and c1["scores"]["accuracy"] in (0.0, 0.5, 1.0)
    assert c2["scores"]["with_descriptions"] and not c1["scores"]["with_descriptions"]
    ch = _eval(trained, tmp_path / "ch", task="choice", data=[str(CHOICE)], shots=1)
    assert ch["examples"] == 6 and 0 <= ch["scores"]["accuracy"] <= 1
    ppl = _eval(trained, tmp_path / "ppl", task="perplexity", data=[str(trained["base"] / "val_text")], limit=4)
    from trainer.tokenizer import Tokenizer
    vocab = Tokenizer(trained["tokenizer"]).vocab_size
    assert ppl["scores"]["tokens"] > 0 and 1.0 < ppl["scores"]["perplexity"] < 10 * vocab


def test_choice_task_prefers_the_likely_continuation(trained, tmp_path):
    """With the scoring wired right, a continuation the model itself generated greedily
    beats random pieces."""
    from trainer.inference import load_for_inference
    model, tok, _ = load_for_inference(str(trained["train"]))
    ctx = [tok.ids.bos] + tok.encode("The")
    greedy = model.generate([ctx], None, max_new_tokens=3)[0]
    greedy = [t for t in greedy if t != tok.ids.eos] or greedy
    g = torch.Generator().manual_seed(0)
    rnd = (torch.randint(4, 4 + tok.num_pieces, (len(greedy),), generator=g)).tolist()
    s = model.score([ctx, ctx], [greedy, rnd])
    assert s[0] > s[1]
