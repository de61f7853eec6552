"""The same job through Beam's PortableRunner against a local job service (the
path Flink and Spark take) gives the same documents and statistics."""

import contextlib
import json
import os
import subprocess
import sys

import pytest

from conftest import all_shared_warcs, free_port, read_docs, run_job, wait_for_port


@contextlib.contextmanager
def service(args, log_path):
    """A Beam service started as its own process on 127.0.0.1; yields its address."""
    port = free_port()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", *args(port)], stdout=log, stderr=subprocess.STDOUT,
                                env=dict(os.environ))
        try:
            wait_for_port(port, proc)
            yield f"localhost:{port}"
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


@pytest.fixture
def job_service(tmp_path):
    with service(lambda port: ["apache_beam.runners.portability.local_job_service_main", "--port", str(port)],
                 tmp_path / "job_service.log") as address:
        yield address


@pytest.mark.timeout(600)
def test_portable_runner_matches_local_runner(shared_run, job_service, tmp_path):
    out, stats = shared_run
    portable = run_job(all_shared_warcs(), tmp_path / "portable",
                       beam_args=["--runner=PortableRunner", f"--job_endpoint={job_service}",
                                  "--environment_type=LOOPBACK"])
    assert portable == stats
    assert (tmp_path / "portable" / "stats.json").read_text() == (out / "stats.json").read_text()
    assert json.loads((tmp_path / "portable" / "documents" / "_manifest.json").read_text()) == \
        json.loads((out / "documents" / "_manifest.json").read_text())
    assert [d["doc_id"] for d in read_docs(tmp_path / "portable")] == [d["doc_id"] for d in read_docs(out)]


@pytest.fixture
def worker_pool(tmp_path):
    """Beam's SDK worker pool as a separate process: how Flink and Spark run Python
    workers (the EXTERNAL environment)."""
    with service(lambda port: ["apache_beam.runners.worker.worker_pool_main", f"--service_port={port}"],
                 tmp_path / "worker_pool.log") as address:
        yield address


@pytest.mark.timeout(600)
def test_external_worker_pool_matches_local_runner(shared_run, job_service, worker_pool, tmp_path):
    out, stats = shared_run
    external = run_job(all_shared_warcs(), tmp_path / "external",
                       beam_args=["--runner=PortableRunner", f"--job_endpoint={job_service}",
                                  "--environment_type=EXTERNAL", f"--environment_config={worker_pool}"])
    assert external == stats
    assert [d["doc_id"] for d in read_docs(tmp_path / "external")] == [d["doc_id"] for d in read_docs(out)]
