"""filters/dedup.py's normalised text, read in the compiled pass that reads the
shingles: the same string as the regular expression it replaced, on every code
point, random mixes of scripts, markup and real pages; the exact hash and the
shingles from one pass equal each on its own."""

from __future__ import annotations

import hashlib
import random
import re
import unicodedata

import numpy as np
import pytest

from conftest import SHARED
from filters.dedup import (exact_text_hash, normalize_text, shingle_hash32, shingle_hashes, text_hash_and_shingles)

_NON_WORD = re.compile(r"[\W_]+", re.UNICODE)


def reference_normalize_text(text: str) -> str:
    """normalize_text as it was: NFKC, lower case, runs of non-word characters (and
    "_") to one space, stripped."""
    text = unicodedata.normalize("NFKC", text).lower()
    return _NON_WORD.sub(" ", text).strip()


def reference_shingles(text: str, n: int):
    words = reference_normalize_text(text).split()
    if not words:
        return []
    if len(words) < n:
        return [shingle_hash32(" ".join(words))]
    return [shingle_hash32(" ".join(words[i:i + n])) for i in range(len(words) - n + 1)]


HAND_PICKED = [
    "", " ", "\t\n\r\x0b\x0c", "_", "__a__", "a_b", "one", "Hello,  World!", "  lead and trail  ",
    "İstanbul ΟΔΟΣ ὀδυσσεύς", "Straße STRASSE", "ﬁne ﬂow ǅungla ½ ² ³ ⁴ ⅷ", "x\u0301y e\u0301 \u0301alone",
    "日本語のテキスト、句読点。", "한국어 텍스트", "العربية ١٢٣ ۴۵۶", "हिन्दी पाठ", "emoji 👍🏽 ok 🇫🇷", "zw\u200bsp\u200dj",
    "nbsp\u00a0and\u2028line\u2029para\u0085nel", "\x00\x01\x1f\x7f", "tab\tcr\r", "a\ud800b\udfffc",
    "１２３ ＡＢＣ ｶﾀｶﾅ", "℃ № ™ Ⅻ ㈱", "<p class=\"x\">a&amp;b</p><script>var x_y=1;</script>",
]


def _random_texts(count: int, seed: int = 7):
    """Random mixes: ASCII, Latin-1, combining marks, other scripts, astral planes,
    lone surrogates, spaces of every kind."""
    rng = random.Random(seed)
    pools = [(0x20, 0x7e), (0x00, 0x1f), (0xa0, 0xff), (0x300, 0x36f), (0x370, 0x3ff), (0x400, 0x4ff),
             (0x600, 0x6ff), (0x900, 0x97f), (0x2000, 0x206f), (0x3000, 0x30ff), (0x4e00, 0x4fff),
             (0xac00, 0xacff), (0xd800, 0xdfff), (0xfb00, 0xfb4f), (0xff00, 0xffef), (0x1d400, 0x1d7ff),
             (0x1f300, 0x1faff), (0x10000, 0x10ffff)]
    out = []
    for _ in range(count):
        weights = [rng.random() ** 3 for _ in pools]
        chars = []
        for _ in range(rng.randint(0, 300)):
            lo, hi = rng.choices(pools, weights)[0]
            chars.append(chr(rng.randint(lo, hi)))
            if rng.random() < 0.15:
                chars.append(rng.choice(" _\n.,"))
        out.append("".join(chars))
    return out


def _page_texts():
    from filters.html import decode_html, extract_content
    texts = []
    for path in sorted((SHARED / "html").glob("*.html"))[:10]:
        html, _ = decode_html(path.read_bytes())
        texts.append(" ".join(i.text for i in extract_content(html, "https://example.org/").items if i.kind == "text"))
        texts.append(html[:20000])
    return texts


def test_normalize_text_is_the_regular_expressions_string_on_every_code_point():
    every = "".join(chr(c) for c in range(0x110000))
    for start in range(0, len(every), 4096):
        chunk = every[start:start + 4096]
        assert normalize_text(chunk) == reference_normalize_text(chunk), hex(start)
    for c in range(0, 0x110000, 1):        # each one alone between two words
        if c % 7 == 0 or 0x80 <= c < 0x3000:
            text = f"a{chr(c)}b"
            assert normalize_text(text) == reference_normalize_text(text), hex(c)


def test_normalize_text_and_the_exact_hash_equal_the_old_ones_on_varied_texts():
    texts = HAND_PICKED + _random_texts(1500) + _page_texts()
    for text in texts:
        assert normalize_text(text) == reference_normalize_text(text), text[:80]
    for k in range(0, len(texts) - 3, 3):
        paragraphs = texts[k:k + 3]
        expected = hashlib.sha256(reference_normalize_text("\n".join(paragraphs)).encode("utf-8")).hexdigest()
        assert exact_text_hash(paragraphs) == expected, paragraphs


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def test_one_pass_gives_the_exact_hash_and_the_shingles_of_each_on_its_own():
    texts = [t for t in HAND_PICKED + _random_texts(600, seed=11) + _page_texts() if _encodable(t)]
    for text in texts:
        for n in (1, 3, 5):
            text_hash, hashes = text_hash_and_shingles(text, n)
            assert text_hash == exact_text_hash([text])
            assert hashes.dtype == np.uint64 and hashes.tolist() == shingle_hashes(text, n).tolist()
            assert hashes.tolist() == reference_shingles(text, n), (text[:80], n)


def test_a_lone_surrogate_is_refused_where_it_was_and_read_where_it_was():
    """normalize_text read one as a separator; the shingles refused it (UTF-32): both stay so."""
    text = "one\ud800two three"
    assert normalize_text(text) == reference_normalize_text(text) == "one two three"
    for refused in (lambda: shingle_hashes(text, 5), lambda: text_hash_and_shingles(text, 5)):
        with pytest.raises(UnicodeEncodeError):
            refused()


@pytest.mark.parametrize("near", [True, False])
def test_dedup_keys_are_those_of_the_hash_and_shingles_computed_apart(near):
    from filters.config import DedupConfig
    from filters.dedup import MinHasher, band_keys
    from transforms.dedup import MakeDedupKeys
    from transforms.records import Candidate, Provenance

    cfg = DedupConfig(near=near)
    make = MakeDedupKeys(cfg)
    make.setup()
    hasher = MinHasher(cfg.bands * cfg.rows, cfg.seed)
    for k, text in enumerate(HAND_PICKED[:20] + _page_texts()[:6]):
        paragraphs = [p for p in text.split("\n") if p] or [text]
        items = [{"type": "text", "text": p} for p in paragraphs] + [{"type": "image", "url": "https://x/i.png"}]
        c = Candidate(f"d{k}", f"https://example.org/{k}", "2024-01-01T00:00:00Z", None, Provenance("f.warc.gz", k),
                      items, {})
        if not all(_encodable(p) for p in paragraphs):
            continue
        (key,) = list(make.process(c))
        hashes = shingle_hashes("\n".join(paragraphs), cfg.ngram)
        bands = tuple(band_keys(hasher.of_hashes(hashes), cfg.bands, cfg.rows)) if near and len(hashes) else ()
        assert key.text_hash == exact_text_hash(paragraphs) and key.bands == bands
