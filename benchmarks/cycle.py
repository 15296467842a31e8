"""How long the nightly cycle takes for a large cohort, and how much memory it needs.

    python benchmarks/cycle.py --patients 10000 --days 365 --changed 0.01 --workdir /tmp/tw-bench

Three phases, each in its own process so one phase's memory does not show up in the next one's peak:

1. **generate**: simulate ``patients x (days + 1)`` days (``simulate.simulate_cohort``), write the import
   files (``simulate.write_files``) and import them through the public path (``importing.import_file``)
   into a fresh database. The last simulated day's diary and attacks are held back.
2. **full**: ``daemon.run_cycle(fetch=False)`` over everyone, as of the day before the held-back one,
   starting from the database as imported (no models or cycles yet). ``--validation``: ``first`` (the
   default) leaves the choice to the cycle, as on the first night (everyone never validated: all of a small
   cohort, the seventh whose night it is of a large one, ``analysis.validate_due``); ``nightly`` only the
   seventh of the cohort whose night it is (``analysis.validation_slot``), as every night after the first
   does; ``all`` everyone, as the first night did until 24 Nov 2026; ``skip`` none. ``--reports``:
   ``fresh`` (the default with ``first`` and ``all``) removes the reports folder first, as on the
   first night; ``kept`` (the default otherwise) leaves the reports the benchmark's run before wrote, to be
   rewritten, as on every later night.
3. **incremental**: a ``changed`` share of the patients (1 % by default) logs the held-back day (one diary
   row each, imported through ``import_file``), then ``run_cycle`` as of that day analyses only them.

For each phase it prints the wall time, the peak memory and, for the cycles, the pipeline's time per
stage (``AnalysisOutcome.timings``). Peak memory is the largest resident set of the phase's process plus
its worker processes, sampled every 50 ms (``/proc``, by a process of its own), next to the main process's
own high-water mark (``VmHWM``). Around the full cycle it times ``benchmarks/probe.py``'s fixed workload
(``--probe N`` times before and after; 0: not at all), so that the cycle's figures can be read against the
machine's speed at the time. ``--json FILE`` also writes the figures as JSON.
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from datetime import date, timedelta
from pathlib import Path

SEED = 20261121
PRISTINE = "imported.db"  # the database as imported, before any cycle
AS_OF = date(2026, 11, 20)  # the full cycle's last day; the incremental cycle's is the day after
CONFIG = """[storage]
database = "trigger_watch.db"
reports_dir = "reports"
models_dir = "models"

[weather]
enabled = false

[compute]
scheduler = "{scheduler}"
workers = {workers}
"""


# ------------------------------------------------------------------------------------------ memory

_PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024 if hasattr(os, "sysconf") else 4
_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _descendants(root: int, skip: int | None = None) -> list[int]:
    """``root`` and every process below it but ``skip`` (the sampler itself), from each thread's
    ``children`` list: a few small reads, where scanning all of /proc took ~10 % of a core at this sampling
    rate (from the cycle it measures)."""
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        if p == skip:
            continue
        out.append(p)
        try:
            tasks = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                with open(f"/proc/{p}/task/{tid}/children") as fh:
                    todo.extend(int(c) for c in fh.read().split())
            except OSError:
                continue
    return out


def _usage(pid: int) -> tuple[int, float, float]:
    """Resident set (KiB) and user and system CPU seconds so far of ``pid``, from one read of
    ``/proc/PID/stat`` (its ``rss`` is the same count as ``VmRSS`` of ``status``); zeros when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0, 0.0, 0.0
    return int(fields[21]) * _PAGE_KB, int(fields[11]) / _TICK, int(fields[12]) / _TICK  # rss, utime, stime


class Sampler:
    """What :class:`PeakMemory` reads, every ``every`` seconds: the resident set of process ``root`` and its
    descendants (the largest sum, when, and ``root``'s share of it) and the CPU time they have used. It runs
    in a process of its own (``cycle.py --sample PID``): a thread in the measured process took its
    interpreter's lock ~1 ms in every 50 ms, time the daemon of a real night does not lose."""

    def __init__(self, root: int, skip: int | None = None):
        self.root, self.skip = root, skip
        self.peak_kb, self.peak_at, self.peak_main_kb = 0, 0.0, 0
        self.cpu: dict[int, tuple[float, float]] = {}
        self.series: list[tuple[float, float, float]] = []  # (perf_counter, user, system) summed so far
        self.start = time.perf_counter()

    def sample(self) -> None:
        pids = _descendants(self.root, self.skip)
        usage = [_usage(p) for p in pids]
        size = sum(u[0] for u in usage)
        if size > self.peak_kb:
            self.peak_kb, self.peak_at, self.peak_main_kb = size, time.perf_counter() - self.start, usage[0][0]
        for p, (_, user, system) in zip(pids, usage):
            if user + system > sum(self.cpu.get(p, (0.0, 0.0))):
                self.cpu[p] = (user, system)
        self.series.append((time.perf_counter(), sum(u for u, _ in self.cpu.values()),
                            sum(k for _, k in self.cpu.values())))

    def result(self) -> dict:
        return {"peak_kb": self.peak_kb, "peak_at": self.peak_at, "peak_main_kb": self.peak_main_kb,
                "cpu": {str(p): list(c) for p, c in self.cpu.items()}, "series": self.series}


def run_sampler(root: int, every: float) -> None:
    """``cycle.py --sample PID``: sample until a line (or the end) arrives on stdin, then print the result as
    JSON. Prints an empty line once the first sample is taken."""
    import select

    sampler = Sampler(root, skip=os.getpid())
    sampler.sample()
    print(flush=True)
    while not select.select([sys.stdin], [], [], every)[0]:
        sampler.sample()
    sampler.sample()
    print(json.dumps(sampler.result()), flush=True)


class PeakMemory:
    """Samples the resident set of this process and its descendants (MiB) every 50 ms, from a process of its
    own (:class:`Sampler`); keeps the largest sum, when it was (seconds from the start) and this process's
    share of it. Also adds up the CPU time they used meanwhile (a worker's last 50 ms before it exits are
    missed)."""

    def __init__(self, every: float = 0.05):
        self.every, self.peak_kb, self.peak_at, self.peak_main_kb = every, 0, 0.0, 0
        self._cpu: dict[int, tuple[float, float]] = {}
        self.series: list[tuple[float, float, float]] = []

    def cpu_between(self, t0: float, t1: float) -> tuple[float, float]:
        """User and system CPU seconds used between two ``time.perf_counter()`` readings (to the nearest
        sample, 50 ms; the sampler's clock is the same, ``CLOCK_MONOTONIC``)."""
        times = [t for t, _, _ in self.series]
        a = self.series[max(bisect.bisect_left(times, t0) - 1, 0)]
        b = self.series[min(bisect.bisect_left(times, t1), len(times) - 1)]
        return b[1] - a[1], b[2] - a[2]

    def __enter__(self) -> PeakMemory:
        _, *self._cpu_before = _usage(os.getpid())
        self._proc = subprocess.Popen([sys.executable, __file__, "--sample", str(os.getpid()),
                                       "--every", str(self.every)],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self._proc.stdout.readline()  # the first sample is taken
        return self

    def __exit__(self, *exc) -> None:
        out, _ = self._proc.communicate("stop\n")
        got = json.loads(out)
        self.peak_kb, self.peak_at, self.peak_main_kb = got["peak_kb"], got["peak_at"], got["peak_main_kb"]
        self._cpu = {int(p): tuple(c) for p, c in got["cpu"].items()}
        self.series = [tuple(s) for s in got["series"]]

    @property
    def cpu_s(self) -> float:
        """CPU seconds this process and its descendants used inside the block."""
        return self.cpu_user_s + self.cpu_system_s

    @property
    def cpu_user_s(self) -> float:
        return sum(u for u, _ in self._cpu.values()) - self._cpu_before[0]

    @property
    def cpu_system_s(self) -> float:
        """The part of :attr:`cpu_s` spent in the kernel (files, memory, the database's I/O)."""
        return sum(k for _, k in self._cpu.values()) - self._cpu_before[1]

    @property
    def peak_mb(self) -> float:
        return self.peak_kb / 1024


#: The columns of /proc/stat's "cpu" line (proc(5)), in clock ticks summed over every core.
_STAT_FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


def _machine_ticks() -> dict[str, int] | None:
    """The whole machine's time so far, by what the cores did (/proc/stat); None where there is none."""
    try:
        with open("/proc/stat") as fh:
            values = fh.readline().split()[1:1 + len(_STAT_FIELDS)]
    except OSError:
        return None
    return dict(zip(_STAT_FIELDS, map(int, values)))


def _machine_split(before: dict[str, int] | None, after: dict[str, int] | None) -> dict[str, float] | None:
    """What the machine's cores did between two :func:`_machine_ticks`, as shares of all their time: ``user``
    (with nice), ``kernel`` (with interrupts), ``iowait`` (idle with a disk request outstanding), ``steal``
    (a virtual machine's cores running someone else's work on the host) and ``idle``. Every process counts,
    not only the cycle's."""
    if not before or not after:
        return None
    d = {k: after[k] - before.get(k, 0) for k in after}
    total = sum(d.values())
    if total <= 0:
        return None
    parts = {"user": d["user"] + d["nice"], "kernel": d["system"] + d["irq"] + d["softirq"],
             "iowait": d["iowait"], "steal": d.get("steal", 0), "idle": d["idle"]}
    return {k: v / total for k, v in parts.items()}


def _hwm_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


# ------------------------------------------------------------------------------------------ phases

def _config(workdir: Path):
    from trigger_watch import config as config_mod

    return config_mod.load(workdir / "config.toml")


def phase_generate(args) -> dict:
    import pandas as pd

    from trigger_watch import simulate, storage
    from trigger_watch.importing import ImportOptions, import_file

    workdir = Path(args.workdir)
    if workdir.exists():
        shutil.rmtree(workdir)
    (workdir / "input").mkdir(parents=True)
    (workdir / "config.toml").write_text(CONFIG.format(scheduler=args.scheduler, workers=args.workers))
    cfg = _config(workdir)
    held = AS_OF + timedelta(days=1)
    start = AS_OF - timedelta(days=args.days - 1)

    t = time.perf_counter()
    cohort = simulate.simulate_cohort(args.patients, args.days + 1, SEED, start=start)
    last = held.isoformat()
    late_diary = cohort.diary[cohort.diary["date"].astype(str) == last]
    cohort.diary = cohort.diary[cohort.diary["date"].astype(str) != last]
    cohort.attacks = cohort.attacks[pd.to_datetime(cohort.attacks["start"].astype(str).str[:10]) < pd.Timestamp(held)]
    simulate_s = time.perf_counter() - t

    t = time.perf_counter()
    files = simulate.write_files(cohort, workdir / "input")
    ids = sorted(late_diary["patient_id"].unique())
    n_changed = max(1, round(args.changed * args.patients))
    step = max(1, len(ids) // n_changed)
    changed = ids[::step][:n_changed]
    late_diary[late_diary["patient_id"].isin(changed)].to_csv(workdir / "input" / "late_diary.csv", index=False)
    write_s = time.perf_counter() - t

    t = time.perf_counter()
    db = storage.connect(cfg.database)
    options = ImportOptions(today=held + timedelta(days=1), default_timezone="UTC", config=cfg)
    for kind in ("patients", "diary", "attacks", "sleep", "weather", "treatments"):
        import_file(db, kind, files[kind], options)
    db.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.conn.close()
    import_s = time.perf_counter() - t
    shutil.copyfile(cfg.database, workdir / PRISTINE)  # what --skip-generate starts the full cycle from
    return {"simulate_s": simulate_s, "write_files_s": write_s, "import_s": import_s,
            "diary_rows": len(cohort.diary), "changed_patients": len(changed)}


def _reports_mode(args) -> str:
    return args.reports or ("fresh" if args.validation in ("first", "due", "all") else "kept")


def phase_cycle(args, incremental: bool) -> dict:
    from trigger_watch import daemon, storage
    from trigger_watch.importing import ImportOptions, import_file

    workdir = Path(args.workdir)
    cfg = _config(workdir)
    if not incremental:  # start from the freshly imported database: no models, reports or cycles yet
        for suffix in ("", "-wal", "-shm"):
            Path(str(cfg.database) + suffix).unlink(missing_ok=True)
        # migrated first (a database imported by an older version): each copy is then the same database,
        # with the one id the reports folder is marked with (reports.claim_folder)
        storage.connect(workdir / PRISTINE).conn.close()
        shutil.copyfile(workdir / PRISTINE, cfg.database)
        # no models (an unchanged cohort would take the stored fit); the reports of the run before stay (a
        # clinic's nightly cycle rewrites last night's files) unless --reports fresh, the first night, whose
        # driver removed them before --settle's wait
        shutil.rmtree(cfg.models_dir, ignore_errors=True)
        os.sync()  # the kernel writes the copy out now, not on the cores of the cycle being timed
    db = storage.connect(cfg.database)
    # The cycle analyses through the day before its ``today``: the full one through AS_OF, the last imported
    # day; the incremental one through the day held back (a day a cycle has not reached stays pending for it).
    today = AS_OF + timedelta(days=2) if incremental else AS_OF + timedelta(days=1)
    out: dict = {}
    if incremental:
        t = time.perf_counter()
        options = ImportOptions(today=today + timedelta(days=1), default_timezone="UTC", config=cfg)
        res = import_file(db, "diary", workdir / "input" / "late_diary.csv", options)
        out["import_s"] = time.perf_counter() - t
        out["imported_rows"] = res.accepted

    # Capture the pipeline's per-stage timings by wrapping the analysis function the cycle calls.
    from trigger_watch import analysis

    captured: dict = {}

    def analyse(db_, config_, **kw):
        if args.validation == "skip":
            kw["validate"] = False
        elif args.validation == "all":
            kw["validate"] = True
        elif args.validation == "nightly":  # the patients whose night of the week it is
            every = int(config_["analysis.validation_every_days"])
            night = kw["as_of"].toordinal() % every
            everyone = analysis.all_patient_ids(db_)
            kw["validate"] = [p for p in everyone if analysis.validation_slot(p, every) == night]
        captured["_start"] = time.perf_counter()
        outcome = analysis.analyze(db_, config_, **kw)
        captured.update(outcome.timings)
        return outcome

    analyse.model_version = analysis.MODEL_VERSION
    with PeakMemory() as mem:
        ticks = _machine_ticks()
        t = time.perf_counter()
        result = daemon.run_cycle(db, cfg, today=today, fetch=False, analyse=analyse)
        out["wall_s"] = time.perf_counter() - t
        out["machine"] = _machine_split(ticks, _machine_ticks())
    # each stage's CPU (all processes), the stages being one after the other from the analysis' start (the
    # forecast runs inside the reports stage)
    at, stage_cpu = captured.pop("_start", None), {}
    for stage in ("columns", "read_and_reduce", "fit", "validation", "reports", "ranking"):
        if at is None or stage not in captured:
            continue
        end = at + captured[stage] + (captured.get("forecast", 0.0) if stage == "reports" else 0.0)
        stage_cpu[stage] = mem.cpu_between(at, end)
        at = end
    out.update(status=result.status, analysed=len(result.analysed), failed=len(result.failed),
               peak_mb=mem.peak_mb, main_hwm_mb=_hwm_mb(), stages=captured, peak_at_s=mem.peak_at,
               stage_cpu=stage_cpu,
               cpu_s=mem.cpu_s, cpu_system_s=mem.cpu_system_s,
               peak_main_mb=mem.peak_main_kb / 1024)
    if result.failed:
        out["first_failures"] = dict(list(result.failed.items())[:3])
    db.conn.close()
    return out


# ------------------------------------------------------------------------------------------ driver

def _run_phase(name: str, argv: list[str]) -> dict:
    cmd = [sys.executable, __file__, *argv, "--phase", name]
    with PeakMemory() as mem:
        t = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        wall = time.perf_counter() - t
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        raise SystemExit(f"phase {name} failed (exit {proc.returncode})")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["process_wall_s"] = wall
    result.setdefault("peak_mb", mem.peak_mb)
    return result


#: In the workdir: when the last run of this benchmark there ended (epoch seconds).
LAST_RUN = ".last-run"
#: How long ext4 without a journal holds back a freed inode: 60 s, 360 s while its inode table block is
#: not yet written (RECENTCY_MIN and RECENTCY_DIRTY in the kernel's fs/ext4/ialloc.c).
RECENTLY_FREED_S = 360


def _since_last_run(workdir: Path) -> float | None:
    try:
        return time.time() - float((workdir / LAST_RUN).read_text())
    except (OSError, ValueError):
        return None


def _probe(n: int) -> list[dict[str, float]]:
    """``benchmarks/probe.py``'s figures, ``n`` times (it runs the workload on every core at once)."""
    if n <= 0:
        return []
    import probe

    return [probe.probe() for _ in range(n)]


def _print(results: dict, args) -> None:
    g, f, i = results["generate"], results["full"], results["incremental"]
    print(f"cohort: {args.patients} patients x {args.days} days ({g['diary_rows']} diary rows), "
          f"{os.cpu_count()} cores, scheduler {args.scheduler or 'local'}, validation {args.validation}, "
          f"reports {_reports_mode(args)}")
    print(f"generate: simulate {g['simulate_s']:.1f} s, write files {g['write_files_s']:.1f} s, "
          f"import {g['import_s']:.1f} s (peak {g['peak_mb']:.0f} MiB)")
    for name, r in (("full", f), ("incremental", i)):
        extra = f", import of {r['imported_rows']} diary row(s) {r['import_s']:.2f} s" if "import_s" in r else ""
        print(f"{name} cycle: {r['wall_s']:.1f} s wall, {r['analysed']} analysed, {r['failed']} failed, "
              f"peak {r['peak_mb']:.0f} MiB (main process {r['main_hwm_mb']:.0f} MiB){extra}")
        if "cpu_s" in r:
            busy = r["cpu_s"] / (r["wall_s"] * (os.cpu_count() or 1))
            kernel = f" ({r['cpu_system_s']:.1f} s of it in the kernel)" if "cpu_system_s" in r else ""
            print(f"  CPU: {r['cpu_s']:.1f} s in all processes{kernel}, {busy:.0%} of {os.cpu_count()} "
                  "cores' time")
        if r.get("machine"):
            m = {k: round(100 * v) for k, v in r["machine"].items()}
            print(f"  the machine's cores meanwhile (every process): {m['user']} % user, {m['kernel']} % kernel, "
                  f"{m['iowait']} % waiting on the disk, {m['steal']} % taken by the host (steal), {m['idle']} % idle")
        if r.get("since_last_run_s") is not None and r["since_last_run_s"] < RECENTLY_FREED_S:
            print(f"  note: the last run here ended {r['since_last_run_s']:.0f} s before this one: on ext4 without "
                  "a journal, the report files it replaced make this run's new files slower to create "
                  f"(a nightly cycle does not meet them; --settle {RECENTLY_FREED_S} waits)")
        if r.get("probe"):
            b, a = ([p["total"] for p in r["probe"][k]] for k in ("before", "after"))
            print(f"  machine probe (benchmarks/probe.py, median of {len(b)}): {statistics.median(b):.2f} s before, "
                  f"{statistics.median(a):.2f} s after (fastest {min(b):.2f} and {min(a):.2f} s)")
        if "peak_at_s" in r:
            print(f"  the peak: {r['peak_at_s']:.1f} s in, this process {r['peak_main_mb']:.0f} MiB and its workers "
                  f"{r['peak_mb'] - r['peak_main_mb']:.0f} MiB")
        stages = {k: v for k, v in r["stages"].items() if "/" not in k}
        print("  " + ", ".join(f"{k} {v:.2f}" for k, v in stages.items())
              + f"  | sum {sum(stages.values()):.1f} s")
        if r.get("stage_cpu"):
            print("  CPU by stage, user + kernel: " + ", ".join(
                f"{k} {u:.1f} + {k_:.1f}" for k, (u, k_) in r["stage_cpu"].items()))
        steps = {k: v for k, v in r["stages"].items() if "/" in k}
        if steps:
            print("  steps (summed over blocks, overlapping): " + ", ".join(f"{k} {v:.2f}" for k, v in steps.items()))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patients", type=int, default=10000)
    ap.add_argument("--days", type=int, default=365)
    ap.add_argument("--changed", type=float, default=0.01, help="share of patients with a new day")
    ap.add_argument("--workdir", default="/tmp/trigger-watch-bench")
    ap.add_argument("--scheduler", default="", help="[compute] scheduler (empty: this machine)")
    ap.add_argument("--workers", type=int, default=0, help="[compute] workers (0: one per core)")
    ap.add_argument("--skip-generate", action="store_true", help="reuse the database in --workdir")
    ap.add_argument("--json", help="also write the results to this file")
    ap.add_argument("--validation", choices=["first", "due", "nightly", "all", "skip"], default="first",
                    help="first (default; also 'due'): the cycle chooses, as on the first night (a large "
                         "cohort: the patients whose night of the week it is; analysis.validation_catch_up); "
                         "nightly: only the patients whose night of the week it is, as on every later night "
                         "(analysis.validation_every_days); all: everyone; skip: none")
    ap.add_argument("--reports", choices=["fresh", "kept"],
                    help="fresh: the full cycle starts with no reports folder, as on the first night (the "
                         "default with --validation first or all); kept: it rewrites the reports the run before left, "
                         "as every later night does (the default otherwise)")
    ap.add_argument("--settle", type=float, default=0, metavar="SECONDS",
                    help="wait until this long after the last run in --workdir ended before the full cycle "
                         "(360: past the window in which ext4 without a journal holds back the inodes that "
                         "run freed, as on a real night; see docs/performance.md)")
    ap.add_argument("--probe", type=int, default=5, metavar="N",
                    help="time benchmarks/probe.py's fixed workload N times before and after the full cycle, "
                         "to read the cycle's figures against the machine's speed at the time (0: do not)")
    ap.add_argument("--phase", choices=["generate", "full", "incremental"], help=argparse.SUPPRESS)
    ap.add_argument("--sample", type=int, metavar="PID", help=argparse.SUPPRESS)
    ap.add_argument("--every", type=float, default=0.05, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.sample:
        run_sampler(args.sample, args.every)
        return 0

    if args.phase:
        fn = {"generate": phase_generate, "full": lambda a: phase_cycle(a, False),
              "incremental": lambda a: phase_cycle(a, True)}[args.phase]
        print(json.dumps(fn(args)))
        return 0

    passthrough = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--skip-generate"]
    passthrough = [a for j, a in enumerate(passthrough)
                   if a != "--json" and (j == 0 or passthrough[j - 1] != "--json")]
    results = {}
    if args.skip_generate:
        results["generate"] = {"simulate_s": 0, "write_files_s": 0, "import_s": 0, "diary_rows": 0,
                               "peak_mb": 0}
    else:
        results["generate"] = _run_phase("generate", passthrough)
    workdir = Path(args.workdir)
    reports_dir = Path(_config(workdir).reports_dir) if (workdir / "config.toml").exists() else None
    if _reports_mode(args) == "fresh" and reports_dir is not None and reports_dir.exists():
        # the first night has no reports folder: the last run's goes now, before --settle's wait, since the
        # files it frees would slow the cycle's new ones as a run just before would (ext4, RECENTLY_FREED_S)
        shutil.rmtree(reports_dir)
        (workdir / LAST_RUN).write_text(f"{time.time():.0f}\n")
    since = _since_last_run(workdir)
    if since is not None and since < args.settle:
        print(f"waiting {args.settle - since:.0f} s: the last run here ended {since:.0f} s ago (--settle)",
              file=sys.stderr, flush=True)
        time.sleep(args.settle - since)
        since = args.settle
    before = _probe(args.probe)
    results["full"] = _run_phase("full", passthrough)
    results["full"]["since_last_run_s"] = since
    if args.probe > 0:
        results["full"]["probe"] = {"before": before, "after": _probe(args.probe)}
    results["incremental"] = _run_phase("incremental", passthrough)
    (Path(args.workdir) / LAST_RUN).write_text(f"{time.time():.0f}\n")
    _print(results, args)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
