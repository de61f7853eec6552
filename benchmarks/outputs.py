"""Every output of `kosmos curate` on the shared archives, one sha256 per file (not a test).

    scripts/in-venv python benchmarks/outputs.py CHECKOUT LABEL     # writes outputs-LABEL.txt

Runs CHECKOUT's own `bin/kosmos curate` on ../shared/data/warc (all files, one run) and on
pages-eval, and lists each output file's sha256 (``run.json`` and the claim left out;
``stats.json`` without its timing fields and config hash). Two checkouts' lists compared
with ``diff`` say whether a change altered any output.
"""
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

SHARED = Path(os.environ.get("KOSMOS_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
TIMING = ("time", "seconds", "_s", "started", "finished", "wall", "config_hash")


def _without_timing(o):
    if isinstance(o, dict):
        return {k: _without_timing(v) for k, v in o.items() if not any(t in k for t in TIMING)}
    if isinstance(o, list):
        return [_without_timing(v) for v in o]
    return o


def main():
    root, label = Path(sys.argv[1]).resolve(), sys.argv[2]
    sets = {"warc": [str(p) for p in sorted((SHARED / "warc").iterdir())],
            "pages-eval": [str(SHARED / "pages-eval" / "trafilatura-eval-dev-00.warc.gz")]}
    lines = []
    for name, files in sets.items():
        out = Path(f"/tmp/outputs-{label}-{name}")
        shutil.rmtree(out, ignore_errors=True)
        cmd = [str(root / "bin" / "kosmos"), "curate", "--output", str(out), "--quiet"]
        for f in files:
            cmd += ["--input", f]
        r = subprocess.run(cmd, capture_output=True, text=True, cwd=root)
        lines.append(f"## {name} rc={r.returncode}")
        if r.returncode:
            lines.append(r.stderr[-2000:])
        for f in sorted(p for p in out.rglob("*") if p.is_file()):
            if f.name in ("run.json", "_claim.json"):
                continue
            data = f.read_bytes()
            if f.name == "stats.json":
                data = json.dumps(_without_timing(json.loads(data)), sort_keys=True).encode()
            lines.append(f"{hashlib.sha256(data).hexdigest()[:16]}  {f.relative_to(out)}")
    Path(f"outputs-{label}.txt").write_text("\n".join(lines) + "\n")
    print(f"{len(lines)} lines in outputs-{label}.txt")


if __name__ == "__main__":
    main()
