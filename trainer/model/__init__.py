"""The Kosmos-1 model (KOSMOS.md §2), one file per part:

* ``xpos.py``      - xPos relative positions
* ``decoder.py``   - the MAGNETO (Sub-LN) causal decoder
* ``vision.py``    - the CLIP vision tower from open_clip
* ``resampler.py`` - the Perceiver Resampler
* ``kosmos.py``    - the model that splices images into the token sequence
* ``config.py``    - named configurations (``kosmos-1``, ``tiny``)
"""

from trainer.model.config import CONFIGS, KosmosConfig, get_config
from trainer.model.kosmos import KosmosModel

__all__ = ["CONFIGS", "KosmosConfig", "get_config", "KosmosModel"]
