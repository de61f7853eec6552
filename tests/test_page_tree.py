"""One parse of a page for trafilatura and the <img> scan (filters.html.page_tree,
filters.captions.read_page), and the cheaper attribute cap (issue 31)."""

import random
import re

import pytest

from filters.captions import find_image_captions, read_page
from filters.html import _ATTRIBUTE, _LONG_TAG, extract_content, limit_attributes, page_tree, shallow_tree

URL = "https://example.org/post/"
PROSE = ("The river rose over the old stone bridge during the night, and by morning the whole "
         "village had gathered on the hill to watch the water carry fences and boats downstream. ")


def article(images: str = "") -> str:
    return (f"<html><head><title>Flood</title></head><body><article><h1>The flood</h1>"
            f"<p>{PROSE * 3}</p>{images}<p>{PROSE * 2}</p></article></body></html>")


@pytest.mark.parametrize("n", list(range(248, 258)) + [400])
def test_the_parser_stops_at_its_depth_limit_exactly_where_shallow_tree_flattens(n):
    """page_tree goes to shallow_tree when libxml2's error log says it stopped at its
    depth limit: the same pages shallow_tree finds nested past it, at the edge too."""
    page = "<html><body>" + "<div>" * n + "<p>deep text</p>" + "</div>" * n + "<p>after</p></body></html>"
    flattened_by_shallow = shallow_tree(page)[0] is not None
    tree, _, flattened = page_tree(page)
    assert flattened == flattened_by_shallow
    assert tree.xpath("string((//p)[last()])") == "after"


def test_read_page_gives_what_the_two_reads_gave_apart():
    images = ('<figure><img src="/img/bridge.jpg"><figcaption>The bridge at dawn</figcaption></figure>'
              '<p>More words about the flood and the bridge and the river and the hill.</p>'
              '<img data-src="//cdn.example.org/boat" src="data:image/gif;base64,R0lGOD" alt="A boat">')
    page = article(images)
    read = read_page(page, URL, True)
    assert read.scan_error == ""
    assert read.images == find_image_captions(page, URL)
    assert read.content == extract_content(page, URL)
    kinds = [(i.kind, i.url) for i in read.content.items if i.kind == "image"]
    assert kinds == [("image", "https://example.org/img/bridge.jpg"), ("image", "https://cdn.example.org/boat")]
    assert read_page(page, URL, False).images is None


def test_a_quoted_angle_bracket_in_an_attribute_does_not_end_the_tag():
    """pages-eval (przepisy.pl): <img alt=">" src=...>. The regex that rewrote the page's
    text took the tag to end at the quoted ">" and gave the image the next one's alt."""
    page = article('<div><img alt=">" src="/a/right.png"></div><div><img alt="<" src="/a/left.png"></div>')
    alts = [(i.url.rsplit("/", 1)[-1], i.alt) for i in extract_content(page, URL).items if i.kind == "image"]
    assert alts == [("right.png", ">"), ("left.png", "<")]


def test_an_xhtml_page_with_an_encoding_declaration_has_its_images_scanned():
    """lxml refuses a str that declares its encoding; the old <img> scan parsed with it
    and found no image on such a page (three XHTML pages of pages-eval)."""
    page = '<?xml version="1.0" encoding="utf-8"?>\n' + article('<img src="/img/river.jpg" alt="The river in flood">')
    caps = find_image_captions(page, URL)
    assert [(c.url, c.caption) for c in caps] == [("https://example.org/img/river.jpg", "The river in flood")]


def _capped_by_regex(text: str, max_attributes: int) -> str:
    """The cap as a regex over the whole page (the reference limit_attributes follows)."""
    def cap(m):
        attrs = _ATTRIBUTE.findall(m.group(2))
        if len(attrs) <= max_attributes:
            return m.group(0)
        return "<" + m.group(1) + " " + " ".join(attrs[:max_attributes]) + ">"
    return _LONG_TAG.sub(cap, text)


def test_the_attribute_cap_is_the_regex_substitution_exactly():
    rnd = random.Random(31)
    pieces = [' a=1', ' b="x>y"', ' c', "  d='q'", ' e=f>', 'zz', ' <']
    for _ in range(3000):
        parts = []
        for _ in range(rnd.randint(0, 4)):
            kind = rnd.random()
            if kind < 0.4:
                parts.append("<" + rnd.choice(["img", "a", "1x", "é", "B:z-9", ""])
                             + "".join(rnd.choice(pieces) for _ in range(rnd.choice([1, 10, 600, 1365, 1366, 1367])))
                             + rnd.choice([">", "", ">tail"]))
            elif kind < 0.7:
                parts.append("x" * rnd.choice([5, 4095, 4096, 4097, 5000]))
            else:
                parts.append(rnd.choice(["<", ">", "<p>", "</p>", "<<", ">>", "text"]))
        text = "".join(parts)
        for m in (3, 256):
            assert limit_attributes(text, m) == _capped_by_regex(text, m)


def test_a_tag_of_many_attributes_keeps_the_first_ones():
    tag = "<img " + " ".join(f"a{i}=x" for i in range(1000)) + ">"
    out = limit_attributes(article(tag), 256)
    (kept,) = re.findall(r"<img [^>]*>", out)
    assert kept.count("=") == 256 and kept.startswith("<img a0=x a1=x")
