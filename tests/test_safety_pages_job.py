"""Safe to publish, the page side, through a whole job: opt-outs stated by the page
(response headers and <meta>), blocked sites, personal data and evaluation leaks, on
real articles of ../shared/data/html with hand-built headers and metas."""

import json
import re

import pytest

from conftest import SHARED, read_docs, run_job
from warcgen import article_with_images, http_response, write_warc

LONG_CAPTION = ("A red double decker bus drives past the old stone clock tower while tourists wait "
                "at the crossing in the rain")
SHORT_CAPTION = "Two brown dogs chase a yellow frisbee across the park"        # 10 words


def article(name: str) -> str:
    return (SHARED / "html" / f"trafilatura__{name}.html").read_text(encoding="utf-8")


def with_paragraph(html: str, text: str) -> str:
    """``text`` as a paragraph right after the article's first long paragraph."""
    m = re.search(r"<p>[^<]{80,}</p>", html)
    assert m, "no long paragraph to follow"
    return html[:m.end()] + f"<p>{text}</p>" + html[m.end():]


def with_meta(html: str, name: str, content: str) -> str:
    return re.sub(r"<head([^>]*)>", lambda m: f'<head{m.group(1)}><meta name="{name}" content="{content}">', html,
                  count=1, flags=re.I)


def page(url: str, html: str, headers=()):
    return http_response(url, html.encode("utf-8"), "text/html; charset=utf-8", headers=headers)


@pytest.fixture(scope="module")
def safety_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("safety")
    quote12 = " ".join(LONG_CAPTION.split()[2:14])
    records = [
        page("https://one.example.com/python", article("blog.python.org")),                        # control
        page("https://two.example.com/noai", article("caktusgroup.com.django"), [("X-Robots-Tag", "noai")]),
        page("https://two.example.com/meta-noai", with_meta(article("github.blog.spiceland"), "robots", "noai, noimageai")),
        page("https://two.example.com/tdm-meta", with_meta(article("knowtechie.com.rally"), "tdm-reservation", "1")),
        page("https://two.example.com/tdm-header", article("lemire.me.json"), [("tdm-reservation", "1")]),
        page("https://two.example.com/otherbot", article("nature.com.telescope"),
             [("X-Robots-Tag", "otherbot: noai")]),                                                    # not us: kept
        page("https://porn.example.com/gallery", article("pcgamer.com.skyrim")),                     # banned word
        page("https://blocked.example.org/page", article("pluralsight.com.python")),                 # user list
        page("https://three.example.com/contact", with_paragraph(
            article("mozilla.org.firefox.developer"), "For tips about this story, contact Tatyana@citylimits.org today.")),
        page("https://four.example.com/long", with_paragraph(
            article("mercurynews.com.2023.01.16.letters-1119"), f"The photo caption said: {LONG_CAPTION}.")),
        page("https://four.example.com/short", with_paragraph(
            article("dw.com.uncork"), f"Under the picture: {SHORT_CAPTION}.")),
        page("https://four.example.com/twelve", with_paragraph(
            article("dw.com.colonial"), f"Only a part of it: {quote12} and nothing more.")),
        # its text is kept, none of its images is used (documents and pairs)
        page("https://five.example.com/noimageai", with_meta(article_with_images(
            [f"https://img.example.com/harbour-{n}.jpg" for n in range(4)], name="trafilatura__luxuriousmagazine.com.polo.html",
            alt="The old harbour of the town at sunset, photo {n}").decode("utf-8"), "robots", "noimageai")),
        # images on a blocked site are not fetched
        page("https://six.example.com/gallery", article_with_images(
            ["https://porn.example.com/a.jpg", "https://cdn.example.com/b.jpg"], name="trafilatura__github.blog.spiceland.html",
            alt="Cyclists on the path along the river, photo {n}").decode("utf-8")),
    ]
    warc = write_warc(d / "safety.warc.gz", records)
    block = d / "block.txt"
    block.write_text("# our own list\nblocked.example.org\n")
    evalset = d / "dataset_coco.json"
    evalset.write_text(json.dumps({"images": [
        {"split": "test", "filepath": "val2014", "filename": "a.jpg", "cocoid": 1,
         "sentences": [{"raw": LONG_CAPTION}, {"raw": SHORT_CAPTION}]}]}))
    out = d / "run"
    stats = run_job([warc], out, overrides={"safety.block_domains_file": str(block),
                                            "safety.decontaminate": [str(evalset)]})
    return out, stats


def text_rows(out):
    import pyarrow.parquet as pq
    return [r for f in sorted((out / "text").glob("*.parquet")) for r in pq.read_table(f).to_pylist()]


def test_every_funnel_balances(safety_run):
    _, stats = safety_run
    for block in ("records", "images", "text_documents", "pairs"):
        assert stats[block]["balanced"], (block, stats[block])


def test_pages_that_opt_out_yield_nothing(safety_run):
    out, stats = safety_run
    assert stats["records"]["dropped"].get("opted_out_page") == 4
    assert stats["text_documents"]["dropped"].get("opted_out_page") == 4
    urls = {r["url"] for r in text_rows(out)} | {d["url"] for d in read_docs(out)}
    assert not {u for u in urls if "/noai" in u or "/meta-noai" in u or "/tdm-" in u}
    assert "https://two.example.com/otherbot" in urls        # a rule scoped to another crawler


def test_blocked_sites_are_dropped_before_extraction(safety_run):
    _, stats = safety_run
    assert stats["records"]["dropped"].get("blocked_url_words") == 1
    assert stats["records"]["dropped"].get("blocked_domain") == 1


def test_personal_data_is_replaced_and_nothing_else_changes(safety_run):
    out, stats = safety_run
    row = next(r for r in text_rows(out) if r["url"] == "https://three.example.com/contact")
    assert "For tips about this story, contact email@example.com today." in row["text"]
    assert "Tatyana@citylimits.org" not in row["text"]
    assert stats["pii_replaced"]["text"].get("emails", 0) >= 1


def test_pages_quoting_evaluation_captions_are_removed(safety_run):
    out, stats = safety_run
    assert stats["records"]["dropped"].get("eval_contaminated") == 2
    assert stats["text_documents"]["dropped"].get("eval_contaminated") == 2
    urls = {r["url"] for r in text_rows(out)}
    assert "https://four.example.com/twelve" in urls          # 12 shared words are no leak
    assert not {"https://four.example.com/long", "https://four.example.com/short"} & urls


def test_images_of_an_opted_out_or_blocked_source_are_not_used(safety_run):
    out, stats = safety_run
    assert "https://five.example.com/noimageai" in {r["url"] for r in text_rows(out)}
    assert stats["images"]["dropped"].get("opted_out_image", 0) + stats["pairs"]["dropped"].get("opted_out_image", 0) >= 4
    assert stats["images"]["dropped"].get("blocked_url_words", 0) + stats["pairs"]["dropped"].get("blocked_url_words", 0) >= 1
