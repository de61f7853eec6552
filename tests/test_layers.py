"""The layers import downwards only, ``transforms/`` is the Beam layer and ``archives/``
is free of it, and the trainer and the report never load Beam."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OURS = {"contract", "archives", "filters", "transforms", "pipeline", "trainer", "deploy", "benchmarks", "tests"}
# What each layer may import of ours (besides itself): contract <- archives <- filters <- transforms <- pipeline,
# and contract <- trainer.
ALLOWED = {
    "contract": set(),
    "archives": {"contract"},
    "filters": {"contract", "archives"},
    "transforms": {"contract", "archives", "filters"},
    "trainer": {"contract"},
    "pipeline": {"contract", "archives", "filters", "transforms", "trainer"},
}
# Modules of transforms/ that need no Beam of their own, with why they stay there.
BEAM_FREE_TRANSFORMS = {
    "__init__.py": "the package marker",
    "records.py": "the elements that flow between the DoFns (plain dataclasses)",
}


def imports_of(path: Path):
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name.split(".")[0], node.lineno
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module.split(".")[0], node.lineno


def modules_imported(path: Path):
    """The full dotted names this file imports (every ``import`` and ``from`` anywhere in it)."""
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module


def test_layers_import_downwards_only():
    wrong = []
    for layer, allowed in ALLOWED.items():
        for path in sorted((ROOT / layer).rglob("*.py")):
            for top, line in imports_of(path):
                if top in OURS and top != layer and top not in allowed:
                    wrong.append(f"{path.relative_to(ROOT)}:{line} imports {top}")
    assert not wrong, "\n".join(wrong)


def test_transforms_modules_are_beam_adapters():
    """A module of transforms/ uses Beam: it imports apache_beam, or a transforms module
    that does (a DoFn built on transforms/accounting.py). Beam-free code goes below."""
    paths = {p.name: p for p in sorted((ROOT / "transforms").glob("*.py"))}
    direct = {name for name, p in paths.items() if any(top == "apache_beam" for top, _ in imports_of(p))}
    local = {name: {m.split(".")[1] + ".py" for m in modules_imported(p) if m.startswith("transforms.")}
             for name, p in paths.items()}
    beam = set(direct)
    while True:
        more = {name for name, deps in local.items() if name not in beam and deps & beam}
        if not more:
            break
        beam |= more
    stale = sorted(set(BEAM_FREE_TRANSFORMS) - set(paths))
    assert not stale, f"BEAM_FREE_TRANSFORMS names modules that are gone: {stale}"
    wrong = [f"transforms/{name} does not use apache_beam: move it to archives/ or filters/"
             for name in sorted(paths) if name not in beam and name not in BEAM_FREE_TRANSFORMS]
    assert not wrong, "\n".join(wrong)


def test_archives_import_no_beam_torch_or_layer_above():
    above = OURS - {"archives", "contract"}
    banned = {"apache_beam", "torch", "torchvision", "open_clip"} | above
    wrong = []
    paths = sorted((ROOT / "archives").rglob("*.py"))
    assert paths
    for path in paths:
        for top, line in imports_of(path):
            if top in banned:
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


def test_trainer_report_and_archives_load_without_beam():
    archives = ", ".join(f"archives.{p.stem}" for p in sorted((ROOT / "archives").glob("*.py")) if p.stem != "__init__")
    code = ("import sys; import contract.schema, contract.manifest, contract.reasons, trainer.shards, trainer.train, "
            "trainer.data, trainer.checkpoint, trainer.evaluate, trainer.inference, pipeline.report, pipeline.stats, "
            f"filters.records, {archives}; "
            "assert 'apache_beam' not in sys.modules, 'beam imported'; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.stdout.strip() == "ok", out.stderr
