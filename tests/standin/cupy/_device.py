"""Streams, memory pools and CUDA-graph capture for the CuPy stand-in, under CUDA's rules.

What the rules are (CUDA's stream capture, as CuPy 14 exposes it: cupy/cuda/stream.pyx
`begin_capture` / `end_capture`, cupy/cuda/graph.pyx `Graph.launch`, cupy/cuda/memory.pyx):

* Between `stream.begin_capture()` and `stream.end_capture()` the work issued to the stream is
  recorded into a graph, not run: the stand-in runs each operation (it needs the results' shapes)
  and records how to run it again into the same arrays; at end_capture every array that existed
  before the capture gets back the contents it had, and every array made during the capture
  holds NaN (its contents on a device would be whatever the memory held). `graph.launch()` runs
  the recorded work on the same arrays: one launch.
* During a capture, what CUDA refuses raises as CuPy raises it, and the capture is then
  invalidated (end_capture raises): a read to the host or an upload ("the current stream is
  capturing, so D2H / H2D transfers are disallowed"), a synchronize, and loading a kernel that has
  not run before (drivers before CUDA 12.3 cannot load a module during a capture), or making the
  cuBLAS handle, which the first product does. Capturing the legacy null stream raises.
* Allocation during a capture is allowed (`begin_capture` defaults to relaxed mode), from the
  current allocator: the default pool, or a pool of the caller's own (`using_allocator`).
  CuPy's pool hands a freed block to the next allocation on the same stream from the same pool.
  So a replay raises when an array the graph touches has been freed since and its stream and
  pool have allocated again, other than during this graph's capture: on a device the graph would
  write memory that belongs to someone else now.
"""

import contextlib
import itertools
import weakref

import numpy as np


class CUDARuntimeError(RuntimeError):
    """cupy.cuda.runtime.CUDARuntimeError."""


class Stream:
    """cupy.cuda.Stream: a context (`with stream:` makes it current), and capture."""

    def __init__(self, null=False, non_blocking=False, ptds=False):
        self.null = null

    def __enter__(self):
        STATE.streams.append(self)
        return self

    def __exit__(self, *exc):
        STATE.streams.pop()
        return False

    def synchronize(self):
        refuse_while_capturing("synchronous API calls")

    def use(self):
        STATE.streams[:] = [self]
        return self

    def begin_capture(self, mode=None):
        if self.null:
            raise CUDARuntimeError("cudaErrorStreamCaptureUnsupported: operation not permitted "
                                   "when stream is capturing (the legacy null stream cannot "
                                   "be captured)")
        if STATE.capture is not None:
            raise CUDARuntimeError("cudaErrorIllegalState: a capture is already under way")
        STATE.capture = Capture(self)

    def end_capture(self):
        capture = STATE.capture
        if capture is None or capture.stream is not self:
            raise CUDARuntimeError("cudaErrorIllegalState: this stream is not capturing")
        STATE.capture = None
        capture.undo()
        if capture.broken:
            raise CUDARuntimeError(f"cudaErrorStreamCaptureInvalidated: {capture.broken}")
        return Graph(capture)

    def is_capturing(self):
        return STATE.capture is not None and STATE.capture.stream is self

    def launch_host_func(self, callback, arg):
        refuse_while_capturing("host functions")
        callback(arg)


class MemoryPool:
    """cupy.cuda.MemoryPool (and the default pool): where an allocation comes from."""

    def malloc(self, size):
        return size

    def used_bytes(self):
        return 0

    def total_bytes(self):
        return 0

    def free_all_blocks(self, stream=None):
        pass


class Memory:
    """The memory behind a device array and every view of it: its stream and pool, and the
    NumPy array that holds the numbers."""

    __slots__ = ("array", "stream", "pool", "made_in", "__weakref__")

    def __init__(self, array):
        self.array = array
        self.stream, self.pool = current_stream(), STATE.pool
        self.made_in = STATE.capture
        if not STATE.replaying:
            STATE.clock += 1
            owner = STATE.capture.id if STATE.capture is not None else None
            STATE.allocations[(id(self.stream), id(self.pool), owner)] = STATE.clock


class State:
    def __init__(self):
        self.streams = []
        self.null = Stream(null=True)
        self.default_pool = self.pool = MemoryPool()
        self.capture = None
        self.replaying = False
        self.loaded = set()              # kernels that have run (their modules are loaded)
        self.clock = 0                   # counts allocations and frees
        self.allocations = {}            # (stream, pool, capturing graph or None) -> clock
        self.count_launch = lambda what: None      # the stand-in's launch counter


STATE = State()
_ids = itertools.count(1)


def current_stream():
    return STATE.streams[-1] if STATE.streams else STATE.null


@contextlib.contextmanager
def using_allocator(allocator=None):
    """cupy.cuda.using_allocator: allocations inside come from the allocator's pool."""
    saved = STATE.pool
    STATE.pool = getattr(allocator, "__self__", None) or STATE.default_pool
    try:
        yield
    finally:
        STATE.pool = saved


def recording():
    """True while the current stream is being captured."""
    return STATE.capture is not None and current_stream() is STATE.capture.stream


def refuse_while_capturing(what, error=RuntimeError):
    """Raise as CuPy does for `what` on a capturing stream, and invalidate the capture."""
    if recording():
        message = f"the current stream is capturing, so {what} are disallowed"
        STATE.capture.broken = message
        raise error(message)


def kernel(key, rerun, arrays):
    """One kernel (or library call) issued: run on the spot, or recorded during a capture.
    key: what must have been loaded before (a kernel by name and argument types, or "cublas");
    rerun: runs it again into the same arrays; arrays: the NumPy arrays it reads or writes,
    with the Memory each lives in. Returns True when it ran as a launch to count."""
    if STATE.replaying:
        return False
    if not recording():
        STATE.loaded.add(key)
        return True
    capture = STATE.capture
    if key not in STATE.loaded:
        what = ("the cuBLAS handle made" if key == "cublas"
                else f"the kernel {key[0]} loaded for the first time")
        capture.broken = f"{what} during a capture (run the step once before capturing)"
        raise CUDARuntimeError(f"cudaErrorStreamCaptureUnsupported: {capture.broken}")
    for mem in arrays:
        capture.touch(mem)
    capture.work.append(rerun)
    return False


class Capture:
    def __init__(self, stream):
        self.stream, self.id = stream, next(_ids)
        self.work, self.broken = [], None
        self.saved = {}                  # id(Memory) -> (Memory, copy of its numbers)
        self.touched = {}                # id(Memory) -> [weakref, its stream, pool, freed at]
        self.made = []                   # weakrefs to the Memory made during the capture

    def touch(self, mem):
        if id(mem) in self.touched:
            return
        info = [weakref.ref(mem), id(mem.stream), id(mem.pool), None,
                f"{mem.array.dtype} {mem.array.shape}"]
        weakref.finalize(mem, _freed, info)
        self.touched[id(mem)] = info
        if mem.made_in is self:
            self.made.append(info[0])
        elif id(mem) not in self.saved:
            self.saved[id(mem)] = (mem, mem.array.copy())

    def undo(self):
        """Nothing ran: what existed gets its numbers back; what was made holds garbage."""
        for mem, numbers in self.saved.values():
            np.copyto(mem.array, numbers)
        for ref in self.made:
            mem = ref()
            if mem is not None and mem.array.dtype.kind in "fc":
                mem.array[...] = np.nan
        self.saved = {}


def _freed(info):
    STATE.clock += 1
    info[3] = STATE.clock


class Graph:
    """cupy.cuda.graph.Graph: launch() runs the captured work on the arrays it was captured
    on, as one launch."""

    def __init__(self, capture):
        self.capture = capture

    def launch(self, stream=None):
        refuse_while_capturing("graph launches")
        self._check_memory()
        STATE.replaying = True
        try:
            for rerun in self.capture.work:
                rerun()
        finally:
            STATE.replaying = False
        STATE.count_launch("graph")

    def upload(self, stream=None):
        pass

    def _check_memory(self):
        for ref, stream, pool, freed, what in self.capture.touched.values():
            if freed is None:
                continue
            for (s, p, owner), when in STATE.allocations.items():
                if s == stream and p == pool and owner != self.capture.id and when > freed:
                    raise CUDARuntimeError(
                        f"stand-in: the graph touches memory that was freed after its capture "
                        f"and may have been handed out again (an allocation on the same stream "
                        f"from the same pool since; a {what} array): keep every array the "
                        f"graph uses alive, or capture with a memory pool of the graph's own")
