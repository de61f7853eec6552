"""Personal data in text: e-mail addresses and public IP addresses (phone numbers on
request) replaced by fixed placeholders; nothing else in the text changes.

What DataTrove's ``PIIFormatter`` (0.10.1, pipeline/formatters/pii.py) does, and where we
differ:

* E-mail: its pattern (an RFC 5322-style local part, ``@``, dot-separated labels). DataTrove
  also takes a TLD of digits and image names: ``logo@2x.png`` becomes an address there. We
  ask for a TLD of letters (or ``xn--`` punycode), refuse the retina suffix ``@1.5x.``/``@2x.``
  and file extensions that are no TLD (``png``, ``jpg``, ``svg``, ...), and leave the
  reserved example domains (RFC 2606: ``example.com`` and the like) alone. No ``[IP]``
  literal domains.
* IPv4: dotted quads of 0-255, replaced when public (``ipaddress``'s ``is_global`` is
  DataTrove's test; we use ``filters.fetch_policy.address_block_reason``, the project's one
  meaning of "public", which also judges the IPv4 inside 6to4/NAT64 forms). DataTrove matches
  anywhere, so "version 1.2.3.4" and the first four parts of 1.2.3.4.5 are replaced there;
  we need the quad to stand alone (no word character or ``.digit`` on either side), not to
  follow a version word (``v``, ``version``, ``release``, ``build``, ``Product/``...), and
  not to be a number below 20 after a capitalised name ("Firefox 2.0.0.16") unless an
  address word (IP, DNS, server, host, ...) comes just before. A bare "1.2.3.4" is an
  address to us too.
* IPv6: DataTrove has none. We take hex groups with colons that ``ipaddress`` parses, public
  by the same test (so only global unicast, 2000::/3, less its special ranges).
* Placeholders: DataTrove cycles through two addresses and six random IPv4s with a counter
  that lives across documents, so a document's output depends on the ones before it. We use
  one fixed placeholder each, all reserved for documentation and not public themselves (a
  second pass changes nothing): ``email@example.com`` (RFC 2606), ``192.0.2.1`` (RFC 5737),
  ``2001:db8::1`` (RFC 3849), phone ``+1-555-0100`` (the 555-01xx block reserved for fiction).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Dict

from filters.fetch_policy import address_block_reason

PII_SCORE = "pii_replaced"      # a candidate's scores: {"emails": n, ...}, counted where its row is made
EMAIL_PLACEHOLDER = "email@example.com"
IPV4_PLACEHOLDER = "192.0.2.1"
IPV6_PLACEHOLDER = "2001:db8::1"
PHONE_PLACEHOLDER = "+1-555-0100"

_LOCAL_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789!#$%&'*+/=?^_`{|}~-.")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
# Matched from the start of the local part found by walking back from each "@" (a regex
# tried at every position of the text costs 10x more; "@" is rare).
_EMAIL = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
                    r"@((?:" + _LABEL + r"\.)+(?:[A-Za-z]{2,63}|xn--[A-Za-z0-9-]{1,59}))(?![\w-])")
_RETINA = re.compile(r"^\d+(?:\.\d+)?x\.", re.IGNORECASE)
_NOT_TLDS = frozenset("png jpg jpeg gif webp svg avif bmp ico tif tiff heic css js json xml pdf".split())
_RESERVED_MAIL_DOMAINS = ("example.com", "example.net", "example.org")
_RESERVED_MAIL_TLDS = ("example", "invalid", "test", "localhost")

# Four numbers; the octet range, the boundaries and the context are checked per match.
# Scanning starts from a literal (".d.d.d"), which re finds fast; a pattern that starts
# with a digit class or a look-behind is tried at every position (20x slower).
_QUAD_HINT = re.compile(r"\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]")
_QUAD = re.compile(r"[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}")
_VERSION_BEFORE = re.compile(
    r"(?:\b(?:v|ver|version|versions|release|rel|build|rev|revision|firmware|update|kernel|driver)"
    r"\.?\s*[:#]?\s*|[A-Za-z][\w.-]*/)$", re.IGNORECASE)
_PRODUCT_BEFORE = re.compile(r"\b[A-Z][\w+-]*\s$")           # "Firefox 2.0.0.16"
_ADDRESS_WORDS = re.compile(r"\b(?:ip|ipv4|dns|server|host|address|adresse|addr|proxy|gateway|router|"
                            r"nameserver|ping)\b", re.IGNORECASE)
# IPv6: from each "::" or ":hex:" the run of hex digits, colons and dots around it, kept
# when ipaddress parses it.
_IPV6_HINT = re.compile(r"::|:[0-9A-Fa-f]{1,4}:")
_HEX_COLON = frozenset("0123456789abcdefABCDEF:")
_PHONE = re.compile(r"(?<![\w+])(?:\+\d{1,3}[\s.-]?)?(?:\(\d{1,4}\)[\s.-]?)?\d{2,4}(?:[\s.-]\d{2,4}){1,4}(?![\w:-]|[.,]\d)")
_DATE_START = re.compile(r"^(?:\d{4}-\d{1,2}-\d{1,2}|\d{1,2}[./-]\d{1,2}[./-]\d{2,4})(?!\d)")


@dataclass(frozen=True)
class Redacted:
    text: str
    counts: Dict[str, int]          # {"emails": n, "ipv4": n, "ipv6": n, "phones": n}

    @property
    def changed(self) -> bool:
        return any(self.counts.values())


def _is_email_domain(domain: str) -> bool:
    d = domain.lower()
    if _RETINA.match(d) or d.rsplit(".", 1)[-1] in _NOT_TLDS:
        return False
    if d in _RESERVED_MAIL_DOMAINS or any(d.endswith("." + r) for r in _RESERVED_MAIL_DOMAINS):
        return False
    return d.rsplit(".", 1)[-1] not in _RESERVED_MAIL_TLDS


def _public(ip: str) -> bool:
    return address_block_reason(ip) is None


def _emails(text: str, counts: Dict[str, int]) -> str:
    out, last, at = [], 0, text.find("@")
    while at != -1:
        start = at
        while start > last and at - start < 64 and text[start - 1] in _LOCAL_CHARS:
            start -= 1      # a local part is at most 64 characters: a longer run ends in one
        # in a URL ("...?from=john.smith@gmail.com") the address starts after the last of
        # these: they are legal in a local part, and never seen in one in practice
        start = max(start, max(text.rfind(c, start, at) for c in "/?=&") + 1)
        while start < at and text[start] == ".":   # a local part does not start with a dot
            start += 1
        m = _EMAIL.match(text, start) if start < at and at - start <= 64 else None
        if m and _is_email_domain(m.group(1)):
            out.append(text[last:start])
            out.append(EMAIL_PLACEHOLDER)
            counts["emails"] += 1
            last = m.end()
        at = text.find("@", max(at + 1, last))
    if not out:
        return text
    out.append(text[last:])
    return "".join(out)


def _looks_like_version(text: str, start: int, first: int) -> bool:
    before = text[max(0, start - 32):start]
    if _VERSION_BEFORE.search(before):
        return True
    return first < 20 and bool(_PRODUCT_BEFORE.search(before)) and not _ADDRESS_WORDS.search(before)


def _ipv4s(text: str, counts: Dict[str, int]) -> str:
    out, last, n = [], 0, len(text)
    for hint in _QUAD_HINT.finditer(text):
        s = hint.start()
        if s < last:
            continue
        while s > hint.start() - 3 and s > 0 and "0" <= text[s - 1] <= "9":
            s -= 1
        m = _QUAD.match(text, s)
        if m is None or s == hint.start():
            continue
        e = m.end()
        if s and (text[s - 1].isalnum() or text[s - 1] in "._"):
            continue
        if e < n and (text[e].isalnum() or text[e] == "_" or (text[e] == "." and e + 1 < n and text[e + 1].isdigit())):
            continue
        quad = m.group(0)
        parts = quad.split(".")
        if any(len(p) > 1 and p[0] == "0" or int(p) > 255 for p in parts):
            continue                                 # 01.02.2003, 300.1.1.1: no address
        if not _public(quad) or _looks_like_version(text, s, int(parts[0])):
            continue
        out.append(text[last:s])
        out.append(IPV4_PLACEHOLDER)
        counts["ipv4"] += 1
        last = e
    if not out:
        return text
    out.append(text[last:])
    return "".join(out)


def _ipv6s(text: str, counts: Dict[str, int]) -> str:
    out, last, n, scanned = [], 0, len(text), 0
    for hint in _IPV6_HINT.finditer(text):
        s, e = hint.start(), hint.end()
        if s < max(last, scanned):      # inside a run already read: each run is walked once
            continue
        while s > last and text[s - 1] in _HEX_COLON:
            s -= 1
        while e < n and (text[e] in _HEX_COLON or text[e] == "." and e + 1 < n and text[e + 1].isdigit()):
            e += 1
        scanned = e
        if (s and (text[s - 1].isalnum() or text[s - 1] in "_.")) or (e < n and (text[e].isalnum() or text[e] == "_")):
            continue
        cand = text[s:e]
        try:
            ipaddress.IPv6Address(cand)
        except ValueError:
            continue
        if not _public(cand):
            continue
        out.append(text[last:s])
        out.append(IPV6_PLACEHOLDER)
        counts["ipv6"] += 1
        last = e
    if not out:
        return text
    out.append(text[last:])
    return "".join(out)


def redact_pii(text: str, phones: bool = False, emails: bool = True, ips: bool = True) -> Redacted:
    """``text`` with e-mail addresses, public IPv4/IPv6 addresses (and phone numbers when
    ``phones``) replaced by the fixed placeholders, and how many of each were replaced."""
    counts = {"emails": 0, "ipv4": 0, "ipv6": 0, "phones": 0}
    if emails and "@" in text:
        text = _emails(text, counts)
    if ips:
        if "." in text:             # every IPv4 candidate has one (_QUAD_HINT)
            text = _ipv4s(text, counts)
        if ":" in text:
            text = _ipv6s(text, counts)
    if phones:
        src = text

        def phone(m):
            s = m.group(0)
            digits = sum(c.isdigit() for c in s)
            if _DATE_START.match(s) or not (s.startswith("+") and digits >= 8 or 10 <= digits <= 15):
                return s
            at = m.start()
            if at >= 2 and src[at - 1] in ".:-" and src[at - 2].isdigit():
                return s                             # "10:20:...", "224.0.0.0-224.255..."
            counts["phones"] += 1
            return PHONE_PLACEHOLDER
        text = _PHONE.sub(phone, text)
    return Redacted(text, counts)
