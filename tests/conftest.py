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


@pytest.fixture(scope="session")
def shared_run(tmp_path_factory):
    """The job over every WARC/ARC in ../shared/data/warc, local runner, 2 workers."""
    out = tmp_path_factory.mktemp("shared") / "run"
    stats = run_job(all_shared_warcs(), out)
    return out, stats


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
