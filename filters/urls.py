"""URLs, normalised one way: the form image references meet image records in and
an HTTP client sends (``normalize_url``), and the key documents are deduplicated on
(``url_key``: the same form, with the default port and the password dropped and an
empty path made '/'). Pure Python."""

from __future__ import annotations

from urllib.parse import quote, urldefrag, urlsplit, urlunsplit

# Characters left as they are when a URL is put in its percent-encoded form: the
# reserved and unreserved sets of RFC 3986, and "%" itself (already-encoded stays so).
_URL_SAFE = "/:@!$&'()*+,;=-._~%?#[]"


def _encode_host(host: str) -> str:
    try:
        return host.encode("idna").decode("ascii") if not host.isascii() else host
    except UnicodeError:
        return host


def normalize_url(url: str) -> str:
    """Fragment removed, scheme and host lower-cased, and in its percent-encoded
    ASCII form (an IRI's path and query in UTF-8, a non-ASCII host in IDNA, spaces
    and controls escaped): the key on which image references meet image records,
    and a URL an HTTP client can send as it is."""
    url = url.strip()
    if url.lower().startswith("data:"):
        return url
    try:
        absolute, _ = urldefrag(url)
        parts = urlsplit(absolute)
        netloc = parts.netloc.lower()
        if not netloc.isascii():
            userinfo, at, hostport = netloc.rpartition("@")
            host, colon, port = hostport.partition(":") if not hostport.startswith("[") else (hostport, "", "")
            netloc = userinfo + at + _encode_host(host) + colon + port
        return parts._replace(scheme=parts.scheme.lower(), netloc=netloc,
                              path=quote(parts.path, safe=_URL_SAFE),
                              query=quote(parts.query, safe=_URL_SAFE)).geturl()
    except ValueError:
        return url


def url_key(url: str) -> str:
    """The URL a document is deduplicated on: ``normalize_url``'s form (so an IRI and
    its percent-encoded spelling are one URL), default port and password removed, an
    empty path made '/'."""
    url = normalize_url(url)
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return url
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if port == {"http": 80, "https": 443}.get(scheme):
        port = None
    netloc = host + (f":{port}" if port else "")
    if parts.username:
        netloc = parts.username + "@" + netloc
    return urlunsplit((scheme, netloc, parts.path or "/", parts.query, ""))
