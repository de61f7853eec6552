"""Perceptual hashes of images (issue 30): one 64-bit pHash per decoded image, as a
16-digit hex string, and the Hamming distance between two of them. Pure (no Beam,
no I/O). Used to find the same picture under another encoding or size: evaluation
images in the training data (filters/decontaminate.py) and documents that carry the
same images.

The hash is imagehash's ``phash`` (DCT of a 32 x 32 grey image, the 8 x 8 lowest
frequencies against their median). We reduce the image to 32 x 32 ourselves, with
Pillow's ``reducing_gap`` (a box reduction to a few times the target, then Lanczos):
the same bits as imagehash's full Lanczos resize on the images of ../shared/data at
a bounded cost on large images.

Why not the 64 x 64 thumbnail of the near-uniform check (filters/images.py): it is a
nearest-neighbour sample, which aliases; measured on the 47 distinct kept images of
../shared/data, a 300 px wide copy then hashed up to 10 bits away from the original
(2 with the reduction here), while the closest two different pictures are 18 apart.

Threshold (same picture at distance <= ``SAME_PICTURE_MAX_DISTANCE``), from those 47
images and 155 variants of them (300 px wide, JPEG quality 70, PNG to JPEG, any to
PNG, half size at quality 70): every variant within 2 bits of its original (130 at
0, 25 at 2); the 1,081 pairs of different pictures at 18 or more (median 32; the
closest, 18 and 20, are Mona Lisa derivatives on Wikipedia's page and two book
covers). 8 leaves 6 bits for stronger re-encodings and 10 below the closest distinct
pair. pHash distances come in even numbers (the hash has as many bits above the
median as below), so 8 and 9 are the same threshold.

dHash is not kept: on the same data it moved up to 17 bits between a picture and its
300 px copy, overlapping the distinct pairs (16 and up)."""

from __future__ import annotations

import io
import warnings
from typing import Optional

import imagehash
import numpy as np
from PIL import Image

from filters.config import SafetyConfig

HASH_BITS = 64
HEX_DIGITS = HASH_BITS // 4
SAME_PICTURE_MAX_DISTANCE = SafetyConfig.same_image_max_distance    # 8 bits (one default: filters/config.py)
HASH_SIDE = 8                    # imagehash.phash: hash_size 8 (8 x 8 bits)
_MIDDLE = HASH_BITS // 2
_SIDE = 32                       # imagehash.phash: hash_size 8 x highfreq_factor 4
_REDUCING_GAP = 3.0              # reduce by boxes to >= 3 x 32 px, then Lanczos


def phash(rgb: Image.Image) -> str:
    """The 64-bit pHash of a decoded image as 16 lower-case hex digits."""
    small = rgb.convert("L").resize((_SIDE, _SIDE), Image.LANCZOS, reducing_gap=_REDUCING_GAP)
    return phash_of_grey32(small)


def phash_of_grey32(small: Image.Image) -> str:
    """``str(imagehash.phash(small))`` for a 32 x 32 grey image, without its wrapping:
    imagehash converts to grey and resizes to 32 x 32 (copies of an image already
    both), then takes the same two DCTs, the same median of the 8 x 8 lowest
    frequencies and writes the bits row by row, most significant first, as hex."""
    import scipy.fftpack      # as imagehash does, on first use
    if small.mode != "L" or small.size != (_SIDE, _SIDE):
        return str(imagehash.phash(small))
    dct = scipy.fftpack.dct(scipy.fftpack.dct(np.asarray(small), axis=0), axis=1)
    low = dct[:HASH_SIDE, :HASH_SIDE]
    # np.median of 64 values: the mean of the 32nd and 33rd smallest, (a + b) / 2 in float64
    ordered = np.sort(low, axis=None)
    middle = (ordered[_MIDDLE - 1] + ordered[_MIDDLE]) / 2
    return np.packbits(low > middle).tobytes().hex()


def phash_of_bytes(data: bytes) -> Optional[str]:
    """The pHash of encoded image bytes (first frame, transparency on white as in
    filters/images.py), or None when they do not decode."""
    from filters.images import _to_rgb
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            img.seek(0)
            img.load()
            return phash(_to_rgb(img))
    except Exception:  # Pillow raises many kinds on damaged input
        return None


def phash_int(value: str) -> int:
    """A hex pHash as an unsigned 64-bit integer."""
    if len(value) != HEX_DIGITS:
        raise ValueError(f"a pHash has {HEX_DIGITS} hex digits, got {value!r}")
    return int(value, 16)


def hamming(a: str, b: str) -> int:
    """How many of the 64 bits differ between two hex pHashes."""
    return (phash_int(a) ^ phash_int(b)).bit_count()


def same_picture(a: str, b: str, max_distance: int = SAME_PICTURE_MAX_DISTANCE) -> bool:
    return hamming(a, b) <= max_distance
