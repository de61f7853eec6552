"""Writing small WARC files for tests (per-record gzip, WARC/1.0)."""

import gzip
import hashlib
import re
import uuid


def _record(rec_type: str, uri: str, date: str, block: bytes, content_type: str) -> bytes:
    rid = uuid.UUID(hashlib.md5(f"{rec_type}{uri}{date}".encode() + block[:64]).hexdigest())
    headers = [
        "WARC/1.0", f"WARC-Type: {rec_type}", f"WARC-Target-URI: {uri}", f"WARC-Date: {date}",
        f"WARC-Record-ID: <urn:uuid:{rid}>", f"Content-Type: {content_type}", f"Content-Length: {len(block)}",
    ]
    return ("\r\n".join(headers) + "\r\n\r\n").encode() + block + b"\r\n\r\n"


def http_response(uri: str, body: bytes, mime: str, date: str = "2024-01-01T00:00:00Z", headers=()) -> bytes:
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers)
    head = f"HTTP/1.1 200 OK\r\nContent-Type: {mime}\r\n{extra}Content-Length: {len(body)}\r\n\r\n".encode()
    return _record("response", uri, date, head + body, "application/http; msgtype=response")


def write_warc(path, records, gzip_members: bool = True):
    with open(path, "wb") as fh:
        for rec in records:
            fh.write(gzip.compress(rec, mtime=0) if gzip_members else rec)
    return str(path)


def article_with_images(srcs, name: str = "trafilatura__dw.com.colonial.html", alt: str = "Picture number {n}"):
    """The real dw.com article with the pictures placed after its first paragraphs (two
    to a paragraph: the later paragraphs of that page are outside its main content)."""
    from conftest import SHARED
    html = (SHARED / "html" / name).read_text(encoding="utf-8")
    paras = list(re.finditer(r"<p>[^<]{80,}</p>", html))[:6]
    groups = [srcs[i::len(paras)] for i in range(len(paras))]
    out, last, n = [], 0, 0
    for m, group in zip(paras, groups):
        out.append(html[last:m.end()])
        figs = []
        for src in group:
            n += 1
            figs.append(f'<img src="{src}" alt="{alt.format(n=n)}"> Figure {n}.')
        out.append("<p>" + " ".join(figs) + "</p>")
        last = m.end()
    out.append(html[last:])
    return "".join(out).encode("utf-8")
