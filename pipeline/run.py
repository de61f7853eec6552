"""Running the curation job: the runner's arguments, the output directory, the run
record (``run.json``: config, code version, inputs with their checksums, Beam
arguments), the pre-flight image probe, progress on the terminal, and waiting for
the result. The graph itself is pipeline/curate.py's."""

from __future__ import annotations

import contextlib
import difflib
import gc
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from typing import Dict, Iterable, List, Optional

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from contract.manifest import (DUPLICATES_DIR, ERRORS, FETCH_FAILURES, FETCHED_DIR, INPUTS, REJECTS_DIR, REPORT_FILES,
                               RUN_RECORD, STATS, SUCCESS_MARKER)
from contract.schema import DATASETS, OUTCOME_TRAIL
from filters.config import CurationConfig
from filters.image_safety import ModelUnavailable, run_note
from pipeline import graph_cache, local_runner
from pipeline.curate import build_pipeline
from pipeline.inputs import DEFAULT_PATHS_PREFIX, expand_inputs
from pipeline.stats import IMAGES_HINT
from transforms.progress import ProgressPrinter, open_terminal
from transforms.write import TEMP_PREFIX, atomic_write


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
    tests/test_pipeline.py); the run then tells that runner to skip Prism
    (local_runner.without_prism)."""
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


class Refused(Exception):
    """A run refused before anything ran (its inputs, its output directory, its
    options): the message says what and why; the command prints it as one line."""


class OutputRefused(Refused, FileExistsError):
    pass


class InputRefused(Refused, FileNotFoundError):
    pass


class OptionRefused(Refused, ValueError):
    pass


class RunnerRefused(Refused, RuntimeError):
    """The local runner's changes do not apply to the installed Beam (pipeline/local_runner.py)."""


# Everything a run (and `kosmos report` by default) writes into its output directory:
# the one list --overwrite removes. tests/test_hostile_runs.py checks that a whole run
# writes nothing outside it, so an output added to the job without being added here
# fails a test instead of surviving the next --overwrite.
OUTPUTS = (SUCCESS_MARKER, RUN_RECORD, INPUTS, STATS, ERRORS, FETCH_FAILURES,
           *(d.directory for d in (*DATASETS.values(), OUTCOME_TRAIL)),
           FETCHED_DIR, DUPLICATES_DIR, REJECTS_DIR,
           *REPORT_FILES, "compare.html", "compare.json")
# atomic_write's temporary names (transforms/write.py): left beside a file by a run
# killed while it wrote it.
TEMPORARY = TEMP_PREFIX + "*"
# Held by the run that writes into the directory, from before the checks until it ends.
CLAIM = "_claim.json"


def _is_local(path: str) -> bool:
    return "://" not in path or path.startswith("file://")


def _local(path: str) -> str:
    return path[len("file://"):] if path.startswith("file://") else path


def _describe_claim(record: Optional[Dict]) -> str:
    if not record:
        return "a run that is starting"
    return (f"pid {record.get('pid')} on {record.get('host')}, started {record.get('started_at')}"
            f"{', ' + record['command'] if record.get('command') else ''}")


class OutputClaim:
    """The output directory, claimed for one run so that two runs started together
    cannot mix their shards: ``_claim.json`` in it, locked with ``flock`` for as long
    as the run holds it (a second run is refused naming the holder) and removed when
    the run ends. The kernel drops the lock of a killed process (kill -9), so a claim
    file found unlocked is a run that died: its outputs are incomplete and --overwrite
    replaces them (``stale`` holds what it recorded).

    Object stores (gs://, s3://) have no locks and Beam's FileSystems no
    create-if-absent, so there the claim is an object written when none exists and
    read back to check it is ours; two runs started within the same moment can both
    pass. A claim object found there may belong to a run still going (nothing can
    tell): it is refused, and --overwrite takes it over."""

    def __init__(self, output: str):
        self.output = output
        self.path = FileSystems.join(output, CLAIM)
        self.record = {"pid": os.getpid(), "host": socket.gethostname(),
                       "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                       "command": " ".join(sys.argv[:1] + sys.argv[1:3]) if sys.argv else "",
                       "token": uuid.uuid4().hex}
        self.stale: Optional[Dict] = None
        self._fd: Optional[int] = None

    def acquire(self, overwrite: bool) -> "OutputClaim":
        if _is_local(self.output):
            self._acquire_local()
        else:
            self._acquire_remote(overwrite)
        return self

    def _acquire_local(self) -> None:
        import fcntl
        path = _local(self.path)
        while True:
            try:
                os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                raise OutputRefused(f"cannot write into {self.output}: {e.strerror} ({path})") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_claim(fd)
                deadline = time.monotonic() + 2.0
                while holder is None and time.monotonic() < deadline:
                    time.sleep(0.05)        # the holder has the lock and is writing its record
                    holder = _read_claim(fd)
                os.close(fd)
                raise OutputRefused(f"{self.output} is being written by another run ({_describe_claim(holder)}); "
                                    f"wait for it to end or choose another --output") from None
            try:
                same = os.fstat(fd).st_ino == os.stat(path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)           # the holder removed it between our open and our lock
        self.stale = _read_claim(fd)
        data = json.dumps(self.record, indent=2).encode()
        os.pwrite(fd, data, 0)              # written over the old record, then cut to its length:
        os.ftruncate(fd, len(data))         # a reader never finds the file empty
        os.fsync(fd)
        self._fd = fd

    def _acquire_remote(self, overwrite: bool) -> None:
        if FileSystems.exists(self.path):
            holder = _read_remote_claim(self.path)
            if not overwrite:
                raise OutputRefused(f"{self.output} is claimed by a run ({_describe_claim(holder)}); if it is "
                                    f"still running, wait for it; if it was killed, pass --overwrite")
            self.stale = holder or {}
        with FileSystems.create(self.path, compression_type=CompressionTypes.UNCOMPRESSED) as fh:
            fh.write(json.dumps(self.record, indent=2).encode())
        holder = _read_remote_claim(self.path)
        if not holder or holder.get("token") != self.record["token"]:
            raise OutputRefused(f"{self.output} was claimed by another run at the same time "
                                f"({_describe_claim(holder)})")

    def release(self) -> None:
        if self._fd is not None:
            try:
                os.unlink(_local(self.path))      # before the lock goes: see _acquire_local
            except FileNotFoundError:
                pass
            os.close(self._fd)
            self._fd = None
        elif not _is_local(self.output):
            try:
                if (_read_remote_claim(self.path) or {}).get("token") == self.record["token"]:
                    FileSystems.delete([self.path])
            except Exception:
                pass


def _read_claim(fd: int) -> Optional[Dict]:
    data = os.pread(fd, 1 << 16, 0)
    if not data.strip():
        return None
    try:
        return json.loads(data)
    except ValueError:
        return {"pid": "?", "host": "?", "started_at": "?"}


def _read_remote_claim(path: str) -> Optional[Dict]:
    try:
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as fh:
            return json.loads(fh.read() or b"null")
    except Exception:
        return None


def prepare_output(output: str, overwrite: bool, stale_claim: Optional[Dict] = None) -> None:
    """Refuse to mix two runs in one directory (a stale shard would be read by any
    Parquet dataset reader); with ``overwrite`` every output of the previous run goes
    (``OUTPUTS``, and temporary files a killed run left). ``stale_claim``: the claim
    of a run that died without releasing it."""
    present = [name for name in OUTPUTS if _present(FileSystems.join(output, name))]
    temporary = _temporary_files(output)
    if not present and not temporary and stale_claim is None:
        return
    if not overwrite:
        if stale_claim is not None:
            raise OutputRefused(f"{output} holds a run that did not finish ({_describe_claim(stale_claim)}; "
                                f"it no longer runs: killed?); pass --overwrite to replace it")
        raise OutputRefused(f"{output} already holds a run ({', '.join(present or temporary)}); "
                            f"choose another --output or pass --overwrite")
    if stale_claim is None and not {RUN_RECORD, SUCCESS_MARKER} & set(present):
        # every run writes run.json before its first shard: without it (or a claim) these
        # are somebody else's folders that happen to bear our names (documents/, texts/...)
        raise OutputRefused(f"{output} holds {', '.join(present or temporary)} but no {RUN_RECORD}: it does "
                            f"not look like a kosmos run, and --overwrite removes only runs; choose another "
                            f"--output")
    for name in present:
        _remove(FileSystems.join(output, name))
    if temporary:
        FileSystems.delete(temporary)


def _present(path: str) -> bool:
    """A file, or a directory; on an object store a prefix with objects under it
    (``exists`` there asks for one object of exactly that name)."""
    if FileSystems.exists(path):
        return True
    if _is_local(path):
        return False
    try:
        return bool(FileSystems.match([FileSystems.join(path, "*")])[0].metadata_list)
    except Exception:
        return False


def _temporary_files(output: str) -> List[str]:
    try:
        return [m.path for m in FileSystems.match([FileSystems.join(output, TEMPORARY)])[0].metadata_list]
    except Exception:
        return []


def _remove(path: str) -> None:
    """A file or a whole directory tree (an object store's objects under a prefix)."""
    if _is_local(path):
        local = _local(path)
        if os.path.isdir(local) and not os.path.islink(local):
            shutil.rmtree(local)
        else:
            os.remove(local)
        return
    matches = FileSystems.match([FileSystems.join(path, "**")])[0].metadata_list
    if matches:
        FileSystems.delete([m.path for m in matches])
    try:
        FileSystems.delete([path])
    except Exception:
        pass  # object stores have no directories to delete


def _option_parser():
    """A parser of every option Beam's pipeline options define (all subclasses of
    PipelineOptions: Dataflow, portable, Flink, Spark, S3, ...), refusing nothing."""
    from apache_beam.options.pipeline_options import _BeamArgumentParser

    class Parser(_BeamArgumentParser):
        def error(self, message):
            raise OptionRefused(f"runner option: {message}")

    parser = Parser(allow_abbrev=False, conflict_handler="resolve", add_help=False)
    seen, stack = set(), list(PipelineOptions.__subclasses__())
    while stack:
        cls = stack.pop()
        if cls in seen:
            continue
        seen.add(cls)
        stack.extend(cls.__subclasses__())
        cls._add_argparse_args(parser)
    return parser


# Runners whose job server adds options of its own, forwarded by Beam's PortableRunner.
PORTABLE_RUNNERS = frozenset({"PortableRunner", "FlinkRunner", "SparkRunner", "PrismRunner"})


def check_runner_args(beam_args: List[str], own_options: Iterable[str] = ()) -> None:
    """Refuse arguments that are neither ours (``own_options``, already parsed) nor
    one of Beam's pipeline options: Beam would drop them with a log line, so a typo
    (``--imagez http``) would run the job with the default. Names the closest option."""
    parser = _option_parser()
    known_args, unknown = parser.parse_known_args(list(beam_args))
    if not unknown:
        return
    runner = (getattr(known_args, "runner", None) or "").rsplit(".", 1)[-1]
    flag = next((a for a in unknown if a.startswith("-")), None)
    if flag is None:
        raise OptionRefused(f"unexpected argument {unknown[0]!r}")
    name = flag.split("=", 1)[0]
    known = {o for a in parser._actions for o in a.option_strings if o.startswith("--")} | set(own_options)
    close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]}?" if close else ""
    if runner in PORTABLE_RUNNERS:
        # a job server names its own options (Flink's --checkpointing_interval, ...), which
        # Beam forwards; they cannot be known before it answers, so a guess is only said
        print(f"kosmos curate: note: option {name} is not one of Beam's Python pipeline options{hint}; "
              f"passing it on to {runner}'s job server", file=sys.stderr)
        return
    raise OptionRefused(f"unknown option {name}{hint} (the command's own options are in --help; anything "
                        f"else must be one of Beam's pipeline options)")


ALLOW_UNPATCHED_SETTING = "runner.allow_unpatched=true"


def run_curation(inputs: List[str], output: str, cfg: CurationConfig, beam_args: List[str],
                 num_workers: Optional[int] = None, paths_prefix: str = DEFAULT_PATHS_PREFIX,
                 wait: bool = True, worker_log: Optional[str] = None, overwrite: bool = False,
                 progress: bool = False, progress_out=None) -> Optional[Dict]:
    """Run the job; ``progress``: a line on ``progress_out`` (the terminal's standard
    error by default) while a local runner works."""
    check_runner_args(beam_args)
    try:
        files = expand_inputs(inputs, paths_prefix)
    except (FileNotFoundError, IsADirectoryError) as e:
        raise InputRefused(str(e)) from e
    local_fixes = None
    if _arg_value(default_beam_args(beam_args, num_workers), "--runner") in ("DirectRunner", "direct"):
        try:        # before the output is claimed: a refused run leaves nothing behind
            local_fixes = local_runner.install(cfg.runner.allow_unpatched)
        except local_runner.NotApplicable as e:
            raise RunnerRefused(str(e)) from None
        workers = int(_arg_value(default_beam_args(beam_args, num_workers), "--direct_num_workers") or 1)
        if local_runner.unpatched() and workers > 1:
            # Beam's own multi-worker mode drops splittable-DoFn residuals: records that
            # are never read are never counted either, so nothing would show the loss.
            raise RunnerRefused(f"the local runner is unpatched ({ALLOW_UNPATCHED_SETTING}) and {workers} workers "
                                f"would lose records without a trace (Beam drops splittable-DoFn residuals in "
                                f"its multi-worker mode); run with --num_workers 1")
    try:        # the image-safety model: a run that cannot load it is refused before it starts
        safety = run_note(cfg.safety)
    except ModelUnavailable as e:
        raise RunnerRefused(f"{e} (or run with safety.image_scorer=none)") from None
    claim = OutputClaim(output).acquire(overwrite)
    try:
        prepare_output(output, overwrite, claim.stale)
        return _run(files, output, cfg, beam_args, num_workers, wait, worker_log, progress, progress_out,
                    local_fixes, safety)
    finally:
        claim.release()


def _run(files: List[Dict], output: str, cfg: CurationConfig, beam_args: List[str], num_workers: Optional[int],
         wait: bool, worker_log: Optional[str], progress: bool, progress_out,
         local_fixes: Optional[str], safety: Optional[Dict] = None) -> Optional[Dict]:
    args = default_beam_args(beam_args, num_workers)
    options = graph_cache.MemoisedViews(args)
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
    if local_fixes and local_runner.unpatched():
        run_record.setdefault("warnings", []).append(local_runner.unpatched())
        print(f"warning: {local_runner.unpatched()}", file=sys.stderr, flush=True)
    if safety is not None:
        run_record["image_safety"] = safety         # the model, its sha256 and threshold; or the warning
        if "warning" in safety:
            run_record.setdefault("warnings", []).append(safety["warning"])
            print(f"warning: {safety['warning']}", file=sys.stderr, flush=True)
    atomic_write(FileSystems.join(output, RUN_RECORD), json.dumps(run_record, indent=2).encode())

    progress_dir = tempfile.mkdtemp(prefix="kosmos-progress-") if progress and wait else None
    graph_cache.install()      # Beam's signature look-ups, memoised: a cheaper graph
    p = beam.Pipeline(options=options)
    if local_fixes:
        local_runner.without_prism(p.runner)
    build_pipeline(p, [f["path"] for f in files], output, cfg, progress_dir)
    printer = None
    if progress_dir:
        sizes = [f["size"] for f in files]           # -1: not known (entries of a listing)
        total = sum(sizes) if all(size > 0 for size in sizes) else -1
        terminal = progress_out or open_terminal()
        printer = ProgressPrinter(progress_dir, len(files), total, terminal).start()
    # What exists now (Beam, pyarrow, the graph, the models) lives as long as the run:
    # kept out of the collector's sight, the full collections during the run (143 ms
    # each on 3,500 pages) stop walking it. Unfrozen after, so a process that runs
    # several jobs (the tests) can free the graphs it is done with.
    gc.collect()
    gc.freeze()
    try:
        with stderr_to(worker_log):
            result = p.run()
            if not wait:
                return None
            state = result.wait_until_finish()
    finally:
        gc.unfreeze()
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
    from archives.records import ArchiveRecord, iter_archive
    from transforms.filesystems import open_input
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
