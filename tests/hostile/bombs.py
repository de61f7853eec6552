"""Compressed bodies that inflate far past any limit, built in a fraction of the
time it would take to compress their output, and WARC records that carry them."""

from __future__ import annotations

import struct
import zlib
from typing import Iterable, Tuple

MIB = 1 << 20


def gzip_of_zeros(n_mib: int, wbits: int = 31) -> bytes:
    """A valid gzip (``wbits`` 31), zlib (15) or raw deflate (-15) stream of ``n_mib``
    MiB of zeros. Each MiB is compressed after a full flush, so every MiB's deflate
    blocks are the same bytes: compressed once, repeated (1,037 bytes a MiB)."""
    zero = bytes(MIB)
    co = zlib.compressobj(9, zlib.DEFLATED, -15)
    piece = co.compress(zero) + co.flush(zlib.Z_FULL_FLUSH)
    assert co.compress(zero) + co.flush(zlib.Z_FULL_FLUSH) == piece
    deflate = piece * n_mib + co.flush(zlib.Z_FINISH)
    if wbits == -15:
        return deflate
    if wbits == 15:
        adler = 1
        for _ in range(n_mib):
            adler = zlib.adler32(zero, adler)
        return b"\x78\xda" + deflate + struct.pack(">I", adler)
    crc = 0
    for _ in range(n_mib):
        crc = zlib.crc32(zero, crc)
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"
    return header + deflate + struct.pack("<II", crc, (n_mib * MIB) & 0xFFFFFFFF)


def brotli_of_zeros(n_mib: int) -> bytes:
    import brotli
    c = brotli.Compressor(quality=5)
    zero = bytes(MIB)
    return b"".join(c.process(zero) for _ in range(n_mib)) + c.finish()


def zstd_of_zeros(n_mib: int) -> bytes:
    import zstandard
    c = zstandard.ZstdCompressor(level=3).compressobj()
    zero = bytes(MIB)
    return b"".join(c.compress(zero) for _ in range(n_mib)) + c.flush()


def encoded_response(uri: str, body: bytes, encoding: str, mime: str = "text/html",
                     extra: Iterable[Tuple[str, str]] = ()) -> bytes:
    """One uncompressed WARC/1.0 response record whose HTTP body is ``body`` as sent
    with ``Content-Encoding: encoding``."""
    http = [f"HTTP/1.1 200 OK", f"Content-Type: {mime}", f"Content-Encoding: {encoding}",
            f"Content-Length: {len(body)}"] + [f"{k}: {v}" for k, v in extra]
    block = ("\r\n".join(http) + "\r\n\r\n").encode("latin-1") + body
    head = ["WARC/1.0", "WARC-Type: response", f"WARC-Target-URI: {uri}", "WARC-Date: 2024-01-01T00:00:00Z",
            f"WARC-Record-ID: <urn:uuid:00000000-0000-0000-0000-{len(body) % 10 ** 12:012d}>",
            "Content-Type: application/http; msgtype=response", f"Content-Length: {len(block)}"]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + block + b"\r\n\r\n"


def tiff_with_ifds(n_ifds: int, side: int = 96, seed: int = 5) -> bytes:
    """A little-endian TIFF of one noisy RGB frame whose directory is repeated to make a
    chain of ``n_ifds`` IFDs (every one a valid frame: the same strips). 160,000 IFDs
    make an 18 MB file, as in issue 28."""
    import io

    import numpy as np
    from PIL import Image
    pixels = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "TIFF")
    data = bytearray(out.getvalue())
    assert data[:4] == b"II*\x00"
    (first,) = struct.unpack_from("<L", data, 4)
    (count,) = struct.unpack_from("<H", data, first)
    entries = bytes(data[first + 2:first + 2 + 12 * count])
    assert struct.unpack_from("<L", data, first + 2 + 12 * count) == (0,)
    ifd_size = 2 + 12 * count + 4
    base = len(data) + (len(data) & 1)          # IFDs start on a word boundary
    data += b"\x00" * (base - len(data))
    # The header's first IFD stays; its next pointer leads to the copies.
    struct.pack_into("<L", data, first + 2 + 12 * count, base if n_ifds > 1 else 0)
    copies = bytearray()
    for i in range(n_ifds - 1):
        nxt = base + (i + 1) * ifd_size if i < n_ifds - 2 else 0
        copies += struct.pack("<H", count) + entries + struct.pack("<L", nxt)
    return bytes(data + copies)
