"""Scores of the evaluation tasks (paper §4; KOSMOS.md §4).

* Captioning: CIDEr-D, BLEU-4 and METEOR through pycocoevalcap, the implementation
  COCO's own evaluation server uses; SPICE when its Stanford models are installed
  (pycocoevalcap would download them at first use, which a machine without a
  network cannot). Captions are tokenized by the PTB tokenizer pycocoevalcap ships
  (Java) or, without Java, by a Python rule set that drops the same punctuation.
* VQA: the official accuracy of GT-Vision-Lab's ``vqaEval.py`` (min(1, humans who
  gave the answer / 3), averaged over the ten leave-one-out subsets of the ten
  answers). As there, the prediction is always normalised (newlines and tabs, then
  punctuation, then number words, articles and contractions); the human answers get
  the punctuation step only, and only when they disagree. VizWiz's evaluation (the
  same normalisation of the prediction, by its authors) never touches the human
  answers.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from typing import Dict, List, Optional, Tuple

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- captioning
_PTB_PUNCTUATION = {"''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-",
                    "--", "...", ";"}
_SIMPLE_TOKEN = re.compile(r"\w+(?:'\w+)?|[^\w\s]")


def java_available() -> bool:
    return shutil.which("java") is not None


PTB, PYTHON = "ptb", "python"       # which caption tokenizer a score was computed with


def _python_tokenize(captions: Dict[str, List[str]]) -> Dict[str, List[str]]:
    out = {}
    for k, caps in captions.items():
        out[k] = [" ".join(t for t in _SIMPLE_TOKEN.findall(c.lower().replace("\n", " "))
                           if t not in _PTB_PUNCTUATION) for c in caps]
    return out


def tokenize_captions_with(*groups: Dict[str, List[str]]) -> Tuple[List[Dict[str, List[str]]], str]:
    """Every group of captions tokenized by one tokenizer: (the groups, "ptb" or
    "python"). The PTB tokenizer pycocoevalcap ships (Java) where it runs, else the
    Python rules; never one group with each (references and predictions must be
    tokenized alike)."""
    if java_available():
        try:
            from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
            return [PTBTokenizer().tokenize({k: [{"caption": c} for c in v] for k, v in g.items()})
                    for g in groups], PTB
        except Exception as exc:      # a broken Java install: fall back rather than lose the scores
            log.warning("PTB tokenizer failed (%s); tokenizing in Python", exc)
    return [_python_tokenize(g) for g in groups], PYTHON


def tokenize_captions(captions: Dict[str, List[str]]) -> Dict[str, List[str]]:
    """Lower-cased, punctuation-free, space-joined tokens per caption."""
    return tokenize_captions_with(captions)[0][0]


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
    return score_captions(references, predictions, meteor, spice)[0]


def score_captions(references: Dict[str, List[str]], predictions: Dict[str, str], meteor: Optional[bool] = None,
                   spice: Optional[bool] = None) -> Tuple[Dict[str, Optional[float]], str]:
    """(``caption_scores``, the tokenizer they were computed with: "ptb" or "python").
    CIDEr-D's document frequencies come from the references given here, so a subset
    of a test set scores on the subset's frequencies."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    keys = sorted(predictions)
    missing = [k for k in keys if k not in references]
    if missing:
        raise ValueError(f"{len(missing)} predictions without references (ids {', '.join(missing[:5])})")
    empty = [k for k in keys if not references[k]]
    if empty:
        raise ValueError(f"captions of ids {', '.join(empty[:5])} have no references to score against")
    (gts, res), tokenizer = tokenize_captions_with({k: references[k] for k in keys},
                                                   {k: [predictions[k]] for k in keys})
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
    return out, tokenizer


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
# The official period pattern, quirk included: "(?!<=\d)" is a lookahead, not a
# lookbehind, so a period goes unless a digit follows it ("5." -> "5", "3.5" stays).
_PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)")
_DIGIT_COMMA = re.compile(r"(\d)(,)(\d)")
# The official script passes re.UNICODE (32) where sub() takes its count: at most the
# first 32 periods of an answer are removed.
_PERIOD_COUNT = int(re.UNICODE)
VQA_PROTOCOLS = ("vqav2", "vizwiz")


def _punctuation(text: str) -> str:
    """The official punctuation step. Each mark is deleted where the *original* text
    has it next to a space, or where the text holds a digit-comma-digit anywhere;
    otherwise it becomes a space. Case is kept."""
    out = text
    for p in _PUNCT:
        if (p + " " in text or " " + p in text) or _DIGIT_COMMA.search(text) is not None:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD.sub("", out, count=_PERIOD_COUNT)


def _digits_articles(text: str) -> str:
    """The official word step: lower case, number words to digits, articles out, then
    contractions (the map's keys with capitals, "Im", never match a lowered word)."""
    words = [_NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    words = [w for w in words if w not in _ARTICLES]
    return " ".join(_CONTRACTIONS.get(w, w) for w in words)


def normalize_vqa_answer(answer: str) -> str:
    """The official normalisation of a *predicted* answer: newlines and tabs to
    spaces, stripped, the punctuation step, then the word step."""
    text = answer.replace("\n", " ").replace("\t", " ").strip()
    return _digits_articles(_punctuation(text))


def vqa_accuracy(prediction: str, answers: List[str], protocol: str = "vqav2") -> float:
    """The official per-question accuracy of a prediction against the (usually ten)
    human answers: the mean over the leave-one-out subsets of min(1, matches / 3).

    ``vqav2`` (GT-Vision-Lab's vqaEval.py): the prediction is always normalised; the
    human answers, only when they are not all the same string, get the punctuation
    step alone (no lower case, no number words, no articles). ``vizwiz`` (VizWiz's
    vqaEval.py): the prediction likewise, the human answers never."""
    if protocol not in VQA_PROTOCOLS:
        raise ValueError(f"VQA protocol {protocol!r}: expected one of {', '.join(VQA_PROTOCOLS)}")
    if not answers:
        raise ValueError("VQA accuracy needs the human answers; this question has none")
    pred = normalize_vqa_answer(prediction)
    gts = list(answers)
    if protocol == "vqav2" and len(set(gts)) > 1:
        gts = [_punctuation(a) for a in gts]
    # one answer left out at a time (VQAv2's answers differ by answer_id, so the
    # official `item != gtAnsDatum` drops exactly one; VizWiz's script goes by index)
    accs = [min(1.0, sum(1 for j, a in enumerate(gts) if j != i and a == pred) / 3.0) for i in range(len(gts))]
    return sum(accs) / len(accs)
