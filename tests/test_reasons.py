"""Every reason the job can give is registered in contract.reasons, with its funnel
stage: the report never files a reason under "other"."""

import re
from pathlib import Path

from contract.reasons import FUNNELS, RECORD, REASONS, is_known, record_stage
from pipeline.report import funnel

ROOT = Path(__file__).resolve().parents[1]

# Where reason codes are written as literals: a filter's drop(), an image result,
# a download error, a record class, an outcome built with its reason.
EMITTERS = [r'\bdrop\("([a-z_]+)"', r'\bdropped\("([a-z_]+)"', r'ImageResult\(\w+, "([a-z_]+)"',
            r'FetchError\("([a-z_]+)"', r'FetchResult\(url, "([a-z_]+)"', r'RecordKind\.\w+, "([a-z_]+)"',
            r'ReadError\(self\.name, \w+, \w+, "([a-z_]+)"', r'_drop\(page, "([a-z_]+)"',
            r'drops\(page, "([a-z_]+)"', r'Outcome\.at\(\w+, (?:DROPPED|ERROR)[^"\n]*"([a-z_]+)"',
            r'_pair_outcome\(\w+(?:\(\w+\))?, DROPPED, "([a-z_]+)"', r'reason = "([a-z_]+)"']


def literal_reasons():
    found = {}
    for path in sorted((ROOT / "filters").glob("*.py")) + sorted((ROOT / "transforms").glob("*.py")):
        text = path.read_text()
        for pattern in EMITTERS:
            for m in re.finditer(pattern, text):
                found.setdefault(m.group(1), path.name)
    return found


def test_every_reason_written_in_the_code_is_registered():
    found = literal_reasons()
    assert len(found) > 50, "the scan found too few reasons: the patterns no longer match the code"
    every = {code for codes in REASONS.values() for code in codes}
    unknown = {r: f for r, f in found.items()
               if not any(code == r or code.endswith("*") and r.startswith(code[:-1]) for code in every)}
    assert not unknown, f"reasons missing from contract/reasons.py: {unknown}"


def test_every_reason_of_a_real_run_is_registered_at_its_level(shared_run):
    _, stats = shared_run
    funnels = {f.level for f in FUNNELS}
    for key in stats["counts"]:
        level, status, *reason = key.split("/", 2)
        if level in funnels and reason:
            assert is_known(level, reason[0]), key
    stages = [label for label, _ in funnel(stats)]
    assert not [s for s in stages if s.startswith("unregistered")], stages


def test_record_reasons_map_to_the_papers_stages():
    assert record_stage("http_4xx") == record_stage("warc_type_request") == "HTML pages (2xx, revisits resolved)"
    assert record_stage("images_too_small") == "documents with usable images"
    assert record_stage("near_duplicate") == "unique (URL, text, near-dup)"
    assert record_stage("no_such_reason") is None
    assert RECORD in REASONS
