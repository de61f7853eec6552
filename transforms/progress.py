"""Progress of a run, as it goes.

Workers count what they did under Beam counters named ``kosmos/progress.*``
(``files_done``, ``bytes_read``, ``records``, ``pages``, ``candidates``): Dataflow's
and Flink's UIs show them as they run. Beam's local runners report metrics only
when the job ends, so on them each worker process also writes its totals to a
small JSON file in a local folder (at most once a second), and the launcher
sums those files into one line on the terminal (:class:`ProgressPrinter`). A
worker that cannot see the folder (a remote runner) writes nothing there.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import uuid
from typing import Dict, Optional, TextIO

from apache_beam.metrics import Metrics

FIELDS = ("files_done", "bytes_read", "records", "pages", "candidates")


class ProgressCounters:
    """One per DoFn instance: ``add(field, n)`` counts for Beam and, when a local
    folder is given and visible, for the launcher's progress line."""

    def __init__(self, folder: Optional[str]):
        self.folder = folder if folder and os.path.isdir(folder) else None
        self.totals: Dict[str, int] = dict.fromkeys(FIELDS, 0)
        self.counters = {f: Metrics.counter("kosmos", f"progress.{f}") for f in FIELDS}
        self.path = os.path.join(self.folder, f"{os.getpid()}-{uuid.uuid4().hex}.json") if self.folder else None
        self._written = 0.0

    def add(self, field: str, n: int = 1):
        if n:
            self.counters[field].inc(n)
            self.totals[field] += n
            self.flush()

    def flush(self, force: bool = False):
        if self.path is None or (not force and time.monotonic() - self._written < 1.0):
            return
        self._written = time.monotonic()
        tmp = self.path + ".tmp"
        try:
            with open(tmp, "w") as fh:
                json.dump(self.totals, fh)
            os.replace(tmp, self.path)
        except OSError:
            self.path = None                # the folder went away: stop trying


def _human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def _human_seconds(s: float) -> str:
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class ProgressPrinter:
    """Sums the workers' progress files and prints one line: in place on a terminal
    (every ``every`` seconds), as plain lines every ``plain_every`` seconds otherwise."""

    def __init__(self, folder: str, total_files: int, total_bytes: int, out: TextIO,
                 every: float = 0.5, plain_every: float = 10.0):
        self.folder, self.total_files, self.total_bytes, self.out = folder, total_files, total_bytes, out
        self.tty = out.isatty()
        self.every = every if self.tty else plain_every
        self.started = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="kosmos-progress", daemon=True)

    def totals(self) -> Dict[str, int]:
        out = dict.fromkeys(FIELDS, 0)
        try:
            names = [n for n in os.listdir(self.folder) if n.endswith(".json")]
        except OSError:
            return out
        for name in names:
            try:
                with open(os.path.join(self.folder, name)) as fh:
                    data = json.load(fh)
            except (OSError, ValueError):
                continue                    # being replaced right now: next time
            for f in FIELDS:
                out[f] += int(data.get(f, 0))
        return out

    def line(self, t: Dict[str, int]) -> str:
        elapsed = max(time.monotonic() - self.started, 1e-6)
        parts = [f"files {t['files_done']}/{self.total_files}",
                 f"{t['records']:,} records ({t['records'] / elapsed:,.0f}/s)",
                 f"{t['pages']:,} pages ({t['pages'] / elapsed:,.1f}/s)"]
        if self.total_bytes > 0:
            parts.append(f"{_human_bytes(t['bytes_read'])} of {_human_bytes(self.total_bytes)} read")
            done = t["bytes_read"] / self.total_bytes
        else:
            parts.append(f"{_human_bytes(t['bytes_read'])} read")
            done = t["files_done"] / self.total_files if self.total_files else 0
        parts.append(f"{t['candidates']:,} documents past the text filters")
        if 0.01 < done < 1:
            parts.append(f"ETA {_human_seconds(elapsed * (1 - done) / done)} (reading)")
        return " | ".join(parts)

    def _print(self, final: bool = False):
        text = self.line(self.totals())
        if self.tty:
            self.out.write("\r\x1b[2K" + text + ("\n" if final else ""))
        else:
            self.out.write(text + "\n")
        self.out.flush()

    def _loop(self):
        while not self._stop.wait(self.every):
            self._print()

    def start(self):
        self._thread.start()
        return self

    def stop(self):
        self._stop.set()
        self._thread.join(timeout=5)
        self._print(final=True)


def open_terminal() -> TextIO:
    """The launcher's standard error as it is now (the run sends fd 2 to its log)."""
    return os.fdopen(os.dup(sys.stderr.fileno()), "w", buffering=1)
