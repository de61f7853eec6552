"""Blocked sites and URLs, decided on the URL alone (page and image URLs alike).

The lists are FineWeb's: DataTrove's ``URLFilter`` reads the UT1 blocklist (Université
Toulouse Capitole, CC BY-SA 4.0) from ``datatrove/assets/url_filterblacklistsv0_3_0.tar.gz``
(its two members, ``domains`` and ``urls``, every line taken) and three word lists shipped
beside it. We read the same files from the installed datatrove package without importing
any of its modules (their requirements are not installed).

The rules, and where ours differ from DataTrove 0.10.1 (url_filter.py):

* Domains. DataTrove looks up the registered domain (tldextract, public-suffix list) and
  the full host. We look up the host and every parent domain of it, which contains both, and
  so also blocks ``www.x.blogspot.com`` when the list has ``x.blogspot.com`` (DataTrove: only
  the exact host), ``a.b.example.com`` when it has ``b.example.com``, whole TLDs the list
  names (``porn``, ``sex``, ``xxx``, ``adult``) and listed IP addresses (6,390 of them; for an
  IP host tldextract gives no registered domain and no fqdn, so DataTrove never matches one).
* URLs. DataTrove looks the URL up verbatim in ``urls``, whose lines carry no scheme
  (``host/path``), so no ``http(s)://`` URL ever matches. We compare ``host/path`` (scheme,
  ``www.``, query and fragment removed, trailing ``/`` dropped).
* Banned words: any hard-banned word among the URL's tokens (split on non-alphanumerics).
  DataTrove splits the URL as it is while the lists are lower-cased, so ``/PORN/`` passes
  there; we lower-case the URL first.
* Soft-banned words: at least 2 distinct soft words among the tokens (DataTrove's default
  ``soft_word_threshold=2``; a word listed twice counts once).
* Banned subwords: any phrase of ``banned_subwords.txt``, normalised (alphanumerics only,
  lower case: "big tits" -> "bigtits"), as a substring of the normalised URL, scheme and
  dots included ("httpswww..."), as DataTrove does.
* List files: lines starting with ``#`` are skipped (DataTrove's ``parse_list``): ``#ass`` and
  ``#cum`` leave the hard list (they stay soft words), ``#xx`` and ``#mong`` leave both.

The 4.56 M domains are held as a sorted array of 64-bit FNV-1a hashes (36 MB, built
vectorised in about a second) instead of a set of strings (~490 MB). A URL that is not on the
list is taken for one with probability about 4.6e6 / 2**64 = 2.5e-13 per name looked up.

User lists: ``extra_block`` domains are blocked with their subdomains; ``allow`` domains (and
their subdomains) pass every rule here unless the user also blocks them: user block > user
allow > the UT1 lists and the word rules.
"""

from __future__ import annotations

import importlib.util
import os
import re
import tarfile
from array import array
from bisect import bisect_left
from functools import lru_cache
from pathlib import Path
from typing import Dict, FrozenSet, Iterable, List, Optional, Tuple
from urllib.parse import urlsplit

from contract.reasons import Reason
from filters.base import Verdict, drop, keep

TARBALL = "url_filterblacklistsv0_3_0.tar.gz"
SOFT_WORD_THRESHOLD = 2             # DataTrove URLFilter's default

_FNV_OFFSET = 0xCBF29CE484222325
_FNV_PRIME = 0x100000001B3
_MASK = (1 << 64) - 1
_NON_ALNUM = re.compile(r"[^a-z0-9]+")


def datatrove_assets() -> Path:
    """The ``assets`` folder of the installed datatrove package, found without importing it."""
    spec = importlib.util.find_spec("datatrove")     # a top-level find_spec runs no module code
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the datatrove package is not installed (requirements-nodeps.txt)")
    return Path(list(spec.submodule_search_locations)[0]) / "assets"


def _word_list(path: Path) -> FrozenSet[str]:
    """One word or phrase a line, ``#`` lines skipped, normalised as DataTrove's ``normalize``."""
    out = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        if line and line[0] != "#":
            word = _NON_ALNUM.sub("", line.lower())
            if word:
                out.add(word)
    return frozenset(out)


def read_domains_file(path) -> List[str]:
    """A user list: one domain a line; blank lines and ``#`` comments skipped."""
    out = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip().lower().rstrip(".")
        if line:
            out.append(line[4:] if line.startswith("www.") else line)
    return out


def _hash_reversed(name: bytes) -> int:
    h = _FNV_OFFSET
    for b in reversed(name):
        h = ((h ^ b) * _FNV_PRIME) & _MASK
    return h


def _suffix_hashes(host: str) -> List[int]:
    """FNV-1a of every dot-suffix of ``host`` (``a.b.c``, ``b.c``, ``c``), hashed from the
    right so one pass over the bytes yields them all."""
    raw = host.encode("utf-8", "surrogatepass")
    out = []
    h = _FNV_OFFSET
    for i in range(len(raw) - 1, -1, -1):
        b = raw[i]
        h = ((h ^ b) * _FNV_PRIME) & _MASK
        if i == 0 or raw[i - 1] == 0x2E:            # a label starts here
            out.append(h)
    return out


def _hash_lines(chunk: bytes):
    """FNV-1a (bytes read right to left) of every line of ``chunk``, vectorised."""
    import numpy as np
    buf = np.frombuffer(chunk, dtype=np.uint8)
    ends = np.flatnonzero(buf == 0x0A)
    starts = np.empty_like(ends)
    starts[0] = 0
    starts[1:] = ends[:-1] + 1
    while True:                                     # strip \r and spaces at line ends
        trail = (ends > starts) & ((buf[np.maximum(ends - 1, 0)] == 0x0D) | (buf[np.maximum(ends - 1, 0)] == 0x20))
        if not trail.any():
            break
        ends = ends - trail
    lengths = ends - starts
    keep_ = lengths > 0
    ends, lengths = ends[keep_], lengths[keep_]
    order = np.argsort(-lengths, kind="stable")     # longest first: the lines still being
    ends, lengths = ends[order], lengths[order]     # hashed at step k are a prefix
    h = np.full(len(ends), _FNV_OFFSET, dtype=np.uint64)
    if not len(ends):
        return h
    prime = np.uint64(_FNV_PRIME)
    longer_than = np.searchsorted(-lengths, -np.arange(int(lengths[0])), side="left")
    for k, active in enumerate(longer_than.tolist()):
        byte = buf[ends[:active] - 1 - k].astype(np.uint64)
        h[:active] = (h[:active] ^ byte) * prime
    return h


class UrlBlocklist:
    """The UT1 domain and URL lists with DataTrove's word lists, plus user lists."""

    def __init__(self, domain_hashes: array, urls: FrozenSet[str], banned_words: FrozenSet[str],
                 soft_banned_words: FrozenSet[str], banned_subwords: Tuple[str, ...],
                 extra_block: Iterable[str] = (), allow: Iterable[str] = (),
                 soft_word_threshold: int = SOFT_WORD_THRESHOLD):
        self._domains = domain_hashes
        self.urls = urls
        self.banned_words = banned_words
        self.soft_banned_words = soft_banned_words
        self.banned_subwords = banned_subwords
        self._subword_re = re.compile(_trie_pattern(banned_subwords)) if banned_subwords else None
        self.soft_word_threshold = soft_word_threshold
        self.extra_block = frozenset(_clean_domain(d) for d in extra_block if _clean_domain(d))
        self.allow = frozenset(_clean_domain(d) for d in allow if _clean_domain(d))

    @property
    def n_domains(self) -> int:
        return len(self._domains)

    def _listed(self, h: int) -> bool:
        a = self._domains
        i = bisect_left(a, h)
        return i < len(a) and a[i] == h

    def with_user_lists(self, extra_block: Iterable[str] = (), allow: Iterable[str] = ()) -> "UrlBlocklist":
        """The same lists (shared, not copied) with user block and allow domains."""
        return UrlBlocklist(self._domains, self.urls, self.banned_words, self.soft_banned_words,
                            self.banned_subwords, extra_block, allow, self.soft_word_threshold)

    def check(self, url: str) -> Verdict:
        """Keep, or drop as ``blocked_domain`` (a listed site) or ``blocked_url_words``
        (the URL's own words), with the rule that decided in ``scores["url_rule"]``."""
        try:
            parts = urlsplit(url.strip())
            host = (parts.hostname or "").rstrip(".")
        except ValueError:
            return keep()
        if not host.isascii():                      # the list spells IDNs as punycode
            try:
                host = host.encode("idna").decode("ascii")
            except UnicodeError:
                pass
        if self.extra_block or self.allow:
            for parent in _parents(host):
                if parent in self.extra_block:
                    return drop(Reason.BLOCKED_DOMAIN, url_rule="user_block_list", matched=parent)
            if any(parent in self.allow for parent in _parents(host)):
                return keep()
        if host:
            for h in _suffix_hashes(host):
                if self._listed(h):
                    return drop(Reason.BLOCKED_DOMAIN, url_rule="domain_list")
            if self.urls:
                bare = host[4:] if host.startswith("www.") else host
                key = bare + parts.path.lower().rstrip("/")
                if key in self.urls:
                    return drop(Reason.BLOCKED_DOMAIN, url_rule="url_list")
        lowered = url.lower()
        words = set(_NON_ALNUM.split(lowered))
        hard = words & self.banned_words
        if hard:
            return drop(Reason.BLOCKED_URL_WORDS, url_rule="banned_word", matched=min(hard))
        soft = words & self.soft_banned_words
        if len(soft) >= self.soft_word_threshold:
            return drop(Reason.BLOCKED_URL_WORDS, url_rule="soft_banned_words", matched=",".join(sorted(soft)))
        if self._subword_re is not None:
            m = self._subword_re.search(_NON_ALNUM.sub("", lowered))
            if m:
                return drop(Reason.BLOCKED_URL_WORDS, url_rule="banned_subword", matched=m.group(0))
        return keep()


def _trie_pattern(words: Iterable[str]) -> str:
    """One regex for many literals, shaped as their trie ("ba(?:llgag|ngbros)"): re tries
    the branches of a plain alternation one by one at every position, the trie's one."""
    trie: dict = {}
    for w in words:
        node = trie
        for ch in w:
            node = node.setdefault(ch, {})
        node[""] = {}

    def emit(node: dict) -> str:
        ends = "" in node
        branches = [re.escape(ch) + emit(child) for ch, child in sorted(node.items()) if ch]
        if not branches:
            return ""
        body = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
        return "(?:" + body + ")?" if ends else body
    return emit(trie)


def _clean_domain(d: str) -> str:
    d = d.strip().lower().rstrip(".")
    return d[4:] if d.startswith("www.") else d


def _parents(host: str):
    """``a.b.c`` -> ``a.b.c``, ``b.c``, ``c``."""
    while host:
        yield host
        _, _, host = host.partition(".")


def _cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "kosmos" / "ut1"


def load_blocklist(assets: Optional[Path] = None, extra_block: Iterable[str] = (),
                   allow: Iterable[str] = ()) -> UrlBlocklist:
    """The lists: the tarball's hashed domains and URLs are kept on disk after the first
    read (2 s of hashing; then 36 MB read back), keyed by the tarball's size and mtime,
    so each worker process of each run does not hash 4.6 M lines again."""
    assets = Path(assets) if assets else datatrove_assets()
    tarball = assets / TARBALL
    st = tarball.stat()
    key = f"{st.st_size}-{st.st_mtime_ns}"
    cache = _cache_dir()
    table_path, urls_path = cache / f"domains-{key}.u64", cache / f"urls-{key}.txt"
    table = array("Q")
    try:
        table.frombytes(table_path.read_bytes())
        urls = frozenset(urls_path.read_text(encoding="utf-8").splitlines())
        if not table:
            raise ValueError(f"{table_path}: empty")
    except (OSError, ValueError):             # absent, or not whole: read the tarball again
        table = array("Q")
        table, urls = _read_tarball(tarball)
        try:                    # written whole, then renamed: a reader never sees half of it
            cache.mkdir(parents=True, exist_ok=True)
            for path, data in ((urls_path, "\n".join(sorted(urls)).encode("utf-8")), (table_path, table.tobytes())):
                tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
                tmp.write_bytes(data)
                os.replace(tmp, path)
        except OSError:
            pass                # a read-only home: hash again next time
    subwords = tuple(sorted(_word_list(assets / "banned_subwords.txt")))
    return UrlBlocklist(table, urls, _word_list(assets / "banned_words.txt"),
                        _word_list(assets / "soft_banned_words.txt"), subwords, extra_block, allow)


def _read_tarball(tarball: Path) -> Tuple[array, FrozenSet[str]]:
    """The UT1 tarball's ``domains`` as sorted distinct FNV-1a hashes, and its ``urls``."""
    import numpy as np
    parts = []
    urls = set()
    with tarfile.open(tarball, "r|gz") as tar:       # one pass, members in order
        for member in tar:
            if not member.isfile():
                continue
            f = tar.extractfile(member)
            name = member.name.rsplit("/", 1)[-1]
            if name == "domains":
                tail = b""
                while True:
                    block = f.read(1 << 24)
                    if not block:
                        break
                    block = tail + block
                    cut = block.rfind(b"\n") + 1
                    tail = block[cut:]
                    if cut:
                        parts.append(_hash_lines(block[:cut]))
                if tail:
                    parts.append(_hash_lines(tail + b"\n"))
            elif name == "urls":
                for line in f.read().decode("utf-8", "replace").splitlines():
                    line = line.strip().lower()
                    if line and line[0] != "#":
                        line = line[4:] if line.startswith("www.") else line
                        urls.add(line.rstrip("/"))
    hashes = np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint64)
    del parts
    hashes.sort()                                   # (np.unique hashes: 10x slower, more memory)
    if len(hashes):
        fresh = np.empty(len(hashes), dtype=bool)
        fresh[0] = True
        np.not_equal(hashes[1:], hashes[:-1], out=fresh[1:])
        hashes = hashes[fresh]
    table = array("Q")
    table.frombytes(hashes.astype(np.uint64).tobytes())
    return table, frozenset(urls)


@lru_cache(maxsize=1)
def default_blocklist() -> UrlBlocklist:
    """The shipped lists, read once per process (a Beam worker's DoFn.setup calls this)."""
    return load_blocklist()


def blocklist_with_user_files(block_domains_file=None, allow_domains_file=None) -> UrlBlocklist:
    """The shipped lists plus the user's block and allow files (one domain a line)."""
    extra = read_domains_file(block_domains_file) if block_domains_file else []
    allow = read_domains_file(allow_domains_file) if allow_domains_file else []
    return default_blocklist().with_user_lists(extra, allow)


_SITE_CACHE = 4096


class BlockedSites:
    """The site and URL rule as a filter: ``BlockedSites(cfg.safety)(page)`` judges
    anything with a ``url`` (a page, an image reference). The lists are read once per
    process, on first use, and never pickled: a Beam worker loads them itself."""

    def __init__(self, cfg):
        self.adult = cfg.block_adult_sites
        self.block_file, self.allow_file = cfg.block_domains_file, cfg.allow_domains_file
        self._list: Optional[UrlBlocklist] = None
        self._sites: Dict[str, Verdict] = {}     # check_image_url's verdicts by site (a page's
        #                                          images mostly share two or three sites)

    @property
    def active(self) -> bool:
        return bool(self.adult or self.block_file)

    def __getstate__(self):
        return {**self.__dict__, "_list": None, "_sites": {}}

    def blocklist(self) -> UrlBlocklist:
        if self._list is None:
            if self.adult:
                self._list = blocklist_with_user_files(self.block_file, self.allow_file)
            else:       # only the user's lists
                extra = read_domains_file(self.block_file) if self.block_file else []
                allow = read_domains_file(self.allow_file) if self.allow_file else []
                self._list = UrlBlocklist(array("Q"), frozenset(), frozenset(), frozenset(), (), extra, allow)
        return self._list

    def check_url(self, url: str) -> Verdict:
        return self.blocklist().check(url) if self.active else keep()

    def check_image_url(self, url: str) -> Verdict:
        """An image URL judged on its site alone (the domain lists, and the URL words of
        its host): FineWeb's word rules are made for page URLs, and an image's file name
        is a CMS's slug of its caption, where a hard-banned word is as often a bird
        ("blue-tit.jpg") or a name (pages-eval: "...-chris-leong-tit-tar.jpg", a Singapore
        food blog, was the only image URL of ../shared/data they caught)."""
        if not self.active:
            return keep()
        try:
            parts = urlsplit(url.strip())
        except ValueError:
            return keep()
        site = f"{parts.scheme}://{parts.netloc}/"
        verdict = self._sites.get(site)
        if verdict is None:
            if len(self._sites) >= _SITE_CACHE:
                self._sites.clear()
            verdict = self._sites[site] = self.blocklist().check(site)
        return verdict

    def __call__(self, item) -> Verdict:
        return self.check_url(item.url)
