"""A small curated corpus and tokenizer for the trainer benchmarks, made once and
kept under out/bench-corpus (the bundled sample WARCs through `kosmos curate`)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
INSTRUCTIONS = ROOT / "data" / "sample" / "instructions" / "self-instruct-seed-tasks.jsonl"


def corpus(out: Path = ROOT / "out" / "bench-corpus"):
    """(documents dir, tokenizer .model); curates and learns them when missing."""
    docs, tok = out / "run" / "documents", out / "tokenizer.model"
    if not (docs / "_manifest.json").exists():
        from filters.config import CurationConfig
        from pipeline.run import run_curation
        warcs = sorted(str(p) for p in (ROOT / "data" / "sample" / "warc").iterdir() if not p.name.endswith(".md"))
        run_curation(warcs, str(out / "run"), CurationConfig(), ["--runner=DirectRunner"], num_workers=2,
                     worker_log=os.devnull, overwrite=True)
    if not tok.exists():
        from trainer.tokenizer import dataset_texts, train_tokenizer
        train_tokenizer(dataset_texts([str(docs), str(INSTRUCTIONS)]), str(out / "tokenizer"), 512)
    return str(docs), str(tok)
