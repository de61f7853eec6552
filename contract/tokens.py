"""The special tokens and the image layout: one source of truth for the model,
the tokenizer and the data loader (KOSMOS.md §2). Pure Python.

Ids: the four fairseq specials first, then the SentencePiece pieces, then the
image markers. With 64,000 pieces that is 64,007 ids, as the released Kosmos code.

Layout of an image inside a token sequence::

    ... text <image> <image_slot> x 64 </image> text ...

The model replaces the embeddings at the 64 ``<image_slot>`` positions by the
resampled image embeddings. ``<image>`` and the slots are never targets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List

BOS, PAD, EOS, UNK = "<s>", "<pad>", "</s>", "<unk>"
IMAGE_START, IMAGE_END, IMAGE_SLOT = "<image>", "</image>", "<image_slot>"
LEADING = (BOS, PAD, EOS, UNK)
TRAILING = (IMAGE_START, IMAGE_END, IMAGE_SLOT)
IGNORE_INDEX = -100


@dataclass(frozen=True)
class SpecialIds:
    num_pieces: int

    @classmethod
    def for_vocab_size(cls, vocab_size: int) -> "SpecialIds":
        """The layout of a model's vocabulary (its size counts the specials)."""
        pieces = vocab_size - len(LEADING) - len(TRAILING)
        if pieces < 1:
            raise ValueError(f"a vocabulary of {vocab_size} ids has no room for pieces beside "
                             f"{len(LEADING) + len(TRAILING)} special tokens")
        return cls(pieces)

    @property
    def bos(self) -> int:
        return 0

    @property
    def pad(self) -> int:
        return 1

    @property
    def eos(self) -> int:
        return 2

    @property
    def unk(self) -> int:
        return 3

    @property
    def image_start(self) -> int:
        return len(LEADING) + self.num_pieces

    @property
    def image_end(self) -> int:
        return self.image_start + 1

    @property
    def image_slot(self) -> int:
        return self.image_start + 2

    @property
    def vocab_size(self) -> int:
        return len(LEADING) + self.num_pieces + len(TRAILING)

    def image_block(self, num_slots: int) -> List[int]:
        return [self.image_start] + [self.image_slot] * num_slots + [self.image_end]


def vocab_size_for(num_pieces: int) -> int:
    return SpecialIds(num_pieces).vocab_size
