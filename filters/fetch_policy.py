"""What the image downloader may fetch and how it waits: pure decisions, no I/O.

* Addresses: only globally routable unicast addresses. Loopback, private (RFC 1918,
  RFC 4193), link-local (with the cloud metadata address 169.254.169.254),
  multicast, reserved, unspecified, shared (100.64/10), benchmarking and
  documentation ranges are refused; IPv6 forms that carry an IPv4 address
  (IPv4-mapped, 6to4 2002::/16, NAT64 64:ff9b::/96 and 64:ff9b:1::/48, Teredo
  2001::/32) are judged by the IPv4 they reach.
  Loopback can be allowed for tests only.
* Opt-outs: ``X-Robots-Tag: noai`` or ``noimageai`` (in a list, or scoped to our user
  agent: ``ourbot: noai``; ``otherbot: noindex, noai`` is for otherbot only) drops the image.
  ``robots_directives`` is the one parser; filters/opt_out.py reads archived pages with it.
* Retries: 408, 429 and 5xx (and connection errors, timeouts) are retried with
  exponential backoff; ``Retry-After`` (seconds or an HTTP date) is honoured up to
  a cap.
"""

from __future__ import annotations

import ipaddress
import time
from email.utils import parsedate_to_datetime
from typing import Iterable, Optional

RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
REDIRECT_STATUS = frozenset({301, 302, 303, 307, 308})


def address_block_reason(ip: str, allow_loopback: bool = False) -> Optional[str]:
    """None if ``ip`` may be contacted, else why not (a short name)."""
    try:
        addr = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return "not_an_ip"
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:            # dual-stack delivery to the IPv4 itself
            return address_block_reason(str(addr.ipv4_mapped), allow_loopback)
        wrapped = _wrapped_ipv4(addr)
        for inner in wrapped:                       # tunnelled: loopback is never meant
            why = address_block_reason(str(inner), False)
            if why:
                return f"wrapped_{why}"
        if wrapped and addr.teredo is None:         # 6to4 / NAT64 of a public IPv4
            return None
    if addr.is_loopback:
        return None if allow_loopback else "loopback"
    if addr.is_link_local:
        return "link_local"           # includes 169.254.169.254, the cloud metadata service
    if addr.is_multicast:
        return "multicast"
    if addr.is_unspecified:
        return "unspecified"
    if addr.is_reserved:
        return "reserved"
    if isinstance(addr, ipaddress.IPv4Address) and addr in ipaddress.ip_network("100.64.0.0/10"):
        return "shared_address_space"
    if addr.is_private:
        return "private"
    if not addr.is_global:
        return "not_global"
    return None


_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))


def _wrapped_ipv4(addr: ipaddress.IPv6Address):
    """The IPv4 addresses an IPv6 address delivers to, for the forms that embed one."""
    if addr.sixtofour is not None:
        return [addr.sixtofour]
    if addr.teredo is not None:
        return list(addr.teredo)          # (server, client)
    if any(addr in net for net in _NAT64):
        return [ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)]
    return []


# Robots rules that carry a value after a colon (Google's list): "max-snippet: 20" names no
# user agent.
_VALUED_DIRECTIVES = frozenset({"max-snippet", "max-image-preview", "max-video-preview", "unavailable_after"})
AI_OPT_OUTS = frozenset({"noai", "noimageai"})


def robots_directives(values: Iterable[str], user_agent: str = "", agents: Iterable[str] = ()) -> frozenset:
    """The rules of ``X-Robots-Tag`` values that apply to us, lower-cased: those for every
    crawler and those scoped to our user agent's product token, to ``*`` or to a name in
    ``agents``. A value ``otherbot: noindex, noai`` scopes every rule after the name to
    ``otherbot`` (Google's reading: one header, one agent), until another ``name:`` part."""
    ours = {user_agent.split("/", 1)[0].strip().lower(), "*"} | {a.strip().lower() for a in agents}
    ours.discard("")
    found = set()
    for value in values:
        applies = True                          # each header value starts unscoped
        for part in value.split(","):
            part = part.strip().lower()
            if ":" in part:
                name, _, rest = part.partition(":")
                name = name.strip()
                if name not in _VALUED_DIRECTIVES and " " not in name:
                    applies = name in ours
                    part = rest.strip()
            if applies and part:
                found.add(part.split(":", 1)[0].strip() if ":" in part else part)
    return frozenset(found)


def robots_opt_out(values: Iterable[str], user_agent: str = "") -> bool:
    """True when an ``X-Robots-Tag`` value forbids AI use of the image, for every
    crawler or for ours (``agent: directives``)."""
    return bool(robots_directives(values, user_agent) & AI_OPT_OUTS)


def retry_after_seconds(value: Optional[str], now: Optional[float] = None) -> Optional[float]:
    """``Retry-After`` as seconds to wait (delta-seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return max(0.0, when - (time.time() if now is None else now))


def backoff_seconds(attempt: int, base: float, cap: float, retry_after: Optional[float] = None) -> float:
    """Wait before retry number ``attempt`` (1 = the first retry)."""
    if retry_after is not None:
        return min(cap, retry_after)
    return min(cap, base * (2 ** (attempt - 1)))
