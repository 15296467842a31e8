"""The command line as a clinic scripts it: real processes, exit codes, one-line errors."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from datetime import date, timedelta
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def tw(tmp_path: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "TRIGGER_WATCH_CONFIG": str(tmp_path / "config.toml"), **(env or {})}
    return subprocess.run([sys.executable, "-m", "trigger_watch", *args], cwd=tmp_path, env=full_env,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
def ws(tmp_path):
    (tmp_path / "config.toml").write_text('[storage]\ndatabase = "db/tw.db"\n')
    r = tw(tmp_path, "init")
    assert r.returncode == 0, r.stderr
    return tmp_path


def test_without_a_config_file_a_new_database_is_named_where_it_is_made(tmp_path):
    """No --config, no TRIGGER_WATCH_CONFIG, no ./config.toml: the defaults make ./data/trigger_watch.db, and
    a clinic that forgot --config would import into it without a word."""
    env = {k: v for k, v in os.environ.items() if k != "TRIGGER_WATCH_CONFIG"}
    (tmp_path / "p.csv").write_text("patient_id\nq1\n")

    def run():
        return subprocess.run([sys.executable, "-m", "trigger_watch", "import", "patients", "p.csv"], cwd=tmp_path,
                              env=env, capture_output=True, text=True, timeout=120, check=False)

    first, second = run(), run()
    assert first.returncode == second.returncode == 0
    made = tmp_path / "data" / "trigger_watch.db"
    assert made.exists()
    assert f"no config file (--config, $TRIGGER_WATCH_CONFIG or ./config.toml): a new database is made at {made}" \
        in first.stderr
    assert "no config file" not in second.stderr  # said once, when it is made


@pytest.mark.parametrize("args,message", [
    (("diary", "x.csv", "--format", "xml"), "'xml' is not a format of diary files; use one of csv, json, ndjson"),
    (("sleep", "x.csv", "--format", "garmin"), "use one of csv, json, ndjson, fitbit, fitabase, oura, apple-health"),
    (("sleep", "x.csv", "--format", "fitbit"), "a fitbit export is one person's: say whose with --patient ID"),
    (("weather", "x.csv", "--format", "noaa"), "use one of csv, json, ndjson, open-meteo, noaa-lcd"),
    (("diary", "x.csv", "--format", "noaa-lcd"), "'noaa-lcd' is not a format of diary files"),
    (("attacks", "x.csv", "--format", "severity-log"), "a severity-log export is one person's: say whose"),
    (("treatments", "x.csv", "--header", "start,,treatment"), "'start,,treatment' must name each column once"),
    (("treatments", "x.csv", "--header", "date,date"), "'date,date' must name each column once"),
])
def test_a_format_that_does_not_fit_the_kind_is_wrong_usage(ws, args, message):
    """cli.md: 2 is wrong usage (these exited 1, as if the file had been at fault)."""
    (ws / "x.csv").write_text("patient_id,date\n")
    r = tw(ws, "import", *args)
    assert r.returncode == 2 and message in r.stderr


def test_init_is_safe_to_repeat_and_creates_folders(ws):
    again = tw(ws, "init")
    assert again.returncode == 0
    assert (ws / "db" / "tw.db").is_file() and (ws / "reports").is_dir() and (ws / "models").is_dir()


def test_example_files_import_and_rejects_lists_quarantine(ws):
    r = tw(ws, "import", "patients", str(ROOT / "examples" / "patients.csv"))
    assert r.returncode == 0 and "2 accepted (new)" in r.stdout
    r = tw(ws, "import", "diary", str(ROOT / "examples" / "diary.csv"))
    assert r.returncode == 0 and "6 accepted (new), 0 replaced" in r.stdout and "0 quarantined" in r.stdout
    bad = ws / "bad.csv"
    bad.write_text("patient_id,date,stress\np001,2026-03-09,11\n")
    r = tw(ws, "import", "diary", str(bad))
    assert r.returncode == 0 and "1 quarantined" in r.stdout
    r = tw(ws, "rejects", "--kind", "diary")
    assert r.returncode == 0
    assert f"{bad} line 2: stress='11' is outside 0-10" in r.stdout
    # the clinic fixes the row and imports the fixed file: the list is empty, --all still shows the row
    fixed = ws / "fixed.csv"
    fixed.write_text("patient_id,date,stress\np001,2026-03-09,1\n")
    r = tw(ws, "import", "diary", str(fixed))
    assert r.returncode == 0 and "1 row(s) quarantined by an earlier import now have a good row" in r.stdout
    assert tw(ws, "rejects").stdout.strip() == "no quarantined rows waiting to be fixed"
    r = tw(ws, "rejects", "--all")
    assert f"{bad} line 2: stress='11' is outside 0-10  [fixed by {fixed} on " in r.stdout


def test_rejects_of_a_file_imported_by_mistake_can_be_dismissed(ws):
    """Attacks of another clinic's patients leave a reject a line that no import will ever fix: there was no
    way to take them off the list. (A diary imported as attacks, the first such mistake, is now refused
    whole: it has no start column, test_import.)"""
    tw(ws, "import", "patients", str(ROOT / "examples" / "patients.csv"))
    wrong = ws / "days.csv"
    wrong.write_text("patient_id,start\nq001,2026-03-09T08:00\nq002,2026-03-10T08:00\n")
    assert "2 quarantined" in tw(ws, "import", "attacks", str(wrong)).stdout
    other = ws / "bad.csv"
    other.write_text("patient_id,date,stress\np001,2026-03-09,11\n")
    tw(ws, "import", "diary", str(other))
    r = tw(ws, "rejects", "--dismiss", "nothing.csv")
    assert (r.returncode, r.stdout) == (1, "") and "no rows of nothing.csv" in r.stderr
    r = tw(ws, "rejects", "--dismiss", str(wrong), "--kind", "diary")  # none of that kind
    assert r.returncode == 1
    r = tw(ws, "rejects", "--dismiss", str(wrong))
    assert r.returncode == 0 and r.stdout.startswith(f"2 row(s) of {wrong} taken off the list")
    assert tw(ws, "rejects").stdout.splitlines() == [f"diary: {other} line 2: stress='11' is outside 0-10"]
    listed = tw(ws, "rejects", "--all", "--kind", "attacks").stdout.splitlines()
    assert len(listed) == 2 and all(line.endswith(f"  [dismissed on {line[-11:-1]}]") for line in listed)


@pytest.mark.parametrize("make", ["missing", "folder", "binary", "empty", "latin1"])
def test_unreadable_file_is_one_line_on_stderr_exit_1(ws, make):
    path = ws / "in.csv"
    if make == "folder":
        path.mkdir()
    elif make == "binary":
        path.write_bytes(b"\x00\x01\x02PK\x03\x04")
    elif make == "empty":
        path.write_bytes(b"")
    elif make == "latin1":
        path.write_bytes("patient_id,date,notes\np1,2026-01-01,\xfc\n".encode("latin-1"))
    r = tw(ws, "import", "diary", str(path))
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("trigger-watch: error: ")
    assert "Traceback" not in r.stderr


def test_wrong_usage_is_exit_2(ws):
    assert tw(ws, "import", "moods", "x.csv").returncode == 2
    assert tw(ws, "no-such-command").returncode == 2


def test_unknown_config_key_is_exit_1_naming_it(tmp_path):
    (tmp_path / "config.toml").write_text('[storage]\nreport_dir = "r"\n')
    r = tw(tmp_path, "init")
    assert r.returncode == 1
    assert "storage.report_dir" in r.stderr and "did you mean 'reports_dir'" in r.stderr


def test_forget_unknown_patient_is_exit_1(ws):
    """It told a clinic erasing a mistyped id to import the patient first (the advice of analyze and report)."""
    r = tw(ws, "forget", "nobody")
    assert r.returncode == 1 and r.stderr.count("\n") == 1
    assert "nothing is stored of patient 'nobody', so nothing was erased: check the id" in r.stderr
    assert "import" not in r.stderr


def _mentions(folder: Path, patient: str) -> list[str]:
    """Files under ``folder`` holding the id: as text, or as the UCS-4 a pickled numpy string keeps."""
    forms = [patient.encode("utf-8"), patient.encode("utf-32-le")]
    return [str(p) for p in sorted(folder.rglob("*")) if p.is_file() and any(f in p.read_bytes() for f in forms)]


def test_forget_erases_the_patient_from_the_ranking_and_the_model_store(tmp_path):
    """cli.md: forget erases every record, reports included. The cohort ranking files and the model store
    (analyses, the delta a one-patient run leaves, index, validation) kept the patient."""
    from datetime import date

    from trigger_watch.demo import run_demo
    from trigger_watch.models import ModelStore

    seed = 4242
    print(f"simulation seed {seed}")
    run_demo(tmp_path, today=date(2026, 11, 20), n_patients=6, n_days=150, seed=seed)
    gone = "p00003"
    assert tw(tmp_path, "analyze", "--patient", gone).returncode == 0  # their fit in a delta file as well
    reports_dir, models_dir = tmp_path / "reports", tmp_path / "models"
    before = json.loads((reports_dir / "cohort" / "ranking.json").read_text())
    others = [e["patient_id"] for e in before if e["patient_id"] != gone]
    assert len(others) == 5 and list(models_dir.glob("analyses-delta-*.joblib")) and _mentions(models_dir, gone)
    stored = {p: ModelStore(models_dir).load(p) for p in others}
    validated = set(ModelStore._read(models_dir / ModelStore.VALIDATION)["patients"])
    assert gone in validated and (models_dir / ModelStore.PRIORS).exists()

    r = tw(tmp_path, "forget", gone)
    assert r.returncode == 0, r.stderr
    assert "cohort ranking files" in r.stdout and "model files" in r.stdout
    assert _mentions(reports_dir, gone) == [] and _mentions(models_dir, gone) == []
    after = json.loads((reports_dir / "cohort" / "ranking.json").read_text())
    assert [e["patient_id"] for e in after] == others and [e["rank"] for e in after] == [1, 2, 3, 4, 5]
    with (reports_dir / "cohort" / "ranking.csv").open(newline="") as fh:
        assert [row["patient_id"] for row in csv.DictReader(fh)] == others
    store = ModelStore(models_dir)
    assert store.load(gone) is None and set(store.load_index()["fingerprints"]) == set(others)
    assert not (models_dir / ModelStore.PRIORS).exists()  # the earlier runs' priors pooled them
    for p in others:  # the others' analyses as they were stored
        a, b = stored[p], store.load(p)
        assert (a.status, a.data, a.model) == (b.status, b.data, b.model)
        assert a.summary.equals(b.summary)
        assert (a.estimator is None) == (b.estimator is None)
        assert a.estimator is None or (a.estimator.coef_ == b.estimator.coef_).all()
    assert set(ModelStore._read(models_dir / ModelStore.VALIDATION)["patients"]) == validated - {gone}

    assert tw(tmp_path, "analyze").returncode == 0  # a later run works, without the patient
    assert not ModelStore(models_dir).load_index()["forgotten"]  # the prior estimated again, without them
    assert _mentions(reports_dir, gone) == [] and _mentions(models_dir, gone) == []
    assert len(json.loads((reports_dir / "cohort" / "ranking.json").read_text())) == 5


def test_a_back_dated_analysis_is_redone_by_the_next_cycle(tmp_path):
    """cli.md: analyze --as-of writes the reports as of that date. The next cycle took them for current
    (nothing had changed) and the patient's live report stayed months old until new data came."""
    from datetime import date, timedelta

    from trigger_watch.demo import run_demo

    seed, today = 4343, date.today()
    print(f"simulation seed {seed}")
    run_demo(tmp_path, today=today, n_patients=6, n_days=150, seed=seed)  # one cycle, through yesterday
    report = tmp_path / "reports" / "p00002" / "triggers.json"
    yesterday, back = (today - timedelta(days=1)).isoformat(), (today - timedelta(days=60)).isoformat()
    assert json.loads(report.read_text())["as_of"] == yesterday
    r = tw(tmp_path, "analyze", "--patient", "p00002", "--as-of", back)
    assert r.returncode == 0, r.stderr
    assert f"use the days through {back} only" in r.stdout
    assert json.loads(report.read_text())["as_of"] == back
    r = tw(tmp_path, "run", "--no-weather")
    assert r.returncode == 0, r.stderr
    assert "1 patient(s) analysed" in r.stdout
    assert json.loads(report.read_text())["as_of"] == yesterday
    assert "nothing changed" in tw(tmp_path, "run", "--no-weather").stdout
    r = tw(tmp_path, "analyze", "--patient", "p00002")  # as of today: nothing to redo, nothing said
    assert r.returncode == 0 and "use the days through" not in r.stdout
    assert "nothing changed" in tw(tmp_path, "run", "--no-weather").stdout


def test_ctrl_c_stops_a_run_after_the_patients_in_hand_and_twice_aborts():
    """analyze and run: the first Ctrl-C asks the run to stop (it printed "Aborted!" and exited 1 at once,
    whatever was done); the second aborts. In a process of its own, which signals itself."""
    code = """
import os, signal, sys
from trigger_watch.cli import stop_on_interrupt
with stop_on_interrupt() as stop:
    os.kill(os.getpid(), signal.SIGINT)
    print("first", stop.is_set(), flush=True)
    try:
        os.kill(os.getpid(), signal.SIGINT)
    except KeyboardInterrupt:
        print("second aborts", flush=True)
print("restored", signal.getsignal(signal.SIGINT) is signal.default_int_handler)
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT,
                       check=False)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[:3] == ["first True", "second aborts", "restored True"]
    assert "stopping after the patients in hand (Ctrl-C again to abort at once)" in r.stderr


def test_help_lists_the_contract_commands(ws):
    r = tw(ws, "--help")
    assert r.returncode == 0
    for command in ("init", "import", "rejects", "forget"):
        assert f"  {command}" in r.stdout


@pytest.mark.parametrize("option", ["--start", "--end"])
def test_a_bad_date_names_the_option_it_was_given_to(ws, option):
    """fetch-weather --start 2026-13-01 said "Invalid value for --as-of", an option it does not have."""
    r = tw(ws, "fetch-weather", option, "2026-13-01")
    assert r.returncode == 2 and f"Invalid value for {option}: '2026-13-01' is not a date" in r.stderr


def test_the_demo_in_a_pipe_draws_no_progress(tmp_path):
    """cli.md: long work "stays quiet in a pipe". The demo wrote its steps ("simulating ...", "importing
    patients.csv", "analysing") to stderr wherever it ran; its summary is what a pipe gets."""
    (tmp_path / "config.toml").write_text("")
    r = tw(tmp_path, "demo", "--dir", str(tmp_path / "demo"), "--patients", "4", "--days", "60")
    assert r.returncode == 0 and "cycle 1: ok" in r.stdout and "summary.html" in r.stdout
    assert r.stderr == ""


def test_the_command_line_s_today_is_the_clinic_s_as_the_daemon_s_is(ws, monkeypatch):
    """`run` and `analyze` took the server's date where the daemon takes [schedule] timezone's: `run` from
    cron at 08:00 in Auckland on a UTC server analysed through the day before Auckland's yesterday, and
    `analyze --as-of` refused Auckland's today as a day to come. The clock is fixed at 20:00 UTC on
    30 June 2026, 08:00 on 1 July in Auckland."""
    from datetime import UTC, datetime

    from click.testing import CliRunner

    from trigger_watch import cli as cli_mod

    class Clock(datetime):
        @classmethod
        def now(cls, tz=None):
            return datetime(2026, 6, 30, 20, 0, tzinfo=UTC).astimezone(tz)

    monkeypatch.setattr(cli_mod, "datetime", Clock, raising=False)
    monkeypatch.setenv("TRIGGER_WATCH_CONFIG", str(ws / "config.toml"))
    base = (ws / "config.toml").read_text()

    def cycle_as_of(zone: str) -> str:
        (ws / "config.toml").write_text(base + f'[schedule]\ntimezone = "{zone}"\n')
        r = CliRunner().invoke(cli_mod.cli, ["run", "--no-weather"])
        assert r.exit_code == 0, r.output
        return json.loads(tw(ws, "status", "--json").stdout)["runs"][0]["as_of"]

    assert cycle_as_of("UTC") == "2026-06-29"
    r = CliRunner().invoke(cli_mod.cli, ["analyze", "--as-of", "2026-07-01"])
    assert r.exit_code == 2 and "2026-07-01 is after today (2026-06-30 in UTC, [schedule] timezone)" in r.output
    assert cycle_as_of("Pacific/Auckland") == "2026-06-30"
    r = CliRunner().invoke(cli_mod.cli, ["analyze", "--as-of", "2026-07-01"])
    assert r.exit_code == 0, r.output


def test_an_analysis_as_of_a_day_to_come_is_wrong_usage_and_an_unknown_patient_is_told_how_to_add_them(ws):
    """analyze --as-of 2030-01-01 wrote reports as of 2030 ("nothing logged ... up to 1 January 2030") that
    the cycles then kept; an unknown patient was told to pass --create-patients, an option of import only."""
    after = (date.today() + timedelta(days=1)).isoformat()
    r = tw(ws, "analyze", "--as-of", after)
    assert r.returncode == 2 and f"Invalid value for --as-of: {after} is after today" in r.stderr
    assert not any((ws / "reports").iterdir())
    r = tw(ws, "analyze", "--patient", "nobody")
    assert r.returncode == 1 and "patient 'nobody' is not in the database" in r.stderr
    assert "--create-patients" not in r.stderr and "trigger-watch import patients FILE" in r.stderr
