"""The cycle and the daemon as a clinic runs them: incremental work, one cycle at a time, clean stops."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from datetime import date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from trigger_watch import config as config_mod
from trigger_watch import daemon, demo, reports, storage
from trigger_watch.demo import run_demo
from trigger_watch.importing import ImportOptions, import_file

TODAY = date(2026, 11, 20)
SEED = 4242


@pytest.fixture(scope="module")
def analysed_workspace(tmp_path_factory) -> Path:
    """A demo workspace (8 patients x 150 days, seed 4242) after one full cycle."""
    ws = tmp_path_factory.mktemp("demo") / "ws"
    print(f"simulation seed {SEED}")
    run_demo(ws, today=TODAY, n_patients=8, n_days=150, seed=SEED)
    return ws


@pytest.fixture
def ws(analysed_workspace, tmp_path) -> Path:
    copy = tmp_path / "ws"
    shutil.copytree(analysed_workspace, copy)
    return copy


def cfg_of(ws: Path):
    return config_mod.load(ws / "config.toml")


def snapshot(reports: Path) -> dict[str, bytes]:
    return {str(p.relative_to(reports)): p.read_bytes() for p in sorted(reports.rglob("*")) if p.is_file()}


def add_diary_row(db, ws: Path, patient: str, day: str, stress: int = 5) -> None:
    f = ws / f"new-{patient}-{day}.csv"
    f.write_text(f"patient_id,date,stress\n{patient},{day},{stress}\n")
    import_file(db, "diary", f, ImportOptions(today=TODAY))


def tw(ws: Path, *args: str, **kw) -> subprocess.Popen | subprocess.CompletedProcess:
    env = {**os.environ, "TRIGGER_WATCH_CONFIG": str(ws / "config.toml")}
    return subprocess.run([sys.executable, "-m", "trigger_watch", *args], cwd=ws, env=env, capture_output=True,
                          text=True, timeout=180, **kw)


def test_first_cycle_analysed_everyone_and_wrote_reports(analysed_workspace):
    cfg = cfg_of(analysed_workspace)
    reports = cfg.reports_dir
    patients = sorted(p.name for p in reports.iterdir() if p.is_dir() and p.name != "cohort")
    assert len(patients) == 8
    for p in patients:
        doc = json.loads((reports / p / "triggers.json").read_text())
        assert doc["patient_id"] == p and doc["as_of"] == "2026-11-19"
    ranking = json.loads((reports / "cohort" / "ranking.json").read_text())
    assert sorted(r["patient_id"] for r in ranking) == patients


def test_demo_never_replaces_a_clinic_workspace(analysed_workspace, tmp_path):
    """``demo --dir`` replaces only a workspace the demo made: a clinic's folder also has a config.toml (the
    old check), and a demo pointed at it by mistake must leave it as it was."""
    clinic = tmp_path / "clinic"
    (clinic / "data").mkdir(parents=True)
    (clinic / "config.toml").write_text('[storage]\ndatabase = "data/clinic.db"\n')
    (clinic / "data" / "clinic.db").write_bytes(b"the clinic's records")
    before = snapshot(clinic)
    out = tw(clinic, "demo", "--dir", str(clinic))
    assert out.returncode == 1
    assert "is not a demo workspace" in out.stderr and "nothing was changed" in out.stderr
    assert snapshot(clinic) == before
    assert demo.is_demo_workspace(analysed_workspace)  # which a later demo may replace


def test_one_new_diary_row_reanalyses_that_patient_only(ws):
    cfg = cfg_of(ws)
    db = storage.connect(cfg.database)
    quiet = daemon.run_cycle(db, cfg, today=date(2026, 11, 20), fetch=False)
    assert quiet.analysed == [] and quiet.failed == {}          # nothing changed: nothing to do
    before = snapshot(cfg.reports_dir)
    add_diary_row(db, ws, "p00003", "2026-11-19", stress=9)
    result = daemon.run_cycle(db, cfg, today=date(2026, 11, 20), fetch=False)
    assert result.analysed == ["p00003"]
    after = snapshot(cfg.reports_dir)
    changed = {k.split("/")[0] for k in after if after[k] != before.get(k)}
    assert changed <= {"p00003", "cohort"} and "p00003" in changed
    runs = db.execute("SELECT status, patients_analysed FROM runs ORDER BY id").fetchall()
    assert runs[-2:] == [("ok", 0), ("ok", 1)]


def test_the_cycle_after_analyze_leaves_the_patients_it_analysed(ws):
    """`analyze` wrote everyone's reports, and the next `run` analysed the patients whose data had changed
    before it all over again (the whole cohort, after a clinic's first `analyze`). Now they are current;
    data that comes after the analysis still brings its patient up."""
    db = storage.connect(cfg_of(ws).database)
    for p in ("p00002", "p00005"):
        add_diary_row(db, ws, p, "2026-11-19", stress=8)
    db.conn.close()
    r = tw(ws, "analyze")
    assert r.returncode == 0, r.stderr
    r = tw(ws, "run", "--no-weather")
    assert r.returncode == 0 and "nothing changed" in r.stdout, r.stdout
    db = storage.connect(cfg_of(ws).database)
    add_diary_row(db, ws, "p00005", "2026-11-18", stress=2)
    db.conn.close()
    r = tw(ws, "run", "--no-weather")
    assert r.returncode == 0 and "1 patient(s) analysed" in r.stdout, r.stdout
    # an analysis of some patients makes those current, not the others
    db = storage.connect(cfg_of(ws).database)
    for p in ("p00002", "p00005"):
        add_diary_row(db, ws, p, "2026-11-17", stress=7)
    db.conn.close()
    assert tw(ws, "analyze", "--patient", "p00002").returncode == 0
    r = tw(ws, "run", "--no-weather")
    assert r.returncode == 0 and "1 patient(s) analysed" in r.stdout, r.stdout
    current = storage.connect(cfg_of(ws).database).execute(
        "SELECT s.patient_id FROM patient_state s JOIN changes c ON c.patient_id = s.patient_id"
        " WHERE s.seen_version = c.version AND s.patient_id IN ('p00002', 'p00005')").fetchall()
    assert sorted(r[0] for r in current) == ["p00002", "p00005"]


def test_a_patient_enrolled_with_no_records_yet_gets_a_report_and_the_cycle_goes_on(ws):
    """The usual case right after enrolment: the only changed patient has no diary, attacks or sleep. The
    cycle failed on the empty panel (a traceback, and every later cycle too)."""
    cfg = cfg_of(ws)
    db = storage.connect(cfg.database)
    (ws / "new.csv").write_text("patient_id,timezone\nfresh1,Europe/Vienna\n")
    import_file(db, "patients", ws / "new.csv", ImportOptions(today=TODAY))
    result = daemon.run_cycle(db, cfg, today=TODAY, fetch=False)
    assert (result.status, result.analysed, result.failed) == ("ok", ["fresh1"], {})
    doc = json.loads((cfg.reports_dir / "fresh1" / "triggers.json").read_text())
    assert doc["status"] == "insufficient_data" and doc["data"]["diary_days"] == 0
    # every key of reports.md is there, null when there is nothing to say (the cv_* keys were left out)
    assert {"data", "status", "factors", "forecast", "flags", "treatments", "model"} <= doc.keys()
    assert doc["forecast"] is None
    assert {k: doc["model"].get(k, "absent") for k in ("cv_auc", "cv_brier", "cv_days")} == {
        "cv_auc": None, "cv_brier": None, "cv_days": None}
    assert "nothing logged from you yet" in (cfg.reports_dir / "fresh1" / "summary.md").read_text()
    add_diary_row(db, ws, "p00003", "2026-11-19", stress=9)  # and the next cycle works as ever
    assert daemon.run_cycle(db, cfg, today=TODAY, fetch=False).analysed == ["p00003"]


def test_a_day_logged_after_the_day_analysed_through_is_analysed_when_the_cycles_reach_it(ws):
    """A cycle analyses through yesterday: a row dated today (logged in the evening before a manual run, or a
    patient ahead of the server's zone) is not used yet. Its change stayed marked as handled, so that row
    reached no report until something else changed."""
    cfg = cfg_of(ws)
    db = storage.connect(cfg.database)
    add_diary_row(db, ws, "p00003", TODAY.isoformat(), stress=9)
    assert daemon.run_cycle(db, cfg, today=TODAY, fetch=False).analysed == ["p00003"]  # through yesterday
    tomorrow = TODAY + timedelta(days=1)
    assert daemon.run_cycle(db, cfg, today=tomorrow, fetch=False).analysed == ["p00003"]  # now it is used
    doc = json.loads((cfg.reports_dir / "p00003" / "triggers.json").read_text())
    assert doc["as_of"] == TODAY.isoformat() and doc["data"]["last_day"] == TODAY.isoformat()
    assert daemon.run_cycle(db, cfg, today=tomorrow, fetch=False).analysed == []  # and then it is done


def test_a_failing_patient_does_not_stop_the_others_and_is_retried(ws, monkeypatch):
    from trigger_watch import reports

    cfg = cfg_of(ws)
    db = storage.connect(cfg.database)
    for p in ("p00001", "p00002"):
        add_diary_row(db, ws, p, "2026-11-19")
    original = reports._patient_files  # what every way of writing a patient's files goes through

    def flaky(triggers, charts):
        if triggers["patient_id"] == "p00001":
            raise OSError("disk full (simulated)")
        return original(triggers, charts)

    monkeypatch.setattr(reports, "_patient_files", flaky)
    first = daemon.run_cycle(db, cfg, today=date(2026, 11, 20), fetch=False)
    assert first.analysed == ["p00002"] and list(first.failed) == ["p00001"]
    assert "disk full" in first.failed["p00001"] and first.status == "partial"
    info = daemon.status(db, cfg)
    assert info["failing_patients"][0]["patient_id"] == "p00001"
    monkeypatch.setattr(reports, "_patient_files", original)
    second = daemon.run_cycle(db, cfg, today=date(2026, 11, 20), fetch=False)
    assert second.analysed == ["p00001"]
    assert daemon.status(db, cfg)["failing_patients"] == []


def test_analyze_and_forget_do_not_run_beside_a_cycle(ws):
    """A manual analysis would write the model store and reports the cycle is writing, and a cycle could write
    a forgotten patient's reports back: both wait for the cycle's lease, or exit clearly and change nothing."""
    import threading

    cfg = cfg_of(ws)
    before = snapshot(cfg.reports_dir)
    with daemon.Lease(cfg.database).acquire():
        analysed, forgot = tw(ws, "analyze"), tw(ws, "forget", "p00001")
    for r, says in ((analysed, "analyse once it has ended"), (forgot, "nothing was erased")):
        assert r.returncode == 1 and "another trigger-watch cycle is running" in r.stderr, r.stderr
        assert says in r.stderr and "--wait SECONDS" in r.stderr and "Traceback" not in r.stderr
    assert snapshot(cfg.reports_dir) == before
    with daemon.Lease(cfg.database, "analyze").acquire():  # the message says what holds it
        ran = tw(ws, "run", "--no-weather")
    assert ran.returncode == 1 and "trigger-watch analysis (trigger-watch analyze) is running (pid" in ran.stderr
    db = sqlite3.connect(cfg.database)
    assert db.execute("SELECT count(*) FROM diary WHERE patient_id = 'p00001'").fetchone()[0] > 0
    # --wait: it goes ahead once the cycle ends
    lease = daemon.Lease(cfg.database).acquire()
    threading.Timer(1.5, lease.release).start()
    r = tw(ws, "forget", "p00001", "--wait", "60")
    assert r.returncode == 0, r.stderr
    assert db.execute("SELECT count(*) FROM diary WHERE patient_id = 'p00001'").fetchone()[0] == 0
    assert not (cfg.reports_dir / "p00001").exists()


def test_second_run_while_one_runs_exits_clearly_and_changes_nothing(ws):
    cfg = cfg_of(ws)
    before = snapshot(cfg.reports_dir)
    with daemon.Lease(cfg.database).acquire():
        r = tw(ws, "run", "--no-weather")
    assert r.returncode == 1
    assert "another trigger-watch cycle is running" in r.stderr and "Traceback" not in r.stderr
    assert snapshot(cfg.reports_dir) == before
    db = sqlite3.connect(cfg.database)
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_run_waits_for_the_lease_when_asked(ws):
    cfg = cfg_of(ws)
    lease = daemon.Lease(cfg.database).acquire()
    env = {**os.environ, "TRIGGER_WATCH_CONFIG": str(ws / "config.toml")}
    proc = subprocess.Popen([sys.executable, "-m", "trigger_watch", "run", "--no-weather", "--wait", "60"], cwd=ws,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(2)
    assert proc.poll() is None  # still waiting
    lease.release()
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "cycle" in out and "nothing changed" in out


def test_daemon_runs_scheduled_jobs_and_stops_on_sigterm(ws):
    """The jobs run on schedule, on the daemon's clock: in Kiritimati (UTC+14) the cycle analyses through
    Kiritimati's yesterday whatever the server's own zone (this machine's is UTC: a day or two behind)."""
    db = storage.connect(cfg_of(ws).database)
    add_diary_row(db, ws, "p00003", "2026-11-19", stress=9)  # a change, so that the cycle writes a report
    db.conn.close()
    cfg_file = ws / "config.toml"
    cfg_file.write_text(cfg_file.read_text() + textwrap.dedent("""
        [schedule]
        timezone = "Pacific/Kiritimati"
        weather = "*/1 * * * * *"
        analysis = "*/1 * * * * *"
        misfire_grace_seconds = 5
        """))
    env = {**os.environ, "TRIGGER_WATCH_CONFIG": str(cfg_file)}
    started = datetime.now(ZoneInfo("Pacific/Kiritimati")).date()
    proc = subprocess.Popen([sys.executable, "-m", "trigger_watch", "daemon"], cwd=ws, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    db_path = cfg_of(ws).database
    deadline = time.monotonic() + 60
    kinds: set[str] = set()
    while time.monotonic() < deadline and not {"cycle", "weather"} <= kinds:
        time.sleep(0.5)
        with sqlite3.connect(db_path) as con:
            kinds = {r[0] for r in con.execute("SELECT kind FROM runs WHERE id > 1 AND status != 'running'")}
    try:
        second = subprocess.run([sys.executable, "-m", "trigger_watch", "daemon"], cwd=ws, env=env,
                                capture_output=True, text=True, timeout=60, check=False)
    finally:
        proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert {"cycle", "weather"} <= kinds, err
    # one daemon per database: the second would have run every job twice
    assert second.returncode == 1
    assert f"another trigger-watch daemon is running (pid {proc.pid} on" in second.stderr
    assert len(second.stderr.strip().splitlines()) == 1
    assert proc.returncode == 0, err
    assert "stopped cleanly" in err
    there = {started, datetime.now(ZoneInfo("Pacific/Kiritimati")).date()}  # two if 0:00 passed meanwhile
    as_of = json.loads((cfg_of(ws).reports_dir / "p00003" / "triggers.json").read_text())["as_of"]
    assert as_of in {str(day - timedelta(days=1)) for day in there}
    assert any(f"today there {day}" in err for day in there)


SLOW_RUN = """
import sys, time
from trigger_watch import reports
original = reports.commit_staged
def slow(reports_dir, staged):
    done = original(reports_dir, staged)
    for i in done[0]:
        print("wrote", staged[i][0], flush=True)
    time.sleep(1.0)
    return done
reports.commit_staged = slow
from trigger_watch.cli import main
sys.argv = ["trigger-watch", "run", "--no-weather"]
main()
"""


def test_sigkill_mid_cycle_leaves_reports_whole_and_next_cycle_completes(ws):
    cfg = cfg_of(ws)
    db = storage.connect(cfg.database)
    for i in range(8):
        add_diary_row(db, ws, f"p{i:05d}", "2026-11-19", stress=i)
    db.conn.close()
    env = {**os.environ, "TRIGGER_WATCH_CONFIG": str(ws / "config.toml")}
    proc = subprocess.Popen([sys.executable, "-c", SLOW_RUN], cwd=ws, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    written = []
    while len(written) < 2:
        line = proc.stdout.readline()
        assert line, proc.stderr.read()
        if line.startswith("wrote"):
            written.append(line.split()[1])
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL

    for folder in cfg.reports_dir.iterdir():
        for f in folder.iterdir():
            if f.suffix == ".json":
                json.loads(f.read_text())  # every JSON file is whole
            if f.suffix == ".html":
                assert f.read_text().rstrip().endswith("</html>")
    # the killed run left its mark; a temporary file as a kill while staging a chunk leaves one
    assert (cfg.models_dir / reports.WRITING).exists()
    left = cfg.reports_dir / written[0] / ".summary.md.4242.0badcafe.7.tmp"
    left.write_text("half a report")
    os.utime(left, (time.time() - 60, time.time() - 60))
    leftovers = len(list(cfg.reports_dir.rglob(".*.tmp")))  # with any the kill left
    db = storage.connect(cfg.database)
    # before the next cycle records it, status does not show the killed run as still running
    killed = daemon.status(db, cfg)["runs"][0]
    assert killed["status"] == "abandoned" and "killed or crashed" in killed["error"]
    result = daemon.run_cycle(db, cfg, today=date(2026, 11, 20), fetch=False)
    assert result.status == "ok"
    assert sorted(result.analysed) == [f"p{i:05d}" for i in range(8)]
    statuses = [r[0] for r in db.execute("SELECT status FROM runs ORDER BY id")]
    assert statuses[-2:] == ["abandoned", "ok"]
    assert not list(cfg.reports_dir.rglob("*.tmp")) and not (cfg.models_dir / reports.WRITING).exists()
    assert f"  removed {leftovers} temporary report file(s) an interrupted run left" in result.lines()


def test_schedule_strings(tmp_path):
    assert daemon.make_trigger("30 2 * * *", "UTC") is not None
    assert daemon.make_trigger("every 10 minutes", "UTC") is not None
    from trigger_watch.errors import ConfigError

    with pytest.raises(ConfigError, match="not valid"):
        daemon.make_trigger("at noon", "UTC")


def test_a_reports_folder_is_one_databases(analysed_workspace, tmp_path):
    """Two configurations pointing at one reports folder wrote each other's cohort ranking over and mixed
    their patients' folders. The folder is marked with its database's id: another database is refused
    before any work, with what to do; the same database moved (or copied) is not."""
    moved = tmp_path / "moved"
    shutil.copytree(analysed_workspace, moved)  # the same database, in another place
    cfg = cfg_of(moved)
    db = storage.connect(cfg.database)
    mark = cfg.reports_dir / "cohort" / reports.OWNER
    assert mark.read_text().split("\n")[0] == storage.database_id(db)
    assert tw(moved, "run", "--no-weather").returncode == 0

    other = tmp_path / "other"  # another clinic's database, configured with the first one's reports folder
    other.mkdir()
    (other / "config.toml").write_text(textwrap.dedent(f"""\
        [storage]
        database = "other.db"
        reports_dir = "{cfg.reports_dir}"
        models_dir = "models"
        [weather]
        enabled = false
    """))
    before = snapshot(cfg.reports_dir)
    other_db = storage.connect(other / "other.db")
    assert storage.database_id(other_db) != storage.database_id(db)
    f = other / "patients.csv"
    f.write_text("patient_id,timezone\np00001,UTC\n")
    import_file(other_db, "patients", f, ImportOptions(today=TODAY))
    for args in (("analyze",), ("run", "--no-weather"), ("forget", "p00001")):
        r = tw(other, *args)
        said = r.stdout + r.stderr
        assert r.returncode == 1, (args, said)
        # named by where it was when it was marked: the first workspace, before the copy
        assert f"holds the reports of another database ({analysed_workspace / 'trigger_watch.db'})" in said
        assert "reports_dir of its own" in said and "Traceback" not in said
    assert snapshot(cfg.reports_dir) == before


def test_status_says_what_the_model_store_holds(ws):
    """Back-tests and the forecast validation depend on the priors the store keeps; status showed only runs."""
    r = tw(ws, "status")
    assert r.returncode == 0, r.stderr
    assert "models: 8 patient(s) fitted (eb-hazard-" in r.stdout
    assert f"the cohort prior learned from the days through {TODAY - timedelta(days=1)}" in r.stdout
    assert f"1 cohort prior(s) kept for back-tests and the forecast validation, learned through " \
           f"{TODAY - timedelta(days=1)}\n" in r.stdout
    info = json.loads(tw(ws, "status", "--json").stdout)["models"]
    assert info["patients"] == 8 and info["kept_priors"] == 1


def test_status_says_who_the_next_cycle_analyses_and_what_waits_in_quarantine(ws):
    """A clinic's morning check: status showed the runs and the models, not the patients with new data that
    the next cycle will analyse, nor the quarantined rows nobody has fixed."""
    shown = tw(ws, "status").stdout
    assert "patients: 8\n" in shown and "quarantined rows" not in shown
    db = storage.connect(cfg_of(ws).database)
    add_diary_row(db, ws, "p00003", str(TODAY - timedelta(days=1)))
    (ws / "bad.csv").write_text("patient_id,date,stress\np00004,2026-11-02,11\np00004,2026-11-03,12\n")
    import_file(db, "diary", ws / "bad.csv", ImportOptions(today=TODAY))
    db.conn.close()
    shown = tw(ws, "status").stdout
    assert "patients: 8, 1 of them to analyse in the next cycle (new data since their last analysis, never " \
           "analysed, or it failed)\n" in shown
    assert "quarantined rows: 2 waiting to be fixed, from 1 file(s): see them with trigger-watch rejects\n" in shown
    info = json.loads(tw(ws, "status", "--json").stdout)
    assert info["patients"] == {"total": 8, "to_analyse": 1} and info["rejects"] == {"waiting": 2, "files": 1}
    assert tw(ws, "run", "--no-weather").returncode == 0
    assert json.loads(tw(ws, "status", "--json").stdout)["patients"] == {"total": 8, "to_analyse": 0}


def test_status_lists_analyses_and_back_tests_beside_the_cycles(ws, monkeypatch):
    """`status` said "no runs yet" after any number of `analyze` runs: only cycles were recorded. Each run
    now shows with the day it analysed through; a failed analysis is recorded as failed."""
    one = "p00001"
    before = json.loads(tw(ws, "status", "--json").stdout)["runs"]
    assert [r["kind"] for r in before] == ["cycle"]  # the demo's
    assert tw(ws, "analyze", "--patient", one).returncode == 0
    assert tw(ws, "analyze", "--patient", one, "--as-of", str(TODAY - timedelta(days=30))).returncode == 0
    runs = json.loads(tw(ws, "status", "--json").stdout)["runs"]
    back, now = runs[0], runs[1]
    assert (back["kind"], back["as_of"], back["status"], back["patients_analysed"]) == (
        "back-test", str(TODAY - timedelta(days=30)), "ok", 1)
    assert (now["kind"], now["as_of"], now["status"], now["patients_analysed"]) == (
        "analyze", str(date.today()), "ok", 1)
    shown = tw(ws, "status").stdout
    assert f"back-test {back['started_at']} -> {back['ended_at']} ok        as of {back['as_of']}: 1 analysed" in shown
    assert "no runs yet" not in shown
    # an analysis that raises is recorded as failed, with its error, and the error still raised
    from trigger_watch import analysis

    def broken(*args, **kw):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(analysis, "analyze", broken)
    from click.testing import CliRunner

    from trigger_watch.cli import cli
    monkeypatch.setenv("TRIGGER_WATCH_CONFIG", str(ws / "config.toml"))
    result = CliRunner().invoke(cli, ["analyze", "--patient", one])
    assert isinstance(result.exception, RuntimeError)
    last = json.loads(tw(ws, "status", "--json").stdout)["runs"][0]
    assert (last["kind"], last["status"], last["error"]) == ("analyze", "failed", "RuntimeError: disk on fire")


def test_a_back_tested_patient_is_marked_in_the_report_and_the_ranking(ws):
    """A back-test's report went into the ranking as if it were today's."""
    one, day = "p00001", TODAY - timedelta(days=30)
    assert tw(ws, "analyze", "--patient", one, "--as-of", str(day)).returncode == 0
    doc = json.loads((cfg_of(ws).reports_dir / one / "triggers.json").read_text())
    assert doc["as_of"] == str(day) and doc["back_test"] is True
    ranking = {e["patient_id"]: e for e in
               json.loads((cfg_of(ws).reports_dir / "cohort" / "ranking.json").read_text())}
    assert f"a back-test's report, as of {day}: the next cycle brings this patient up to date" in \
        ranking[one]["reasons"]
    assert not any("no diary entry for" in x for x in ranking[one]["reasons"])
    others = [e for p, e in ranking.items() if p != one]
    assert others and not any("back-test" in x for e in others for x in e["reasons"])
    assert tw(ws, "analyze", "--patient", one).returncode == 0  # the present again: no mark
    assert "back_test" not in json.loads((cfg_of(ws).reports_dir / one / "triggers.json").read_text())


def test_a_man_is_not_told_about_a_menstrual_window(analysed_workspace):
    """A patient recorded as male was listed menstrual_window, and his page said "We have no record of ...
    your period for you"."""
    import csv
    import json

    with (analysed_workspace / "input" / "patients.csv").open(newline="") as f:
        sex = {r["patient_id"]: r["sex"] for r in csv.DictReader(f)}
    assert set(sex.values()) == {"F", "M"}  # this seed has both
    reports_dir = Path(cfg_of(analysed_workspace).reports_dir)
    for pid, s in sex.items():
        doc = json.loads((reports_dir / pid / "triggers.json").read_text())
        listed = {f["factor"] for f in doc["factors"]}
        page = (reports_dir / pid / "summary.md").read_text() + (reports_dir / pid / "clinician.html").read_text()
        if s == "M":
            assert "menstrual_window" not in listed and "period" not in page and "menstrual" not in page.lower()
        elif doc["status"] == "ok":
            assert "menstrual_window" in listed
