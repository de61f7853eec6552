"""Offline validation of deploy/: every script and manifest parses, names only files
and options that exist, and the Dataflow graph builds with the launch options."""

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT

DEPLOY = ROOT / "deploy"
SCRIPTS = sorted(DEPLOY.rglob("*.sh")) + sorted(DEPLOY.rglob("*.sbatch"))
YAMLS = sorted(DEPLOY.rglob("*.yaml")) + sorted(DEPLOY.rglob("*.yml"))
DOCKERFILES = sorted(DEPLOY.rglob("Dockerfile"))


def test_every_deploy_file_is_covered_here():
    covered = set(SCRIPTS) | set(YAMLS) | set(DOCKERFILES) | {
        DEPLOY / "README.md", DEPLOY / "SIZING.md", DEPLOY / "sizing.py", DEPLOY / "dataflow" / "flex_main.py",
        DEPLOY / "dataflow" / "requirements-worker.txt", DEPLOY / "dataflow" / "curate-commoncrawl.json",
        DEPLOY / "dataflow" / "flex-template" / "metadata.json"}
    files = {p for p in DEPLOY.rglob("*") if p.is_file() and "__pycache__" not in p.parts}
    assert files - covered == set(), "a new deploy file needs a check in tests/test_deploy.py"


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_shell_scripts_parse(script):
    subprocess.run(["bash", "-n", str(script)], check=True)
    assert script.stat().st_mode & 0o111, f"{script} is not executable"


def _logical_lines(text):
    """Shell text with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", text)
    return [line for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]


def _expand(line):
    """Shell parameter expansions, innermost first: ${VAR:+words} -> words, others -> X."""
    inner = re.compile(r"\$\{([^{}]*)\}")
    while inner.search(line):
        line = inner.sub(lambda m: m.group(1).split(":+", 1)[1] if ":+" in m.group(1) else "X", line)
    return line


def _options_after(words, start):
    return [w.split("=", 1)[0] for w in words[start:] if w.startswith("--")]


def _command_options(script, marker):
    """Options given to the command following ``marker`` (e.g. 'curate', 'train')."""
    out = []
    for line in _logical_lines(script.read_text()):
        line = _expand(line)
        try:
            words = shlex.split(line)
        except ValueError:
            continue
        if marker in words:
            out.extend(_options_after(words, words.index(marker) + 1))
    return out


def _beam_option_names():
    """Every option string Beam's pipeline options define (Dataflow, S3, portable, Flink...),
    from the parser the CLI checks runner arguments with."""
    from pipeline.run import _option_parser
    return {opt.lstrip("-") for a in _option_parser()._actions for opt in a.option_strings}


def _cli_options(command):
    from pipeline.cli import build_parser
    sub = build_parser()._subparsers._group_actions[0].choices[command]
    return {opt.lstrip("-") for a in sub._actions for opt in a.option_strings}


CURATE_SCRIPTS = [DEPLOY / "dataflow" / "launch.sh", DEPLOY / "flink" / "submit.sh"]
TRAIN_SCRIPTS = [DEPLOY / "train" / "torchrun.sh", DEPLOY / "train" / "slurm.sbatch"]


@pytest.mark.parametrize("script", CURATE_SCRIPTS, ids=lambda p: p.name)
def test_curate_scripts_use_only_existing_options(script):
    known = _cli_options("curate") | _beam_option_names()
    used = _command_options(script, "curate")
    assert used, f"no kosmos curate command found in {script}"
    unknown = [o for o in used if o.lstrip("-") not in known]
    assert not unknown, f"{script.name}: unknown options {unknown}"


@pytest.mark.parametrize("script", TRAIN_SCRIPTS, ids=lambda p: p.name)
def test_train_scripts_use_existing_options_and_configs(script):
    from torch.distributed.run import get_args_parser
    torchrun = {opt.lstrip("-") for a in get_args_parser()._actions for opt in a.option_strings}
    text = script.read_text()
    used_torchrun = []
    for line in _logical_lines(text):
        line = _expand(line)
        if "torchrun" in line:
            words = shlex.split(line)
            i = words.index("torchrun")
            j = words.index("-m") if "-m" in words else len(words)
            used_torchrun += _options_after(words[:j], i + 1)
            assert words[j + 1:j + 3] == ["pipeline.cli", "train"]
            assert set(_options_after(words, j + 3)) <= {"--" + o for o in _cli_options("train")}
    assert used_torchrun and not [o for o in used_torchrun if o.lstrip("-") not in torchrun]
    for cfg in re.findall(r"trainer/configs/[\w.-]+\.json", text):
        _load_train_config(ROOT / cfg)


def _load_train_config(path):
    from trainer.config import TrainConfig
    assert path.exists(), path
    return TrainConfig.load(str(path))


def test_every_repository_path_named_in_deploy_exists():
    pattern = re.compile(r"(?<![\w/.-])((?:deploy|trainer|pipeline|transforms|filters|data|scripts|bin|benchmarks)"
                         r"/[\w./-]*[\w])")
    missing = []
    for f in DEPLOY.rglob("*"):
        if not f.is_file() or f.suffix == ".pyc":
            continue
        for path in pattern.findall(f.read_text(errors="replace")):
            if "*" in path or path.startswith("data/out") or path.startswith("data/warc"):
                continue
            if not (ROOT / path).exists():
                missing.append((str(f.relative_to(ROOT)), path))
    assert not missing


def test_dockerfiles_copy_existing_files_and_pin_the_locked_beam():
    lock = (ROOT / "requirements.lock").read_text()
    beam = re.search(r"^apache-beam==([\d.]+)$", lock, re.M).group(1)
    for df in DOCKERFILES:
        text = df.read_text()
        for line in text.splitlines():
            if line.startswith("COPY "):
                for src in line.split()[1:-1]:
                    assert (ROOT / src).exists(), f"{df}: COPY {src}"
        if "beam_python" in text:
            assert f"beam_python3.11_sdk:{beam}" in text


def test_worker_requirements_match_the_lock():
    lock = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==")
            lock[name.lower().replace("_", "-")] = version
    for line in (DEPLOY / "dataflow" / "requirements-worker.txt").read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        name, version = line.split("==")
        name = re.sub(r"\[.*\]", "", name).lower().replace("_", "-")
        assert lock[name] == version, f"{name}: {version} != lock {lock[name]}"


def test_curation_configs_load():
    from filters.config import CurationConfig
    cfg = CurationConfig.from_dict(json.loads((DEPLOY / "dataflow" / "curate-commoncrawl.json").read_text()))
    assert cfg.fetch.source == "http" and not cfg.records.resolve_revisits


def test_flex_template_parameters_are_curate_options():
    meta = json.loads((DEPLOY / "dataflow" / "flex-template" / "metadata.json").read_text())
    known = _cli_options("curate")
    assert {p["name"] for p in meta["parameters"]} <= known
    run = (DEPLOY / "dataflow" / "flex-template" / "run.sh").read_text()
    passed = set(re.findall(r"--parameters (\w+)=", run))
    assert passed <= known | _beam_option_names()
    build = (DEPLOY / "dataflow" / "flex-template" / "cloudbuild.yaml")
    steps = yaml.safe_load(build.read_text())["steps"]
    for step in steps:
        assert (ROOT / step["args"][step["args"].index("-f") + 1]).exists()


def test_flink_manifests():
    compose = yaml.safe_load((DEPLOY / "flink" / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"jobmanager", "taskmanager", "beam-job-server", "python-worker-pool"} <= set(services)
    assert "8099:8099" in services["beam-job-server"]["ports"]
    assert services["python-worker-pool"]["command"] == ["--worker_pool"]
    submit = (DEPLOY / "flink" / "submit.sh").read_text()
    assert "localhost:8099" in submit and "localhost:50000" in submit and "EXTERNAL" in submit
    docs = list(yaml.safe_load_all((DEPLOY / "flink" / "flink-deployment.yaml").read_text()))
    kinds = {d["kind"]: d for d in docs}
    fd = kinds["FlinkDeployment"]
    assert fd["apiVersion"] == "flink.apache.org/v1beta1"
    for field in ("image", "flinkVersion", "jobManager", "taskManager"):
        assert field in fd["spec"]
    sidecars = fd["spec"]["taskManager"]["podTemplate"]["spec"]["containers"]
    pool = next(c for c in sidecars if c["name"] == "beam-worker-pool")
    assert pool["args"] == ["--worker_pool"] and pool["ports"][0]["containerPort"] == 50000
    dep, svc = kinds["Deployment"], kinds["Service"]
    assert dep["spec"]["selector"]["matchLabels"] == dep["spec"]["template"]["metadata"]["labels"] \
        == svc["spec"]["selector"]
    assert 8099 in {p["port"] for p in svc["spec"]["ports"]}


def test_pytorchjob_manifest_passes_the_config():
    job = yaml.safe_load((DEPLOY / "train" / "pytorchjob.yaml").read_text())
    assert job["apiVersion"] == "kubeflow.org/v1" and job["kind"] == "PyTorchJob"
    specs = job["spec"]["pytorchReplicaSpecs"]
    assert set(specs) == {"Master", "Worker"}
    for spec in specs.values():
        c = spec["template"]["spec"]["containers"][0]
        cmd = c["command"]
        assert cmd[0] == "torchrun" and cmd[cmd.index("-m") + 1:cmd.index("-m") + 3] == ["pipeline.cli", "train"]
        cfg = cmd[cmd.index("--config") + 1]
        mount = next(m for m in c["volumeMounts"] if cfg.startswith(m["mountPath"]))
        assert mount["name"] == "config"
        _load_train_config(ROOT / "trainer" / "configs" / Path(cfg).name)


def test_sizing_doc_matches_the_script():
    subprocess.run([sys.executable, str(DEPLOY / "sizing.py"), "--check", str(DEPLOY / "SIZING.md")], check=True,
                   cwd=ROOT)


def test_sizing_of_one_step_by_hand():
    """FSDP and HSDP on 256 GPUs after the plan change, worked out here from the formulas
    of deploy/SIZING.md with the model's own counts, against the script."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("sizing", DEPLOY / "sizing.py")
    sizing = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sizing)
    a = sizing.parser().parse_args([])
    parts = sizing.model_parts()
    # the real model: 1,430.6M trainable (decoder layers + last CLIP block in their own units), 291.4M frozen
    assert parts["layers"] + parts["root"] == 1_430_596_608 and parts["frozen"] == 291_367_936
    sequences, most, before, after = sizing.step_plans(256, 8)
    assert (sequences, most, before, after) == (586, 3, 3, 1)        # 244 + 244 + 98; 1+1+1 each rank at most
    flops = parts["model"].training_flops(586 * 2048, 6200, 2048)
    compute = flops / 256 / (989e12 * 0.5) * (3 / (586 / 256))
    p = parts["layers"] + parts["root"]
    gather = 1 * (4 * parts["layers"] + 2 * parts["root"])           # one micro-batch: layers twice, root once
    fsdp_comm = 255 / 256 * gather / 50e9 + 255 / 256 * 4 * p / 50e9
    fsdp = sizing.step_cost(parts, a, 256, "fsdp", "after", flops, 586, 3, 1)
    assert fsdp["compute"] == pytest.approx(compute) and fsdp["comm"] == pytest.approx(fsdp_comm)
    assert fsdp["step"] == pytest.approx(compute + fsdp_comm - 0.8 * compute)
    assert fsdp["mfu"] == pytest.approx(flops / (fsdp["step"] * 256 * 989e12))
    hsdp_comm = 7 / 8 * gather / 450e9 + 7 / 8 * 4 * p / 450e9 + 2 * 31 / 32 * (4 * p / 8) / 50e9
    hsdp = sizing.step_cost(parts, a, 256, "hsdp", "after", flops, 586, 3, 1)
    assert hsdp["comm"] == pytest.approx(hsdp_comm) and hsdp["step"] == pytest.approx(compute)  # hidden
    # before: three micro-batches, the frozen CLIP layers gathered in each
    old = sizing.step_cost(parts, a, 256, "fsdp", "before", flops, 586, 3, 3)
    assert old["comm"] == pytest.approx(255 / 256 * (3 * gather + 3 * 2 * parts["frozen"]) / 50e9
                                        + 255 / 256 * 4 * p / 50e9)
    # figures quoted in deploy/SIZING.md
    assert (round(fsdp["mfu"], 3), round(old["mfu"], 3), round(hsdp["mfu"], 3)) == (0.201, 0.100, 0.382)


def test_dataflow_graph_builds_with_the_launch_options(tmp_path):
    """The job graph builds, and turns into the portable proto that runners receive, with
    the options of launch.sh (Beam's GCP extras and credentials are not needed for that)."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import GoogleCloudOptions, PipelineOptions, WorkerOptions

    from filters.config import CurationConfig
    from pipeline.curate import build_pipeline
    cfg = CurationConfig.from_dict(json.loads((DEPLOY / "dataflow" / "curate-commoncrawl.json").read_text()))
    opts = PipelineOptions([
        "--runner=DataflowRunner", "--project=p", "--region=us-central1", "--temp_location=gs://b/tmp",
        "--staging_location=gs://b/staging", "--sdk_container_image=r/curate:0.1.0", "--sdk_location=container",
        "--machine_type=n2-standard-8", "--max_num_workers=500", "--disk_size_gb=100",
        "--experiments=use_runner_v2", "--experiments=no_use_multiple_sdk_containers",
        "--number_of_worker_harness_threads=16", "--s3_region_name=us-east-1"])
    assert opts.view_as(GoogleCloudOptions).region == "us-central1"
    assert opts.view_as(WorkerOptions).max_num_workers == 500
    p = beam.Pipeline(runner="DirectRunner", options=opts)
    build_pipeline(p, [str(ROOT / "data" / "sample" / "warc" / "aut__example.warc.gz")], str(tmp_path / "out"), cfg)
    proto = p.to_runner_api()
    names = {t.unique_name for t in proto.components.transforms.values()}
    assert any("FetchImages" in n for n in names) and any("Download" in n for n in names)
    assert any("WritePairShards" in n for n in names) and any("WriteTextShards" in n for n in names)
