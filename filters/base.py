"""The verdict every filter returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional

from contract.reasons import AnyReason, typed_reason


@dataclass(frozen=True)
class Verdict:
    """Keep or drop, with a reason code from a small fixed vocabulary and the
    scores that decided it (stored on the document so thresholds can be re-run)."""

    keep: bool
    reason: Optional[AnyReason] = None     # a contract.reasons.Reason member (a family member: .of(detail))
    scores: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if self.keep:
            if self.reason is not None:
                raise ValueError(f"a kept verdict has no reason, got {self.reason!r}")
        else:
            typed_reason(self.reason)

    def __bool__(self) -> bool:  # lets callers write ``if verdict:``
        return self.keep


def keep(**scores: Any) -> Verdict:
    return Verdict(True, None, dict(scores))


def drop(reason: AnyReason, **scores: Any) -> Verdict:
    return Verdict(False, reason, dict(scores))
