"""The cheaper image judging (issue 31) gives what the straightforward code gave, to
the bit: the near-uniform scores against numpy's ``unique`` and ``std``, the pHash
against ``imagehash.phash``, and the stored bytes against a copy converted, shrunk
and re-encoded as before. On crafted edge cases and on the images of the shared
archives."""

import dataclasses
import hashlib
import io

import imagehash
import numpy as np
import pytest
from PIL import Image

from archives.records import ArchiveRecord, iter_archive
from conftest import shared_warc
from filters.config import ImageConfig
from filters.image_hash import phash, phash_of_bytes, phash_of_grey32
from filters.images import _to_rgb, judge_image, uniformity

CFG = ImageConfig()
RNG = np.random.default_rng(31)
ARCHIVES = ("node-warc__books.toscrape.warc", "webarchive-discovery__flashfrozen-jwat-recompressed.warc.gz",
            "aut__example.warc.gz", "netarchivesuite__NAS-20100909163324-00000-mette.kb.dk.warc")


# ------------------------------------------------------------------ the reference: the code as it was
def reference_uniformity(rgb, distance):
    small = np.asarray(rgb.resize((64, 64), Image.NEAREST), dtype=np.int16).reshape(-1, 3)
    binned = small // 16
    packed = binned[:, 0] * 256 + binned[:, 1] * 16 + binned[:, 2]
    values, counts = np.unique(packed, return_counts=True)
    top = int(values[counts.argmax()])
    centre = np.array([(top // 256) * 16 + 8, ((top // 16) % 16) * 16 + 8, (top % 16) * 16 + 8])
    near = np.abs(small - centre).max(axis=1) <= distance
    return {"dominant_fraction": round(float(near.mean()), 4), "pixel_std": round(float(small.std(axis=0).mean()), 2)}


def reference_phash(rgb):
    small = rgb.convert("L").resize((32, 32), Image.LANCZOS, reducing_gap=3.0)
    return str(imagehash.phash(small))


def reference_stored(data, cfg):
    """The stored bytes as before: the first frame converted to a new RGB image, a copy
    of it shrunk, re-encoded."""
    img = Image.open(io.BytesIO(data))
    img.seek(0)
    img.load()
    rgb = _to_rgb(img)
    rgb = rgb.copy() if rgb is img else rgb            # as convert("RGB") did
    stored = rgb
    if max(stored.size) > cfg.store_max_side:
        stored = stored.copy()
        stored.thumbnail((cfg.store_max_side, cfg.store_max_side), Image.LANCZOS)
    out = io.BytesIO()
    kwargs = {"quality": cfg.store_quality} if cfg.store_format.upper() in ("JPEG", "WEBP") else {}
    stored.save(out, format=cfg.store_format, **kwargs)
    return out.getvalue(), stored.size


def exact(a, b):
    """Equal values of equal types (a numpy float is not the float a JSON trail writes)."""
    return a == b and [type(v) for v in a.values()] == [type(v) for v in b.values()]


# ------------------------------------------------------------------ inputs
def thumbnails(n=400):
    """RGB images of the kinds the thumbnail check meets: noise, a colour with a spread,
    values on the 16-bins' edges, one colour with one different pixel, ties between bins."""
    out = []
    for k in range(n):
        kind = k % 6
        if kind == 0:
            a = RNG.integers(0, 256, (64, 64, 3))
        elif kind == 1:
            a = np.clip(RNG.normal(RNG.integers(0, 256, 3), RNG.uniform(0, 30), (64, 64, 3)), 0, 255)
        elif kind == 2:
            a = np.clip(RNG.integers(0, 256, (1, 1, 3)) + RNG.integers(0, int(RNG.integers(1, 40)), (64, 64, 3)), 0, 255)
        elif kind == 3:
            a = RNG.choice([0, 7, 8, 15, 16, 17, 24, 25, 127, 128, 239, 240, 247, 248, 255], (64, 64, 3))
        elif kind == 4:
            a = np.full((64, 64, 3), RNG.integers(0, 256, 3))
            a[RNG.integers(0, 64), RNG.integers(0, 64)] = RNG.integers(0, 256, 3)
        else:                                  # two colours, 2048 pixels each: the lower bin wins
            a = np.zeros((64, 64, 3), dtype=int)
            a[:32] = RNG.integers(0, 256, 3)
            a[32:] = RNG.integers(0, 256, 3)
        size = [(64, 64), (300, 200), (97, 640), (65, 64)][k % 4]
        out.append(Image.fromarray(a.astype(np.uint8), "RGB").resize(size, Image.NEAREST))
    return out


def encode(img, fmt="PNG", **kw):
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def noise(w, h, channels=3):
    shape = (h, w, channels) if channels > 1 else (h, w)
    return Image.fromarray(RNG.integers(0, 256, shape, dtype=np.uint8))


def crafted():
    """Encoded edge cases: sizes at the bounds, modes Pillow decodes to, animation, damage, EXIF."""
    out = {}
    for w, h in [(1, 1), (63, 64), (64, 64), (64, 192), (64, 193), (1000, 64), (513, 300), (1600, 900)]:
        out[f"noise{w}x{h}.png"] = encode(noise(w, h))
        out[f"noise{w}x{h}.jpg"] = encode(noise(w, h), "JPEG", quality=85)
    flat = Image.new("RGB", (200, 200), (12, 34, 56))
    out["single.png"] = encode(flat)
    one = flat.copy()
    one.putpixel((100, 66), (13, 34, 56))
    out["single_one_pixel.png"] = encode(one)
    out["single.jpg"] = encode(flat, "JPEG")
    grad = Image.linear_gradient("L").resize((300, 300))
    out["gradient.png"] = encode(grad)
    out["faint.jpg"] = encode(grad.point(lambda v: 200 + v // 32).convert("RGB"), "JPEG")
    base = noise(300, 200)
    pal = base.convert("P", palette=Image.ADAPTIVE)
    out["palette.png"] = encode(pal)
    out["palette_transparent.gif"] = encode(pal, "GIF", transparency=3)
    out["rgba.png"] = encode(noise(300, 200, 4))
    half = Image.new("RGBA", (200, 200), (255, 0, 0, 0))
    half.paste((0, 0, 255, 128), (50, 50, 150, 150))
    out["half_transparent.png"] = encode(half)
    out["la.png"] = encode(noise(200, 150, 1).convert("LA"))
    out["cmyk.jpg"] = encode(base.convert("CMYK"), "JPEG")
    out["i16.png"] = encode(Image.fromarray(RNG.integers(0, 65536, (150, 200)).astype(np.uint16)))
    out["gray.jpg"] = encode(base.convert("L"), "JPEG")
    out["bilevel.png"] = encode(base.convert("1"))
    frames = [noise(120, 100).convert("P") for _ in range(3)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=100)
    out["animated.gif"] = buf.getvalue()
    buf = io.BytesIO()
    noise(200, 100).save(buf, "WEBP", save_all=True, append_images=[noise(200, 100)], quality=80)
    out["animated.webp"] = buf.getvalue()
    rgb_frames = [noise(150, 100) for _ in range(2)]
    buf = io.BytesIO()
    rgb_frames[0].save(buf, "PNG", save_all=True, append_images=rgb_frames[1:])
    out["animated.apng"] = buf.getvalue()
    out["multi.tiff"] = encode(base, "TIFF")
    jpeg = encode(noise(400, 300), "JPEG")
    out["truncated.jpg"] = jpeg[: len(jpeg) // 2]
    exif = Image.Exif()
    exif[0x0112] = 6
    out["exif_rotated.jpg"] = encode(noise(300, 120), "JPEG", exif=exif.tobytes())
    out["icc_comment.jpg"] = encode(base, "JPEG", icc_profile=b"\0" * 200, comment=b"kosmos")
    out["empty"] = b""
    out["html"] = b"<html><body>gone</body></html>" * 10
    return out


def archive_images():
    out = {}
    for name in ARCHIVES:
        path = shared_warc(name)
        for rec in iter_archive(open(path, "rb"), path):
            if isinstance(rec, ArchiveRecord) and rec.payload and (rec.mime or "").startswith("image/"):
                out.setdefault(hashlib.sha256(rec.payload).hexdigest(), rec.payload)
    return list(out.values())


@pytest.fixture(scope="module")
def encoded():
    return list(crafted().items()) + [(f"archive{i}", d) for i, d in enumerate(archive_images())]


# ------------------------------------------------------------------ the tests
@pytest.mark.parametrize("distance", [0, 5, 7.5, 16, 300, 10 ** 6])
def test_uniformity_matches_unique_and_std_to_the_bit(distance):
    for rgb in thumbnails():
        assert exact(uniformity(rgb, distance), reference_uniformity(rgb, distance))


def test_pixel_std_is_numpys_float_before_rounding():
    """The integer sums give numpy's standard deviation exactly, not only once rounded."""
    for rgb in thumbnails(120):
        small = rgb.resize((64, 64), Image.NEAREST)
        wide = np.asarray(small).reshape(-1, 3).T.astype(np.int64)
        sums, squares = wide.sum(axis=1), (wide * wide).sum(axis=1)
        ours = np.sqrt((4096 * squares - sums * sums) / 2 ** 24).mean()
        theirs = np.asarray(small, dtype=np.int16).reshape(-1, 3).std(axis=0).mean()
        assert ours == theirs


def test_phash_of_grey32_is_imagehash_phash():
    grey = [Image.fromarray(RNG.integers(0, 256, (32, 32), dtype=np.uint8)) for _ in range(200)]
    grey += [Image.new("L", (32, 32), v) for v in (0, 128, 255)]                       # every DCT term but one 0
    grey += [Image.fromarray(RNG.choice([0, 255], (32, 32)).astype(np.uint8)) for _ in range(20)]
    grey += [Image.linear_gradient("L").resize((32, 32)), Image.radial_gradient("L").resize((32, 32))]
    for small in grey:
        assert phash_of_grey32(small) == str(imagehash.phash(small))


def test_phash_is_imagehash_phash_on_rgb_images():
    images = thumbnails(60) + [noise(w, h) for w, h in [(33, 31), (96, 97), (500, 300), (1200, 50)]]
    for rgb in images:
        assert phash(rgb) == reference_phash(rgb)


def test_rgb_images_are_not_copied_and_other_modes_are_converted():
    img = Image.open(io.BytesIO(encode(noise(100, 80), "JPEG")))
    img.load()
    assert _to_rgb(img) is img
    for mode in ("L", "P", "RGBA", "CMYK"):
        other = noise(100, 80).convert(mode)
        rgb = _to_rgb(other)
        assert rgb.mode == "RGB" and rgb is not other


@pytest.mark.parametrize("cfg", [CFG, ImageConfig(store_format="PNG", store_max_side=100_000),
                                 ImageConfig(store_max_side=100_000), ImageConfig(store_format="WEBP", store_max_side=256),
                                 ImageConfig(single_color_tolerance=4, max_aspect_ratio=0)],
                         ids=["default", "png_whole", "jpeg_whole", "webp_256", "tolerant"])
def test_judge_image_stores_what_the_straightforward_code_stored(encoded, cfg):
    kept = 0
    for name, data in encoded:
        verdict, stored = judge_image(data, cfg)
        if not verdict.keep:
            assert stored is None
            continue
        kept += 1
        img = Image.open(io.BytesIO(data))
        img.seek(0)
        img.load()
        rgb = _to_rgb(img)
        expected, size = reference_stored(data, cfg)
        assert hashlib.sha256(stored.data).hexdigest() == hashlib.sha256(expected).hexdigest(), name
        assert (stored.width, stored.height) == size, name
        assert stored.phash == reference_phash(rgb) == phash_of_bytes(data), name
        assert exact({k: verdict.scores[k] for k in ("dominant_fraction", "pixel_std")},
                     reference_uniformity(rgb, cfg.uniform_distance)), name
        assert verdict.scores["colour_spread"] == max(hi - lo for lo, hi in rgb.getextrema()), name
        assert set(f.name for f in dataclasses.fields(stored)) >= {"data", "phash", "sha256"}
    assert kept >= 20


def test_the_safety_scorer_sees_the_same_pixels(encoded):
    """The scorer and the evaluation index get the RGB image and pHash they got before."""
    from contract.reasons import Reason
    from filters.base import Verdict

    class Recorder:
        def __init__(self):
            self.seen = []

        def verdict(self, rgb):
            self.seen.append((rgb.mode, rgb.size, hashlib.sha256(rgb.tobytes()).hexdigest()))
            return Verdict(True, None, {"unsafe_score": 0.0})

        def image_contaminated(self, value):
            self.seen.append(value)
            return None

    for name, data in encoded:
        recorder = Recorder()
        verdict, _ = judge_image(data, CFG, recorder, recorder)
        if verdict.keep:
            img = Image.open(io.BytesIO(data))
            img.seek(0)
            img.load()
            rgb = _to_rgb(img)
            assert recorder.seen == [reference_phash(rgb), (rgb.mode, rgb.size, hashlib.sha256(rgb.tobytes()).hexdigest())]
        else:
            assert verdict.reason != Reason.UNSAFE_IMAGE
