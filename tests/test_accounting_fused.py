"""The accounting in one step per stage (transforms/accounting.py): the tally that
holds counts and reject samples together gives what CountKeys and SampleRejects give
apart, however its input is cut and merged; the audit rows go where the survivor
join needs them (only duplicates and candidates' fates go through it); and the whole
AccountOutcomes gives the trail, counts, samples and error lines a plain reference
computes, with one graph step per ledger entry."""

import heapq
import json
import random

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.pvalue import TaggedOutput
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to

from conftest import IN_MEMORY, matches
from contract.reasons import (DEDUP, DROPPED, ENTERED, ERROR, IMAGE, KEPT, READ, RECORD, TEXT, TEXT_DEDUP, CountKey,
                              Reason, Work, parse_reason)
from transforms.accounting import (DEDUP_REASONS, JOIN, ROWS, AccountOutcomes,
                                   TallyOutcomes, _keep, _row_json, audit_row, audit_rows, error_line, route, sample_key, sample_row)
from transforms.records import Event, Outcome, Provenance


# The two combiners the job used before its one accounting step (issue 31), kept as
# the reference the tally must agree with.
class CountKeys(beam.CombineFn):
    """Outcomes and events -> ``{CountKey: n}``: counted where they are made (a
    combiner, so only each bundle's small dict moves), never one element per key."""

    def create_accumulator(self):
        return {}

    def add_input(self, acc, element):
        key = element.key
        acc[key] = acc.get(key, 0) + 1
        return acc

    def merge_accumulators(self, accs):
        out = {}
        for acc in accs:
            for key, n in acc.items():
                out[key] = out.get(key, 0) + n
        return out

    def extract_output(self, acc):
        return acc


class SampleRejects(beam.CombineFn):
    """Rejects -> up to ``n`` per count key, those with the smallest seeded hashes
    (ties broken by the whole outcome, so every runner picks the same)."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed = n, seed

    def create_accumulator(self):
        return {}

    def _keep(self, items):
        return heapq.nsmallest(self.n, items, key=lambda item: (item[0], repr(item[1])))

    def add_input(self, acc, o):
        items = acc.setdefault(o.key, [])
        items.append((sample_key(o, self.seed), o))
        if len(items) > 2 * self.n:
            acc[o.key] = self._keep(items)
        return acc

    def merge_accumulators(self, accs):
        out = {}
        for acc in accs:
            for key, items in acc.items():
                out.setdefault(key, []).extend(items)
        return {key: self._keep(items) for key, items in out.items()}

    def extract_output(self, acc):
        return {key: self._keep(items) for key, items in acc.items()}


N, SEED = 2, 7


def pipeline():
    return BeamTestPipeline(options=PipelineOptions(IN_MEMORY))


def _at(off):
    return Provenance("a.warc", off)


def _stages():
    """Three stages' outcomes: entries, drops with ties on the sample key (two outcomes
    of one record that differ only in their message), an error, counted events, and
    duplicates whose survivors end kept, dropped, dropped as a duplicate, or nowhere."""
    s1 = [Outcome.at(RECORD, READ, _at(i), f"https://s.example/{i}") for i in range(12)]
    s1 += [Outcome.at(RECORD, DROPPED, _at(i), f"https://s.example/{i}", Reason.NON_ENGLISH,
                      scores={"en_score": i / 10}) for i in range(6)]
    s1 += [Outcome.at(RECORD, DROPPED, _at(6), "https://s.example/6", Reason.NON_ENGLISH, message=m)
           for m in ("b", "a", "c")]                       # one sample key, three outcomes
    s1 += [Outcome.at(RECORD, ERROR, _at(7), "https://s.example/7", Reason.UNDECODABLE_HTML, message="bad bytes")]
    s1 += [Event(DEDUP, Work.UNSETTLED), Event(DEDUP, Work.UNSETTLED)]

    def dup(off, doc, survivor, level=RECORD, reason=Reason.DUPLICATE_URL):
        return Outcome.at(level, DROPPED, _at(off), f"https://s.example/{off}?dup", reason, doc_id=doc,
                          scores={"survivor_doc_id": survivor, "survivor_url": f"https://s.example/{survivor}"})
    s2 = [Outcome.at(RECORD, KEPT, _at(8), "https://s.example/8", doc_id="d8"),
          dup(20, "d20", "d8"),                                          # survivor kept
          dup(21, "d21", "d9", reason=Reason.DUPLICATE_EXACT),           # survivor dropped later: lost
          dup(22, "d22", "d9", reason=Reason.NEAR_DUPLICATE),            # the same cluster, counted once
          Outcome.at(RECORD, DROPPED, _at(9), "https://s.example/9", Reason.ALL_IMAGES.of("too_small"), doc_id="d9"),
          dup(23, "d23", "d20"),                                         # survivor itself a duplicate: not lost
          dup(24, "d24", "d99"),                                         # survivor with no end: lost, no_outcome
          Outcome.at(IMAGE, ENTERED, _at(8), "https://s.example/i.jpg"),
          Outcome.at(IMAGE, KEPT, _at(8), "https://s.example/i.jpg", doc_id="d8")]
    s3 = [Outcome.at(TEXT, ENTERED, _at(8), "https://s.example/8"),
          Outcome.at(TEXT, KEPT, _at(8), "https://s.example/8", doc_id="t8"),
          Outcome.at(TEXT, DROPPED, _at(30), "https://s.example/30", Reason.DUPLICATE_EXACT, doc_id="t30",
                     scores={"survivor_doc_id": "t8", "survivor_url": "https://s.example/8"}),
          # a record-level document id at the text level is another document: no survivor
          Outcome.at(TEXT, DROPPED, _at(31), "https://s.example/31", Reason.DUPLICATE_URL, doc_id="t31",
                     scores={"survivor_doc_id": "d8", "survivor_url": "https://s.example/8"})]
    return s1, s2, s3


# -- a plain reference: what the separate transforms computed --------------------------------
def _reference(stages, n=N, seed=SEED):
    everything = [o for stage in stages for o in stage]
    counts = CountKeys().create_accumulator()
    samples = SampleRejects(n, seed).create_accumulator()
    for o in everything:
        CountKeys().add_input(counts, o)
        if o.is_reject:
            SampleRejects(n, seed).add_input(samples, o)
    samples = SampleRejects(n, seed).extract_output(samples)
    rows = [r for o in everything for r in audit_rows(o)]
    fates = {}
    for r in rows:
        if r["doc_id"] and r["level"] in (RECORD, TEXT):
            fates.setdefault((r["level"], r["doc_id"]), []).append((r["status"], r["reason"]))
    trail, lost = [], {}
    for r in rows:
        if not r["survivor_doc_id"]:
            trail.append(r)
            continue
        status, reason = sorted(fates.get((r["level"], r["survivor_doc_id"]), [("", "no_outcome")]))[0]
        trail.append({**r, "survivor_status": status, "survivor_reason": reason})
        if status != KEPT and reason not in DEDUP_REASONS:
            lost[(r["level"], r["survivor_doc_id"])] = CountKey(DEDUP if r["level"] == RECORD else TEXT_DEDUP,
                                                                Work.SURVIVOR_DROPPED, parse_reason(reason) or reason)
    for key in lost.values():
        counts[key] = counts.get(key, 0) + 1
    errors = [error_line(o) for o in everything if o.is_reject and o.status == ERROR]
    sample_rows = [sample_row(o, k) for items in samples.values() for k, o in items]
    return counts, sample_rows, errors, trail


def _canon(rows):
    return sorted(json.dumps(r, sort_keys=True, default=str) for r in rows)


# -- the tally -------------------------------------------------------------------------------
def _tally_of(outcomes, cuts, rng):
    """``outcomes`` tallied in pieces cut at ``cuts``, the pieces merged in a random order."""
    fn = TallyOutcomes(N, SEED)
    pieces, start = [], 0
    for end in list(cuts) + [len(outcomes)]:
        acc = fn.create_accumulator()
        for o in outcomes[start:end]:
            fn.add_input(acc, o)
        pieces.append(acc)
        start = end
    rng.shuffle(pieces)
    merged = fn.merge_accumulators(pieces[:1])
    for piece in pieces[1:]:                      # merged one by one, as partial tallies arrive
        merged = fn.add_tally(merged, piece)
    return fn.extract_output(merged)


def test_the_tally_is_count_keys_and_sample_rejects_however_it_is_cut():
    everything = [o for stage in _stages() for o in stage]
    counts = CountKeys().extract_output(CountKeys().merge_accumulators(
        [CountKeys().add_input(CountKeys().create_accumulator(), o) for o in everything]))
    sampler = SampleRejects(N, SEED)
    acc = sampler.create_accumulator()
    for o in everything:
        if o.is_reject:
            sampler.add_input(acc, o)
    samples = sampler.extract_output(acc)
    assert len(samples[CountKey(RECORD, DROPPED, Reason.NON_ENGLISH)]) == N
    rng = random.Random(0)
    for trial in range(30):
        order = list(everything)
        rng.shuffle(order)
        cuts = sorted(rng.sample(range(1, len(order)), rng.randint(0, 6)))
        got_counts, got_samples = _tally_of(order, cuts, rng)
        assert got_counts == counts
        assert got_samples == samples           # the same outcomes, in the same order, per key


def test_ties_on_the_sample_key_are_broken_by_the_whole_outcome():
    """Three rejects of one record share a seeded hash; the one(s) kept are those whose
    whole outcome sorts first, whatever order they came in."""
    same = [Outcome.at(RECORD, DROPPED, _at(6), "https://s.example/6", Reason.NON_ENGLISH, message=m)
            for m in ("b", "a", "c")]
    fn = TallyOutcomes(1, SEED)
    for order in (same, same[::-1], same[1:] + same[:1]):
        acc = fn.create_accumulator()
        for o in order:
            fn.add_input(acc, o)
        _, samples = fn.extract_output(acc)
        [(_, kept)] = samples[CountKey(RECORD, DROPPED, Reason.NON_ENGLISH)]
        assert kept.message == "a"



def test_keeping_n_samples_is_nsmallest_on_hash_then_whole_outcome():
    """``_keep`` writes out only the outcomes that can be kept, and keeps what
    ``heapq.nsmallest`` on (hash, repr) keeps: the same objects in the same order,
    ties on the hash at the cut included."""
    rng = random.Random(7)
    for _ in range(3000):
        n = rng.randint(1, 6)
        items = [(rng.choice("abcd"), Outcome.at(RECORD, DROPPED, _at(1), "https://s.example/1", Reason.NON_ENGLISH,
                                                   message=rng.choice("xyz")))
                 for _ in range(rng.randint(0, 14))]
        want = heapq.nsmallest(n, items, key=lambda item: (item[0], repr(item[1])))
        assert [id(x) for x in _keep(items, n)] == [id(x) for x in want]


def test_an_audit_rows_id_text_is_json_dumps_of_the_row():
    """The outcome id hashes ``json.dumps(row, sort_keys=True, default=str)``; the direct
    writer gives the same text for any strings (quotes, controls, surrogates, non-ASCII)
    and ints, in any key order, and hands anything else to json.dumps."""
    rng = random.Random(3)
    alphabet = ["a", "é", '"', "\\", "\n", "\x00", "\x1f", "\u2028", "\U0001F600", "\ud800", " ", "/", "\x7f"]
    row = audit_row(Outcome.at(RECORD, DROPPED, _at(2), "https://s.example/2", Reason.NON_ENGLISH))
    del row["outcome_id"]
    keys = list(row)
    for i in range(3000):
        values = {k: ("".join(rng.choice(alphabet) for _ in range(rng.randint(0, 9))) if k not in ("offset", "inner_offset")
                      else rng.choice([rng.randint(-2 ** 70, 2 ** 70), 0, -1])) for k in keys}
        if i % 5 == 0:
            values["offset"] = rng.choice([None, True, 1.5, "7"])
        rng.shuffle(keys)
        shuffled = {k: values[k] for k in keys}
        assert _row_json(shuffled) == json.dumps(shuffled, sort_keys=True, default=str)

# -- where a row goes ------------------------------------------------------------------------
def _routed(o):
    return [(t.tag, t.value) for t in route(audit_row(o))]


def test_rows_that_need_no_join_go_straight_on():
    kept_doc = Outcome.at(RECORD, KEPT, _at(8), "https://s.example/8", doc_id="d8")
    image = Outcome.at(IMAGE, KEPT, _at(8), "https://s.example/i.jpg", doc_id="d8")
    non_english = Outcome.at(RECORD, DROPPED, _at(1), "https://s.example/1", Reason.NON_ENGLISH)
    duplicate = Outcome.at(RECORD, DROPPED, _at(5), "https://s.example/5", Reason.DUPLICATE_URL, doc_id="d5",
                           scores={"survivor_doc_id": "d8", "survivor_url": "https://s.example/8"})
    row = audit_row(kept_doc)
    # a candidate's end: its row straight on, and its fate to the join keyed by its document
    assert _routed(kept_doc) == [(JOIN, (("record", "d8"), ("fate", ("kept", "")))), (ROWS, row)]
    assert _routed(image) == [(ROWS, audit_row(image))]          # an image's end is nobody's survivor
    assert _routed(non_english) == [(ROWS, audit_row(non_english))]
    # a duplicate is a candidate's end too (its fate may be asked for), and waits for its survivor's
    assert _routed(duplicate) == [(JOIN, (("record", "d5"), ("fate", ("dropped", "duplicate_url")))),
                                  (JOIN, (("record", "d8"), ("dup", audit_row(duplicate))))]
    assert all(isinstance(t, TaggedOutput) for t in route(row))
    assert audit_row(Outcome.at(RECORD, READ, _at(1), "https://s.example/1")) is None
    assert list(audit_rows(kept_doc)) == [row] and list(audit_rows(Event(DEDUP, Work.UNSETTLED))) == []


# -- the whole accounting --------------------------------------------------------------------
def test_account_outcomes_gives_what_the_separate_steps_gave():
    stages = _stages()
    counts, sample_rows, errors, trail = _reference(stages)
    assert counts[CountKey(DEDUP, Work.SURVIVOR_DROPPED, Reason.ALL_IMAGES.of("too_small"))] == 1
    assert counts[CountKey(DEDUP, Work.SURVIVOR_DROPPED, "no_outcome")] == 1
    assert CountKey(TEXT_DEDUP, Work.SURVIVOR_DROPPED, "no_outcome") in counts     # t31: d8 is no text document

    def same_trail(rows):
        assert _canon(rows) == _canon(trail)
        assert len({r["outcome_id"] for r in rows}) == len(rows)

    def same_samples(rows):
        assert _canon(rows) == _canon(sample_rows)

    with pipeline() as p:
        s1, s2, s3 = stages
        parts = (p | "S1" >> beam.Create(s1), (p | "S2" >> beam.Create(s2), p | "S3" >> beam.Create(s3)))
        acc = parts | AccountOutcomes(n=N, seed=SEED, trail=True)
        assert_that(acc.counts, equal_to([counts]), label="counts")
        assert_that(acc.samples, matches(same_samples), label="samples")
        assert_that(acc.errors, equal_to(errors), label="errors")
        assert_that(acc.trail, matches(same_trail), label="trail")


def test_without_the_trail_the_counts_samples_and_errors_are_the_same():
    stages = _stages()
    counts, sample_rows, errors, _ = _reference(stages)
    counts = {k: v for k, v in counts.items() if k.status != Work.SURVIVOR_DROPPED}
    with pipeline() as p:
        parts = tuple(p | f"S{i}" >> beam.Create(s) for i, s in enumerate(stages))
        acc = parts | AccountOutcomes(n=N, seed=SEED, trail=False)
        assert acc.trail is None
        assert_that(acc.counts, equal_to([counts]), label="counts")

        def same_samples(rows):
            assert _canon(rows) == _canon(sample_rows)
        assert_that(acc.samples, matches(same_samples), label="samples")
        assert_that(acc.errors, equal_to(errors), label="errors")


def test_an_empty_run_counts_nothing():
    with pipeline() as p:
        empty = p | "None" >> beam.Create([]).with_output_types(Outcome)
        acc = (empty, p | "NoneEither" >> beam.Create([]).with_output_types(Outcome)) | AccountOutcomes(1, SEED)
        assert_that(acc.counts, equal_to([{}]), label="counts")
        assert_that(acc.samples, equal_to([]), label="samples")
        assert_that(acc.trail, equal_to([]), label="trail")


def test_one_graph_step_per_ledger_entry():
    """Each stage's outcomes cost one step of the graph (one leaf transform: the ParDo);
    what follows does not grow with the number of stages."""
    def steps(k):
        p = beam.Pipeline(options=PipelineOptions(IN_MEMORY))
        parts = tuple(p | f"S{i}" >> beam.Create(_stages()[0]) for i in range(k))
        parts | "AccountOutcomes" >> AccountOutcomes(N, SEED)
        ts = p.to_runner_api().components.transforms.values()
        return len([t for t in ts if t.unique_name.startswith("AccountOutcomes") and not t.subtransforms])
    assert steps(6) - steps(3) == 3
    assert steps(3) <= 3 + 17


@pytest.fixture
def small_bundles(monkeypatch):
    """Beam's local runner as the job runs it, with bundles of at most 2 kB of input."""
    from pipeline import local_runner
    already = bool(local_runner._originals)
    local_runner.install()
    monkeypatch.setattr(local_runner, "BUNDLE_BYTES", 2_000)
    yield
    if not already:
        local_runner.uninstall()


def _many(k):
    out = []
    for i in range(k):
        url = f"https://m.example/{i}"
        out.append(Outcome.at(RECORD, READ, _at(i), url))
        if i % 3 == 0:
            out.append(Outcome.at(RECORD, DROPPED, _at(i), url, Reason.NON_ENGLISH, scores={"en_score": i % 10}))
        elif i % 7 == 0:
            out.append(Outcome.at(RECORD, ERROR, _at(i), url, Reason.UNDECODABLE_HTML, message=f"bad {i}"))
        elif i % 5 == 0:
            out.append(Outcome.at(RECORD, DROPPED, _at(i), url, Reason.DUPLICATE_URL, doc_id=f"m{i}",
                                  scores={"survivor_doc_id": f"m{i - 1}", "survivor_url": "x"}))
        else:
            out.append(Outcome.at(RECORD, KEPT, _at(i), url, doc_id=f"m{i}"))
    return out


@pytest.mark.parametrize("mode,workers", [("in_memory", 1), ("multi_threading", 2)])
def test_the_tallies_of_many_bundles_merge_to_the_same(small_bundles, monkeypatch, mode, workers):
    """A stage's outcomes in many bundles (each bundle hands on its own tally), on one
    worker and on two: the same counts, samples, error lines and trail as in one piece."""
    import transforms.accounting as accounting
    stages = (_many(400), _stages()[1])
    counts, sample_rows, errors, trail = _reference(stages)
    tallies = []
    finish = accounting.AccountStage.finish_bundle

    def counted(self):
        for t in finish(self):
            tallies.append(t)
            yield t
    monkeypatch.setattr(accounting.AccountStage, "finish_bundle", counted)

    def same(expected):
        def check(rows):
            assert _canon(rows) == _canon(expected)
        return matches(check)
    opts = PipelineOptions(["--runner=DirectRunner", f"--direct_running_mode={mode}",
                            f"--direct_num_workers={workers}"])
    with beam.Pipeline(options=opts) as p:
        parts = tuple(p | f"S{i}" >> beam.Create(s)
                      | f"Key{i}" >> beam.Map(lambda o: (getattr(o, "offset", 0) % 17, o))   # a stage's input
                      | f"Spread{i}" >> beam.GroupByKey()                                      # in many bundles
                      | f"Values{i}" >> beam.FlatMap(lambda kv: kv[1]) for i, s in enumerate(stages))
        acc = parts | AccountOutcomes(n=N, seed=SEED, trail=True)
        assert_that(acc.counts, equal_to([counts]), label="counts")
        assert_that(acc.samples, same(sample_rows), label="samples")
        assert_that(acc.errors, equal_to(errors), label="errors")
        assert_that(acc.trail, same(trail), label="trail")
    assert len(tallies) > 10, len(tallies)
