"""What the trainer's loader does with shards that are not what their manifest says,
with images that do not decode and with rows of any size (issue 28)."""

import hashlib
import io
import json
import random
import shutil
import subprocess
import sys
import tracemalloc
import warnings
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from contract.manifest import MANIFEST, build_manifest, manifest_bytes, shard_entry, shard_name
from contract.schema import DOCUMENT_SCHEMA, PAIR_SCHEMA, TEXT_SCHEMA
from tests.conftest import ROOT

WORDS = ("harbour lantern meadow pebble quarry saddle thicket violet walnut orchard canyon ember "
         "falcon glacier hollow island juniper kettle ledger marble needle oyster prairie ribbon").split()


def sentence(rng, n=12):
    return " ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + "."


def text_row(i, text):
    return {"doc_id": f"t{i:04d}", "url": f"https://example.org/{i}", "capture_date": None, "title": None,
            "text": text, "source_file": None, "source_offset": None, "scores": None}


def jpeg(seed, side=64):
    from PIL import Image
    rng = random.Random(seed)
    im = Image.frombytes("RGB", (side, side), bytes(rng.randrange(256) for _ in range(side * side * 3)))
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def image(data, i):
    return {"url": f"https://example.org/{i}.jpg", "alt": None, "title": None, "data": data, "format": "jpeg",
            "width": 64, "height": 64, "original_width": 64, "original_height": 64, "original_format": "jpeg",
            "original_bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(), "source_file": None,
            "source_offset": None}


def pair_row(i, caption, data):
    return {"pair_id": f"p{i:04d}", "caption": caption, "caption_source": "alt", "image": image(data, i),
            "page_url": None, "doc_id": None, "capture_date": None, "language_score": 0.9}


def doc_row(i, rng):
    data = jpeg(1000 + i)
    items = [{"type": "text", "text": sentence(rng), "image": None}, {"type": "image", "text": None, "image": 0},
             {"type": "text", "text": f"Marker{i:04d} " + sentence(rng), "image": None}]
    return {"doc_id": f"d{i:04d}", "url": f"https://example.org/d{i}", "capture_date": None, "title": None,
            "source_file": None, "source_offset": None, "source_inner_offset": None, "record_id": None,
            "revisit_of": None, "items": items, "images": [image(data, i)], "num_images": 1, "scores": None}


def write_dataset(directory: Path, shards, schema, compression="zstd", row_group_size=4, manifest=True):
    """Shards as the curation job writes them (contract.manifest's entries), one list of rows each."""
    directory.mkdir(parents=True)
    entries = []
    for n, rows in enumerate(shards):
        buf = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), buf, compression=compression,
                       row_group_size=row_group_size)
        data = buf.getvalue()
        (directory / shard_name(n, len(shards))).write_bytes(data)
        entries.append(shard_entry(shard_name(n, len(shards)), data, len(rows),
                                   sum(r.get("num_images", 1 if "image" in r else 0) for r in rows)))
    if manifest:
        (directory / MANIFEST).write_bytes(manifest_bytes(build_manifest(schema.metadata[b"kosmos.schema"].decode(),
                                                                         entries)))
    return directory


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Text (shards of 10 and 19 rows, as in the issue), pairs and documents, written
    uncompressed (a flipped byte of a text or an image then still decodes), and a
    tokenizer learned from the text."""
    from trainer.tokenizer import train_tokenizer
    base = tmp_path_factory.mktemp("integrity")
    rng = random.Random(5)
    texts = [f"Row{i:04d} " + " ".join(sentence(rng) for _ in range(6)) for i in range(29)]
    text_shards = [[text_row(i, t) for i, t in enumerate(texts[:10])],
                   [text_row(10 + i, t) for i, t in enumerate(texts[10:])]]
    pairs = [pair_row(i, f"Caption{i:04d} " + sentence(rng, 6), jpeg(i)) for i in range(8)]
    docs = [doc_row(i, rng) for i in range(6)]
    tok = train_tokenizer(iter(texts), str(base / "tok"), 400, threads=1)
    return {"text": write_dataset(base / "text", text_shards, TEXT_SCHEMA, "none"),
            "pairs": write_dataset(base / "pairs", [pairs[:4], pairs[4:]], PAIR_SCHEMA, "none", 2),
            "interleaved": write_dataset(base / "documents", [docs[:3], docs[3:]], DOCUMENT_SCHEMA, "none", 3),
            "tok": tok, "tokenizer": str(base / "tok.model"), "base": base}


def stream(corpus, kind, path, on_bad="skip", epochs=1, seq_len=128):
    """A reader over a dataset with the loader's default checks."""
    from trainer.data import Chunker, SourceStream, list_units
    bad = []
    units = list_units([str(path)], on_bad, bad=bad, source=kind)
    chunker = Chunker(kind, corpus["tok"], 4, seq_len, 32)
    return SourceStream(kind, units, 0, 1, chunker, seq_len, corpus["tok"].ids.pad, 0, on_bad, epochs=epochs), bad


def read_all(st):
    """Drain a stream; the files its rows came from."""
    for _ in st.sequences():
        pass
    return [key.rsplit("#", 1)[0] for key in st.rows_read]


# The bytes a flip lands in: a word of a row's text, the middle of an image's JPEG
# data; in a middle row, so no column statistic holds a copy of them.
TARGETS = {"text": lambda shard: b"Row0015", "pairs": lambda shard: jpeg(5)[600:640],
           "interleaved": lambda shard: b"Marker0004"}


@pytest.mark.parametrize("kind", ["text", "pairs", "interleaved"])
def test_a_flipped_byte_that_still_decodes_is_a_bad_shard(corpus, tmp_path, kind):
    """One XORed byte in a shard that still decodes (a changed word, a JPEG with other
    pixels): with the default settings none of its rows is trained on, and the shard
    is reported with both sha256; on_bad=stop names the file."""
    from trainer.data import BadShardError
    data = tmp_path / kind
    shutil.copytree(corpus[kind], data)
    victim = data / shard_name(1, 2)
    raw = bytearray(victim.read_bytes())
    target = TARGETS[kind](victim)
    assert raw.count(target) == 1
    at = raw.index(target) + 2
    raw[at] ^= 0x20
    victim.write_bytes(bytes(raw))
    # the damage decodes: without a check these rows would train
    assert pq.read_table(victim).num_rows == json.loads((data / MANIFEST).read_text())["shards"][1]["rows"]
    st, bad = stream(corpus, kind, data)
    files = read_all(st)
    assert str(victim) not in files
    assert set(files) == {str(data / shard_name(0, 2))}
    expected = json.loads((data / MANIFEST).read_text())["shards"][1]["sha256"]
    reports = bad + st.bad
    assert [(b["path"], b["expected_sha256"], b["actual_sha256"]) for b in reports] == [
        (str(victim), expected, hashlib.sha256(bytes(raw)).hexdigest())]
    st, _ = stream(corpus, kind, data, on_bad="stop")
    with pytest.raises(BadShardError, match=str(victim)):
        read_all(st)


def test_a_shard_swapped_for_another_valid_shard_is_reported_and_skipped(corpus, tmp_path):
    """part 0 (10 rows) replaced by part 1 (19 rows, a valid shard): caught from the
    footer's row count before any row is read, whether or not sha256 is checked."""
    from trainer.data import BadShardError, list_units
    data = tmp_path / "text"
    shutil.copytree(corpus["text"], data)
    shutil.copy(data / shard_name(1, 2), data / shard_name(0, 2))
    for verify in (True, False):
        bad = []
        units = list_units([str(data)], "skip", verify, bad, "text")
        assert {u.path for u in units} == {str(data / shard_name(1, 2))}
        assert [(b["path"], b["expected_rows"], b["actual_rows"]) for b in bad] == [
            (str(data / shard_name(0, 2)), 10, 19)]
        with pytest.raises(BadShardError, match=f"{data / shard_name(0, 2)}: 19 rows, {MANIFEST} says 10"):
            list_units([str(data)], "stop", verify, None, "text")


def test_training_with_default_settings_reports_a_swapped_shard(corpus, tmp_path):
    """The whole trainer with its defaults: the swapped shard is a line of
    bad_shards.jsonl (path, expected and actual rows) and the run goes on."""
    from trainer.config import TrainConfig
    from trainer.train import run_training
    data = tmp_path / "text"
    shutil.copytree(corpus["text"], data)
    shutil.copy(data / shard_name(1, 2), data / shard_name(0, 2))
    cfg = TrainConfig().override({
        "model.config": "tiny", "data.seq_len": 64, "data.micro_batch_size": 2, "data.num_workers": 0,
        "data.text": [str(data)], "data.text_tokens": 128, "data.pairs_tokens": 0, "data.interleaved_tokens": 0,
        "optim.steps": 4, "run.max_steps": 2, "run.output": str(tmp_path / "run"),
        "run.tokenizer": corpus["tokenizer"], "run.save_every": 1000, "run.tensorboard": False,
        "run.progress_bar": False})
    assert len(run_training(cfg)) == 2
    bad = [json.loads(x) for x in (tmp_path / "run" / "bad_shards.jsonl").read_text().splitlines()]
    assert [(b["path"], b["expected_rows"], b["actual_rows"]) for b in bad] == [(str(data / shard_name(0, 2)), 10, 19)]


def test_without_verify_units_carry_no_digest_and_each_file_is_hashed_once(corpus, monkeypatch):
    """verify=False (data.verify_checksums=false) leaves the sha256 out; with it, a
    reader hashes each file once however many of its row groups it reads, over epochs."""
    import trainer.data as data
    from trainer.data import list_units
    assert all(u.sha256 is None for u in list_units([str(corpus["text"])], verify=False))
    units = list_units([str(corpus["text"])])
    assert len(units) > 2 and all(u.sha256 for u in units)
    hashed = []
    real = data.file_sha256
    monkeypatch.setattr(data, "file_sha256", lambda p: hashed.append(p) or real(p))
    monkeypatch.setattr(data, "_HASHED", {})
    st, _ = stream(corpus, "text", corpus["text"], epochs=3)
    read_all(st)
    assert sorted(hashed) == sorted({u.path for u in units})


def test_files_without_a_manifest_are_read_and_reported_once_as_unverified(corpus, tmp_path):
    from trainer.data import UnverifiedShardWarning, list_units
    loose = tmp_path / "mine"
    loose.mkdir()
    for p in Path(corpus["text"]).glob("part-*.parquet"):
        shutil.copy(p, loose / p.name)
    notes = []
    with pytest.warns(UnverifiedShardWarning, match=f"{loose}: 2 file"):
        units = list_units([str(loose)], unverified=notes)
    assert len(units) == len(list_units([str(corpus["text"])]))
    assert all(u.sha256 is None for u in units)
    assert [(n["path"], n["files"]) for n in notes] == [(str(loose), 2)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")                   # said once: not again
        list_units([str(loose)])
    # a shard named on its own still finds its manifest
    single = list_units([str(Path(corpus["text"]) / shard_name(1, 2))])
    assert single and all(u.sha256 for u in single)


def test_an_undecodable_image_is_counted_once_per_source_and_not_decoded_again(corpus, tmp_path, monkeypatch):
    import trainer.data as data
    rows = [pair_row(i, f"Caption{i:04d} a small boat.", jpeg(i)) for i in range(3)]
    rows[1]["image"]["data"] = b"\xff\xd8 not really a jpeg"
    pairs = write_dataset(tmp_path / "pairs", [rows], PAIR_SCHEMA, row_group_size=3)
    calls = []
    real = data.preprocess_image
    monkeypatch.setattr(data, "preprocess_image", lambda b, size=224: calls.append(b) or real(b, size))
    st, bad = stream(corpus, "pairs", pairs, epochs=3)
    read_all(st)
    assert not bad
    images = [b for b in st.bad if b.get("skipped") == "undecodable image"]
    assert [(b["path"], b["row_group"], b["row"], b["image"], b["source"]) for b in images] == [
        (str(pairs / shard_name(0, 1)), 0, 1, 0, "pairs")]
    assert "undecodable image 0" in images[0]["error"]
    assert st.stats["undecodable_images"] == 1
    assert calls.count(rows[1]["image"]["data"]) == 1            # epochs 2 and 3 skip it
    assert calls.count(rows[0]["image"]["data"]) == 3


def test_a_huge_text_row_is_read_in_bounded_memory(corpus, tmp_path):
    """A 3 MB row without a sentence end: its first sequences come while holding
    little more than the row itself (the row read from Parquet is ~3 MB)."""
    rng = random.Random(9)
    text = " ".join(rng.choice(WORDS) for _ in range(450_000))[:3_000_000]
    data = write_dataset(tmp_path / "text", [[text_row(0, text)]], TEXT_SCHEMA)
    st, _ = stream(corpus, "text", data, seq_len=256)
    seqs = st.sequences()
    tracemalloc.start()
    try:
        for _ in range(3):
            next(seqs)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 * 2 ** 20, f"{peak / 2 ** 20:.0f} MiB"       # 7 MiB here; 35 MiB when made whole


def test_a_long_sentence_tokenized_in_pieces_gives_the_ids_of_the_whole(corpus):
    """Cut at whitespace, a sentence of several PIECE_CHARS has the ids it has in one
    call, in sequence-long slices from its start (what the chunker did in one go)."""
    from trainer.data import PIECE_CHARS, Chunker
    tok = corpus["tok"]
    rng = random.Random(3)
    text = " ".join(rng.choice(WORDS) for _ in range(PIECE_CHARS // 2))
    assert len(text) > 3 * PIECE_CHARS
    chunks = Chunker("text", tok, 4, 100, 32)(text_row(0, text), "x")
    whole = [tok.ids.bos] + tok.encode(text) + [tok.ids.eos]
    assert [c.ids for c in chunks] == [whole[i:i + 100] for i in range(0, len(whole), 100)]


def test_the_shard_bitflip_campaign_trains_no_damaged_row(corpus, tmp_path):
    """A sample of `benchmarks/bitflips.py --shards`: single-byte flips in zstd shards
    of all three datasets; and the same flips without the sha256 check, which shows
    the campaign sees damaged rows when they train."""
    rng = random.Random(4)
    run = tmp_path / "run"
    write_dataset(run / "text", [[text_row(i, sentence(rng) + " " + sentence(rng)) for i in range(k, k + 6)]
                                 for k in (0, 6)], TEXT_SCHEMA)
    write_dataset(run / "pairs", [[pair_row(i, sentence(rng, 5), jpeg(i)) for i in range(k, k + 3)]
                                  for k in (0, 3)], PAIR_SCHEMA)
    write_dataset(run / "documents", [[doc_row(i, rng) for i in range(2)]], DOCUMENT_SCHEMA)
    out = {}
    for mode in ([], ["--no-verify"]):
        proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bitflips.py"), "--shards", str(run),
                               "--flips", "12", "--seed", "3", "--json", "--tokenizer", corpus["tokenizer"], *mode],
                              check=True, capture_output=True, text=True)
        out[bool(mode)] = json.loads(proc.stdout)
    for name, totals in out[False].items():
        assert totals["damaged_rows_trained"] == 0, (name, totals)
        assert totals["damaged_reported"] == totals["flips"] == 12, (name, totals)
        assert totals["untouched_rows_lost"] == 0, (name, totals)
    assert sum(t["damaged_rows_trained"] for t in out[True].values()) > 0, out[True]


def test_a_shard_rewritten_after_it_was_checked_is_checked_again(corpus, tmp_path):
    """The once-per-process answer is for the file as it was: changed since (same size,
    newer modification time), it is hashed again."""
    import os
    from trainer.data import BadShardError, check_sha256, list_units
    data = tmp_path / "text"
    shutil.copytree(corpus["text"], data)
    unit = list_units([str(data)])[-1]
    check_sha256(unit.path, unit.sha256)
    raw = bytearray(Path(unit.path).read_bytes())
    raw[len(raw) // 2] ^= 0x01
    stat = os.stat(unit.path)
    Path(unit.path).write_bytes(bytes(raw))
    os.utime(unit.path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10 ** 9))
    with pytest.raises(BadShardError, match=f"{unit.path}: sha256 .* does not match"):
        check_sha256(unit.path, unit.sha256)
