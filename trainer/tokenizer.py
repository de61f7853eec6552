"""SentencePiece, laid out on the model's ids (contract/tokens.py).

The SentencePiece model holds one special piece, ``<unk>`` at id 0, then the
learned pieces; bos/eos/pad are not SentencePiece pieces. Our id of a piece is
its SentencePiece id + 3, so SentencePiece's ``<unk>`` lands on our ``<unk>`` (3)
and piece 1 on 4. The image markers come after the pieces and no text can ever
encode to them: a page that contains the string ``<image>`` gets ordinary pieces.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Iterable, Iterator, List, Optional

from contract.schema import dataset_of_row
from contract.tokens import SpecialIds

SP_OFFSET = 3


def _read_model_bytes(path: str) -> bytes:
    """The bytes of a .model file, local or any fsspec URL (gs://, s3://, ...)."""
    if "://" in path:
        import fsspec
        with fsspec.open(path, "rb") as fh:
            return fh.read()
    with open(path, "rb") as fh:
        return fh.read()


def tokenizer_digest(path: str) -> str:
    """sha256 of a SentencePiece .model file."""
    return hashlib.sha256(_read_model_bytes(path)).hexdigest()


class Tokenizer:
    def __init__(self, model_path: str):
        import sentencepiece as spm
        self.path = model_path
        data = _read_model_bytes(model_path)
        if not data:
            raise ValueError(f"{model_path}: empty file, not a SentencePiece model (make one with "
                             "`kosmos tokenizer train`)")
        # what a checkpoint records of its tokenizer: another file with the same number of
        # pieces gives other ids to the same text, so resuming with it must be refused
        self.sha256 = hashlib.sha256(data).hexdigest()
        try:
            self.sp = spm.SentencePieceProcessor(model_proto=data)
        except RuntimeError as exc:
            raise ValueError(f"{model_path}: not a SentencePiece model ({str(exc).strip() or type(exc).__name__})"
                             ) from exc
        if self.sp.get_piece_size() == 0:
            raise ValueError(f"{model_path}: not a SentencePiece model (it holds no pieces)")
        if self.sp.unk_id() != 0 or self.sp.bos_id() >= 0 or self.sp.eos_id() >= 0 or self.sp.pad_id() >= 0:
            raise ValueError(f"{model_path}: expected a SentencePiece model with only <unk> (id 0) as special "
                             "piece, as `kosmos tokenizer train` writes")
        self.num_pieces = self.sp.get_piece_size() - 1
        self.ids = SpecialIds(self.num_pieces)

    @property
    def vocab_size(self) -> int:
        return self.ids.vocab_size

    def encode(self, text: str) -> List[int]:
        return [i + SP_OFFSET for i in self.sp.encode(text)]

    def encode_batch(self, texts: List[str]) -> List[List[int]]:
        return [[i + SP_OFFSET for i in ids] for ids in self.sp.encode(texts)]

    def decode(self, ids: Iterable[int]) -> str:
        """Text of the piece ids; specials and image markers are left out."""
        first, last = SP_OFFSET + 1, SP_OFFSET + self.num_pieces
        return self.sp.decode([i - SP_OFFSET for i in ids if first <= i <= last])

    def __getstate__(self):
        return {"path": self.path}

    def __setstate__(self, state):
        self.__init__(state["path"])


def train_tokenizer(texts: Iterator[str], output_prefix: str, num_pieces: int, model_type: str = "unigram",
                    character_coverage: float = 0.9995, max_sentences: int = 10_000_000,
                    byte_fallback: bool = True, threads: Optional[int] = None) -> Tokenizer:
    """Learn ``num_pieces`` pieces (fewer if the text cannot support that many) and
    write ``output_prefix.model``, ``.vocab`` and ``.json`` (our id layout)."""
    import sentencepiece as spm
    os.makedirs(os.path.dirname(os.path.abspath(output_prefix)), exist_ok=True)

    def lines() -> Iterator[str]:
        n = 0
        for text in texts:
            for line in text.split("\n"):
                line = line.strip()
                if line:
                    yield line
                    n += 1
                    if n >= max_sentences:
                        return

    spm.SentencePieceTrainer.train(
        sentence_iterator=lines(), model_prefix=output_prefix, vocab_size=num_pieces + 1,
        model_type=model_type, character_coverage=character_coverage, byte_fallback=byte_fallback,
        unk_id=0, bos_id=-1, eos_id=-1, pad_id=-1, hard_vocab_limit=False,
        input_sentence_size=max_sentences, shuffle_input_sentence=False, split_digits=True,
        num_threads=threads or os.cpu_count() or 1, minloglevel=2)
    tok = Tokenizer(output_prefix + ".model")
    ids = tok.ids
    with open(output_prefix + ".json", "w", encoding="utf-8") as fh:
        json.dump({"model": os.path.basename(output_prefix) + ".model", "num_pieces": tok.num_pieces,
                   "vocab_size": ids.vocab_size, "offset": SP_OFFSET,
                   "special_ids": {"<s>": ids.bos, "<pad>": ids.pad, "</s>": ids.eos, "<unk>": ids.unk,
                                   "<image>": ids.image_start, "</image>": ids.image_end,
                                   "<image_slot>": ids.image_slot}}, fh, indent=2)
    return tok


def dataset_texts(paths, limit_rows: Optional[int] = None) -> Iterator[str]:
    """The text of every row of curated datasets (any of the three kinds) or
    instruction files, for learning the pieces."""
    from trainer.data import list_units, read_unit
    n = 0
    for unit in list_units(list(paths), on_bad="skip"):
        for row in read_unit(unit):
            if "instruction" in row:
                text = "\n".join(x for x in (row["instruction"], row.get("input"), row["output"]) if x)
            else:
                dataset = dataset_of_row(row)
                text = dataset.text_of(row) if dataset else ""
            if text:
                yield text
            n += 1
            if limit_rows is not None and n >= limit_rows:
                return
