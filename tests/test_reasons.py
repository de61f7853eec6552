"""The accounting backbone is typed: every reason the job gives is a member of
contract.reasons.Reason with its levels and funnel stage, filters cannot return a
string, and a count key is joined and split only where stats.json is written and read."""

import re
import subprocess
from pathlib import Path

import pytest

from contract.reasons import (DROPPED, ERROR, FUNNELS, IMAGE, KEPT, PAIR, RECORD, TEXT, CountKey, Detailed, Level,
                              Reason, Stage, Status, Work, is_known, parse_reason, reasons_of, record_stage)
from filters.base import Verdict, drop, keep
from pipeline.report import funnel

ROOT = Path(__file__).resolve().parents[1]
CODE_DIRS = ("contract", "archives", "filters", "transforms", "pipeline")

# How reasons used to be written as string literals: a filter's drop(), an image
# result, a download error, a record class, an outcome built with its reason.
LITERAL_EMITTERS = [r'\bdrop\("([a-z_]+)"', r'\bdropped\("([a-z_]+)"', r'ImageResult\([\w.]+, "([a-z_]+)"',
                    r'FetchError\("([a-z_]+)"', r'FetchResult\(url, "([a-z_]+)"', r'RecordKind\.\w+, "([a-z_]+)"',
                    r'ReadError\(self\.name, \w+, \w+, "([a-z_]+)"', r'_drop\(page, "([a-z_]+)"',
                    r'drops\(page, "([a-z_]+)"', r'Outcome\.at\(\w+, (?:DROPPED|ERROR), [\w.]+, [\w.]+, "([a-z_]+)"',
                    r'Outcome\(\w+, (?:DROPPED|ERROR), "([a-z_]+)"',
                    r'_pair_outcome\(\w+(?:\(\w+\))?, DROPPED, "([a-z_]+)"', r'\breason = "([a-z_]+)"',
                    r'\bf"(?:http|images|warc_type|spam|caption_not)_\{']


def code_files():
    for d in CODE_DIRS:
        yield from sorted((ROOT / d).rglob("*.py"))


def test_no_reason_is_written_as_a_string_literal():
    found = []
    for path in code_files():
        text = path.read_text()
        for pattern in LITERAL_EMITTERS:
            for m in re.finditer(pattern, text):
                line = text.count("\n", 0, m.start()) + 1
                found.append(f"{path.relative_to(ROOT)}:{line}: {m.group(0)}")
    assert not found, "reasons written as strings (use contract.reasons.Reason):\n" + "\n".join(found)


# String literals equal to a reason code that are not reasons (a score's name).
NOT_REASONS = {("filters/flagged_words.py", "flagged_words")}


def test_no_string_literal_in_the_code_equals_a_reason_code():
    """Beyond the known emitters: any string literal that spells a registered code is
    a reason written as text (it would be refused at run time, on the path that takes it)."""
    import ast
    import io
    import tokenize
    codes = {r.value for r in Reason if not r.is_family}
    found = []
    for path in code_files():
        rel = str(path.relative_to(ROOT))
        if rel == "contract/reasons.py":      # where the codes are defined
            continue
        for tok in tokenize.generate_tokens(io.StringIO(path.read_text()).readline):
            if tok.type != tokenize.STRING:
                continue
            try:
                value = ast.literal_eval(tok.string)
            except (ValueError, SyntaxError):
                continue
            if isinstance(value, str) and value in codes and (rel, value) not in NOT_REASONS:
                found.append(f"{rel}:{tok.start[0]}: {tok.string}")
    assert not found, "reason codes written as strings (use contract.reasons.Reason):\n" + "\n".join(found)


def test_every_reason_member_the_code_names_exists():
    names = set()
    for path in list(code_files()) + sorted((ROOT / "tests").glob("*.py")):
        names |= set(re.findall(r"\bReason\.([A-Z][A-Z0-9_]*)\b", path.read_text()))
    assert len(names) > 60, "the scan found too few reasons: the code no longer names them as Reason members"
    missing = sorted(n for n in names if n not in Reason.__members__)
    assert not missing, f"Reason members named in the code but not defined: {missing}"


def test_every_member_has_levels_and_every_record_reason_a_stage():
    for reason in Reason:
        assert reason.levels and reason.levels <= {RECORD, IMAGE, TEXT, PAIR}, reason
        assert (reason.stage is not None) == (RECORD in reason.levels), reason
    assert len({r.value for r in Reason}) == len(Reason), "two members share a code"


def test_filters_cannot_return_a_string_reason():
    with pytest.raises(TypeError, match="Reason member"):
        drop("non_english")
    with pytest.raises(TypeError, match="without its detail"):
        drop(Reason.HTTP_STATUS)
    with pytest.raises(ValueError, match="no reason"):
        Verdict(True, Reason.GIBBERISH)
    assert drop(Reason.GIBBERISH, ratio=0.5).reason is Reason.GIBBERISH
    assert keep(words=3).keep


def test_an_outcome_refuses_untyped_or_misfiled_reasons():
    from transforms.records import Outcome, Provenance
    prov = Provenance("a.warc.gz", 0)
    with pytest.raises(TypeError):
        Outcome.at(RECORD, DROPPED, prov, "http://x/", "non_english")
    with pytest.raises(TypeError):
        Outcome.at("record", DROPPED, prov, "http://x/", Reason.NON_ENGLISH)
    with pytest.raises(ValueError, match="not registered for level"):
        Outcome.at(IMAGE, DROPPED, prov, "http://x/", Reason.NON_ENGLISH)   # a page reason, not an image's
    with pytest.raises(ValueError, match="carries no reason"):
        Outcome.at(RECORD, KEPT, prov, "http://x/", Reason.NON_ENGLISH)
    o = Outcome.at(RECORD, ERROR, prov, "http://x/", Reason.BAD_GZIP)
    assert o.key == CountKey(RECORD, ERROR, Reason.BAD_GZIP) and o.key.render() == "record/error/bad_gzip"


def test_families_carry_their_detail_and_stage():
    r = Reason.HTTP_STATUS.of("4xx")
    assert isinstance(r, Detailed) and str(r) == "http_4xx" and r == "http_4xx" and hash(r) == hash("http_4xx")
    assert r.stage is Stage.HTML and parse_reason("http_4xx") == r
    assert parse_reason("images_too_small").family is Reason.ALL_IMAGES
    assert parse_reason("caption_not_german") == Reason.CAPTION_NOT.of("german")
    assert parse_reason("http_") is None and parse_reason("no_such_reason") is None
    with pytest.raises(TypeError):
        Reason.NON_ENGLISH.of("x")


def test_count_keys_render_and_parse_back():
    keys = [CountKey(lv, st, r) for r in Reason if not r.is_family for lv in r.levels for st in (DROPPED, ERROR)]
    keys += [CountKey(RECORD, DROPPED, Reason.WARC_TYPE.of("request")), CountKey(RECORD, Status.READ),
             CountKey(Level.FETCH, Work.DECODED), CountKey(Level.FETCH, Work.HTTP_FAILED, Reason.DNS_FAILED),
             CountKey(Level.DEDUP, Work.SURVIVOR_DROPPED, Reason.SINGLE_IMAGE_DROPPED)]
    for key in keys:
        assert CountKey.parse(key.render()) == key, key
    assert CountKey.of_codes("image", "dropped", "too_small") == CountKey(IMAGE, DROPPED, Reason.TOO_SMALL)
    with pytest.raises(ValueError):
        CountKey.parse("record")


def test_no_count_key_is_split_or_joined_outside_the_stats_writer_and_reader():
    """The evidence the issue asks for: every "/" split or join in contract, pipeline
    and transforms is a path, a URL or a progress line, except CountKey's own."""
    out = subprocess.run(["grep", "-rnE", r"""split\("/"|rsplit\("/"|"/"\.join|\}/\{""", "contract", "pipeline",
                          "transforms", "--include=*.py"],
                         cwd=ROOT, capture_output=True, text=True).stdout.splitlines()
    allowed = ("contract/reasons.py",       # CountKey.render / CountKey.parse
               "pipeline/cli.py:",          # the output directory's paths, printed
               "transforms/write.py:",      # a shard's directory and name
               "transforms/progress.py:", "pipeline/progress.py:")   # "files 3/19" on the progress line
    suspicious = [line for line in out if not line.startswith(allowed)]
    assert not suspicious, "count keys split or joined outside contract/reasons.CountKey:\n" + "\n".join(suspicious)


def test_every_reason_of_a_real_run_is_registered_at_its_level(shared_run):
    _, stats = shared_run
    funnels = {f.level for f in FUNNELS}
    for key in stats["counts"]:
        parsed = CountKey.parse(key)
        if parsed.level in funnels and parsed.code and parsed.status in (DROPPED, ERROR):
            assert is_known(parsed.level, parsed.code), key
            assert isinstance(parsed.reason, (Reason, Detailed)), key
    stages = [label for label, _ in funnel(stats)]
    assert not [s for s in stages if s.startswith("unregistered")], stages


def test_record_reasons_map_to_the_papers_stages():
    assert record_stage("http_4xx") is record_stage("warc_type_request") is Stage.HTML
    assert record_stage("images_too_small") is Stage.USABLE_IMAGES
    assert record_stage("near_duplicate") is Stage.UNIQUE
    assert record_stage("no_such_reason") is None
    assert [s.label for s in Stage][0] == "HTML pages (2xx, revisits resolved)"
    assert Reason.NON_ENGLISH in reasons_of(TEXT) and Reason.NO_CAPTION not in reasons_of(TEXT)
