"""The page logic's shortcuts give what the plain computations give: the caption-class
search read from the class attributes, each caption judged once per page, fastText's
recent scores reused."""

from __future__ import annotations

import random

import pytest
from apache_beam.pvalue import TaggedOutput

from filters.captions import ImageCaption, _caption_blocks, blocks_around, image_captions
from filters.config import CurationConfig
from transforms.records import Page, Provenance

URL = "https://example.org/a/page.html"


def _blocks_by_search(root, levels: int = 4) -> dict:
    """The caption blocks as the one XPath over every element found them (the reference)."""
    return blocks_around(root.xpath("//*[contains(translate(@class, 'CAPTION', 'caption'), 'caption')]"), levels)


def test_caption_blocks_are_those_of_the_search_over_every_element():
    from filters.html import page_tree
    rnd = random.Random(7)
    # ASCII in any case, a character reference, letters that lower to ASCII (K, İ), a
    # caption only in text or in another attribute, none at all
    classes = ["caption", "wp-Caption-text", "CAPTION", "cAptIon", "&#99;aption", "capt&#x69;on", "capti\u0130on",
               "\u212aaption", "captio", "cap tion", "thumb", "", None]
    for _ in range(400):
        parts = []
        for i in range(rnd.randint(1, 6)):
            cls = rnd.choice(classes)
            attr = "" if cls is None else f' class="{cls}"'
            inner = rnd.choice(["", "<span data-class='caption'>x</span>", "caption text", f"<i{attr}>n</i>"])
            parts.append(f"<div><div{attr}><img src='/{i}.jpg'>{inner}</div><p{attr}>words</p></div>")
        html = "<html><body>" + "".join(parts) + "</body></html>"
        root = page_tree(html)[0]
        got, want = _caption_blocks(root), _blocks_by_search(root)
        assert [(id(k), id(v)) for k, v in got.items()] == [(id(k), id(v)) for k, v in want.items()], html
        assert image_captions(root, html, URL) == image_captions(root, html, URL)


def test_a_page_whose_images_all_have_captions_is_not_searched(monkeypatch):
    import filters.captions as captions
    from filters.html import page_tree
    html = ("<html><body><div class='wp-caption'><img src='/a.jpg' alt='A heron on the river'>"
            "<p class='wp-caption-text'>The heron</p></div></body></html>")
    monkeypatch.setattr(captions, "_caption_blocks", lambda root: pytest.fail("searched"))
    (cap,) = image_captions(page_tree(html)[0], html, URL)
    assert (cap.caption, cap.source) == ("A heron on the river", "alt")


def test_recent_scores_are_the_models_own():
    import filters.language as language
    lid = language.LanguageIdentifier()
    texts = ["The heron stood in the shallow water of the river.", "Der Reiher stand im seichten Wasser.",
             "the heron stood in the shallow water of the river.", "  The heron stood in  the shallow water  ",
             "The heron stood in the shallow water of the river.", " \n "]
    for text in texts * 2:
        for wanted in ("en", "de"):
            preds = lid.predict(text, k=5)
            want = ((preds[0][0], preds[0][1], next((p for a, p in preds if a == wanted), 0.0)) if preds
                    else ("", 0.0, 0.0))
            assert lid.score(text, wanted) == want
    assert any(key[1] == " ".join(texts[0].split()) for key in language._SCORES)


def _pairs(dofn, images):
    from transforms.pages import ExtractedPage
    page = Page(URL, "2024-01-01T00:00:00Z", "text/html", b"", Provenance("test.warc", 0))
    ex = ExtractedPage(page, "", [], [], {}, {}, True, images=images)
    out = []
    for x in dofn.process(ex):
        out.append(repr(x.value) if isinstance(x, TaggedOutput) else repr(x))
    return out


def test_each_caption_is_judged_once_a_page_with_the_same_ends(monkeypatch):
    import transforms.pages as pages
    dofn = pages.ToPairs(CurationConfig())
    dofn.setup()
    judged = []
    real = pages.judge_caption
    monkeypatch.setattr(pages, "judge_caption", lambda caption, *a, **kw: judged.append(caption) or real(caption, *a, **kw))
    heron = "A grey heron standing in the shallow water of the river"
    images = [ImageCaption(0, "/a.jpg", "https://example.org/a.jpg", heron, "alt"),
              ImageCaption(1, "/logo.png", "https://example.org/logo.png", "Our logo", "alt"),
              ImageCaption(2, "/a.jpg", "https://example.org/a.jpg", heron, "alt"),
              ImageCaption(3, "/b.jpg", "https://example.org/b.jpg", heron, "alt"),
              ImageCaption(4, "/c.jpg", "https://example.org/c.jpg", "x", "alt"),
              ImageCaption(5, "/d.jpg", "https://example.org/d.jpg", "x", "alt")]
    together = _pairs(dofn, images)
    assert judged == [heron, "x"]           # the logo's URL ends it before its caption is read
    alone = [_pairs(dofn, [img]) for img in images]
    # every image as it ends alone, but the second of the same image and caption
    assert together[:4] + together[6:] == alone[0] + alone[1] + alone[3] + alone[4] + alone[5]
    assert "duplicate_in_page" in together[5]
