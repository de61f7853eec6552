"""Issue 30, safe to publish, on the image side of the job: the image-safety model, the
pHash as an image's identity (repeated images, pair dedup), documents with the same
set of images, evaluation images. Hand-built WARCs (tests/warcgen.py) of a real page
and real book covers from ../shared/data; every run balances."""

import io
import json

import apache_beam as beam
import pyarrow.parquet as pq
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to
from PIL import Image

from conftest import IN_MEMORY, shared_warc
from filters.image_hash import phash_of_bytes
from filters.image_safety import INSTALL_LINE, NO_SCORER_WARNING
from warcgen import article_with_images, http_response, write_warc

COVER = "http://books.toscrape.com/media/cache/"
UNSAFE_COVER = "3d54940e57e662c4dd1f3ff00c78cc64.jpg"     # opennsfw scores it 0.22; the others under 0.04
SITE = "https://www.dw.com"
# small and quick: repeats counted from 4 documents, no text dedup (every page is the
# same article), no single-image draw, a threshold that makes the one cover unsafe
OVERRIDES = {"dedup.image_max_repeats": 3, "dedup.exact": False, "dedup.near": False,
             "documents.drop_single_image_fraction": 0.0, "safety.image_threshold": 0.1,
             "audit.samples_per_reason": 1000}
ALT = "The cover of a paperback novel in a shop window, picture {n}"


def covers():
    """{file name: bytes} of the books.toscrape covers, in archive order."""
    from archives.records import ArchiveRecord, iter_archive
    out = {}
    with open(shared_warc("node-warc__books.toscrape.warc"), "rb") as fh:
        for r in iter_archive(fh, "books"):
            if isinstance(r, ArchiveRecord) and r.target_uri.startswith(COVER) and len(r.payload) > 1000:
                out.setdefault(r.target_uri.rsplit("/", 1)[1], r.payload)
    return out


def same_picture_resized(data: bytes) -> bytes:
    """A larger re-encoded copy of ``data`` with exactly its pHash (the shuffle key)."""
    want = phash_of_bytes(data)
    img = Image.open(io.BytesIO(data)).convert("RGB")
    for scale in (2.0, 1.5, 1.25, 3.0):
        buf = io.BytesIO()
        img.resize((round(img.width * scale), round(img.height * scale)), Image.LANCZOS).save(
            buf, format="JPEG", quality=90)
        if phash_of_bytes(buf.getvalue()) == want:
            return buf.getvalue()
    raise AssertionError("no resized copy with the same pHash")


def page(name, srcs, date):
    return http_response(f"{SITE}/en/{name}", article_with_images(srcs, alt=ALT), "text/html; charset=utf-8",
                         date=date)


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """Eight pages: p1-p4 show one picture under two URLs (original, resized copy), each
    with a picture of its own; p5 (older) and p6 show the same two pictures (one under
    two URLs); p7 shows the unsafe cover and another, p8 only the unsafe cover."""
    by_name = covers()
    unsafe = by_name.pop(UNSAFE_COVER)
    c = list(by_name.values())
    r, s, t = c[0], c[5], c[6]
    images = {"/r/orig.jpg": r, "/r/big.jpg": same_picture_resized(r), "/s/orig.jpg": s,
              "/s/big.jpg": same_picture_resized(s), "/t.jpg": t, "/u.jpg": unsafe, "/v.jpg": c[7]}
    images.update({f"/own/{i}.jpg": c[i] for i in range(1, 5)})
    d1, d2 = "2024-01-01T00:00:00Z", "2024-06-01T00:00:00Z"
    pages = [page("p1", ["/r/orig.jpg", "/own/1.jpg"], d1), page("p2", ["/r/orig.jpg", "/own/2.jpg"], d1),
             page("p3", ["/r/big.jpg", "/own/3.jpg"], d1), page("p4", ["/r/big.jpg", "/own/4.jpg"], d1),
             page("p5", ["/s/orig.jpg", "/t.jpg"], d1), page("p6", ["/s/big.jpg", "/t.jpg"], d2),
             page("p7", ["/u.jpg", "/v.jpg"], d1), page("p8", ["/u.jpg"], d1)]
    records = pages + [http_response(SITE + path, data, "image/jpeg") for path, data in sorted(images.items())]
    warc = tmp_path_factory.mktemp("safety") / "pages.warc.gz"
    write_warc(warc, records)
    return warc, {path: phash_of_bytes(data) for path, data in images.items()}


def run(archive, tmp_path_factory, name, **overrides):
    from conftest import run_job
    out = tmp_path_factory.mktemp(name) / "run"
    stats = run_job([str(archive[0])], out, beam_args=IN_MEMORY, overrides={**OVERRIDES, **overrides})
    for block in ("records", "images", "pairs", "text_documents"):
        assert stats[block]["balanced"], (block, stats[block])
    return out, stats


def rows(out, name):
    return [r for f in sorted((out / name).glob("*.parquet")) for r in pq.read_table(f).to_pylist()]


def trail(out):
    return rows(out, "outcomes")


@pytest.fixture(scope="module")
def scored(archive, tmp_path_factory):
    return run(archive, tmp_path_factory, "scored")


def url(name):
    return f"{SITE}/en/{name}"


def test_every_image_and_record_ends_once(scored):
    out, stats = scored
    ends = [r for r in trail(out) if r["level"] in ("record", "image")]
    records = [r for r in ends if r["level"] == "record" and r["doc_id"]]
    assert len({r["doc_id"] for r in records}) == len(records) == 8
    images = [r for r in ends if r["level"] == "image"]
    assert len(images) == stats["images"]["in"] == 15
    assert len({(r["doc_id"], r["url"]) for r in images}) == 15


def test_one_picture_under_two_urls_counts_as_one_for_repeated_image(scored, archive):
    out, stats = scored
    phashes = archive[1]
    assert phashes["/r/orig.jpg"] == phashes["/r/big.jpg"]
    repeated = [r for r in trail(out) if r["level"] == "image" and r["reason"] == "repeated_image"]
    # each URL is shown by 2 pages (under the limit of 3), the picture by 4
    assert sorted(r["url"] for r in repeated) == [SITE + "/r/big.jpg"] * 2 + [SITE + "/r/orig.jpg"] * 2
    docs = {d["url"]: d for d in rows(out, "documents")}
    for name in ("p1", "p2", "p3", "p4"):
        assert [im["url"] for im in docs[url(name)]["images"]] == [f"{SITE}/own/{name[1]}.jpg"]


def test_one_picture_under_two_urls_with_one_caption_is_one_pair(scored, archive):
    out, stats = scored
    pairs = rows(out, "pairs")
    keys = [(p["image"]["phash"], p["caption"]) for p in pairs]
    assert len(keys) == len(set(keys))
    s = archive[1]["/s/orig.jpg"]
    (pair,) = [p for p in pairs if p["image"]["phash"] == s]
    assert pair["image"]["url"] in (SITE + "/s/orig.jpg", SITE + "/s/big.jpg")
    dup = [r for r in trail(out) if r["level"] == "pair" and r["reason"] == "duplicate_pair"
           and r["url"] in (SITE + "/s/orig.jpg", SITE + "/s/big.jpg")]
    assert len(dup) == 1 and dup[0]["url"] != pair["image"]["url"]


def test_documents_with_the_same_images_keep_the_newest(scored):
    out, stats = scored
    assert stats["counts"]["record/dropped/duplicate_image_set"] == 1
    docs = {d["url"]: d for d in rows(out, "documents")}
    assert url("p5") not in docs
    assert [im["url"] for im in docs[url("p6")]["images"]] == [SITE + "/s/big.jpg", SITE + "/t.jpg"]
    ends = trail(out)
    (p5,) = [r for r in ends if r["level"] == "record" and r["url"] == url("p5")]
    assert p5["reason"] == "duplicate_image_set"
    assert json.loads(p5["scores"])["survivor_doc_id"] == docs[url("p6")]["doc_id"]
    p5_images = [r for r in ends if r["level"] == "image" and r["doc_id"] == p5["doc_id"]]
    assert sorted(r["reason"] for r in p5_images) == ["document_dropped"] * 2


def test_unsafe_images_are_dropped_with_their_scores(scored):
    out, stats = scored
    assert stats["counts"]["image/dropped/unsafe_image"] == 2
    assert stats["counts"]["record/dropped/images_unsafe_image"] == 1           # p8, its one image unsafe
    ends = trail(out)
    unsafe = [r for r in ends if r["reason"] == "unsafe_image"]
    assert {r["url"] for r in unsafe} == {SITE + "/u.jpg"} and {r["level"] for r in unsafe} >= {"image"}
    scores = json.loads(unsafe[0]["scores"])
    assert scores["safety_scorer"] == "opennsfw" and scores["unsafe_score"] >= scores["safety_threshold"] == 0.1
    docs = {d["url"]: d for d in rows(out, "documents")}
    assert [im["url"] for im in docs[url("p7")]["images"]] == [SITE + "/v.jpg"]
    for d in docs.values():
        for im in d["images"]:
            assert 0 <= im["unsafe_score"] < 0.1 and len(im["phash"]) == 16
            assert im["source_inner_offset"] == 0 and im["source_offset"] > 0
    run_json = json.loads((out / "run.json").read_text())
    assert run_json["image_safety"]["scorer"] == "opennsfw" and run_json["image_safety"]["threshold"] == 0.1
    assert NO_SCORER_WARNING not in run_json.get("warnings", [])


def test_without_a_scorer_nothing_is_scored_and_the_run_says_so(archive, tmp_path_factory, capfd):
    out, stats = run(archive, tmp_path_factory, "unscored", **{"safety.image_scorer": "none"})
    assert "image/dropped/unsafe_image" not in stats["counts"]
    docs = {d["url"]: d for d in rows(out, "documents")}
    assert [im["url"] for im in docs[url("p8")]["images"]] == [SITE + "/u.jpg"]
    assert all(im["unsafe_score"] is None for d in docs.values() for im in d["images"])
    run_json = json.loads((out / "run.json").read_text())
    assert run_json["image_safety"] == {"scorer": "none", "warning": NO_SCORER_WARNING}
    assert NO_SCORER_WARNING in run_json["warnings"] and INSTALL_LINE in NO_SCORER_WARNING
    assert f"warning: {NO_SCORER_WARNING}" in capfd.readouterr().err


# -- evaluation images, at the image source ---------------------------------------------------
def test_an_image_of_an_evaluation_set_is_dropped_at_the_source(tmp_path):
    from filters.config import ImageConfig
    from filters.decontaminate import build_index
    from transforms.images import InArchiveImages
    from transforms.records import ImageRecord, ImageRef, Provenance
    c = list(covers().values())
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "eval.jpg").write_bytes(same_picture_resized(c[2]))   # the evaluation copy, resized
    (tmp_path / "eval.jsonl").write_text(json.dumps({"image": "eval.jpg", "caption": "a book"}) + "\n")
    index = build_index([str(tmp_path / "eval.jsonl")], images_root=str(tmp_path / "img"))
    empty = build_index([str(tmp_path / "eval.jsonl")])            # no images root: no image hashes
    assert index.image_hashes.size == 1 and empty.image_hashes.size == 0
    urls = [f"https://books.example/{i}.jpg" for i in range(2)]
    records = [ImageRecord(u, "2024-01-01T00:00:00Z", "image/jpeg", c[2 + i], Provenance("i.warc", 10 * i + 1))
               for i, u in enumerate(urls)]
    refs = [(u, (ImageRef("d"), i + 1)) for i, u in enumerate(urls)]

    def check(eval_index, expected):
        with BeamTestPipeline(options=PipelineOptions(IN_MEMORY)) as p:
            side = None if eval_index is None else beam.pvalue.AsSingleton(p | "Index" >> beam.Create([eval_index]))
            src = InArchiveImages(p | "Records" >> beam.Create(records), ImageConfig(), 1 << 20, eval_index=side)
            results = (p | "Refs" >> beam.Create(refs) | src).results
            assert_that(results | beam.Map(lambda kv: (kv[1].position, str(kv[1].reason),
                                                       kv[1].scores.get("contaminated_by"))), equal_to(expected))

    check(index, [(1, "eval_contaminated", "image"), (2, "None", None)])
    for nothing in (empty, None):                      # an index without images, or none: nothing changes
        check(nothing, [(1, "None", None), (2, "None", None)])
