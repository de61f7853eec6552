"""pipeline/local_runner.py on a Beam it was not tested on: the run is refused before it
starts, naming the change that does not apply, unless ``runner.allow_unpatched``; then
Beam's own local runner writes what the changed one writes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline import local_runner
from tests.conftest import SAMPLE, run_job

WARC = str(SAMPLE / "dolma__sample-0000.warc.gz")       # 48 records, 21 text-only documents
SMALL = {"records.split_bytes": 50_000, "records.bundle_records": 10}   # 5 ranges, handed back every 10 records
TIMING = ("time", "seconds", "_s", "started", "finished", "wall")


@pytest.fixture
def beam_own(monkeypatch):
    """Beam's runner as it is for the test (the job installs the changes for the process);
    the test's monkeypatches are undone before the changes come back."""
    was_installed = bool(local_runner._originals)
    local_runner.uninstall()
    yield
    monkeypatch.undo()
    local_runner.uninstall()
    if was_installed:
        local_runner.install()


def _other_beam(monkeypatch):
    monkeypatch.setattr(local_runner, "beam_version", lambda: "2.78.0")


def _no_parallel_bundle_manager(monkeypatch):
    from apache_beam.runners.portability.fn_api_runner import fn_runner
    monkeypatch.delattr(fn_runner, "ParallelBundleManager")


def _list_buffer_renamed(monkeypatch):
    from apache_beam.runners.portability.fn_api_runner import execution

    def init(self, coder_impl):        # what a later Beam might do: the same buffer, its list renamed
        self._coder_impl = coder_impl
        self._elements, self._grouped_output, self.cleared = [], None, False
    monkeypatch.setattr(execution.ListBuffer, "__init__", init)


def _grouping_output_changed(monkeypatch):
    from apache_beam.runners.portability.fn_api_runner import execution
    partition = execution.GroupingBuffer.partition
    monkeypatch.setattr(execution.GroupingBuffer, "partition", lambda self, n: partition(self, n)[::-1])


@pytest.mark.parametrize("simulate,change,why", [
    (_other_beam, "compact shuffle buffers", "not tested on this version"),
    (_no_parallel_bundle_manager, "residuals of parallel bundles", "no BundleManager with a ParallelBundleManager"),
    (_list_buffer_renamed, "compact stage buffers", "a ListBuffer has no _inputs"),
    (_grouping_output_changed, "compact shuffle buffers", "grouped output differs from its compact copy"),
])
def test_a_change_that_does_not_apply_is_named_and_nothing_is_installed(beam_own, monkeypatch, simulate, change,
                                                                       why):
    from apache_beam.runners.portability.fn_api_runner import execution
    assert local_runner.problems() == []
    simulate(monkeypatch)
    found = dict(local_runner.problems())
    assert why in found[change], found
    with pytest.raises(local_runner.NotApplicable) as refused:
        local_runner.install()
    message = str(refused.value)
    assert f"{change}: " in message and "Beam " in message and "--set runner.allow_unpatched=true" in message
    assert "\n" not in message
    assert not local_runner._originals and execution.GroupingBuffer.__name__ == "GroupingBuffer"
    done = local_runner.install(allow_unpatched=True)         # all or none
    assert done.startswith("the local runner ran unpatched") and f"{change} not applied" in done
    assert not local_runner._originals and local_runner.unpatched() in done


def test_curate_refuses_another_beam_before_anything_runs(beam_own, monkeypatch, tmp_path, capsys):
    from pipeline.cli import main
    _other_beam(monkeypatch)
    out = tmp_path / "run"
    rc = main(["curate", "--input", WARC, "--output", str(out), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and not out.exists()
    assert err.startswith("kosmos curate: error: the local runner's changes (pipeline/local_runner.py) do not "
                          "apply to Beam 2.78.0 (tested on 2.77.x") and "\n" not in err, err
    assert "compact shuffle buffers: not tested on this version" in err
    assert err.endswith("--set runner.allow_unpatched=true")


def test_an_unpatched_runner_is_refused_more_than_one_worker(beam_own, monkeypatch, tmp_path, capsys):
    """Beam's own multi-worker mode loses splittable-DoFn residuals: records never read
    are never counted, so the accounting could not show it. One worker it may have."""
    from pipeline.cli import main
    _other_beam(monkeypatch)
    out = tmp_path / "run"
    rc = main(["curate", "--input", WARC, "--output", str(out), "--quiet", "--num_workers", "2",
               "--set", "runner.allow_unpatched=true"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and not out.exists()
    assert "2 workers would lose records without a trace" in err and err.endswith("run with --num_workers 1"), err


def test_unpack_refuses_a_piece_it_did_not_pack():
    """A piece of Beam's own encoded elements starts with a timestamp (0x7f here), not a
    tag: once it lost its first byte and was read as if packed."""
    from apache_beam.coders import coders
    from apache_beam.transforms import window
    impl = coders.WindowedValueCoder(coders.FastPrimitivesCoder(), coders.GlobalWindowCoder()).get_impl()
    beams_own = impl.encode_nested(window.GlobalWindows.windowed_value("text"))
    for piece, error, said in ((beams_own, ValueError, r"starting b'\x7f"), (b"", ValueError, "0 bytes"),
                               ("text", TypeError, "got a str")):
        with pytest.raises(error) as raised:
            local_runner._unpack(piece)
        assert said in str(raised.value) and "pipeline/local_runner.py" in str(raised.value)
    assert local_runner._unpack(local_runner._pack(beams_own)) == beams_own


def _outputs(run: Path):
    """Every file of a run by its path, bytes as written; stats.json and _SUCCESS without
    timing fields and the config hash (the settings differ by runner.allow_unpatched),
    run.json (when and how it ran) left out."""
    def strip(o):
        if isinstance(o, dict):
            return {k: strip(v) for k, v in o.items() if k != "config_sha256" and not any(t in k for t in TIMING)}
        return [strip(v) for v in o] if isinstance(o, list) else o
    files = {}
    for path in sorted(p for p in run.rglob("*") if p.is_file()):
        name = str(path.relative_to(run))
        if name == "run.json":
            continue
        data = path.read_bytes()
        files[name] = strip(json.loads(data)) if name in ("stats.json", "_SUCCESS") else data
    return files


def test_beams_own_runner_writes_what_the_changed_one_writes(beam_own, monkeypatch, tmp_path, capsys):
    """The changed runner on two threads, its bundles of 16 KB, ranges handed back: the
    compact buffers, bounded bundles and kept residuals all at work. Beam's own runner,
    one worker (where its residuals are not lost), run by `kosmos curate` on a Beam
    taken for another version: the same bytes in every output, and it says it ran unpatched."""
    from pipeline.cli import main
    monkeypatch.setattr(local_runner, "BUNDLE_BYTES", 16 << 10)
    changed = tmp_path / "changed"
    run_job([WARC], changed, overrides=SMALL,
            beam_args=["--runner=DirectRunner", "--direct_running_mode=multi_threading", "--direct_num_workers=2"])
    assert json.loads((changed / "run.json").read_text())["local_runner"].startswith(
        "compact shuffle buffers; compact stage buffers; residuals of parallel bundles; bundles of at most")
    local_runner.uninstall()
    _other_beam(monkeypatch)
    own = tmp_path / "own"
    sets = [f"--set={k}={v}" for k, v in {**SMALL, "runner.allow_unpatched": "true"}.items()]
    capsys.readouterr()
    assert main(["curate", "--input", WARC, "--output", str(own), "--quiet", *sets,
                 "--worker_log", str(tmp_path / "own.log")]) == 0
    assert not local_runner._originals
    printed = capsys.readouterr().out
    record = json.loads((own / "run.json").read_text())
    assert record["config"]["runner"] == {"allow_unpatched": True}
    assert record["local_runner"].startswith("the local runner ran unpatched (runner.allow_unpatched; Beam 2.78.0)")
    assert record["local_runner"].split("; allocator")[0] in record["warnings"]
    assert f"WARNING: {local_runner.unpatched()}" in printed
    a, b = _outputs(changed), _outputs(own)
    assert sorted(a) == sorted(b)
    assert [name for name in a if a[name] != b[name]] == []
    assert json.loads((own / "stats.json").read_text())["outputs"]["text"]["rows"] == 21
