"""Which stage raises the job's memory (not a test).

Runs ``kosmos curate`` in this process on Beam's local runner, one in-process
worker, and after every bundle the runner executes writes a line: seconds since
the start, the stage (its fused transforms), the resident size now, and the
process's peak before and after the bundle. At the end it prints the stages that
raised the peak most. The extraction child (``records.page_time_budget_s``) is a
separate process and is not counted here; ``benchmarks/scale.py`` measures the
whole process tree.

    scripts/in-venv python benchmarks/stage_memory.py --input WARC [--input ...] [--bundle_mb 8] [--top 15]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _rss_mb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) // 1024
    return 0


def _peak_mb() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024


def _stage_label(name: str) -> str:
    """Beam names a fused stage by its transforms in nested parentheses; keep the names."""
    return "+".join(part for part in name.replace("(", "").replace(")", "").replace("ref_AppliedPTransform_", "")
                    .split("+") if part)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--input", action="append", required=True)
    ap.add_argument("--bundle_mb", type=int, default=None, help="the local runner's bundle size (default: its own)")
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--log", default=None, help="TSV of every bundle (default: only the summary)")
    args = ap.parse_args()

    from apache_beam.runners.portability.fn_api_runner import fn_runner

    from filters.config import CurationConfig
    from pipeline import local_runner
    from pipeline.run import run_curation

    if args.bundle_mb:
        local_runner.BUNDLE_BYTES = args.bundle_mb << 20
    rows = []
    t0 = time.time()
    execute = fn_runner.FnApiRunner._execute_bundle

    def traced(self, context, bundle_context_manager, bundle_input):
        before = _peak_mb()
        result = execute(self, context, bundle_context_manager, bundle_input)
        rows.append((time.time() - t0, _stage_label(bundle_context_manager.stage.name), _rss_mb(), before,
                     _peak_mb()))
        return result

    fn_runner.FnApiRunner._execute_bundle = traced
    out = Path(tempfile.mkdtemp(prefix="stage-memory-"))
    try:
        stats = run_curation(args.input, str(out / "run"), CurationConfig(), ["--runner=DirectRunner"],
                             num_workers=1, worker_log=str(out / "worker.log"))
    finally:
        fn_runner.FnApiRunner._execute_bundle = execute
        shutil.rmtree(out, ignore_errors=True)
    if args.log:
        with open(args.log, "w") as fh:
            fh.write("seconds\tstage\trss_mb\tpeak_before_mb\tpeak_after_mb\n")
            for t, stage, rss, before, after in rows:
                fh.write(f"{t:.1f}\t{stage}\t{rss}\t{before}\t{after}\n")
    raised = {}
    for _, stage, _, before, after in rows:
        raised[stage] = raised.get(stage, 0) + after - before
    print(json.dumps({"records": stats["records"]["in"], "balanced": stats["records"]["balanced"],
                      "bundles": len(rows), "peak_mb": _peak_mb(),
                      "bundle_mb": local_runner.BUNDLE_BYTES >> 20}))
    print(f"\n{'raised MB':>9}  stage (first transforms)")
    for stage, mb in sorted(raised.items(), key=lambda kv: -kv[1])[:args.top]:
        print(f"{mb:>9}  {stage[:150]}")


if __name__ == "__main__":
    main()
