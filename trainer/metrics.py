"""Scores of the evaluation tasks (paper §4; KOSMOS.md §4).

* Captioning: CIDEr-D, BLEU-4 and METEOR through pycocoevalcap, the implementation
  COCO's own evaluation server uses; SPICE when its Stanford models are installed
  (pycocoevalcap would download them at first use, which a machine without a
  network cannot). Captions are tokenized by the PTB tokenizer pycocoevalcap ships
  (Java) or, without Java, by a Python rule set that drops the same punctuation.
* VQA: the official accuracy (min(1, humans who gave the answer / 3), averaged over
  the ten leave-one-out subsets of the ten answers) after the official answer
  normalisation (punctuation, number words, articles, contractions).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from typing import Dict, List, Optional

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- captioning
_PTB_PUNCTUATION = {"''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-",
                    "--", "...", ";"}
_SIMPLE_TOKEN = re.compile(r"\w+(?:'\w+)?|[^\w\s]")


def java_available() -> bool:
    return shutil.which("java") is not None


def tokenize_captions(captions: Dict[str, List[str]]) -> Dict[str, List[str]]:
    """Lower-cased, punctuation-free, space-joined tokens per caption."""
    if java_available():
        try:
            from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
            return PTBTokenizer().tokenize({k: [{"caption": c} for c in v] for k, v in captions.items()})
        except Exception as exc:      # a broken Java install: fall back rather than lose the scores
            log.warning("PTB tokenizer failed (%s); tokenizing in Python", exc)
    out = {}
    for k, caps in captions.items():
        out[k] = [" ".join(t for t in _SIMPLE_TOKEN.findall(c.lower().replace("\n", " "))
                           if t not in _PTB_PUNCTUATION) for c in caps]
    return out


def spice_available() -> bool:
    import importlib.util
    spec = importlib.util.find_spec("pycocoevalcap.spice.spice")      # a namespace package: no __file__
    if spec is None or not spec.origin:
        return False
    lib = os.path.join(os.path.dirname(spec.origin), "lib")
    return java_available() and os.path.exists(os.path.join(lib, "stanford-corenlp-3.6.0.jar")) and \
        os.path.exists(os.path.join(lib, "stanford-corenlp-3.6.0-models.jar"))


def caption_scores(references: Dict[str, List[str]], predictions: Dict[str, str],
                   meteor: Optional[bool] = None, spice: Optional[bool] = None) -> Dict[str, Optional[float]]:
    """Corpus scores of predicted captions against their references (same keys).
    ``meteor`` / ``spice``: None runs them where they can run (Java; SPICE's models)."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    keys = sorted(predictions)
    if set(keys) - set(references):
        raise ValueError("every prediction needs references")
    gts = tokenize_captions({k: references[k] for k in keys})
    res = tokenize_captions({k: [predictions[k]] for k in keys})
    out: Dict[str, Optional[float]] = {}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    out.update({f"BLEU-{i + 1}": float(b) for i, b in enumerate(bleu)})
    out["CIDEr"] = float(Cider().compute_score(gts, res)[0])
    run_meteor = java_available() if meteor is None else meteor
    out["METEOR"] = None
    if run_meteor:
        from pycocoevalcap.meteor.meteor import Meteor
        scorer = Meteor()
        try:
            out["METEOR"] = float(scorer.compute_score(gts, res)[0])
        finally:
            scorer.close() if hasattr(scorer, "close") else None
    run_spice = spice_available() if spice is None else spice
    out["SPICE"] = None
    if run_spice:
        from pycocoevalcap.spice.spice import Spice
        out["SPICE"] = float(Spice().compute_score(gts, res)[0])
    return out


# --------------------------------------------------------------------------- VQA
_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's",
    "howd": "how'd", "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm",
    "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll",
    "let's": "let's", "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've",
    "mightn'tve": "mightn't've", "mightve": "might've", "mustnt": "mustn't", "mustve": "must've",
    "neednt": "needn't", "notve": "not've", "oclock": "o'clock", "oughtnt": "oughtn't",
    "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at", "shant": "shan't",
    "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's", "shouldve": "should've",
    "shouldnt": "shouldn't", "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd", "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd",
    "someoned've": "someone'd've", "someone'dve": "someone'd've", "someonell": "someone'll",
    "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's", "thered": "there'd",
    "thered've": "there'd've", "there'dve": "there'd've", "therere": "there're", "theres": "there's",
    "theyd": "they'd", "theyd've": "they'd've", "they'dve": "they'd've", "theyll": "they'll",
    "theyre": "they're", "theyve": "they've", "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've",
    "we'dve": "we'd've", "weve": "we've", "werent": "weren't", "whatll": "what'll", "whatre": "what're",
    "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd", "wheres": "where's",
    "whereve": "where've", "whod": "who'd", "whod've": "who'd've", "who'dve": "who'd've", "wholl": "who'll",
    "whos": "who's", "whove": "who've", "whyll": "why'll", "whyre": "why're", "whys": "why's",
    "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll",
    "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've", "youd": "you'd",
    "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're", "youve": "you've",
}
_NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
                 "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = {"a", "an", "the"}
_PUNCT = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!"]
_PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)")      # the official pattern, quirk included
_DIGIT_COMMA = re.compile(r"(\d)(,)(\d)")


def _punctuation(text: str) -> str:
    out = text
    for p in _PUNCT:
        if (p + " " in text or " " + p in text) or _DIGIT_COMMA.search(text) is not None:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD.sub("", out)


def _digits_articles(text: str) -> str:
    words = [_NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    words = [w for w in words if w not in _ARTICLES]
    return " ".join(_CONTRACTIONS.get(w, w) for w in words)


def normalize_vqa_answer(answer: str) -> str:
    """The official normalisation of one answer."""
    text = answer.replace("\n", " ").replace("\t", " ").strip()
    return _digits_articles(_punctuation(text)).strip()


def vqa_accuracy(prediction: str, answers: List[str]) -> float:
    """The official per-question accuracy against the (usually ten) human answers.
    As the official script, answers are normalised only when the humans disagree."""
    pred = prediction.replace("\n", " ").replace("\t", " ").strip()
    gts = [a.replace("\n", " ").replace("\t", " ").strip() for a in answers]
    if len(set(gts)) > 1:
        pred = normalize_vqa_answer(pred)
        gts = [normalize_vqa_answer(a) for a in gts]
    if not gts:
        return 0.0
    accs = []
    for i in range(len(gts)):
        others = gts[:i] + gts[i + 1:]
        accs.append(min(1.0, sum(1 for a in others if a == pred) / 3.0))
    return sum(accs) / len(accs)
