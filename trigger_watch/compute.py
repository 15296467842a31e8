"""Where the per-patient work runs: this machine's cores, or a Dask cluster.

``[compute] scheduler`` empty runs the work here: serially for a small batch, else in ``[compute] workers``
local processes (joblib's loky backend; 0 = one per core). ``scheduler = "tcp://host:8786"`` sends it to a
Dask scheduler (``dask.distributed``, the optional ``dask`` extra) and its workers. Either way a task is a
plain function of picklable arguments that returns picklable results, so what a task computes cannot depend
on where it ran: the reports of both backends are identical (``tests/test_compute.py``).

A worker needs the ``trigger_watch`` package and write access to the reports folder; the database stays
with the caller (tasks receive the data they need and return rows for the caller to store).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from trigger_watch.errors import ConfigError

#: Fewer items than this run serially in the calling process: a pool of fresh worker processes costs 2-3 s
#: to start (each imports pandas, scikit-learn and the package): about what 250 patients' reports take here.
MIN_PARALLEL = 250


def local_workers(config) -> int:
    """``[compute] workers``, with 0 meaning one per core."""
    n = int(config.values.get("compute.workers", 0) or 0)
    return n if n > 0 else (os.cpu_count() or 1)


class Executor:
    """Runs ``fn(item)`` for each item and yields the results in the order of the items.

    ``kind`` is ``serial``, ``local`` (processes on this machine) or ``dask``; ``workers`` the number of
    workers the results came from (for logs and the benchmark).
    """

    kind = "serial"
    workers = 1

    def map(self, fn: Callable[[Any], Any], items: Iterable[Any]) -> Iterator[Any]:
        for item in items:
            yield fn(item)

    def start(self, modules: tuple[str, ...]) -> Callable[[], None]:
        """Get the workers ready to run tasks from ``modules`` while the caller does other work; returns what
        waits until they are (call it before the first :meth:`map`). Here: nothing to do."""
        return lambda: None

    def close(self) -> None:
        pass


class LocalExecutor(Executor):
    kind = "local"

    def __init__(self, workers: int):
        self.workers = workers

    def map(self, fn, items):
        from joblib import Parallel, delayed

        # A generator both ways: items are dispatched a few at a time (so a caller's generator can stop
        # dispatching) and results come back in order as they finish.
        parallel = Parallel(n_jobs=self.workers, backend="loky", return_as="generator",
                            pre_dispatch="2*n_jobs")
        task = _TrimOnNewStage(fn)
        yield from parallel(delayed(task)(item) for item in items)

    def start(self, modules: tuple[str, ...]) -> Callable[[], None]:
        """Start the worker processes and import ``modules`` in each, on a thread. A fresh worker takes
        ~1-1.2 s to start and import pandas, scikit-learn and the package (2-2.5 s on this machine at half
        speed): begun before the caller's own reading (the cohort's columns, the weather cache), the two
        overlap instead of following each other. One task per worker; each takes at least a tenth of a
        second, so that no worker takes two (where the workers are already up and the imports cost nothing)."""
        import threading

        from joblib import Parallel, delayed

        def run() -> None:
            try:
                Parallel(n_jobs=self.workers, backend="loky")(
                    delayed(_import_modules)(modules, os.getpid()) for _ in range(self.workers))
            except Exception:  # noqa: BLE001, S110 -- a worker that cannot start fails the first map, which says why
                pass

        thread = threading.Thread(target=run, name="workers-start", daemon=True)
        thread.start()
        return thread.join


class Background:
    """``fn(*args, **kwargs)`` run on a thread of its own; :meth:`result` waits for it and returns what it
    returned or raises what it raised. A daemon thread: unlike a ``ThreadPoolExecutor``'s, it does not hold
    the process back when the caller gives up on it (Ctrl-C while the workers validate exits at once)."""

    def __init__(self, fn: Callable[..., Any], *args: Any, name: str = "background", **kwargs: Any):
        import threading

        self._outcome: tuple[bool, Any] | None = None
        self._thread = threading.Thread(target=self._run, args=(fn, args, kwargs), name=name, daemon=True)
        self._thread.start()

    def _run(self, fn, args, kwargs) -> None:
        try:
            self._outcome = (True, fn(*args, **kwargs))
        except BaseException as exc:  # noqa: BLE001 -- handed to the caller by result()
            self._outcome = (False, exc)

    def done(self) -> bool:
        return not self._thread.is_alive()

    def result(self) -> Any:
        self._thread.join()
        ok, value = self._outcome
        if not ok:
            raise value
        return value


def _import_modules(modules: tuple[str, ...], owner: int) -> int:
    """A worker's warm-up task (:meth:`LocalExecutor.start`): import ``modules``; returns the worker's pid.
    ``owner``: the pid of the process that started the workers (:func:`ignore_interrupt`)."""
    import importlib
    import time

    start = time.perf_counter()
    ignore_interrupt(owner)
    for name in modules:
        importlib.import_module(name)
    time.sleep(max(0.0, 0.1 - (time.perf_counter() - start)))
    return os.getpid()


class _TrimOnNewStage:
    """``fn`` in a worker, after handing back the heap (:func:`release_memory`) when the worker's last
    task was another function's: a worker would otherwise keep the heap the largest task of a stage grew to
    through the next stages, next to the daemon's, and the cycle's peak is their sum. Between two tasks of
    the same function the heap is kept: the next one grows it to about the same size again, and faulting
    those pages back in cost more than the trim saved (reading and reducing 8 blocks of 250 patients: 1.6 s
    of kernel time with a trim after each block, 0.6 s without; the 10,000-patient cycle used ~5 s less
    CPU, its peak the same). A worker's first task first tells glibc to keep the heap (:func:`keep_heap`)."""

    def __init__(self, fn: Callable[[Any], Any]):
        self.fn = fn
        self.owner = os.getpid()  # the process that made the task (:func:`ignore_interrupt`)

    def __call__(self, item: Any) -> Any:
        kind = getattr(self.fn, "__qualname__", repr(self.fn))
        if "kind" not in _LAST_TASK:
            keep_heap()
            ignore_interrupt(self.owner)
        elif _LAST_TASK["kind"] != kind:
            release_memory()
        _LAST_TASK["kind"] = kind
        return self.fn(item)


def ignore_interrupt(owner: int) -> None:
    """A local worker ignores SIGINT. Ctrl-C in a terminal signals the whole foreground process group: the
    workers raised KeyboardInterrupt in their tasks, so a daemon run in a terminal printed their tracebacks
    and the cycle failed instead of finishing the current patient and stopping (what it does on SIGTERM).
    The parent still gets it and stops them (its executor ends them, or they end with it). A task run in
    ``owner``, the process that made it (joblib running it in place, a test), leaves its SIGINT alone: that
    process must still stop on Ctrl-C."""
    import signal
    import threading

    if os.getpid() != owner and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)


#: This worker process's last task's function (:class:`_TrimOnNewStage`).
_LAST_TASK: dict[str, str] = {}


def release_memory() -> None:
    """Hand the memory freed inside the C heap back to the system (glibc's ``malloc_trim``; nothing where
    there is none). Large numpy buffers return by themselves; the many small blocks of a frame or of pickled
    results stay in the heap, counted in the process's resident size, until trimmed."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    return libc("malloc_trim")


#: glibc's ``mallopt`` parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
#: Buffers up to this size come from the heap, not from a mapping of their own (glibc's largest allowed).
HEAP_BUFFERS_UP_TO = 32 * 2**20
#: Free memory at the heap's top is handed back by itself only beyond this; a new stage trims it anyway.
HEAP_KEPT_UP_TO = 2**30


def keep_heap() -> None:
    """Let a worker reuse the memory its tasks free instead of handing it back and faulting it in again.

    glibc maps a buffer above its mmap threshold (128 KiB, rising with the largest buffer freed, to at most
    32 MiB) separately and unmaps it on free, and hands the heap's top back once more than twice that is
    free: a block's frames, a few MiB each, were mapped and faulted in page by page on every task. With the
    threshold at its largest and the top kept (a new stage still trims it, :class:`_TrimOnNewStage`),
    reading and reducing 8 blocks of 250 patients faulted in 43-52 thousand pages instead of 87-128
    thousand, and in the 10,000-patient cycle the fit and the validation spent ~1.5 s less CPU in the kernel,
    its peak up to 40 MiB higher (docs/performance-history.md, eleventh round). Nothing where there is no glibc."""
    mallopt = libc("mallopt")
    if mallopt is not None:
        mallopt(_M_MMAP_THRESHOLD, HEAP_BUFFERS_UP_TO)
        mallopt(_M_TRIM_THRESHOLD, HEAP_KEPT_UP_TO)


def libc(name: str) -> Callable[..., int] | None:
    """The C library's function ``name`` (``ctypes``, errno kept for ``ctypes.get_errno``), or None where
    the library or the function is not there."""
    return getattr(_c_library(), name, None)


@functools.cache
def _c_library():
    import ctypes

    try:
        return ctypes.CDLL(None, use_errno=True)  # the process's own symbols: glibc, musl or another libc
    except OSError:
        return None


class DaskExecutor(Executor):
    kind = "dask"

    def __init__(self, address: str):
        try:
            from distributed import Client
        except ImportError:
            raise ConfigError(
                f"[compute] scheduler = {address!r} needs dask.distributed; install it with "
                "`pip install 'trigger-watch[dask]'` or leave the setting empty to run on this machine"
            ) from None
        try:
            self.client = Client(address, timeout=30)
        except OSError as exc:
            raise ConfigError(f"cannot reach the Dask scheduler at {address!r} ([compute] scheduler): {exc}; "
                              "is `dask scheduler` running there and the port open?") from None
        self.workers = max(1, len(self.client.scheduler_info(n_workers=-1).get("workers", {})))

    def map(self, fn, items):
        from distributed import as_completed

        # Keep twice as many tasks in flight as there are workers, submitting lazily, so a caller's
        # generator that stops yielding (a stop request) stops the submissions.
        items = iter(items)
        in_flight: dict = {}  # future -> position
        done: dict[int, Any] = {}
        submitted = returned = 0

        def submit() -> bool:
            nonlocal submitted
            for item in items:
                in_flight[self.client.submit(fn, item, pure=False)] = submitted
                submitted += 1
                return True
            return False

        for _ in range(2 * self.workers):
            if not submit():
                break
        if not in_flight:
            return
        finished = as_completed(list(in_flight))
        for fut in finished:
            done[in_flight.pop(fut)] = fut.result()
            fut.release()
            before = submitted
            if submit():
                finished.add(next(f for f, i in in_flight.items() if i == before))
            while returned in done:
                yield done.pop(returned)
                returned += 1

    def close(self) -> None:
        self.client.close()


def make_executor(config, n_items: int) -> Executor:
    """The executor ``config`` asks for, for a batch of ``n_items`` items."""
    address = str(config.values.get("compute.scheduler", "") or "").strip()
    if n_items <= 0:
        return Executor()
    if address:
        if "://" not in address:
            raise ConfigError(f"[compute] scheduler = {address!r} is not an address; use tcp://host:8786, "
                              "or leave it empty to run on this machine")
        return DaskExecutor(address)
    workers = min(local_workers(config), n_items)
    if n_items < MIN_PARALLEL or workers <= 1:
        return Executor()
    return LocalExecutor(workers)


@contextmanager
def executor(config, n_items: int) -> Iterator[Executor]:
    ex = make_executor(config, n_items)
    try:
        yield ex
    finally:
        ex.close()


def chunks(items: list, n_workers: int, *, size: int | None = None, max_size: int = 500) -> list[list]:
    """Split ``items`` into chunks: about four per worker so the load evens out, at most ``max_size`` each."""
    if not items:
        return []
    size = size or max(1, min(max_size, -(-len(items) // (4 * max(1, n_workers)))))
    return [items[i:i + size] for i in range(0, len(items), size)]
