"""The audit report: numbers equal stats.json, it renders in headless Chromium with
no network request, an unbalanced run is shown loudly, and two runs compare."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import IN_MEMORY, ROOT, run_job, shared_warc
from pipeline.report import write_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def test_report_numbers_equal_stats(shared_run, tmp_path):
    out, stats = shared_run
    html_path, json_path = write_report([str(out)], str(tmp_path / "report.html"))
    summary = json.loads(Path(json_path).read_text())
    for level in ("records", "images"):
        acc = summary["accounting"][level]
        assert (acc["in"], acc["out"], acc["kept"], acc["balanced"]) == \
            (stats[level]["in"], stats[level]["out"], stats[level]["kept"], True)
        for status in ("dropped", "error"):
            for reason, n in stats[level][status].items():
                assert summary["drops"][level][f"{status}:{reason}"]["count"] == n
    assert summary["documents"] == stats["documents"]
    assert summary["funnel"][0]["remaining"] == stats["records"]["in"]
    assert summary["funnel"][-1]["remaining"] == stats["records"]["kept"]
    # Every drop reason has its sample, bounded by the configured number.
    samples = summary["samples_per_reason"]
    for reason in stats["records"]["dropped"]:
        assert 1 <= samples[f"record/dropped/{reason}"] <= 20
    page = Path(html_path).read_text()
    assert "<script" not in page and "@import" not in page and "<link" not in page
    assert 'data-balanced="false"' not in page and "data-balanced='false'" not in page


def render(html_path: Path, tmp_path: Path, name: str):
    """Screenshot and DOM of a page in headless Chromium, and the URLs the page
    itself asked for (Chromium's own background requests are told apart by their
    initiator, 'not an origin', in the net log)."""
    netlog = tmp_path / f"{name}.netlog.json"
    shot = tmp_path / f"{name}.png"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
             f"--user-data-dir={tmp_path / (name + '-profile')}", "--window-size=1200,2600",
             "--virtual-time-budget=3000"]
    subprocess.run([CHROMIUM, *flags, f"--log-net-log={netlog}", f"--screenshot={shot}", html_path.as_uri()],
                   capture_output=True, timeout=120, check=True)
    dom = subprocess.run([CHROMIUM, *flags, "--dump-dom", html_path.as_uri()], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    log = json.loads(netlog.read_text())
    kinds = {v: k for k, v in log["constants"]["logEventTypes"].items()}
    page_requests = [e["params"]["url"] for e in log["events"]
                     if kinds.get(e["type"]) == "URL_REQUEST_START_JOB" and "url" in e.get("params", {})
                     and e["params"].get("initiator") != "not an origin"]
    return shot, dom, page_requests


@pytest.mark.skipif(not CHROMIUM and not os.environ.get("CI"), reason="Debian's chromium is not installed")
def test_report_renders_offline_in_chromium(shared_run, tmp_path):
    assert CHROMIUM, "CI installs Debian's chromium (scripts/ensure-chromium)"
    from PIL import Image
    out, _ = shared_run
    html_path, _ = write_report([str(out)], str(tmp_path / "report.html"))
    shot, dom, requests = render(Path(html_path), tmp_path, "report")
    assert requests == []
    assert dom.count("class=\"chart\"") >= 5 and "<rect" in dom
    img = Image.open(shot).convert("RGB")
    funnel_blue = sum(n for n, px in img.getcolors(1 << 24) if px == (0x3b, 0x6e, 0xa8))
    assert funnel_blue > 2000, "the funnel chart did not draw"
    # The same check catches a page that does reach out.
    control = tmp_path / "control.html"
    control.write_text("<html><body><img src='http://127.0.0.1:9/pixel.png'></body></html>")
    _, _, control_requests = render(control, tmp_path, "control")
    assert any("127.0.0.1" in u for u in control_requests)
    if os.environ.get("KOSMOS_UPDATE_DOCS"):
        shutil.copy(shot, ROOT / "docs" / "report-sample.png")


def test_unbalanced_run_is_shown_loudly(shared_run, tmp_path):
    out, _ = shared_run
    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    stats = json.loads((broken / "stats.json").read_text())
    # A run that lost records on the way: fewer outcomes than records read.
    reason = next(iter(stats["records"]["dropped"]))
    stats["records"]["dropped"][reason] -= 3
    stats["records"]["out"] -= 3
    stats["records"]["balanced"] = False
    (broken / "stats.json").write_text(json.dumps(stats))
    html_path, json_path = write_report([str(broken)])
    page = Path(html_path).read_text()
    assert "ACCOUNTING DOES NOT BALANCE" in page and "data-balanced='false'" in page and "+3 unexplained" in page
    assert json.loads(Path(json_path).read_text())["accounting"]["records"]["balanced"] is False


def test_comparing_two_spam_thresholds_shows_that_filter_changing(tmp_path):
    files = [shared_warc(f) for f in ("ipwb__sample-1.warc.gz", "dolma__sample-0000.warc.gz",
                                      "node-warc__books.toscrape.warc")]
    run_job(files, tmp_path / "a", beam_args=IN_MEMORY)
    run_job(files, tmp_path / "b", beam_args=IN_MEMORY, overrides={"text.max_special_char_ratio_document": 0.05})
    html_path, json_path = write_report([str(tmp_path / "a"), str(tmp_path / "b")])
    cmp = json.loads(Path(json_path).read_text())
    records = [r for r in cmp["changed"] if r["level"] == "records"]
    spam = [r for r in records if r["reason"] == "special_characters"]
    assert spam and spam[0]["diff"] > 0
    others = [r for r in records if r["reason"] != "special_characters"]
    # The documents the stricter threshold removes come out of later steps, never earlier ones.
    assert all(r["diff"] < 0 for r in others)
    assert sum(r["diff"] for r in records) == 0
    upstream = {"no_img_tag", "non_english", "not_html_or_image", "http_3xx", "http_4xx", "warc_type_request"}
    assert not [r for r in others if r["reason"] in upstream]
    page = Path(html_path).read_text()
    assert "text.max_special_char_ratio_document: 0.25 -&gt; 0.05" in page


def test_the_report_refuses_a_run_that_never_finished(shared_run, tmp_path):
    """A killed run has stats or shards on disk but no _SUCCESS (written last)."""
    from pipeline.report import IncompleteRun
    out, _ = shared_run
    killed = tmp_path / "killed"
    shutil.copytree(out, killed)
    (killed / "_SUCCESS").unlink()
    with pytest.raises(IncompleteRun, match="has not finished"):
        write_report([str(killed)])
    html_path, _ = write_report([str(killed)], allow_incomplete=True)
    assert Path(html_path).exists()


@pytest.mark.skipif(not CHROMIUM and not os.environ.get("CI"), reason="Debian's chromium is not installed")
def test_kept_documents_and_rejects_are_shown_as_read(shared_run, tmp_path):
    """The report's reader views in a real browser: the kept documents' text with their
    pictures where they stand, and rejected pages as the job extracted them, the
    paragraphs it cut struck through with their reason."""
    assert CHROMIUM, "CI installs Debian's chromium (scripts/ensure-chromium)"
    from PIL import Image

    from conftest import read_docs
    out, stats = shared_run
    html_path, _ = write_report([str(out)], str(tmp_path / "report.html"))
    page = Path(html_path).read_text()
    kept = page[page.index("<h2>Kept documents, as a trainer reads them"):page.index("<h2>Sampled rejects")]
    docs = read_docs(out)
    assert kept.count("<details class='doc'") == len(docs) == stats["documents"]["kept"]
    assert kept.count("<img class='inline' src='data:image/jpeg;base64,") == sum(d["num_images"] for d in docs)
    first = docs[0]
    assert first["items"][0]["type"] == "text" or first["items"][0]["type"] == "image"
    assert "the page as the job read it" in page and "cut: navigation" in page
    head = page[:page.index("<body>") + len("<body>")]
    view = tmp_path / "kept.html"
    view.write_text(head + kept + "</body></html>")
    shot, dom, requests = render(view, tmp_path, "kept")
    assert requests == []
    assert dom.count('class="inline"') == sum(d["num_images"] for d in docs)
    img = Image.open(shot).convert("RGB")
    # the Mona Lisa's browns and ochres: the pictures were drawn, not just their frames
    warm = sum(n for n, (r, g, b) in img.getcolors(1 << 24) if r > g > b and r - b > 40)
    assert warm > 3000, warm
