"""The ``trigger-watch`` command line: thin commands over the library.

Each command parses its arguments, calls one library function and prints the result. A
:class:`TriggerWatchError` becomes one line on stderr and exit code 1; wrong usage is exit code 2
(click's own); success is 0.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import click

from trigger_watch import __version__
from trigger_watch import config as config_mod
from trigger_watch.errors import InputFileError, TriggerWatchError


class App:
    """What every command needs: the configuration, the database, how loud to be."""

    def __init__(self, config_path: str | None, quiet: bool):
        self.config_path = config_path
        self.quiet = quiet
        self._config = None
        self._db = None

    @property
    def config(self) -> config_mod.Config:
        if self._config is None:
            self._config = config_mod.load(self.config_path)
        return self._config

    @property
    def db(self):
        if self._db is None:
            from trigger_watch import storage

            if not Path(self.config.database).exists() and config_mod.find_config_path(self.config_path) is None:
                click.echo(f"note: no config file (--config, ${config_mod.ENV_VAR} or ./config.toml): a new database "
                           f"is made at {self.config.database}", err=True)
            self._db = storage.connect(self.config.database, busy_timeout_ms=self.config["storage.busy_timeout_ms"])
        return self._db

    @property
    def today(self) -> date:
        """Today on the clinic's clock, ``[schedule] timezone``, as the daemon's cycles see it: ``run`` on a
        UTC server for a clinic in Auckland analysed through the day before Auckland's yesterday, and
        forecast a day Auckland had lived, when it took the server's date."""
        return datetime.now(ZoneInfo(self.config["schedule.timezone"])).date()

    def say(self, line: str = "") -> None:
        click.echo(line)

    def progress(self, label: str):
        """A callback ``(done, total=None)`` that shows progress on a terminal, and nothing in a pipe."""
        from trigger_watch.progress import Progress

        return Progress(label, enabled=not self.quiet and sys.stderr.isatty())


pass_app = click.make_pass_decorator(App)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--config", "config_path", metavar="PATH", type=click.Path(dir_okay=False),
              help="config.toml to use (default: $TRIGGER_WATCH_CONFIG, else ./config.toml).")
@click.option("-q", "--quiet", is_flag=True, help="No progress display and fewer messages.")
@click.version_option(__version__, prog_name="trigger-watch")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None, quiet: bool) -> None:
    """Find each migraine patient's personal triggers from their diary, the weather and their sleep.

    \b
    Start with the demo:        trigger-watch demo
    Set up a clinic database:   trigger-watch init
    Import records:             trigger-watch import patients patients.csv
                                trigger-watch import diary diary.csv
    Analyse and write reports:  trigger-watch analyze

    Exit codes: 0 success, 1 the work failed (one line on stderr says why), 2 wrong usage, 130 stopped by
    Ctrl-C.
    """
    ctx.obj = App(config_path, quiet)


@cli.command()
@pass_app
def init(app: App) -> None:
    """Create the database and the report and model folders (safe to repeat).

    When --config names a file that does not exist yet, it is written with every setting at its default.
    """
    if app.config_path and not Path(app.config_path).exists():
        Path(app.config_path).parent.mkdir(parents=True, exist_ok=True)
        Path(app.config_path).write_text(config_mod.render_toml(), encoding="utf-8")
        app.say(f"wrote {app.config_path} with default settings")
    cfg = app.config
    from trigger_watch import storage

    for folder in (cfg.reports_dir, cfg.models_dir):
        Path(folder).mkdir(parents=True, exist_ok=True)
    version = storage.schema_version(app.db)
    app.say(f"database {cfg.database} ready (schema version {version})")
    app.say(f"reports go to {cfg.reports_dir}, fitted models to {cfg.models_dir}")


def _pairs(values: tuple[str, ...], option: str) -> dict[str, str]:
    out = {}
    for v in values:
        if "=" not in v:
            raise click.BadParameter(f"{v!r} is not OLD=NEW", param_hint=option)
        old, new = v.split("=", 1)
        out[old.strip()] = new.strip()
    return out


@cli.command("import")
@click.argument("kind", type=click.Choice(["patients", "diary", "attacks", "sleep", "treatments", "weather"]))
@click.argument("files", nargs=-1, required=True, metavar="FILE...")
@click.option("--format", "fmt", metavar="F",
              help="csv (tab-separated too), json, ndjson (default: from the extension); sleep: fitbit, "
                   "fitabase, oura, apple-health, sleep-as-android (default: told from the file's contents); "
                   "weather: open-meteo, noaa-lcd, csv; "
                   "attacks: severity-log (a pain log: time, tab, pain 0-10 or drug or symptom).")
@click.option("--patient", metavar="ID", help="Whose records these are (device exports, one-person diaries).")
@click.option("--create-patients", is_flag=True, help="Create unknown patients instead of quarantining their rows.")
@click.option("--rename", multiple=True, metavar="OLD=NEW", help="Read column OLD as NEW (repeatable).")
@click.option("--skip", multiple=True, metavar="COLUMN", help="Ignore this column (repeatable).")
@click.option("--id-map", type=click.Path(dir_okay=False), metavar="CSV",
              help="fitabase: CSV of fitabase_id,patient_id mapping device ids to patients.")
@click.option("--date-format", metavar="FMT",
              help="Layout of date columns when not YYYY-MM-DD, in strptime codes (e.g. '%m-%d-%Y').")
@click.option("--header", metavar="NAMES",
              help="The column names of a CSV file without a header row, comma-separated, in order "
                   "(e.g. 'start,dose_mg,treatment'); its first line is then a record.")
@pass_app
def import_cmd(app: App, kind: str, files: tuple[str, ...], fmt: str | None, patient: str | None,
               create_patients: bool, rename: tuple[str, ...], skip: tuple[str, ...], id_map: str | None,
               date_format: str | None, header: str | None) -> None:
    """Import FILE(s) of KIND; bad rows are quarantined with file, line and reason.

    Prints how many rows were accepted (new to the database), replaced, unchanged and quarantined.
    Importing the same file twice changes nothing; a later row for the same key replaces the earlier one.
    """
    from trigger_watch.importing import FORMATS, ImportOptions, formats_of, import_file
    from trigger_watch.sleep_formats import DEVICE_FORMATS, canonical_format

    if fmt:  # wrong usage (exit 2), before any file is read
        allowed = formats_of(kind)
        given = canonical_format(fmt).replace("_", "-").replace("openmeteo", "open-meteo").replace("jsonl", "ndjson")
        if given not in allowed:
            raise click.BadParameter(f"{fmt!r} is not a format of {kind} files; use one of {', '.join(allowed)}",
                                     param_hint="'--format'")
        one_person = (kind == "sleep" and given in DEVICE_FORMATS and given != "fitabase") or (
            kind == "attacks" and given not in FORMATS)
        if one_person and not patient:
            raise click.UsageError(f"a {given} export is one person's: say whose with --patient ID")
    names = [n.strip() for n in header.split(",")] if header is not None else None
    if names is not None and (not all(names) or len(set(names)) < len(names)):
        raise click.BadParameter(f"{header!r} must name each column once, comma-separated", param_hint="'--header'")
    cfg = app.config
    extra = {"id_map": id_map} if id_map else {}
    for file in files:
        options = ImportOptions(
            today=app.today, now=datetime.now(UTC), patient=patient,
            create_patients=create_patients or cfg["import.create_patients"],
            default_timezone=cfg["patients.default_timezone"], renames=_pairs(rename, "--rename"),
            skips={s.strip() for s in skip}, batch_rows=cfg["import.batch_rows"], config=cfg, extra=extra,
            progress=app.progress(f"importing {Path(file).name}"), date_format=date_format, header=names,
        )
        result = import_file(app.db, kind, file, options, fmt=fmt)
        for line in result.lines():
            app.say(line)


@cli.command()
@click.option("--kind", type=click.Choice(["patients", "diary", "attacks", "sleep", "treatments", "weather"]),
              help="Only rows of this kind.")
@click.option("--limit", type=click.IntRange(min=1), help="Show at most this many.")
@click.option("--raw", is_flag=True, help="Also print each row as it was in the file.")
@click.option("--all", "show_all", is_flag=True,
              help="Also rows a later import has fixed (a good row for the same patient and date, attack start, "
                   "treatment or patient, or the same file imported again), with the file that fixed them.")
@click.option("--dismiss", "dismiss", metavar="FILE",
              help="Take FILE's rows off the list (of --kind only, when given): for a file imported by mistake, "
                   "which no import will fix. --all still shows them, as dismissed.")
@pass_app
def rejects(app: App, kind: str | None, limit: int | None, raw: bool, show_all: bool, dismiss: str | None) -> None:
    """List quarantined rows with file, line and the reason to fix.

    A row leaves the list once a later import stores a good row for its key (patients, diary, attacks,
    treatments), or once the same file imported again no longer quarantines it (sleep and weather, and
    rows whose patient or date could not be read); --all still shows it."""
    from trigger_watch.importing import DISMISSED, dismiss_rejects, list_rejects, location

    if dismiss is not None:
        n = dismiss_rejects(app.db, dismiss, kind)
        if not n:
            raise InputFileError(f"no rows of {dismiss}{f' of kind {kind}' if kind else ''} are waiting to be "
                                 "fixed; name the file as 'trigger-watch rejects' shows it")
        app.say(f"{n} row(s) of {dismiss} taken off the list ('trigger-watch rejects --all' still shows them)")
        return
    rows = list_rejects(app.db, kind, limit, resolved=show_all)
    if not rows:
        app.say("no quarantined rows" + (f" of kind {kind}" if kind else "")
                + ("" if show_all else " waiting to be fixed"))
        return
    for r in rows:
        by = "dismissed" if r.get("resolved_by") == DISMISSED else f"fixed by {r.get('resolved_by')}"
        fixed = f"  [{by} on {r['resolved_at'][:10]}]" if r.get("resolved_at") else ""
        app.say(f"{r['kind']}: {location(r['file'], r['line'])}: {r['reason']}{fixed}")
        if raw and r["raw"]:
            app.say(f"    {r['raw']}")


def _wait_option(what: str):
    return click.option("--wait", "wait_seconds", type=click.FloatRange(min=0), default=0, metavar="SECONDS",
                        help=f"If a cycle is running, wait this long for it to end before {what}, instead of "
                             "exiting.")


@cli.command()
@click.argument("patient")
@_wait_option("forgetting")
@pass_app
def forget(app: App, patient: str, wait_seconds: float) -> None:
    """Erase every record of PATIENT: diary, attacks, sleep, treatments, rejects, models and reports."""
    from trigger_watch import daemon
    from trigger_watch.diary import forget as forget_patient

    # under the cycle's lease: a cycle running meanwhile could write the patient's reports back
    with daemon.Lease(app.config.database, "forget").acquire(
            wait_seconds, busy="nothing was erased; forget the patient once it has ended"):
        deleted = forget_patient(app.db, patient, reports_dir=app.config.reports_dir, config=app.config)
    what = ", ".join(f"{n} {t}" for t, n in deleted.items())
    app.say(f"forgot patient {patient}: {what}")


def _as_of(value: str | None, today: date, option: str = "--as-of") -> date:
    """``option``'s date (``today`` when not given); not a date: wrong usage (exit 2) that names ``option``."""
    if value is None:
        return today
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a date (YYYY-MM-DD)", param_hint=option) from None


@cli.command("fetch-weather")
@click.option("--start", metavar="DATE", help="First day to fill (default: from the patients' data).")
@click.option("--end", metavar="DATE", help="Last day to fill (default: tomorrow, from the forecast).")
@pass_app
def fetch_weather_cmd(app: App, start: str | None, end: str | None) -> None:
    """Fetch the weather that patients' days need from Open-Meteo, history and tomorrow's forecast.

    Requests go per grid cell, never per patient, within the free tier's limits; what is stored is not
    fetched again. A cell that fails is named and retried on the next run.
    """
    import requests

    from trigger_watch import weather

    with requests.Session() as session:
        result = weather.fetch_weather(
            app.db, app.config, session, start=_as_of(start, app.today, "--start") if start else None,
            end=_as_of(end, app.today, "--end") if end else None, today=app.today,
            progress=app.progress("fetching weather"))
    for line in result.lines():
        app.say(line)


#: The exit code of a run stopped by Ctrl-C (128 + SIGINT, the shell's convention).
EXIT_INTERRUPTED = 130


@contextlib.contextmanager
def stop_on_interrupt() -> Iterator:
    """Ctrl-C once sets the returned event: the run finishes the patients in hand and stops, and what it wrote
    stays (each report is written whole; the others keep their previous ones). Ctrl-C again aborts at once.
    It printed "Aborted!" and exited 1, whatever had been done."""
    import signal
    import threading

    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def on_interrupt(signum, frame) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        click.echo("stopping after the patients in hand (Ctrl-C again to abort at once)", err=True)

    before = signal.signal(signal.SIGINT, on_interrupt)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, before)


@cli.command()
@click.option("--patient", "patients", multiple=True, metavar="ID", help="Only this patient (repeatable).")
@click.option("--as-of", metavar="DATE", help="Analyse as if this date were today; no later data is used.")
@_wait_option("analysing")
@pass_app
def analyze(app: App, patients: tuple[str, ...], as_of: str | None, wait_seconds: float) -> None:
    """Build features, fit the models and write every report (and the cohort ranking)."""
    from trigger_watch import analysis, daemon, storage
    from trigger_watch.errors import UnknownPatient

    day = _as_of(as_of, app.today)
    if day > app.today:  # its reports would stay, "nothing logged" up to that day, until the patient changed
        raise click.BadParameter(f"{day.isoformat()} is after today ({app.today.isoformat()} in "
                                 f"{app.config['schedule.timezone']}, [schedule] timezone): "
                                 "an analysis can be as of today or an earlier day", param_hint="--as-of")
    known = set(analysis.all_patient_ids(app.db))
    for p in patients:
        if p not in known:
            raise UnknownPatient(p)
    # under the cycle's lease: two analyses at once would write the same model store and reports
    with daemon.Lease(app.config.database, "analyze").acquire(wait_seconds, busy="analyse once it has ended"), \
            stop_on_interrupt() as stop:
        if patients and analysis.learns_prior(app.config, patients, known, day):
            app.say(f"learning the cohort's pooled prior from all {len(known)} patients' days through "
                    f"{day.isoformat()} first ...")
        bar = app.progress("analysing")  # each stage shows under its own name
        # a back-test: the weather stored for the day after it was recorded later, not forecast then
        back_test = day < app.today - timedelta(days=1)
        # what the analysis sees: the patients it analyses as of now are current, the next cycle leaves them
        seen = None if back_test else daemon.change_versions(app.db, list(patients) or None)
        started = storage.utcnow_text()
        with daemon.recorded_run(app.db, "back-test" if back_test else "analyze", day) as record:  # `status`
            outcome = analysis.analyze(app.db, app.config, as_of=day, patient_ids=list(patients) or None,
                                       progress=bar, stop=stop, back_test=back_test)
            record.analysed, record.failures = len(outcome.analysed), len(outcome.failed)
            record.status = daemon.run_status(outcome.failed, outcome.skipped, stop.is_set())
            if seen is not None:
                daemon.record_analysis(app.db, list(outcome.analysed), dict(outcome.failed), analysis.MODEL_VERSION,
                                       started, seen, day)
        bar.close()
        # a back-test leaves its reports in place (cli.md); the next cycle brings them back to the present
        back_dated = back_test and outcome.analysed
        if back_dated:
            daemon.analyse_again(app.db, list(outcome.analysed))
    for line in outcome.lines():
        app.say(line)
    app.say(f"reports in {app.config.reports_dir}")
    if back_dated:
        app.say(f"these reports use the days through {day.isoformat()} only (the forecast for "
                f"{(day + timedelta(days=1)).isoformat()} without that day's weather: what is stored was recorded "
                f"later); the next cycle (or trigger-watch run) analyses the {len(outcome.analysed)} patient(s) "
                f"again through yesterday")
    if stop.is_set():
        app.say("stopped by Ctrl-C: the patients not analysed keep their previous reports")
        raise click.exceptions.Exit(EXIT_INTERRUPTED)
    if outcome.failed and not outcome.analysed:
        raise click.exceptions.Exit(1)


@cli.command()
@_wait_option("running this one")
@click.option("--no-weather", is_flag=True, help="Do not fetch weather in this cycle.")
@pass_app
def run(app: App, wait_seconds: float, no_weather: bool) -> None:
    """One scheduled cycle: fetch weather, analyse the patients whose data changed, rank the cohort."""
    from trigger_watch import daemon

    bar = app.progress("analysing")
    with stop_on_interrupt() as stop:
        result = daemon.run_cycle(app.db, app.config, today=app.today, fetch=not no_weather,
                                  wait_seconds=wait_seconds, progress=bar, stop=stop)
    bar.close()
    for line in result.lines():
        app.say(line)
    if stop.is_set():
        app.say("stopped by Ctrl-C: the next cycle analyses the patients left")
        raise click.exceptions.Exit(EXIT_INTERRUPTED)
    if result.status == "failed":
        raise click.exceptions.Exit(1)


@cli.command("daemon")
@pass_app
def daemon_cmd(app: App) -> None:
    """Run the cycle on the schedule in config.toml until SIGTERM or SIGINT, then stop cleanly (exit 0)."""
    import logging

    from trigger_watch import daemon, storage

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = app.config
    storage.connect(cfg.database).conn.close()  # create and migrate before the first job

    def log(line: str) -> None:
        click.echo(f"{storage.utcnow_text()} {line}", err=True)

    code = daemon.serve(cfg, open_db=lambda: storage.connect(cfg.database,
                                                               busy_timeout_ms=cfg["storage.busy_timeout_ms"]),
                        log=log)
    raise click.exceptions.Exit(code)


@cli.command()
@click.option("--runs", default=10, show_default=True, type=click.IntRange(min=1), help="How many recent runs.")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@pass_app
def status(app: App, runs: int, as_json: bool) -> None:
    """The last runs, the next scheduled ones, the models stored, the patients the next cycle will analyse,
    quarantined rows waiting to be fixed, and patients whose analysis keeps failing."""
    import json as json_mod

    from trigger_watch import daemon

    info = daemon.status(app.db, app.config, runs=runs)
    if as_json:
        app.say(json_mod.dumps(info, indent=2, default=str))
        return
    app.say("next runs: " + ", ".join(f"{k} {v}" for k, v in info["next_runs"].items()))
    if not info["runs"]:
        app.say("no runs yet")
    for r in info["runs"]:
        app.say(f"  #{r['id']} {r['kind']:9} {r['started_at']} -> {r['ended_at'] or '...'} {r['status']:9} "
                + (f"as of {r['as_of']}: " if r["as_of"] else "")
                + f"{r['patients_analysed'] or 0} analysed, {r['failures'] or 0} failed"
                + (f": {r['error']}" if r["error"] else ""))
    m = info["models"]
    if not m["patients"]:
        app.say(f"models: none stored ({m['version']})")
    else:
        through = f"the days through {m['prior_through']}" if m["prior_through"] else "days before it was saved"
        app.say(f"models: {m['patients']} patient(s) fitted ({m['version']}, saved {m['saved_at']}); the cohort "
                f"prior learned from {through}")
    if m["kept_priors"]:
        app.say(f"  {m['kept_priors']} cohort prior(s) kept for back-tests and the forecast validation, learned "
                f"through {m['kept_first']}" + (f" to {m['kept_last']}" if m["kept_priors"] > 1 else ""))
    n = info["patients"]
    app.say(f"patients: {n['total']}" + (f", {n['to_analyse']} of them to analyse in the next cycle (new data since "
                                         f"their last analysis, never analysed, or it failed)" if n["to_analyse"] else ""))
    if info["rejects"]["waiting"]:
        app.say(f"quarantined rows: {info['rejects']['waiting']} waiting to be fixed, from "
                f"{info['rejects']['files']} file(s): see them with trigger-watch rejects")
    if info["failing_patients"]:
        app.say("patients whose analysis keeps failing:")
        for f in info["failing_patients"]:
            app.say(f"  {f['patient_id']}: {f['failures']} time(s), last: {f['last_error']}")


@cli.command()
@click.argument("patient")
@click.option("--as-of", metavar="DATE", help="The panel as it was on this date.")
@click.option("--csv", "as_csv", is_flag=True, help="CSV with every column (default: a readable summary).")
@pass_app
def panel(app: App, patient: str, as_of: str | None, as_csv: bool) -> None:
    """Show exactly what the model saw for PATIENT: one row per day, every factor at lags 0 and 1."""
    from trigger_watch import features

    frame = features.panel_for_patient(app.db, patient, _as_of(as_of, app.today) if as_of else None)
    if as_csv:
        click.echo(frame.to_csv(index=False), nl=False)
        return
    days = len(frame)
    at_risk = int(frame["at_risk"].sum()) if days else 0
    onsets = int(frame.loc[frame["at_risk"], "onset"].sum()) if days else 0
    app.say(f"{patient}: {days} days, {at_risk} at risk, {onsets} attack onsets; "
            f"{frame.shape[1]} columns (use --csv for all of them)")
    if days:
        cols = [c for c in frame.columns if c.endswith("@0")]
        known = frame.loc[frame["at_risk"], cols].notna().mean().sort_values(ascending=False)
        for c, share in known.items():
            app.say(f"  {c[:-2]:32} known on {share:5.0%} of at-risk days")


@cli.command()
@click.option("--dir", "workspace", default="demo-workspace", show_default=True, type=click.Path(file_okay=False),
              help="Scratch workspace to create, or to replace if an earlier demo made it (any other folder "
                   "with files is refused).")
@click.option("--patients", default=36, show_default=True, type=click.IntRange(2, 100000), help="Cohort size.")
@click.option("--days", default=365, show_default=True, type=click.IntRange(30, 3650), help="Days of diary.")
@click.option("--seed", default=20261121, show_default=True, help="Random seed of the simulation.")
@pass_app
def demo(app: App, workspace: str, patients: int, days: int, seed: int) -> None:
    """Simulate a clinic, import it, analyse it offline, and say where the reports are."""
    from trigger_watch.demo import run_demo

    # its steps are progress: on a terminal only (cli.md: quiet in a pipe); the summary below always
    log = (lambda line: click.echo(line, err=True)) if not app.quiet and sys.stderr.isatty() else None
    bar = app.progress("analysing")
    result = run_demo(Path(workspace), today=date.today(), n_patients=patients, n_days=days, seed=seed, log=log,
                      progress=bar)
    bar.close()
    for line in result.lines():
        app.say(line)


@cli.command()
@click.argument("patient")
@click.option("--for", "audience", type=click.Choice(["patient", "clinician"]), default="patient",
              show_default=True, help="Who the report is for.")
@click.option("--format", "fmt", type=click.Choice(["md", "html", "json"]), default=None,
              help="md, html or json; the patient's default is md, the clinician's html (its md is the page's "
                   "tables and text without the charts).")
@click.option("--history", "show_history", is_flag=True, help="List every stored report of PATIENT instead.")
@pass_app
def report(app: App, patient: str, audience: str, fmt: str | None, show_history: bool) -> None:
    """Print PATIENT's latest report as stored by the last analysis (nothing is recomputed)."""
    from trigger_watch import reports

    if show_history:
        for line in reports.history_lines(app.db, patient):
            app.say(line)
        return
    fmt = fmt or ("md" if audience == "patient" else "html")
    click.echo(reports.stored_report(app.db, patient, audience, fmt), nl=False)


@cli.command()
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table", show_default=True,
              help="Aligned columns with the first reason, CSV, or the ranking.json entries.")
@click.option("--clinician", metavar="ID", help="Only this clinician's patients, ranked 1..n among them.")
@pass_app
def rank(app: App, fmt: str, clinician: str | None) -> None:
    """Print the latest cohort ranking, highest priority first (nothing is recomputed; docs/clinical.md)."""
    import json as json_mod

    from trigger_watch import ranking

    entries = ranking.read_ranking(app.config.reports_dir)
    if clinician is not None:
        entries = ranking.filter_by_clinician(entries, clinician)
    if fmt == "json":
        app.say(json_mod.dumps(entries, indent=2))
    elif fmt == "csv":
        from trigger_watch.reports import ranking_csv

        click.echo(ranking_csv(entries), nl=False)  # exactly the format of cohort/ranking.csv
    elif entries:
        app.say(ranking.to_table(entries))
    else:
        app.say("no patients" + (f" of clinician {clinician}" if clinician else "") + " in the ranking")


def main() -> None:
    try:
        cli(prog_name="trigger-watch")
    except TriggerWatchError as exc:
        click.echo(f"trigger-watch: error: {exc}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        click.echo("trigger-watch: interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
