"""The <img> scan of image-caption pairs on pages nested deeper than libxml2's limit
(256 elements): the plain parse stops there and every image below, and every image
after, was lost without a word. Such a page is read as filters.html.shallow_tree
reads it for the text, with the huge option, but not flattened."""

from filters.captions import find_image_captions

URL = "https://example.org/post/"
IMAGES = ('<img src="/fox.jpg" alt="A red fox crossing a snowy field">'
          '<figure><img src="/heron.jpg"><figcaption>A grey heron waiting by the river</figcaption></figure>'
          '<div class="thumb"><div class="thumbinner"><a href="/wiki/File:Light.jpg"><img src="/light.jpg"></a>'
          '<div class="thumbcaption">The lighthouse at dusk, from the pier</div></div></div>')
AFTER = '<p>After the nest.</p><img src="/last.jpg" alt="The harbour at night with its lights on">'
EXPECTED = [("/fox.jpg", "A red fox crossing a snowy field", "alt"),
            ("/heron.jpg", "A grey heron waiting by the river", "figcaption"),
            ("/light.jpg", "The lighthouse at dusk, from the pier", "caption_block"),
            ("/last.jpg", "The harbour at night with its lights on", "alt")]


def nested(n: int, opener: str = "<div>", closer: str = "</div>") -> str:
    return ("<html><head><title>t</title></head><body><p>Before the nest.</p>" + opener * n + IMAGES
            + closer * n + AFTER + "</body></html>")


def found(page: str):
    return [(c.src, c.caption, c.source) for c in find_image_captions(page, URL)]


def test_the_shallow_page_is_what_the_deep_ones_must_match():
    assert found(nested(3)) == EXPECTED
    assert found(nested(240)) == EXPECTED         # under the limit: the plain parse, as always


def test_images_inside_300_wrappers_are_found_as_at_depth_three():
    shallow = find_image_captions(nested(3), URL)
    for n in (300, 1000):
        assert find_image_captions(nested(n), URL) == shallow, n        # old main: [] (all four lost)


def test_images_past_what_even_the_huge_parser_reads():
    """Over 2,048 elements deep: wrapper tags are left out before parsing (filters.html
    _cap_tags); the images, their figure and their caption block stay."""
    shallow = find_image_captions(nested(3), URL)
    assert find_image_captions(nested(2500), URL) == shallow
    assert find_image_captions(nested(2500, '<div class="wrap">'), URL) == shallow


def test_a_figure_below_text_at_every_level_keeps_its_caption():
    """400 quoted replies, each inside the last: nothing is a bare wrapper, so
    flattening would merge the <figure> (deeper than 200) away and the image without
    alt text would lose its caption. The scan reads the unflattened tree."""
    page = ("<html><body>" + "".join(f"<blockquote>Reply {i} says a few words." for i in range(400))
            + IMAGES + "</blockquote>" * 400 + AFTER + "</body></html>")
    assert found(page) == EXPECTED


def test_a_bound_over_the_limit_on_a_shallow_page_parses_as_before():
    """Unclosed <p>s count towards the tag bound but close each other: the page is
    shallow once parsed and takes the plain parse (filters.html.shallow_tree gives no
    tree), with the same result as the tidy page."""
    from filters.html import LIBXML_MAX_DEPTH, nesting_bound, shallow_tree
    page = ("<html><body>" + "<p>A line of text." * 400 + IMAGES + AFTER + "</body></html>")
    assert nesting_bound(page) > LIBXML_MAX_DEPTH
    tree, note = shallow_tree(page, flatten=False)
    assert tree is None and note is not None and note.depth <= LIBXML_MAX_DEPTH
    assert found(page) == EXPECTED
