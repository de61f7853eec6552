"""pipeline/local_runner.py: Beam's local runner with compact shuffle buffers and
the residuals of parallel bundles kept."""

from __future__ import annotations

import os

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.util import assert_that, equal_to

from pipeline import local_runner
from tests.conftest import SHARED


@pytest.fixture
def installed():
    from apache_beam.runners.portability.fn_api_runner import execution
    already = bool(local_runner._originals)     # run_curation installs them for the process
    assert "compact shuffle buffers; compact stage buffers; residuals of parallel bundles; bundles of at most" \
        in local_runner.install()
    assert execution.GroupingBuffer.__name__ == "CompactGroupingBuffer"
    yield
    if not already:
        local_runner.uninstall()


def _values(i: int):
    """Small and large, flat and nested: some under the compression threshold, some above."""
    return [i, f"short {i}", "long text " * (10 + i % 40), {"id": i, "items": [{"text": "x" * (i % 500)}]},
            bytes(range(i % 256)) * 3]


@pytest.mark.parametrize("mode,workers,bundle_bytes", [("in_memory", 1, 32 << 20), ("in_memory", 1, 2_000),
                                                       ("multi_threading", 2, 2_000)])
def test_compact_buffers_and_bounded_bundles_group_as_beam_does(installed, monkeypatch, mode, workers,
                                                                 bundle_bytes):
    """The same groups whether a stage's input goes as one bundle or as many small ones."""
    monkeypatch.setattr(local_runner, "BUNDLE_BYTES", bundle_bytes)
    most = [0]
    pieces = local_runner._pieces

    def counted(data, limit):
        for n, piece in enumerate(pieces(data, limit), 1):
            most[0] = max(most[0], n)
            yield piece
    monkeypatch.setattr(local_runner, "_pieces", counted)
    pairs = [(f"key-{i % 37}", v) for i in range(600) for v in _values(i)]
    expected = {}
    for k, v in pairs:
        expected.setdefault(k, []).append(repr(v))
    opts = PipelineOptions(["--runner=DirectRunner", f"--direct_running_mode={mode}",
                            f"--direct_num_workers={workers}"])
    with beam.Pipeline(options=opts) as p:
        grouped = (p | beam.Create(pairs) | beam.GroupByKey()
                   | beam.MapTuple(lambda k, vs: (k, sorted(repr(v) for v in vs))))
        assert_that(grouped, equal_to([(k, sorted(vs)) for k, vs in expected.items()]))
        joined = ({"a": p | "A" >> beam.Create([("x", 1), ("y", "b" * 400)]),
                   "b": p | "B" >> beam.Create([("x", {"z": [1, 2]})])}
                  | beam.CoGroupByKey()
                  | beam.MapTuple(lambda k, g: (k, sorted(map(repr, g["a"])), sorted(map(repr, g["b"])))))
        assert_that(joined, equal_to([("x", ["1"], ["{'z': [1, 2]}"]), ("y", [repr("b" * 400)], [])]),
                    label="cogroup")
    assert (most[0] > 10) == (bundle_bytes < 1 << 20), most      # small bundles: the groups went in many


def test_the_allocator_is_told_to_hand_freed_memory_back(monkeypatch):
    """glibc's trim and mmap thresholds, for the job and (through the environment) the
    worker processes it starts; a value the caller set is kept."""
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "262144")
    done = local_runner.return_freed_memory()
    assert done == f"allocator: MALLOC_TRIM_THRESHOLD_=262144, MALLOC_MMAP_THRESHOLD_={local_runner.MMAP_THRESHOLD}"
    assert os.environ["MALLOC_MMAP_THRESHOLD_"] == str(local_runner.MMAP_THRESHOLD)
    assert local_runner.MMAP_THRESHOLD < local_runner.BUNDLE_BYTES     # a block of a bundle's size is mapped


def test_pack_round_trips_and_compresses_only_what_gains():
    for data in (b"", b"abc", b"x" * 300, bytes(range(256)) * 2):
        assert local_runner._unpack(local_runner._pack(data)) == data
    assert len(local_runner._pack(b"x" * 10_000)) < 200
    assert local_runner._pack(b"abc") == b"\x00abc"


def test_every_range_is_read_when_bundles_hand_ranges_back_on_two_workers(installed):
    """ReadArchives hands ranges back once a bundle has read ``bundle_records``; with
    two workers Beam's own merge of the bundle responses dropped those ranges (691
    of 1,000 records read on a 1,000-page WARC in 4 ranges). Every record is read."""
    from contract.reasons import READ, RECORD
    from filters.config import CurationConfig
    from transforms.read import ReadAndResolve
    from archives.records import iter_archive

    path = str(SHARED / "warc" / "aut__example.warc.gz")
    with open(path, "rb") as fh:
        expected = sum(1 for _ in iter_archive(fh, path))
    cfg = CurationConfig().override({"records.split_bytes": 300_000, "records.bundle_records": 40,
                                     "records.resolve_revisits": False})
    opts = PipelineOptions(["--runner=DirectRunner", "--direct_running_mode=multi_threading",
                            "--direct_num_workers=2"])
    with beam.Pipeline(options=opts) as p:
        read = p | beam.Create([path]) | ReadAndResolve(cfg.records)
        reads = (read.outcomes[0]          # the reader's own (no Flatten: see pipeline/run.py's warning)
                 | beam.Filter(lambda o: getattr(o, "level", "") == RECORD and getattr(o, "status", "") == READ)
                 | beam.combiners.Count.Globally())
        assert_that(reads, equal_to([expected]))


def test_a_direct_runner_told_so_runs_locally_without_trying_prism(monkeypatch):
    """Beam's DirectRunner tries Prism first (here it fails: no binary to fetch) and then
    runs locally; told by ``without_prism`` it goes to the local runner directly, with
    the same result. Other runners are left as they are."""
    from apache_beam.runners.portability import prism_runner
    from apache_beam.runners.portability.fn_api_runner import fn_runner

    tried = []

    def no_prism(self, pipeline, options):
        tried.append(pipeline)
        raise RuntimeError("no Prism here")
    monkeypatch.setattr(prism_runner.PrismRunner, "run_pipeline", no_prism)
    for skip in (False, True):
        p = beam.Pipeline(options=PipelineOptions(["--runner=DirectRunner"]))
        assert (local_runner.without_prism(p.runner) if skip else False) is skip
        doubled = p | beam.Create([1, 2, 3]) | beam.Map(lambda x: x * 2)
        assert_that(doubled, equal_to([2, 4, 6]))
        p.run().wait_until_finish()
        assert len(tried) == 1, skip          # Beam's own tried Prism once; told, it did not
    assert local_runner.without_prism(fn_runner.FnApiRunner()) is False


def test_without_prism_touches_only_the_choice_of_prism():
    """In the tested Beam the flag that without_prism sets is read in one place: where
    SwitchingDirectRunner asks whether Prism would run the pipeline."""
    import inspect as inspect_
    from apache_beam.runners.direct import direct_runner

    assert local_runner._tested(local_runner.beam_version())
    uses = [line.strip() for line in inspect_.getsource(direct_runner).splitlines() if "_is_interactive" in line]
    assert uses == ["_is_interactive = False", "self._is_interactive = True",
                    "if _PrismRunnerSupportVisitor().accept(pipeline, self._is_interactive):"]
