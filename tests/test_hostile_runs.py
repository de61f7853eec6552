"""Hostile runs: what a user (or a second user) does to a run from the command line.
--overwrite over a bigger run, two runs into one directory, a killed run, settings of
the wrong type, unknown flags, a directory as input, an archived javascript: URL, a
full disk. The whole jobs here are few and small: one real article (two captures, 150
outcomes) in two shards."""

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import IN_MEMORY, ROOT, shared_warc

TINY = "webarchive-discovery__flashfrozen-jwat-recompressed.warc.gz"   # one article, 5 images kept
SMALL_RUN = {"output.num_shards": 2}


def _run(out, overwrite=False, overrides=SMALL_RUN, log=None):
    from filters.config import CurationConfig
    from pipeline.run import run_curation
    return run_curation([shared_warc(TINY)], str(out), CurationConfig().override(overrides), list(IN_MEMORY),
                        worker_log=str(log or Path(str(out) + ".log")), overwrite=overwrite)


def _files(out: Path):
    """Every file under a run directory: relative path -> bytes (run.json differs by
    its times and output path and is left out)."""
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and p.name != "run.json"}


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("clean") / "run"
    stats = _run(out)
    return out, stats


def _cli(*argv):
    """`kosmos ARGV` in a child process: (exit status, stdout, stderr)."""
    p = subprocess.run([sys.executable, "-m", "pipeline.cli", *argv], cwd=ROOT, capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=600)
    return p.returncode, p.stdout, p.stderr


def _error_line(stderr: str) -> str:
    lines = [l for l in stderr.splitlines() if l.strip() and "apitools" not in l]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


# 1. --overwrite removes every output of the old run.

def test_a_run_writes_only_what_overwrite_knows_and_overwrite_leaves_nothing_old(clean_run, tmp_path):
    from pipeline.run import OUTPUTS
    out = tmp_path / "run"
    _run(out, overrides={"output.num_shards": 8})
    unlisted = {p.name for p in out.iterdir()} - set(OUTPUTS)      # checked last, after the symptom
    assert len(list((out / "outcomes").glob("part-*"))) == 8
    (out / ".tmp-0123-stats.json").write_bytes(b"half written when the run was killed")
    (out / "documents" / ".tmp-4567-part-00001-of-00008.parquet").write_bytes(b"half")
    old = 946684800                                           # 2000-01-01: marks the first run's files
    for p in out.rglob("*"):
        os.utime(p, (old, old))
    stats = _run(out, overwrite=True)
    left = [str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and p.stat().st_mtime == old]
    assert not left, f"files of the overwritten run remain: {left}"
    import pyarrow.dataset as ds
    assert ds.dataset(str(out / "outcomes"), format="parquet").count_rows() == stats["outputs"]["outcomes"]["rows"]
    assert _files(out) == _files(clean_run[0])              # the same as a run into an empty directory
    assert not unlisted, f"outputs of a run that pipeline/run.py's OUTPUTS lacks: {sorted(unlisted)}"


# 2. Two runs into one directory; a run killed with its claim held.

def test_two_runs_started_together_one_proceeds_and_a_killed_one_needs_overwrite(clean_run, tmp_path):
    out = tmp_path / "run"
    argv = ["curate", "--input", shared_warc(TINY), "--output", str(out), "--quiet", "--set", "output.num_shards=2",
            *IN_MEMORY]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    procs = [subprocess.Popen([sys.executable, "-m", "pipeline.cli", *argv, "--worker_log", str(tmp_path / f"w{i}")],
                              cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    try:
        deadline = time.time() + 300
        while all(p.poll() is None for p in procs) and time.time() < deadline:
            time.sleep(0.05)
        loser = next(p for p in procs if p.poll() is not None)
        winner = next(p for p in procs if p is not loser)
        _, err = loser.communicate()
        assert loser.returncode == 2, err
        line = _error_line(err)
        assert str(out) in line and f"pid {winner.pid}" in line, line
        assert winner.poll() is None, "the winner should still be running"
        while not (out / "run.json").exists() and winner.poll() is None:
            time.sleep(0.05)
        from pipeline.run import CLAIM, OutputRefused
        claim = json.loads((out / CLAIM).read_text())
        assert claim["pid"] == winner.pid
        winner.send_signal(signal.SIGKILL)                      # kill -9 in the middle of the run
        winner.wait()
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert (out / CLAIM).exists() and not (out / "_SUCCESS").exists()
    with pytest.raises(OutputRefused, match="did not finish"):
        _run(out)
    _run(out, overwrite=True)
    assert not (out / CLAIM).exists()
    assert _files(out) == _files(clean_run[0])


def test_a_claim_is_exclusive_while_held_and_released_after(tmp_path):
    from pipeline.run import CLAIM, OutputClaim, OutputRefused
    first = OutputClaim(str(tmp_path)).acquire(overwrite=False)
    with pytest.raises(OutputRefused, match=f"pid {os.getpid()}"):
        OutputClaim(str(tmp_path)).acquire(overwrite=True)     # not even --overwrite takes a live claim
    first.release()
    assert not (tmp_path / CLAIM).exists()
    again = OutputClaim(str(tmp_path)).acquire(overwrite=False)
    assert again.stale is None
    again.release()


# 3. --set values (and config files) are checked against the settings' types.

def test_curation_settings_of_the_wrong_type_are_refused(tmp_path):
    rc, out, err = _cli("curate", "--input", "x", "--output", "y", "--set", "output.text=False",
                        "--set", "fetch.write_warc=NO", "--set", "language.min_score=0.8", "--print_config")
    cfg = json.loads(out)
    assert cfg["output"]["text"] is False and cfg["fetch"]["write_warc"] is False
    assert cfg["language"]["min_score"] == 0.8
    rc, out, err = _cli("curate", "--input", "x", "--output", "y", "--set", "images.min_side=abc", "--print_config")
    line = _error_line(err)
    assert rc == 2 and "images.min_side" in line and "'abc'" in line and "integer" in line
    rc, out, err = _cli("curate", "--input", "x", "--output", "y", "--set", "output.text=maybe", "--print_config")
    assert rc == 2 and "output.text" in _error_line(err) and "boolean" in err
    config = tmp_path / "cfg.json"
    config.write_text(json.dumps({"images": {"min_side": "64"}}))
    rc, out, err = _cli("curate", "--input", "x", "--output", "y", "--config", str(config), "--print_config")
    line = _error_line(err)
    assert rc == 2 and str(config) in line and "images.min_side" in line and "'64'" in line


def test_training_settings_of_the_wrong_type_are_refused(tmp_path):
    from trainer.config import TrainConfig
    rc, out, err = _cli("train", "--set", "data.allow_incomplete_runs=False", "--set", "optim.betas=[0.9, 0.95]",
                        "--set", "run.max_steps=null", "--print_config")
    cfg = json.loads(out)
    assert cfg["data"]["allow_incomplete_runs"] is False and cfg["optim"]["betas"] == [0.9, 0.95]
    assert cfg["run"]["max_steps"] is None
    assert TrainConfig().override({"data.allow_incomplete_runs": "False"}).data.allow_incomplete_runs is False
    for key, value, expected in (("optim.lr", "fast", "number"), ("data.text", "out/text", "JSON list"),
                                 ("run.save_every", "1.5", "integer")):
        with pytest.raises(ValueError, match=f"{key}: '{value}' is not an? {expected}"):
            TrainConfig().override({key: value})
    config = tmp_path / "train.json"
    config.write_text(json.dumps({"data": {"allow_incomplete_runs": "false"}}))
    with pytest.raises(ValueError, match="data.allow_incomplete_runs: 'false' is not a boolean"):
        TrainConfig.load(str(config))


# 4. Unknown command-line flags.

def test_unknown_flags_are_refused_with_the_closest_name(tmp_path):
    rc, _, err = _cli("curate", "--input", shared_warc(TINY), "--output", str(tmp_path / "a"), "--imagez", "http")
    assert rc == 2 and "--imagez" in _error_line(err) and "did you mean --images" in err
    rc, _, err = _cli("curate", "--input", shared_warc(TINY), "--output", str(tmp_path / "b"), "--no_such_flag", "7")
    assert rc == 2 and "unknown option --no_such_flag" in _error_line(err)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    from pipeline.run import OptionRefused, check_runner_args
    with pytest.raises(OptionRefused, match="did you mean --direct_num_workers"):
        check_runner_args(["--direct_num_worker=2"])
    check_runner_args(["--runner=DataflowRunner", "--project", "p", "--region", "r", "--temp_location", "gs://b/t",
                       "--experiments=use_runner_v2", "--sdk_container_image=img", "--flink_master", "h:8081",
                       "--environment_type=LOOPBACK", "--save_main_session", "--direct_num_workers=2"])


# 5. Smaller: a directory as input, a refused output, javascript: links, a full disk.

def test_a_directory_as_input_is_refused_suggesting_its_files(tmp_path):
    archives = tmp_path / "warcs"
    archives.mkdir()
    (archives / TINY).write_bytes(Path(shared_warc(TINY)).read_bytes())
    rc, _, err = _cli("curate", "--input", str(archives), "--output", str(tmp_path / "out"), "--quiet", *IN_MEMORY)
    line = _error_line(err)
    assert rc == 2 and f"'{archives}/*'" in line and "directory" in line
    assert not (tmp_path / "out" / "_SUCCESS").exists()


def test_a_refused_output_directory_is_one_line_and_status_2(clean_run):
    rc, _, err = _cli("curate", "--input", shared_warc(TINY), "--output", str(clean_run[0]), "--quiet", *IN_MEMORY)
    line = _error_line(err)
    assert rc == 2 and str(clean_run[0]) in line and "--overwrite" in line and "the job failed" not in err


def test_the_report_links_only_http_urls():
    from pipeline.report import _kept_documents_html, _samples_html
    row = {"doc_id": "d1", "title": "t", "items": [], "images": [], "scores": {"words": 3}}
    evil = _kept_documents_html([{**row, "url": "javascript:alert(document.cookie)"}])
    assert "href" not in evil and "javascript:alert(document.cookie)" in evil
    assert "href" not in _kept_documents_html([{**row, "url": " JavaScript:alert(1)"}])
    assert "href='https://example.com/a'" in _kept_documents_html([{**row, "url": "https://example.com/a"}])
    sample = {"level": "record", "status": "dropped", "reason": "not_html", "url": "javascript:alert(1)",
              "file": "/nowhere/x.warc.gz", "offset": 0, "scores": "", "snippet": "", "message": ""}
    html = _samples_html([sample])
    assert "href" not in html and "javascript:alert(1)" in html


def test_a_write_that_fills_the_disk_leaves_no_temporary_file(tmp_path, monkeypatch):
    from apache_beam.io.filesystems import FileSystems
    from transforms.write import atomic_write
    real_create = FileSystems.create

    class FullDisk:
        def __init__(self, fh):
            self.fh = fh

        def write(self, data):
            self.fh.write(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

    monkeypatch.setattr(FileSystems, "create", staticmethod(lambda *a, **k: FullDisk(real_create(*a, **k))))
    with pytest.raises(OSError, match="No space left"):
        atomic_write(str(tmp_path / "part-00000-of-00001.parquet"), b"x" * 100_000)
    assert list(tmp_path.iterdir()) == []
