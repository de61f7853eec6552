"""``kosmos eval``: the paper's zero- and few-shot protocols (§4; KOSMOS.md §4) as
named tasks over standard local files. Nothing is downloaded at run time.

=============  ==========================================================  =====================
task           input (``--data``; images under ``--images_root``)          score
=============  ==========================================================  =====================
caption        COCO Karpathy / Flickr30k JSON (``dataset_coco.json``), COCO  CIDEr, BLEU-4, METEOR
               ``captions_*.json``, or JSONL ``{"image", "captions"}``      (Java), SPICE
vqa            VQAv2 questions (+ ``--annotations``), VizWiz JSON, or       VQA accuracy
               JSONL ``{"image", "question", "answers"}``
raven          JSONL ``{"id", "context": [images], "candidates": [images],  accuracy
               "answer": index}``
classify       JSONL ``{"image", "label"}``; ``--classes`` (one per line),  accuracy
               ``--descriptions`` (JSON class -> text) for in-context
               descriptions
perplexity     curated shards (``text`` / ``pairs`` / ``interleaved``)      perplexity
choice         JSONL ``{"context", "choices", "answer"}`` or HellaSwag's     accuracy (sum and
               ``{"ctx", "endings", "label"}``                              per-token log-prob)
=============  ==========================================================  =====================

Prompts are the paper's: captioning ``<image> An image of`` (beam 5); VQA
``<image> Question: {q} Answer:`` (greedy, up to ``</s>``); Raven ``Here are eight
images: ... The following image is: <image> Is it correct?`` (the number of context
images in words), the candidate with
the highest P(Yes) wins; classification by the likelihood of each class name after
``<image> The photo of the``. ``--shots k`` puts k demonstrations (from
``--demos`` or the other examples of the set, chosen by a seeded hash) before the
query. Every run writes ``predictions.jsonl`` (one line per example, with any
error that example met) and ``summary.json``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch

from trainer.inference import Prompter
from trainer.shards import url_to_fs

log = logging.getLogger(__name__)

TASKS = ("caption", "vqa", "raven", "classify", "perplexity", "choice")
CAPTION_PROMPT = "An image of"
CLASSIFY_PROMPT = "The photo of the"


@dataclass
class EvalSettings:
    task: str
    data: List[str]
    images_root: str = ""
    annotations: Optional[str] = None
    split: Optional[str] = None          # Karpathy split (default "test"); VQA/VizWiz ignore it
    limit: Optional[int] = None
    shots: int = 0
    demos: Optional[str] = None
    batch_size: int = 8
    beams: Optional[int] = None          # default: 5 for captioning, 1 (greedy) otherwise
    max_new_tokens: Optional[int] = None
    classes: Optional[str] = None
    descriptions: Optional[str] = None
    source: str = "text"                 # perplexity: which kind of shards
    seed: int = 0
    meteor: Optional[bool] = None        # None: where Java is installed
    extra: Dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- reading
def _read_text(path: str) -> str:
    fs, local = url_to_fs(path)
    with fs.open(local, "rt", encoding="utf-8", compression="infer") as fh:
        return fh.read()


def _read_json_or_jsonl(path: str) -> Any:
    text = _read_text(path)
    if path.endswith((".jsonl", ".jsonl.gz")):
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    return json.loads(text)


def _image_path(root: str, *parts: str) -> str:
    """An image's path: absolute paths and URLs as they are, others under ``root``."""
    path = ""
    for p in parts:
        if p:
            path = p if ("://" in p or os.path.isabs(p) or not path) else path.rstrip("/") + "/" + p
    if "://" in path or os.path.isabs(path) or not root:
        return path
    return root.rstrip("/") + "/" + path


def _from_lines(data, path: str, formats: str, example) -> List[Dict[str, Any]]:
    """``example(n, row)`` for each JSON line; a file of none of ``formats`` is refused."""
    if not isinstance(data, list):
        raise ValueError(f"{path}: not a {formats} file")
    return [example(n, row) for n, row in enumerate(data)]


def caption_examples(s: EvalSettings, path: str) -> List[Dict[str, Any]]:
    """[{"id", "image", "references"}] from Karpathy, COCO-captions or JSONL files."""
    data = _read_json_or_jsonl(path)
    out = []
    if isinstance(data, dict) and "images" in data and data["images"] and "sentences" in data["images"][0]:
        split = s.split or "test"
        for im in data["images"]:
            if im.get("split") not in (split, None) and split != "all":
                continue
            iid = str(im.get("cocoid", im.get("imgid", im.get("id", im["filename"]))))
            out.append({"id": iid, "image": _image_path(s.images_root, im.get("filepath", ""), im["filename"]),
                        "references": [x["raw"] for x in im["sentences"]]})
    elif isinstance(data, dict) and "annotations" in data:
        refs: Dict[Any, List[str]] = {}
        for a in data["annotations"]:
            refs.setdefault(a["image_id"], []).append(a["caption"])
        for im in data["images"]:
            if im["id"] in refs:
                out.append({"id": str(im["id"]), "image": _image_path(s.images_root, im["file_name"]),
                            "references": refs[im["id"]]})
    else:
        out = _from_lines(data, path, "Karpathy, COCO-captions or JSONL captioning", lambda n, row: {
            "id": str(row.get("id", n)), "image": _image_path(s.images_root, row["image"]),
            "references": row.get("captions") or ([row["caption"]] if "caption" in row else [])})
    return out


def vqa_examples(s: EvalSettings, path: str) -> List[Dict[str, Any]]:
    """[{"id", "image", "question", "answers"}] from VQAv2, VizWiz or JSONL files."""
    data = _read_json_or_jsonl(path)
    out = []
    if isinstance(data, dict) and "questions" in data:
        if not s.annotations:
            raise ValueError(f"{path}: VQAv2 questions need --annotations (the matching annotations file)")
        ann = {a["question_id"]: a for a in _read_json_or_jsonl(s.annotations)["annotations"]}
        subtype = data.get("data_subtype", "val2014")
        for q in data["questions"]:
            a = ann.get(q["question_id"])
            if a is None:
                continue
            name = f"COCO_{subtype}_{int(q['image_id']):012d}.jpg"
            out.append({"id": str(q["question_id"]), "image": _image_path(s.images_root, name),
                        "question": q["question"], "answers": [x["answer"] for x in a["answers"]]})
    else:
        out = _from_lines(data, path, "VQAv2, VizWiz or JSONL VQA", lambda n, row: {
            "id": str(row.get("question_id", row.get("id", row.get("image", n)))),
            "image": _image_path(s.images_root, row["image"]), "question": row["question"],
            "answers": [x["answer"] if isinstance(x, dict) else x for x in row.get("answers", [])]})
    return out


def _jsonl_examples(s: EvalSettings, path: str) -> List[Dict[str, Any]]:
    rows = _read_json_or_jsonl(path)
    if not isinstance(rows, list):
        raise ValueError(f"{path}: expected JSON lines")
    for n, row in enumerate(rows):
        row.setdefault("id", str(n))
        row["id"] = str(row["id"])
    return rows


# --------------------------------------------------------------------------- helpers
def _hash_rank(*key) -> int:
    return int.from_bytes(hashlib.sha256(repr(key).encode()).digest()[:8], "little")


def pick_demos(query_id: str, pool: Sequence[Dict[str, Any]], k: int, seed: int) -> List[Dict[str, Any]]:
    """k demonstrations for a query: the pool's examples other than the query, ordered
    by a seeded hash of (query, candidate): the same choice on every run."""
    if k <= 0:
        return []
    others = [e for e in pool if e["id"] != query_id]
    others.sort(key=lambda e: _hash_rank(seed, query_id, e["id"]))
    return others[:k]


_NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]


def _count_word(n: int) -> str:
    """A count in words, as the paper's prompt says it: "Here are eight images:"."""
    return _NUMBER_WORDS[n] if 0 <= n < len(_NUMBER_WORDS) else str(n)


def _batches(items: Sequence, size: int) -> Iterator[Sequence]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


class Evaluator:
    def __init__(self, model, tokenizer, settings: EvalSettings, image_size: int = 224, seq_len: int = 2048):
        self.model, self.tok, self.s = model, tokenizer, settings
        self.prompter = Prompter(tokenizer, model.cfg.num_image_tokens, image_size)
        self.seq_len = seq_len

    # -- shared -------------------------------------------------------------------------
    def _examples(self, reader: Callable) -> List[Dict[str, Any]]:
        out: List[Dict[str, Any]] = []
        for path in self.s.data:
            out += reader(self.s, path)
        return out[:self.s.limit] if self.s.limit else out

    def _generate_encoded(self, encoded, beams: int, max_new: int) -> List[str]:
        """Text continuations of prompts already encoded: [(ids, images), ...]."""
        ids = [i for i, _ in encoded]
        images = [im for _, ims in encoded for im in ims]
        out = self.model.generate(ids, torch.stack(images) if images else None, max_new_tokens=max_new,
                                  num_beams=beams)
        return [self.tok.decode(o).strip() for o in out]

    def _run_generation(self, examples, build: Callable, post: Callable, beams: int, max_new: int):
        """Predictions per example, a batch at a time (images are read and decoded per
        batch, never all at once); an example whose prompt cannot be made (an image
        that is missing or undecodable) is reported with its error and left out."""
        preds: Dict[str, str] = {}
        errors: Dict[str, str] = {}
        for batch in _batches(examples, self.s.batch_size):
            ready = []
            for ex in batch:
                try:
                    ready.append((ex, self.prompter.encode(build(ex))))    # (ids, decoded images)
                except Exception as exc:    # a missing/undecodable image: that example fails, the run goes on
                    errors[ex["id"]] = f"{type(exc).__name__}: {exc}"
            if not ready:
                continue
            texts = self._generate_encoded([enc for _, enc in ready], beams, max_new)
            for (ex, _), text in zip(ready, texts):
                preds[ex["id"]] = post(text)
        return preds, errors

    def _image(self, path: str) -> bytes:
        from trainer.inference import read_bytes
        return read_bytes(path)

    # -- tasks --------------------------------------------------------------------------
    def caption(self) -> Tuple[List[Dict], Dict]:
        from trainer.metrics import caption_scores
        examples = self._examples(caption_examples)
        pool = caption_examples(self.s, self.s.demos) if self.s.demos else examples

        def build(ex):
            parts: List[Any] = []
            for d in pick_demos(ex["id"], pool, self.s.shots, self.s.seed):
                ref = d["references"][0].strip().rstrip(".")
                parts += [self._image(d["image"]), f"{CAPTION_PROMPT} {ref}."]
            return parts + [self._image(ex["image"]), CAPTION_PROMPT]

        def post(text):
            return text.split("\n")[0].strip()

        preds, errors = self._run_generation(examples, build, post, self.s.beams or 5, self.s.max_new_tokens or 20)
        refs = {e["id"]: e["references"] for e in examples if e["id"] in preds}
        scores = caption_scores(refs, preds, meteor=self.s.meteor) if preds else {}
        rows = [{"id": e["id"], "image": e["image"], "prediction": preds.get(e["id"]),
                 "references": e["references"], **({"error": errors[e["id"]]} if e["id"] in errors else {})}
                for e in examples]
        return rows, scores

    def vqa(self) -> Tuple[List[Dict], Dict]:
        from trainer.metrics import vqa_accuracy
        examples = self._examples(vqa_examples)
        pool = vqa_examples(self.s, self.s.demos) if self.s.demos else examples

        def build(ex):
            parts: List[Any] = []
            for d in pick_demos(ex["id"], pool, self.s.shots, self.s.seed):
                answer = max(set(d["answers"]), key=lambda a: (d["answers"].count(a), a)) if d["answers"] else ""
                parts += [self._image(d["image"]), f"Question: {d['question']} Answer: {answer}"]
            return parts + [self._image(ex["image"]), f"Question: {ex['question']} Answer:"]

        def post(text):
            return text.split("\n")[0].split("Question:")[0].strip()

        preds, errors = self._run_generation(examples, build, post, self.s.beams or 1, self.s.max_new_tokens or 10)
        rows, accs = [], []
        for e in examples:
            row = {"id": e["id"], "question": e["question"], "prediction": preds.get(e["id"]),
                   "answers": e["answers"]}
            if e["id"] in preds:
                row["accuracy"] = vqa_accuracy(preds[e["id"]], e["answers"])
                accs.append(row["accuracy"])
            else:
                row["error"] = errors[e["id"]]
            rows.append(row)
        return rows, {"accuracy": sum(accs) / len(accs) if accs else None}

    def _score_rows(self, contexts: List[List[Any]], continuations: List[str]) -> List[Tuple[float, int]]:
        """(sum of log-probs, tokens) of each continuation after its context."""
        out = []
        for batch in _batches(list(zip(contexts, continuations)), self.s.batch_size):
            ids, images = self.prompter.batch([c for c, _ in batch])
            conts = [self.tok.encode(" " + x.strip()) or [self.tok.ids.unk] for _, x in batch]
            scores = self.model.score(ids, conts, images)
            out += [(sc, len(c)) for sc, c in zip(scores, conts)]
        return out

    def raven(self) -> Tuple[List[Dict], Dict]:
        examples = self._examples(_jsonl_examples)
        rows, right = [], 0
        for ex in examples:
            try:
                context = [f"Here are {_count_word(len(ex['context']))} images:"]
                context += [self._image(_image_path(self.s.images_root, p)) for p in ex["context"]]
                prompts = [context + ["The following image is:", self._image(_image_path(self.s.images_root, c)),
                                      "Is it correct?"] for c in ex["candidates"]]
            except Exception as exc:
                rows.append({"id": ex["id"], "error": f"{type(exc).__name__}: {exc}"})
                continue
            scores = [s for s, _ in self._score_rows(prompts, ["Yes"] * len(prompts))]
            choice = max(range(len(scores)), key=lambda i: (scores[i], -i))
            right += int(choice == int(ex["answer"]))
            rows.append({"id": ex["id"], "prediction": choice, "answer": int(ex["answer"]),
                         "p_yes": [math.exp(s) for s in scores]})
        scored = [r for r in rows if "prediction" in r]
        return rows, {"accuracy": right / len(scored) if scored else None}

    def classify(self) -> Tuple[List[Dict], Dict]:
        examples = self._examples(_jsonl_examples)
        if self.s.classes:
            classes = [c.strip() for c in _read_text(self.s.classes).splitlines() if c.strip()]
        else:
            classes = sorted({str(e["label"]) for e in examples})
        descriptions = json.loads(_read_text(self.s.descriptions)) if self.s.descriptions else {}
        preface = [f"{c}: {descriptions[c]}" for c in classes if c in descriptions]
        rows, right = [], 0
        device = self.model.decoder.embed_tokens.weight.device
        for ex in examples:
            try:
                ids, pixels = self.prompter.encode(
                    preface + [self._image(_image_path(self.s.images_root, ex["image"])), CLASSIFY_PROMPT])
            except Exception as exc:
                rows.append({"id": ex["id"], "error": f"{type(exc).__name__}: {exc}"})
                continue
            # the image is encoded once and its embeddings reused for every class name
            with torch.no_grad():
                emb = self.model.encode_images(torch.stack(pixels).to(device))
            scores = []
            for names in _batches(classes, self.s.batch_size):
                conts = [self.tok.encode(" " + c.strip()) or [self.tok.ids.unk] for c in names]
                scores += self.model.score([ids] * len(names), conts,
                                           image_embeds=emb.repeat(len(names), 1, 1))
            best = classes[max(range(len(classes)), key=lambda i: (scores[i], -i))]
            right += int(best == str(ex["label"]))
            rows.append({"id": ex["id"], "prediction": best, "label": str(ex["label"])})
        scored = [r for r in rows if "prediction" in r]
        return rows, {"accuracy": right / len(scored) if scored else None, "classes": len(classes),
                      "with_descriptions": bool(preface)}

    def choice(self) -> Tuple[List[Dict], Dict]:
        examples = self._examples(_jsonl_examples)
        for e in examples:                # HellaSwag's field names
            if "ctx" in e and "context" not in e:
                e["context"], e["choices"], e["answer"] = e["ctx"], e["endings"], e["label"]
        pool = _jsonl_examples(self.s, self.s.demos) if self.s.demos else examples
        rows, right, right_norm = [], 0, 0
        for ex in examples:
            demos = "".join(f"{d['context'].strip()} {d['choices'][int(d['answer'])].strip()}\n\n"
                            for d in pick_demos(ex["id"], pool, self.s.shots, self.s.seed))
            context = [demos + ex["context"].strip()]
            scored = self._score_rows([context] * len(ex["choices"]), list(ex["choices"]))
            by_sum = max(range(len(scored)), key=lambda i: (scored[i][0], -i))
            by_mean = max(range(len(scored)), key=lambda i: (scored[i][0] / scored[i][1], -i))
            right += int(by_sum == int(ex["answer"]))
            right_norm += int(by_mean == int(ex["answer"]))
            rows.append({"id": ex["id"], "prediction": by_sum, "prediction_per_token": by_mean,
                         "answer": int(ex["answer"])})
        n = len(rows)
        return rows, {"accuracy": right / n if n else None, "accuracy_per_token": right_norm / n if n else None}

    def perplexity(self) -> Tuple[List[Dict], Dict]:
        from trainer.data import held_out_sequences
        nll, tokens, seqs = 0.0, 0, 0
        limit = self.s.limit or 256
        for batch in held_out_sequences(self.s.data, self.s.source, self.tok, self.model.cfg.num_image_tokens,
                                        self.seq_len, self.prompter.image_size, limit, self.s.batch_size):
            with torch.no_grad():
                device = self.model.decoder.embed_tokens.weight.device
                images = batch["images"].to(device) if batch["images"] is not None else None
                out = self.model(batch["input_ids"].to(device), images=images, labels=batch["labels"].to(device))
            nll += float(out["loss_sum"])
            tokens += int(out["target_tokens"])
            seqs += batch["input_ids"].shape[0]
        mean = nll / tokens if tokens else float("nan")
        return [], {"perplexity": math.exp(mean) if tokens else None, "nll_per_token": mean if tokens else None,
                    "tokens": tokens, "sequences": seqs}

    def run(self) -> Tuple[List[Dict], Dict]:
        if self.s.task not in TASKS:
            raise ValueError(f"unknown task {self.s.task!r}; tasks: {', '.join(TASKS)}")
        self.model.eval()
        rows, scores = getattr(self, self.s.task)()
        failed = sum(1 for r in rows if "error" in r)
        summary = {"task": self.s.task, "examples": len(rows), "failed": failed, "shots": self.s.shots,
                   "scores": scores}
        return rows, summary


def write_caption_set(pairs: List[str], output: str, limit: Optional[int] = None) -> str:
    """A captioning set in the Karpathy format from curated image-caption pairs (every
    pair in the ``test`` split, its caption as the one reference), images written as
    files named by their content hash. For a quick held-out check of a run on its own
    data; the paper's numbers need COCO / Flickr30k."""
    from trainer.data import list_units, read_unit
    os.makedirs(os.path.join(output, "images"), exist_ok=True)
    images, seen = [], set()
    for unit in list_units(list(pairs), "skip", source="pairs"):
        for row in read_unit(unit, ["pair_id", "image", "caption"]):
            im = row["image"]
            if im["sha256"] in seen or not row["caption"]:
                continue
            seen.add(im["sha256"])
            name = f"{im['sha256'][:16]}.{(im.get('format') or 'jpg').lower().replace('jpeg', 'jpg')}"
            with open(os.path.join(output, "images", name), "wb") as fh:
                fh.write(im["data"])
            images.append({"filepath": "images", "filename": name, "split": "test", "imgid": len(images),
                           "pair_id": row["pair_id"], "sentences": [{"raw": row["caption"]}]})
            if limit and len(images) >= limit:
                break
        if limit and len(images) >= limit:
            break
    path = os.path.join(output, "captions.json")
    with open(path, "w", encoding="utf-8") as fh:
        json.dump({"dataset": "curated-pairs", "images": images}, fh, indent=1)
    return path


def run_eval(checkpoint: str, settings: EvalSettings, output: Optional[str], tokenizer: Optional[str] = None,
             device: str = "cpu") -> Dict[str, Any]:
    """Load, evaluate, write ``predictions.jsonl`` and ``summary.json``; the summary back."""
    from trainer.inference import load_for_inference, resolve_checkpoint
    torch.manual_seed(settings.seed)
    model, tok, cfg = load_for_inference(checkpoint, tokenizer, device)
    ev = Evaluator(model, tok, settings, cfg.data.image_size, cfg.data.seq_len)
    rows, summary = ev.run()
    summary["checkpoint"] = resolve_checkpoint(checkpoint)
    summary["settings"] = {k: v for k, v in settings.__dict__.items() if k != "extra"}
    if output:
        os.makedirs(output, exist_ok=True)
        with open(os.path.join(output, "predictions.jsonl"), "w", encoding="utf-8") as fh:
            for r in rows:
                fh.write(json.dumps(r, sort_keys=True) + "\n")
        with open(os.path.join(output, "summary.json"), "w", encoding="utf-8") as fh:
            json.dump(summary, fh, indent=2, sort_keys=True)
    return summary
