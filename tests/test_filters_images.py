"""Image filters on crafted boundary cases and on real images from the archives."""

import io

import pytest
from PIL import Image

from conftest import shared_warc
from filters.config import ImageConfig
from filters.images import judge_image, sniff_format
from filters.records import classify
from archives.records import ArchiveRecord, iter_archive

CFG = ImageConfig()


def encode(img: Image.Image, fmt="PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def noisy(size, mode="RGB"):
    img = Image.effect_noise(size, 80).convert(mode)
    return img


@pytest.mark.parametrize("w,h,kept", [(64, 64, True), (63, 64, False), (64, 63, False), (63, 63, False),
                                      (640, 64, True), (1000, 40, False)])
def test_min_side_boundary(w, h, kept):
    verdict, stored = judge_image(encode(noisy((w, h))), ImageConfig(max_aspect_ratio=0))
    assert verdict.keep is kept
    if not kept:
        assert verdict.reason == "too_small"
    else:
        assert stored.original_width == w and stored.original_height == h


def test_single_coloured_png_is_dropped():
    verdict, _ = judge_image(encode(Image.new("RGB", (200, 200), (12, 34, 56))), CFG)
    assert (verdict.keep, verdict.reason) == (False, "single_color")


def test_two_colours_are_kept():
    img = Image.new("RGB", (200, 200), (255, 255, 255))
    img.paste((0, 0, 0), (0, 0, 100, 200))
    assert judge_image(encode(img), CFG)[0].keep


def test_tolerance_makes_near_flat_images_single_coloured():
    img = Image.new("L", (100, 100), 100)
    img.putpixel((5, 5), 103)
    data = encode(img)
    literal = ImageConfig(uniform_max_fraction=1.01, min_pixel_std=0)     # "single colour" taken literally
    assert judge_image(data, literal)[0].keep
    assert judge_image(data, ImageConfig(single_color_tolerance=4))[0].reason == "single_color"
    assert judge_image(data, CFG)[0].reason == "near_uniform"           # the default: no content either way


def test_fully_transparent_image_is_single_coloured():
    img = Image.new("RGBA", (100, 100), (0, 0, 0, 0))
    img.putpixel((3, 3), (255, 0, 0, 0))  # a different colour, but invisible
    assert judge_image(encode(img), CFG)[0].reason == "single_color"


def test_palette_with_transparency_and_alpha():
    img = noisy((100, 100)).convert("P", palette=Image.ADAPTIVE)
    img.info["transparency"] = 0
    verdict, stored = judge_image(encode(img, transparency=0), CFG)
    assert verdict.keep and stored.original_format == "png"
    rgba = noisy((100, 100)).convert("RGBA")
    assert judge_image(encode(rgba), CFG)[0].keep


def test_cmyk_jpeg_is_converted():
    verdict, stored = judge_image(encode(noisy((120, 90)).convert("CMYK"), "JPEG"), CFG)
    assert verdict.keep
    assert Image.open(io.BytesIO(stored.data)).mode == "RGB"


def test_animated_gif_keeps_first_frame():
    frames = [noisy((80, 80)).convert("P") for _ in range(3)]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=50)
    verdict, stored = judge_image(buf.getvalue(), CFG)
    assert verdict.keep and stored.frames == 3 and stored.format == "jpeg"


def test_decompression_bomb_refused_before_decoding():
    # A tiny file that claims 20000 x 20000 pixels.
    data = encode(Image.new("1", (20000, 20000)))
    assert len(data) < 100_000
    verdict, _ = judge_image(data, CFG)
    assert verdict.reason == "decompression_bomb"
    verdict, _ = judge_image(encode(noisy((300, 300))), ImageConfig(max_pixels=10_000))
    assert verdict.reason == "decompression_bomb"


@pytest.mark.parametrize("data,fmt", [(b"<html><body>not an image</body></html>", "html"),
                                      (b"<svg xmlns='http://www.w3.org/2000/svg'></svg>", "svg"),
                                      (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "png"),
                                      (b"", "unknown")])
def test_undecodable(data, fmt):
    verdict, _ = judge_image(data, CFG)
    assert not verdict.keep and verdict.reason in ("undecodable", "empty")
    assert sniff_format(data) == fmt


def test_truncated_jpeg_is_undecodable():
    data = encode(noisy((300, 300)), "JPEG")
    assert judge_image(data[: len(data) // 2], CFG)[0].reason == "undecodable"


def test_stored_at_max_side_with_original_size_recorded():
    verdict, stored = judge_image(encode(noisy((1600, 800))), CFG)
    assert (stored.width, stored.height) == (512, 256)
    assert (stored.original_width, stored.original_height) == (1600, 800)
    assert Image.open(io.BytesIO(stored.data)).size == (512, 256)


def test_real_archive_images():
    """The 20 covers of books.toscrape decode; each verdict matches its real size."""
    path = shared_warc("node-warc__books.toscrape.warc")
    seen = 0
    for rec in iter_archive(open(path, "rb"), path):
        if isinstance(rec, ArchiveRecord) and rec.rec_type == "response" and classify(rec).kind.value == "image":
            verdict, stored = judge_image(rec.payload, CFG)
            w, h = Image.open(io.BytesIO(rec.payload)).size
            assert verdict.keep == (min(w, h) >= 64), (rec.target_uri, w, h)
            seen += 1
    assert seen == 20


def _archive_images(name, marker):
    path = shared_warc(name)
    for rec in iter_archive(open(path, "rb"), path):
        if isinstance(rec, ArchiveRecord) and marker in rec.target_uri and rec.payload:
            yield rec.target_uri, rec.payload


@pytest.mark.parametrize("w,h,kept", [(300, 100, True), (301, 100, False), (100, 301, False), (64, 192, True)])
def test_aspect_ratio_boundary(w, h, kept):
    verdict, _ = judge_image(encode(noisy((w, h))), CFG)
    assert verdict.keep is kept
    if not kept:
        assert verdict.reason == "extreme_aspect_ratio" and verdict.scores["aspect_ratio"] > 3


def test_real_layout_slice_spacer_and_near_white_images_are_dropped():
    """The 72 x 499 table-layout slice of netarkivet.dk (35,905 of its 35,928 pixels
    white) goes as a layout slice; a square of its own pixels as near-uniform; a white
    image with faint noise as near-uniform; while every real book cover, the palest
    (a yellow with a title, 0.94 of its pixels near its colour) included, stays."""
    (_, spacer), = [(u, p) for u, p in _archive_images("netarchivesuite__NAS-20100909163324-00000-mette.kb.dk.warc",
                                                         "netarkivet_guidelines_19.gif")][:1]
    verdict, _ = judge_image(spacer, CFG)
    assert (verdict.reason, verdict.scores["width"], verdict.scores["height"]) == ("extreme_aspect_ratio", 72, 499)
    square = Image.open(io.BytesIO(spacer)).convert("RGB").crop((0, 0, 72, 72))
    verdict, _ = judge_image(encode(square), CFG)
    assert verdict.reason in ("near_uniform", "single_color")
    faint = Image.new("RGB", (200, 200), (250, 250, 250))
    faint.paste(Image.effect_noise((200, 200), 3).convert("RGB").point(lambda v: 245 + v % 10), (0, 0))
    verdict, _ = judge_image(encode(faint, "JPEG"), CFG)
    assert verdict.reason == "near_uniform" and verdict.scores["dominant_fraction"] >= 0.97
    covers = [judge_image(p, CFG)[0] for u, p in _archive_images("node-warc__books.toscrape.warc", "/media/cache/")
              if u.endswith(".jpg")]
    assert covers and all(v.keep for v in covers if min(v.scores["width"], v.scores["height"]) >= 64)
    assert max(v.scores["dominant_fraction"] for v in covers if v.keep) > 0.9


def test_site_furniture_by_url():
    from filters.images import furniture_url
    words = ImageConfig().furniture_url_words
    assert furniture_url("http://bits.wikimedia.org/images/wikimedia-button.png", words) == "button"
    assert furniture_url("http://upload.wikimedia.org/wikipedia/en/thumb/4/4a/Commons-logo.svg/9px-Commons-logo"
                         ".svg.png", words) == "logo"
    assert furniture_url("https://example.com/static/sitelogo_2020.png", words) == "sitelogo"
    assert furniture_url("https://example.com/favicon.ico", words) == "favicon"
    # whole words only, and only the path
    assert furniture_url("https://example.com/photos/silicon-valley-at-night.jpg", words) is None
    assert furniture_url("https://icons.example.com/photos/harbour.jpg", words) is None
    assert furniture_url("http://upload.wikimedia.org/wikipedia/commons/thumb/c/c1/Mona_Lisa_detail_hands.jpg/"
                         "220px-Mona_Lisa_detail_hands.jpg", words) is None
