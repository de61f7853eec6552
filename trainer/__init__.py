"""The Kosmos trainer (PyTorch). Never imports Beam: it reads the curated shards
through ``contract.schema`` and ``trainer.shards`` with pyarrow only."""
