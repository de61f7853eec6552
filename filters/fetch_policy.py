"""What the image downloader may fetch and how it waits: pure decisions, no I/O.

* Addresses: only globally routable unicast addresses. Loopback, private (RFC 1918,
  RFC 4193), link-local (with the cloud metadata address 169.254.169.254),
  multicast, reserved, unspecified, shared (100.64/10), benchmarking and
  documentation ranges are refused; IPv4-mapped IPv6 is judged as its IPv4.
  Loopback can be allowed for tests only.
* Opt-outs: ``X-Robots-Tag: noai`` or ``noimageai`` (also ``none``-style lists, or
  scoped to a user agent: ``ourbot: noai``) drops the image.
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
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
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


def robots_opt_out(values: Iterable[str], user_agent: str = "") -> bool:
    """True when an ``X-Robots-Tag`` value forbids AI use of the image, for every
    crawler or for ours (``agent: directives``)."""
    ours = user_agent.split("/", 1)[0].strip().lower()
    for value in values:
        for part in value.split(","):
            part = part.strip().lower()
            if ":" in part:
                agent, _, directive = part.partition(":")
                agent, directive = agent.strip(), directive.strip()
                if agent not in (ours, "*"):
                    continue
                part = directive
            if part in ("noai", "noimageai"):
                return True
    return False


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
