"""Cheaper graph construction: Beam's signature look-ups and options views, memoised.

Building and translating the curation graph (about 900 ParDos) asks Beam for the
state and timer specs of every DoFn several times (``userstate.get_dofn_specs``:
when a ParDo is applied, when it is translated for the runner, twice per run),
and each ask takes ``inspect.signature`` of every method of the DoFn, ~30 of
them, nearly all of them ``DoFn``'s own: about 190,000 signatures, half the time
of building a run's graph. A signature depends only on the function: its code,
its defaults and its annotations (for a bound method, that of its function less
the first parameter; the instance plays no part).

``install()`` has Beam's ``get_signature`` (apache_beam.typehints.decorators, and
the modules that imported it by name) keep what it answered for plain Python
functions and bound methods of plain functions, keyed by the function object
(weakly: a function that goes is forgotten). An answer is used again only while
the function's code, defaults, keyword defaults and annotations are the very
objects they were; a function carrying ``__wrapped__``, ``__signature__`` or
``_partialmethod`` (where inspect looks elsewhere), any other callable, and any
look-up that raised are passed to Beam's own each time. Signatures are immutable,
so handing the same one out twice changes nothing for a caller. Idempotent;
``uninstall()`` puts Beam's own back (tests)."""

from __future__ import annotations

import threading
import types
import weakref
from typing import List, Tuple

from apache_beam.options.pipeline_options import PipelineOptions

_MODULES = ("apache_beam.typehints.decorators", "apache_beam.transforms.core", "apache_beam.transforms.ptransform",
            "apache_beam.transforms.util")
_ELSEWHERE = ("__wrapped__", "__signature__", "_partialmethod")   # inspect.signature reads these first

_functions: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()   # function -> (fingerprint, signature)
_methods: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()     # function -> (fingerprint, bound signature)
_lock = threading.Lock()
_originals: List[Tuple[object, object]] = []    # (module, Beam's get_signature)


def _fingerprint(func):
    """What inspect reads of a plain function, or None where it would look elsewhere."""
    attrs = func.__dict__
    if attrs and any(name in attrs for name in _ELSEWHERE):
        return None
    kwdefaults = func.__kwdefaults__
    annotations = func.__annotations__
    return (func.__code__, func.__defaults__, kwdefaults, annotations,
            tuple(kwdefaults.items()) if kwdefaults else (), tuple(annotations.items()) if annotations else ())


def _unchanged(func, fingerprint) -> bool:
    """``func`` reads as it did when ``fingerprint`` was taken: the very same objects."""
    code, defaults, kwdefaults, annotations, kw_items, annotation_items = fingerprint
    if func.__code__ is not code or func.__defaults__ is not defaults or func.__kwdefaults__ is not kwdefaults \
            or func.__annotations__ is not annotations:
        return False
    attrs = func.__dict__
    if attrs and any(name in attrs for name in _ELSEWHERE):
        return False
    return _same_items(kw_items, kwdefaults) and _same_items(annotation_items, annotations)


def _same_items(items, mapping) -> bool:
    if not mapping:
        return not items
    return len(items) == len(mapping) and all(k1 is k2 and v1 is v2 for (k1, v1), (k2, v2) in zip(items, mapping.items()))


def _memoised(original):
    def get_signature(func):
        kind = type(func)
        if kind is types.FunctionType:
            target, table = func, _functions
        elif kind is types.MethodType and type(func.__func__) is types.FunctionType:
            target, table = func.__func__, _methods
        else:
            return original(func)
        hit = table.get(target)
        if hit is not None and _unchanged(target, hit[0]):
            return hit[1]
        fingerprint = _fingerprint(target)
        if fingerprint is None:
            return original(func)
        signature = original(func)
        with _lock:
            table[target] = (fingerprint, signature)
        return signature

    get_signature.__wrapped_beam__ = original
    get_signature.__doc__ = original.__doc__
    return get_signature


def install() -> str:
    """Memoise Beam's signature look-ups in this process; returns what was done."""
    import importlib
    with _lock:
        if _originals:
            return "signature look-ups memoised"
        try:
            decorators = importlib.import_module(_MODULES[0])
            original = decorators.get_signature
        except (ImportError, AttributeError) as exc:
            return f"signature look-ups not memoised ({exc})"
        memoised = _memoised(original)
        for name in _MODULES:
            try:
                module = importlib.import_module(name)
            except ImportError:
                continue
            if getattr(module, "get_signature", None) is original:
                _originals.append((module, original))
                module.get_signature = memoised
    return "signature look-ups memoised"


def uninstall() -> None:
    with _lock:
        while _originals:
            module, original = _originals.pop()
            module.get_signature = original
        _functions.clear()
        _methods.clear()



class MemoisedViews(PipelineOptions):
    """PipelineOptions whose views are made once per options class. Beam asks for
    ``view_as(TypeOptions)`` on every transform applied (twice), and each view parses
    the flags again with argparse: 1.4 s for the curation graph. A view holds nothing
    of its own: its values live in the ``_all_options`` dict it shares with the options
    and every other view, and the flags it parses are fixed when the options are made,
    so a view made once reads and writes as a new one would. The memo is kept per
    ``_all_options`` dict, so a copy of the options (Beam deep-copies them into its
    Pipeline) makes views of its own."""

    def view_as(self, cls):
        memo = self.__dict__.get("_kosmos_views")
        if memo is None or memo[0] is not self._all_options:
            memo = (self._all_options, {})
            object.__setattr__(self, "_kosmos_views", memo)
        view = memo[1].get(cls)
        if view is None:
            view = memo[1][cls] = PipelineOptions.view_as(self, cls)
        return view
