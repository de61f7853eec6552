"""pipeline/graph_cache.py: Beam's signature look-ups, memoised, answer what Beam's
own answer, notice a function changed since, and build the same graph."""

import functools
import inspect

import apache_beam as beam
import pytest
from apache_beam.transforms import userstate
from apache_beam.typehints import decorators

from pipeline import graph_cache


@pytest.fixture
def memoised():
    already = bool(graph_cache._originals)     # run_curation installs it for the process
    original = decorators.get_signature if not already else decorators.get_signature.__wrapped_beam__
    graph_cache.install()
    yield decorators.get_signature, original
    if not already:
        graph_cache.uninstall()
        assert decorators.get_signature is original


class Stateful(beam.DoFn):
    COUNT = userstate.CombiningValueStateSpec("count", sum)

    def process(self, element, count=beam.DoFn.StateParam(COUNT), *, key=beam.DoFn.KeyParam):
        yield element


class Plain(beam.DoFn):
    def process(self, element: int, side: str = "x") -> None:
        yield element


def _wrapper(f):
    @functools.wraps(f)
    def inner(*args, **kwargs):
        return f(*args, **kwargs)
    return inner


def test_same_answers_as_beam(memoised):
    get, original = memoised

    def annotated(a: int, b: "str" = "b", *rest, c=3, **kw) -> bool:
        return True

    callables = [annotated, lambda x, y=1: x, _wrapper(annotated), functools.partial(annotated, 1), len, str.upper,
                 int, Plain, Plain().process, Plain().start_bundle, Stateful().process, Plain.process,
                 beam.DoFn().process, Plain().display_data]
    for f in callables:
        for _ in range(3):
            assert get(f) == original(f), f
    assert graph_cache.install() == "signature look-ups memoised"   # idempotent
    for mod in graph_cache._MODULES:
        assert getattr(__import__(mod, fromlist=["x"]), "get_signature") is get


def test_a_changed_function_is_looked_up_again(memoised):
    get, original = memoised

    def f(a, b=1):
        return a

    assert list(get(f).parameters) == ["a", "b"] and get(f).parameters["b"].default == 1
    f.__defaults__ = (2,)
    assert get(f).parameters["b"].default == 2
    f.__kwdefaults__ = None
    f.__annotations__["a"] = int
    assert get(f).parameters["a"].annotation is int == original(f).parameters["a"].annotation
    del f.__annotations__["a"]
    assert get(f) == original(f)
    f.__code__ = (lambda x, y, z=0: x).__code__
    f.__defaults__ = (0,)
    assert list(get(f).parameters) == ["x", "y", "z"] == list(original(f).parameters)
    f.__signature__ = inspect.Signature()
    assert get(f) == original(f) == inspect.Signature()
    del f.__signature__

    class Holder(beam.DoFn):
        def process(self, element, n=1):
            yield element

    assert get(Holder().process) == original(Holder().process)
    Holder.process.__defaults__ = (5,)
    assert get(Holder().process).parameters["n"].default == 5


def test_state_and_timer_specs_are_found_as_before(memoised):
    assert userstate.is_stateful_dofn(Stateful()) and not userstate.is_stateful_dofn(Plain())
    specs, timers = userstate.get_dofn_specs(Stateful())
    assert specs == {Stateful.COUNT} and timers == set()


def test_the_job_graph_is_the_same(tmp_path):
    """The curation graph translated for the runner: the same transforms, with the
    same inputs, outputs and payloads, with the look-ups memoised as without."""
    from apache_beam.options.pipeline_options import PipelineOptions

    from filters.config import CurationConfig
    from pipeline.curate import build_pipeline
    PICKLED = "beam:transform:pickled_python:v1"

    def graph(options=PipelineOptions):
        p = beam.Pipeline(options=options(["--runner=DirectRunner"]))
        build_pipeline(p, [str(tmp_path / "in.warc")], str(tmp_path / "out"), CurationConfig(), None)
        proto = p.to_runner_api()
        # a composite Beam keeps pickled whole (Reshuffle and the like) pickles differently
        # at every build, cache or not: of those, the name, inputs and outputs
        transforms = {t.unique_name: (t.spec.urn, dict(t.inputs), dict(t.outputs), list(t.subtransforms),
                                      b"" if t.spec.urn == PICKLED else t.spec.payload)
                      for t in proto.components.transforms.values()}
        others = {name: {k: v.SerializeToString(deterministic=True) for k, v in getattr(proto.components, name).items()}
                  for name in ("pcollections", "coders", "windowing_strategies", "environments")}
        return transforms, others

    already = bool(graph_cache._originals)
    if already:
        graph_cache.uninstall()
    try:
        plain = graph()
        graph_cache.install()
        memo = graph()
        views = graph(graph_cache.MemoisedViews)      # and the options views made once each
    finally:
        if not already:
            graph_cache.uninstall()
    # the whole job's graph (about 500 transforms, nearly 400 with a payload), not a stub of it
    assert len(plain[0]) > 450 and sum(1 for t in plain[0].values() if t[4]) > 350
    assert memo == plain == views


def test_memoised_views_read_and_write_as_beams_own():
    from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions, TypeOptions
    args = ["--runner=DirectRunner", "--no_pipeline_type_check", "--direct_num_workers=2"]
    memo, plain = graph_cache.MemoisedViews(args), PipelineOptions(args)
    assert memo.view_as(TypeOptions) is memo.view_as(TypeOptions)
    assert memo.get_all_options() == plain.get_all_options()
    memo.view_as(StandardOptions).runner = "other"
    assert memo.view_as(StandardOptions).runner == "other" == memo.get_all_options()["runner"]
    import copy
    twin = copy.deepcopy(memo)      # what beam.Pipeline does with its options
    twin.view_as(StandardOptions).runner = "twin"
    assert memo.view_as(StandardOptions).runner == "other" and twin.view_as(StandardOptions).runner == "twin"
