"""The ``trigger-watch`` command line: thin commands over the library.

Each command parses its arguments, calls one library function and prints the result. A
:class:`TriggerWatchError` becomes one line on stderr and exit code 1; wrong usage is exit code 2
(click's own); success is 0.
"""

from __future__ import annotations

import sys
from datetime import date
from pathlib import Path

import click

from trigger_watch import __version__
from trigger_watch import config as config_mod
from trigger_watch.errors import TriggerWatchError


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

            self._db = storage.connect(self.config.database, busy_timeout_ms=self.config["storage.busy_timeout_ms"])
        return self._db

    @property
    def today(self) -> date:
        return date.today()

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

    Exit codes: 0 success, 1 the work failed (one line on stderr says why), 2 wrong usage.
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
              help="csv, json, ndjson (default: from the extension); sleep: fitbit, fitabase, oura, "
                   "apple-health, sleep-as-android; weather: open-meteo, csv.")
@click.option("--patient", metavar="ID", help="Whose records these are (device exports, one-person diaries).")
@click.option("--create-patients", is_flag=True, help="Create unknown patients instead of quarantining their rows.")
@click.option("--rename", multiple=True, metavar="OLD=NEW", help="Read column OLD as NEW (repeatable).")
@click.option("--skip", multiple=True, metavar="COLUMN", help="Ignore this column (repeatable).")
@click.option("--id-map", type=click.Path(dir_okay=False), metavar="CSV",
              help="fitabase: CSV of fitabase_id,patient_id mapping device ids to patients.")
@pass_app
def import_cmd(app: App, kind: str, files: tuple[str, ...], fmt: str | None, patient: str | None,
               create_patients: bool, rename: tuple[str, ...], skip: tuple[str, ...], id_map: str | None) -> None:
    """Import FILE(s) of KIND; bad rows are quarantined with file, line and reason.

    Prints how many rows were new, replaced, unchanged and quarantined. Importing the same file twice
    changes nothing; a later row for the same key replaces the earlier one.
    """
    from trigger_watch.importing import ImportOptions, import_file

    cfg = app.config
    extra = {"id_map": id_map} if id_map else {}
    for file in files:
        options = ImportOptions(
            today=app.today, patient=patient, create_patients=create_patients or cfg["import.create_patients"],
            default_timezone=cfg["patients.default_timezone"], renames=_pairs(rename, "--rename"),
            skips={s.strip() for s in skip}, batch_rows=cfg["import.batch_rows"], config=cfg, extra=extra,
            progress=app.progress(f"importing {Path(file).name}"),
        )
        result = import_file(app.db, kind, file, options, fmt=fmt)
        for line in result.lines():
            app.say(line)


@cli.command()
@click.option("--kind", type=click.Choice(["patients", "diary", "attacks", "sleep", "treatments", "weather"]),
              help="Only rows of this kind.")
@click.option("--limit", type=click.IntRange(min=1), help="Show at most this many.")
@click.option("--raw", is_flag=True, help="Also print each row as it was in the file.")
@pass_app
def rejects(app: App, kind: str | None, limit: int | None, raw: bool) -> None:
    """List quarantined rows with file, line and the reason to fix."""
    from trigger_watch.importing import list_rejects, location

    rows = list_rejects(app.db, kind, limit)
    if not rows:
        app.say("no quarantined rows" + (f" of kind {kind}" if kind else ""))
        return
    for r in rows:
        app.say(f"{r['kind']}: {location(r['file'], r['line'])}: {r['reason']}")
        if raw and r["raw"]:
            app.say(f"    {r['raw']}")


@cli.command()
@click.argument("patient")
@pass_app
def forget(app: App, patient: str) -> None:
    """Erase every record of PATIENT: diary, attacks, sleep, treatments, rejects, models and reports."""
    from trigger_watch.diary import forget as forget_patient

    deleted = forget_patient(app.db, patient, reports_dir=app.config.reports_dir, config=app.config)
    what = ", ".join(f"{n} {t}" for t, n in deleted.items())
    app.say(f"forgot patient {patient}: {what}")


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
