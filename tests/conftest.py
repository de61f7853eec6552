import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("KOSMOS_SHARED_DATA", ROOT.parent / "shared" / "data"))
SAMPLE = ROOT / "data" / "sample" / "warc"


def shared_warc(name: str) -> str:
    path = SHARED / "warc" / name
    if not path.exists():
        raise FileNotFoundError(f"shared test data missing: {path} (set KOSMOS_SHARED_DATA)")
    return str(path)


def all_shared_warcs():
    files = sorted((SHARED / "warc").glob("*"))
    assert files, f"no shared WARCs under {SHARED / 'warc'}"
    return [str(f) for f in files]


def run_job(inputs, out_dir, cfg=None, beam_args=None, num_workers=2, overrides=None):
    """Run the curation job in-process; returns stats.json as a dict."""
    from filters.config import CurationConfig
    from pipeline.run import run_curation

    cfg = cfg or CurationConfig()
    if overrides:
        cfg = cfg.override(overrides)
    if os.path.exists(out_dir):
        shutil.rmtree(out_dir)
    return run_curation(list(inputs), str(out_dir), cfg, list(beam_args or []), num_workers=num_workers,
                        worker_log=str(Path(out_dir).parent / (Path(out_dir).name + ".worker.log")))


IN_MEMORY = ["--runner=DirectRunner", "--direct_running_mode=in_memory", "--direct_num_workers=1"]


def _session_root(tmp_path_factory) -> Path:
    """A directory every process of this pytest session sees: the base temporary
    directory, or with pytest-xdist the one its workers' base directories share."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def cached_run(tmp_path_factory, name, inputs, **job):
    """``run_job(inputs, ..., **job)`` once per pytest session, however many xdist
    workers ask: the first runs it under a file lock, the others wait and read its
    output (for tests that only read a run's outputs). Returns (output, stats)."""
    import fcntl
    import json
    root = _session_root(tmp_path_factory) / "runs"
    root.mkdir(parents=True, exist_ok=True)
    out, done = root / name, root / (name + ".done")
    with open(root / (name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            run_job(inputs, out, **job)
            done.touch()
    return out, json.loads((out / "stats.json").read_text())


@pytest.fixture(scope="session")
def shared_run(tmp_path_factory):
    """The job over every WARC/ARC in ../shared/data/warc, local runner, 2 workers."""
    return cached_run(tmp_path_factory, "shared", all_shared_warcs())


MONA_LISA = "webarchive-discovery__flashfrozen-jwat-recompressed.warc.gz"   # two captures of one article


@pytest.fixture(scope="session")
def mona_run(tmp_path_factory):
    """The job over the Mona Lisa archive, default config, one in-memory worker."""
    return cached_run(tmp_path_factory, "mona", [shared_warc(MONA_LISA)], beam_args=IN_MEMORY)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Under ``--dist loadgroup`` (make test) the tests of a module that share a
    module-scoped fixture go to one worker, so the fixture is computed once; every
    other test is handed out on its own. Session fixtures share through cached_run."""
    for item in items:
        fixtures = getattr(item, "_fixtureinfo", None)
        if fixtures is None or item.get_closest_marker("xdist_group"):
            continue
        for name in fixtures.names_closure:
            defs = fixtures.name2fixturedefs.get(name) or ()
            if any(d.scope in ("module", "package", "class") for d in defs):
                item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::")[0]))
                break


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 60.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited early with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port}")


def read_docs(out_dir):
    """Every document row of a run, shard by shard, through the manifest."""
    from trainer.shards import iter_documents
    return list(iter_documents(str(Path(out_dir) / "documents")))


def matches(check):
    """An assert_that matcher from a function of the whole output that asserts."""
    from apache_beam.testing.util import BeamAssertException

    def matcher(actual):
        try:
            check(list(actual))
        except AssertionError as e:
            raise BeamAssertException(str(e) or repr(e)) from e
    return matcher
