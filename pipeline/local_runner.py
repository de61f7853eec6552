"""Four changes to Beam's local runner (the FnApiRunner behind ``DirectRunner``)
for runs of this process. Runners with a real shuffle and their own bundle
scheduling (Dataflow, Flink, Spark) never load them.

1. **Compact shuffle buffers.** The local runner holds every GroupByKey's input
   in one process until the grouping stage runs, and Beam's ``GroupingBuffer``
   holds it as decoded Python objects: a page's candidate text with its dicts
   and lists costs several times its encoded size, and when the grouping stage
   runs, Beam encodes the whole grouped output into one more copy beside it.
   ``CompactGroupingBuffer`` keeps each value as its encoded bytes instead,
   zstd-compressed above ``COMPRESS_ABOVE`` bytes, and encodes the grouped
   output key by key as it is sent to the worker. The grouped output is the
   same: the same coders encode the same values in the same order. Most of the
   job's values reach the runner as bytes (Beam's ``BytesCoder``: the runner's
   view of a coder only the SDK knows); those are kept as they came, their own
   encoding, never encoded again.

2. **Bounded bundles.** Beam sends a bundle's whole input into an in-memory
   channel before the bundle starts, and a stage's whole input is one bundle:
   each stage held all its input twice (buffer and channel) and all its output
   at once. A stage's input now goes in bundles of ``BUNDLE_BYTES``, one after
   the other.

3. **Compact stage buffers.** What one stage hands to another without a
   shuffle (a Flatten of several stages' outputs, side inputs, deferred work)
   waits in a ``ListBuffer`` of encoded pieces; ``CompactListBuffer`` keeps them
   compressed and expands each piece only as it is read.

4. **Residuals of parallel bundles.** With more than one worker
   (``direct_num_workers > 1``) Beam 2.77's ``ParallelBundleManager`` merges the
   workers' bundle responses by their metrics only, so the residuals a
   splittable DoFn hands back (``defer_remainder``, as ``ReadArchives`` does to
   bound a bundle) are dropped with every response but the first, and the
   records of those ranges are never read. The fix collects every worker's
   residuals into the merged response.

They replace private classes and methods of Beam's runner, read against Beam
``TESTED_BEAM`` (setup.py pins it). ``problems()`` says, before a job starts, which
change does not apply to the Beam of this process: another version, or a class,
attribute or method it relies on missing or of another shape (the two buffers are
also run side by side with Beam's own on a few elements and must give the same
bytes). ``install()`` applies all four, or none: where one does not apply it raises
``NotApplicable`` (``kosmos curate`` refuses the run), or with ``allow_unpatched``
leaves Beam's runner as it is and says so (``run.json: local_runner``). It also has
glibc's allocator hand freed memory back (``return_freed_memory``).
"""

from __future__ import annotations

import inspect
import itertools
import threading
from typing import Dict, Iterable, Iterator, List, Optional, Tuple

# bytes: smaller encodings (ids, counts, outcomes, short rows) gain ~20% from zstd at ~5 us a value
# each way; larger ones (texts, rows) 2-4x. On the job's shuffles at 256 compressing cost 5x
# the rest of the buffers' work and held 10% less than at 1024.
COMPRESS_ABOVE = 1024
BUNDLE_BYTES = 8 << 20    # encoded input of one bundle of the local runner (32 MB before; see return_freed_memory)
# glibc's thresholds for the local runner's processes (what they do: return_freed_memory).
# Lower ones cost CPU: at 128 KB both, every page-sized string and every zlib or parser
# state was a fresh mapping, its pages faulted in anew (about 10% more CPU on 1,000 pages).
MMAP_THRESHOLD = 4 << 20
TRIM_THRESHOLD = 16 << 20
COMPRESS_LEVEL = 1        # zstd: on web pages 3x zlib level 1's speed both ways, and smaller
# The Beam (major, minor) whose runner the changes replace parts of, read and tested
# against; setup.py pins apache-beam to it. Any other version is refused (problems()).
TESTED_BEAM = (2, 77)
ALLOW_UNPATCHED = "runner.allow_unpatched"
# A packed piece's first byte, checked when it is read: a piece that did not come
# through _pack is refused (unless it starts with one by chance: Beam's encoded windowed
# values start with their timestamp, 0x7f before 1970 and 0x80 after).
_RAW, _ZSTD = b"\x00", b"\x02"
_codecs = threading.local()   # zstd contexts are not to be shared between threads (parallel bundles)


def _zstd():
    if not hasattr(_codecs, "compress"):
        import zstandard
        _codecs.compress = zstandard.ZstdCompressor(level=COMPRESS_LEVEL).compress
        _codecs.decompress = zstandard.ZstdDecompressor().decompress
    return _codecs


def _pack(encoded: bytes) -> bytes:
    if len(encoded) > COMPRESS_ABOVE:
        packed = _zstd().compress(encoded)
        if len(packed) < len(encoded):
            return _ZSTD + packed
    return _RAW + encoded


def _unpack(packed: bytes) -> bytes:
    """What ``_pack`` was given; a piece it did not make (no tag of its own) is refused,
    never read as if it had one."""
    if not isinstance(packed, (bytes, bytearray)):
        raise TypeError(f"local runner buffer: expected a piece packed by pipeline/local_runner.py, "
                        f"got a {type(packed).__name__}")
    tag = packed[:1]
    if tag == _ZSTD:
        return _zstd().decompress(packed[1:])
    if tag == _RAW:
        return packed[1:]
    raise ValueError(f"local runner buffer: a piece of {len(packed)} bytes starting {bytes(packed[:8])!r} "
                     f"has no tag of pipeline/local_runner.py ({_RAW!r} raw, {_ZSTD!r} zstd); it was not "
                     f"packed there")


_originals: List[Tuple[object, str, object]] = []   # (owner, name, Beam's own), in the order replaced
_installed = ""
_unpatched = ""       # why this process runs Beam's local runner as it is (runner.allow_unpatched)


class NotApplicable(RuntimeError):
    """A change to the local runner does not apply to this process's Beam; the message
    (one line) names the change, the version and how to run anyway."""


def _replace(owner, name: str, new) -> None:
    _originals.append((owner, name, getattr(owner, name)))
    setattr(owner, name, new)


def _changes():
    """(name, check, apply) of each change, in the order applied: a later one may wrap
    an earlier one (the bounded bundles wrap the residuals' BundleManager.process_bundle)."""
    return (("compact shuffle buffers", _check_grouping_buffer, _compact_grouping_buffer),
            ("compact stage buffers", _check_list_buffer, _compact_list_buffer),
            ("residuals of parallel bundles", _check_parallel_residuals, _parallel_residuals),
            ("bundles of at most %d MB" % (BUNDLE_BYTES >> 20), _check_bounded_bundles, _bounded_bundles))


def beam_version() -> str:
    try:
        import apache_beam
        return apache_beam.__version__
    except ImportError:
        return "(not installed)"


def _tested(version: str) -> bool:
    parts = version.split(".")
    try:
        return (int(parts[0]), int(parts[1])) == TESTED_BEAM
    except (IndexError, ValueError):
        return False


def problems() -> List[Tuple[str, str]]:
    """(change, why it does not apply) for each change that does not apply to the Beam of
    this process: not the tested version, or something of Beam's runner it replaces or
    relies on missing or of another shape. Empty: all apply."""
    try:
        from apache_beam.runners.portability.fn_api_runner import execution, fn_runner
    except ImportError as exc:
        return [(name, f"no FnApiRunner ({exc})") for name, _, _ in _changes()]
    tested = _tested(beam_version())
    out = []
    for name, check, _ in _changes():
        try:
            why = check(execution, fn_runner)
        except Exception as exc:        # a shape so far from the expected that looking at it fails
            why = f"checking it failed: {type(exc).__name__}: {exc}"
        if why is None and not tested:
            why = "not tested on this version"
        if why is not None:
            out.append((name, why))
    return out


def refusal(found: List[Tuple[str, str]]) -> str:
    """The one line that stops a run whose local runner the changes do not apply to."""
    major, minor = TESTED_BEAM
    what = "; ".join(f"{name}: {why}" for name, why in found)
    return (f"the local runner's changes (pipeline/local_runner.py) do not apply to Beam {beam_version()} "
            f"(tested on {major}.{minor}.x, as setup.py pins): {what}. Install apache-beam=={major}.{minor}.*, "
            f"or run on Beam's own local runner without them (without the compact buffers and bounded "
            f"bundles one Common Crawl WARC can need tens of GB of memory; more than one worker can lose "
            f"records): --set {ALLOW_UNPATCHED}=true")


def install(allow_unpatched: bool = False) -> str:
    """Apply the changes to the local runner of this process; returns what was done.
    All or none: where one does not apply (``problems()``), raises NotApplicable, or
    with ``allow_unpatched`` leaves Beam's runner as it is and says so."""
    global _installed, _unpatched
    if _originals:
        return _installed
    found = problems()
    if found and not allow_unpatched:
        raise NotApplicable(refusal(found))
    done = []
    if found:
        _unpatched = (f"the local runner ran unpatched ({ALLOW_UNPATCHED}; Beam {beam_version()}): "
                      + "; ".join(f"{name} not applied ({why})" for name, why in found))
        done.append(_unpatched)
    else:
        from apache_beam.runners.portability.fn_api_runner import execution, fn_runner
        _unpatched = ""
        for name, _, apply in _changes():
            apply(execution, fn_runner)
            done.append(name)
    done.append(return_freed_memory())
    _installed = "; ".join(done)
    return _installed


def unpatched() -> str:
    """Why this process's local runner runs without the changes ("" when it has them, or
    when none was installed)."""
    return "" if _originals else _unpatched


def without_prism(runner) -> bool:
    """Have Beam's ``DirectRunner`` (a SwitchingDirectRunner) go straight to its local
    runner; True where it was told. Beam 2.77's first tries Prism, a Go binary it fetches
    from GitHub: offline that fails after the whole graph was translated and optimised
    once more (about 1 CPU-s on the curation graph) and leaves a gRPC worker pool
    running; online the job would run on Prism, without the changes of this module.
    Its ``is_interactive()`` is the one switch that skips Prism, and in the tested Beam
    all it does (direct_runner.py reads ``_is_interactive`` only there); on any other
    version the runner is left as it is."""
    try:
        from apache_beam.runners.direct.direct_runner import SwitchingDirectRunner
    except ImportError:
        return False
    if type(runner) is not SwitchingDirectRunner or not _tested(beam_version()):
        return False
    runner.is_interactive()
    return True


def return_freed_memory() -> str:
    """Have glibc's allocator give freed memory back to the system: blocks over
    ``MMAP_THRESHOLD`` get their own mappings (unmapped when freed) and the heap is
    trimmed when ``TRIM_THRESHOLD`` is free at its top. By default glibc raises its
    mmap threshold to the size of each large block freed (up to 32 MB), so later
    bundles' data (bytes of up to ``BUNDLE_BYTES``) lands on the heap, where one
    long-lived block above them keeps the whole span resident after each stage;
    a threshold set once stays where it is set.
    Dask advises the trim threshold for the same reason (its "unmanaged memory").
    Set for this process (``mallopt``) and, through the environment glibc reads at
    start, for the worker processes it starts; values the caller set in those
    variables are kept. Returns what was done."""
    import ctypes
    import ctypes.util
    import os
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        mallopt = libc.mallopt if libc is not None else None
    except (OSError, AttributeError):
        mallopt = None
    if mallopt is None:
        return "allocator left as it is (no glibc mallopt)"
    done = []
    for option, env, default in ((-1, "MALLOC_TRIM_THRESHOLD_", TRIM_THRESHOLD),    # M_TRIM_THRESHOLD
                                 (-3, "MALLOC_MMAP_THRESHOLD_", MMAP_THRESHOLD)):   # M_MMAP_THRESHOLD
        value = int(os.environ.get(env) or default)
        if mallopt(option, value) == 1:
            os.environ.setdefault(env, str(value))
            done.append(f"{env}={value}")
    return "allocator: " + ", ".join(done) if done else "allocator left as it is (mallopt refused)"


def uninstall() -> None:
    """Beam's own code again (for tests that compare the two), undone in reverse order:
    a later change may wrap an earlier one."""
    global _unpatched
    _unpatched = ""
    while _originals:
        owner, name, old = _originals.pop()
        setattr(owner, name, old)


# What every check looks at is Beam's own code, also once the changes are installed.
def _own(owner, name: str):
    for o, n, old in _originals:
        if o is owner and n == name:
            return old
    return getattr(owner, name, None)


def _lacks(cls, label: str, *methods: str) -> Optional[str]:
    missing = [m for m in methods if not callable(getattr(cls, m, None))]
    return f"{label} has no {', '.join(missing)}" if missing else None


def _takes(func, label: str, *params: str) -> Optional[str]:
    """None when ``func`` is a method taking exactly ``params`` (after self)."""
    try:
        got = tuple(inspect.signature(func).parameters)
    except (TypeError, ValueError):
        return f"{label} has no signature to read"
    if got == ("self",) + params:
        return None
    return f"{label} takes ({', '.join(got[1:])}), not ({', '.join(params)})"


def _lacks_attributes(obj, label: str, expected: Dict[str, type]) -> Optional[str]:
    """None when ``obj`` has each attribute, of its type."""
    wrong = [f"{name} ({type(getattr(obj, name)).__name__}, not {tp.__name__})" if hasattr(obj, name) else name
             for name, tp in expected.items()
             if not isinstance(getattr(obj, name, None), tp)]
    return f"{label} has no {', '.join(wrong)}" if wrong else None


def _names(func) -> set:
    """The global and attribute names that a function's code and the functions it defines use."""
    code = getattr(func, "__code__", None)
    names, stack = set(), [code] if code is not None else []
    while stack:
        c = stack.pop()
        names.update(c.co_names)
        stack.extend(k for k in c.co_consts if inspect.iscode(k))
    return names


def _sample_elements():
    """A few (key, value) pairs, some values above COMPRESS_ABOVE, keys repeated."""
    return [(f"k{i % 3}".encode(), {"i": i, "text": "word " * (i * COMPRESS_ABOVE // 12)}) for i in range(7)]


def _check_bytes_coder() -> Optional[str]:
    """BytesCoder as the compact grouping buffer keeps its values: decoded (nested) to a
    plain ``bytes``, its unnested encoding, which it encodes as it is."""
    from apache_beam.coders import coders
    from apache_beam.coders.coder_impl import create_InputStream

    coder = coders.BytesCoder()
    impl = coder.get_impl()
    if not _bytes_coder(coder):
        return "BytesCoder's impl is not coder_impl.BytesCoderImpl"
    for value in (b"", b"x", bytes(range(256)) * 9):
        decoded = impl.decode_from_stream(create_InputStream(impl.encode_nested(value)), True)
        if type(decoded) is not bytes or decoded != value or impl.encode(decoded) != value:
            return "BytesCoder does not decode a value to its own encoding"
    return None


class _Zstd(bytes):
    """A grouping buffer's value as zstd compressed it; a value kept as it came is a
    plain ``bytes`` (the table is the buffer's own: nothing else puts values there)."""
    __slots__ = ()


def _shrunk(encoded: bytes) -> bytes:
    """``encoded`` compressed (a ``_Zstd``) where that makes it smaller, else as it is."""
    packed = _zstd().compress(encoded)
    return _Zstd(packed) if len(packed) < len(encoded) else encoded


def _bytes_coder(coder) -> bool:
    """Beam's BytesCoder, whose impl decodes a value to its own unnested encoding and
    encodes it as it is (the runner's view of a coder only the SDK knows: its bytes)."""
    from apache_beam.coders import coder_impl, coders
    return type(coder) is coders.BytesCoder and type(coder.get_impl()) is coder_impl.BytesCoderImpl


def _grouping_buffer_class(base):
    from apache_beam.coders.coder_impl import create_InputStream, create_OutputStream
    from apache_beam.transforms.window import GlobalWindow, GlobalWindows
    from apache_beam.utils import windowed_value

    class CompactGroupingBuffer(base):
        """Beam's GroupingBuffer with each value kept encoded (and compressed when
        large) until the grouped output is produced; default windowing only, the
        rest is left to Beam's own code. A value whose coder is Beam's BytesCoder
        (what the runner sees of every coder only the SDK knows: most of the job's)
        is kept as decoded, its encoding: nothing is encoded again."""

        def __init__(self, pre_grouped_coder, post_grouped_coder, windowing) -> None:
            super().__init__(pre_grouped_coder, post_grouped_coder, windowing)
            self._compact = windowing.is_default()
            if self._compact:
                value_coder = pre_grouped_coder.value_coder()
                self._value_coder_impl = value_coder.get_impl()
                self._values_are_bytes = _bytes_coder(value_coder)
                self._compressed = False        # any value of the table stored as _Zstd

        def _encoded(self, values) -> List[bytes]:
            """Decoded values as the table keeps them: encoded (unnested), the large
            ones compressed (``_shrunk``)."""
            if not self._values_are_bytes:
                encode = self._value_coder_impl.encode
                values = [encode(v) for v in values]
            out = [_shrunk(v) if len(v) > COMPRESS_ABOVE else v for v in values]
            self._compressed = self._compressed or any(type(v) is _Zstd for v in out)
            return out

        def append(self, elements_data: bytes) -> None:
            if not self._compact:
                return super().append(elements_data)
            if self._grouped_output or getattr(self, "_read", False):
                raise RuntimeError("Grouping table append after read.")
            stream = create_InputStream(elements_data)
            left = stream.size
            decode = self._pre_grouped_coder.get_impl().decode_from_stream
            key_encode = self._key_coder.get_impl().encode
            value_encode = None if self._values_are_bytes else self._value_coder_impl.encode
            table = self._table
            above = COMPRESS_ABOVE
            while left() > 0:
                key, value = decode(stream, True).value
                if value_encode is not None:
                    value = value_encode(value)
                if len(value) > above:
                    value = _shrunk(value)
                    self._compressed = True
                table[key_encode(key)].append(value)

        def extend(self, input_buffer) -> None:
            # Beam's own merges the tables as they are: a table of Beam's own buffer
            # (decoded values) joins this one's encoded and compressed alike.
            if isinstance(input_buffer, base) and getattr(input_buffer, "_compact", False) != self._compact:
                if not (self._compact and input_buffer._windowing.is_default()):
                    raise RuntimeError("grouping buffers of different windowings cannot be merged")
                if self._grouped_output or getattr(self, "_read", False):
                    raise RuntimeError("Grouping table append after read.")
                for key, values in input_buffer._table.items():
                    self._table[key].extend(self._encoded(values))
                return None
            if getattr(input_buffer, "_compressed", False):
                self._compressed = True
            return super().extend(input_buffer)

        def _grouped(self, n: int) -> Iterator[Tuple[int, bytes]]:
            """(partition, encoded grouped elements) in pieces of about 1 MB (at most
            a bundle), key by key, from the table (which stays: a buffer may be read
            by more than one consumer)."""
            size = min(1 << 20, BUNDLE_BYTES)
            pane = windowed_value.PaneInfo(is_first=True, is_last=True,
                                           timing=windowed_value.PaneInfoTiming.ON_TIME, index=0,
                                           nonspeculative_index=0)
            in_window = GlobalWindows.windowed_value(None, timestamp=GlobalWindow().max_timestamp(),
                                                     pane_info=pane).with_value
            encode = self._post_grouped_coder.get_impl().encode_to_stream
            key_decode = self._key_coder.get_impl().decode
            value_decode = None if self._values_are_bytes else self._value_coder_impl.decode
            decompress = _zstd().decompress if self._compressed else None
            streams = [create_OutputStream() for _ in range(n)]
            for idx, (encoded_key, stored) in enumerate(self._table.items()):
                values = stored
                if decompress is not None:
                    values = [v if type(v) is bytes else decompress(v) for v in values]
                if value_decode is not None:
                    values = [value_decode(v) for v in values]
                stream = streams[idx % n]
                encode(in_window((key_decode(encoded_key), values)), stream, True)
                if stream.size() >= size:
                    yield idx % n, stream.get()
                    streams[idx % n] = create_OutputStream()
            for part, stream in enumerate(streams):
                if stream.size():
                    yield part, stream.get()

        def partition(self, n: int) -> List[List[bytes]]:
            if not self._compact:
                return super().partition(n)
            if not self._grouped_output:
                parts: List[List[bytes]] = [[] for _ in range(n)]
                for part, data in self._grouped(n):
                    parts[part].append(data)
                self._grouped_output = parts
            return self._grouped_output

        def __iter__(self) -> Iterator[bytes]:
            # One worker reads the buffer whole: the grouped elements are made as they
            # are sent, never all at once beside the table.
            if not self._compact:
                return super().__iter__()
            self._read = True
            return (data for _, data in self._grouped(1))

    return CompactGroupingBuffer


def _check_grouping_buffer(execution, fn_runner) -> Optional[str]:
    """GroupingBuffer as CompactGroupingBuffer uses it, and the two group a sample alike."""
    import collections

    from apache_beam.coders import coders
    from apache_beam.coders.coder_impl import create_OutputStream
    from apache_beam.transforms import core, window

    base = _own(execution, "GroupingBuffer")
    if not isinstance(base, type):
        return "Beam's runner has no execution.GroupingBuffer"
    why = (_lacks(base, "GroupingBuffer", "append", "extend", "partition", "copy", "__iter__")
           or _takes(base.__init__, "GroupingBuffer.__init__", "pre_grouped_coder", "post_grouped_coder", "windowing"))
    if why:
        return why
    kv = coders.TupleCoder([coders.BytesCoder(), coders.FastPrimitivesCoder()])
    grouped = coders.TupleCoder([coders.BytesCoder(), coders.IterableCoder(coders.FastPrimitivesCoder())])
    pre = coders.WindowedValueCoder(kv, coders.GlobalWindowCoder())
    post = coders.WindowedValueCoder(grouped, coders.GlobalWindowCoder())
    windowing = core.Windowing(window.GlobalWindows())
    theirs = base(pre, post, windowing)
    why = _lacks_attributes(theirs, "a GroupingBuffer", {
        "_table": collections.defaultdict, "_grouped_output": type(None), "_pre_grouped_coder": coders.Coder,
        "_post_grouped_coder": coders.Coder, "_key_coder": coders.Coder, "_windowing": core.Windowing})
    if why:
        return why
    if theirs._table.default_factory is not list:
        return "GroupingBuffer._table is not a defaultdict of lists"
    why = _check_bytes_coder()
    if why:
        return why
    # Values as the job's shuffles mostly carry them (BytesCoder: kept as they come),
    # and of a coder that encodes them again (FastPrimitivesCoder); keys of two coders.
    as_bytes = coders.FastPrimitivesCoder().get_impl().encode
    samples = [(_sample_elements(), kv, grouped)]
    for key_coder, key in ((coders.BytesCoder(), lambda k: k), (coders.VarIntCoder(), lambda k: int(k[1:]))):
        samples.append(([(key(k), as_bytes(v)) for k, v in _sample_elements()],
                        coders.TupleCoder([key_coder, coders.BytesCoder()]),
                        coders.TupleCoder([key_coder, coders.IterableCoder(coders.BytesCoder())])))
    compact = _grouping_buffer_class(base)
    for elements, kv_coder, grouped_coder in samples:
        pre = coders.WindowedValueCoder(kv_coder, coders.GlobalWindowCoder())
        post = coders.WindowedValueCoder(grouped_coder, coders.GlobalWindowCoder())
        stream = create_OutputStream()
        for kv_pair in elements:
            pre.get_impl().encode_to_stream(window.GlobalWindows.windowed_value(kv_pair), stream, True)
        data = stream.get()
        theirs, theirs_whole = base(pre, post, windowing), base(pre, post, windowing)
        ours, ours_whole = compact(pre, post, windowing), compact(pre, post, windowing)
        for buffer in (theirs, ours, ours_whole, theirs_whole):
            buffer.append(data)
        merged = compact(pre, post, windowing)      # Beam's own buffer's table joins a compact one's
        merged.append(data)
        own = base(pre, post, windowing)
        own.append(data)
        merged.extend(own)
        doubled = base(pre, post, windowing)
        doubled.append(data + data)
        if ([b"".join(p) for p in ours.partition(2)] != [b"".join(p) for p in theirs.partition(2)]
                or b"".join(ours_whole) != b"".join(theirs_whole) or b"".join(merged) != b"".join(doubled)):
            return "GroupingBuffer's grouped output differs from its compact copy's on a sample"
        if not any(type(v) is _Zstd for vs in ours._table.values() for v in vs):
            return "the compact GroupingBuffer compressed no value of a sample"
    return None


def _compact_grouping_buffer(execution, fn_runner) -> None:
    _replace(execution, "GroupingBuffer", _grouping_buffer_class(execution.GroupingBuffer))


def _list_buffer_class(base):
    class CompactListBuffer(base):
        """Beam's ListBuffer (a stage's output held for the next stage: a Flatten of
        several stages' outputs, a side input, deferred work) with each piece of
        encoded elements compressed as it arrives and expanded as it is read."""

        def copy(self) -> "CompactListBuffer":
            new = CompactListBuffer(self._coder_impl)
            new._inputs = list(self._inputs)
            return new

        def append(self, element: bytes) -> None:
            super().append(_pack(element))

        def extend(self, extra) -> None:
            if self.cleared:
                raise RuntimeError("Trying to append to a cleared ListBuffer.")
            if self._grouped_output:
                raise RuntimeError("ListBuffer append after read.")
            if isinstance(extra, CompactListBuffer):
                self._inputs.extend(extra._inputs)      # packed alike
            else:                                       # Beam's own ListBuffer: its pieces as they are
                self._inputs.extend(_pack(x) for x in extra._inputs)

        def partition(self, n: int) -> List[List[bytes]]:
            if self.cleared:
                raise RuntimeError("Trying to partition a cleared ListBuffer.")
            if len(self._inputs) >= n or not self._inputs:
                return [[_unpack(x) for x in self._inputs[k::n]] for k in range(n)]
            if not self._grouped_output:
                packed = self._inputs
                self._inputs = [_unpack(x) for x in packed]
                try:
                    super().partition(n)         # Beam's element-by-element split, cached
                finally:
                    self._inputs = packed
            return self._grouped_output

        def __iter__(self) -> Iterator[bytes]:
            if self.cleared:
                raise RuntimeError("Trying to iterate through a cleared ListBuffer.")
            return (_unpack(x) for x in self._inputs)

    return CompactListBuffer


def _check_list_buffer(execution, fn_runner) -> Optional[str]:
    """ListBuffer as CompactListBuffer uses it (the class fn_runner makes too), and the
    two hand out a sample alike."""
    from apache_beam.coders import coders
    from apache_beam.transforms import window

    base = _own(execution, "ListBuffer")
    if not isinstance(base, type):
        return "Beam's runner has no execution.ListBuffer"
    if _own(fn_runner, "ListBuffer") is not base:
        return "fn_runner.ListBuffer is not execution.ListBuffer"
    why = (_lacks(base, "ListBuffer", "append", "extend", "partition", "copy", "clear", "reset", "__iter__")
           or _takes(base.__init__, "ListBuffer.__init__", "coder_impl"))
    if why:
        return why
    impl = coders.WindowedValueCoder(coders.FastPrimitivesCoder(), coders.GlobalWindowCoder()).get_impl()
    theirs = base(impl)
    why = _lacks_attributes(theirs, "a ListBuffer", {"_inputs": list, "_grouped_output": type(None),
                                                      "cleared": bool, "_coder_impl": object})
    if why:
        return why
    pieces = [b"".join(impl.encode_nested(window.GlobalWindows.windowed_value(e)) for e in _sample_elements()[k:])
              for k in range(3)]
    compact = _list_buffer_class(base)
    ours, one_theirs, one_ours = compact(impl), base(impl), compact(impl)
    for piece in pieces:
        theirs.append(piece)
        ours.append(piece)
    one_theirs.append(pieces[0])
    one_ours.append(pieces[0])
    joined = compact(impl)
    joined.extend(ours)
    joined.extend(theirs)
    if (list(ours) != pieces or ours.partition(2) != theirs.partition(2) or list(ours.copy()) != pieces
            or one_ours.partition(3) != one_theirs.partition(3) or list(joined) != pieces + pieces):
        return "ListBuffer hands out a sample otherwise than its compact copy"
    ours.clear()
    ours.reset()
    if ours.cleared or list(ours):
        return "ListBuffer.clear and reset do not empty it for reuse"
    return None


def _compact_list_buffer(execution, fn_runner) -> None:
    compact = _list_buffer_class(execution.ListBuffer)
    _replace(execution, "ListBuffer", compact)
    _replace(fn_runner, "ListBuffer", compact)


PROCESS_BUNDLE = ("inputs", "expected_outputs", "fired_timers", "expected_output_timers", "dry_run")


def _check_bundle_manager(manager, label: str, **context) -> Optional[str]:
    """A bundle manager class whose process_bundle takes PROCESS_BUNDLE and whose
    instances keep their bundle context manager as ``bundle_context_manager``."""
    if not isinstance(manager, type):
        return f"Beam's runner has no fn_runner.{label}"
    why = _takes(_own(manager, "process_bundle"), f"{label}.process_bundle", *PROCESS_BUNDLE)
    if why:
        return why
    import types
    context_manager = types.SimpleNamespace(**context)
    if getattr(manager(context_manager), "bundle_context_manager", None) is not context_manager:
        return f"a {label} keeps no bundle_context_manager"
    return None


def _lacks_fields(message, label: str, *names: str) -> Optional[str]:
    missing = [n for n in names if n not in message.DESCRIPTOR.fields_by_name]
    return f"{label} has no field {', '.join(missing)}" if missing else None


def _check_parallel_residuals(execution, fn_runner) -> Optional[str]:
    from apache_beam.portability.api import beam_fn_api_pb2

    single, parallel = _own(fn_runner, "BundleManager"), _own(fn_runner, "ParallelBundleManager")
    if not (isinstance(single, type) and isinstance(parallel, type) and issubclass(parallel, single)):
        return "Beam's runner has no BundleManager with a ParallelBundleManager under it"
    own_process = _own(parallel, "process_bundle")
    why = (_check_bundle_manager(single, "BundleManager")
           or _check_bundle_manager(parallel, "ParallelBundleManager", num_workers=2)
           or _lacks_fields(beam_fn_api_pb2.ProcessBundleResponse, "ProcessBundleResponse", "residual_roots"))
    if why:
        return why
    if "BundleManager" not in _names(own_process) or "process_bundle" not in _names(own_process):
        return "ParallelBundleManager.process_bundle does not run its workers' bundles with BundleManager"
    return None


def _parallel_residuals(execution, fn_runner) -> None:
    single, parallel = fn_runner.BundleManager, fn_runner.ParallelBundleManager
    single_process, parallel_process = single.process_bundle, parallel.process_bundle
    collecting: Dict[int, list] = {}          # id(bundle context) -> residuals of its workers' bundles
    lock = threading.Lock()

    def process_one(self, *args, **kwargs):
        result, splits = single_process(self, *args, **kwargs)
        with lock:
            sink = collecting.get(id(self.bundle_context_manager))
            if sink is not None:
                sink.extend(result.process_bundle.residual_roots)
        return result, splits

    def process_parallel(self, *args, **kwargs):
        key = id(self.bundle_context_manager)
        with lock:
            collecting[key] = []
        try:
            merged, splits = parallel_process(self, *args, **kwargs)
        finally:
            with lock:
                residuals = collecting.pop(key)
        del merged.process_bundle.residual_roots[:]
        merged.process_bundle.residual_roots.extend(residuals)
        return merged, splits

    _replace(single, "process_bundle", process_one)
    _replace(parallel, "process_bundle", process_parallel)


def _pieces(data: Iterable[bytes], limit: int) -> Iterator[List[bytes]]:
    """Encoded elements in lists of about ``limit`` bytes (whole pieces, as given)."""
    piece: List[bytes] = []
    size = 0
    for chunk in data:
        piece.append(chunk)
        size += len(chunk)
        if size >= limit:
            yield piece
            piece, size = [], 0
    if piece:
        yield piece


def _check_bounded_bundles(execution, fn_runner) -> Optional[str]:
    from apache_beam.metrics import monitoring_infos
    from apache_beam.portability.api import beam_fn_api_pb2

    if not callable(getattr(monitoring_infos, "consolidate", None)):
        return "Beam has no monitoring_infos.consolidate"
    return (_check_bundle_manager(_own(fn_runner, "BundleManager"), "BundleManager")
            or _lacks_fields(beam_fn_api_pb2.InstructionResponse, "InstructionResponse", "instruction_id",
                             "process_bundle", "error")
            or _lacks_fields(beam_fn_api_pb2.ProcessBundleResponse, "ProcessBundleResponse", "monitoring_infos",
                             "residual_roots"))


def _bounded_bundles(execution, fn_runner) -> None:
    from apache_beam.metrics import monitoring_infos
    from apache_beam.portability.api import beam_fn_api_pb2

    manager = fn_runner.BundleManager
    inner = manager.process_bundle         # with the residual fix (installed first)

    def process_bounded(self, inputs, expected_outputs, fired_timers, expected_output_timers, dry_run=False):
        """One bundle per ``BUNDLE_BYTES`` of a stage's single data input, one after
        the other, so the runner never holds more than that of it in its in-memory
        data channel (Beam sends a bundle's whole input there before it starts),
        nor more than one piece's outputs. A bundle is any subset of the input in
        Beam's model; timers and several inputs go as one bundle, as before."""
        if dry_run or fired_timers or len(inputs) != 1:
            return inner(self, inputs, expected_outputs, fired_timers, expected_output_timers, dry_run)
        (name, data), = inputs.items()
        pieces = _pieces(data, BUNDLE_BYTES)
        first = next(pieces, [])
        second = next(pieces, None)
        if second is None:
            return inner(self, {name: first}, expected_outputs, fired_timers, expected_output_timers, dry_run)
        merged, all_splits, residuals, infos = None, [], [], []
        for piece in itertools.chain([first, second], pieces):
            result, splits = inner(self, {name: piece}, expected_outputs, fired_timers, expected_output_timers,
                                   dry_run)
            all_splits += splits
            residuals.extend(result.process_bundle.residual_roots)
            infos.append(result.process_bundle.monitoring_infos)
            merged = result
        response = beam_fn_api_pb2.InstructionResponse(
            instruction_id=merged.instruction_id,
            process_bundle=beam_fn_api_pb2.ProcessBundleResponse(
                monitoring_infos=monitoring_infos.consolidate(itertools.chain(*infos)),
                residual_roots=residuals),
            error=merged.error)
        return response, all_splits

    _replace(manager, "process_bundle", process_bounded)
