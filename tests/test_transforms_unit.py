"""The job's transforms one at a time, on Beam's in-memory runner (TestPipeline with
assert_that): pages to candidates, images to verdicts, a document assembled from its
verdicts, and the accounting of outcomes. Small inputs, real pages and images from
../shared/data where one is needed. Reasons are compared by their codes (``str()``)."""

import io
import json
import re
from collections import Counter

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to

from conftest import IN_MEMORY, SHARED, matches, shared_warc
from filters.config import CurationConfig, DocumentConfig, ImageConfig
from transforms.records import Candidate, ImageRecord, ImageRef, ImageResult, Outcome, Page, Provenance

DATE = "2024-01-01T00:00:00Z"


def pipeline():
    return BeamTestPipeline(options=PipelineOptions(IN_MEMORY))


def code(x) -> str:
    """A level, status or reason as the code the outputs write."""
    return str(x)


def ends(o):
    """(level, status, reason, url) of an outcome, as codes."""
    return code(o.level), code(o.status), code(o.reason), o.url


def html_page(name, url, offset):
    return Page(url, DATE, "text/html; charset=utf-8", (SHARED / "html" / name).read_bytes(),
                Provenance("pages.warc", offset))


_covers = None


def covers():
    """The product covers of the books.toscrape archive (real JPEGs, about 100 x 150)."""
    global _covers
    if _covers is None:
        from archives.records import ArchiveRecord, iter_archive
        with open(shared_warc("node-warc__books.toscrape.warc"), "rb") as fh:
            _covers = [r.payload for r in iter_archive(fh, "books")
                       if isinstance(r, ArchiveRecord) and "/media/cache/" in r.target_uri and len(r.payload) > 1000]
        assert len(_covers) >= 8
    return _covers


def tiny_png(side=10) -> bytes:
    from PIL import Image
    buf = io.BytesIO()
    Image.new("RGB", (side, side), (200, 30, 30)).save(buf, format="PNG")
    return buf.getvalue()


# -- pages -> candidates ---------------------------------------------------------------------
NATURE, PCGAMER = "https://www.nature.com/articles/x", "https://www.pcgamer.com/skyrim"
ADAC, BLOG, BIG = "https://www.adac.de/kindersitze", "https://blog.python.org/post", "https://x.example/big"


def _pages():
    blog = (SHARED / "html" / "trafilatura__blog.python.org.html").read_text("utf-8")
    imageless = re.sub(r"<img\b[^>]*>", "", blog, flags=re.I)
    assert "<img" not in imageless.lower()
    return [html_page("trafilatura__nature.com.telescope.html", NATURE, 0),       # en, no image in its content
            html_page("trafilatura__pcgamer.com.skyrim.html", PCGAMER, 1000),     # en, images in the text
            html_page("trafilatura__adac.de.kindersitze.html", ADAC, 2000),       # de
            Page(BLOG, DATE, "text/html; charset=utf-8", imageless.encode("utf-8"), Provenance("pages.warc", 3000)),
            Page(BIG, DATE, "text/html", b"<p>" + b"a" * (5 * 1024 * 1024), Provenance("pages.warc", 4000))]


def test_pages_to_candidates_decides_each_output_once_per_page():
    from transforms.pages import PagesToCandidates

    def documents(docs):
        assert [d.url for d in docs] == [PCGAMER]
        (d,) = docs
        kinds = [i["type"] for i in d.items]
        assert kinds.count("image") >= 3 and kinds.count("text") > kinds.count("image")
        assert all(i["url"].startswith("https://") for i in d.items if i["type"] == "image")
        assert d.scores["language"] == "en" and d.scores["language_score"] >= 0.65
        assert d.provenance.offset == 1000 and len(d.doc_id) == 32

    def texts(docs):
        assert sorted(d.url for d in docs) == sorted([NATURE, PCGAMER, BLOG])
        assert all(i["type"] == "text" for d in docs for i in d.items)

    def pairs(found):
        assert {p.page_url for p in found} <= {NATURE, PCGAMER} and found
        fast = [p for p in found if p.caption == "The giant FAST project."]
        assert len(fast) == 1 and fast[0].url.endswith("d41586-019-02790-3_17178384.jpg")
        assert all(p.url.startswith(("http://", "https://")) and p.caption for p in found)
        assert len({(p.url, p.caption.lower()) for p in found if p.page_url == NATURE}) == \
            sum(p.page_url == NATURE for p in found)          # no pair twice in a page

    def outcomes(tagged):
        found = [x for tag, x in tagged if tag == "outcome"]
        n_pairs = sum(1 for tag, _ in tagged if tag == "pair")
        rec = {url: reason for level, status, reason, url in map(ends, found) if level == "record"}
        assert rec == {NATURE: "no_images_in_content", ADAC: "non_english", BLOG: "no_img_tag", BIG: "too_large"}
        text_ends = Counter((url, status, reason) for level, status, reason, url in map(ends, found)
                            if level == "text" and status != "entered")
        assert text_ends == Counter({(ADAC, "dropped", "non_english"): 1, (BIG, "dropped", "too_large"): 1})
        entered = Counter(url for level, status, _, url in map(ends, found) if (level, status) == ("text", "entered"))
        assert entered == Counter({u: 1 for u in (NATURE, PCGAMER, ADAC, BLOG, BIG)})
        # every <img> of an English page entering the pair funnel ends once: a candidate or a drop
        pair_in = sum(1 for o in found if (code(o.level), code(o.status)) == ("pair", "entered"))
        pair_drops = Counter(code(o.reason) for o in found if code(o.level) == "pair" and code(o.status) == "dropped")
        assert pair_in == sum(pair_drops.values()) + n_pairs
        assert {"no_caption", "furniture_url", "duplicate_in_page"} <= set(pair_drops)
        assert all(o.offset in (0, 1000) for o in found if code(o.level) == "pair")

    with pipeline() as p:
        c = p | beam.Create(_pages()) | PagesToCandidates(CurationConfig())
        assert_that(c.documents, matches(documents), label="documents")
        assert_that(c.texts, matches(texts), label="texts")
        assert_that(c.pairs, matches(pairs), label="pairs")
        # (image url, page url) of every image in the content of an English page with images
        assert_that(c.sightings | beam.Map(lambda s: s[1]) | "PagesWithSightings" >> beam.Distinct(),
                    equal_to([PCGAMER]), label="sightings")
        everything = c.outcomes | "AllOutcomes" >> beam.Flatten() | "Outcome" >> beam.Map(lambda o: ("outcome", o))
        assert_that((everything, c.pairs | "Pair" >> beam.Map(lambda x: ("pair", x))) | "WithPairs" >> beam.Flatten(),
                    matches(outcomes), label="outcomes")


def test_pages_with_the_text_and_pair_outputs_off():
    from transforms.pages import PagesToCandidates
    cfg = CurationConfig().override({"output.text": False, "output.pairs": False})
    with pipeline() as p:
        c = p | beam.Create(_pages()) | PagesToCandidates(cfg)
        assert c.texts is None and c.pairs is None
        assert_that(c.documents | beam.Map(lambda d: d.url), equal_to([PCGAMER]), label="documents")
        assert_that(c.outcomes | beam.Flatten() | beam.Map(ends),
                    equal_to([("record", "dropped", r, u) for u, r in
                              ((NATURE, "no_images_in_content"), (ADAC, "non_english"), (BLOG, "no_img_tag"),
                               (BIG, "too_large"))]), label="outcomes")


# -- images: references -> one verdict each -------------------------------------------------
A, B, C = "https://books.example/a.jpg", "https://books.example/b.png", "https://books.example/missing.jpg"


def _candidate(doc_id, urls, offset=0):
    items = [{"type": "text", "text": "Some words about the pictures."}]
    items += [{"type": "image", "url": u, "alt": "", "title": ""} for u in urls]
    return Candidate(doc_id, f"https://books.example/{doc_id}", DATE, "t", Provenance("pages.warc", offset), items)


def _records():
    return [ImageRecord(A, DATE, "image/jpeg", covers()[0], Provenance("images.warc", 10)),
            ImageRecord(B, DATE, "image/png", tiny_png(), Provenance("images.warc", 20)),
            ImageRecord("https://books.example/unasked.jpg", DATE, "image/jpeg", covers()[1],
                        Provenance("images.warc", 30))]


def _verdicts(results):
    return sorted((ref.page, res.position, code(res.reason) if res.reason is not None else None)
                  for ref, res in results)


def test_each_reference_gets_one_verdict_and_each_image_is_decoded_once():
    from transforms.accounting import OUTCOMES
    from transforms.images import SETTLED, InArchiveImages, ListImageReferences
    cfg = CurationConfig()
    doc = _candidate("d1", [A, A, "data:image/png;base64,AAAA", B, C, "https://books.example/site-logo.png"])
    other = _candidate("d2", [A], offset=500)
    with pipeline() as p:
        listed = (p | "Candidates" >> beam.Create([doc, other])
                  | beam.ParDo(ListImageReferences(cfg.documents.max_image_references,
                                                   cfg.images.furniture_url_words, cfg.captions))
                  .with_outputs(OUTCOMES, SETTLED, main="refs"))
        records = p | "Records" >> beam.Create(_records())
        judged = listed.refs | InArchiveImages(records, cfg.images, cfg.records.max_image_bytes)
        results = (judged.results, listed[SETTLED]) | beam.Flatten()
        assert_that(results | beam.combiners.ToList() | beam.Map(_verdicts), equal_to([[
            ("d1", 1, None), ("d1", 2, "duplicate_in_document"), ("d1", 3, "unsupported_url"),
            ("d1", 4, "too_small"), ("d1", 5, "not_in_archive"), ("d1", 6, "furniture_url"), ("d2", 1, None)]]),
            label="verdicts")
        assert_that(listed[OUTCOMES] | beam.Map(ends), equal_to(
            [("image", "entered", "", u) for u in (A, A, "data:image/png;base64,AAAA", B, C,
                                                   "https://books.example/site-logo.png", A)]), label="entered")
        # A serves two documents from one decode; B is decoded (and too small); the unasked record never is
        assert_that(judged.events | beam.Map(lambda e: (code(e.name), e.url)),
                    equal_to([("decoded", A), ("decoded", B)]), label="decodes")

        def kept_once(results):
            stored = [res.stored for _, res in results if res.reason is None]
            assert len(stored) == 2 and stored[0].sha256 == stored[1].sha256
            assert max(stored[0].width, stored[0].height) <= cfg.images.store_max_side
            assert all(res.source.offset == 10 for _, res in results if res.reason is None)
        assert_that(judged.results, matches(kept_once), label="kept")


def test_an_image_used_by_more_documents_than_allowed_is_settled_without_a_decode():
    from transforms.images import FetchImages, InArchiveImages
    cfg = ImageConfig()
    refs = [(A, (ImageRef(f"d{i}"), 1)) for i in range(3)] + [(B, (ImageRef("d0"), 2))]
    with pipeline() as p:
        records = p | "Records" >> beam.Create(_records())
        out = (p | "Refs" >> beam.Create(refs)
               | FetchImages(InArchiveImages(records, cfg, 1 << 20), max_repeats=2))
        assert_that(out.results | beam.combiners.ToList() | beam.Map(_verdicts), equal_to([[
            ("d0", 1, "repeated_image"), ("d0", 2, "too_small"), ("d1", 1, "repeated_image"),
            ("d2", 1, "repeated_image")]]), label="verdicts")
        assert_that(out.events | beam.Map(lambda e: (code(e.name), e.url)), equal_to([("decoded", B)]),
                    label="decodes")


# -- a document assembled from its image verdicts ---------------------------------------------
def _stored(n):
    from filters.images import judge_image
    out = []
    for data in covers()[:n]:
        verdict, stored = judge_image(data, ImageConfig())
        assert verdict.keep, verdict
        out.append(stored)
    return out


def _assemble(p, elements, cfg):
    from transforms.accounting import OUTCOMES
    from transforms.assemble import AssembleDocument
    return (p | beam.Create(elements)
            | beam.ParDo(AssembleDocument(cfg)).with_outputs(OUTCOMES, main="documents"))


def test_assemble_keeps_usable_images_in_reading_order_and_says_why_others_went():
    from contract.reasons import Reason
    stored = _stored(7)
    src = Provenance("images.warc", 99)
    ok = lambda pos, k: ImageResult(pos, None, stored[k], src)              # noqa: E731
    urls = [f"https://books.example/{k}.jpg" for k in range(8)]
    two = _candidate("two", urls[:2])                    # items: text, image, image
    six = _candidate("six", urls[:7])                    # seven image items: one a duplicate of bytes
    small = _candidate("small", urls[:1])
    elements = [
        ("two", {"doc": [two], "images": [ok(1, 0), ok(2, 1)]}),
        ("six", {"doc": [six], "images": [ok(i + 1, i) for i in range(6)] + [ok(7, 0)]}),
        ("small", {"doc": [small], "images": [ImageResult(1, Reason.TOO_SMALL, None, src, {"width": 10})]}),
    ]

    def documents(docs):
        by_id = {d["doc_id"]: d for d in docs}
        assert set(by_id) == {"two", "six"}
        d = by_id["two"]
        assert d["num_images"] == 2 and [i["image"] for i in d["items"] if i["type"] == "image"] == [0, 1]
        assert [im["url"] for im in d["images"]] == urls[:2] and d["images"][0]["sha256"] == stored[0].sha256
        assert d["images"][1]["source_offset"] == 99 and d["url"] == "https://books.example/two"
        assert by_id["six"]["num_images"] == 5 and [im["url"] for im in by_id["six"]["images"]] == urls[:5]

    def outcomes(found):
        got = Counter((o.doc_id, code(o.level), code(o.status), code(o.reason)) for o in found)
        assert got == Counter({
            ("two", "image", "kept", ""): 2, ("two", "record", "kept", ""): 1,
            ("six", "image", "kept", ""): 5, ("six", "image", "dropped", "too_many_images"): 1,
            ("six", "image", "dropped", "duplicate_in_document"): 1, ("six", "record", "kept", ""): 1,
            ("small", "image", "dropped", "too_small"): 1, ("small", "record", "dropped", "images_too_small"): 1,
        }), got
        (small_end,) = [o for o in found if o.doc_id == "small" and code(o.level) == "record"]
        assert json.loads(small_end.scores) == {"too_small": 1} and small_end.snippet

    with pipeline() as p:
        out = _assemble(p, elements, DocumentConfig(drop_single_image_fraction=0.0))
        assert_that(out.documents, matches(documents), label="documents")
        assert_that(out.outcomes, matches(outcomes), label="outcomes")


def test_assemble_drops_single_image_documents_by_the_seeded_draw():
    stored = _stored(1)
    elements = [(f"doc{i}", {"doc": [_candidate(f"doc{i}", ["https://books.example/0.jpg"])],
                             "images": [ImageResult(1, None, stored[0], Provenance("images.warc", 1))]})
                for i in range(2)]
    with pipeline() as p:
        out = _assemble(p, elements, DocumentConfig(drop_single_image_fraction=1.0))
        assert_that(out.documents, equal_to([]), label="documents")
        assert_that(out.outcomes | beam.Map(lambda o: (o.doc_id, code(o.level), code(o.status), code(o.reason))),
                    equal_to([(f"doc{i}", level, "dropped", reason) for i in range(2) for level, reason in
                              (("image", "document_dropped"), ("record", "single_image_dropped"))]),
                    label="outcomes")


# -- accounting ------------------------------------------------------------------------------
def _outcomes():
    from contract.reasons import DROPPED, ENTERED, ERROR, IMAGE, KEPT, READ, RECORD, Reason
    at = Provenance("a.warc", 0)
    one = lambda off: Provenance("a.warc", off)                             # noqa: E731
    stage1 = [Outcome.at(RECORD, READ, one(i), f"https://s.example/{i}") for i in range(5)]
    stage1 += [Outcome.at(RECORD, DROPPED, one(1), "https://s.example/1", Reason.NON_ENGLISH,
                          scores={"en_score": 0.1}),
               Outcome.at(RECORD, DROPPED, one(2), "https://s.example/2", Reason.NON_ENGLISH),
               Outcome.at(RECORD, ERROR, one(3), "https://s.example/3", Reason.UNDECODABLE_HTML, message="bad bytes")]
    stage2 = [Outcome.at(RECORD, KEPT, one(0), "https://s.example/0", doc_id="d0"),
              # a duplicate of d4, whose copy was dropped later for its images
              Outcome.at(RECORD, DROPPED, one(5), "https://s.example/0?dup", Reason.DUPLICATE_URL, doc_id="d5",
                         scores={"survivor_doc_id": "d4", "survivor_url": "https://s.example/4"}),
              Outcome.at(RECORD, DROPPED, one(4), "https://s.example/4", Reason.ALL_IMAGES.of("too_small"),
                         doc_id="d4"),
              Outcome.at(IMAGE, ENTERED, at, "https://s.example/i.jpg"),
              Outcome.at(IMAGE, KEPT, at, "https://s.example/i.jpg", doc_id="d0")]
    return stage1, stage2


def test_account_outcomes_counts_samples_errors_and_the_trail():
    from transforms.accounting import AccountOutcomes

    def rendered(counts):
        return {"/".join(code(part) for part in key if code(part)): n for key, n in counts.items()}

    def trail(rows):
        assert len(rows) == 7                       # every end; read and entered events have none
        assert len({r["outcome_id"] for r in rows}) == 7
        by_url = {(r["level"], r["url"]): r for r in rows}
        dup = by_url[("record", "https://s.example/0?dup")]
        assert (dup["survivor_doc_id"], dup["survivor_url"]) == ("d4", "https://s.example/4")
        assert (dup["survivor_status"], dup["survivor_reason"]) == ("dropped", "images_too_small")
        assert by_url[("record", "https://s.example/1")]["stage"] and by_url[("image", "https://s.example/i.jpg")][
            "status"] == "kept"

    with pipeline() as p:
        stage1, stage2 = _outcomes()
        parts = (p | "Stage1" >> beam.Create(stage1), (p | "Stage2" >> beam.Create(stage2),))
        acc = parts | AccountOutcomes(n=1, seed=7, trail=True)
        assert_that(acc.counts | beam.Map(rendered), equal_to([{
            "record/read": 5, "record/dropped/non_english": 2, "record/error/undecodable_html": 1,
            "record/kept": 1, "record/dropped/duplicate_url": 1, "record/dropped/images_too_small": 1,
            "image/entered": 1, "image/kept": 1, "dedup/survivor_dropped/images_too_small": 1}]), label="counts")
        # one sample per (level, status, reason) of a reject, whichever stage made it
        assert_that(acc.samples | beam.Map(lambda r: (r["level"], r["status"], r["reason"])), equal_to([
            ("record", "dropped", "non_english"), ("record", "error", "undecodable_html"),
            ("record", "dropped", "duplicate_url"), ("record", "dropped", "images_too_small")]), label="samples")
        assert_that(acc.errors | beam.Map(json.loads), equal_to([{
            "level": "record", "kind": "undecodable_html", "file": "a.warc", "offset": 3, "inner_offset": 0,
            "url": "https://s.example/3", "message": "bad bytes"}]), label="errors")
        assert_that(acc.trail, matches(trail), label="trail")


def test_account_outcomes_samples_are_the_same_whatever_the_order():
    """The sample of a reason is the reject with the smallest seeded hash, however
    the outcomes arrive."""
    from transforms.accounting import AccountOutcomes, sample_key
    stage1, stage2 = _outcomes()
    rejects = [o for o in stage1 + stage2 if o.is_reject]
    expected = {}
    for o in rejects:
        k = sample_key(o, 7)
        if code(o.reason) not in expected or k < expected[code(o.reason)][1]:
            expected[code(o.reason)] = (o.url, k)
    assert len(expected) == 4
    for order in (stage1 + stage2, list(reversed(stage1 + stage2))):
        with pipeline() as p:
            acc = p | beam.Create(order) | AccountOutcomes(n=1, seed=7, trail=False)
            assert acc.trail is None
            assert_that(acc.samples | beam.Map(lambda r: (r["reason"], (r["url"], r["sample_key"]))),
                        equal_to(list(expected.items())), label="samples")
