"""benchmarks/gpu_smoke.py, the prepared GPU check, run as on a CPU: the tiny config
through the same steps (one-rank FSDP, save at step 4, resume in a fresh process,
batched beam against one prompt at a time), one JSON file."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_smoke_runs_on_the_cpu_and_every_check_holds(tmp_path):
    out = tmp_path / "smoke.json"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_smoke.py"), "--out", str(out),
                        "--device", "cpu"], capture_output=True, text=True, timeout=600)
    assert out.exists(), r.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["ok"], json.dumps(report, indent=1)[-3000:]
    assert r.returncode == 0
    assert report["parallel"] == "fsdp" and report["model"] == "tiny"
    assert report["attention"] == {"skipped": "no GPU"}
    assert len(report["train"]["losses"]) == 8
    assert report["resume"]["loss_resumed"] == report["resume"]["loss_here"]
    assert all(report["beam"]["equal"]) and report["beam"]["prompts"] == 4
