"""Image filters (KOSMOS.md §1, step 3): decodable, both sides >= 64 px, not
single-coloured, no decompression bombs; then re-encoded for storage.

"Single-coloured" taken literally (one colour) lets layout images through: a
72 x 499 table-layout slice with 35,905 of its 35,928 pixels white, spacers,
faded backgrounds. As OBELICS and the data behind the paper do, we also drop
images that carry no content (the scores are kept on every verdict):

* ``extreme_aspect_ratio``: longest side over shortest above ``max_aspect_ratio``
  (3 by default: layout slices, rules and banners; book covers are 1.5, photos up
  to about 2.5), decided from the header, before any pixel is decoded;
* ``near_uniform``: on a 64 x 64 thumbnail, at least ``uniform_max_fraction`` of
  the pixels within ``uniform_distance`` (per channel) of the dominant colour, or
  a mean channel standard deviation under ``min_pixel_std``. Calibrated on the
  images of ../shared/data: the most uniform real content there is a book cover
  of a pale yellow with a title (0.94 within 16 of its colour), kept at 0.97;
* ``furniture_url``: before any download, an image whose URL path names it a
  logo, button, icon, plugin or widget (OBELICS's URL rule, on whole words)."""

from __future__ import annotations

import hashlib
import io
import re
import struct
import warnings
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import numpy as np
from PIL import Image, UnidentifiedImageError

from contract.reasons import Reason
from filters.base import Verdict, drop, keep
from filters.config import ImageConfig
from filters.image_hash import phash


_PATH_WORDS = re.compile(r"[a-z]+")


def furniture_url(url: str, words: Tuple[str, ...]) -> Optional[str]:
    """The word of ``url``'s path that names the image site furniture, or None."""
    from urllib.parse import unquote, urlsplit
    path = unquote(urlsplit(url).path).lower()
    for word in _PATH_WORDS.findall(path):
        if word in words or (len(word) > 4 and word.endswith("logo")):
            return word
    return None


@dataclass(frozen=True)
class StoredImage:
    data: bytes            # re-encoded bytes
    format: str            # format of the stored bytes
    width: int             # stored size
    height: int
    original_width: int
    original_height: int
    original_format: str
    original_bytes: int
    sha256: str            # of the original bytes, as fetched
    frames: int
    phash: str = ""        # 64-bit perceptual hash of the decoded image, 16 hex digits (filters/image_hash.py)
    unsafe_score: Optional[float] = None   # the image-safety model's unsafe score; None without a scorer

    @property
    def identity(self) -> str:
        """What makes two stored images the same picture: the pHash (a resized or
        re-encoded copy has the same one), or the sha256 of the original bytes when
        there is no pHash. Exact equality of the hash, so that it can key a shuffle."""
        return self.phash or "sha256:" + self.sha256


def sniff_format(data: bytes) -> str:
    head = data[:32]
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[:2] == b"BM":
        return "bmp"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    if head[:4] == b"\x00\x00\x01\x00":
        return "ico"
    stripped = data[:512].lstrip().lower()
    if stripped.startswith(b"<svg") or (stripped.startswith(b"<?xml") and b"<svg" in data[:2048].lower()):
        return "svg"
    if stripped.startswith(b"<"):
        return "html"
    return "unknown"


def _to_rgb(img: Image.Image) -> Image.Image:
    """First frame as RGB: palette transparency, alpha and CMYK handled; transparent
    areas composited on white so a fully transparent image reads as one colour. An
    image already in RGB is returned as it is (``convert`` would only copy it): the
    callers read its pixels and never change them in place."""
    if img.mode == "RGB":
        return img
    if img.mode == "P":
        img = img.convert("RGBA") if "transparency" in img.info else img.convert("RGB")
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        img = img.point(lambda v: v * (1 / 256)).convert("L")
    if img.mode == "F":
        img = img.convert("L")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return img.convert("RGB")


def _is_single_colour(rgb: Image.Image, tolerance: int) -> Tuple[bool, int]:
    extrema = rgb.getextrema()  # ((min, max), ...) per channel
    spread = max(hi - lo for lo, hi in extrema)
    return spread <= tolerance, spread


_THUMB = 64                       # the near-uniform check's thumbnail side
_THUMB_PIXELS = _THUMB * _THUMB


def uniformity(rgb: Image.Image, distance: int) -> Dict[str, float]:
    """``dominant_fraction``: the share of pixels within ``distance`` (every channel)
    of the most common colour (colours binned by 16 per channel), and ``pixel_std``:
    the mean over channels of the pixel standard deviation; on a 64 x 64 thumbnail.

    In numpy on the thumbnail's three channels laid out one after the other (a few
    whole-array steps, no per-pixel Python). The standard deviation comes from each
    channel's sum and sum of squares, in integers: numpy's ``std`` on these pixels
    adds values that are all multiples of 2**-24 below 2**28, so its sums are exact
    and the two give the same float to the last bit (tests/test_image_judging_equivalence.py)."""
    # nearest, not an average: a sample of the pixels keeps their spread (fine texture, noise, small text)
    small = rgb.resize((_THUMB, _THUMB), Image.NEAREST)
    planar = np.asarray(small).reshape(-1, 3).T.copy()          # (3, 4096) uint8, one row per channel
    red, green, blue = planar
    # the colour's bin, 16 per channel, packed red-major: the most common bin, the lowest on a tie
    packed = (red >> 4).astype(np.intp)
    packed <<= 4
    packed |= green >> 4
    packed <<= 4
    packed |= blue >> 4
    top = int(np.bincount(packed, minlength=4096).argmax())
    offset = planar.astype(np.int16)
    offset -= np.array([[(top >> 8) * 16 + 8], [((top >> 4) & 15) * 16 + 8], [(top & 15) * 16 + 8]], dtype=np.int16)
    near = int(np.count_nonzero((np.abs(offset) <= distance).all(axis=0)))
    wide = planar.astype(np.int64)
    sums = wide.sum(axis=1)
    squares = np.einsum("ij,ij->i", wide, wide)
    # variance = (n * sum of squares - sum**2) / n**2, exact in int64 and then in float64 (n**2 = 2**24)
    std = np.sqrt((_THUMB_PIXELS * squares - sums * sums) / (_THUMB_PIXELS * _THUMB_PIXELS)).mean()
    return {"dominant_fraction": round(near / _THUMB_PIXELS, 4), "pixel_std": round(float(std), 2)}


# A TIFF's frames are its chain of image file directories (IFDs). Pillow's
# ``n_frames`` walks the chain checking each new IFD against a list of those seen
# (quadratic: 160,000 IFDs in 18 MB took 300 s); we walk it ourselves, reading
# only each IFD's entry count and next pointer. A web image has one frame, a
# scanned document some hundreds: past MAX_FRAMES the image is refused.
MAX_FRAMES = 1024


def tiff_frames(data: bytes, cap: int = MAX_FRAMES) -> Optional[int]:
    """The number of frames Pillow counts in a TIFF (classic or BigTIFF): IFDs along
    the chain from the header until a next pointer of 0 or a pointer back to an IFD
    already seen. None past ``cap`` IFDs; ValueError for a directory cut short or out
    of reach, where Pillow fails too. Unlike Pillow, the entries of frames after the
    first are not read: only the first frame is decoded and stored."""
    order = ">" if data[:2] == b"MM" else "<"
    big = len(data) > 2 and data[2] == 43
    count_fmt, entry, ptr_fmt = (order + "Q", 20, order + "Q") if big else (order + "H", 12, order + "L")
    ptr_size = struct.calcsize(ptr_fmt)
    count_size = struct.calcsize(count_fmt)
    head = 8 if big else 4
    if len(data) < head + ptr_size:
        raise ValueError("TIFF header cut short")
    (at,) = struct.unpack_from(ptr_fmt, data, head)
    seen = set()
    while at:
        if at >= 2 ** 63:
            raise ValueError("Unable to seek to frame")
        if len(seen) >= cap:
            return None
        seen.add(at)
        if at + count_size > len(data):
            raise ValueError(f"TIFF directory at offset {at} lies past the end of the file")
        (n,) = struct.unpack_from(count_fmt, data, at)
        end = at + count_size + n * entry
        if end + ptr_size > len(data):
            raise ValueError(f"TIFF directory at offset {at} is cut short by the end of the file")
        (at,) = struct.unpack_from(ptr_fmt, data, end)
        if at in seen:
            break
    return len(seen)


def judge_image(data: bytes, cfg: ImageConfig, safety=None, eval_index=None) -> Tuple[Verdict, Optional[StoredImage]]:
    """Decide on one image; on keep also return it re-encoded for storage. Once the
    image has passed the checks on its pixels: with ``eval_index`` (a
    filters.decontaminate.DecontaminationIndex) an image within its distance of an
    evaluation image is ``eval_contaminated``; with ``safety`` (a
    filters.image_safety.ImageSafety) an image the model finds unsafe is
    ``unsafe_image``, its scores kept on either verdict. Both before it is stored."""
    sniffed = sniff_format(data)
    sha = hashlib.sha256(data).hexdigest()
    base = {"bytes": len(data), "sniffed_format": sniffed, "sha256": sha}
    if not data:
        return drop(Reason.EMPTY, **base), None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            width, height = img.size
            fmt = (img.format or sniffed).lower()
            dims = dict(base, width=width, height=height, format=fmt)
            # Our own bomb check on the header, before any pixel is decoded.
            if width * height > cfg.max_pixels:
                return drop(Reason.DECOMPRESSION_BOMB, **dims), None
            if min(width, height) < cfg.min_side:
                return drop(Reason.TOO_SMALL, **dims), None
            aspect = max(width, height) / min(width, height)
            if cfg.max_aspect_ratio and aspect > cfg.max_aspect_ratio:
                return drop(Reason.EXTREME_ASPECT_RATIO, aspect_ratio=round(aspect, 2), **dims), None
            if fmt == "tiff":
                frames = tiff_frames(data)
                if frames is None:
                    return drop(Reason.TOO_MANY_FRAMES, max_frames=MAX_FRAMES, **dims), None
            else:
                frames = int(getattr(img, "n_frames", 1) or 1)
            img.seek(0)
            img.load()
    except Image.DecompressionBombError:
        return drop(Reason.DECOMPRESSION_BOMB, **base), None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
        return drop(Reason.UNDECODABLE, error=type(exc).__name__, **base), None
    except Exception as exc:  # Pillow plugins raise odd things on hostile input
        return drop(Reason.UNDECODABLE, error=type(exc).__name__, **base), None

    try:
        rgb = _to_rgb(img)
    except Exception as exc:
        return drop(Reason.UNDECODABLE, error=type(exc).__name__, **dims), None
    single, spread = _is_single_colour(rgb, cfg.single_color_tolerance)
    dims["colour_spread"] = spread
    if single:
        return drop(Reason.SINGLE_COLOR, **dims), None
    dims.update(uniformity(rgb, cfg.uniform_distance))
    if dims["dominant_fraction"] >= cfg.uniform_max_fraction or dims["pixel_std"] < cfg.min_pixel_std:
        return drop(Reason.NEAR_UNIFORM, **dims), None

    image_hash = phash(rgb)
    if eval_index is not None:
        distance = eval_index.image_contaminated(image_hash)
        if distance is not None:
            return drop(Reason.EVAL_CONTAMINATED, contaminated_by="image", contaminated_match=distance,
                        phash=image_hash, **dims), None
    unsafe_score = None
    if safety is not None:
        judged = safety.verdict(rgb)
        if not judged.keep:
            return drop(judged.reason, phash=image_hash, **dims, **judged.scores), None
        dims.update(judged.scores)
        unsafe_score = judged.scores["unsafe_score"]

    stored = rgb
    if max(stored.size) > cfg.store_max_side:
        # rgb is not read after this: a converted copy is shrunk in place; the decoded file
        # itself (already RGB) is copied first, so that its own draft() never enters the resize
        if stored is img:
            stored = stored.copy()
        stored.thumbnail((cfg.store_max_side, cfg.store_max_side), Image.LANCZOS)
    out = io.BytesIO()
    save_kwargs = {"quality": cfg.store_quality} if cfg.store_format.upper() in ("JPEG", "WEBP") else {}
    stored.save(out, format=cfg.store_format, **save_kwargs)
    result = StoredImage(
        data=out.getvalue(), format=cfg.store_format.lower(), width=stored.size[0],
        height=stored.size[1], original_width=width, original_height=height,
        original_format=fmt, original_bytes=len(data), sha256=sha, frames=frames, phash=image_hash,
        unsafe_score=unsafe_score)
    return keep(**dims), result
