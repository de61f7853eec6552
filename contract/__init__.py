"""The contract between curation and training: what a run writes and how it is read.

Both sides import this package and nothing here imports them (only the standard
library and pyarrow), so the curation job (Beam) and the trainer (PyTorch) agree
by construction rather than by copies:

* :mod:`contract.schema`   the Parquet schemas, their column names and datasets;
* :mod:`contract.manifest` a run's layout on disk and each dataset's ``_manifest.json``
  (written, read and verified here);
* :mod:`contract.reasons`  the accounting vocabulary: levels, statuses, every reason
  code with its level and the funnel stage that removes it;
* :mod:`contract.tokens`   the special tokens and the image layout in a sequence;
* :mod:`contract.settings` configs made of sections (curation and training alike);
* :mod:`contract.hashing`  the seeded hashes both sides draw from (frozen values).
"""
