"""The Kosmos trainer (PyTorch). Never imports Beam: it reads the curated shards
through ``pipeline.schema`` and ``trainer.shards`` with pyarrow only."""
