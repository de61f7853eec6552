"""Defects found by reading the change as a user would run it: --overwrite on a
folder that is not a run, runner options a job server defines, integral floats in
a JSON config, pruning after a rewound resume, one-rank parallelism on many ranks."""

import os

import pytest
import torch

from filters.config import CurationConfig
from pipeline.run import OutputRefused, check_runner_args, prepare_output
from trainer.checkpoint import _prune
from trainer.distributed import Dist
from trainer.parallelize import resolve_parallel


def test_overwrite_refuses_a_folder_that_is_no_run_and_keeps_it(tmp_path):
    (tmp_path / "documents").mkdir()
    (tmp_path / "documents" / "thesis.tex").write_text("mine")
    with pytest.raises(OutputRefused, match="does not look like a kosmos run"):
        prepare_output(str(tmp_path), overwrite=True)
    assert (tmp_path / "documents" / "thesis.tex").read_text() == "mine"


def test_overwrite_still_replaces_a_run(tmp_path):
    (tmp_path / "run.json").write_text("{}")
    (tmp_path / "documents").mkdir()
    (tmp_path / "documents" / "part-00000-of-00001.parquet").write_bytes(b"x")
    prepare_output(str(tmp_path), overwrite=True)
    assert not (tmp_path / "documents").exists() and not (tmp_path / "run.json").exists()


def test_a_job_servers_own_options_pass_to_portable_runners_and_typos_stop_local_ones(capsys):
    check_runner_args(["--runner=FlinkRunner", "--checkpointing_interval=60000"])
    assert "checkpointing_interval" in capsys.readouterr().err
    with pytest.raises(ValueError, match="did you mean --images"):
        check_runner_args(["--imagez", "http"], own_options=["--images"])


def test_an_integral_float_is_an_int_and_a_fraction_is_refused():
    cfg = CurationConfig.from_dict({"images": {"min_side": 64.0}})
    assert cfg.images.min_side == 64 and isinstance(cfg.images.min_side, int)
    with pytest.raises(ValueError, match="min_side"):
        CurationConfig.from_dict({"images": {"min_side": 64.5}})


def test_pruning_after_a_rewind_keeps_this_runs_checkpoints(tmp_path):
    for step in (1, 2, 3, 4, 5):
        (tmp_path / f"step-{step:08d}").mkdir()
    _prune(str(tmp_path), 2, "step-00000003")      # a run resumed from step 2 wrote step 3
    assert sorted(os.listdir(tmp_path)) == ["step-00000002", "step-00000003", "step-00000004", "step-00000005"]


def test_no_parallelism_on_many_ranks_is_refused():
    with pytest.raises(ValueError, match="run.parallel=none runs one rank"):
        resolve_parallel("none", Dist(rank=0, world_size=2, local_rank=0, device=torch.device("cpu")))
    assert resolve_parallel("none", Dist()) == "none"


def test_a_loss_in_eval_mode_keeps_no_keys_and_values():
    """Validation runs the model in eval mode: its loss forward must not hold every
    layer's keys and values (about 3 GB at B=8, T=2048 for kosmos-1)."""
    from trainer.model.config import get_config
    from trainer.model.decoder import MagnetoDecoder
    from trainer.model.kosmos import KosmosModel
    torch.manual_seed(0)
    model = KosmosModel(get_config("tiny")).eval()
    seen = []
    real = MagnetoDecoder.forward

    def spy(self, *a, **k):
        out = real(self, *a, **k)
        seen.append(out[1])
        return out
    ids = torch.randint(4, model.ids.image_start, (2, 16))
    MagnetoDecoder.forward = spy
    try:
        with torch.no_grad():
            model(ids, labels=model.labels_for(ids))
            model(ids)
            model.score([[0, 5]], [[6, 7]])
    finally:
        MagnetoDecoder.forward = real
    assert len(seen) == 3 and all(c is None for cache in seen for c in cache)
