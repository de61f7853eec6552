"""Pure filter logic for Kosmos curation: no Beam, no I/O, no globals.

Each filter takes a document, a text or an image and returns a :class:`Verdict`
(keep, or drop with a reason code and the score that decided it). The Beam
adapters in ``transforms/`` do the counting and the routing. Two modules here do more
than judge, for the code they serve: :mod:`filters.http_fetch` downloads one image under
:mod:`filters.fetch_policy`, and :mod:`filters.budget` runs a parse call in a child
process with a time limit.
"""

from filters.base import Verdict, keep, drop

__all__ = ["Verdict", "keep", "drop"]
