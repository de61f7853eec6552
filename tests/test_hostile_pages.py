"""Pages that are costly or treacherous to parse: every cost is bounded, by the
parser's input (attributes, codecs, linear scans) or by the per-page time budget."""

import time

import pytest

from conftest import IN_MEMORY, run_job
from hostile.pages import article, attribute_bomb, unclosed_blocks
from warcgen import http_response, write_warc


@pytest.mark.parametrize("n", [40_000, 300_000])
def test_an_img_with_many_attributes_parses_in_bounded_time(n):
    from filters.captions import find_image_captions
    from filters.html import extract_content, limit_attributes
    page = attribute_bomb(n)
    t0 = time.monotonic()
    tamed = limit_attributes(page)
    content = extract_content(tamed, "https://www.dw.com/en/colonial")
    find_image_captions(tamed, "https://www.dw.com/en/colonial")
    assert time.monotonic() - t0 < 5          # was 35 s for 40k attributes, over 300 s for 300k
    assert content.n_text > 10                # the article is still there
    assert limit_attributes(article()) == article()     # ordinary pages pass unchanged


def test_punycode_and_other_non_web_codecs_are_refused():
    from filters.html import decode_html
    body = b'<html><head><meta charset="punycode"></head><body><p>caf\xc3\xa9 ' + b"abc-" * 250_000 + b"</p>"
    t0 = time.monotonic()
    text, enc = decode_html(body, "")
    assert enc == "utf-8" and "café" in text
    assert decode_html(body, "text/html; charset=punycode")[1] == "utf-8"
    assert decode_html(b"<p>hi</p>", "text/html; charset=utf-7")[1] == "utf-8"
    assert decode_html("<p>Grüße</p>".encode("cp1252"), "text/html; charset=windows-1252") == ("<p>Grüße</p>", "cp1252")
    assert time.monotonic() - t0 < 1         # punycode took 88 s for 1 MB


def test_unclosed_scripts_and_titles_cost_linear_time():
    from filters.html import page_title, rough_text
    page = unclosed_blocks(200_000)
    t0 = time.monotonic()
    assert rough_text(page) == "Some words first."
    assert page_title("<title>" * 100_000) == ""
    assert time.monotonic() - t0 < 2


def test_blocks_are_cut_where_they_are_whatever_the_case_of_the_text_before():
    """"İ" lowers to two characters, so offsets found in a lowered copy of the page
    fall later than the page's own: the cut after a script lands inside what follows
    (with a lowered copy, the ``<p>`` after this script was lost)."""
    from filters.html import strip_blocks, visible_runs
    page = "<p>İstanbul İzmir İğdır</p><SCRIPT>var a = 1;</Script><p>After the script.</p>" \
           "<!-- note --><Style>p{color:red}</STYLE><p>End.</p>"
    assert strip_blocks(page) == "<p>İstanbul İzmir İğdır</p> <p>After the script.</p>  <p>End.</p>"
    assert [r for r in visible_runs(page) if r.strip()] == ["İstanbul İzmir İğdır", "After the script.", "End."]


def test_a_call_over_its_budget_is_killed_and_the_next_one_runs():
    from filters.budget import ChildFailed, OverBudget, TimeBoundCalls
    calls = TimeBoundCalls(budget_s=3.0)
    try:
        assert calls.call(len, "abc") == 3               # starts the child
        t0 = time.monotonic()
        with pytest.raises(OverBudget):
            calls.call(time.sleep, 60)
        assert time.monotonic() - t0 < 5
        assert calls.call(sorted, [3, 1, 2]) == [1, 2, 3]     # a fresh child took over
        assert calls.restarts == 1
        with pytest.raises(ChildFailed, match="ValueError"):
            calls.call(int, "not a number")
    finally:
        calls.close()


def test_pages_over_the_time_budget_are_a_named_drop(tmp_path):
    """With a budget no parse can meet, every page that reaches extraction ends as
    ``over_time_budget`` in each funnel it was on its way to, and the counts balance."""
    warc = write_warc(tmp_path / "pages.warc.gz", [
        http_response("https://www.dw.com/en/colonial", article().encode("utf-8"), "text/html; charset=utf-8"),
        http_response("https://www.dw.com/en/bomb", attribute_bomb(40_000).encode("utf-8"),
                      "text/html; charset=utf-8")])
    stats = run_job([warc], tmp_path / "run", beam_args=IN_MEMORY,
                    overrides={"records.page_time_budget_s": 0.001})
    assert stats["records"]["balanced"] and stats["text_documents"]["balanced"]
    assert stats["records"]["dropped"] == {"over_time_budget": 2}
    assert stats["text_documents"]["dropped"] == {"over_time_budget": 2}


def test_the_attribute_bomb_goes_through_the_job_like_any_page(tmp_path):
    warc = write_warc(tmp_path / "pages.warc.gz", [
        http_response("https://www.dw.com/en/bomb", attribute_bomb(40_000).encode("utf-8"),
                      "text/html; charset=utf-8")])
    t0 = time.monotonic()
    stats = run_job([warc], tmp_path / "run", beam_args=IN_MEMORY)
    assert time.monotonic() - t0 < 60
    assert stats["records"]["balanced"]
    assert "over_time_budget" not in stats["records"].get("dropped", {})
    assert stats["text_documents"]["kept"] == 1           # its text is the article's
