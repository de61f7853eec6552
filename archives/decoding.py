"""Undoing the codings of an HTTP body for the archive reader: chunked transfer
coding, and Content-Encoding (gzip, deflate, br, zstd, and lists of them) with its
output capped. No Beam, no I/O; ``archives/records.py`` calls these.
"""

from __future__ import annotations

import zlib
from typing import List, Optional, Tuple

from contract.reasons import Reason


def _dechunk(body: bytes) -> Tuple[bytes, bool]:
    """Undo chunked transfer coding; (body, ok). On malformed input returns the
    input unchanged, since some archives store the body already de-chunked."""
    out = bytearray()
    pos = 0
    while True:
        end = body.find(b"\r\n", pos)
        if end < 0:
            return body, False
        size_field = body[pos:end].split(b";")[0].strip()
        try:
            size = int(size_field, 16)
        except ValueError:
            return body, False
        pos = end + 2
        if size == 0:
            return bytes(out), True
        if pos + size > len(body):
            out += body[pos:]
            return bytes(out), False
        out += body[pos:pos + size]
        pos += size + 2


# Content-Encoding inflates without an output limit of its own: gzip of zeros grows
# 1,000-fold, brotli of zeros 600,000-fold (317 bytes hold 200 MiB). Every decoder
# below stops as soon as its output passes ``limit`` (the reader's payload cap) and
# reports "too_large", holding at most the limit and a step past it.
INFLATE_STEP = 1 << 20                  # output per call, at most (brotli's: about twice that)
_ZLIB_PIECE = 1 << 16                   # input per call for gzip and deflate
_BROTLI_PIECE = 16                      # input per call where brotli cannot cap its output
_ZSTD_PIECE = 64                        # input per call for zstd: at most 2 MiB out of 64 bytes
TOO_LARGE = Reason.TOO_LARGE
_CODINGS = frozenset({"gzip", "x-gzip", "deflate", "br", "brotli", "zstd"})


def _inflate_zlib(body: bytes, wbits: int, limit: int) -> Tuple[bytes, Optional[str]]:
    """One zlib, gzip or raw deflate stream; raises zlib.error on bad data. Input in
    pieces of _ZLIB_PIECE (what zlib has not read of a piece comes back as a copy), output
    in steps of INFLATE_STEP: a bomb stops holding no more than the limit and a step."""
    d = zlib.decompressobj(wbits)
    view = memoryview(body)
    chunks: List[bytes] = []
    total = 0
    for at in range(0, len(body), _ZLIB_PIECE):
        data = view[at:at + _ZLIB_PIECE]
        while not d.eof:
            room = min(INFLATE_STEP, limit + 1 - total)
            piece = d.decompress(data, room)
            chunks.append(piece)
            total += len(piece)
            if total > limit:
                return b"", TOO_LARGE
            data = d.unconsumed_tail
            if not data and len(piece) < room:      # the piece read whole, no output held back
                break
        if d.eof:
            break
    return b"".join(chunks), (None if d.eof else Reason.CONTENT_TRUNCATED)


def _brotli_process(dec, data: bytes):
    """One call of brotli's decoder, its output capped where the installed brotli can."""
    try:
        return dec.process(data, output_buffer_limit=INFLATE_STEP)
    except TypeError:           # brotli before 1.1 takes no output_buffer_limit
        return None


def _inflate_brotli(body: bytes, limit: int) -> Tuple[bytes, Optional[str]]:
    import brotli
    dec = brotli.Decompressor()
    try:
        chunks: List[bytes] = []
        total = 0
        first = _brotli_process(dec, body)
        if first is not None:
            chunks.append(first)
            total = len(first)
            # Output held back by the cap comes with calls on no input, until one gives none.
            piece = first
            while piece and total <= limit and not dec.is_finished():
                piece = dec.process(b"", output_buffer_limit=INFLATE_STEP)
                chunks.append(piece)
                total += len(piece)
        else:
            dec = brotli.Decompressor()
            for at in range(0, len(body), _BROTLI_PIECE):
                piece = dec.process(body[at:at + _BROTLI_PIECE])
                chunks.append(piece)
                total += len(piece)
                if total > limit or dec.is_finished():
                    break
    except Exception:           # brotli.error; junk after the stream's end is one too
        return body, Reason.CONTENT_UNDECODABLE
    if total > limit:
        return b"", TOO_LARGE
    return b"".join(chunks), (None if dec.is_finished() else Reason.CONTENT_TRUNCATED)


def _inflate_zstd(body: bytes, limit: int) -> Tuple[bytes, Optional[str]]:
    import zstandard
    dec = zstandard.ZstdDecompressor().decompressobj()
    chunks: List[bytes] = []
    total = 0
    try:
        for at in range(0, len(body), _ZSTD_PIECE):
            piece = dec.decompress(body[at:at + _ZSTD_PIECE])
            chunks.append(piece)
            total += len(piece)
            if total > limit or dec.eof:
                break
    except zstandard.ZstdError:
        return body, Reason.CONTENT_UNDECODABLE
    if total > limit:
        return b"", TOO_LARGE
    return b"".join(chunks), (None if dec.eof else Reason.CONTENT_TRUNCATED)


def _decode_one(body: bytes, enc: str, limit: int) -> Tuple[bytes, Optional[str]]:
    if enc in ("gzip", "x-gzip", "deflate"):
        for wbits in ((31, 15, -15) if enc != "deflate" else (15, -15, 31)):
            try:
                return _inflate_zlib(body, wbits, limit)
            except zlib.error:
                continue
        return body, Reason.CONTENT_UNDECODABLE
    if enc in ("br", "brotli"):
        return _inflate_brotli(body, limit)
    if enc == "zstd":
        return _inflate_zstd(body, limit)
    return body, Reason.CONTENT_ENCODING_UNKNOWN


def _decode_content(body: bytes, encoding: str, limit: int) -> Tuple[bytes, Optional[str]]:
    """Undo Content-Encoding, a list of codings applied in order ("gzip, br") undone
    last first; returns (bytes, problem or None). A truncated stream yields what could
    be decoded; a coding that cannot be undone leaves the body as it came; output past
    ``limit`` bytes, at any stage, stops the decoding: (b"", "too_large")."""
    codings = [c.strip().lower() for c in encoding.split(",")]
    codings = [c for c in codings if c and c not in ("identity", "none")]
    if not codings:
        return body, None
    if any(c not in _CODINGS for c in codings):
        return body, Reason.CONTENT_ENCODING_UNKNOWN
    out, first_problem = body, None
    for coding in reversed(codings):
        out, problem = _decode_one(out, coding, limit)
        if problem in (TOO_LARGE, Reason.CONTENT_UNDECODABLE):
            return (b"", problem) if problem == TOO_LARGE else (body, problem)
        first_problem = first_problem or problem
    return out, first_problem
