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

The files are read and checked before the model is loaded: every error names the
file and its line (JSON lines) or index (JSON); ids must be unique over all of
``--data`` (a row without one is known by ``file:line``; VizWiz's by its image); a
question without answers or an image without reference captions is refused unless
``--predict_only``. VQA is scored by the official rules (``trainer/metrics.py``:
VQAv2's for VQAv2 and JSON lines, VizWiz's for a VizWiz file). The summary records
the precision, the ranks, ``limit``, the caption tokenizer and whether CIDEr's
document frequencies came from the whole set (``cider_df``: full | subset).

On a GPU the model runs under bf16 autocast (``--precision auto``); under torchrun
every rank takes its share of the examples and rank 0 scores and writes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch

from contract.hashing import seeded_hash
from trainer.config import EVAL_TASKS
from trainer.inference import Prompter
from trainer.shards import url_to_fs

log = logging.getLogger(__name__)

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
    precision: str = "auto"              # auto (bf16 autocast on a GPU, fp32 on the CPU) | bf16 | fp32
    predict_only: bool = False           # caption/vqa: references/answers not needed, nothing scored
    extra: Dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- reading
class EvalDataError(ValueError):
    """An evaluation file that cannot be used as it is. The message starts with where:
    ``file:line`` for JSON lines, ``file[index]`` or ``file: images[index]`` for JSON."""


def _read_text(path: str) -> str:
    fs, local = url_to_fs(path)
    with fs.open(local, "rt", encoding="utf-8", compression="infer") as fh:
        return fh.read()


def _is_jsonl(path: str) -> bool:
    return path.endswith((".jsonl", ".jsonl.gz"))


def _load(path: str) -> Tuple[Any, Optional[List[int]]]:
    """(the parsed file, None) for JSON; (its rows, their 1-based line numbers) for
    JSON lines (blank lines skipped)."""
    text = _read_text(path)
    if _is_jsonl(path):
        rows, lines = [], []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise EvalDataError(f"{path}:{n}: not a JSON line ({exc.msg})") from None
            lines.append(n)
        return rows, lines
    try:
        return json.loads(text), None
    except json.JSONDecodeError as exc:
        raise EvalDataError(f"{path}: not JSON (line {exc.lineno}: {exc.msg})") from None


def _read_json_or_jsonl(path: str) -> Any:
    return _load(path)[0]


def _located(path: str, data: Any, formats: str) -> List[Tuple[str, Dict[str, Any]]]:
    """(where, row) of each row of a JSON-lines file or a JSON list; anything else is
    not one of ``formats``."""
    rows, lines = data
    if not isinstance(rows, list):
        raise EvalDataError(f"{path}: not a {formats} file")
    out = []
    for i, row in enumerate(rows):
        where = f"{path}:{lines[i]}" if lines is not None else f"{path}[{i}]"
        if not isinstance(row, dict):
            raise EvalDataError(f"{where}: expected a JSON object, got {type(row).__name__}")
        out.append((where, row))
    return out


def _need(row: Dict[str, Any], key: str, where: str, kind: type = str) -> Any:
    """``row[key]``, which must be there, of ``kind`` and not empty."""
    if not isinstance(row, dict):
        raise EvalDataError(f"{where}: expected a JSON object, got {type(row).__name__}")
    value = row.get(key)
    if value is None or value == "" or value == []:
        raise EvalDataError(f"{where}: no {key!r}")
    if not isinstance(value, kind):
        raise EvalDataError(f"{where}: {key!r} should be a {kind.__name__}, not {type(value).__name__}")
    return value


def _own_id(row: Dict[str, Any], where: str, keys: Sequence[str] = ("id",)) -> str:
    """A row's id: its first of ``keys`` that is set, else where it is (file:line),
    never a field two rows may share (two questions about one image)."""
    for k in keys:
        if row.get(k) not in (None, ""):
            return str(row[k])
    return where


def check_unique_ids(examples: Sequence[Dict[str, Any]]) -> None:
    """Refuse two examples with one id (one would be scored with the other's prediction)."""
    seen: Dict[str, str] = {}
    for e in examples:
        if e["id"] in seen:
            raise EvalDataError(f"duplicate id {e['id']!r}: {seen[e['id']]} and {e['where']} (ids must be unique)")
        seen[e["id"]] = e["where"]


def _image_path(root: str, *parts: str) -> str:
    """An image's path: absolute paths and URLs as they are, others under ``root``."""
    path = ""
    for p in parts:
        if p:
            path = p if ("://" in p or os.path.isabs(p) or not path) else path.rstrip("/") + "/" + p
    if "://" in path or os.path.isabs(path) or not root:
        return path
    return root.rstrip("/") + "/" + path


def _references(refs: Any, where: str, s: EvalSettings, field_name: str) -> List[str]:
    if not refs:
        if s.predict_only:
            return []
        raise EvalDataError(f"{where}: no reference captions ({field_name!r}); captions are scored against "
                            "them (or pass --predict_only)")
    if not isinstance(refs, list) or not all(isinstance(r, str) and r.strip() for r in refs):
        raise EvalDataError(f"{where}: {field_name!r} should be a list of non-empty strings")
    return refs


def caption_examples(s: EvalSettings, path: str) -> List[Dict[str, Any]]:
    """[{"id", "image", "references", "where"}] from Karpathy, COCO-captions or JSONL
    files; every image needs references unless ``predict_only``."""
    loaded = _load(path)
    data = loaded[0]
    out = []
    if isinstance(data, dict) and isinstance(data.get("images"), list) and data["images"] and \
            isinstance(data["images"][0], dict) and "sentences" in data["images"][0]:
        split = s.split or "test"
        for i, im in enumerate(data["images"]):
            where = f"{path}: images[{i}]"
            if not isinstance(im, dict):
                raise EvalDataError(f"{where}: expected a JSON object")
            if im.get("split") not in (split, None) and split != "all":
                continue
            name = _need(im, "filename", where)
            iid = str(im.get("cocoid", im.get("imgid", im.get("id", name))))
            sentences = im.get("sentences") or []
            if not all(isinstance(x, dict) and isinstance(x.get("raw"), str) for x in sentences):
                raise EvalDataError(f"{where}: every sentence needs its 'raw' text")
            out.append({"id": iid, "where": where, "image": _image_path(s.images_root, im.get("filepath", ""), name),
                        "references": _references([x["raw"] for x in sentences], where, s, "sentences")})
    elif isinstance(data, dict) and isinstance(data.get("images"), list):
        if "annotations" not in data and not s.predict_only:
            raise EvalDataError(f"{path}: COCO images without 'annotations' (the captions to score against; "
                                "or pass --predict_only)")
        refs: Dict[Any, List[str]] = {}
        for j, a in enumerate(data.get("annotations") or []):
            where = f"{path}: annotations[{j}]"
            _need(a, "image_id", where, object)
            refs.setdefault(a["image_id"], []).append(_need(a, "caption", where))
        ids = set()
        for i, im in enumerate(data["images"]):
            where = f"{path}: images[{i}]"
            _need(im, "id", where, object)
            ids.add(im["id"])
            out.append({"id": str(im["id"]), "where": where,
                        "image": _image_path(s.images_root, _need(im, "file_name", where)),
                        "references": _references(refs.get(im["id"]), where, s, "annotations")})
        stray = [k for k in refs if k not in ids]
        if stray:
            raise EvalDataError(f"{path}: captions of image_id {stray[0]!r} (and {len(stray) - 1} more) whose "
                                "image is not in 'images'")
    else:
        for where, row in _located(path, loaded, "Karpathy, COCO-captions or JSONL captioning"):
            caps = row.get("captions") if "captions" in row else ([row["caption"]] if row.get("caption") else [])
            out.append({"id": _own_id(row, where), "where": where,
                        "image": _image_path(s.images_root, _need(row, "image", where)),
                        "references": _references(caps, where, s, "captions")})
    return out


def _answers(raw: Any, where: str, s: EvalSettings) -> List[str]:
    if not raw:
        if s.predict_only:
            return []
        raise EvalDataError(f"{where}: no 'answers' (the human answers VQA accuracy needs; "
                            "or pass --predict_only to write predictions without scores)")
    if not isinstance(raw, list):
        raise EvalDataError(f"{where}: 'answers' should be a list")
    out = []
    for x in raw:
        a = x.get("answer") if isinstance(x, dict) else x
        if not isinstance(a, str):
            raise EvalDataError(f"{where}: an answer should be a string or {{'answer': string}}, not {x!r}")
        out.append(a)
    return out


def _vqav2_image_name(subtype: str, image_id: Any) -> str:
    # test-dev's questions are about test2015's images, which carry that name
    folder = "test2015" if subtype == "test-dev2015" else subtype
    return f"COCO_{folder}_{int(image_id):012d}.jpg"


def vqa_examples(s: EvalSettings, path: str) -> List[Dict[str, Any]]:
    """[{"id", "image", "question", "answers", "protocol", "where"}] from VQAv2
    questions (+ ``annotations``), a VizWiz JSON list or JSONL files. Every question
    needs its human answers unless ``predict_only``; ``protocol`` says how they are
    scored (VizWiz's own rule for a VizWiz file, VQAv2's otherwise)."""
    loaded = _load(path)
    data = loaded[0]
    out = []
    if isinstance(data, dict) and "questions" in data:
        ann: Dict[Any, Tuple[str, Dict]] = {}
        if s.annotations:
            adata = _read_json_or_jsonl(s.annotations)
            if not isinstance(adata, dict) or not isinstance(adata.get("annotations"), list):
                raise EvalDataError(f"{s.annotations}: not a VQAv2 annotations file (no 'annotations' list)")
            for j, a in enumerate(adata["annotations"]):
                ann[_need(a, "question_id", f"{s.annotations}: annotations[{j}]", object)] = \
                    (f"{s.annotations}: annotations[{j}]", a)
        elif not s.predict_only:
            raise EvalDataError(f"{path}: VQAv2 questions need --annotations (the matching annotations file), "
                                "or --predict_only")
        subtype = data.get("data_subtype", "val2014")
        for i, q in enumerate(data["questions"]):
            where = f"{path}: questions[{i}]"
            qid = _need(q, "question_id", where, object)
            answers: List[str] = []
            if s.annotations:
                if qid not in ann and not s.predict_only:
                    raise EvalDataError(f"{where}: question_id {qid} has no annotation in {s.annotations}")
                if qid in ann:
                    awhere, a = ann[qid]
                    answers = _answers(a.get("answers"), awhere, s)
            else:
                answers = []
            out.append({"id": str(qid), "where": where, "protocol": "vqav2",
                        "image": _image_path(s.images_root,
                                             _vqav2_image_name(subtype, _need(q, "image_id", where, object))),
                        "question": _need(q, "question", where), "answers": answers})
    else:
        vizwiz = not _is_jsonl(path)          # a JSON list of questions is VizWiz's layout
        for where, row in _located(path, loaded, "VQAv2, VizWiz or JSONL VQA"):
            image = _need(row, "image", where)
            # VizWiz asks one question per image and names none: its image is its id
            rid = image if vizwiz and not any(row.get(k) for k in ("question_id", "id")) else \
                _own_id(row, where, ("question_id", "id"))
            out.append({"id": rid, "where": where, "protocol": "vizwiz" if vizwiz else "vqav2",
                        "image": _image_path(s.images_root, image), "question": _need(row, "question", where),
                        "answers": _answers(row.get("answers"), where, s)})
    return out


# the fields each JSON-lines task needs: (names, or other names in another layout)
_TASK_FIELDS = {
    "raven": [("context", "candidates", "answer")],
    "classify": [("image", "label")],
    "choice": [("context", "choices", "answer"), ("ctx", "endings", "label")],   # ours; HellaSwag's
}


def _jsonl_examples(s: EvalSettings, path: str) -> List[Dict[str, Any]]:
    out = []
    layouts = _TASK_FIELDS.get(s.task)
    for where, row in _located(path, _load(path), "JSON lines"):
        if layouts and not any(all(row.get(k) not in (None, "", []) for k in names) for names in layouts):
            wanted = " or ".join("/".join(names) for names in layouts)
            missing = [k for k in layouts[0] if row.get(k) in (None, "", [])]
            raise EvalDataError(f"{where}: a {s.task} example needs {wanted} (missing {', '.join(missing)})")
        row = dict(row, id=_own_id(row, where), where=where)
        if s.task == "raven":
            n = len(row["candidates"])
            if not isinstance(row["answer"], int) or not 0 <= row["answer"] < n:
                raise EvalDataError(f"{where}: 'answer' should be the index of one of the {n} candidates")
        out.append(row)
    return out


# --------------------------------------------------------------------------- helpers
def pick_demos(query_id: str, pool: Sequence[Dict[str, Any]], k: int, seed: int) -> List[Dict[str, Any]]:
    """k demonstrations for a query: the pool's examples other than the query, ordered
    by a seeded hash of (query, candidate): the same choice on every run."""
    if k <= 0:
        return []
    others = [e for e in pool if e["id"] != query_id]
    others.sort(key=lambda e: seeded_hash(seed, query_id, e["id"]))
    return others[:k]


_NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]


def _count_word(n: int) -> str:
    """A count in words, as the paper's prompt says it: "Here are eight images:"."""
    return _NUMBER_WORDS[n] if 0 <= n < len(_NUMBER_WORDS) else str(n)


def _batches(items: Sequence, size: int) -> Iterator[Sequence]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def read_examples(s: EvalSettings) -> Tuple[Optional[List[Dict[str, Any]]], int]:
    """(the examples the task runs on, how many the files hold before ``limit``): every
    file of ``data`` read and checked (fields, ids unique across the files), before any
    model is loaded. (None, 0) for perplexity, which streams shards."""
    readers = {"caption": caption_examples, "vqa": vqa_examples, "raven": _jsonl_examples,
               "classify": _jsonl_examples, "choice": _jsonl_examples}
    if s.task not in readers:
        return None, 0
    if s.limit is not None and s.limit <= 0:
        raise ValueError(f"limit {s.limit}: expected a positive number of examples")
    out: List[Dict[str, Any]] = []
    for path in s.data:
        out += readers[s.task](s, path)
    check_unique_ids(out)
    return (out[:s.limit] if s.limit else out), len(out)


PRECISIONS = ("auto", "bf16", "fp32")


def resolve_precision(setting: str, device: torch.device) -> str:
    """``auto``: bf16 autocast on a GPU, fp32 on the CPU; ``bf16`` / ``fp32`` as said."""
    if setting not in PRECISIONS:
        raise ValueError(f"precision {setting!r}: expected one of {', '.join(PRECISIONS)}")
    if setting == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return setting


class Evaluator:
    """One task over its examples. Under torchrun (a process group started) rank r
    takes examples r, r + world, ...; what each rank made is gathered to every rank
    (``all_gather_object``) before anything is scored, and rank 0 scores; the
    predictions and scores do not depend on the number of ranks (up to what bf16
    and a different batching change)."""

    def __init__(self, model, tokenizer, settings: EvalSettings, image_size: int = 224, seq_len: int = 2048,
                 examples: Optional[Tuple[List[Dict[str, Any]], int]] = None):
        import torch.distributed as dist
        self.model, self.tok, self.s = model, tokenizer, settings
        self.prompter = Prompter(tokenizer, model.cfg.num_image_tokens, image_size)
        self.seq_len = seq_len
        self.device = model.decoder.embed_tokens.weight.device
        self.precision = resolve_precision(settings.precision, self.device)
        on = dist.is_available() and dist.is_initialized()
        self.rank, self.world = (dist.get_rank(), dist.get_world_size()) if on else (0, 1)
        self.notes: Dict[str, Any] = {}          # what the summary records beside the scores
        # examples read and checked already (``read_examples``), or None: read them here
        self.examples, self.examples_in_data = examples if examples is not None else (None, 0)

    # -- shared -------------------------------------------------------------------------
    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def _autocast(self):
        if self.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _shard(self, items: Sequence) -> List[Tuple[int, Any]]:
        """(index, item) of this rank's share: items r, r + world, ..."""
        return [(i, x) for i, x in enumerate(items) if i % self.world == self.rank]

    def _gather(self, obj: Any) -> List[Any]:
        """``obj`` of every rank, in rank order, on every rank."""
        if self.world == 1:
            return [obj]
        import torch.distributed as dist
        out: List[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def _gather_rows(self, mine: List[Tuple[int, Dict]]) -> List[Dict]:
        """Every rank's (index, row), back in the examples' order."""
        return [row for _, row in sorted(x for part in self._gather(mine) for x in part)]

    def _examples(self, reader: Callable) -> List[Dict[str, Any]]:
        if self.examples is None:
            self.examples, total = read_examples(self.s)
        else:
            total = self.examples_in_data
        self.notes["limit"] = self.s.limit
        self.notes["examples_in_data"] = total
        return self.examples

    def _demo_pool(self, reader: Callable, examples: List[Dict[str, Any]], needs: str) -> List[Dict[str, Any]]:
        pool = reader(self.s, self.s.demos) if self.s.demos else examples
        if self.s.demos:
            check_unique_ids(pool)
        if self.s.shots > 0:
            bare = next((d for d in pool if not d[needs]), None)
            if bare is not None:
                raise EvalDataError(f"{bare['where']}: a demonstration needs its {needs} (--shots {self.s.shots})")
        return pool

    def _generate_encoded(self, encoded, beams: int, max_new: int) -> List[str]:
        """Text continuations of prompts already encoded: [(ids, images), ...]."""
        ids = [i for i, _ in encoded]
        images = [im for _, ims in encoded for im in ims]
        with self._autocast():
            out = self.model.generate(ids, torch.stack(images) if images else None, max_new_tokens=max_new,
                                      num_beams=beams)
        return [self.tok.decode(o).strip() for o in out]

    def _run_generation(self, examples, build: Callable, post: Callable, beams: int, max_new: int):
        """Predictions per example, a batch at a time (images are read and decoded per
        batch, never all at once), this rank's share, then every rank's gathered; an
        example whose prompt cannot be made (an image that is missing or undecodable)
        is reported with its error and left out."""
        preds: Dict[str, str] = {}
        errors: Dict[str, str] = {}
        for batch in _batches([ex for _, ex in self._shard(examples)], self.s.batch_size):
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
        all_preds: Dict[str, str] = {}
        all_errors: Dict[str, str] = {}
        for p, e in self._gather((preds, errors)):
            all_preds.update(p)
            all_errors.update(e)
        return all_preds, all_errors

    def _image(self, path: str) -> bytes:
        from trainer.inference import read_bytes
        return read_bytes(path)

    # -- tasks --------------------------------------------------------------------------
    def caption(self) -> Tuple[List[Dict], Dict]:
        from trainer.metrics import score_captions
        examples = self._examples(caption_examples)
        pool = self._demo_pool(caption_examples, examples, "references")

        def build(ex):
            parts: List[Any] = []
            for d in pick_demos(ex["id"], pool, self.s.shots, self.s.seed):
                ref = d["references"][0].strip().rstrip(".")
                parts += [self._image(d["image"]), f"{CAPTION_PROMPT} {ref}."]
            return parts + [self._image(ex["image"]), CAPTION_PROMPT]

        def post(text):
            return text.split("\n")[0].strip()

        preds, errors = self._run_generation(examples, build, post, self.s.beams or 5, self.s.max_new_tokens or 20)
        rows = [{"id": e["id"], "image": e["image"], "prediction": preds.get(e["id"]),
                 "references": e["references"], **({"error": errors[e["id"]]} if e["id"] in errors else {})}
                for e in examples]
        if self.s.predict_only:
            return rows, {}
        refs = {e["id"]: e["references"] for e in examples if e["id"] in preds}
        # CIDEr-D weighs n-grams by their document frequency over the references scored
        # together: a subset (--limit, failed images) gives other weights than the set
        whole = self.notes["examples_in_data"]
        self.notes["cider_df"] = "full" if len(refs) == whole else "subset"
        self.notes["cider_df_images"] = len(refs)
        if self.notes["cider_df"] == "subset":
            log.warning("CIDEr's document frequencies come from %d of the %d images of the set (limit %s, %d "
                        "failed): CIDEr is not comparable with a score over the whole set", len(refs), whole,
                        self.s.limit, len(errors))
        scores: Dict[str, Any] = {}
        if preds and self.is_main:
            scores, self.notes["caption_tokenizer"] = score_captions(refs, preds, meteor=self.s.meteor)
        return rows, scores

    def vqa(self) -> Tuple[List[Dict], Dict]:
        from trainer.metrics import vqa_accuracy
        examples = self._examples(vqa_examples)
        pool = self._demo_pool(vqa_examples, examples, "answers")
        self.notes["vqa_protocol"] = sorted({e["protocol"] for e in examples})

        def build(ex):
            parts: List[Any] = []
            for d in pick_demos(ex["id"], pool, self.s.shots, self.s.seed):
                answer = max(set(d["answers"]), key=lambda a: (d["answers"].count(a), a))
                parts += [self._image(d["image"]), f"Question: {d['question']} Answer: {answer}"]
            return parts + [self._image(ex["image"]), f"Question: {ex['question']} Answer:"]

        def post(text):
            return text.split("\n")[0].split("Question:")[0].strip()

        preds, errors = self._run_generation(examples, build, post, self.s.beams or 1, self.s.max_new_tokens or 10)
        rows, accs = [], []
        for e in examples:
            row = {"id": e["id"], "question": e["question"], "prediction": preds.get(e["id"]),
                   "answers": e["answers"]}
            if e["id"] in errors:
                row["error"] = errors[e["id"]]
            elif not self.s.predict_only:
                row["accuracy"] = vqa_accuracy(preds[e["id"]], e["answers"], e["protocol"])
                accs.append(row["accuracy"])
            rows.append(row)
        return rows, {"accuracy": sum(accs) / len(accs) if accs else None}

    def _score_rows(self, contexts: List[List[Any]], continuations: List[str]) -> List[Tuple[float, int]]:
        """(sum of log-probs, tokens) of each continuation after its context."""
        out = []
        for batch in _batches(list(zip(contexts, continuations)), self.s.batch_size):
            ids, images = self.prompter.batch([c for c, _ in batch])
            conts = [self.tok.encode(" " + x.strip()) or [self.tok.ids.unk] for _, x in batch]
            with self._autocast():
                scores = self.model.score(ids, conts, images)
            out += [(sc, len(c)) for sc, c in zip(scores, conts)]
        return out

    def raven(self) -> Tuple[List[Dict], Dict]:
        examples = self._examples(_jsonl_examples)
        mine = []
        for i, ex in self._shard(examples):
            try:
                context = [f"Here are {_count_word(len(ex['context']))} images:"]
                context += [self._image(_image_path(self.s.images_root, p)) for p in ex["context"]]
                prompts = [context + ["The following image is:", self._image(_image_path(self.s.images_root, c)),
                                      "Is it correct?"] for c in ex["candidates"]]
            except Exception as exc:
                mine.append((i, {"id": ex["id"], "error": f"{type(exc).__name__}: {exc}"}))
                continue
            scores = [s for s, _ in self._score_rows(prompts, ["Yes"] * len(prompts))]
            choice = max(range(len(scores)), key=lambda j: (scores[j], -j))
            mine.append((i, {"id": ex["id"], "prediction": choice, "answer": int(ex["answer"]),
                             "p_yes": [math.exp(s) for s in scores]}))
        rows = self._gather_rows(mine)
        scored = [r for r in rows if "prediction" in r]
        right = sum(r["prediction"] == r["answer"] for r in scored)
        return rows, {"accuracy": right / len(scored) if scored else None}

    def classify(self) -> Tuple[List[Dict], Dict]:
        examples = self._examples(_jsonl_examples)
        if self.s.classes:
            classes = [c.strip() for c in _read_text(self.s.classes).splitlines() if c.strip()]
        else:
            classes = sorted({str(e["label"]) for e in examples})
        descriptions = json.loads(_read_text(self.s.descriptions)) if self.s.descriptions else {}
        preface = [f"{c}: {descriptions[c]}" for c in classes if c in descriptions]
        mine = []
        for i, ex in self._shard(examples):
            try:
                ids, pixels = self.prompter.encode(
                    preface + [self._image(_image_path(self.s.images_root, ex["image"])), CLASSIFY_PROMPT])
            except Exception as exc:
                mine.append((i, {"id": ex["id"], "error": f"{type(exc).__name__}: {exc}"}))
                continue
            # the image is encoded once and its embeddings reused for every class name
            with torch.no_grad(), self._autocast():
                emb = self.model.encode_images(torch.stack(pixels).to(self.device))
            scores = []
            for names in _batches(classes, self.s.batch_size):
                conts = [self.tok.encode(" " + c.strip()) or [self.tok.ids.unk] for c in names]
                with self._autocast():
                    scores += self.model.score([ids] * len(names), conts,
                                               image_embeds=emb.repeat(len(names), 1, 1))
            best = classes[max(range(len(classes)), key=lambda j: (scores[j], -j))]
            mine.append((i, {"id": ex["id"], "prediction": best, "label": str(ex["label"])}))
        rows = self._gather_rows(mine)
        scored = [r for r in rows if "prediction" in r]
        right = sum(r["prediction"] == r["label"] for r in scored)
        return rows, {"accuracy": right / len(scored) if scored else None, "classes": len(classes),
                      "with_descriptions": bool(preface)}

    def choice(self) -> Tuple[List[Dict], Dict]:
        examples = self._examples(_jsonl_examples)
        pool = _jsonl_examples(self.s, self.s.demos) if self.s.demos else examples
        for e in list(examples) + list(pool):          # HellaSwag's field names
            if "ctx" in e and "context" not in e:
                e["context"], e["choices"], e["answer"] = e["ctx"], e["endings"], e["label"]
        mine = []
        for i, ex in self._shard(examples):
            demos = "".join(f"{d['context'].strip()} {d['choices'][int(d['answer'])].strip()}\n\n"
                            for d in pick_demos(ex["id"], pool, self.s.shots, self.s.seed))
            context = [demos + ex["context"].strip()]
            scored = self._score_rows([context] * len(ex["choices"]), list(ex["choices"]))
            by_sum = max(range(len(scored)), key=lambda j: (scored[j][0], -j))
            by_mean = max(range(len(scored)), key=lambda j: (scored[j][0] / scored[j][1], -j))
            mine.append((i, {"id": ex["id"], "prediction": by_sum, "prediction_per_token": by_mean,
                             "answer": int(ex["answer"])}))
        rows = self._gather_rows(mine)
        n = len(rows)
        right = sum(r["prediction"] == r["answer"] for r in rows)
        right_norm = sum(r["prediction_per_token"] == r["answer"] for r in rows)
        return rows, {"accuracy": right / n if n else None, "accuracy_per_token": right_norm / n if n else None}

    def perplexity(self) -> Tuple[List[Dict], Dict]:
        from trainer.data import held_out_sequences
        nll, tokens, seqs = 0.0, 0, 0
        limit = self.s.limit or 256
        batches = held_out_sequences(self.s.data, self.s.source, self.tok, self.model.cfg.num_image_tokens,
                                     self.seq_len, self.prompter.image_size, limit, self.s.batch_size)
        for n, batch in enumerate(batches):
            if n % self.world != self.rank:        # every rank reads every batch, runs its share
                continue
            with torch.no_grad(), self._autocast():
                images = batch["images"].to(self.device) if batch["images"] is not None else None
                out = self.model(batch["input_ids"].to(self.device), images=images,
                                 labels=batch["labels"].to(self.device))
            nll += float(out["loss_sum"])
            tokens += int(out["target_tokens"])
            seqs += batch["input_ids"].shape[0]
        parts = self._gather((nll, tokens, seqs))
        nll, tokens, seqs = sum(p[0] for p in parts), sum(p[1] for p in parts), sum(p[2] for p in parts)
        mean = nll / tokens if tokens else float("nan")
        return [], {"perplexity": math.exp(mean) if tokens else None, "nll_per_token": mean if tokens else None,
                    "tokens": tokens, "sequences": seqs}

    def run(self) -> Tuple[List[Dict], Dict]:
        if self.s.task not in EVAL_TASKS:
            raise ValueError(f"unknown task {self.s.task!r}; tasks: {', '.join(EVAL_TASKS)}")
        if self.s.predict_only and self.s.task not in ("caption", "vqa"):
            raise ValueError(f"--predict_only is for caption and vqa; {self.s.task} has nothing to predict "
                             "without its answers")
        self.model.eval()
        rows, scores = getattr(self, self.s.task)()
        failed = sum(1 for r in rows if "error" in r)
        summary = {"task": self.s.task, "examples": len(rows), "failed": failed, "shots": self.s.shots,
                   "scores": scores, "precision": self.precision, "world_size": self.world,
                   "predict_only": self.s.predict_only, **self.notes}
        if self.world > 1:                         # rank 0 scored: every rank returns its summary
            import torch.distributed as dist
            box = [summary]
            dist.broadcast_object_list(box, src=0)
            summary = box[0]
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
    """Check the evaluation files, load, evaluate, write ``predictions.jsonl`` and
    ``summary.json`` (rank 0); the summary back. Under torchrun (WORLD_SIZE > 1) every
    rank runs this: the process group is started here, each rank on its own GPU
    (``device`` cuda) or on the CPU (gloo)."""
    from trainer.inference import load_for_inference, resolve_checkpoint
    resolve_precision(settings.precision, torch.device("cpu"))       # a bad setting fails before any work
    examples = read_examples(settings) if settings.task != "perplexity" else None
    rank = 0
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from trainer.distributed import init_distributed
        d = init_distributed("cuda" if str(device).startswith("cuda") else "cpu")
        device, rank = str(d.device), d.rank
    torch.manual_seed(settings.seed)
    model, tok, cfg = load_for_inference(checkpoint, tokenizer, device)
    ev = Evaluator(model, tok, settings, cfg.data.image_size, cfg.data.seq_len, examples=examples)
    rows, summary = ev.run()
    summary["checkpoint"] = resolve_checkpoint(checkpoint)
    summary["settings"] = {k: v for k, v in settings.__dict__.items() if k != "extra"}
    if output and rank == 0:
        os.makedirs(output, exist_ok=True)
        with open(os.path.join(output, "predictions.jsonl"), "w", encoding="utf-8") as fh:
            for r in rows:
                fh.write(json.dumps(r, sort_keys=True) + "\n")
        with open(os.path.join(output, "summary.json"), "w", encoding="utf-8") as fh:
            json.dump(summary, fh, indent=2, sort_keys=True)
    return summary
