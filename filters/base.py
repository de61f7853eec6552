"""The verdict every filter returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional


@dataclass(frozen=True)
class Verdict:
    """Keep or drop, with a reason code from a small fixed vocabulary and the
    scores that decided it (stored on the document so thresholds can be re-run)."""

    keep: bool
    reason: Optional[str] = None
    scores: Dict[str, Any] = field(default_factory=dict)

    def __bool__(self) -> bool:  # lets callers write ``if verdict:``
        return self.keep


def keep(**scores: Any) -> Verdict:
    return Verdict(True, None, dict(scores))


def drop(reason: str, **scores: Any) -> Verdict:
    return Verdict(False, reason, dict(scores))
