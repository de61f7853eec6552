"""The curation job end to end on the real archives of ../shared/data/warc."""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import IN_MEMORY, ROOT, all_shared_warcs, read_docs, run_job, shared_warc


def test_accounting_balances_for_records_and_images(shared_run):
    out, stats = shared_run
    for level in ("records", "images"):
        block = stats[level]
        total = block["kept"] + block.get("image_source", 0) + sum(block["dropped"].values()) + \
            sum(block["error"].values())
        assert block["balanced"] and total == block["in"] == block["out"], (level, block)
    assert stats["records"]["in"] > 2000 and stats["records"]["kept"] == stats["documents"]["kept"]
    assert stats["images"]["kept"] == stats["documents"]["images"]


def test_every_file_yields_documents_or_named_outcomes(shared_run):
    """No file crashes the job: each has its records counted, and damaged ones
    have their errors written with file and offset."""
    out, stats = shared_run
    errors = [json.loads(l) for l in (out / "errors.jsonl").read_text().splitlines()]
    assert errors, "the truncated WARC must produce a named error"
    for e in errors:
        assert e["file"] and e["offset"] >= 0 and e["kind"] and e["message"]
    assert {e["kind"] for e in errors} == {"bad_record_header"}
    run = json.loads((out / "run.json").read_text())
    assert len(run["inputs"]) == len(all_shared_warcs()) and run["state"].endswith("DONE")
    assert run["config"]["images"]["min_side"] == 64 and run["config"]["documents"]["max_images"] == 5


def test_shards_open_with_pyarrow_duckdb_and_pandas(shared_run):
    import duckdb
    import pandas as pd
    import pyarrow.parquet as pq

    from contract.schema import DOCUMENT_SCHEMA
    out, stats = shared_run
    docs_dir = out / "documents"
    manifest = json.loads((docs_dir / "_manifest.json").read_text())
    assert manifest["rows"] == stats["documents"]["kept"] > 0
    for entry in manifest["shards"]:
        path = docs_dir / entry["file"]
        assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"]
        table = pq.read_table(path)
        assert table.schema.remove_metadata().equals(DOCUMENT_SCHEMA.remove_metadata())
        assert table.num_rows == entry["rows"]
        assert pq.ParquetFile(path).metadata.row_group(0).column(0).compression == "ZSTD"
    assert not list(docs_dir.glob(".tmp-*")), "temporary files left behind"
    n = duckdb.sql(f"select count(*) from '{docs_dir}/*.parquet'").fetchall()[0][0]
    assert n == manifest["rows"]
    df = pd.read_parquet(docs_dir)
    assert len(df) == manifest["rows"] and set(df.columns) >= {"doc_id", "items", "images"}


def test_documents_follow_the_paper(shared_run):
    out, _ = shared_run
    docs = read_docs(out)
    assert docs
    for d in docs:
        assert 1 <= d["num_images"] <= 5 == 5
        assert d["num_images"] == len(d["images"])
        assert any(i["type"] == "text" for i in d["items"])
        image_items = [i["image"] for i in d["items"] if i["type"] == "image"]
        assert image_items == list(range(len(d["images"])))
        for im in d["images"]:
            assert min(im["original_width"], im["original_height"]) >= 64
            assert max(im["width"], im["height"]) <= 512
            assert len(im["sha256"]) == 64 and im["data"]
        assert d["scores"]["language"] == "en" and d["scores"]["language_score"] >= 0.65
        if d["num_images"] == 1:
            assert d["scores"]["single_image_hash"] >= 0.5  # the kept half
    assert len({d["doc_id"] for d in docs}) == len(docs)


def test_danish_pages_are_dropped_as_non_english(tmp_path):
    stats = run_job([shared_warc("netarchivesuite__NAS-20100909163324-00000-mette.kb.dk.warc")],
                    tmp_path / "da", beam_args=IN_MEMORY)
    assert stats["records"]["dropped"]["non_english"] == 5
    assert stats["records"]["kept"] == 0
    # The one English page is not called non-English: it is dropped for having no
    # images in its main content.
    assert stats["records"]["dropped"]["no_images_in_content"] == 1


MONA_LISA = "webarchive-discovery__flashfrozen-jwat-recompressed.warc.gz"   # two captures of one article


def test_mona_lisa_yields_one_document_with_five_large_images(mona_run):
    out, stats = mona_run           # the job over MONA_LISA, default config, one in-memory worker (conftest)
    docs = read_docs(out)
    assert len(docs) == 1
    doc = docs[0]
    assert doc["url"] == "http://en.wikipedia.org/wiki/Mona_Lisa" and doc["num_images"] == 5
    assert all(min(i["original_width"], i["original_height"]) >= 64 for i in doc["images"])
    assert doc["images"][0]["url"].endswith("170px-Leonardo_da_Vinci_-_Self-Portrait_-_WGA12798.jpg")
    assert stats["images"]["dropped"]["too_many_images"] == 3       # 8 usable images, the first 5 kept
    assert stats["records"]["dropped"]["duplicate_url"] == 1         # the older capture
    # The article ends where its closing sections begin: no citation list, no link list.
    text = [i["text"] for i in doc["items"] if i["type"] == "text"]
    assert "See also" not in text and not any(t.startswith("^ ") for t in text)


def test_a_shop_listing_is_not_a_document(tmp_path):
    """books.toscrape's front page: twenty covers, prices and "In stock"; what trafilatura
    keeps of it is 40 words of prices and stock notes."""
    stats = run_job([shared_warc("node-warc__books.toscrape.warc")], tmp_path / "books", beam_args=IN_MEMORY)
    assert read_docs(tmp_path / "books") == []
    from pipeline.explain import find
    ends = [r for r in find(str(tmp_path / "books"), url="http://books.toscrape.com/")
            if r["level"] == "record" and r["reason"] != "warc_type_request"]
    assert [(r["status"], r["stage"]) for r in ends] == [("dropped", "English, clean, images in text")]
    assert stats["records"]["balanced"]


def _cover_thumbnails(sides):
    """Real book covers (the books.toscrape archive) shrunk to the given sizes, as JPEGs."""
    import io

    from PIL import Image

    from archives.records import ArchiveRecord, iter_archive
    with open(shared_warc("node-warc__books.toscrape.warc"), "rb") as fh:
        covers = [r.payload for r in iter_archive(fh, "books")
                  if isinstance(r, ArchiveRecord) and "/media/cache/" in r.target_uri and len(r.payload) > 1000]
    out = []
    for side, data in zip(sides, covers):
        img = Image.open(io.BytesIO(data)).convert("RGB").resize((side, side))
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def test_page_whose_images_are_all_too_small_is_dropped_with_that_reason(tmp_path):
    """A real article whose two pictures are thumbnails (40 and 48 px)."""
    from warcgen import article_with_images, http_response, write_warc
    small = _cover_thumbnails([40, 48])
    page = article_with_images(["/thumbs/a.jpg", "/thumbs/b.jpg"], alt="A book cover, picture {n}")
    src = write_warc(tmp_path / "small.warc.gz", [
        http_response("https://www.dw.com/en/colonial", page, "text/html; charset=utf-8"),
        http_response("https://www.dw.com/thumbs/a.jpg", small[0], "image/jpeg"),
        http_response("https://www.dw.com/thumbs/b.jpg", small[1], "image/jpeg")])
    stats = run_job([src], tmp_path / "strict", beam_args=IN_MEMORY, overrides={"images.min_side": 64})
    assert stats["records"]["dropped"] == {"images_too_small": 1}
    assert stats["images"]["dropped"] == {"too_small": 2}
    # Lower the bar and the same page comes back, with both pictures.
    relaxed = run_job([src], tmp_path / "relaxed", beam_args=IN_MEMORY, overrides={"images.min_side": 32})
    assert relaxed["records"]["kept"] == 1 and relaxed["documents"]["images"] == 2


def test_rerun_gives_identical_ids_shards_and_stats(shared_run, tmp_path):
    """Determinism across runs and across runner modes: the second run uses one
    in-process worker instead of two worker processes."""
    out, stats = shared_run
    run_job(all_shared_warcs(), tmp_path / "again", beam_args=IN_MEMORY)
    assert (out / "stats.json").read_text() == (tmp_path / "again" / "stats.json").read_text()
    assert [d["doc_id"] for d in read_docs(out)] == [d["doc_id"] for d in read_docs(tmp_path / "again")]
    m1 = json.loads((out / "documents" / "_manifest.json").read_text())
    m2 = json.loads((tmp_path / "again" / "documents" / "_manifest.json").read_text())
    assert m1 == m2  # same bytes in every shard
    assert (out / "errors.jsonl").read_text() == (tmp_path / "again" / "errors.jsonl").read_text()


def test_two_workers_with_small_ranges_and_bundles_equal_the_default_run(shared_run, tmp_path):
    """One file over both workers: in ranges of 128 KB, each bundle handing the ranges
    it has not begun back to the runner after 20 records, the shared archives are read
    in many pieces by two worker processes, and the run is the default run's."""
    out, stats = shared_run
    again = run_job(all_shared_warcs(), tmp_path / "ranges", num_workers=2,
                    overrides={"records.split_bytes": 128 * 1024, "records.bundle_records": 20})
    read_in_ranges = [json.loads(line) for line in (tmp_path / "ranges" / "inputs.jsonl").read_text().splitlines()]
    assert sum(1 for d in read_in_ranges if d.get("read_in_ranges")) >= 4     # the larger archives were cut
    assert {**again, "config_sha256": None} == {**stats, "config_sha256": None}
    for dataset in ("documents", "text", "pairs", "outcomes"):
        m1 = json.loads((out / dataset / "_manifest.json").read_text())
        m2 = json.loads((tmp_path / "ranges" / dataset / "_manifest.json").read_text())
        assert m1 == m2, dataset
    assert (out / "errors.jsonl").read_text() == (tmp_path / "ranges" / "errors.jsonl").read_text()


def test_warc_paths_listing_and_missing_files(tmp_path):
    listing = tmp_path / "warc.paths"
    listing.write_text(f"{MONA_LISA}\nno-such-file.warc.gz\n")
    from filters.config import CurationConfig
    from pipeline.run import run_curation
    stats = run_curation([str(listing)], str(tmp_path / "out"), CurationConfig(), IN_MEMORY,
                         paths_prefix=str(Path(shared_warc(MONA_LISA)).parent) + "/",
                         worker_log=str(tmp_path / "log"))
    assert stats["records"]["kept"] == 1
    assert stats["records"]["error"] == {"open_failed": 1}
    assert stats["records"]["balanced"]


def test_garbage_input_is_an_error_not_a_crash(tmp_path):
    bad = tmp_path / "bad.warc.gz"
    bad.write_bytes(b"\x1f\x8b\x08\x00" + b"\x00" * 100)
    text = tmp_path / "notes.txt"
    text.write_text("just some text\n")
    stats = run_job([str(bad), str(text), shared_warc("warcio__example.warc.gz")], tmp_path / "out",
                    beam_args=IN_MEMORY)
    assert stats["records"]["error"].get("bad_gzip", 0) + stats["records"]["error"].get("truncated_gzip", 0) >= 1
    assert stats["records"]["error"]["not_an_archive"] == 1
    assert stats["records"]["balanced"]


def test_cli_prints_config_with_overrides():
    out = subprocess.run([sys.executable, "-m", "pipeline.cli", "curate", "--input", "x", "--output", "y",
                          "--set", "images.min_side=100", "--set", "documents.seed=7", "--print_config"],
                         capture_output=True, text=True, cwd=ROOT)
    cfg = json.loads(out.stdout)
    assert cfg["images"]["min_side"] == 100 and cfg["documents"]["seed"] == 7
    bad = subprocess.run([sys.executable, "-m", "pipeline.cli", "curate", "--input", "x", "--output", "y",
                          "--set", "images.nope=1", "--print_config"], capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode != 0 and "unknown setting" in bad.stderr


def test_revisits_resolve_through_the_digest_join(tmp_path):
    # iana: 4 image responses + 29 SVG revisits whose payload is in the file.
    iana = run_job([shared_warc("pywb__iana.warc.gz")], tmp_path / "iana", beam_args=IN_MEMORY)
    assert iana["records"]["image_source"] == 33
    assert "revisit_unresolved" not in iana["records"]["dropped"]
    # warcio: the revisit of example.com resolves to the original page, which has no <img>.
    ex = run_job([shared_warc("warcio__example.warc.gz")], tmp_path / "ex", beam_args=IN_MEMORY)
    assert ex["records"]["dropped"]["no_img_tag"] == 2
    # ipwb: 10 revisits whose originals were captured elsewhere stay unresolved, and say so.
    ipwb = run_job([shared_warc("ipwb__sample-1.warc.gz")], tmp_path / "ipwb", beam_args=IN_MEMORY)
    assert ipwb["records"]["dropped"]["revisit_unresolved"] == 10
    # With resolution off, revisits are counted as such and nothing else changes.
    off = run_job([shared_warc("pywb__iana.warc.gz")], tmp_path / "off", beam_args=IN_MEMORY,
                  overrides={"records.resolve_revisits": False})
    assert off["records"]["dropped"]["revisit_not_resolved"] == 123
    assert off["records"]["image_source"] == 4


def test_a_second_run_into_the_same_directory_needs_overwrite(mona_run, tmp_path):
    import shutil

    from filters.config import CurationConfig
    from pipeline.run import run_curation
    src = [shared_warc(MONA_LISA)]
    out = tmp_path / "out"
    shutil.copytree(mona_run[0], out)         # a finished run of src with this config, in a directory of its own
    stale = out / "documents" / "part-00099-of-00100.parquet"
    stale.write_bytes(b"left over from an older run")
    with pytest.raises(FileExistsError):
        run_curation(src, str(out), CurationConfig(), IN_MEMORY, worker_log=str(tmp_path / "log"))
    stats = run_curation(src, str(out), CurationConfig(), IN_MEMORY, worker_log=str(tmp_path / "log"),
                         overwrite=True)
    assert not stale.exists() and stats["documents"]["kept"] == 1
    assert len(read_docs(out)) == 1
