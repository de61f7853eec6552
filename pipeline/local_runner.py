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
   same: the same coders encode the same values in the same order.

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

``install()`` applies all four; each is skipped, with the reason returned, on a Beam
whose runner lacks what it replaces. It also has glibc's allocator hand freed
memory back (``return_freed_memory``).
"""

from __future__ import annotations

import itertools
import threading
from typing import Dict, Iterable, Iterator, List, Tuple

COMPRESS_ABOVE = 256      # bytes: smaller encodings (ids, counts, short rows) gain little from compressing
BUNDLE_BYTES = 8 << 20    # encoded input of one bundle of the local runner (32 MB before; see return_freed_memory)
# glibc's thresholds for the local runner's processes (what they do: return_freed_memory).
# Lower ones cost CPU: at 128 KB both, every page-sized string and every zlib or parser
# state was a fresh mapping, its pages faulted in anew (about 10% more CPU on 1,000 pages).
MMAP_THRESHOLD = 4 << 20
TRIM_THRESHOLD = 16 << 20
COMPRESS_LEVEL = 1        # zstd: on web pages 3x zlib level 1's speed both ways, and smaller
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
    return _zstd().decompress(packed[1:]) if packed[:1] == _ZSTD else packed[1:]


_originals: List[Tuple[object, str, object]] = []   # (owner, name, Beam's own), in the order replaced
_installed = ""


def _replace(owner, name: str, new) -> None:
    _originals.append((owner, name, getattr(owner, name)))
    setattr(owner, name, new)


def install() -> str:
    """Apply the changes to the local runner of this process; returns what was done."""
    global _installed
    if _originals:
        return _installed
    try:
        from apache_beam.runners.portability.fn_api_runner import execution, fn_runner
    except ImportError as exc:
        return f"not installed: {exc}"
    done = []
    for name, patch in (("compact shuffle buffers", _compact_grouping_buffer),
                        ("compact stage buffers", _compact_list_buffer),
                        ("residuals of parallel bundles", _parallel_residuals),
                        ("bundles of at most %d MB" % (BUNDLE_BYTES >> 20), _bounded_bundles)):
        why = patch(execution, fn_runner)
        done.append(name if why is None else f"{name} not installed ({why})")
    done.append(return_freed_memory())
    _installed = "; ".join(done)
    return _installed


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
    while _originals:
        owner, name, old = _originals.pop()
        setattr(owner, name, old)


def _compact_grouping_buffer(execution, fn_runner):
    from apache_beam.coders.coder_impl import create_InputStream, create_OutputStream
    from apache_beam.transforms.window import GlobalWindow, GlobalWindows
    from apache_beam.utils import windowed_value

    base = getattr(execution, "GroupingBuffer", None)
    if base is None or not all(hasattr(base, n) for n in ("append", "extend", "partition", "copy")):
        return "this Beam's runner has no GroupingBuffer of the expected shape"

    class CompactGroupingBuffer(base):
        """Beam's GroupingBuffer with each value kept encoded (and compressed when
        large) until the grouped output is produced; default windowing only, the
        rest is left to Beam's own code."""

        def __init__(self, pre_grouped_coder, post_grouped_coder, windowing) -> None:
            super().__init__(pre_grouped_coder, post_grouped_coder, windowing)
            self._compact = windowing.is_default()
            if self._compact:
                self._value_coder_impl = pre_grouped_coder.value_coder().get_impl()

        def append(self, elements_data: bytes) -> None:
            if not self._compact:
                return super().append(elements_data)
            if self._grouped_output or getattr(self, "_read", False):
                raise RuntimeError("Grouping table append after read.")
            stream = create_InputStream(elements_data)
            coder_impl = self._pre_grouped_coder.get_impl()
            key_impl = self._key_coder.get_impl()
            value_impl = self._value_coder_impl
            table = self._table
            while stream.size() > 0:
                key, value = coder_impl.decode_from_stream(stream, True).value
                table[key_impl.encode(key)].append(_pack(value_impl.encode(value)))

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
            coder_impl = self._post_grouped_coder.get_impl()
            key_impl = self._key_coder.get_impl()
            value_impl = self._value_coder_impl
            streams = [create_OutputStream() for _ in range(n)]
            for idx, (encoded_key, packed) in enumerate(self._table.items()):
                values = [value_impl.decode(_unpack(v)) for v in packed]
                stream = streams[idx % n]
                coder_impl.encode_to_stream(in_window((key_impl.decode(encoded_key), values)), stream, True)
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

    _replace(execution, "GroupingBuffer", CompactGroupingBuffer)
    return None


def _compact_list_buffer(execution, fn_runner):
    base = getattr(execution, "ListBuffer", None)
    if base is None or getattr(fn_runner, "ListBuffer", None) is not base or not all(
            hasattr(base, n) for n in ("append", "extend", "partition", "copy", "clear", "reset")):
        return "this Beam's runner has no ListBuffer of the expected shape"

    class CompactListBuffer(base):
        """Beam's ListBuffer (a stage's output held for the next stage: a Flatten of
        several stages' outputs, a side input, deferred work) with each piece of
        encoded elements compressed as it arrives and expanded as it is read."""

        def append(self, element: bytes) -> None:
            super().append(_pack(element))

        def extend(self, extra) -> None:
            if self.cleared:
                raise RuntimeError("Trying to append to a cleared ListBuffer.")
            if self._grouped_output:
                raise RuntimeError("ListBuffer append after read.")
            self._inputs.extend(extra._inputs)      # pieces of another CompactListBuffer: packed alike

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

    _replace(execution, "ListBuffer", CompactListBuffer)
    _replace(fn_runner, "ListBuffer", CompactListBuffer)
    return None


def _parallel_residuals(execution, fn_runner):
    single = getattr(fn_runner, "BundleManager", None)
    parallel = getattr(fn_runner, "ParallelBundleManager", None)
    if single is None or parallel is None or not hasattr(parallel, "process_bundle"):
        return "this Beam's runner has no ParallelBundleManager"
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
    return None


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


def _bounded_bundles(execution, fn_runner):
    try:
        from apache_beam.metrics import monitoring_infos
        from apache_beam.portability.api import beam_fn_api_pb2
    except ImportError as exc:
        return str(exc)
    manager = getattr(fn_runner, "BundleManager", None)
    if manager is None or not hasattr(manager, "process_bundle"):
        return "this Beam's runner has no BundleManager"
    inner = manager.process_bundle         # with the residual fix when that is installed

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
    return None
