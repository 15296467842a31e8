"""How fast this machine is right now: a fixed workload timed on every core at once.

    python benchmarks/probe.py [--repeat 3]

A benchmark's wall time on a shared virtual machine moves with the machine as much as with the code: on
the machine these benchmarks were measured on, the same cycle on the same data took 53-57 s in some hours
and 70-97 s in others, using 45-80 % more CPU time for the same work (docs/performance.md). This probe
runs the same small workload (~1 s at that machine's normal speed) in one process per core, all at once,
and prints how long each part took, so that a benchmark's figures can be read against the speed of the
machine at that moment. ``benchmarks/cycle.py`` runs it before and after its full cycle.

The parts are the kinds of work the nightly cycle does:

- ``python``: formatting strings and building dicts (the report pages, triggers.json),
- ``numpy``: element-wise arithmetic over arrays larger than the caches, and a sort (the panels, the fits),
- ``memory``: fresh memory touched page by page, so mostly the kernel's page faults (every new block).

Each part's figure is the slowest process's wall time for it. The same workload on the same machine
should give the same figures; a part that is 40 % slower than usual means the machine is, whatever the
code under test does.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import time


def _python() -> None:
    rows = [{"day": i, "label": f"day {i}", "risk": i / 7.0} for i in range(300_000)]
    cells = [f'<rect x="{r["day"] % 53 * 14}" y="{r["day"] // 53 % 7 * 14}"><title>{r["label"]}: '
             f'{r["risk"]:.2f}</title></rect>' for r in rows]
    "".join(cells)
    json.dumps(rows[:100_000])


def _numpy() -> None:
    import numpy as np

    rng = np.random.default_rng(0)
    a = rng.random(8_000_000)
    for _ in range(6):
        b = np.exp(-a) * a + np.sqrt(a)
        a = b / b.max()
    np.sort(rng.random(1_000_000))


def _memory() -> None:
    import numpy as np

    for _ in range(2):
        # 1 MiB arrays: each its own mapping (numpy asks for huge pages only from 4 MiB), every page a fault
        bufs = [np.ones(2**17) for _ in range(200)]
        del bufs


PARTS = {"python": _python, "numpy": _numpy, "memory": _memory}


def _worker(start, out) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import numpy  # noqa: F401  (imported here so its import is not timed)

    start.wait()  # every process has imported numpy: they begin together
    times = {}
    for name, fn in PARTS.items():
        t = time.perf_counter()
        fn()
        times[name] = time.perf_counter() - t
    out.put(times)


def probe(processes: int | None = None) -> dict[str, float]:
    """Run the workload in ``processes`` processes at once (default: one per core); each part's slowest
    wall time in seconds, and ``total``."""
    n = processes or os.cpu_count() or 1
    ctx = mp.get_context("spawn")
    start, out = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(start, out)) for _ in range(n)]
    for p in procs:
        p.start()
    results = [out.get() for _ in procs]
    for p in procs:
        p.join()
    worst = {name: max(r[name] for r in results) for name in PARTS}
    worst["total"] = max(sum(r.values()) for r in results)
    return {k: round(v, 3) for k, v in worst.items()}


def describe(result: dict[str, float]) -> str:
    return f"{result['total']:.2f} s (" + ", ".join(f"{k} {result[k]:.2f}" for k in PARTS) + ")"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--processes", type=int, default=0, help="0: one per core")
    args = ap.parse_args()
    for _ in range(args.repeat):
        r = probe(args.processes or None)
        print(time.strftime("%H:%M:%S"), describe(r), json.dumps(r), flush=True)


if __name__ == "__main__":
    main()
