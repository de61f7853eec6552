"""Pure filter logic for Kosmos curation: no Beam, no I/O, no globals.

Each filter takes a document, a text or an image and returns a :class:`Verdict`
(keep, or drop with a reason code and the score that decided it). The Beam
adapters in ``transforms/`` do the counting and the routing.
"""

from filters.base import Verdict, keep, drop

__all__ = ["Verdict", "keep", "drop"]
