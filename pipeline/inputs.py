"""Input expansion: local paths, globs and Common Crawl ``warc.paths(.gz)``
listings, on any file system Beam's ``FileSystems`` knows (gs://, s3:// with the
matching extras installed)."""

from __future__ import annotations

import io
from typing import Dict, Iterable, List

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

# Common Crawl listings name files relative to the bucket root.
DEFAULT_PATHS_PREFIX = "s3://commoncrawl/"


def is_listing(path: str) -> bool:
    return path.endswith((".paths", ".paths.gz"))


def _has_scheme(path: str) -> bool:
    return "://" in path.split("/", 1)[0] + "/" or path.startswith("/")


def read_listing(path: str, prefix: str) -> List[str]:
    compression = CompressionTypes.GZIP if path.endswith(".gz") else CompressionTypes.UNCOMPRESSED
    with FileSystems.open(path, compression_type=compression) as fh:
        text = io.TextIOWrapper(fh, encoding="utf-8").read()
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        out.append(line if _has_scheme(line) else prefix.rstrip("/") + "/" + line.lstrip("/"))
    return out


def expand_inputs(patterns: Iterable[str], paths_prefix: str = DEFAULT_PATHS_PREFIX) -> List[Dict]:
    """Patterns -> sorted unique ``{"path", "size"}`` entries. A glob that matches
    nothing is an error: a typo should stop the job before any worker starts."""
    found: Dict[str, int] = {}
    for pattern in patterns:
        if is_listing(pattern):
            for path in read_listing(pattern, paths_prefix):
                found.setdefault(path, -1)  # sizes of listed files are looked up lazily
            continue
        result = FileSystems.match([pattern])[0]
        if not result.metadata_list:
            raise FileNotFoundError(f"no input matches {pattern!r}")
        for meta in result.metadata_list:
            if is_listing(meta.path):
                for path in read_listing(meta.path, paths_prefix):
                    found.setdefault(path, -1)
            else:
                found[meta.path] = meta.size_in_bytes
    return [{"path": p, "size": s} for p, s in sorted(found.items())]
