"""Inputs: schemes in listings, HTTP(S) inputs streamed with resume (a server on
127.0.0.1 that cuts every response once midway and answers Range requests)."""

import gzip
import os
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from conftest import IN_MEMORY, read_docs, run_job, shared_warc
from test_fetch import LocalServer


class ArchiveServer(LocalServer):
    """Serves files from ``root``; the first response for each path stops halfway
    and drops the connection; Range requests get 206 (unless ``honour_range`` is off)."""

    def __init__(self, root: Path, cut_once: bool = True, honour_range: bool = True):
        self.root, self.requests, self.cut = root, [], set()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_HEAD(self):
                self._serve(head=True)

            def do_GET(self):
                self._serve(head=False)

            def _serve(self, head):
                path = server.root / self.path.lstrip("/")
                rng = self.headers.get("Range")
                server.requests.append((self.command, self.path, rng))
                if not path.is_file():
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                data = path.read_bytes()
                start = 0
                if rng and honour_range:
                    start = int(rng.split("=")[1].split("-")[0])
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if head:
                    return
                if cut_once and not head and self.path not in server.cut and len(body) > 100:
                    server.cut.add(self.path)
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.connection.shutdown(2)        # drop the connection midway
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.start(Handler)


FILES = ["webarchive-discovery__flashfrozen-jwat-recompressed.warc.gz", "dolma__sample-0000.warc.gz",
         "warcio__example.warc.gz"]


@pytest.fixture
def crawl(tmp_path):
    """A Common Crawl style tree: crawl-data/X/segments/.../warc/*, and a warc.paths.gz."""
    root = tmp_path / "www"
    seg = root / "crawl-data" / "CC-TEST" / "segments" / "1" / "warc"
    seg.mkdir(parents=True)
    rel = []
    for name in FILES:
        (seg / name).write_bytes(Path(shared_warc(name)).read_bytes())
        rel.append(f"crawl-data/CC-TEST/segments/1/warc/{name}")
    (root / "crawl-data" / "CC-TEST" / "warc.paths.gz").write_bytes(gzip.compress("\n".join(rel).encode()))
    return root, seg


def test_listing_entries_keep_their_own_scheme():
    from pipeline.inputs import _has_scheme
    for p in ("s3://commoncrawl/crawl-data/x.warc.gz", "gs://bucket/x", "https://data.commoncrawl.org/x",
              "http://127.0.0.1:8000/x", "file:///tmp/x", "/abs/x.warc.gz", "hdfs://nn/x"):
        assert _has_scheme(p), p
    for p in ("crawl-data/CC-MAIN-2024-10/segments/1/warc/x.warc.gz", "x.warc.gz", "a:b/c"):
        assert not _has_scheme(p), p


def test_a_listing_mixing_relative_s3_and_gs_entries(tmp_path):
    from pipeline.inputs import read_listing
    listing = tmp_path / "warc.paths.gz"
    listing.write_bytes(gzip.compress(b"crawl-data/A/x.warc.gz\ns3://other-bucket/y.warc.gz\n"
                                      b"gs://bucket/z.warc.gz\n\n# a comment\nhttps://data.example.org/w.warc.gz\n"))
    assert read_listing(str(listing), "https://data.commoncrawl.org/") == [
        "https://data.commoncrawl.org/crawl-data/A/x.warc.gz", "s3://other-bucket/y.warc.gz",
        "gs://bucket/z.warc.gz", "https://data.example.org/w.warc.gz"]


@pytest.mark.parametrize("honour_range", [True, False], ids=["range", "range_ignored"])
def test_a_dropped_connection_resumes_at_the_byte_it_stopped(crawl, honour_range):
    from archives.remote import ResumingHttpReader
    root, seg = crawl
    server = ArchiveServer(root, honour_range=honour_range)
    try:
        url = server.url("/crawl-data/CC-TEST/segments/1/warc/" + FILES[0])
        reader = ResumingHttpReader(url, backoff=0.01)
        data = b""
        while True:
            piece = reader.read(10_000)
            if not piece:
                break
            data += piece
        assert data == (seg / FILES[0]).read_bytes()
        assert reader.resumes == 1
        gets = [r for r in server.requests if r[0] == "GET"]
        if honour_range:
            assert gets[1][2] == f"bytes={len(data) // 2}-"    # from the byte where it broke
    finally:
        server.close()


def test_curating_over_http_gives_the_local_documents(crawl, tmp_path):
    root, seg = crawl
    local = run_job([str(seg / n) for n in FILES], tmp_path / "local", beam_args=IN_MEMORY)
    server = ArchiveServer(root)
    try:
        from pipeline.run import run_curation
        from filters.config import CurationConfig
        remote = run_curation([server.url("/crawl-data/CC-TEST/warc.paths.gz")], str(tmp_path / "remote"),
                              CurationConfig(), IN_MEMORY, paths_prefix=server.url("/"),
                              worker_log=str(tmp_path / "remote.log"))
    finally:
        server.close()
    assert {p for _, p, _ in server.requests} >= {f"/crawl-data/CC-TEST/segments/1/warc/{n}" for n in FILES}
    assert len(server.cut) == len(FILES) + 1                  # every file and the listing was cut once
    assert remote["records"] == local["records"] and remote["records"]["balanced"]
    ids = lambda out: sorted(d["doc_id"] for d in read_docs(out))  # noqa: E731
    assert ids(tmp_path / "remote") == ids(tmp_path / "local") and ids(tmp_path / "local")


def test_progress_lines_while_a_local_run_works(tmp_path):
    """Not a terminal: plain lines, the last one with the run's own totals."""
    import io
    from filters.config import CurationConfig
    from pipeline.run import run_curation
    files = [shared_warc(n) for n in FILES]
    out = io.StringIO()
    stats = run_curation(files, str(tmp_path / "run"), CurationConfig(), IN_MEMORY, progress=True, progress_out=out,
                         worker_log=str(tmp_path / "log"))
    last = out.getvalue().strip().splitlines()[-1]
    total = sum(os.path.getsize(f) for f in files)
    assert last.startswith(f"files {len(files)}/{len(files)} | {stats['records']['in']:,} records")
    from transforms.progress import _human_bytes
    assert f"{_human_bytes(total)} of {_human_bytes(total)} read" in last
    assert "documents past the text filters" in last


def test_pages_without_image_records_warn_and_name_the_flag(tmp_path, capsys):
    """The Common Crawl style WARC of pages-eval holds pages only: with images from
    the archive, the run says so at the start and in its table."""
    from conftest import SHARED
    from filters.config import CurationConfig
    from pipeline.run import probe_for_images, run_curation
    from pipeline.stats import format_stats
    warc = str(SHARED / "pages-eval" / "trafilatura-eval-dev-00.warc.gz")
    seen = probe_for_images([warc])
    assert seen["pages"] > 100 and seen["images"] == 0
    # The whole job on a slice of it (the warning does not depend on the size).
    from archives.records import ArchiveRecord, iter_archive
    with open(warc, "rb") as fh:
        first = [item for _, item in zip(range(90), iter_archive(fh, warc))]
    sliced = tmp_path / "slice.warc.gz"
    with open(warc, "rb") as fh:
        data = fh.read()
    end = next(i.offset for i in reversed(first) if isinstance(i, ArchiveRecord))
    sliced.write_bytes(data[:end])
    stats = run_curation([str(sliced)], str(tmp_path / "run"), CurationConfig(), IN_MEMORY,
                         worker_log=str(tmp_path / "log"))
    assert "--images http" in capsys.readouterr().err
    table = format_stats(stats)
    assert "WARNING" in table and "--images http" in table
    assert stats["records"]["image_source"] == 0


def test_images_flag_sets_the_image_source():
    import json
    import subprocess
    import sys
    from conftest import ROOT
    for choice in ("archive", "http", "archive_then_http"):
        out = subprocess.run([sys.executable, "-m", "pipeline.cli", "curate", "--input", "x", "--output", "y",
                              "--images", choice, "--print_config"], cwd=ROOT, capture_output=True, text=True,
                             check=True, env=dict(os.environ, PYTHONPATH=str(ROOT))).stdout
        assert json.loads(out)["fetch"]["source"] == choice


@pytest.mark.parametrize("name", ["node-warc__books.toscrape.warc", "aut__example.warc.gz",
                                  "warcio__example-bad-non-chunked.warc.gz"],
                         ids=["plain", "per_record_gzip", "whole_file_gzip"])
def test_a_record_is_read_back_by_its_offset(name, tmp_path):
    """Revisits get their original's payload this way (no payload crosses the digest join)."""
    from transforms.filesystems import read_record_at
    from archives.records import ArchiveRecord, iter_archive
    path = shared_warc(name)
    with open(path, "rb") as fh:
        recs = [r for r in iter_archive(fh, path) if isinstance(r, ArchiveRecord)]
    for rec in recs[:: max(1, len(recs) // 7)] + recs[-1:]:
        back = read_record_at(path, rec.offset, rec.inner_offset)
        assert (back.target_uri, back.rec_type, back.payload) == (rec.target_uri, rec.rec_type, rec.payload)
    assert read_record_at(path, recs[-1].offset, recs[-1].inner_offset + 1) is None


def test_a_record_is_read_back_over_http_with_a_range(crawl):
    from transforms.filesystems import read_record_at
    from archives.records import ArchiveRecord, iter_archive
    root, seg = crawl
    local = str(seg / FILES[1])
    with open(local, "rb") as fh:
        rec = [r for r in iter_archive(fh, local) if isinstance(r, ArchiveRecord)][5]
    server = ArchiveServer(root, cut_once=False)
    try:
        url = server.url(f"/crawl-data/CC-TEST/segments/1/warc/{FILES[1]}")
        back = read_record_at(url, rec.offset, rec.inner_offset)
        assert back.payload == rec.payload and back.offset == rec.offset
        assert server.requests[-1][2] == f"bytes={rec.offset}-"
    finally:
        server.close()
