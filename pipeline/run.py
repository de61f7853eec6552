"""Running the curation job: the runner's arguments, the output directory, the run
record (``run.json``: config, code version, inputs with their checksums, Beam
arguments), the pre-flight image probe, progress on the terminal, and waiting for
the result. The graph itself is pipeline/curate.py's."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from contract.manifest import (DUPLICATES_DIR, ERRORS, FETCH_FAILURES, FETCHED_DIR, INPUTS, REJECTS_DIR, REPORT_FILES,
                               RUN_RECORD, STATS, SUCCESS_MARKER)
from contract.schema import DOCUMENTS, PAIRS, TEXTS
from filters.config import CurationConfig
from pipeline.curate import build_pipeline
from pipeline.inputs import DEFAULT_PATHS_PREFIX, expand_inputs
from pipeline.local_runner import install as install_local_runner_fixes
from pipeline.stats import IMAGES_HINT
from transforms.progress import ProgressPrinter, open_terminal
from transforms.write import atomic_write


def code_version() -> Dict[str, str]:
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))   # the checkout
    version = {"package": _package_version()}
    try:
        sha = subprocess.run(["git", "-C", here, "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "-C", here, "status", "--porcelain"], capture_output=True,
                               text=True, timeout=5).stdout.strip()
        if sha:
            version["git_commit"] = sha + ("-dirty" if dirty else "")
    except Exception:
        pass
    return version


def _package_version() -> str:
    try:
        from importlib.metadata import version
        return version("kosmos-curation")
    except Exception:
        return "unknown"


def _arg_value(args: List[str], name: str) -> Optional[str]:
    """The value of ``--name=value`` or ``--name value`` in a Beam argument list."""
    for i, a in enumerate(args):
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
        if a == name and i + 1 < len(args):
            return args[i + 1]
    return None


def default_beam_args(beam_args: List[str], num_workers: Optional[int]) -> List[str]:
    """Beam's local runner: one in-process worker unless told otherwise, N worker
    processes for ``num_workers`` N (the same documents and statistics either way:
    tests/test_pipeline.py); naming the runner keeps Beam from trying to download
    Prism first."""
    args = list(beam_args)
    if not any(a.startswith("--runner") for a in args):
        args.append("--runner=DirectRunner")
    runner = _arg_value(args, "--runner")
    if runner in ("DirectRunner", "direct"):
        if not any(a.startswith("--direct_num_workers") for a in args):
            args.append(f"--direct_num_workers={num_workers or 1}")
        workers = int(_arg_value(args, "--direct_num_workers") or 1)
        if not any(a.startswith("--direct_running_mode") for a in args):
            args.append("--direct_running_mode=" + ("multi_processing" if workers > 1 else "in_memory"))
    return args


@contextlib.contextmanager
def stderr_to(path: Optional[str]):
    """Send file descriptor 2 to ``path`` for the duration: the local runner's
    worker processes inherit it and log their start-up and shut-down there."""
    if not path:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(fd)
        os.close(saved)


OUTPUTS = (SUCCESS_MARKER, DOCUMENTS.directory, TEXTS.directory, PAIRS.directory, FETCHED_DIR, FETCH_FAILURES,
           DUPLICATES_DIR, REJECTS_DIR, STATS, ERRORS, INPUTS, RUN_RECORD, *REPORT_FILES)


def prepare_output(output: str, overwrite: bool) -> None:
    """Refuse to mix two runs in one directory (a stale shard would be read by any
    Parquet dataset reader); with ``overwrite`` the previous run's outputs go."""
    present = [name for name in OUTPUTS if FileSystems.exists(FileSystems.join(output, name))]
    if not present:
        return
    if not overwrite:
        raise FileExistsError(f"{output} already holds a run ({', '.join(present)}); "
                              f"choose another --output or pass --overwrite")
    for name in present:
        path = FileSystems.join(output, name)
        if name.endswith((".json", ".jsonl", ".html")):
            FileSystems.delete([path])
        else:
            matches = FileSystems.match([FileSystems.join(path, "*")])[0].metadata_list
            if matches:
                FileSystems.delete([m.path for m in matches])
            try:
                FileSystems.delete([path])
            except Exception:
                pass  # object stores have no directories to delete


def run_curation(inputs: List[str], output: str, cfg: CurationConfig, beam_args: List[str],
                 num_workers: Optional[int] = None, paths_prefix: str = DEFAULT_PATHS_PREFIX,
                 wait: bool = True, worker_log: Optional[str] = None, overwrite: bool = False,
                 progress: bool = False, progress_out=None) -> Optional[Dict]:
    """Run the job; ``progress``: a line on ``progress_out`` (the terminal's standard
    error by default) while a local runner works."""
    files = expand_inputs(inputs, paths_prefix)
    prepare_output(output, overwrite)
    args = default_beam_args(beam_args, num_workers)
    options = PipelineOptions(args)
    local_fixes = install_local_runner_fixes() if _arg_value(args, "--runner") in ("DirectRunner", "direct") else None
    started = time.time()
    run_record = {
        "kind": "curation",
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "config": cfg.to_dict(),
        "code": code_version(),
        "inputs": files,
        "output": output,
        "beam_args": args,
        "python": platform.python_version(),
        "beam": beam.__version__,
    }
    if local_fixes:
        run_record["local_runner"] = local_fixes
    if cfg.fetch.source == "archive":
        seen = probe_for_images([f["path"] for f in files])
        if seen["pages"] and not seen["images"]:
            warning = IMAGES_HINT.format(what=f"the first {seen['records']} records of the input hold "
                                              f"{seen['pages']} pages and no image")
            run_record["warnings"] = [warning]
            print(f"warning: {warning}", file=sys.stderr, flush=True)
    atomic_write(FileSystems.join(output, RUN_RECORD), json.dumps(run_record, indent=2).encode())

    progress_dir = tempfile.mkdtemp(prefix="kosmos-progress-") if progress and wait else None
    p = beam.Pipeline(options=options)
    build_pipeline(p, [f["path"] for f in files], output, cfg, progress_dir)
    printer = None
    if progress_dir:
        sizes = [f["size"] for f in files]           # -1: not known (entries of a listing)
        total = sum(sizes) if all(size > 0 for size in sizes) else -1
        terminal = progress_out or open_terminal()
        printer = ProgressPrinter(progress_dir, len(files), total, terminal).start()
    try:
        with stderr_to(worker_log):
            result = p.run()
            if not wait:
                return None
            state = result.wait_until_finish()
    finally:
        if printer is not None:
            printer.stop()
            if progress_out is None:
                terminal.close()            # our own copy of the terminal's descriptor
        if progress_dir:
            shutil.rmtree(progress_dir, ignore_errors=True)
    run_record["state"] = str(state)
    run_record["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    run_record["seconds"] = round(time.time() - started, 3)
    try:  # the checksums the workers computed while streaming the inputs
        with FileSystems.open(FileSystems.join(output, INPUTS)) as fh:
            run_record["inputs"] = [json.loads(l) for l in fh.read().decode().splitlines() if l.strip()]
    except Exception:
        pass
    atomic_write(FileSystems.join(output, RUN_RECORD), json.dumps(run_record, indent=2).encode())
    with FileSystems.open(FileSystems.join(output, STATS)) as fh:
        return json.loads(fh.read())




def probe_for_images(paths: List[str], max_records: int = 600, max_files: int = 2) -> Dict[str, int]:
    """Pages and image records among the first records of the first inputs: enough to
    tell a Common Crawl WARC (pages only) from a browser crawl before the job starts."""
    from filters.records import RecordKind, classify
    from transforms.remote import open_input
    from transforms.warc import ArchiveRecord, iter_archive
    seen = {"records": 0, "pages": 0, "images": 0}
    for path in paths[:max_files]:
        try:
            with open_input(path) as raw:
                for n, item in enumerate(iter_archive(raw, path)):
                    if n >= max_records:
                        break
                    seen["records"] += 1
                    if isinstance(item, ArchiveRecord) and item.rec_type in ("response", "resource"):
                        kind = classify(item).kind
                        seen["pages"] += kind is RecordKind.PAGE
                        seen["images"] += kind is RecordKind.IMAGE
        except Exception:       # the job itself reports unreadable inputs, with their offsets
            continue
    return seen
