"""Deduplication: URLs, exact text, near-duplicates with MinHash LSH, repeated images."""

import io
import json
import random
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import IN_MEMORY, SHARED, read_docs, run_job, shared_warc
from filters.dedup import (MinHasher, band_keys, capture_time, collision_probability, exact_text_hash, jaccard,
                           shingle_hash32, shingle_hashes, word_ngrams)
from filters.urls import normalize_url, url_key
from warcgen import http_response, write_warc


# -- pure logic ------------------------------------------------------------------------
def test_minhash_signatures_equal_datasketch():
    """Ours equals datasketch's classic MinHash given the same shingles and hash function."""
    datasketch = pytest.importorskip("datasketch")
    text = (SHARED / "html" / "trafilatura__nature.com.telescope.html").read_text(errors="replace")
    shingles = word_ngrams(text[:20000], 5)
    hasher = MinHasher(112, seed=1)
    # datasketch >= 2.0 names the classic scheme "legacy"; before 2.0 it was the only one.
    try:
        ref = datasketch.MinHash(num_perm=112, seed=1, scheme="legacy", hashfunc=shingle_hash32)
    except TypeError:
        ref = datasketch.MinHash(num_perm=112, seed=1, hashfunc=shingle_hash32)
    ref.update_batch(set(shingles))
    assert np.array_equal(hasher.of_text(text[:20000], 5), ref.hashvalues)
    assert np.array_equal(hasher.signature(shingles), ref.hashvalues)


def test_vectorised_shingle_hashes_equal_hashing_each_shingle():
    """The n-grams read from the code points in one pass are normalize_text's words,
    whatever the script, punctuation and spacing: on every page of the shared data."""
    from filters.html import decode_html, extract_content
    texts = ["", "   ", "one", "two words", "Ünïcode — «quotes» and  spaces\t\nhere: ça va? 日本語 テキスト",
             "under_score a_b ½ ² x\u0301y ﬁne ǅungla"]
    for path in sorted((SHARED / "html").glob("*.html"))[:12]:
        html, _ = decode_html(path.read_bytes())
        texts.append(" ".join(i.text for i in extract_content(html, "https://example.org/").items if i.kind == "text"))
        texts.append(html[:30000])            # markup and scripts: every kind of character
    for text in texts:
        for n in (1, 5):
            expected = [shingle_hash32(s) for s in word_ngrams(text, n)]
            assert shingle_hashes(text, n).tolist() == expected, (text[:80], n)


def test_url_key_and_capture_time():
    assert url_key("HTTP://Example.COM:80/a?b=1#frag") == "http://example.com/a?b=1"
    assert url_key("https://example.com") == "https://example.com/"
    assert url_key("https://example.com:8443/x") == "https://example.com:8443/x"
    # one normaliser: an IRI and its percent-encoded spelling are one URL, for dedup and the image join alike
    assert url_key("https://Example.com/caf\u00e9 menu") == url_key("https://example.com:443/caf%C3%A9%20menu")
    assert url_key("https://example.com/caf\u00e9") == normalize_url("https://example.com/caf\u00e9")
    assert capture_time("2008-04-30T20:48:25Z") == capture_time("20080430204825")
    assert capture_time("2019-08-15T01:02") < capture_time("2019-08-15T01:03:00Z")
    assert capture_time("garbage") == "0" * 20


def test_exact_hash_ignores_case_punctuation_and_spacing():
    assert exact_text_hash(["Hello,  World!", "Second."]) == exact_text_hash(["hello world", "second"])
    assert exact_text_hash(["Hello world"]) != exact_text_hash(["Hello there world"])


def make_pair(rng, similarity, size=200):
    """Two shingle sets of ``size`` elements with Jaccard ``similarity`` (to rounding)."""
    inter = round(2 * size * similarity / (1 + similarity))
    common = [rng.getrandbits(64).to_bytes(8, "big") for _ in range(inter)]
    a = common + [rng.getrandbits(64).to_bytes(8, "big") for _ in range(size - inter)]
    b = common + [rng.getrandbits(64).to_bytes(8, "big") for _ in range(size - inter)]
    return a, b


def test_lsh_precision_recall_match_theory():
    """14 bands x 8 rows against exact Jaccard on generated pairs: the measured catch
    rate follows 1 - (1 - s^8)^14 at every similarity."""
    rng = random.Random(7)
    hasher = MinHasher(112, seed=1)
    for s in (0.3, 0.5, 0.6, 0.7, 0.75, 0.8, 0.9, 0.95):
        caught = 0
        n = 150
        for _ in range(n):
            a, b = make_pair(rng, s)
            ka = set(band_keys(hasher.signature(a), 14, 8))
            kb = set(band_keys(hasher.signature(b), 14, 8))
            caught += bool(ka & kb)
        measured = caught / n
        expected = collision_probability(jaccard(a, b), 14, 8)
        assert abs(measured - expected) < 0.12, (s, measured, expected)
    assert collision_probability(0.8, 14, 8) == pytest.approx(0.92, abs=0.01)


# -- the job on real data ----------------------------------------------------------------
def test_mona_lisa_captured_twice_gives_one_document(mona_run):
    out, stats = mona_run           # the job over the Mona Lisa archive, default config (conftest)
    docs = read_docs(out)
    assert [d["url"] for d in docs] == ["http://en.wikipedia.org/wiki/Mona_Lisa"]
    assert stats["records"]["dropped"]["duplicate_url"] == 1
    audit = [json.loads(l) for f in sorted((out / "duplicates").glob("*.jsonl"))
             for l in f.read_text().splitlines()]
    docs_audit = [a for a in audit if a["output"] == "documents"]
    assert [a["reason"] for a in docs_audit] == ["duplicate_url"]
    assert docs_audit[0]["survivor_doc_id"] == docs[0]["doc_id"]
    # the text output is deduplicated on its own, with the same rule
    assert [a["reason"] for a in audit if a["output"] == "text"] == ["duplicate_url"]
    assert stats["text_documents"]["dropped"]["duplicate_url"] == 1


def test_same_crawl_as_warc_and_arc_gives_the_documents_of_one(tmp_path):
    both = run_job([shared_warc("aut__example.warc.gz"), shared_warc("aut__example.arc.gz")], tmp_path / "both",
                   beam_args=IN_MEMORY)
    arc = run_job([shared_warc("aut__example.arc.gz")], tmp_path / "arc", beam_args=IN_MEMORY)
    assert [d["doc_id"] for d in read_docs(tmp_path / "both")] == [d["doc_id"] for d in read_docs(tmp_path / "arc")]
    assert both["documents"] == arc["documents"]
    assert both["records"]["dropped"]["duplicate_url"] >= arc["records"]["kept"]


def article(name):
    """A real article, with a picture placed after its first paragraph (these pages'
    own images sit outside the main content, and a candidate needs one)."""
    import re
    html = (SHARED / "html" / name).read_text(encoding="utf-8")
    i = re.search(r"<p>[^<]{200,}</p>", html).end()
    return (html[:i] + '<p><img src="/pictures/figure-1.jpg" alt="A figure"> Figure 1.</p>' + html[i:]).encode()


def edited(html: bytes) -> bytes:
    """The same article with three of its paragraphs rewritten."""
    import re
    text = html.decode("utf-8")
    paragraphs = [m for m in re.finditer(r"<p>([^<]{200,})</p>", text)]
    assert len(paragraphs) >= 8
    for n, m in enumerate(reversed([paragraphs[2], paragraphs[5], paragraphs[7]])):
        new = (f"<p>This paragraph was rewritten by an editor (change {n}) and now says something else "
               f"entirely about the weather, the trains and the price of bread in the city.</p>")
        text = text[:m.start()] + new + text[m.end():]
    return text.encode("utf-8")


def near_dup_warc(path, gzip_members=True):
    colonial = article("trafilatura__dw.com.colonial.html")
    records = [
        http_response("https://www.dw.com/en/colonial", colonial, "text/html; charset=utf-8"),
        http_response("https://www.dw.com/en/colonial-edited", edited(colonial), "text/html; charset=utf-8"),
        http_response("https://www.dw.com/en/uncork", article("trafilatura__dw.com.uncork.html"),
                      "text/html; charset=utf-8"),
        http_response("https://blog.python.org/2016/12/python-360",
                      (SHARED / "html" / "trafilatura__blog.python.org.html").read_bytes(),
                      "text/html"),
    ]
    return records


def near_dup_verdicts(out_dir, output="documents"):
    return sorted((a["url"], a["survivor_url"]) for f in sorted((Path(out_dir) / "duplicates").glob("*.jsonl"))
                  for a in map(json.loads, f.read_text().splitlines())
                  if a["reason"] == "near_duplicate" and a["output"] == output)


def test_edited_page_is_a_near_duplicate_and_another_page_of_the_site_is_not(tmp_path):
    src = write_warc(tmp_path / "pages.warc.gz", near_dup_warc(tmp_path))
    stats = run_job([src], tmp_path / "out", beam_args=IN_MEMORY)
    assert near_dup_verdicts(tmp_path / "out") == [
        ("https://www.dw.com/en/colonial-edited", "https://www.dw.com/en/colonial")]
    assert stats["records"]["dropped"]["near_duplicate"] == 1
    # the text corpus is deduplicated the same way
    assert near_dup_verdicts(tmp_path / "out", "text") == near_dup_verdicts(tmp_path / "out")
    assert stats["text_documents"]["dropped"]["near_duplicate"] == 1
    # The two dw.com articles really are different, and the edit really is small.
    from filters.html import decode_html, extract_content
    texts = {}
    for name, html in [("a", article("trafilatura__dw.com.colonial.html")),
                       ("b", edited(article("trafilatura__dw.com.colonial.html"))),
                       ("c", article("trafilatura__dw.com.uncork.html"))]:
        c = extract_content(decode_html(html)[0], "https://www.dw.com/")
        texts[name] = word_ngrams(" ".join(i.text for i in c.items if i.kind == "text"), 5)
    assert 0.6 < jaccard(texts["a"], texts["b"]) < 0.99
    assert jaccard(texts["a"], texts["c"]) < 0.05


def test_near_duplicate_clusters_do_not_depend_on_input_split_or_workers(tmp_path):
    records = near_dup_warc(tmp_path)
    one = write_warc(tmp_path / "one.warc.gz", records)
    many = [write_warc(tmp_path / f"split-{i}.warc", [r], gzip_members=False) for i, r in enumerate(records)]
    run_job([one], tmp_path / "one", beam_args=IN_MEMORY)
    run_job(many, tmp_path / "many", num_workers=2)
    expected = [("https://www.dw.com/en/colonial-edited", "https://www.dw.com/en/colonial")]
    assert near_dup_verdicts(tmp_path / "one") == near_dup_verdicts(tmp_path / "many") == expected


def test_connected_components_join_chains(tmp_path):
    """A~B and B~C but not A~C: one cluster, one survivor (needs the CC rounds)."""
    import apache_beam as beam
    from apache_beam.testing.test_pipeline import TestPipeline
    from apache_beam.testing.util import assert_that, equal_to
    from transforms.dedup import ConnectedComponents

    edges = [("b", "c"), ("c", "d"), ("d", "e"), ("e", "f"), ("a", "f"), ("x", "y")]
    with TestPipeline(options=beam.options.pipeline_options.PipelineOptions(IN_MEMORY)) as p:
        labels = p | beam.Create(edges) | ConnectedComponents(rounds=4)
        assert_that(labels, equal_to([(n, "a") for n in "abcdef"] + [("x", "x"), ("y", "x")]))


def png(color_seed: int) -> bytes:
    img = Image.effect_noise((96, 96), 60 + color_seed).convert("RGB")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_images_repeated_across_the_corpus_are_removed(tmp_path):
    """The same bytes on 12 pages under 12 URLs, and one URL on 12 pages, are site
    furniture (named so that no URL or alt-text rule finds them first)."""
    from warcgen import article_with_images
    header = png(0)
    records = []
    for i in range(12):
        page = article_with_images([f"/art/header-{i}.png", "/art/shared.png", f"/art/own-{i}.png"],
                                   alt="Illustration number {n} of the story").decode("utf-8")
        # one sentence of its own in the first paragraph: twelve pages, not twelve copies
        page = re.sub(r"<p>([^<]{80,})</p>", lambda m: f"<p>Edition {i} for reader group {i * 7 + 3}. "
                      f"{m.group(1)}</p>", page, count=1)
        records.append(http_response(f"http://site.example/story-{i}", page.encode(), "text/html"))
        records.append(http_response(f"http://site.example/art/header-{i}.png", header, "image/png"))
        records.append(http_response(f"http://site.example/art/own-{i}.png", png(i + 1), "image/png"))
    records.append(http_response("http://site.example/art/shared.png", png(99), "image/png"))
    src = write_warc(tmp_path / "logos.warc.gz", records)
    stats = run_job([src], tmp_path / "out", beam_args=IN_MEMORY, overrides={"dedup.near": False})
    assert stats["images"]["dropped"]["repeated_image"] == 24  # 12 same-bytes logos + 12 uses of one URL
    docs = read_docs(tmp_path / "out")
    assert docs and all([i["url"].split("/")[-1].startswith("own-") for i in d["images"]] for d in docs)
    # With the rule off the logos come back.
    off = run_job([src], tmp_path / "off", beam_args=IN_MEMORY,
                  overrides={"dedup.near": False, "dedup.image_max_repeats": 0})
    assert "repeated_image" not in off["images"]["dropped"]


def _components_with_distinct_rounds(edges, rounds):
    """The rounds as the job ran them before (a Distinct of the edges after each round),
    in plain Python: the reference the leaner graph must match."""
    from collections import defaultdict

    def grouped(pairs):
        out = defaultdict(list)
        for k, v in pairs:
            out[k].append(v)
        return out.items()

    current = set(edges)
    for _ in range(rounds):
        large = []
        for u, nbrs in grouped([e for a, b in current for e in ((a, b), (b, a))]):
            nbrs = set(nbrs)
            m = min(nbrs | {u})
            large += [(v, m) for v in nbrs if v > u]
        small = set()
        for u, nbrs in grouped([(max(e), min(e)) for e in large]):
            smaller = {v for v in nbrs if v <= u}
            m = min(smaller | {u})
            small |= {(v, m) for v in smaller | {u} if v != m}
        current = small
    return sorted((u, min(set(nbrs) | {u}))
                  for u, nbrs in grouped([e for a, b in current for e in ((a, b), (b, a))]))


def test_connected_components_without_distinct_rounds_give_the_same_labels():
    """Duplicate edges and too few rounds (labels not yet settled) included: the rounds
    without a Distinct of their own label every node as the rounds with one did."""
    import random

    import apache_beam as beam
    from apache_beam.testing.test_pipeline import TestPipeline
    from apache_beam.testing.util import assert_that, equal_to
    from transforms.dedup import ConnectedComponents

    rng = random.Random(11)
    edges, expected = [], {1: [], 3: []}
    for g in range(60):                     # disjoint graphs: nodes named by their graph
        nodes = [f"g{g:02d}n{rng.randint(0, 40):02d}" for _ in range(rng.randint(2, 14))]
        graph = [(rng.choice(nodes), rng.choice(nodes)) for _ in range(rng.randint(1, 20))]
        graph = [(a, b) for a, b in graph if a != b]
        edges += graph + graph[: rng.randint(0, len(graph))]          # some edges twice
        for rounds in expected:
            expected[rounds] += _components_with_distinct_rounds(graph, rounds)
    with TestPipeline(options=beam.options.pipeline_options.PipelineOptions(IN_MEMORY)) as p:
        for rounds, want in expected.items():
            got = p | f"Edges{rounds}" >> beam.Create(edges) | f"Components{rounds}" >> ConnectedComponents(rounds)
            assert_that(got, equal_to(want), label=f"Check{rounds}")
