"""The audit trail (outcomes/) and `kosmos explain`: every record a run read has one
end, an auditor can ask for any of them, and a duplicate names the copy kept instead
and how that copy ended."""

import json
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq

from conftest import all_shared_warcs
from contract.manifest import shard_files
from pipeline.cli import main
from pipeline.explain import describe, find
from archives.records import iter_archive


def trail(out):
    return pq.read_table(shard_files(str(Path(out) / "outcomes"), verify=True)).to_pylist()


def test_every_record_read_has_exactly_one_end(shared_run):
    out, stats = shared_run
    rows = trail(out)
    records = [r for r in rows if r["level"] == "record"]
    assert len(records) == stats["records"]["in"]
    ends = Counter((r["file"], r["offset"], r["inner_offset"]) for r in records)
    assert max(ends.values()) == 1
    # Read independently of the job: every item of every archive, where it lies.
    read = Counter()
    for path in all_shared_warcs():
        with open(path, "rb") as fh:
            for item in iter_archive(fh, path):
                read[(path, item.offset, item.inner_offset)] += 1
    assert set(read) == set(ends)
    # The statuses and reasons are the ones stats.json counts.
    by_status = Counter(r["status"] for r in records)
    assert by_status["kept"] == stats["records"]["kept"] == stats["documents"]["kept"]
    assert by_status["dropped"] == sum(stats["records"]["dropped"].values())
    assert Counter(r["reason"] for r in records if r["status"] == "dropped") == Counter(stats["records"]["dropped"])
    assert all(r["stage"] for r in records if r["status"] == "dropped")
    # Images and the other funnels end once each too.
    for level, block in (("image", "images"), ("text", "text_documents"), ("pair", "pairs")):
        level_rows = [r for r in rows if r["level"] == level]
        assert len(level_rows) == stats[block]["in"], level
        assert sum(r["status"] == "kept" for r in level_rows) == stats[block]["kept"], level


def test_explain_answers_for_every_url_read(shared_run, capsys):
    out, _ = shared_run
    rows = trail(out)
    records = [r for r in rows if r["level"] == "record"]
    locations = {}
    for r in records:
        locations.setdefault(r["url"], set()).add((r["file"], r["offset"], r["inner_offset"]))
    for url, where in locations.items():
        if not url:
            continue            # damaged records have no URL: asked for by file and offset below
        found = [r for r in find(str(out), url=url) if r["level"] == "record"]
        assert {(r["file"], r["offset"], r["inner_offset"]) for r in found} >= where, url
    for r in records[:: max(1, len(records) // 50)]:
        found = [x for x in find(str(out), file=r["file"], offset=r["offset"])
                 if x["level"] == "record" and x["inner_offset"] == r["inner_offset"]]
        assert [x["outcome_id"] for x in found] == [r["outcome_id"]]
    # The command: a kept document with its images, by URL.
    kept = next(r for r in records if r["status"] == "kept")
    assert main(["explain", str(out), kept["url"]]) == 0
    text = capsys.readouterr().out
    assert "interleaved documents: kept" in text and "image " in text
    assert main(["explain", str(out), "http://never.read.example/"]) == 1


def test_duplicates_name_their_survivor_and_its_end(shared_run):
    out, stats = shared_run
    rows = trail(out)
    by_doc = {(r["level"], r["doc_id"]): r for r in rows
              if r["doc_id"] and r["level"] in ("record", "text") and not r["survivor_doc_id"]}
    dups = [r for r in rows if r["reason"] in ("duplicate_url", "duplicate_exact", "near_duplicate")]
    assert dups, "the shared archives hold duplicates"
    lost = Counter()
    for d in dups:
        assert d["survivor_doc_id"] and d["survivor_url"]
        survivor = by_doc.get((d["level"], d["survivor_doc_id"]))
        if survivor is None:         # the survivor was itself a duplicate of another copy
            survivor = next(r for r in rows if r["doc_id"] == d["survivor_doc_id"] and r["level"] == d["level"])
        assert (d["survivor_status"], d["survivor_reason"]) == (survivor["status"], survivor["reason"])
        if d["level"] == "record" and survivor["status"] != "kept" and not survivor["survivor_doc_id"]:
            lost[(d["survivor_doc_id"], survivor["reason"])] += 1
    counted = Counter()
    for _, reason in lost:
        counted[reason] += 1
    assert dict(counted) == stats["dedup"]["clusters_survivor_dropped"]
    described = describe(find(str(out), url=dups[0]["url"]))
    assert "kept instead: " + dups[0]["survivor_url"] in described


def test_trail_can_be_switched_off(tmp_path):
    from conftest import IN_MEMORY, run_job, shared_warc
    stats = run_job([shared_warc("ipwb__sample-1.warc.gz")], tmp_path / "run", beam_args=IN_MEMORY,
                    overrides={"audit.outcomes": False})
    assert "outcomes" not in stats["outputs"] and not (tmp_path / "run" / "outcomes").exists()
    assert main(["explain", str(tmp_path / "run"), "http://example.com/"]) == 2
    assert json.loads((tmp_path / "run" / "stats.json").read_text())["records"]["balanced"]
