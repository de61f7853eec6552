"""Input expansion: local paths, globs and Common Crawl ``warc.paths(.gz)``
listings, on any file system Beam's ``FileSystems`` knows (gs://, s3:// with the
matching extras installed), and HTTP(S) URLs (no globs there), which
``archives/remote.py`` streams with resume."""

from __future__ import annotations

import gzip
import os
import re
from typing import Dict, Iterable, List

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from archives.remote import input_size, is_http
from transforms.filesystems import open_input

# Common Crawl listings name files relative to the bucket root; its public access is
# HTTPS (s3://commoncrawl/ needs AWS credentials).
DEFAULT_PATHS_PREFIX = "https://data.commoncrawl.org/"


def is_listing(path: str) -> bool:
    return path.endswith((".paths", ".paths.gz"))


_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def _has_scheme(path: str) -> bool:
    """An absolute location: a URL with a scheme (s3://, gs://, https://, file://, ...)
    or an absolute local path. Anything else is relative to ``--paths_prefix``."""
    return bool(_SCHEME.match(path)) or path.startswith("/")


def read_listing(path: str, prefix: str) -> List[str]:
    if is_http(path):
        with open_input(path) as raw:
            data = raw.read()
        if path.endswith(".gz"):
            data = gzip.decompress(data)
        text = data.decode("utf-8")
    else:
        compression = CompressionTypes.GZIP if path.endswith(".gz") else CompressionTypes.UNCOMPRESSED
        with FileSystems.open(path, compression_type=compression) as fh:
            text = fh.read().decode("utf-8")     # Beam's CompressedFile is no io.IOBase for TextIOWrapper
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        out.append(line if _has_scheme(line) else prefix.rstrip("/") + "/" + line.lstrip("/"))
    return out


_GLOB = re.compile(r"[*?\[]")


def _is_local_directory(path: str) -> bool:
    """Beam's local match gives a directory named without a glob as one entry of 4 KiB;
    read as an archive it would end as 0 documents and a finished run."""
    if _SCHEME.match(path) and not path.startswith("file://"):
        return False
    return os.path.isdir(path[len("file://"):] if path.startswith("file://") else path)


def _holds_files(pattern: str) -> bool:
    try:
        return bool(FileSystems.match([pattern.rstrip("/") + "/*"])[0].metadata_list)
    except Exception:
        return False


def _directory_message(path: str) -> str:
    # Refused rather than expanded: a directory may hold more than archives (logs,
    # listings, a run's own outputs) and a glob says which files are meant; object
    # stores have no directories to expand the same way.
    return (f"--input {path!r} is a directory; give the archives in it, e.g. --input '{path.rstrip('/')}/*' "
            f"(quoted, so the job expands it)")


def expand_inputs(patterns: Iterable[str], paths_prefix: str = DEFAULT_PATHS_PREFIX) -> List[Dict]:
    """Patterns -> sorted unique ``{"path", "size"}`` entries. A glob that matches
    nothing is an error: a typo should stop the job before any worker starts."""
    found: Dict[str, int] = {}
    for pattern in patterns:
        if is_http(pattern) and not is_listing(pattern):
            found[pattern] = input_size(pattern)
            continue
        if is_listing(pattern):
            for path in read_listing(pattern, paths_prefix):
                found.setdefault(path, -1)  # sizes of listed files are looked up lazily
            continue
        result = FileSystems.match([pattern])[0]
        if not result.metadata_list:
            if not _GLOB.search(pattern) and _holds_files(pattern):    # an object store's "directory"
                raise IsADirectoryError(_directory_message(pattern))
            raise FileNotFoundError(f"no input matches {pattern!r}")
        for meta in result.metadata_list:
            if _is_local_directory(meta.path):
                raise IsADirectoryError(_directory_message(pattern if meta.path == pattern else meta.path))
            if is_listing(meta.path):
                for path in read_listing(meta.path, paths_prefix):
                    found.setdefault(path, -1)
            else:
                found[meta.path] = meta.size_in_bytes
    return [{"path": p, "size": s} for p, s in sorted(found.items())]
