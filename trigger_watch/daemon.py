"""The scheduled cycle: fetch weather, re-analyse the patients whose inputs changed, rebuild the ranking.

- **One cycle at a time, across processes.** A cycle holds an exclusive ``flock`` on ``<database>.lock``;
  the kernel releases it when the process dies, however it dies, so a crash never leaves a stale lease.
  A second ``run`` waits (``--wait SECONDS``) or exits with a message naming the holder.
- **Only what changed.** Every import marks the patients it changed (``changes``); a patient is analysed
  when its inputs changed after its last successful analysis (a cycle's, or ``analyze``'s as of today or
  yesterday; a back-test's does not count), when the model version changed, or when its last analysis
  failed (it is retried each cycle). A cycle with nothing new fetches weather and stops.
- **Every run is recorded** in ``runs`` (start, end, status, patients analysed, failures, error text),
  and per patient in ``patient_state`` (last analysis, consecutive failures, last error).
- **Stopping.** SIGTERM/SIGINT set a stop flag that the pipeline checks between patients: the patient in
  hand is finished (its reports are written atomically), the rest are left for the next cycle, and the
  process exits 0.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import sqlite_utils

from trigger_watch import storage
from trigger_watch.errors import ConfigError, CycleBusy, TriggerWatchError, WeatherError
from trigger_watch.progress import stage

storage.register_migration(50, "cycle runs, per-patient analysis state", [
    """CREATE TABLE runs (
        id INTEGER PRIMARY KEY,
        kind TEXT NOT NULL,
        started_at TEXT NOT NULL,
        ended_at TEXT,
        status TEXT NOT NULL,
        patients_analysed INTEGER DEFAULT 0,
        failures INTEGER DEFAULT 0,
        error TEXT,
        pid INTEGER,
        host TEXT
    )""",
    """CREATE TABLE patient_state (
        patient_id TEXT PRIMARY KEY,
        analysed_at TEXT,
        seen_version INTEGER,
        model_version TEXT,
        failures INTEGER NOT NULL DEFAULT 0,
        last_error TEXT,
        last_failed_at TEXT
    )""",
])
storage.register_patient_table("patient_state")
storage.register_migration(64, "runs: the day each run analysed through", [
    "ALTER TABLE runs ADD COLUMN as_of TEXT",
])


# ------------------------------------------------------------------------------------------ lease

#: what a lease's holder is doing, in the message another process gets
_HOLDERS = {"cycle": "cycle", "weather": "weather fetch", "analyze": "analysis (trigger-watch analyze)",
            "forget": "erasure (trigger-watch forget)", "daemon": "daemon"}


class Lease:
    """An exclusive, crash-safe lock on ``<database>.lock`` (``flock``; released when the process dies).
    ``suffix=".daemon.lock"``: the lock a running daemon holds for as long as it runs."""

    def __init__(self, database: Path, what: str = "cycle", suffix: str = ".lock"):
        self.path = Path(str(database) + suffix)
        self.what = what  # what holds it, for the message another process gets ("cycle", "analyze", ...)
        self._fh = None

    def acquire(self, wait_seconds: float = 0.0, poll: float = 0.2,
                busy: str = "it will pick up the same changes, or run again later",
                hint: str = " (--wait SECONDS waits for it)") -> "Lease":
        """Take the lease, waiting up to ``wait_seconds`` for its holder; else :class:`CycleBusy`, whose
        message says who holds it and then ``busy`` (what the caller should do)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "a+")
        deadline = time.monotonic() + wait_seconds
        while True:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = self.holder()
                    fh.close()
                    what = _HOLDERS.get(holder.get("what", "cycle"), holder.get("what"))
                    who = f" (pid {holder.get('pid')} on {holder.get('host')}, since {holder.get('since')})" \
                        if holder else ""
                    raise CycleBusy(f"another trigger-watch {what} is running{who}; {busy}{hint}") from None
                time.sleep(poll)
        fh.seek(0)
        fh.truncate()
        fh.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": storage.utcnow_text(),
                             "what": self.what}))
        fh.flush()
        self._fh = fh
        return self

    def held(self) -> bool:
        """Whether another process holds it now (tried and given back at once; the holder's record is left
        as it is)."""
        if not self.path.exists():
            return False
        with open(self.path, "a+") as fh:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
        return False

    def holder(self) -> dict:
        try:
            return json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            return {}

    def release(self) -> None:
        if self._fh is not None:
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None

    def __enter__(self) -> "Lease":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


# ------------------------------------------------------------------------------------------ runs

@dataclass
class CycleResult:
    run_id: int
    status: str = "ok"
    analysed: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    weather: list[str] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0
    #: temporary report files an interrupted run had left, removed by this one
    leftovers_removed: int = 0

    def lines(self) -> list[str]:
        out = [f"cycle {self.run_id}: {self.status} in {self.seconds:.1f} s; {len(self.analysed)} patient(s) "
               f"analysed, {len(self.failed)} failed"]
        out.extend(f"  weather: {w}" for w in self.weather)
        if not self.analysed and not self.failed and self.status == "ok":
            out.append("  nothing changed since the last cycle")
        out.extend(f"  failed {p}: {e}" for p, e in sorted(self.failed.items())[:20])
        if self.skipped:
            out.append(f"  stopped early: {len(self.skipped)} patient(s) left for the next cycle")
        if self.leftovers_removed:
            out.append(f"  removed {self.leftovers_removed} temporary report file(s) an interrupted run left")
        if self.error:
            out.append(f"  error: {self.error}")
        return out


def _start_run(db: sqlite_utils.Database, kind: str, as_of: date | None = None) -> int:
    with storage.transaction(db):
        cur = db.conn.execute(
            "INSERT INTO runs (kind, started_at, status, pid, host, as_of) VALUES (?, ?, 'running', ?, ?, ?)",
            (kind, storage.utcnow_text(), os.getpid(), socket.gethostname(),
             as_of.isoformat() if as_of else None),
        )
    return cur.lastrowid


def _end_run(db, run_id: int, status: str, analysed: int, failures: int, error: str | None) -> None:
    with storage.transaction(db):
        db.conn.execute(
            "UPDATE runs SET ended_at = ?, status = ?, patients_analysed = ?, failures = ?, error = ? WHERE id = ?",
            (storage.utcnow_text(), status, analysed, failures, error, run_id),
        )


def run_status(failed, skipped, stopped: bool) -> str:
    """A run's status in the runs table: 'stopped' when it did not reach every patient, else 'partial' when
    some failed, else 'ok'."""
    return "stopped" if skipped or stopped else "partial" if failed else "ok"


@dataclass
class RunRecord:
    """What :func:`recorded_run` writes when its block ends: set by the caller."""
    status: str = "ok"
    analysed: int = 0
    failures: int = 0
    error: str | None = None


@contextmanager
def recorded_run(db: sqlite_utils.Database, kind: str, as_of: date) -> Iterator[RunRecord]:
    """A run of ``kind`` other than the cycle (``analyze``, ``back-test``) in the runs table, under the lease
    the caller holds, so that ``trigger-watch status`` shows it: 'running' while the block runs, then the
    record's status and counts; 'failed' with the error when the block raises (which is re-raised)."""
    _close_orphan_runs(db)
    run_id = _start_run(db, kind, as_of)
    record = RunRecord()
    try:
        yield record
    except BaseException as exc:
        why = str(exc) if isinstance(exc, TriggerWatchError) else f"{type(exc).__name__}: {exc}"
        _end_run(db, run_id, "stopped" if isinstance(exc, KeyboardInterrupt) else "failed", record.analysed,
                 record.failures, why)
        raise
    _end_run(db, run_id, record.status, record.analysed, record.failures, record.error)


def _close_orphan_runs(db) -> None:
    """Runs left 'running' by a process that died (we hold the lease, so none is really running)."""
    with storage.transaction(db):
        db.conn.execute(
            "UPDATE runs SET status = 'abandoned', ended_at = coalesce(ended_at, ?), "
            "error = coalesce(error, 'the process ended before the run finished (killed or crashed)') "
            "WHERE status = 'running'",
            (storage.utcnow_text(),),
        )


def patients_to_analyse(db: sqlite_utils.Database, model_version: str) -> dict[str, int]:
    """Patients to analyse, with the change counter seen now: their inputs changed since the last good
    analysis (a different counter), their last analysis failed, it used another model version, or they
    were never analysed."""
    rows = db.execute(
        """SELECT p.patient_id, coalesce(c.version, 0) FROM patients p
           LEFT JOIN changes c ON c.patient_id = p.patient_id
           LEFT JOIN patient_state s ON s.patient_id = p.patient_id
           WHERE s.analysed_at IS NULL
              OR s.failures > 0
              OR s.model_version IS NOT ?
              OR s.seen_version IS NOT coalesce(c.version, 0)
           ORDER BY p.patient_id""",
        (model_version,),
    ).fetchall()
    return {r[0]: r[1] for r in rows}


def _has_data_after(db: sqlite_utils.Database, patient_ids: list[str], as_of: date) -> set[str]:
    """Those of ``patient_ids`` with a diary day or an attack (local start) after ``as_of`` (by the diary's and
    attacks' patient-first keys: a few rows per patient, not the tables)."""
    if not patient_ids:
        return set()
    after = as_of.isoformat()
    rows = db.execute(
        """SELECT value FROM json_each(?) AS ids
           WHERE EXISTS (SELECT 1 FROM diary d WHERE d.patient_id = ids.value AND d.date > ?)
              OR EXISTS (SELECT 1 FROM attacks a WHERE a.patient_id = ids.value AND a.start_local >= ?)""",
        (json.dumps(patient_ids), after, (as_of + timedelta(days=1)).isoformat())).fetchall()
    return {r[0] for r in rows}


def change_versions(db: sqlite_utils.Database, patient_ids: list[str] | None = None) -> dict[str, int]:
    """The change counter of each of ``patient_ids`` (every patient when None) now: what an analysis
    started now has seen (:func:`record_analysis`)."""
    rows = db.execute("SELECT p.patient_id, coalesce(c.version, 0) FROM patients p"
                      " LEFT JOIN changes c ON c.patient_id = p.patient_id").fetchall()
    wanted = None if patient_ids is None else set(patient_ids)
    return {p: v for p, v in rows if wanted is None or p in wanted}


def record_analysis(db: sqlite_utils.Database, analysed: list[str], failed: dict[str, str], model_version: str,
                    started: str, seen: dict[str, int], as_of: date) -> None:
    """The outcome of an analysis through ``as_of`` (a cycle's, or ``analyze``'s as of now): the patients
    analysed are current at the change counters ``seen`` when it started, and the next cycle leaves them
    until their data changes. A diary day or attack after ``as_of`` (logged today, or ahead in a patient's
    own zone) is not used yet: that patient's change stays pending, for the cycle whose as_of reaches it."""
    ahead = _has_data_after(db, list(analysed), as_of)
    record_outcomes(db, analysed, failed, model_version, started,
                    {p: v for p, v in seen.items() if p not in ahead})


def record_outcomes(db, analysed: list[str], failed: dict[str, str], model_version: str, when: str,
                    seen: dict[str, int]) -> None:
    with storage.transaction(db):
        db.conn.executemany(
            "INSERT INTO patient_state (patient_id, analysed_at, seen_version, model_version, failures, last_error)"
            " VALUES (?, ?, ?, ?, 0, NULL) ON CONFLICT(patient_id) DO UPDATE SET analysed_at = excluded.analysed_at,"
            " seen_version = excluded.seen_version, model_version = excluded.model_version, failures = 0,"
            " last_error = NULL",
            [(p, when, seen.get(p, 0), model_version) for p in analysed],
        )
        db.conn.executemany(
            "INSERT INTO patient_state (patient_id, failures, last_error, last_failed_at) VALUES (?, 1, ?, ?) "
            "ON CONFLICT(patient_id) DO UPDATE SET failures = failures + 1, last_error = excluded.last_error, "
            "last_failed_at = excluded.last_failed_at",
            [(p, e, when) for p, e in failed.items()],
        )


def analyse_again(db: sqlite_utils.Database, patient_ids: list[str]) -> None:
    """The next cycle analyses these patients again, whether or not their data changes: their reports were
    written by a back-dated ``analyze --as-of``, and the cycle took them for current (nothing changed)."""
    with storage.transaction(db):
        db.conn.executemany("UPDATE patient_state SET seen_version = -1 WHERE patient_id = ?",
                            [(p,) for p in patient_ids])


# ------------------------------------------------------------------------------------------ the cycle

def run_cycle(db: sqlite_utils.Database, config, *, today: date, session=None, fetch: bool = True,
              wait_seconds: float = 0.0, stop: threading.Event | None = None,
              progress: Callable | None = None, analyse: Callable | None = None) -> CycleResult:
    """One cycle under the lease, analysing through the day before ``today`` (the last complete diary day).
    ``analyse(db, config, patient_ids, as_of, stop, progress)`` defaults to
    :func:`trigger_watch.analysis.analyze` and must return an object with ``analysed``, ``failed``,
    ``skipped`` and ``model_version``."""
    stop = stop or threading.Event()
    with Lease(config.database).acquire(wait_seconds):
        _close_orphan_runs(db)
        run_id = _start_run(db, "cycle", today - timedelta(days=1))
        result = CycleResult(run_id=run_id)
        t0 = time.monotonic()
        try:
            if fetch:
                result.weather = _fetch_weather(db, config, session, today, progress)
            if analyse is None:
                from trigger_watch.analysis import MODEL_VERSION, analyze as analyse_fn
            else:
                analyse_fn, MODEL_VERSION = analyse, getattr(analyse, "model_version", "test")
            seen = patients_to_analyse(db, MODEL_VERSION)
            started = storage.utcnow_text()
            if seen and not stop.is_set():
                # Through the last complete day: at 02:30 today's diary cannot exist yet, and reading it as
                # missing would raise the forecast. The forecast is then for the day now starting.
                outcome = analyse_fn(db, config, patient_ids=list(seen), as_of=today - timedelta(days=1),
                                     stop=stop, progress=progress)
                result.analysed, result.failed = list(outcome.analysed), dict(outcome.failed)
                result.skipped = list(outcome.skipped)
                result.leftovers_removed = getattr(outcome, "leftovers_removed", 0)
                record_analysis(db, result.analysed, result.failed, MODEL_VERSION, started, seen,
                                today - timedelta(days=1))
            result.status = run_status(result.failed, result.skipped, stop.is_set())
        except TriggerWatchError as exc:
            result.status, result.error = "failed", str(exc)
        except Exception as exc:  # recorded, then re-raised: a bug must be seen, not hidden
            result.status, result.error = "failed", f"{type(exc).__name__}: {exc}"
            _end_run(db, run_id, result.status, len(result.analysed), len(result.failed), result.error)
            raise
        result.seconds = time.monotonic() - t0
        _end_run(db, run_id, result.status, len(result.analysed), len(result.failed), result.error)
    return result


def _fetch_weather(db, config, session, today: date, progress) -> list[str]:
    if not config["weather.enabled"]:
        return ["fetching is disabled ([weather] enabled = false)"]
    import requests

    from trigger_watch import weather

    own = session is None
    session = session or requests.Session()
    try:
        fetched = weather.fetch_weather(db, config, session, today=today,
                                        progress=stage(progress, "fetching weather", main=True))
        return list(fetched.lines())
    except WeatherError as exc:
        return [f"failed, will retry next cycle: {exc}"]
    finally:
        if own:
            session.close()


def fetch_weather_job(db, config, *, today: date, session=None) -> list[str]:
    """The hourly weather job: fetch under the lease (skipped quietly while a cycle runs)."""
    try:
        with Lease(config.database, "weather").acquire(0):
            run_id = _start_run(db, "weather")
            lines = _fetch_weather(db, config, session, today, None)
            failed = any("failed" in line for line in lines)
            _end_run(db, run_id, "partial" if failed else "ok", 0, 0, "; ".join(lines) if failed else None)
            return lines
    except CycleBusy:
        return ["skipped: a cycle is running and fetches weather itself"]


# ------------------------------------------------------------------------------------------ schedule

def make_trigger(spec: str, tz: str):
    """A cron string (5 fields; or 6 with seconds first) or ``every N seconds|minutes|hours``."""
    from apscheduler.triggers.cron import CronTrigger
    from apscheduler.triggers.interval import IntervalTrigger

    text = spec.strip()
    parts = text.split()
    try:
        if parts and parts[0] == "every" and len(parts) == 3:
            unit = parts[2].rstrip("s") + "s"
            if unit not in ("seconds", "minutes", "hours"):
                raise ValueError(f"unknown unit {parts[2]!r}")
            return IntervalTrigger(**{unit: int(parts[1])}, timezone=tz)
        if len(parts) == 5:
            return CronTrigger.from_crontab(text, timezone=tz)
        if len(parts) == 6:
            second, minute, hour, day, month, dow = parts
            return CronTrigger(second=second, minute=minute, hour=hour, day=day, month=month, day_of_week=dow,
                               timezone=tz)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"schedule {spec!r} is not valid: {exc}") from None
    raise ConfigError(f"schedule {spec!r} is not valid: use cron (e.g. '30 2 * * *') or 'every 10 minutes'")


def next_runs(config, now: datetime | None = None) -> dict[str, datetime | None]:
    now = now or datetime.now(timezone.utc)
    tz = config["schedule.timezone"]
    return {name: make_trigger(config[f"schedule.{name}"], tz).get_next_fire_time(None, now)
            for name in ("weather", "analysis")}


def serve(config, *, open_db: Callable[[], sqlite_utils.Database], log: Callable[[str], None],
          today: Callable[[], date] | None = None) -> int:
    """Run the schedule until SIGTERM/SIGINT; returns the exit code (0 after a clean stop). ``today``: the
    date on the daemon's clock, ``[schedule] timezone`` (not the server's): a cycle at 02:30 in Auckland on
    a UTC server must analyse through Auckland's yesterday and forecast Auckland's today."""
    from zoneinfo import ZoneInfo

    from apscheduler.schedulers.blocking import BlockingScheduler

    stop = threading.Event()
    busy = threading.Lock()
    tz = config["schedule.timezone"]
    today = today or (lambda: datetime.now(ZoneInfo(tz)).date())
    triggers = {name: make_trigger(config[f"schedule.{name}"], tz) for name in ("weather", "analysis")}
    scheduler = BlockingScheduler(timezone=tz, job_defaults={
        "coalesce": True, "max_instances": 1, "misfire_grace_time": config["schedule.misfire_grace_seconds"]})

    def job(name: str, work: Callable[[sqlite_utils.Database], list[str]]) -> Callable[[], None]:
        """A scheduled job: skipped once stopping, one at a time, its own connection, never kills the daemon."""
        def run() -> None:
            if stop.is_set():
                return
            with busy:
                db = open_db()
                try:
                    for line in work(db):
                        log(line)
                except CycleBusy as exc:
                    log(f"{name} skipped: {exc}")
                except Exception as exc:  # keep the daemon alive; the run row has the error
                    log(f"{name} failed: {type(exc).__name__}: {exc}")
                finally:
                    db.conn.close()
        return run

    analysis_job = job("analysis", lambda db: run_cycle(db, config, today=today(), stop=stop).lines())
    weather_job = job("weather", lambda db: [f"weather: {line}"
                                             for line in fetch_weather_job(db, config, today=today())])

    scheduler.add_job(weather_job, triggers["weather"], id="weather", name="fetch weather", replace_existing=True)
    scheduler.add_job(analysis_job, triggers["analysis"], id="analysis", name="analysis cycle",
                      replace_existing=True)

    def on_signal(signum, frame) -> None:
        log(f"received {signal.Signals(signum).name}: finishing the current patient, then stopping")
        stop.set()
        scheduler.shutdown(wait=False)

    # one daemon per database: a second would run every job twice
    with Lease(config.database, "daemon", suffix=".daemon.lock").acquire(
            busy="stop it before starting another", hint=""):
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        for name, trig in triggers.items():
            log(f"{name}: next run {trig.get_next_fire_time(None, datetime.now(timezone.utc))}")
        log(f"daemon started (pid {os.getpid()}, timezone {tz}, today there {today()}, database {config.database})")
        scheduler.start()
        # The scheduler has stopped; wait for a job in progress to notice the stop flag and finish.
        with busy:
            pass
        log("daemon stopped cleanly")
    return 0


# ------------------------------------------------------------------------------------------ status

def status(db: sqlite_utils.Database, config, *, runs: int = 10) -> dict:
    last = list(db.query(
        "SELECT id, kind, as_of, started_at, ended_at, status, patients_analysed, failures, error FROM runs "
        "ORDER BY id DESC LIMIT ?", [runs]))
    failing = list(db.query(
        "SELECT patient_id, failures, last_error, last_failed_at FROM patient_state WHERE failures > 0 "
        "ORDER BY failures DESC, patient_id"))
    try:
        upcoming = {k: (v.isoformat() if v else None) for k, v in next_runs(config).items()}
    except ConfigError as exc:
        upcoming = {"error": str(exc)}
    holder = Lease(config.database).holder() if Path(str(config.database) + ".lock").exists() else {}
    if any(r["status"] == "running" for r in last) and not Lease(config.database).held():
        # nobody holds the lease: a run still 'running' is one whose process was killed (the next cycle
        # records it as abandoned; status only reads)
        for r in last:
            if r["status"] == "running":
                r["status"] = "abandoned"
                r["error"] = r["error"] or "the process ended before the run finished (killed or crashed)"
    from trigger_watch import models
    from trigger_watch.analysis import MODEL_VERSION

    # what a clinic checks in the morning besides the runs: who the next cycle will analyse, and the rows an
    # import quarantined that nobody has fixed yet
    total = db.execute("SELECT count(*) FROM patients").fetchone()[0]
    held, files = db.execute("SELECT count(*), count(DISTINCT file) FROM rejects WHERE resolved_at IS NULL"
                             ).fetchone()
    return {"runs": last, "failing_patients": failing, "next_runs": upcoming, "lease_file": holder,
            "models": models.ModelStore(config.models_dir).summary(),
            "patients": {"total": total, "to_analyse": len(patients_to_analyse(db, MODEL_VERSION))},
            "rejects": {"waiting": held, "files": files}}
