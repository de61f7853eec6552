"""The layers import downwards only, and the trainer and the report never load Beam."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OURS = {"contract", "filters", "transforms", "pipeline", "trainer", "deploy", "benchmarks", "tests"}
# What each layer may import of ours (besides itself).
ALLOWED = {
    "contract": set(),
    "filters": {"contract"},
    "transforms": {"contract", "filters"},
    "trainer": {"contract"},
    "pipeline": {"contract", "filters", "transforms", "trainer"},
}


def imports_of(path: Path):
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name.split(".")[0], node.lineno
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module.split(".")[0], node.lineno


def test_layers_import_downwards_only():
    wrong = []
    for layer, allowed in ALLOWED.items():
        for path in sorted((ROOT / layer).rglob("*.py")):
            for top, line in imports_of(path):
                if top in OURS and top != layer and top not in allowed:
                    wrong.append(f"{path.relative_to(ROOT)}:{line} imports {top}")
    assert not wrong, "\n".join(wrong)


def test_benchmarks_and_deploy_do_not_import_tests_or_the_training_loop():
    wrong = []
    for path in sorted((ROOT / "benchmarks").rglob("*.py")) + sorted((ROOT / "deploy").rglob("*.py")):
        text = path.read_text()
        for top, line in imports_of(path):
            if top in ("tests", "conftest") or top.startswith("test_"):
                wrong.append(f"{path.relative_to(ROOT)}:{line} imports a test module")
        if path.parent.name == "deploy" and "trainer.train" in text:
            wrong.append(f"{path.relative_to(ROOT)} imports the training loop")
    assert not wrong, "\n".join(wrong)


def test_trainer_and_report_load_without_beam():
    code = ("import sys; import contract.schema, contract.manifest, contract.reasons, trainer.shards, trainer.train, "
            "trainer.data, trainer.checkpoint, trainer.evaluate, trainer.inference, pipeline.report, pipeline.stats; "
            "assert 'apache_beam' not in sys.modules, 'beam imported'; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.stdout.strip() == "ok", out.stderr
