"""What the anchor comparisons share (``scale.py --anchor``, ``cc_images.py --anchor``).

The anchors are the tools a user would pick instead of kosmos (DataTrove,
img2dataset), each in a virtual environment of its own so that their pins never
meet ours: built from PyPI on first use, under a lock, and cached beside the
project's own environment (``~/.cache/kosmos/anchor-<name>``), the way
``scripts/in-venv`` builds that one; a failed build leaves its log and is redone on
the next run.

``measured`` runs one command and counts the CPU seconds of its whole process tree.
"""

from __future__ import annotations

import fcntl
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "kosmos"


def anchor_python(name: str, packages: list[str]) -> Path:
    """The Python of the environment ``anchor-<name>``, built with ``packages`` when missing.
    A changed package list builds a fresh one."""
    venv = CACHE / f"anchor-{name}"
    py = venv / "bin" / "python"
    wanted = "\n".join(packages) + "\n"
    done = venv / ".complete"
    if done.exists() and done.read_text() == wanted:
        return py
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / f"anchor-{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if done.exists() and done.read_text() == wanted:
            return py
        print(f"building {name}'s environment in {venv} (once)", file=sys.stderr, flush=True)
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        log = venv / "install.log"
        with open(log, "w") as fh:
            rc = subprocess.run([str(py), "-m", "pip", "install", "--disable-pip-version-check", *packages],
                                stdout=fh, stderr=subprocess.STDOUT).returncode
        if rc:
            print("".join(log.read_text().splitlines(keepends=True)[-40:]), file=sys.stderr)
            raise SystemExit(f"installing {name} failed; full log: {log}")
        done.write_text(wanted)
    return py


def anchor_env(**extra: str) -> dict:
    """The environment for an anchor's process: none of our PYTHONPATH, nothing fetched
    from the Hugging Face hub."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(HF_HUB_OFFLINE="1", **extra)
    return env


_TICK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def process_tree(pid: int):
    """{pid: (own CPU seconds, resident bytes)} of ``pid`` and all its descendants (from /proc)."""
    children, stat = {}, {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
        stat[int(entry)] = fields
    out, todo = {}, [pid]
    while todo:
        p = todo.pop()
        if p in stat:
            f = stat[p]               # after the name: state ppid ... utime(11) stime(12) ... rss(21)
            out[p] = ((int(f[11]) + int(f[12])) / _TICK, int(f[21]) * _PAGE)
        todo.extend(children.get(p, []))
    return out


def measured(cmd, env=None, cwd=None, sample: float = 0.2) -> dict:
    """Run ``cmd``: exit status, wall seconds, CPU seconds of its whole process tree, peak
    RSS of the tree, and the tail of its output.

    The CPU is the larger of two counts: what the kernel reports for the children this
    process reaped (every descendant that its parent waited for), and the sum over every
    process of the tree of its own CPU, sampled every ``sample`` seconds (which also
    counts a descendant nobody waited for, less its last ``sample`` seconds)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=cwd)
    chunks = []
    reader = threading.Thread(target=lambda: chunks.extend(iter(lambda: proc.stdout.read(65536), b"")), daemon=True)
    reader.start()
    seen, peak = {}, 0
    while proc.poll() is None:
        tree = process_tree(proc.pid)
        for p, (cpu, _) in tree.items():
            seen[p] = cpu
        peak = max(peak, sum(rss for _, rss in tree.values()))
        time.sleep(sample)
    wall = time.time() - t0
    reader.join()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    reaped = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"rc": proc.returncode, "wall_s": wall, "cpu_s": max(reaped, sum(seen.values())),
            "peak_rss_gb": peak / 2 ** 30, "output": b"".join(chunks).decode("utf-8", "replace")}
